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
    assert _direct_columns(store) == {"x", "k", "e"}  # steps, times, ragged: buffered
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
    assert _direct_columns(resumed) == {"x", "k", "e"}
    await resumed.append(Batch(more))
    await resumed.close()
    _check_every_reader(loc, frames + more)
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
    assert _direct_columns(store) == ({"x", "k", "e"} if direct else set())
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


def test_pwrite_all_resumes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

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
