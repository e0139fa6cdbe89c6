"""ZarrStore's block I/O on a local directory and its issue-11 hardening.

- the bytes written are zarr's own encoding (any codec, sharding), read back
  bit-exact by zarr, by snapsink and across a resume;
- item 6: covered in test_zarr.py (rename over committed data only once durable);
- item 8: a first commit interrupted, leaving only ``*.<uuid>.partial`` files;
- item 14: several failing chunk writes raise the first OSError, not a group;
- item 15: dtypes zarr cannot hold are refused with DTypeError before any write;
- item 20: ``mode="w"`` never deletes files that are not zarr's; ``commit_seconds``
  as NpyDirectory takes it; a non-zarr directory is described.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs
from zarr.core.buffer import default_buffer_prototype

import snapsink
from snapsink._errors import (
    ConfigError,
    DTypeError,
    FormatError,
    StoreExistsError,
    StoreLockedError,
)
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink.stores import _zarrio
from snapsink.stores.zarr import ZarrStore, open_zarr

CODECS: dict[str, Any] = {
    "raw": None,
    "zstd": zarr.codecs.ZstdCodec(level=1),
    "blosc": zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle"),
    "gzip+crc": [zarr.codecs.GzipCodec(level=1), zarr.codecs.Crc32cCodec()],
}


def _frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(s, s * 0.25, {
            "x": rng.standard_normal((7, 3)).astype(np.float32),
            "k": rng.integers(-(2**62), 2**62, 5, dtype=np.int64),
            "r": rng.standard_normal((s % 4, 2)),
        })
        for s in range(n)
    ]  # fmt: skip


SCHEMA = Schema({"x": Field("f4", (7, 3)), "k": Field("i8", (5,)), "r": Field("f8", (None, 2))})


async def _run(store: ZarrStore, frames: list[Frame], batches: list[int]) -> None:
    await store.open()
    await store.prepare(SCHEMA, times=True)
    i = 0
    for b in batches:
        await store.append(Batch(frames[i : i + b]))
        i += b
        if i % 3 == 0:
            await store.commit()  # partial blocks written, later rewritten whole
    assert i == len(frames)
    await store.close()


def _check(loc: Path, frames: list[Frame]) -> None:
    traj = open_zarr(loc)
    assert len(traj) == len(frames)
    for name in ("x", "k"):
        got = np.asarray(traj[name][:])
        want = np.stack([f.fields[name] for f in frames])
        assert got.tobytes() == want.tobytes()
        # zarr itself reads the same array (chunks, codecs and keys are zarr's)
        assert np.asarray(zarr.open_array(loc / name, mode="r")[:]).tobytes() == want.tobytes()
    for i, f in enumerate(frames):
        assert np.asarray(traj["r"][i]).tobytes() == f.fields["r"].tobytes()
    np.testing.assert_array_equal(traj.steps, np.arange(len(frames)))


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("shard_frames", [None, 8])
async def test_blocks_round_trip_with_every_codec(
    tmp_path: Path, codec: str, shard_frames: int | None
) -> None:
    frames = _frames(37)
    loc = tmp_path / "s"
    store = ZarrStore(loc, chunk_frames=4, shard_frames=shard_frames, compressors=CODECS[codec])
    await _run(store, frames, [1, 2, 9, 1, 3, 16, 5])
    _check(loc, frames)
    # resume: the partial last block is read back, completed and rewritten
    more = _frames(45, seed=1)[37:]
    more = [Frame(f.step, f.time, f.fields) for f in more]
    store = ZarrStore(loc, "a")
    resume = await store.open()
    assert resume is not None and resume.count == 37
    await store.prepare(SCHEMA, times=True)
    await store.append(Batch(more))
    await store.close()
    _check(loc, frames + more)


@pytest.mark.parametrize("codec", ["raw", "zstd", "gzip+crc"])
@pytest.mark.parametrize("sharded", [False, True])
async def test_encode_block_is_zarrs_encoding(
    codec: str, sharded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block encoder gives the very bytes zarr's own pipeline gives (with
    zarr's own zstd encoder: python-zstandard's is checked below)."""
    # gzip writes the time into its header: one clock for both encodings
    monkeypatch.setattr(time, "time", lambda: 1.7e9)
    monkeypatch.setenv(_zarrio.ZSTD_ENCODER_ENV, "numcodecs")
    arr = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=(16, 6),
        chunks=(2, 6),
        shards=(8, 6) if sharded else None,
        dtype="float64",
        compressors=CODECS[codec],
    )
    aarr = arr._async_array
    spec = aarr.metadata.get_chunk_spec((0, 0), aarr.config, default_buffer_prototype())
    block = np.random.default_rng(0).standard_normal(spec.shape)
    # in a worker thread, as the block writer runs it
    mine = bytes(await asyncio.to_thread(_zarrio.encode_block, aarr.codec_pipeline, spec, block))
    nd = spec.prototype.nd_buffer.from_ndarray_like(block)
    (theirs,) = await aarr.codec_pipeline.encode([(nd, spec)])
    assert mine == theirs.to_bytes()


# -- zarr's zstd codec, encoded by python-zstandard ---------------------------------
def _zstd_spec(codec: Any, shape: tuple[int, ...] = (64, 1000)) -> tuple[Any, Any]:
    arr = zarr.create_array(
        zarr.storage.MemoryStore(), shape=shape, chunks=shape, dtype="float32", compressors=codec
    )
    aarr = arr._async_array
    return aarr, aarr.metadata.get_chunk_spec((0, 0), aarr.config, default_buffer_prototype())


@pytest.mark.parametrize(
    ("level", "checksum"), [(1, False), (1, True), (0, False), (-3, True), (7, False)]
)
async def test_zstandard_encodes_what_zarr_decodes(level: int, checksum: bool) -> None:
    """python-zstandard's frames are zarr's zstd format: zarr's own pipeline
    (numcodecs) decodes them bit-exact, the header holds the content size
    numcodecs needs, and a checksum exactly when the codec asks for one."""
    zstandard = pytest.importorskip("zstandard")
    assert _zarrio.zstd_encoder() == "zstandard"
    aarr, spec = _zstd_spec(zarr.codecs.ZstdCodec(level=level, checksum=checksum))
    block = np.random.default_rng(level + 10).standard_normal(spec.shape).astype(np.float32)
    block[::3] = 0.0  # something to compress
    data = bytes(await asyncio.to_thread(_zarrio.encode_block, aarr.codec_pipeline, spec, block))
    params = zstandard.get_frame_parameters(data)
    assert params.content_size == block.nbytes
    assert params.has_checksum == checksum
    assert len(data) < block.nbytes
    buf = spec.prototype.buffer.from_bytes(data)
    (back,) = await aarr.codec_pipeline.decode([(buf, spec)])
    assert back.as_numpy_array().tobytes() == block.tobytes()


@pytest.mark.parametrize("encoder", ["zstandard", "numcodecs"])
def test_a_zstd_store_reads_back_with_either_encoder(
    tmp_path: Path, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a sink and its writer process (which inherits the setting), with
    each encoder: zarr, and snapsink's reader, read every frame back bit-exact."""
    if encoder == "zstandard":
        pytest.importorskip("zstandard")
    monkeypatch.setenv(_zarrio.ZSTD_ENCODER_ENV, encoder)
    rng = np.random.default_rng(3)
    frames = [rng.standard_normal((16, 33)).astype(np.float32) for _ in range(21)]
    loc = tmp_path / "z"
    store = ZarrStore(loc, chunk_frames=4, compressors=zarr.codecs.ZstdCodec(level=1))
    with snapsink.SyncSink(store, writer="process") as sink:
        for u in frames:
            sink.write({"u": u})
    want = np.stack(frames)
    assert np.asarray(zarr.open_array(loc / "u", mode="r")[:]).tobytes() == want.tobytes()
    assert np.asarray(open_zarr(loc)["u"][:]).tobytes() == want.tobytes()


def test_the_zstd_encoder_setting_is_checked_when_the_store_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_zarrio.ZSTD_ENCODER_ENV, "zlib")
    with pytest.raises(
        ConfigError, match=r"SNAPSINK_ZSTD_ENCODER: expected 'zstandard' or 'numcodecs'.*'zlib'"
    ):
        ZarrStore(tmp_path / "z")
    assert not (tmp_path / "z").exists()
    monkeypatch.setenv(_zarrio.ZSTD_ENCODER_ENV, "numcodecs")
    assert _zarrio.zstd_encoder() == "numcodecs"
    # asked for by name, python-zstandard must be there; unset, zarr's codec stands in
    monkeypatch.setattr(_zarrio._ZSTD, "module", None)
    monkeypatch.setenv(_zarrio.ZSTD_ENCODER_ENV, "zstandard")
    with pytest.raises(ConfigError, match=r"needs python-zstandard.*snapsink\[zstd\]"):
        ZarrStore(tmp_path / "z")
    monkeypatch.delenv(_zarrio.ZSTD_ENCODER_ENV)
    assert _zarrio.zstd_encoder() == "numcodecs"


# -- item 8: an interrupted first commit -------------------------------------------
def _leave_partial_first_commit(loc: Path) -> list[str]:
    """What a writer killed while renaming its first zarr.json leaves behind."""
    loc.mkdir()
    names = [f"zarr.{'a1' * 16}.partial", f"zarr.json.{'b2' * 16}.partial"]
    for n in names:
        (loc / n).write_bytes(b'{"zarr_format": 3, "node_ty')
    return names


@pytest.mark.parametrize("mode", ["w", "a"])
async def test_leftovers_of_first_commit_are_recovered(tmp_path: Path, mode: str) -> None:
    loc = tmp_path / "s"
    _leave_partial_first_commit(loc)
    frames = _frames(5)
    await _run(ZarrStore(loc, mode, chunk_frames=4), frames, [5])
    _check(loc, frames)
    assert not list(loc.rglob("*.partial"))


async def test_leftovers_of_first_commit_are_named_by_mode_x(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    names = _leave_partial_first_commit(loc)
    with pytest.raises(StoreExistsError, match="interrupted") as info:
        await ZarrStore(loc).open()
    for n in names:
        assert repr(n) in str(info.value)
    assert sorted(os.listdir(loc)) == sorted(names)  # nothing removed by "x"


# -- item 14: several failing chunk writes ---------------------------------------------
async def test_several_failed_chunk_writes_raise_the_first_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loc = tmp_path / "s"
    store = ZarrStore(loc, chunk_frames=2)
    await store.open()
    await store.prepare(SCHEMA, times=True)
    real = _zarrio.write_file
    calls = []
    both = threading.Barrier(2, timeout=10)  # two writes fail together, whatever the timing

    def failing(path: Path, data: Any, **kw: Any) -> None:
        calls.append(path)
        n = len(calls)
        if n <= 2:
            both.wait()
            if n == 2:  # fails a little later: the store still collects it
                time.sleep(0.05)
        raise OSError(errno.EIO, f"injected EIO {n}", str(path))

    monkeypatch.setattr(_zarrio, "write_file", failing)
    with pytest.raises(OSError, match="injected EIO") as info:
        await store.append(Batch(_frames(12)))
        await store.commit()
    exc = info.value
    assert not isinstance(exc, BaseExceptionGroup)
    assert exc.errno == errno.EIO and "injected EIO" in str(exc)
    assert len(calls) >= 2
    assert any("other chunk write(s) failed too" in n for n in getattr(exc, "__notes__", []))
    monkeypatch.setattr(_zarrio, "write_file", real)
    await store.close()
    assert len(open_zarr(loc)) == 0  # the failed frames were never committed
    # every failure was collected: none is logged as "never retrieved" when the
    # futures go (such a log ran inside whatever was allocating at that moment)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del info, exc
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_sink_writer_error_chains_to_the_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "injected ENOSPC", str(path))

    # block files, and rows written in place (every array here: uncompressed)
    monkeypatch.setattr(_zarrio, "write_file", failing)
    monkeypatch.setattr(_zarrio, "pwrite_all", failing)
    with pytest.raises(snapsink.WriterError) as info:
        async with snapsink.Sink(
            ZarrStore(tmp_path / "s", chunk_frames=1), writer="thread", capacity=8
        ) as sink:
            for i in range(8):
                await sink.write({"x": np.full((4, 4), i, np.float32)}, step=i)
            await sink.flush()
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(cause)


# -- item 15: dtypes zarr cannot hold ------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float128", "complex256"])
async def test_unstorable_dtype_is_refused_before_anything_is_written(
    tmp_path: Path, dtype: str
) -> None:
    if not hasattr(np, dtype):
        pytest.skip(f"numpy has no {dtype} here")
    loc = tmp_path / "s"
    store = ZarrStore(loc)
    schema = Schema({"e": Field("f8", ()), "big": Field(dtype, (3,))})
    with pytest.raises(DTypeError, match=f"'big'.*{dtype}"):
        store.check_schema(schema)
    await store.open()
    with pytest.raises(DTypeError, match="cannot be stored in Zarr"):
        await store.prepare(schema, times=False)
    await store.close()
    assert not (loc / "big").exists() and not (loc / "e").exists()
    with pytest.raises(DTypeError, match="static 'm'"):
        ZarrStore(tmp_path / "t", static={"m": np.ones(2, dtype)})


async def test_unstorable_dtype_through_a_sink(tmp_path: Path) -> None:
    if not hasattr(np, "float128"):
        pytest.skip("numpy has no float128 here")
    # refused in the producer, where the schema is fixed; the sink stays usable
    async with snapsink.Sink(ZarrStore(tmp_path / "s"), writer="thread") as sink:
        with pytest.raises(DTypeError, match="float128"):
            await sink.write({"e": np.ones(2, np.float128)}, step=0)
        await sink.write({"e": np.ones(2, np.float64)}, step=1)
    traj = snapsink.open(tmp_path / "s")
    assert list(traj.steps) == [1]
    np.testing.assert_array_equal(traj["e"][0], np.ones(2))


# -- item 20: mode "w", commit_seconds, a directory that is not zarr's -----------------
async def test_mode_w_refuses_to_delete_files_that_are_not_zarrs(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    frames = _frames(3)
    await _run(ZarrStore(loc, chunk_frames=2), frames, [3])
    (loc / "notes.txt").write_text("keep me")
    (loc / "analysis").mkdir()
    (loc / "analysis" / "plot.png").write_bytes(b"png")
    with pytest.raises(StoreExistsError, match=r"notes\.txt") as info:
        await ZarrStore(loc, "w").open()
    assert "'analysis'" in str(info.value)
    assert (loc / "notes.txt").read_text() == "keep me"
    assert (loc / "analysis" / "plot.png").read_bytes() == b"png"
    _check(loc, frames)  # the store is untouched too


@pytest.mark.parametrize(
    "where", ["analysis/notes.txt", "x/notes.txt", "x/c/README", "static/masses/c/notes"]
)
async def test_mode_w_checks_the_whole_tree_before_deleting(tmp_path: Path, where: str) -> None:
    # a file that is not zarr's, below the top: in a zarr subgroup, an array's
    # directory, a chunk directory, a static array's
    loc = tmp_path / "s"
    frames = _frames(3)
    store = ZarrStore(loc, chunk_frames=2, static={"masses": np.arange(3.0)})
    await _run(store, frames, [3])
    zarr.open_group(loc, mode="a").create_group("analysis")
    (loc / where).parent.mkdir(parents=True, exist_ok=True)
    (loc / where).write_text("keep me")
    before = sorted(p for p in loc.rglob("*"))
    with pytest.raises(StoreExistsError, match=re.escape(repr(where))):
        await ZarrStore(loc, "w").open()
    assert sorted(p for p in loc.rglob("*")) == before  # nothing deleted
    assert (loc / where).read_text() == "keep me"
    _check(loc, frames)


async def test_mode_w_refuses_a_nested_group_another_writer_holds(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    child = ZarrStore(loc, group="a/thermo")  # holds a/thermo's lock while open
    await child.open()
    await child.prepare(Schema({"e": Field("f8", ())}), times=False)
    await child.append(Batch([Frame(0, None, {"e": np.float64(1.5)})]))
    await child.commit()
    locked = r"would delete group 'a/thermo'.*nothing was deleted"
    with pytest.raises(StoreLockedError, match=locked):
        await ZarrStore(loc, "w", group="a").open()
    await child.append(Batch([Frame(1, None, {"e": np.float64(2.5)})]))
    await child.close()  # the child's run is whole
    np.testing.assert_array_equal(open_zarr(loc, group="a/thermo")["e"][:], [1.5, 2.5])
    # once its writer is gone, "w" replaces the parent, nested groups included
    store = ZarrStore(loc, "w", group="a")
    await store.open()
    await store.close()
    assert not (loc / "a" / "thermo").exists()


@pytest.mark.parametrize("inside", ["e", "steps", "static/m"])
async def test_mode_w_on_an_array_of_another_run_is_refused_and_nothing_deleted(
    tmp_path: Path, inside: str
) -> None:
    """group='a/e' with mode 'w', where 'a' is a run and 'e' its field: the
    array was deleted and run 'a' could no longer be read (found by a probe)."""
    loc = tmp_path / "s"
    store = ZarrStore(loc, group="a", static={"m": np.arange(3.0)})
    await store.open()
    await store.prepare(Schema({"e": Field("f8", ())}), times=False)
    await store.append(Batch([Frame(0, None, {"e": np.float64(1.5)})]))
    await store.close()
    with pytest.raises(StoreExistsError, match=r"is a zarr array.*nothing was deleted"):
        await ZarrStore(loc, "w", group=f"a/{inside}").open()
    traj = open_zarr(loc, group="a")
    np.testing.assert_array_equal(traj["e"][:], [1.5])
    np.testing.assert_array_equal(traj.static["m"], np.arange(3.0))


async def test_mode_w_replaces_a_store_with_only_zarr_files(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    await _run(ZarrStore(loc, chunk_frames=2), _frames(6), [6])
    frames = _frames(3, seed=5)
    await _run(ZarrStore(loc, "w", chunk_frames=2), frames, [3])
    _check(loc, frames)


@pytest.mark.parametrize("mode", ["x", "w", "a"])
async def test_non_zarr_directory_says_what_is_there(tmp_path: Path, mode: str) -> None:
    loc = tmp_path / "s"
    loc.mkdir()
    (loc / "notes.txt").write_text("x")
    error = FormatError if mode == "a" else StoreExistsError
    with pytest.raises(error, match=r"holds no zarr group \(it holds 'notes.txt'\)"):
        await ZarrStore(loc, mode).open()
    assert os.listdir(loc) == ["notes.txt"]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1.0, True, "5"])
def test_commit_seconds_like_npy(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="commit_seconds"):
        ZarrStore(tmp_path / "s", commit_seconds=bad)
    with pytest.raises(ConfigError, match="commit_seconds"):
        snapsink.NpyDirectory(tmp_path / "n", commit_seconds=bad)


async def test_commit_seconds_none_commits_on_count_only(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    store = ZarrStore(loc, commit_every=4, commit_seconds=None)
    await store.open()
    await store.prepare(Schema({"e": "f8"}), times=False)
    for s in range(6):
        await store.append(Batch([Frame(s, None, {"e": np.float64(s)})]))
    await store.settle()  # the count commit ran in the background
    assert len(open_zarr(loc)) == 4  # the count commit, no timed one
    await store.close()
    np.testing.assert_array_equal(open_zarr(loc)["e"][:], np.arange(6.0))
