"""What a Trajectory hands out, on every store: field reads are the caller's own
arrays (editing one changes no later read, HostMemory included); steps, times,
dropped steps and static arrays are shared read-only arrays; attrs a new copy
at each access; iter_chunks one snapshot even across a refresh()."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import Field, HostMemory, SyncSink

N = 4
SCHEMA = {"x": Field("float64", (3,)), "r": Field("int32", (None, 2))}
STATIC = {"z": np.arange(3)}
ATTRS = {"tags": ["a"], "run": {"T": 300}}


def _x(i: int) -> np.ndarray[Any, Any]:
    return np.arange(3.0) + 10 * i


def _r(i: int) -> np.ndarray[Any, Any]:
    return np.full((i + 1, 2), i, np.int32)


def _fill(store: Any) -> None:
    with SyncSink(store, schema=SCHEMA, writer="thread", policy="drop_newest") as sink:
        for i in range(N):
            sink.write({"x": _x(i), "r": _r(i)}, step=100 + i, time=0.5 * i)


def _memory(tmp: Path) -> Callable[[], snapsink.Trajectory]:
    store = HostMemory(static=STATIC, attrs=ATTRS)
    _fill(store)
    return store.trajectory


def _npy(tmp: Path) -> Callable[[], snapsink.Trajectory]:
    _fill(snapsink.NpyDirectory(tmp / "run", static=STATIC, attrs=ATTRS))
    return lambda: snapsink.open(tmp / "run")


def _zarr(tmp: Path) -> Callable[[], snapsink.Trajectory]:
    pytest.importorskip("zarr")
    _fill(snapsink.ZarrStore(tmp / "run.zarr", static=STATIC, attrs=ATTRS))
    return lambda: snapsink.open(tmp / "run.zarr")


def _hdf5(tmp: Path) -> Callable[[], snapsink.Trajectory]:
    pytest.importorskip("h5py")
    _fill(snapsink.HDF5Store(tmp / "run.h5", static=STATIC, attrs=ATTRS))
    return lambda: snapsink.open(tmp / "run.h5")


STORES = {"memory": _memory, "npy": _npy, "zarr": _zarr, "hdf5": _hdf5}


@pytest.fixture(params=list(STORES))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], snapsink.Trajectory]:
    """Opens the same stored run again at each call."""
    return STORES[request.param](tmp_path)


def _check_unchanged(traj: snapsink.Trajectory) -> None:
    assert np.asarray(traj["x"]).tolist() == [_x(i).tolist() for i in range(N)]
    assert [a.tolist() for a in traj["r"][:]] == [_r(i).tolist() for i in range(N)]
    assert traj.steps.tolist() == [100, 101, 102, 103]
    assert traj.times is not None and traj.times.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert traj.static["z"].tolist() == [0, 1, 2]
    assert traj.attrs == ATTRS


def test_field_reads_are_the_callers_own(opener: Callable[[], snapsink.Trajectory]) -> None:
    """Editing what a read returned changes no later read of the trajectory, nor
    of the store (HostMemory handed out views of its snapshot)."""
    pytest.importorskip("xarray")
    pytest.importorskip("dask")
    traj = opener()
    edits: list[np.ndarray[Any, Any]] = [
        traj["x"][:],
        traj["x"][1],
        traj["x"][1:3, 0],
        np.asarray(traj["x"]),
        traj.frame(2)["x"],
        traj.frame(2)["r"],
        traj["r"][3],
        traj["r"][:][0],
        next(traj.iter_chunks(2))["x"],
        traj.to_xarray()["x"].values,
        traj.to_xarray()["r"].values,
        traj.to_xarray()["r.offsets"].values,
        traj.to_dask("x").compute(),
        traj.to_dask("r").compute(),
        traj.to_dask("r.offsets").compute(),
    ]
    for arr in edits:
        arr[...] = 99
    _check_unchanged(traj)
    _check_unchanged(opener())


def test_cached_metadata_is_read_only(opener: Callable[[], snapsink.Trajectory]) -> None:
    """An in-place edit of steps, times, dropped steps or a static array raises
    numpy's own error, never changing later reads; attrs is a copy."""
    traj = opener()
    steps, times, z = traj.steps, traj.times, traj.static["z"]
    assert times is not None
    for arr in (steps, times, z, traj.dropped_steps, next(traj.iter_chunks(2))["steps"]):
        with pytest.raises(ValueError, match="read-only"):
            arr += 1
    assert steps.copy().flags.writeable  # a copy is the caller's to change
    traj.attrs["tags"].append("analysed")
    traj.attrs["run"]["T"] = 0
    traj.static["y"] = np.zeros(2)  # a new dict at each access: nothing is kept
    _check_unchanged(traj)
    assert "y" not in traj.static
    _check_unchanged(opener())


def test_host_memory_keeps_no_object_of_the_caller_or_reader() -> None:
    """A HostMemory trajectory's static arrays and attrs are not the store's own:
    a reader cannot change what a later trajectory() sees."""
    store = HostMemory(static={"masses": np.array([1.0, 16.0])}, attrs={"tags": ["a"]})
    _fill(store)
    first = store.trajectory()
    with pytest.raises(ValueError, match="read-only"):
        first.static["masses"] /= 17.0
    first.attrs["tags"].append("analysed")
    first._source.attrs()["tags"].append("analysed")  # the reader's own, too
    again = store.trajectory()
    assert again.static["masses"].tolist() == [1.0, 16.0]
    assert again.attrs == {"tags": ["a"]}


def _append(path: Path, start: int, stop: int) -> None:
    with SyncSink(snapsink.NpyDirectory(path, mode="a"), writer="thread") as sink:
        for i in range(start, stop):
            sink.write({"x": float(i)}, step=i, time=float(i))


def test_iter_chunks_is_one_snapshot_across_a_refresh(tmp_path: Path) -> None:
    """A refresh() between chunks (a live monitor) never pairs the old steps
    with new frames: the chunks are the frames committed at the call."""
    path = tmp_path / "run"
    _append(path, 0, 10)
    traj = snapsink.open(path)
    chunks = traj.iter_chunks(4)
    frames = traj.iter_frames()
    got = [next(chunks)]
    seen = [next(frames)]
    _append(path, 10, 20)
    traj.refresh()
    assert len(traj) == 20
    got.extend(chunks)
    seen.extend(frames)
    assert [c["steps"].tolist() for c in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for c in got:
        assert c["x"].tolist() == c["times"].tolist() == c["steps"].astype(float).tolist()
    assert [float(f["x"]) for f in seen] == [float(i) for i in range(10)]
    assert [len(c["steps"]) for c in traj.iter_chunks(8)] == [8, 8, 4]  # a new call: new frames


@pytest.mark.parametrize(
    ("frames", "error", "match"),
    [
        (None, TypeError, "frames: expected a positive int"),
        (True, TypeError, "got True"),
        (2.0, TypeError, "frames: expected a positive int"),
        (0, ValueError, "expected >= 1, got 0"),
        (-3, ValueError, "expected >= 1"),
    ],
)
def test_iter_chunks_checks_frames_at_the_call(frames: Any, error: type, match: str) -> None:
    store = HostMemory()
    _fill(store)
    traj = store.trajectory()
    with pytest.raises(error, match=match):
        traj.iter_chunks(frames)  # not iterated: refused all the same
    assert [len(c["steps"]) for c in traj.iter_chunks(3)] == [3, 1]


def test_to_dask_names_a_name_that_is_no_str() -> None:
    pytest.importorskip("dask")
    store = HostMemory()
    _fill(store)
    traj = store.trajectory()
    with pytest.raises(TypeError, match=r"name: expected a field name \(str\) or None, got 3"):
        traj.to_dask(3)  # type: ignore[arg-type]
    assert traj.to_dask("x").compute().tolist() == [_x(i).tolist() for i in range(N)]
