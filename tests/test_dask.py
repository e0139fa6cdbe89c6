"""Trajectory.to_dask and to_xarray(chunks=...): Dask arrays whose chunks are the
store's, read lazily through the store's reader, bit-exact, committed frames
only, and computed on other processes (dask's process scheduler, and a
dask.distributed LocalCluster)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import ConfigError, Field, FormatError, HostMemory, NpyDirectory, ZarrStore
from snapsink._dask import StoredArray

da = pytest.importorskip("dask.array", reason="needs dask: pip install -e '.[test]'")

SCHEMA = {
    "u": Field("float32", (4, 5), dims=("y", "x")),
    "pos": Field("float64", (None, 3), dims=("atom", "xyz")),
    "e": Field("float64", ()),
}
N = 23
CHUNK = 4  # frames per chunk of the Zarr and HDF5 stores


def _frame(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "u": rng.standard_normal((4, 5), dtype=np.float32),
        "pos": rng.standard_normal((i % 3 + 1, 3)),
        "e": float(i) / 3,
    }


def _make(kind: str, tmp_path: Path) -> tuple[Any, Any]:
    """(store, what snapsink.open takes) of kind ``kind``."""
    if kind == "memory":
        store = HostMemory()
        return store, store
    if kind == "npy":
        return NpyDirectory(tmp_path / "run"), tmp_path / "run"
    if kind == "zarr":
        return ZarrStore(tmp_path / "run.zarr", chunk_frames=CHUNK), tmp_path / "run.zarr"
    pytest.importorskip("h5py", reason="needs h5py: pip install -e '.[hdf5]'")
    path = tmp_path / "run.h5"
    return snapsink.HDF5Store(path, chunk_frames=CHUNK), path


def _written(kind: str, tmp_path: Path, n: int = N) -> snapsink.Trajectory:
    store, where = _make(kind, tmp_path)
    with snapsink.SyncSink(store, schema=SCHEMA) as sink:
        for i in range(n):
            sink.write(_frame(i), step=i, time=0.25 * i)
    return snapsink.open(where)


def _store_chunks(kind: str, tmp_path: Path, key: str) -> int | None:
    """The store's own rows per chunk of array ``key``, read with zarr or h5py."""
    if kind == "zarr":
        import zarr

        return int(zarr.open_array(tmp_path / "run.zarr" / key, mode="r").chunks[0])
    if kind == "hdf5":
        import h5py

        with h5py.File(tmp_path / "run.h5", "r", swmr=True) as f:
            return int(f[key].chunks[0])
    return None


def _expect_chunks(total: int, per: int) -> tuple[int, ...]:
    return tuple(min(per, total - s) for s in range(0, total, per))


KINDS = ["memory", "npy", "zarr", "hdf5"]


@pytest.mark.parametrize("kind", KINDS)
def test_to_dask_is_bit_exact_with_the_stores_chunks(kind: str, tmp_path: Path) -> None:
    traj = _written(kind, tmp_path)
    arrays = traj.to_dask()
    assert list(arrays) == ["u", "pos", "pos.offsets", "e"]
    # fixed-shape fields: the same bits as traj[name][:]
    for name in ("u", "e"):
        got = arrays[name].compute()
        assert got.dtype == traj[name].dtype and got.shape == (N, *traj.fields[name].shape)
        assert got.tobytes() == traj[name][:].tobytes()
    # the ragged field: rows of all frames, split by its offsets
    rows, offsets = arrays["pos"].compute(), arrays["pos.offsets"].compute()
    assert offsets.dtype == np.int64 and offsets.shape == (N + 1,) and offsets[0] == 0
    for i, want in enumerate(traj["pos"][:]):
        assert rows[offsets[i] : offsets[i + 1]].tobytes() == want.tobytes()
    assert rows.shape[0] == offsets[-1]
    # chunks along the first axis are the store's; other axes are whole
    for key in ("u", "e", "pos", "pos.offsets"):
        total = arrays[key].shape[0]
        per = _store_chunks(kind, tmp_path, key) or total  # npy, memory: one ~64 MiB chunk
        if kind in ("zarr", "hdf5") and key != "pos":
            assert per == CHUNK
        assert arrays[key].chunks[0] == _expect_chunks(total, per), key
        assert all(len(c) == 1 for c in arrays[key].chunks[1:])
    # one field by name, a ragged one's offsets too
    assert traj.to_dask("e").compute().tobytes() == traj["e"][:].tobytes()
    assert traj.to_dask("pos.offsets").compute().tolist() == offsets.tolist()


@pytest.mark.parametrize("kind", ["memory", "npy"])
def test_unchunked_stores_split_by_bytes(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snapsink._dask

    traj = _written(kind, tmp_path)
    # 80 bytes per frame of "u": 3 frames per chunk at 250 bytes
    monkeypatch.setattr(snapsink._dask, "DEFAULT_CHUNK_BYTES", 250)
    u = traj.to_dask("u")
    assert u.chunks[0] == _expect_chunks(N, 3)
    assert u.compute().tobytes() == traj["u"][:].tobytes()
    assert traj.to_dask("e").chunks[0] == _expect_chunks(N, 31)


@pytest.mark.parametrize("kind", KINDS)
def test_to_xarray_chunks_equals_to_xarray(kind: str, tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    traj = _written(kind, tmp_path)
    loaded = traj.to_xarray()
    lazy = traj.to_xarray(chunks="store")
    for name in ("u", "pos", "pos.offsets", "e"):
        assert isinstance(lazy[name].data, da.Array), name
    assert lazy["u"].chunks == traj.to_dask("u").chunks
    xr.testing.assert_identical(lazy.compute(), loaded)
    # frames per chunk chosen by the caller; xarray's spelling too
    for chunks in (5, {"frame": 5}):
        by5 = traj.to_xarray(chunks=chunks)
        assert by5["u"].chunks[0] == _expect_chunks(N, 5)
        assert by5["pos.offsets"].chunks[0] == _expect_chunks(N + 1, 5)
        xr.testing.assert_identical(by5.compute(), loaded)
    assert traj.to_xarray(chunks={})["u"].chunks == lazy["u"].chunks


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
def test_building_the_graph_reads_no_data(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traj = _written(kind, tmp_path)
    source_type = type(traj._source)
    calls: list[tuple[str, int, int]] = []
    real = source_type.read_rows

    def counting(self: Any, key: str, start: int, stop: int) -> Any:
        calls.append((key, start, stop))
        return real(self, key, start, stop)

    monkeypatch.setattr(source_type, "read_rows", counting)
    arrays = traj.to_dask()
    traj.to_xarray(chunks="store")
    assert calls == []
    peak = arrays["u"].max(axis=0).compute()
    assert peak.tobytes() == traj["u"][:].max(axis=0).tobytes()
    # one read per chunk of "u", each within the committed frames
    reads = sorted((a, b) for key, a, b in calls if key == "u")
    per = _store_chunks(kind, tmp_path, "u") or N
    assert reads == [(s, min(s + per, N)) for s in range(0, N, per)]


@pytest.mark.parametrize("kind", ["npy", "zarr"])
def test_the_graph_sees_only_committed_frames(kind: str, tmp_path: Path) -> None:
    store, where = _make(kind, tmp_path)
    with snapsink.SyncSink(store, schema=SCHEMA) as sink:
        for i in range(10):
            sink.write(_frame(i), step=i)
        sink.flush()
        traj = snapsink.open(where)
        u, pos = traj.to_dask("u"), traj.to_dask("pos")
        offsets = traj.to_dask("pos.offsets")
        for i in range(10, 17):
            sink.write(_frame(i), step=i)
        sink.flush()
        assert len(snapsink.open(where)) == 17
        traj.refresh()  # the open reader sees them now; the graph does not
        assert len(traj) == 17
        got_u = u.compute()
        got_pos = pos.compute(scheduler="processes")  # a fresh reader in another process
        got_off = offsets.compute()
    assert got_u.shape == (10, 4, 5)
    assert got_u.tobytes() == np.stack([_frame(i)["u"] for i in range(10)]).tobytes()
    assert got_off.shape == (11,) and got_pos.shape == (got_off[-1], 3)
    assert got_pos.tobytes() == np.concatenate([_frame(i)["pos"] for i in range(10)]).tobytes()


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
def test_tasks_reopen_the_store_by_path(kind: str, tmp_path: Path) -> None:
    traj = _written(kind, tmp_path)
    u = traj.to_dask("u")
    # what a task holds pickles without the open reader (no file handles)
    stored = StoredArray(traj._source, "u", u.shape, u.dtype)
    assert stored._source is traj._source  # this process reads through the open reader
    copy = pickle.loads(pickle.dumps(stored))
    assert copy._source is None and copy._opener is not None
    assert copy[3:7].tobytes() == traj["u"][3:7].tobytes()  # reopened by path
    assert copy[-1].tobytes() == traj["u"][N - 1].tobytes()
    # dask's process pool: every chunk read by a reader opened in a worker
    got = (u * 2).sum(axis=(1, 2)).compute(scheduler="processes")
    np.testing.assert_array_equal(got, (traj["u"][:] * 2).sum(axis=(1, 2)))


def test_an_empty_trajectory(tmp_path: Path) -> None:
    store = NpyDirectory(tmp_path / "run")
    with snapsink.SyncSink(store, schema=SCHEMA):
        pass
    arrays = snapsink.open(tmp_path / "run").to_dask()
    assert arrays["u"].shape == (0, 4, 5) and arrays["u"].compute().shape == (0, 4, 5)
    assert arrays["pos"].compute().shape == (0, 3)
    assert arrays["pos.offsets"].compute().tolist() == [0]


def test_bad_requests_are_clear(tmp_path: Path) -> None:
    traj = _written("npy", tmp_path, n=3)
    for bad in (0, -2, True, "auto", 2.5, {"x": 2}, {"frame": 0}):
        with pytest.raises(ConfigError, match="chunks: expected"):
            traj.to_dask(chunks=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="chunks: expected"):
            traj.to_xarray(chunks=bad)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="no field 'nope'"):
        traj.to_dask("nope")
    with pytest.raises(KeyError, match=r"no field 'u.offsets'"):
        traj.to_dask("u.offsets")  # "u" is not ragged
    # the trajectory still reads
    assert traj.to_dask("u").compute().tobytes() == traj["u"][:].tobytes()


def test_import_snapsink_does_not_import_dask() -> None:
    code = "import sys, snapsink; print(sorted({'dask', 'xarray'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# -- dask.distributed ----------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = pytest.importorskip(
        "distributed", reason="needs dask.distributed: pip install -e '.[dask]'"
    )
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["npy", "zarr"])
def test_a_local_cluster_computes_from_the_store(kind: str, tmp_path: Path, client: Any) -> None:
    traj = _written(kind, tmp_path)
    arrays = traj.to_dask(chunks=CHUNK)
    mean_u = arrays["u"].astype(np.float64).mean(axis=0)
    rows_per_frame = da.diff(arrays["pos.offsets"])
    pos_sum = arrays["pos"].sum(axis=0)
    got_mean, got_rows, got_sum = client.compute([mean_u, rows_per_frame, pos_sum], sync=True)
    frames = [_frame(i) for i in range(N)]
    u = np.stack([f["u"] for f in frames])
    np.testing.assert_allclose(got_mean, u.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)
    assert got_rows.tolist() == [len(f["pos"]) for f in frames]
    want_sum = np.concatenate([f["pos"] for f in frames]).sum(axis=0)
    np.testing.assert_allclose(got_sum, want_sum, rtol=0, atol=1e-12)
    # a reduction that does not depend on the order of the sums: bit-exact
    got_max = client.compute(arrays["u"].max(axis=0), sync=True)
    assert got_max.tobytes() == u.max(axis=0).tobytes()
    # the chunks were read on the workers: each reopened the store by path
    opened = client.run(lambda: [str(k[1][0]) for k in __import__("snapsink._dask")._dask._opened])
    assert len(opened) == 2
    where = str(tmp_path / ("run" if kind == "npy" else "run.zarr"))
    assert any(where in paths for paths in opened.values())
    # the same analysis through xarray, unchanged
    ds = traj.to_xarray(chunks="store")
    got = ds["u"].astype(np.float64).mean("frame").compute().values
    np.testing.assert_allclose(got, u.astype(np.float64).mean(axis=0), rtol=0, atol=1e-12)


# -- a store replaced (mode="w") after the graph was built -------------------------
def _run(kind: str, tmp_path: Path, n: int, first: float, mode: str) -> Path:
    """Frames ``x[i] = first + i`` of ``n`` steps into a new run at the store's path."""
    if kind == "hdf5":
        pytest.importorskip("h5py", reason="needs h5py: pip install -e '.[hdf5]'")
    cls = {"npy": NpyDirectory, "zarr": ZarrStore, "hdf5": snapsink.HDF5Store}[kind]
    path = tmp_path / {"npy": "run", "zarr": "run.zarr", "hdf5": "run.h5"}[kind]
    with snapsink.SyncSink(cls(path, mode=mode), writer="thread") as sink:
        for i in range(n):
            sink.write({"x": np.full(3, first + i)}, step=i)
    return path


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_workers_refuse_a_replaced_store(kind: str, tmp_path: Path, client: Any) -> None:
    pytest.importorskip("xarray")
    path = _run(kind, tmp_path, 10, 0.0, "x")
    traj = snapsink.open(path)
    x, ds = traj.to_dask("x"), traj.to_xarray(chunks="store")
    _run(kind, tmp_path, 20, 1000.0, "w")
    # reopened by path on a worker: the new run is not the graph's
    for graph in (x, ds["x"].data):
        with pytest.raises(FormatError, match="was replaced since it was opened"):
            client.compute(graph, sync=True)
    # a graph built on the new run reads it there
    got = client.compute(snapsink.open(path).to_dask("x"), sync=True)
    assert got[:, 0].tolist() == [1000.0 + i for i in range(20)]


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
def test_a_worker_reads_a_replaced_store_as_the_new_run(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeps the readers it reopened (one per run): a graph built on
    the new run after a replacement gets a reader of its own, not the old run's."""
    from collections import OrderedDict

    import snapsink._dask

    monkeypatch.setattr(snapsink._dask, "_opened", OrderedDict())

    def task(traj: snapsink.Trajectory) -> StoredArray:  # as it lands on a worker
        stored = StoredArray(traj._source, "x", (len(traj), 3), np.dtype("f8"))
        return pickle.loads(pickle.dumps(stored))

    path = _run(kind, tmp_path, 10, 0.0, "x")
    assert task(snapsink.open(path))[:][:, 0].tolist() == [float(i) for i in range(10)]
    assert task(snapsink.open(path))[9:][:, 0].tolist() == [9.0]
    assert len(snapsink._dask._opened) == 1  # reopened once for the run
    _run(kind, tmp_path, 20, 1000.0, "w")
    assert task(snapsink.open(path))[:][:, 0].tolist() == [1000.0 + i for i in range(20)]
    assert len(snapsink._dask._opened) == 2
