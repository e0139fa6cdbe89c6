"""A module another thread is importing is in ``sys.modules`` before its names are.

snapsink looks optional libraries up in ``sys.modules`` (never importing them)
on every write: numpy.ma (masked arrays), jax (pytrees), torch and cupy (device
arrays), mpi4py.MPI and torch.distributed (communicators). A module found there
half-initialized, without the name looked up yet, must count as not imported,
never raise. Simulated without threads: a bare module stands in for one whose
import has only begun (``monkeypatch`` restores ``sys.modules``, whether or not
the real library is imported in this process).
"""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from snapsink import ConfigError, HostMemory, SyncSink
from snapsink._comm import _is_mpi_comm, _is_torch_group, as_communicator
from snapsink._staging.backend import CupyBackend
from snapsink._staging.emulation import EmulatedDeviceArray
from snapsink._systems import gather_rows

pytestmark = pytest.mark.timeout(30)


def _half_imported(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Each of ``names`` in ``sys.modules`` as a module whose import has just begun."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


def test_write_while_numpy_ma_is_being_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    store = HostMemory()
    x = np.zeros(3)
    with SyncSink(store, capacity=4) as sink:
        _half_imported(monkeypatch, "numpy.ma")
        for i in range(10):
            x[:] = i
            sink.write({"x": x, "y": [float(i), 1.0], "e": float(i)}, step=i)
        sink.flush()
    monkeypatch.undo()
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, np.arange(10))
    np.testing.assert_array_equal(traj["x"][:, 2], np.arange(10.0))
    np.testing.assert_array_equal(traj["y"][:, 0], np.arange(10.0))
    np.testing.assert_array_equal(traj["e"][:], np.arange(10.0))


def test_unmasked_with_half_imported_numpy_ma(monkeypatch: pytest.MonkeyPatch) -> None:
    from snapsink._dtypes import unmasked

    _half_imported(monkeypatch, "numpy.ma")
    arr = np.arange(3.0)
    assert unmasked("x", arr) is arr
    assert unmasked("x", 1.5) == 1.5


@dataclasses.dataclass
class _State:
    pos: Any
    energy: float


def test_write_nested_state_while_jax_and_torch_are_being_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dataclass frame and a leaf that is no array (a complex number) ask
    whether JAX knows them; a list asks whether it is a torch tensor."""
    store = HostMemory()
    with SyncSink(store, capacity=4) as sink:
        _half_imported(monkeypatch, "jax", "torch")
        for i in range(5):
            sink.write(_State(np.full(2, float(i)), float(i)), step=i)
        sink.flush()
    monkeypatch.undo()
    traj = store.trajectory()
    np.testing.assert_array_equal(traj["pos"][:, 1], np.arange(5.0))
    np.testing.assert_array_equal(traj["energy"][:], np.arange(5.0))

    store = HostMemory()
    with SyncSink(store, capacity=4) as sink:
        _half_imported(monkeypatch, "jax", "torch")
        for i in range(5):
            sink.write({"z": complex(i, -i), "v": [i, 2 * i]}, step=i)
        sink.flush()
    monkeypatch.undo()
    traj = store.trajectory()
    assert traj["z"].dtype == np.complex128
    np.testing.assert_array_equal(traj["z"][:], np.arange(5) - 1j * np.arange(5))
    np.testing.assert_array_equal(traj["v"][:, 1], 2 * np.arange(5))


def test_flatten_frame_with_half_imported_jax(monkeypatch: pytest.MonkeyPatch) -> None:
    from snapsink._pytree import flatten_frame

    _half_imported(monkeypatch, "jax")
    state = _State(np.zeros(2), 1.0)
    assert list(flatten_frame({"s": state, "c": 1j})) == ["s.pos", "s.energy", "c"]


class _CudaLike:
    """Neither a torch tensor nor a CuPy array: a device array of another library."""

    def __init__(self, host: np.ndarray[Any, Any]):
        self.host = host

    __cuda_array_interface__: ClassVar[dict[str, Any]] = {}  # a device array to snapsink

    def __getitem__(self, index: Any) -> _CudaLike:
        return _CudaLike(self.host[index])


@pytest.mark.parametrize("modules", [("torch",), ("cupy",), ("torch", "cupy")])
def test_gather_rows_with_half_imported_torch_or_cupy(
    monkeypatch: pytest.MonkeyPatch, modules: tuple[str, ...]
) -> None:
    _half_imported(monkeypatch, *modules)
    index = np.array([0, 2, 3])
    rows = gather_rows(EmulatedDeviceArray(np.arange(10.0).reshape(5, 2)), index)
    assert isinstance(rows, EmulatedDeviceArray)
    np.testing.assert_array_equal(rows.get(), [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]])
    other = gather_rows(_CudaLike(np.arange(5)), index)
    assert isinstance(other, _CudaLike)
    np.testing.assert_array_equal(other.host, [0, 2, 3])
    np.testing.assert_array_equal(gather_rows([5, 6, 7, 8], index), [5, 7, 8])


def test_cuda_stream_with_half_imported_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CuPy backend asks whether a value is a torch tensor (for PyTorch's
    current stream); CuPy itself is stubbed (the question comes first)."""
    backend = object.__new__(CupyBackend)
    backend.cp = SimpleNamespace(cuda=SimpleNamespace(get_current_stream=lambda: "current"))
    _half_imported(monkeypatch, "torch")
    assert backend.resolve_stream(None, object()) == "current"


@pytest.mark.parametrize(
    "modules", [("mpi4py.MPI",), ("torch.distributed",), ("mpi4py.MPI", "torch.distributed")]
)
def test_communicator_with_half_imported_mpi_or_torch_distributed(
    monkeypatch: pytest.MonkeyPatch, modules: tuple[str, ...]
) -> None:
    _half_imported(monkeypatch, *modules)
    comm = object()
    assert not _is_mpi_comm(comm)
    assert not _is_torch_group(comm)
    if "torch.distributed" in modules:  # (None is the real one's WORLD until initialized)
        assert not _is_torch_group(None)
    with pytest.raises(ConfigError, match="expected an mpi4py communicator"):
        as_communicator(comm)
