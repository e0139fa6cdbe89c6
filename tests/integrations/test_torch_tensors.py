"""PyTorch CPU tensors numpy cannot read as they are, written through a SyncSink.

A conjugate view (``t.conj()``) or a negative view is stored as its values
(``t.resolve_conj().numpy()``, bit for bit); a tensor of a dtype NumPy has not
(bfloat16, float8) is a DTypeError that names the field and the dtype and says
what to do, and the sink takes the next good frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import DTypeError, HostMemory, NpyDirectory, SyncSink

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(60)

STORES: dict[str, Callable[[Path], Any]] = {
    "memory": lambda tmp: HostMemory(),
    "npy": lambda tmp: NpyDirectory(tmp / "run"),
}


def _read(store: Any, tmp_path: Path) -> Any:
    return snapsink.open(store if isinstance(store, HostMemory) else tmp_path / "run")


def _views(i: int) -> dict[str, Any]:
    """Frame ``i``: views with the conjugate or negative bit set, and their values."""
    gen = torch.Generator().manual_seed(i)
    z = torch.randn(4, 3, dtype=torch.complex128, generator=gen)
    z64 = torch.randn(5, dtype=torch.complex64, generator=gen)
    r = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    views = {
        "conj": z.conj(),
        "conj64": z64.conj(),
        "conj_t": z.conj().t(),  # a strided conjugate view
        "neg": torch._neg_view(r),
        "neg_int": torch._neg_view(torch.arange(4, dtype=torch.int32) + i),
        "conj_neg": torch._neg_view(z.conj()),
        "conj_grad": z.clone().requires_grad_(True).conj(),
    }
    return views


@pytest.mark.parametrize("kind", list(STORES))
def test_conj_and_neg_views_store_their_values(tmp_path: Path, kind: str) -> None:
    assert _views(0)["conj"].is_conj() and _views(0)["neg"].is_neg()
    store = STORES[kind](tmp_path)
    expected: list[dict[str, np.ndarray[Any, Any]]] = []
    with SyncSink(store, capacity=4) as sink:
        for i in range(6):
            frame = _views(i)
            expected.append(
                {
                    k: v.detach().resolve_conj().resolve_neg().numpy().copy()
                    for k, v in frame.items()
                }
            )
            sink.write(frame, step=i)
            for v in frame.values():  # the caller's tensors keep their bits
                assert v.is_conj() or v.is_neg()
    traj = _read(store, tmp_path)
    np.testing.assert_array_equal(traj.steps, np.arange(6))
    for name in expected[0]:
        got = np.asarray(traj[name][:])
        want = np.stack([e[name] for e in expected])
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # bit-exact
    # the conjugate view is the conjugate of the tensor it views
    z = torch.randn(4, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.asarray(traj["conj"][0]), np.conj(z.numpy()))


def test_conj_view_into_declared_schema() -> None:
    """A conjugate complex64 view into a declared complex128 field (a safe cast)."""
    store = HostMemory()
    z = torch.tensor([1 + 2j, -3.5 - 0.25j], dtype=torch.complex64)
    with SyncSink(store, schema={"z": ("complex128", (2,))}) as sink:
        sink.write({"z": z.conj()}, step=0)
    got = np.asarray(snapsink.open(store)["z"][0])
    assert got.dtype == np.complex128
    np.testing.assert_array_equal(got, z.conj().resolve_conj().numpy().astype(np.complex128))
    np.testing.assert_array_equal(got, [1 - 2j, -3.5 + 0.25j])


NO_NUMPY_DTYPES = [
    pytest.param(dtype, bits, id=str(dtype).removeprefix("torch."))
    for dtype, bits in [
        (torch.bfloat16, "torch.int16"),
        *[
            (getattr(torch, n), "torch.int8")
            for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
            if hasattr(torch, n)
        ],
    ]
]


@pytest.mark.parametrize("kind", list(STORES))
@pytest.mark.parametrize(("dtype", "bits"), NO_NUMPY_DTYPES)
def test_dtype_numpy_lacks_is_refused_clearly(
    tmp_path: Path, kind: str, dtype: Any, bits: str
) -> None:
    store = STORES[kind](tmp_path)
    good = torch.arange(3, dtype=torch.float32)
    bad = torch.arange(3, dtype=torch.float32).to(dtype)
    with SyncSink(store, capacity=4) as sink:
        # the first frame (which would fix the schema), then a later one
        with pytest.raises(DTypeError) as first:
            sink.write({"v": bad, "w": good}, step=0)
        sink.write({"v": good, "w": good}, step=1)
        with pytest.raises(DTypeError) as later:
            sink.write({"v": good, "w": bad.requires_grad_(True)}, step=2)
        sink.write({"v": good + 1, "w": good + 2}, step=3)
    for exc, field, step in ((first, "v", ""), (later, "w", " at step 2")):
        assert type(exc.value) is DTypeError
        msg = str(exc.value)
        assert msg.startswith(
            f"field {field!r}: expected a bool, integer, float or complex array, "
            f"got a Tensor of dtype {dtype}{step}"
        ), msg
        assert "NumPy has no dtype" in msg
        assert ".float()" in msg
        assert f".view({bits})" in msg
        # the hint works: the bits are readable by numpy
        assert bad.detach().view(getattr(torch, bits.removeprefix("torch."))).numpy().shape == (3,)
    traj = _read(store, tmp_path)
    np.testing.assert_array_equal(traj.steps, [1, 3])
    v, w = np.asarray(traj["v"][:]), np.asarray(traj["w"][:])
    assert v.dtype == w.dtype == np.float32
    np.testing.assert_array_equal(v, [[0, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(w, [[0, 1, 2], [2, 3, 4]])


def test_other_dtypes_numpy_lacks_say_what_to_do() -> None:
    with warnings.catch_warnings():  # experimental (complex32) and deprecated (qint8) dtypes
        warnings.simplefilter("ignore")
        cases = [
            (torch.zeros(2, dtype=torch.complex32), (".to(torch.complex64)", ".view(torch.int32)")),
            (
                torch.quantize_per_tensor(torch.tensor([1.0, 2.0]), 0.1, 0, torch.qint8),
                (".dequantize()", ".int_repr()"),
            ),
        ]
        if hasattr(torch, "uint4"):
            cases.append((torch.zeros(2, dtype=torch.uint4), (".view(torch.int8)",)))
    for value, hints in cases:
        with SyncSink(HostMemory()) as sink, pytest.raises(DTypeError) as exc:
            sink.write({"q": value}, step=0)
        msg = str(exc.value)
        assert msg.startswith(
            "field 'q': expected a bool, integer, float or complex array, got a Tensor "
            f"of dtype {value.dtype}"
        ), msg
        for hint in hints:
            assert hint in msg, msg
