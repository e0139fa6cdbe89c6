"""snapsink.integrations.pde: SnapsinkTracker against py-pde's own storage.

The reference is py-pde's ``MemoryStorage``, fed by its tracker at the same
interrupts in the same ``solve``: every stored field, time and member of a
``FieldCollection`` reads back bit-exact; the step is the solver's own step
count; the grid reads back as attrs (py-pde rebuilds an equal grid from them)
and as static cell coordinates.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import ConfigError, SchemaError, StoreStateError

pde = pytest.importorskip("pde")

from pde.grids.base import GridBase  # noqa: E402

from snapsink.integrations.pde import SnapsinkTracker, grid_attrs, grid_static  # noqa: E402

INTERVAL = 0.1


class Decay(pde.PDEBase):
    """du/dt = -rate u, for any field or collection; numpy only (no numba compile).

    ``fail_after``: raise once the time passes it (a simulation that crashes).
    """

    def __init__(self, rate: float = 1.0, fail_after: float | None = None):
        super().__init__()
        self.rate = rate
        self.fail_after = fail_after

    def evolution_rate(self, state: Any, t: float = 0) -> Any:
        if self.fail_after is not None and t > self.fail_after:
            raise FloatingPointError(f"the simulation blew up at t={t}")
        return -self.rate * state


def npy_at(path: Path) -> tuple[Any, Callable[[], Any]]:
    return snapsink.NpyDirectory(path / "run"), lambda: snapsink.open(path / "run")


def zarr_at(path: Path) -> tuple[Any, Callable[[], Any]]:
    store = snapsink.ZarrStore(path / "run.zarr", group="fields")
    return store, lambda: snapsink.open(path / "run.zarr", group="fields")


def hdf5_at(path: Path) -> tuple[Any, Callable[[], Any]]:
    # HDF5Store takes the grid too (it had no add_metadata: ConfigError)
    pytest.importorskip("h5py")
    store = snapsink.HDF5Store(path / "run.h5", group="fields")
    return store, lambda: snapsink.open(path / "run.h5", group="fields")


DISK = [
    pytest.param(npy_at, id="npy"),
    pytest.param(zarr_at, id="zarr"),
    pytest.param(hdf5_at, id="hdf5"),
]


@pytest.mark.parametrize("make", DISK)
def test_scalar_field_equals_py_pde_storage(
    make: Callable[[Path], tuple[Any, Callable[[], Any]]], tmp_path: Path
) -> None:
    grid = pde.CartesianGrid([[0.0, 1.0], [-1.0, 2.0]], [24, 32], periodic=[True, False])
    state = pde.ScalarField.random_uniform(grid, rng=np.random.default_rng(1))
    eq = pde.DiffusionPDE(diffusivity=0.01)
    storage = pde.MemoryStorage()
    store, read = make(tmp_path)
    eq.solve(
        state,
        t_range=1.0,
        dt=0.01,
        backend="numpy",  # no numba compilation: keeps the test fast
        tracker=[storage.tracker(INTERVAL), SnapsinkTracker(store, interrupts=INTERVAL)],
    )

    traj = read()
    assert len(storage) == 11
    assert len(traj) == len(storage)
    assert list(traj.fields) == ["field"]  # no label: the default name
    np.testing.assert_array_equal(traj.times, storage.times)  # bit-exact
    np.testing.assert_array_equal(traj["field"][:], np.stack(storage.data))
    assert traj.times.dtype == np.float64 and traj["field"][0].dtype == np.float64
    # the solver's step count: dt = 0.01, so 10 steps between interrupts
    np.testing.assert_array_equal(traj.steps, np.arange(0, 101, 10))
    assert traj.steps[-1] == eq.diagnostics["solver"]["steps"]

    g = traj.attrs["grid"]
    assert g["class"] == "CartesianGrid" and g["dim"] == 2
    assert g["shape"] == [24, 32] and g["axes"] == ["x", "y"] and g["axes_symmetric"] == []
    assert g["periodic"] == [True, False]
    assert g["bounds"] == [[0.0, 1.0], [-1.0, 2.0]]
    assert g["discretization"] == grid.discretization.tolist() == [1 / 24, 3 / 32]
    assert type(g["discretization"][0]) is float and type(g["shape"][0]) is int
    assert GridBase.from_state(dict(g["state"])) == grid
    assert traj.attrs["fields"] == {
        "field": {"class": "ScalarField", "rank": 0, "label": None, "dtype": "float64"}
    }
    assert traj.attrs["pde"] == {
        "version": pde.__version__,
        "solver": "EulerSolver",
        "pde_class": "DiffusionPDE",
        "step": "solver",
    }
    assert sorted(traj.static) == ["x", "y"]
    for axis, coords in zip("xy", grid.axes_coords, strict=True):
        np.testing.assert_array_equal(traj.static[axis], coords)


def test_field_collection_stores_one_field_per_member(tmp_path: Path) -> None:
    grid = pde.UnitGrid([6, 5], periodic=True)
    rng = np.random.default_rng(2)
    state = pde.FieldCollection(
        [
            pde.ScalarField.random_uniform(grid, rng=rng),
            pde.VectorField.random_uniform(grid, rng=rng),
            pde.Tensor2Field.random_uniform(grid, rng=rng),
        ],
        labels=["c", "v", "T"],
    )
    storage = pde.MemoryStorage()
    store, read = npy_at(tmp_path)
    Decay(0.5).solve(
        state,
        t_range=0.5,
        dt=0.01,
        backend="numpy",
        tracker=[storage.tracker(INTERVAL), SnapsinkTracker(store, INTERVAL)],
    )

    traj = read()
    assert sorted(traj.fields) == ["T", "c", "v"]
    assert len(traj) == len(storage) == 6
    np.testing.assert_array_equal(traj.times, storage.times)
    for k in range(len(storage)):
        ref = storage[k]  # the FieldCollection at interrupt k
        for name, shape in [("c", (6, 5)), ("v", (2, 6, 5)), ("T", (2, 2, 6, 5))]:
            assert traj[name][k].shape == shape
            np.testing.assert_array_equal(traj[name][k], ref[name].data)
    assert traj.attrs["fields"] == {
        "c": {"class": "ScalarField", "rank": 0, "label": "c", "dtype": "float64"},
        "v": {"class": "VectorField", "rank": 1, "label": "v", "dtype": "float64"},
        "T": {"class": "Tensor2Field", "rank": 2, "label": "T", "dtype": "float64"},
    }
    assert traj.attrs["grid"]["class"] == "UnitGrid"
    assert not np.array_equal(traj["v"][0], traj["v"][-1])  # it did evolve


def test_adaptive_steps_are_the_solvers_count(tmp_path: Path) -> None:
    grid = pde.CylindricalSymGrid(2.0, (0.0, 3.0), (8, 6))
    state = pde.ScalarField.from_expression(grid, "r**2 + z")
    storage = pde.MemoryStorage()
    store = snapsink.HostMemory()
    eq = pde.DiffusionPDE(diffusivity=0.1)
    eq.solve(
        state,
        t_range=0.5,
        dt=0.001,
        adaptive=True,
        backend="numpy",
        tracker=[storage.tracker(INTERVAL), SnapsinkTracker(store, INTERVAL, names="u")],
    )

    traj = store.trajectory()
    np.testing.assert_array_equal(traj.times, storage.times)
    np.testing.assert_array_equal(traj["u"][:], np.stack(storage.data))
    steps = traj.steps.tolist()
    assert steps[0] == 0 and all(b > a for a, b in itertools.pairwise(steps))
    assert steps[-1] == eq.diagnostics["solver"]["steps"]  # every step the solver took
    assert traj.attrs["grid"]["axes"] == ["r", "z"]
    assert traj.attrs["grid"]["axes_symmetric"] == ["φ"]
    assert GridBase.from_state(dict(traj.attrs["grid"]["state"])) == grid
    assert sorted(traj.static) == ["r", "z"]
    np.testing.assert_array_equal(traj.static["r"], grid.axes_coords[0])


def test_step_interrupt_counts_the_interrupts() -> None:
    grid = pde.UnitGrid([8])
    store = snapsink.HostMemory()
    Decay().solve(
        pde.ScalarField(grid, 1.0),
        t_range=0.3,
        dt=0.01,
        backend="numpy",
        tracker=SnapsinkTracker(store, [0.0, 0.05, 0.25], step="interrupt"),
    )
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(traj.times, [0.0, 0.05, 0.25])
    np.testing.assert_allclose(traj["field"][:, 0], np.exp(-traj.times), rtol=0.02)
    assert traj.attrs["pde"]["step"] == "interrupt"


def test_an_open_sync_sink_is_flushed_not_closed(tmp_path: Path) -> None:
    grid = pde.UnitGrid([4, 4])
    storage = pde.MemoryStorage()
    path = tmp_path / "run"
    with snapsink.SyncSink(snapsink.NpyDirectory(path, static=grid_static(grid))) as sink:
        tracker = SnapsinkTracker(sink, INTERVAL, names="c")
        Decay().solve(
            pde.ScalarField(grid, 2.0),
            t_range=0.2,
            dt=0.01,
            backend="numpy",
            tracker=[storage.tracker(INTERVAL), tracker],
        )
        assert tracker.sink is sink
        assert len(snapsink.open(path)) == 3  # flushed at the end of the run
        sink.write({"c": np.zeros((4, 4))}, step=1000, time=5.0)  # still open: ours
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [0, 10, 20, 1000]
    np.testing.assert_array_equal(traj["c"][:3], np.stack(storage.data))
    assert dict(traj.attrs) == {}  # the sink's store was built without them
    np.testing.assert_array_equal(traj.static["x"], grid.axes_coords[0])


def test_a_crashing_simulation_keeps_its_frames_when_the_tracker_is_closed(
    tmp_path: Path,
) -> None:
    grid = pde.UnitGrid([5])
    path = tmp_path / "run"
    with (
        pytest.raises(FloatingPointError, match="blew up"),
        SnapsinkTracker(snapsink.NpyDirectory(path), INTERVAL) as tracker,
    ):
        Decay(fail_after=0.25).solve(
            pde.ScalarField(grid, 1.0), t_range=1.0, dt=0.01, backend="numpy", tracker=tracker
        )
    traj = snapsink.open(path)
    np.testing.assert_allclose(traj.times, [0.0, 0.1, 0.2], atol=1e-12)
    assert traj.steps.tolist() == [0, 10, 20]
    # committed and unlocked: the run can be continued in the same store
    with snapsink.SyncSink(snapsink.NpyDirectory(path, mode="a"), writer="thread") as sink:
        sink.write({"field": np.zeros(5)}, step=21, time=0.21)
    assert len(snapsink.open(path)) == 4


# -- bad input: a clear error, nothing written, the store still usable --------------------
def test_bad_arguments_are_refused_at_construction(tmp_path: Path) -> None:
    store = snapsink.NpyDirectory(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"step: expected 'solver'.*got 'steps'"):
        SnapsinkTracker(store, step="steps")
    with pytest.raises(ConfigError, match="field name 'a b'"):
        SnapsinkTracker(store, names=["a b"])
    with pytest.raises(ConfigError, match="distinct"):
        SnapsinkTracker(store, names=["a", "a"])
    with pytest.raises(ConfigError, match=r"expected a store .* got int"):
        SnapsinkTracker(42)
    with pytest.raises(ConfigError, match="capacity"):
        SnapsinkTracker(store, capacity=0)
    with pytest.raises(ConfigError, match="writer"):
        SnapsinkTracker(store, writer="fork")

    class NoMetadata:  # a store of one's own, without add_metadata
        def open(self) -> None: ...

    with pytest.raises(ConfigError, match="NoMetadata has no add_metadata"):
        SnapsinkTracker(NoMetadata())
    assert not (tmp_path / "run").exists()


def test_names_that_do_not_fit_the_state_are_refused_before_writing(tmp_path: Path) -> None:
    grid = pde.UnitGrid([4])
    state = pde.FieldCollection([pde.ScalarField(grid, 1.0), pde.ScalarField(grid, 2.0)])
    store = snapsink.NpyDirectory(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"names: expected 2 name\(s\).*got \['only'\]"):
        Decay().solve(state, t_range=0.1, dt=0.01, backend="numpy",
                      tracker=SnapsinkTracker(store, names="only"))  # fmt: skip
    assert not (tmp_path / "run").exists()
    # the same store, with fitting names (the default ones here)
    Decay().solve(state, t_range=0.1, dt=0.01, backend="numpy",
                  tracker=SnapsinkTracker(store, INTERVAL))  # fmt: skip
    traj = snapsink.open(tmp_path / "run")
    assert sorted(traj.fields) == ["field_0", "field_1"]
    np.testing.assert_array_equal(traj["field_1"][0], np.full(4, 2.0))


def test_grid_metadata_conflicting_with_the_stores_is_refused(tmp_path: Path) -> None:
    grid = pde.UnitGrid([4])
    store = snapsink.HostMemory(attrs={"grid": "mine"}, static={"x": np.zeros(2)})
    with pytest.raises(ConfigError, match=r"attrs\['grid'\]: already set to 'mine'"):
        Decay().solve(pde.ScalarField(grid, 1.0), t_range=0.1, dt=0.01, backend="numpy",
                      tracker=SnapsinkTracker(store))  # fmt: skip
    assert len(store) == 0 and dict(store.trajectory().attrs) == {"grid": "mine"}
    with snapsink.SyncSink(store) as sink:  # still usable
        sink.write({"e": 1.0})
    assert store.trajectory()["e"][:].tolist() == [1.0]


def test_a_finished_tracker_is_not_reused(tmp_path: Path) -> None:
    grid = pde.UnitGrid([4])
    tracker = SnapsinkTracker(snapsink.NpyDirectory(tmp_path / "run"), INTERVAL)
    Decay().solve(pde.ScalarField(grid, 1.0), t_range=0.1, dt=0.01, backend="numpy",
                  tracker=tracker)  # fmt: skip
    with pytest.raises(StoreStateError, match="closed when the previous run ended"):
        Decay().solve(pde.ScalarField(grid, 1.0), t_range=0.1, dt=0.01, backend="numpy",
                      tracker=tracker)  # fmt: skip
    assert len(snapsink.open(tmp_path / "run")) == 2


def test_a_step_that_does_not_advance_is_refused() -> None:
    """Driven by hand (no solver between two handles): a clear error, not a bad store."""
    grid = pde.UnitGrid([3])
    field = pde.ScalarField(grid, 1.0)
    store = snapsink.HostMemory()
    info: dict[str, Any] = {"controller": {"t_start": 0.0}, "solver": {"steps": 0}}
    tracker = SnapsinkTracker(store, writer="thread")
    tracker.initialize(field, info)
    tracker.handle(field, 0.0)
    with pytest.raises(SchemaError, match="did not advance"):
        tracker.handle(field, 0.5)
    info["solver"]["steps"] = 7
    tracker.handle(field, 0.5)
    del info["solver"]["steps"]
    with pytest.raises(ConfigError, match="step='interrupt'"):
        tracker.handle(field, 0.9)
    tracker.finalize(info)
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 7] and traj.times.tolist() == [0.0, 0.5]


def test_grid_helpers_describe_spherical_grids() -> None:
    grid = pde.SphericalSymGrid((1.0, 3.0), 8)
    attrs = snapsink.HostMemory(attrs={"grid": grid_attrs(grid)}).trajectory().attrs["grid"]
    assert attrs["class"] == "SphericalSymGrid" and attrs["dim"] == 3
    assert attrs["axes"] == ["r"] and attrs["axes_symmetric"] == ["θ", "φ"]
    assert attrs["bounds"] == [[1.0, 3.0]] and attrs["discretization"] == [0.25]
    assert GridBase.from_state(dict(attrs["state"])) == grid
    static = grid_static(grid)
    assert list(static) == ["r"]
    np.testing.assert_array_equal(static["r"], np.linspace(1.125, 2.875, 8))


def test_importing_snapsink_does_not_import_py_pde() -> None:
    code = (
        "import sys, snapsink, snapsink.integrations; "
        "assert 'pde' not in sys.modules, 'pde imported'; "
        "import snapsink.integrations.pde; assert 'pde' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("step", ["solver", "interrupt"])
def test_a_resumed_store_continues_the_stored_steps(tmp_path: Path, step: str) -> None:
    """A second solve into the same store (mode="a"), from the stored last time:
    its steps come after the stored ones (each solve counts from 0), and the
    frames of both runs read back in order."""
    grid = pde.CartesianGrid([[0.0, 1.0]], [8])
    state = pde.ScalarField(grid, np.linspace(1.0, 2.0, 8), label="c")
    path = tmp_path / "run"
    with SnapsinkTracker(snapsink.NpyDirectory(path), INTERVAL, step=step) as tracker:
        state = Decay().solve(state, t_range=0.3, dt=0.01, backend="numpy", tracker=tracker)
    first = snapsink.open(path)
    n, last, t_last = len(first), int(first.steps[-1]), float(first.times[-1])
    with SnapsinkTracker(snapsink.NpyDirectory(path, mode="a"), INTERVAL, step=step) as tracker:
        Decay().solve(state, t_range=(t_last, 0.6), dt=0.01, backend="numpy", tracker=tracker)
    traj = snapsink.open(path)
    steps = traj.steps.tolist()
    assert steps[:n] == first.steps.tolist()
    assert steps[n] == last + 1  # the continued solve's count 0, after the stored steps
    assert steps == sorted(set(steps)) and len(traj) > n + 2
    assert traj.times.tolist() == sorted(traj.times.tolist())
    np.testing.assert_array_equal(traj["c"][n], state.data)  # it starts from the stored state
