"""ZarrStore: rows of uncompressed arrays written in place, straight from the frames.

On a local directory, an array whose chunk file is exactly its rows' memory
(zarr's ``bytes`` codec alone, no sharding, a zero fill value) takes each
frame's rows at their offset in the chunk file, which is created at its final
name and extended to the whole chunk's size. These tests hold that every
commit reads back bit-exact with snapsink, zarr, xarray and dask, that the
chunk files are the very bytes zarr writes, and that a crash between commits
leaves the committed rows of a chunk untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs

from snapsink._schema import Batch, Field, Frame, Schema
from snapsink.stores import _zarrio
from snapsink.stores.zarr import ZarrStore, open_zarr

# the test extra has both; a machine without them (the GPU machine) skips this file
da = pytest.importorskip("dask.array", reason="needs dask: pip install -e '.[test]'")
xr = pytest.importorskip("xarray", reason="needs xarray: pip install -e '.[test]'")

SCHEMA = Schema({
    "x": Field("f4", (5, 3)),
    "k": Field("i8", (4,)),
    "e": Field("f8", ()),
    "r": Field("f8", (None, 2)),
})  # fmt: skip


def _frames(n: int, start: int = 0, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(start, start + n):
        x = rng.standard_normal((5, 3)).astype(np.float32)
        x[0, 0] = -0.0  # bit-exact: the sign of zero counts
        out.append(Frame(s, s * 0.5, {
            "x": x,
            "k": rng.integers(-(2**62), 2**62, 4, dtype=np.int64),
            "e": np.float64(s) + 0.25,
            "r": rng.standard_normal((s % 3, 2)),
        }))  # fmt: skip
    return out


def _bits(a: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(a)).tobytes()


def _check_every_reader(loc: Path, frames: list[Frame]) -> None:
    """The committed frames read back bit-exact by snapsink, zarr, xarray and dask."""
    n = len(frames)
    traj = open_zarr(loc)
    assert len(traj) == n
    ds = xr.open_zarr(loc, consolidated=False)
    for name in ("x", "k", "e"):
        want = _bits(np.stack([np.asarray(f.fields[name]) for f in frames]))
        assert _bits(traj[name][:]) == want
        assert _bits(zarr.open_array(loc / name, mode="r")[:n]) == want
        assert _bits(ds[name].values[:n]) == want
        assert _bits(da.from_zarr(str(loc), component=name)[:n].compute()) == want
    for i, f in enumerate(frames):
        assert _bits(traj["r"][i]) == _bits(f.fields["r"])


def _direct_columns(store: ZarrStore) -> set[str]:
    return {name for name, col in store._columns.items() if col.direct is not None}


async def test_every_commit_reads_back_with_every_reader(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    frames = _frames(23)
    store = ZarrStore(loc, chunk_frames=4)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    assert _direct_columns(store) == {"x", "k", "e", "steps", "times"}  # ragged: buffered
    done = 0
    for size in (1, 2, 3, 5, 1, 4, 7):  # runs that start and end inside chunks
        await store.append(Batch(frames[done : done + size]))
        done += size
        await store.commit()
        _check_every_reader(loc, frames[:done])
        # a partly filled chunk file has its whole size: zarr reads it
        last = loc / "x" / "c" / str((done - 1) // 4) / "0" / "0"
        assert last.stat().st_size == 4 * 5 * 3 * 4
    await store.close()
    _check_every_reader(loc, frames)
    assert not list(loc.rglob("*.partial"))


async def test_chunk_files_are_the_bytes_zarr_writes(tmp_path: Path) -> None:
    frames = _frames(10)
    await _write_all(ZarrStore(tmp_path / "s", chunk_frames=4), frames, batch=3)
    want = np.stack([f.fields["x"] for f in frames])
    theirs = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "z"), shape=want.shape, chunks=(4, 5, 3),
        dtype="f4", compressors=None,
    )  # fmt: skip
    theirs[:] = want
    for index in range(3):
        key = f"c/{index}/0/0"
        mine = (tmp_path / "s" / "x" / key).read_bytes()
        zarrs = (tmp_path / "z" / key).read_bytes()
        if index < 2:
            assert mine == zarrs
        else:  # the last chunk: zarr pads with the fill value, the file holds zeros
            assert mine[: 2 * 60] == zarrs[: 2 * 60]
            assert len(mine) == len(zarrs) and not any(mine[2 * 60 :])


async def _write_all(store: ZarrStore, frames: list[Frame], batch: int) -> None:
    await store.open()
    await store.prepare(SCHEMA, times=True)
    for i in range(0, len(frames), batch):
        await store.append(Batch(frames[i : i + batch]))
    await store.close()


async def test_a_crash_between_commits_leaves_committed_rows_whole(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    frames = _frames(6)
    store = ZarrStore(loc, chunk_frames=4)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    await store.append(Batch(frames))
    await store.commit()
    # Frames written into the same chunk after the commit, then the writer dies
    # (never committed, never closed): only rows past the committed ones changed.
    await store.append(Batch(_frames(1, start=6, seed=9)))
    await store._io.writer.drain()  # type: ignore[union-attr]
    _check_every_reader(loc, frames)
    store._release_lock()  # as the writer's death would
    resumed = ZarrStore(loc, "a")
    resume = await resumed.open()
    assert resume is not None and resume.count == 6 and resume.last_step == 5
    more = _frames(7, start=6, seed=1)
    await resumed.prepare(SCHEMA, times=True)
    assert _direct_columns(resumed) == {"x", "k", "e", "steps", "times"}
    await resumed.append(Batch(more))
    await resumed.close()
    _check_every_reader(loc, frames + more)
    await store._io.stop()


async def test_a_crash_before_the_first_commit_leaves_the_group_as_opened(
    tmp_path: Path,
) -> None:
    """prepare creates the arrays without their fsyncs and commits nothing: the
    first commit syncs them, then names the schema. A writer dying in between
    leaves a group that names no schema; the next run prepares (with any
    schema) over the arrays and writes its frames."""
    loc = tmp_path / "s"
    store = ZarrStore(loc)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    await store.append(Batch(_frames(3)))
    assert zarr.open_group(loc, mode="r").attrs["snapsink"]["schema"] is None
    store._release_lock()  # as the writer's death would
    other = Schema({"x": Field("f4", (5, 3)), "e": Field("f8", ())})
    resumed = ZarrStore(loc, "a")
    assert await resumed.open() is None
    await resumed.prepare(other, times=True)
    frames = [Frame(f.step, f.time, {"x": f.fields["x"], "e": f.fields["e"]}) for f in _frames(4)]
    await resumed.append(Batch(frames))
    await resumed.close()
    traj = open_zarr(loc)
    assert len(traj) == 4 and set(traj.schema) == {"x", "e"}
    assert _bits(traj["x"][:]) == _bits(np.stack([f.fields["x"] for f in frames]))
    assert not (loc / "k").exists() and not (loc / "r").exists()  # the first run's arrays
    ds = xr.open_zarr(loc, consolidated=False)  # every array agrees on the frame dimension
    assert _bits(ds["e"].values) == _bits(np.array([f.fields["e"] for f in frames]))
    await store._io.stop()


@pytest.mark.parametrize(
    ("kwargs", "direct"),
    [
        ({}, True),
        ({"compressors": zarr.codecs.ZstdCodec(level=1)}, False),
        ({"shard_frames": 8}, False),
    ],
)
async def test_only_uncompressed_unsharded_arrays_are_written_in_place(
    tmp_path: Path, kwargs: dict[str, Any], direct: bool
) -> None:
    loc = tmp_path / "s"
    store = ZarrStore(loc, chunk_frames=4, **kwargs)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    assert _direct_columns(store) == ({"x", "k", "e", "steps", "times"} if direct else set())
    frames = _frames(9)
    await store.append(Batch(frames))
    await store.close()
    _check_every_reader(loc, frames)


def test_writes_in_place_needs_the_bytes_codec_and_a_zero_fill() -> None:
    def check(**kw: Any) -> bool:
        arr = zarr.create_array(
            zarr.storage.MemoryStore(), shape=(8, 3), chunks=(4, 3), dtype="f4", **kw
        )._async_array
        spec = arr.metadata.get_chunk_spec(
            (0, 0), arr.config, zarr.core.buffer.default_buffer_prototype()
        )
        return _zarrio.writes_in_place(arr.codec_pipeline, spec, np.dtype("f4"))

    assert check(compressors=None)
    assert not check(compressors=None, fill_value=1.0)
    assert not check()  # zarr's default: zstd
    assert not check(compressors=None, serializer=zarr.codecs.BytesCodec(endian="big"))
    assert not check(compressors=None, filters=[zarr.codecs.TransposeCodec(order=(1, 0))])


@pytest.mark.parametrize(
    ("offset", "length", "want"),
    [
        (0, 8192, (0, 8192)),
        (100, 8192, (4096, 4096)),  # the partly written pages stay cached
        (4096, 100, (4096, 0)),
        (8, 16, (4096, 0)),
    ],
)
def test_writeback_is_started_on_whole_pages_only(
    offset: int, length: int, want: tuple[int, int]
) -> None:
    # A partly written page dropped from the cache would be read back from disk
    # by the next row written into it.
    assert _zarrio.whole_pages(offset, length, 4096) == want


def test_early_writeback_waits_for_a_mib_of_contiguous_rows(tmp_path: Path) -> None:
    writer = _zarrio.BlockWriter(tmp_path)
    path, row = tmp_path / "c" / "0", 256 << 10
    mib = _zarrio.EARLY_WRITEBACK
    # one advice per MiB of rows, not one per row
    got = [writer._early_writeback(path, k * row, row, False) for k in range(8)]
    assert got == [(0, 0)] * 3 + [(0, mib)] + [(0, 0)] * 3 + [(mib, mib)]
    # rows not contiguous with those waiting (jobs ended out of order) start anew
    assert writer._early_writeback(path, 5 * mib, row, False) == (0, 0)
    assert writer._early_writeback(path, 5 * mib + row, mib - row, False) == (5 * mib, mib)
    # whole pages only, from a row that starts inside a page
    odd = tmp_path / "c" / "1"
    start, length = _zarrio.whole_pages(100, mib)
    assert writer._early_writeback(odd, 100, mib, False) == (start, length)
    # the chunk's last row: what waits since the pages started is, and the file forgotten
    after, end = start + length, 100 + mib + 8192
    assert writer._early_writeback(odd, 100 + mib, 8192, True) == _zarrio.whole_pages(
        after, end - after
    )
    assert odd not in writer._waiting and path in writer._waiting


@pytest.mark.parametrize("large", [1, 2])
async def test_one_large_field_is_written_without_the_pool(tmp_path: Path, large: int) -> None:
    """A frame's one large field beside small ones is written by the store's
    loop (the pool would add two thread hand-offs a frame); two or more large
    ones are written side by side in the pool."""
    loc = tmp_path / "s"
    fields = {f"big{k}": Field("f8", (128, 128)) for k in range(large)}  # 128 KiB rows
    schema = Schema({**fields, "e": Field("f8", ()), "v": Field("f4", (3,))})
    rng = np.random.default_rng(3)
    frames = [
        Frame(s, None, {**{n: rng.standard_normal((128, 128)) for n in fields},
                        "e": np.float64(s), "v": rng.standard_normal(3).astype(np.float32)})
        for s in range(5)
    ]  # fmt: skip
    store = ZarrStore(loc)
    await store.open()
    await store.prepare(schema, times=False)
    for f in frames:
        await store.append(Batch([f]))
    assert store._io.writer is not None
    assert (store._io.writer._pool is None) == (large == 1)
    await store.close()
    traj = open_zarr(loc)
    for name in [*fields, "e", "v"]:
        assert _bits(traj[name][:]) == _bits(np.stack([f.fields[name] for f in frames]))


async def test_a_commit_writes_each_arrays_metadata_as_zarrs_resize_does(tmp_path: Path) -> None:
    """A commit grows the arrays' shapes in one job of its own: every
    ``zarr.json`` holds the bytes zarr's own resize writes for that shape."""
    loc = tmp_path / "s"
    store = ZarrStore(loc, chunk_frames=4)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    frames = _frames(6)
    await store.append(Batch(frames[:3]))
    await store.commit()
    await store.append(Batch(frames[3:]))
    await store.commit()
    rows = dict.fromkeys(("x", "k", "e", "steps", "times"), 6)
    rows |= {"r": sum(len(f.fields["r"]) for f in frames), "r.offsets": 7}
    for name, n in rows.items():
        ours = (loc / name / "zarr.json").read_bytes()
        ref = tmp_path / "ref" / name
        shutil.copytree(loc / name, ref)
        arr = zarr.open_array(ref, mode="r+")
        assert arr.shape[0] == n, name
        shape = arr.shape
        arr.resize((0, *shape[1:]))
        arr.resize(shape)  # zarr writes its metadata for the committed shape
        assert (ref / "zarr.json").read_bytes() == ours, name
    await store.close()
    _check_every_reader(loc, frames)


def test_replace_durably_syncs_every_file_then_renames_them_together_then_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / "a" / "zarr.json", tmp_path / "b" / "zarr.json"]
    for f in files:
        f.parent.mkdir()
        f.write_bytes(b"old")
    log: list[tuple[str, Any]] = []
    real_fsync, real_replace = _zarrio._fsync_fd_of, os.replace
    monkeypatch.setattr(
        _zarrio,
        "_fsync_fd_of",
        lambda p, directory=False: (log.append(("fsync", Path(p))), real_fsync(p, directory)),
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: (log.append(("rename", Path(b))), real_replace(a, b))
    )
    _zarrio.replace_durably([(f, f"new {k}".encode()) for k, f in enumerate(files)])
    assert [f.read_bytes() for f in files] == [b"new 0", b"new 1"]
    # every temporary file fsynced, then the renames back to back (the window in
    # which a plain reader sees arrays of different lengths), then the directories
    assert [what for what, _ in log[:2]] == ["fsync", "fsync"]
    assert all(p.name.startswith("zarr.json.") for _, p in log[:2])
    assert log[2:4] == [("rename", f) for f in files]
    assert {p for _, p in log[4:]} == {f.parent for f in files}
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_pwrite_all_resumes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev

    def short(fd: int, buffers: Any, offset: int) -> int:
        return real(fd, [bytes(buffers[0])[:3]], offset)  # 3 bytes a call

    monkeypatch.setattr(os, "pwritev", short)
    data = [np.arange(5, dtype=np.uint8).data, np.arange(5, 12, dtype=np.uint8).data]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert _zarrio.pwrite_all(fd, data, 2) == 12
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"\0\0" + bytes(range(12))


# -- commits in the background -------------------------------------------------------
FIXED = Schema({"x": Field("f4", (5, 3)), "e": Field("f8", ())})


def _fixed(n: int, start: int = 0) -> list[Frame]:
    return [
        Frame(f.step, f.time, {"x": f.fields["x"], "e": f.fields["e"]}) for f in _frames(n, start)
    ]


def _check_fixed(loc: Path, frames: list[Frame]) -> None:
    """The committed frames of FIXED, steps and times read back bit-exact by
    snapsink, zarr, xarray and dask."""
    n = len(frames)
    traj = open_zarr(loc)
    assert len(traj) == n
    ds = xr.open_zarr(loc, consolidated=False)
    for name in ("x", "e"):
        want = _bits(np.stack([np.asarray(f.fields[name]) for f in frames]))
        assert _bits(traj[name][:]) == want
        assert _bits(zarr.open_array(loc / name, mode="r")[:n]) == want
        assert _bits(ds[name].values[:n]) == want
        assert _bits(da.from_zarr(str(loc), component=name)[:n].compute()) == want
    np.testing.assert_array_equal(traj.steps, [f.step for f in frames])
    np.testing.assert_array_equal(traj.times, [f.time for f in frames])
    # plain zarr sees arrays of the committed length, never rows past it
    assert zarr.open_array(loc / "steps", mode="r").shape == (n,)
    assert zarr.open_array(loc / "x", mode="r").shape[0] == n


async def _open_fixed(loc: Path, *, commit_every: int, zstd: bool = False) -> ZarrStore:
    """An open store of FIXED, with times, committing on count only (``zstd``:
    every array compressed, so partly filled chunks are buffered and written
    by each commit)."""
    store = ZarrStore(
        loc,
        chunk_frames=4,
        commit_every=commit_every,
        commit_seconds=None,
        compressors=zarr.codecs.ZstdCodec(level=1) if zstd else None,
    )
    await store.open()
    await store.prepare(FIXED, times=True)
    return store


class _Gate:
    """Holds every commit at its check that the group is still there (the step
    between the rows' fsync and the arrays' shapes) until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from snapsink.stores import zarr as zarr_store

        self.entered = threading.Event()
        self.release = threading.Event()
        real = zarr_store.check_not_removed

        def held(*args: Any) -> None:
            self.entered.set()
            assert self.release.wait(10), "the test never released the commit"
            real(*args)

        monkeypatch.setattr(zarr_store, "check_not_removed", held)


@pytest.mark.parametrize("zstd", [False, True], ids=["in-place", "zstd"])
async def test_a_due_commit_runs_while_the_next_frames_are_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zstd: bool
) -> None:
    """A commit due at an append runs in the background: the appends go on
    while it runs, readers see the previous commit until it ends, and then
    exactly the frames it covered, not those appended since. Compressed: the
    commit writes the partly filled chunk 1 as it was (frame 4), while the
    appends fill that chunk and write it whole."""
    import asyncio

    loc = tmp_path / "s"
    frames = _fixed(13)
    store = await _open_fixed(loc, commit_every=5, zstd=zstd)
    assert _direct_columns(store) == (set() if zstd else {"x", "e", "steps", "times"})
    gate = _Gate(monkeypatch)
    for f in frames[:5]:
        await store.append(Batch([f]))
    assert store.background  # due at the 5th frame, and running
    assert await asyncio.to_thread(gate.entered.wait, 10)
    # the writer appends on while the commit waits at the gate
    for f in frames[5:12]:
        await store.append(Batch([f]))
    assert store.background and len(open_zarr(loc)) == 0
    gate.release.set()
    running = store._background
    assert running is not None
    await asyncio.wait_for(running, 10)
    _check_fixed(loc, frames[:5])  # what it covered, not frames 5..11
    # the commit due meanwhile (7 frames pending) waited for it: settle (what
    # an idle writer calls) runs it
    await store.settle()
    assert not store.background
    _check_fixed(loc, frames[:12])
    await store.append(Batch([frames[12]]))
    assert not store.background  # 1 frame pending: nothing due
    await store.close()
    _check_fixed(loc, frames)


@pytest.mark.parametrize("zstd", [False, True], ids=["in-place", "zstd"])
async def test_commit_waits_for_the_background_commit_and_covers_every_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zstd: bool
) -> None:
    """A sink's flush (the store's commit) returns only when every appended
    frame is durable and visible, a background commit included."""
    import asyncio

    loc = tmp_path / "s"
    frames = _fixed(9)
    store = await _open_fixed(loc, commit_every=4, zstd=zstd)
    gate = _Gate(monkeypatch)
    for f in frames:
        await store.append(Batch([f]))
    assert store.background
    commit = asyncio.ensure_future(store.commit())
    await asyncio.sleep(0.05)
    assert not commit.done()  # held behind the background commit
    gate.release.set()
    await commit
    assert not store.background
    _check_fixed(loc, frames)
    await store.close()


async def test_a_failed_background_commit_fails_the_next_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error of a commit run in the background reaches the next append (the
    store then takes no more frames); the last commit that ended stands."""
    import asyncio
    import errno

    from snapsink._errors import StoreStateError

    loc = tmp_path / "s"
    frames = _fixed(12)
    store = await _open_fixed(loc, commit_every=4)
    for f in frames[:4]:
        await store.append(Batch([f]))
    await store.settle()
    real = _zarrio.BlockWriter.sync

    def failing(self: Any) -> None:
        raise OSError(errno.EIO, "injected EIO at fsync")

    monkeypatch.setattr(_zarrio.BlockWriter, "sync", failing)
    for f in frames[4:8]:
        await store.append(Batch([f]))
    running = store._background
    assert running is not None
    await asyncio.wait([running])  # it failed, and nobody has looked yet
    with pytest.raises(OSError, match="injected EIO"):
        await store.append(Batch([frames[8]]))
    with pytest.raises(StoreStateError, match="an earlier write failed"):
        await store.append(Batch([frames[9]]))
    monkeypatch.setattr(_zarrio.BlockWriter, "sync", real)
    await store.close()
    _check_fixed(loc, frames[:4])


def test_an_idle_writer_ends_its_background_commit(tmp_path: Path) -> None:
    """A writer with nothing to store lets a background commit end at once: the
    frames it covers become visible without another frame or a flush."""
    import time

    import snapsink

    loc = tmp_path / "s"
    rng = np.random.default_rng(5)
    data = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    # due at the 4th frame, however the writer batches them
    store = ZarrStore(loc, chunk_frames=4, commit_every=4, commit_seconds=None)
    with snapsink.SyncSink(store, writer="process") as sink:
        for i, x in enumerate(data):
            sink.write({"x": x}, step=i)
        deadline = time.monotonic() + 10
        while len(open_zarr(loc)) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(open_zarr(loc)) == 4
        assert _bits(open_zarr(loc)["x"][:]) == _bits(np.stack(data))


async def test_a_settle_with_a_budget_comes_back_and_starts_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an idle writer calls: ``settle(budget)`` returns after its budget
    while the commit still runs (the writer then looks for frames); once that
    commit ended, the one that fell due meanwhile starts in the background."""
    import time

    loc = tmp_path / "s"
    frames = _fixed(8)
    store = await _open_fixed(loc, commit_every=4)
    gate = _Gate(monkeypatch)
    for f in frames[:4]:
        await store.append(Batch([f]))
    assert store.background
    t0 = time.monotonic()
    await store.settle(0.01)
    assert store.background and time.monotonic() - t0 < 2
    for f in frames[4:]:  # the next commit falls due, and waits for this one
        await store.append(Batch([f]))
    gate.release.set()
    counts = []
    for _ in range(5000):
        await store.settle(0.002)
        counts.append(len(open_zarr(loc)))
        if not store.background and counts[-1] == 8:
            break
    assert counts[-1] == 8 and set(counts) <= {0, 4, 8}, counts
    _check_fixed(loc, frames)
    await store.close()
    _check_fixed(loc, frames)


async def test_a_partial_chunk_landing_after_its_whole_write_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a compressed store's background commit opens: the commit writes
    chunk 0 partly filled, the appends going on meanwhile fill the chunk and
    write it whole, and the whole write lands first. The partial write, landing
    after it, is dropped (renamed, it would put back one row over four), and
    the whole write, which replaces a file a commit may name, is fsynced before
    its rename."""
    import asyncio
    import threading

    loc = tmp_path / "s"
    store = await _open_fixed(loc, commit_every=100, zstd=True)
    writer = store._io.writer
    assert writer is not None and writer.workers >= 2
    target = store._columns["x"].target
    assert target is not None
    rows = np.stack([f.fields["x"] for f in _fixed(4)])
    held, release = threading.Event(), threading.Event()
    real_padded = _zarrio.BlockTarget.padded

    def padded(self: Any, part: Any) -> Any:  # only a partial write pads
        held.set()
        assert release.wait(10), "the test never released the partial write"
        return real_padded(self, part)

    fsynced: list[str] = []
    real_fsync = _zarrio._fsync_fd_of

    def fsync_of(path: Any, directory: bool = False) -> None:
        fsynced.append(Path(path).name)
        real_fsync(path, directory)

    monkeypatch.setattr(_zarrio.BlockTarget, "padded", padded)
    monkeypatch.setattr(_zarrio, "_fsync_fd_of", fsync_of)
    partial = await writer.submit(target, 0, rows[:1].copy(), whole=False)
    assert await asyncio.to_thread(held.wait, 10)
    whole = await writer.submit(target, 0, rows)
    await asyncio.wait_for(whole, 10)
    chunk = target.path(0)
    want = bytes(_zarrio.encode_block(target.pipeline, target.spec, rows))
    assert chunk.read_bytes() == want
    assert any(n.startswith("0.") and n.endswith(".partial") for n in fsynced), fsynced
    release.set()
    await asyncio.wait_for(partial, 10)
    await writer.drain()
    assert chunk.read_bytes() == want  # the whole chunk stands
    assert writer._landings.running() == 0
    assert not [p for p in chunk.parent.iterdir() if _zarrio.is_leftover(p.name)]
    await store.close()


async def test_a_background_commit_takes_its_partial_chunks_place_in_line_when_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed store's commit in the background takes chunk 1 partly
    filled (frame 4) when it starts, but writes it only after waiting for the
    writes in flight; meanwhile the appends fill chunk 1 and write it whole. The
    whole chunk must be what stays: the partial write's place in line is the
    moment the commit started, not the moment it was submitted."""
    import asyncio

    loc = tmp_path / "s"
    frames = _fixed(13)
    store = await _open_fixed(loc, commit_every=5, zstd=True)
    gate, held = asyncio.Event(), asyncio.Event()
    real_drain = _zarrio.BlockWriter.drain

    async def drain(self: Any, **kw: Any) -> None:
        held.set()
        await gate.wait()
        await real_drain(self, **kw)

    monkeypatch.setattr(_zarrio.BlockWriter, "drain", drain)
    for f in frames[:5]:
        await store.append(Batch([f]))
    assert store.background
    await asyncio.wait_for(held.wait(), 10)  # the commit waits in its first drain
    for f in frames[5:8]:  # chunk 1 fills: its whole write goes out now
        await store.append(Batch([f]))
    chunk = loc / "x" / "c" / "1" / "0" / "0"
    writer = store._io.writer
    assert writer is not None
    for _ in range(1000):  # until the appends' writes landed
        if chunk.exists() and all(f.done() for f in writer._inflight):
            break
        await asyncio.sleep(0.01)
    assert chunk.exists()
    gate.set()
    running = store._background
    assert running is not None
    await asyncio.wait_for(running, 10)
    _check_fixed(loc, frames[:5])
    await store.commit()
    _check_fixed(loc, frames[:8])  # the whole chunk 1 stands
    for f in frames[8:]:
        await store.append(Batch([f]))
    await store.close()
    _check_fixed(loc, frames)


@pytest.mark.parametrize(
    "layout",
    [{"compressors": "zstd"}, {"compressors": "zstd", "shard_frames": 8}, {}],
    ids=["zstd", "zstd-sharded", "in-place"],
)
async def test_background_commits_under_a_stream_of_batches_keep_every_frame(
    tmp_path: Path, layout: dict[str, Any]
) -> None:
    """Commits due every 3 frames run in the background while batches of 1 to
    6 frames keep coming (partly filled chunks and shards, a ragged field),
    and the writer sometimes settles them, for a moment or until they ended:
    each time a commit ends, readers see exactly the frames it named, and the
    closed store holds every frame, bit-exact."""
    loc = tmp_path / "s"
    kw: dict[str, Any] = dict(layout)
    if kw.get("compressors") == "zstd":
        kw["compressors"] = zarr.codecs.ZstdCodec(level=1)
    store = ZarrStore(loc, chunk_frames=4, commit_every=3, commit_seconds=None, **kw)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    frames = _frames(90, seed=11)
    rng = np.random.default_rng(4)
    i, backgrounds, seen, n = 0, 0, {0}, 0
    while i < len(frames):
        k = int(rng.integers(1, 7))
        await store.append(Batch(frames[i : i + k]))
        i, n = i + k, n + 1
        backgrounds += store.background
        if n % 4 == 0:
            await store.settle()  # the commit running ends (and the one due)
        elif rng.random() < 0.5:
            await store.settle(0.01)  # what an idle writer calls: a commit may end
        count = store._meta.count
        if count not in seen:  # a commit ended: what it named is what is there
            seen.add(count)
            traj = open_zarr(loc)
            assert len(traj) == count
            assert _bits(traj["x"][:]) == _bits(np.stack([f.fields["x"] for f in frames[:count]]))
    # (the full settles alone end 5 commits: a timed one may end none on a
    # loaded machine)
    assert backgrounds > 10 and len(seen) >= 5, (backgrounds, seen)
    await store.close()
    _check_every_reader(loc, frames)


async def test_a_failed_partial_write_beside_the_chunks_whole_write_leaves_the_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit in the background writes chunk 2 partly filled; its write fails
    (EIO) just after the appends wrote chunk 2 whole. The store fails at its
    next append, the commit before stands (5 frames, bit-exact, the whole
    chunk past the count ignored), and a store reopened with mode="a" goes on
    from there."""
    import asyncio
    import errno
    import time

    from snapsink._errors import StoreStateError

    loc = tmp_path / "s"
    frames = _fixed(13)
    store = await _open_fixed(loc, commit_every=5, zstd=True)
    writer = store._io.writer
    assert writer is not None and writer.workers >= 2
    writer.max_inflight = 64  # the held partial write must not hold the appends back
    for f in frames[:5]:
        await store.append(Batch([f]))
    await store.settle()
    _check_fixed(loc, frames[:5])
    whole = loc / "x" / "c" / "2" / "0" / "0"
    real_padded = _zarrio.BlockTarget.padded

    def padded(self: Any, part: Any) -> Any:  # only a partial write pads
        if self.directory.name == "x" and len(part) == 2:
            for _ in range(1000):  # until chunk 2's whole write has landed
                if whole.exists():
                    break
                time.sleep(0.01)
            raise OSError(errno.EIO, "injected EIO in a partial write")
        return real_padded(self, part)

    monkeypatch.setattr(_zarrio.BlockTarget, "padded", padded)
    for f in frames[5:10]:  # due at frame 10: chunk 2 holds frames 8 and 9
        await store.append(Batch([f]))
    assert store.background
    await asyncio.sleep(0.05)  # the commit submits its partial writes
    for f in frames[10:12]:  # chunk 2 fills: its whole write goes out
        await store.append(Batch([f]))
    running = store._background
    assert running is not None
    await asyncio.wait([running], timeout=10)
    assert whole.exists()
    with pytest.raises(OSError, match="injected EIO"):
        await store.append(Batch([frames[12]]))
    with pytest.raises(StoreStateError):
        await store.append(Batch([frames[12]]))
    await store.close()
    monkeypatch.setattr(_zarrio.BlockTarget, "padded", real_padded)
    _check_fixed(loc, frames[:5])
    again = ZarrStore(loc, mode="a", chunk_frames=4, commit_seconds=None)
    await again.open()
    await again.prepare(FIXED, times=True)
    later = _fixed(8, start=5)
    for f in later:
        await again.append(Batch([f]))
    await again.close()
    _check_fixed(loc, frames[:5] + later)


_SMALL_CHUNKS_UNDER_A_LIMIT = """
import resource, sys, numpy as np, snapsink
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))  # the writer cannot lift it
store = snapsink.ZarrStore({path!r}, chunk_frames=1, commit_every=10**6)
with snapsink.SyncSink(store, writer={writer!r}) as sink:
    for i in range(2000):
        sink.write({{"x": np.full(4, i, np.float64)}}, step=i)
"""


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_chunk_files_open_between_commits_stay_bounded(tmp_path: Path, writer: str) -> None:
    """One-frame chunks and no commit for 2,000 frames under 256 open files: a
    chunk file stayed open from its first row to the next commit, two per
    frame (the field's and the steps'), and the store died of EMFILE after
    about 120 frames with none committed. Full chunks are now closed once
    more than OPEN_CHUNKS are open (fsynced by path at the commit)."""
    import subprocess
    import sys

    import snapsink

    path = tmp_path / "run"
    code = _SMALL_CHUNKS_UNDER_A_LIMIT.format(path=str(path), writer=writer)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    traj = snapsink.open(path)
    assert traj.steps.tolist() == list(range(2000))
    assert np.array_equal(traj["x"][:], np.repeat(np.arange(2000.0), 4).reshape(2000, 4))
