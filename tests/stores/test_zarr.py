"""ZarrStore (Zarr v3) and its reader, driven through the Store protocol directly."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import zarr
import zarr.codecs
from zarr.storage import LocalStore, MemoryStore

import snapsink
from snapsink._errors import (
    ConfigError,
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreNotFoundError,
)
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink._store import Store
from snapsink.stores._zarrplan import (
    MAX_CHUNK_FRAMES,
    RowBuffer,
    check_group,
    grow_capacity,
    plan_arrays,
)
from snapsink.stores.zarr import ZarrStore, is_zarr_store, list_groups, open_zarr

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip


def _value(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)


def _store(kind: str, tmp_path: Path) -> Any:
    return MemoryStore() if kind == "memory" else str(tmp_path / "run.zarr")


async def _write(
    store: ZarrStore,
    schema: Schema,
    frames: list[Frame],
    *,
    times: bool,
    batch: int = 1,
    close: bool = True,
) -> Any:
    resume = await store.open()
    await store.prepare(schema, times=times)
    for i in range(0, len(frames), batch):
        await store.append(Batch(frames[i : i + batch]))
    if close:
        await store.commit()
        await store.close()
    return resume


def _assert_same(got: Any, want: np.ndarray[Any, Any]) -> None:
    got = np.asarray(got)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    # bit-exact, so -0.0 and NaN payloads count too
    np.testing.assert_array_equal(
        np.ascontiguousarray(got).reshape(-1).view(np.uint8),
        np.ascontiguousarray(want).reshape(-1).view(np.uint8),
    )


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("times", [True, False])
async def test_all_dtypes_round_trip(tmp_path: Path, kind: str, times: bool) -> None:
    schema = Schema({f"f_{d}": Field(d, (3, 2)) for d in DTYPES} | {"scalar": Field("float64", ())})
    n = 9
    frames = [
        Frame(
            10 + 3 * i,
            0.25 * i if times else None,
            {f"f_{d}": _value(d, (3, 2), i) for d in DTYPES} | {"scalar": np.float64(-0.0 * i)},
        )
        for i in range(n)
    ]
    loc = _store(kind, tmp_path)
    await _write(ZarrStore(loc, chunk_frames=4), schema, frames, times=times, batch=2)
    traj = open_zarr(loc)
    assert len(traj) == n
    assert traj.schema == schema
    _assert_same(traj.steps, np.array([f.step for f in frames], np.int64))
    if times:
        _assert_same(traj.times, np.array([f.time for f in frames], np.float64))
    else:
        assert traj.times is None
    for name in schema:
        _assert_same(traj[name][:], np.stack([f.fields[name] for f in frames]))
    _assert_same(traj[f"f_{DTYPES[3]}"][4], frames[4].fields[f"f_{DTYPES[3]}"])


async def test_special_float_values_bit_exact(tmp_path: Path) -> None:
    values = np.array([-0.0, np.nan, np.inf, -np.inf, 0.0, 5e-324], np.float64)
    cvals = np.array([complex(-0.0, -0.0), complex(np.nan, 0), 0j], np.complex128)
    schema = Schema({"v": Field("float64", (6,)), "c": Field("complex128", (3,))})
    # One frame of negative zeros fills a whole chunk: it must not be mistaken for empty.
    frames = [
        Frame(0, None, {"v": np.full(6, -0.0), "c": np.full(3, complex(-0.0, -0.0))}),
        Frame(1, None, {"v": values, "c": cvals}),
    ]
    await _write(ZarrStore(tmp_path / "s", chunk_frames=1), schema, frames, times=False)
    traj = open_zarr(tmp_path / "s")
    _assert_same(traj["v"][:], np.stack([f.fields["v"] for f in frames]))
    _assert_same(traj["c"][:], np.stack([f.fields["c"] for f in frames]))


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("shard_frames", [None, 4])
async def test_batch_spanning_many_blocks(
    tmp_path: Path, kind: str, shard_frames: int | None
) -> None:
    # A batch of 41 frames covers 20 (or 10 sharded) whole blocks, written one
    # setitem per block in groups, then a partial block: all must read back.
    schema = Schema({"x": Field("float32", (3, 5))})
    frames = [
        Frame(i, None, {"x": np.arange(15, dtype=np.float32).reshape(3, 5) + 100 * i})
        for i in range(43)
    ]
    loc = _store(kind, tmp_path)
    store = ZarrStore(loc, chunk_frames=2, shard_frames=shard_frames)
    await store.open()
    await store.prepare(schema, times=False)
    await store.append(Batch(frames[:1]))
    await store.append(Batch(frames[1:42]))  # starts mid-block
    await store.append(Batch(frames[42:]))
    await store.close()
    traj = open_zarr(loc)
    assert len(traj) == 43
    _assert_same(traj["x"][:], np.stack([f.fields["x"] for f in frames]))
    _assert_same(traj.steps, np.arange(43, dtype=np.int64))


@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_ragged_round_trip(tmp_path: Path, kind: str) -> None:
    schema = Schema({"pos": Field("float32", (None, 3)), "ids": Field("int64", (None,)), "e": "f8"})
    rows = [5, 0, 3, 0, 0, 7, 1, 2, 0, 4, 6]
    frames = [
        Frame(
            i,
            float(i),
            {
                "pos": _value("float32", (r, 3), i),
                "ids": np.arange(r, dtype=np.int64) + 100 * i,
                "e": np.float64(i),
            },
        )
        for i, r in enumerate(rows)
    ]
    loc = _store(kind, tmp_path)
    await _write(ZarrStore(loc, chunk_frames=2), schema, frames, times=True, batch=3)
    traj = open_zarr(loc)
    assert len(traj) == len(rows)
    got = traj["pos"][:]
    assert [len(g) for g in got] == rows
    for g, f in zip(got, frames, strict=True):
        _assert_same(g, f.fields["pos"])
    _assert_same(traj["pos"][1], np.zeros((0, 3), np.float32))
    _assert_same(traj["ids"][9], frames[9].fields["ids"])
    mid = traj["ids"][4:7]
    for g, f in zip(mid, frames[4:7], strict=True):
        _assert_same(g, f.fields["ids"])
    # The offsets array: committed frames + 1, starting at 0.
    grp = zarr.open_group(loc, mode="r")
    _assert_same(grp["pos.offsets"][:], np.concatenate([[0], np.cumsum(rows)]).astype(np.int64))


async def test_ragged_first_frame_empty_and_all_empty(tmp_path: Path) -> None:
    schema = Schema({"r": Field("int32", (None, 2))})
    frames = [Frame(i, None, {"r": np.zeros((0, 2), np.int32)}) for i in range(3)]
    await _write(ZarrStore(tmp_path / "s"), schema, frames, times=False)
    traj = open_zarr(tmp_path / "s")
    assert [g.shape for g in traj["r"][:]] == [(0, 2)] * 3


@pytest.mark.parametrize("batch", [1, 7, 40])
async def test_arrays_show_the_committed_count(tmp_path: Path, batch: int) -> None:
    """On a local directory every array's shape is the committed count at any
    moment: rows written since the last commit stay out of sight (issue 14)."""
    schema = Schema({"x": Field("float64", (4,)), "k": Field("int32", ())})
    n = 100
    frames = [Frame(i, i / 10, {"x": np.arange(4.0) + i, "k": np.int32(i)}) for i in range(n)]
    store = ZarrStore(tmp_path / "s", chunk_frames=8)
    await _write(store, schema, frames[:60], times=True, batch=batch, close=False)
    await store.commit()
    await store.append(Batch(frames[60:]))  # written (whole chunks), not committed
    grp = zarr.open_group(tmp_path / "s", mode="r")
    assert {name: grp[name].shape[0] for name in ("steps", "times", "x", "k")} == dict.fromkeys(
        ("steps", "times", "x", "k"), 60
    )
    await store.commit()
    grp = zarr.open_group(tmp_path / "s", mode="r")
    for name in ("steps", "times", "x", "k"):
        assert grp[name].shape[0] == n, name
    await store.close()
    traj = open_zarr(tmp_path / "s")
    _assert_same(traj["x"][:], np.stack([f.fields["x"] for f in frames]))
    _assert_same(traj["k"][::7], np.arange(0, n, 7, dtype=np.int32))


async def test_growth_is_geometric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resizes: list[tuple[int, ...]] = []
    original = zarr.AsyncArray.resize

    async def spy(self: Any, new_shape: Any, *args: Any, **kwargs: Any) -> None:
        resizes.append(tuple(new_shape))
        await original(self, new_shape, *args, **kwargs)

    monkeypatch.setattr(zarr.AsyncArray, "resize", spy)
    schema = Schema({"x": Field("int8", ())})
    frames = [Frame(i, None, {"x": np.int8(i % 100)}) for i in range(200)]
    await _write(ZarrStore(MemoryStore(), chunk_frames=2), schema, frames, times=False)
    # 200 frames in chunks of 2: a resize per doubling, then one trim, per array (2 arrays).
    assert len(resizes) <= 2 * (math.ceil(math.log2(100)) + 2)


@pytest.mark.parametrize(
    ("chunk_frames", "shard_frames", "compressors"),
    [
        (None, None, None),
        (4, 16, zarr.codecs.BloscCodec(cname="lz4", clevel=3)),
        (None, 64, zarr.codecs.ZstdCodec(level=1)),
        (3, None, "auto"),
        (5, 5, None),
    ],
)
async def test_chunking_settings_round_trip(
    tmp_path: Path, chunk_frames: int | None, shard_frames: int | None, compressors: Any
) -> None:
    schema = Schema({"x": Field("float32", (10,)), "r": Field("uint16", (None,))})
    frames = [
        Frame(i, None, {"x": _value("float32", (10,), i), "r": np.arange(i % 4, dtype=np.uint16)})
        for i in range(37)
    ]
    loc = tmp_path / "s"
    store = ZarrStore(
        loc, chunk_frames=chunk_frames, shard_frames=shard_frames, compressors=compressors
    )
    await _write(store, schema, frames, times=False, batch=5)
    arr = zarr.open_group(loc, mode="r")["x"]
    if chunk_frames is not None:
        assert arr.chunks[0] == chunk_frames
    if shard_frames is not None:
        assert arr.shards is not None
        assert arr.shards[0] == shard_frames
        assert shard_frames % arr.chunks[0] == 0
    else:
        assert arr.shards is None
    if compressors is None:
        assert arr.compressors == ()
    elif compressors != "auto":
        assert type(arr.compressors[0]) is type(compressors)
    assert arr.metadata.dimension_names == ("frame", "x_dim_0")
    traj = open_zarr(loc)
    _assert_same(traj["x"][:], np.stack([f.fields["x"] for f in frames]))
    for g, f in zip(traj["r"][:], frames, strict=True):
        _assert_same(g, f.fields["r"])


def test_default_chunking() -> None:
    for frame_bytes in (4 << 10, 100 << 10, 1 << 20, 8 << 20):
        schema = Schema({"x": Field("uint8", (frame_bytes,))})
        (plan,) = [p for p in plan_arrays(schema, times=False) if p.name == "x"]
        assert 4 << 20 <= plan.chunk * frame_bytes <= 16 << 20
    tiny = plan_arrays(Schema({"e": "f8"}), times=True)
    assert all(p.chunk == MAX_CHUNK_FRAMES for p in tiny)
    huge = plan_arrays(Schema({"x": Field("uint8", (64 << 20,))}), times=False)
    assert [p.chunk for p in huge if p.name == "x"] == [1]
    sharded = plan_arrays(Schema({"x": Field("uint8", (1 << 20,))}), times=False, shard_frames=100)
    assert all(100 % p.chunk == 0 and p.shard == 100 for p in sharded)
    assert [p.chunk for p in sharded if p.name == "x"] == [5]  # largest divisor of 100 <= 8
    with pytest.raises(ConfigError, match="multiple"):
        plan_arrays(Schema({"e": "f8"}), times=False, chunk_frames=3, shard_frames=10)
    with pytest.raises(ConfigError, match="multiple"):
        ZarrStore(MemoryStore(), chunk_frames=3, shard_frames=10)
    with pytest.raises(ConfigError, match="chunk_frames"):
        ZarrStore(MemoryStore(), chunk_frames=0)


def test_row_buffer_and_capacity() -> None:
    buf = RowBuffer(np.dtype(np.int64), (), 4)
    out = [(s, r.copy(), o) for s, r, o in buf.push(np.arange(3))]
    assert out == []
    assert buf.partial() is not None
    out = [(s, r.copy(), o) for s, r, o in buf.push(np.arange(3, 13), owned=False)]
    assert [(s, o) for s, _, o in out] == [(0, True), (4, False)]  # the buffer, then a view
    np.testing.assert_array_equal(out[0][1], np.arange(4))
    np.testing.assert_array_equal(out[1][1], np.arange(4, 12))  # two whole blocks, one write
    assert buf.length == 13
    assert buf.start == 12
    part = buf.partial()
    assert part is not None
    assert part[0] == 12
    buf.mark_written()
    assert buf.partial() is None
    assert grow_capacity(0, 1, 8) == 8
    assert grow_capacity(8, 9, 8) == 16
    assert grow_capacity(16, 100, 8) == 104
    assert grow_capacity(16, 10, 8) == 16


# -- static, attrs, dropped steps ----------------------------------------------------------
async def test_static_attrs_and_dropped(tmp_path: Path) -> None:
    static = {
        "masses": np.array([1.0, 12.0, 16.0]),
        "grid": np.arange(12, dtype=np.int32).reshape(3, 4),
        "box": np.float64(10.5),
        "none": np.zeros((0, 3)),
    }
    attrs = {"code": "md", "n": 3, "nested": {"a": [1, 2]}}
    store = ZarrStore(tmp_path / "s", attrs=attrs, static=static)
    await store.open()
    await store.prepare(Schema({"e": "f8"}), times=False)
    await store.append(Batch([Frame(0, None, {"e": np.float64(1)})], dropped_steps=[]))
    await store.append(Batch([Frame(4, None, {"e": np.float64(2)})], dropped_steps=[1, 2, 3]))
    await store.append(Batch([], dropped_steps=[5, 6]))
    await store.append(Batch([Frame(9, None, {"e": np.float64(3)})], dropped_steps=[8]))
    await store.close()
    traj = open_zarr(tmp_path / "s")
    assert dict(traj.attrs) == attrs
    assert set(traj.static) == set(static)
    for name, value in static.items():
        _assert_same(traj.static[name], np.asarray(value))
    _assert_same(traj.dropped_steps, np.array([1, 2, 3, 5, 6, 8], np.int64))
    _assert_same(traj.steps, np.array([0, 4, 9], np.int64))
    raw = zarr.open_group(tmp_path / "s", mode="r").attrs.asdict()
    assert raw["snapsink"]["dropped"] == [[1, 4], [5, 7], [8, 9]]
    assert raw["snapsink"]["format"] == "snapsink-zarr"
    assert raw["snapsink"]["version"] == 1
    assert raw["snapsink"]["closed"] is True
    assert raw["attrs"] == attrs


async def test_static_without_frames(tmp_path: Path) -> None:
    store = ZarrStore(tmp_path / "s", static={"z": np.array([1, 8])}, attrs={"a": 1})
    await store.open()
    await store.close()
    traj = open_zarr(tmp_path / "s")
    assert len(traj) == 0
    assert traj.schema is None
    _assert_same(traj.static["z"], np.array([1, 8]))
    assert traj.attrs == {"a": 1}


# -- modes -------------------------------------------------------------------------------
async def _one_run(loc: Any, mode: str, steps: range, group: str | None = None, **kw: Any) -> Any:
    store = ZarrStore(loc, mode, group=group, **kw)
    resume = await store.open()
    await store.prepare(Schema({"e": "f8"}), times=True)
    await store.append(Batch([Frame(s, float(s), {"e": np.float64(s * 2)}) for s in steps]))
    await store.close()
    return resume


async def test_mode_x_refuses_existing(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    await _one_run(loc, "x", range(3))
    with pytest.raises(StoreExistsError) as info:
        await ZarrStore(loc, "x").open()
    assert isinstance(info.value, FileExistsError)
    # a foreign zarr node counts too
    zarr.create_group(str(tmp_path / "other"))
    with pytest.raises(FileExistsError):
        await ZarrStore(tmp_path / "other", "x").open()
    assert len(open_zarr(loc)) == 3


async def test_mode_w_replaces_only_its_group(tmp_path: Path) -> None:
    loc = str(tmp_path / "s")
    await _one_run(loc, "x", range(5), group="a")
    await _one_run(loc, "x", range(7), group="b")
    await _one_run(loc, "w", range(100, 102), group="a", static={"m": np.ones(2)})
    a, b = open_zarr(loc, "a"), open_zarr(loc, "b")
    _assert_same(a.steps, np.array([100, 101], np.int64))
    assert set(a.static) == {"m"}
    _assert_same(b.steps, np.arange(7, dtype=np.int64))
    assert list_groups(loc) == ["a", "b"]
    mem = MemoryStore()
    await _one_run(mem, "x", range(5), group="a")
    await _one_run(mem, "x", range(5), group="ab")
    await _one_run(mem, "w", range(2), group="a")
    assert len(open_zarr(mem, "a")) == 2
    assert len(open_zarr(mem, "ab")) == 5


async def test_mode_a_resumes_and_appends(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    assert await _one_run(loc, "a", range(10), chunk_frames=4, attrs={"k": 1}) is None
    resume = await _one_run(loc, "a", range(20, 25), chunk_frames=99, attrs={"j": 2})
    assert resume.count == 10
    assert resume.last_step == 9
    assert resume.last_time == 9.0
    assert resume.times is True
    assert resume.schema == Schema({"e": "f8"})
    traj = open_zarr(loc)
    want = np.array([*range(10), *range(20, 25)], np.int64)
    _assert_same(traj.steps, want)
    _assert_same(traj.times, want.astype(np.float64))
    _assert_same(traj["e"][:], want * 2.0)
    assert traj.attrs == {"k": 1, "j": 2}
    assert zarr.open_group(loc, mode="r")["e"].chunks == (4,)  # existing chunking kept


async def test_mode_a_ragged_and_partial_blocks(tmp_path: Path) -> None:
    schema = Schema({"r": Field("int16", (None, 2)), "x": Field("uint8", (3,))})

    def frame(i: int) -> Frame:
        return Frame(i, None, {"r": np.full((i % 3, 2), i, np.int16), "x": np.full(3, i, np.uint8)})

    loc = MemoryStore()
    all_frames: list[Frame] = []
    for run in range(3):
        frames = [frame(i) for i in range(run * 7, run * 7 + 7)]
        all_frames += frames
        await _write(
            ZarrStore(loc, "a", chunk_frames=3, shard_frames=6), schema, frames, times=False
        )
    traj = open_zarr(loc)
    assert len(traj) == 21
    for g, f in zip(traj["r"][:], all_frames, strict=True):
        _assert_same(g, f.fields["r"])
    _assert_same(traj["x"][:], np.stack([f.fields["x"] for f in all_frames]))


async def test_mode_a_schema_mismatch(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    await _one_run(loc, "x", range(3))
    store = ZarrStore(loc, "a")
    await store.open()
    with pytest.raises(SchemaError, match="holds frames of"):
        await store.prepare(Schema({"e": "f4"}), times=True)
    with pytest.raises(SchemaError, match="times"):
        await store.prepare(Schema({"e": "f8"}), times=False)
    await store.close()
    assert len(open_zarr(loc)) == 3


async def test_mode_a_on_foreign_group_is_refused(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "s"), mode="w")
    root.create_array("data", shape=(2,), dtype="i4")
    with pytest.raises(FormatError, match="not a snapsink store"):
        await ZarrStore(tmp_path / "s", "a").open()


async def test_uncommitted_tail_is_discarded(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    schema = Schema({"e": "f8", "r": Field("int8", (None,))})

    def frame(s: int) -> Frame:
        return Frame(s, float(s), {"e": np.float64(s), "r": np.arange(s % 4, dtype=np.int8)})

    store = ZarrStore(loc, chunk_frames=4, commit_every=10**6, commit_seconds=1e9)
    await store.open()
    await store.prepare(schema, times=True)
    await store.append(Batch([frame(s) for s in range(6)]))
    await store.commit()
    # written (two chunks reach the store) but not committed
    await store.append(Batch([frame(s) for s in range(6, 11)]))
    assert len(open_zarr(loc)) == 6
    del store  # "crash": no commit, no close

    resume = await ZarrStore(loc, "a").open()
    assert resume is not None
    assert resume.count == 6
    assert resume.last_step == 5
    store = ZarrStore(loc, "a")
    await store.open()
    await store.prepare(schema, times=True)
    await store.append(Batch([frame(s) for s in range(50, 53)]))
    await store.close()
    traj = open_zarr(loc)
    want = [*range(6), *range(50, 53)]
    _assert_same(traj.steps, np.array(want, np.int64))
    _assert_same(traj["e"][:], np.array(want, np.float64))
    for g, s in zip(traj["r"][:], want, strict=True):
        _assert_same(g, np.arange(s % 4, dtype=np.int8))
    assert zarr.open_group(loc, mode="r")["e"].shape == (9,)


async def test_periodic_commit(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    store = ZarrStore(loc, commit_every=5, commit_seconds=1e9)
    await store.open()
    await store.prepare(Schema({"e": "f8"}), times=False)
    seen = []
    for s in range(12):
        await store.append(Batch([Frame(s, None, {"e": np.float64(s)})]))
        # the commit falling due runs in the background (a local directory):
        # let it end before looking
        await store.settle()
        seen.append(len(open_zarr(loc)))
    assert seen == [0] * 4 + [5] * 5 + [10] * 3, seen
    np.testing.assert_array_equal(open_zarr(loc)["e"][:], np.arange(10.0))
    store2 = ZarrStore(tmp_path / "t", commit_every=10**6, commit_seconds=1e-9)
    await store2.open()
    await store2.prepare(Schema({"e": "f8"}), times=False)
    await store2.append(Batch([Frame(0, None, {"e": np.float64(0)})]))
    await store2.settle()
    assert len(open_zarr(tmp_path / "t")) == 1
    await store.close()
    await store2.close()


# -- concurrency and readers --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "memory"])
async def test_two_groups_one_store_concurrently(tmp_path: Path, kind: str) -> None:
    loc = _store(kind, tmp_path)
    thermo = ZarrStore(loc, group="thermo", chunk_frames=16)
    frames = ZarrStore(loc, group="run/frames", chunk_frames=2, attrs={"what": "positions"})
    n = 200

    async def run_thermo() -> None:
        await thermo.open()
        await thermo.prepare(Schema({"energy": "f8", "temp": "f4"}), times=True)
        for s in range(n):
            await thermo.append(
                Batch([Frame(s, s * 0.1, {"energy": np.float64(-s), "temp": np.float32(300)})])
            )
        await thermo.close()

    async def run_frames() -> None:
        await frames.open()
        await frames.prepare(Schema({"pos": Field("f4", (8, 3))}), times=True)
        for s in range(0, n, 50):
            await frames.append(Batch([Frame(s, s * 0.1, {"pos": np.full((8, 3), s, np.float32)})]))
        await frames.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_thermo)
        tg.start_soon(run_frames)
    assert list_groups(loc) == ["run/frames", "thermo"]
    t = open_zarr(loc, "thermo")
    _assert_same(t["energy"][:], np.arange(0, -n, -1, dtype=np.float64))
    f = open_zarr(loc, "run/frames")
    _assert_same(f.steps, np.arange(0, n, 50, dtype=np.int64))
    _assert_same(f["pos"][3], np.full((8, 3), 150, np.float32))
    assert f.attrs == {"what": "positions"}


async def test_reader_sees_committed_frames_and_refreshes(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    store = ZarrStore(loc, chunk_frames=4, commit_every=10**6, commit_seconds=1e9)
    await store.open()
    await store.prepare(Schema({"x": Field("i4", (2,)), "r": Field("f4", (None,))}), times=False)

    def frame(s: int) -> Frame:
        return Frame(s, None, {"x": np.array([s, -s], np.int32), "r": np.ones(s % 3, np.float32)})

    traj = open_zarr(loc)
    assert len(traj) == 0
    await store.append(Batch([frame(s) for s in range(7)]))
    assert len(traj.refresh()) == 0  # appended, not committed
    await store.commit()
    assert len(traj) == 0  # a snapshot until refreshed
    assert len(traj.refresh()) == 7
    _assert_same(traj["x"][6], np.array([6, -6], np.int32))
    await store.append(Batch([frame(s) for s in range(7, 30)]))
    assert len(traj.refresh()) == 7
    _assert_same(traj.steps, np.arange(7, dtype=np.int64))
    await store.commit()
    traj.refresh()
    assert len(traj) == 30
    _assert_same(np.asarray(traj["x"][25:30])[:, 0], np.arange(25, 30, dtype=np.int32))
    assert [len(r) for r in traj["r"][27:30]] == [0, 1, 2]
    await store.close()
    assert len(traj.refresh()) == 30


async def test_foreign_readers_after_close(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    loc = str(tmp_path / "s")
    schema = Schema({"pos": Field("f4", (5, 3)), "e": "f8", "r": Field("i8", (None,))})
    frames = [
        Frame(i * 10, i * 0.5, {"pos": _value("float32", (5, 3), i), "e": np.float64(i),
                                "r": np.arange(i % 3, dtype=np.int64)})
        for i in range(23)
    ]  # fmt: skip
    await _write(ZarrStore(loc, group="g", chunk_frames=4), schema, frames, times=True, batch=4)
    ds = xr.open_zarr(loc, group="g", consolidated=False)
    assert ds["pos"].dims == ("frame", "pos_dim_0", "pos_dim_1")
    want = np.stack([f.fields["pos"] for f in frames])
    _assert_same(ds["pos"].values, want)
    _assert_same(ds["steps"].values, np.arange(0, 230, 10, dtype=np.int64))
    _assert_same(ds["times"].values, np.arange(23) * 0.5)
    assert ds["r.offsets"].shape == (24,)
    _assert_same(da.from_zarr(loc, component="g/pos").compute(), want)
    _assert_same(da.from_zarr(loc, component="g/e").compute(), np.arange(23.0))
    # Trajectory.to_xarray agrees with xarray's view of the group.
    mine = open_zarr(loc, "g").to_xarray()
    _assert_same(mine["pos"].values, ds["pos"].values)
    assert mine["pos"].dims == ds["pos"].dims


# -- durability ----------------------------------------------------------------------------
class _DurabilitySpy:
    """Follows fsyncs and renames under ``root``: which files are durable, and
    every rename over an existing file whose new content was not fsynced."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = str(root)
        self.durable: set[str] = set()
        self.unsafe_replaces: list[str] = []
        self.metas: list[tuple[int, set[str]]] = []  # (count, files not durable)
        real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

        def fsync(fd: Any) -> None:
            real_fsync(fd)
            self.durable.add(os.readlink(f"/proc/self/fd/{fd}"))

        def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
            src = os.path.abspath(src)
            if os.path.exists(dst) and src not in self.durable and dst.startswith(self.root):
                self.unsafe_replaces.append(dst)
            real_replace(src, dst, *a, **kw)
            if src in self.durable:
                self.durable.add(dst)
            else:
                self.durable.discard(dst)

        def link(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
            real_link(src, dst, *a, **kw)
            if os.path.abspath(os.fspath(src)) in self.durable:
                self.durable.add(os.path.abspath(os.fspath(dst)))

        original_update = zarr.AsyncGroup.update_attributes

        async def update(group: Any, new: dict[str, Any]) -> Any:
            files = {str(p) for p in root.rglob("*") if p.is_file() and "partial" not in p.name}  # noqa: ASYNC240
            self.metas.append((new["snapsink"]["count"], files - self.durable))
            return await original_update(group, new)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fsync)  # chunk files written in place
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(zarr.AsyncGroup, "update_attributes", update)


@pytest.mark.parametrize("shard_frames", [None, 8])
async def test_local_store_fsyncs_data_before_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard_frames: int | None
) -> None:
    loc = tmp_path / "s"
    spy = _DurabilitySpy(loc, monkeypatch)
    schema = Schema({"x": Field("f8", (3,)), "r": Field("i2", (None,))})
    store = ZarrStore(
        loc, group="g", chunk_frames=4, shard_frames=shard_frames, static={"m": np.ones(2)}
    )
    frames = [Frame(s, None, {"x": np.full(3, s, np.float64), "r": np.ones(s % 2, np.int16)})
              for s in range(10)]  # fmt: skip
    await _write(store, schema, frames, times=False, batch=3)
    # Before a count is published, every file of the store (chunks, array
    # metadata, static arrays) is durable: data first, metadata last.
    # the flush's commit, then close's, whose attributes mark the group closed too
    assert [c for c, _ in spy.metas if c] == [10] * 2
    assert zarr.open_group(loc / "g", mode="r").attrs["snapsink"]["closed"] is True
    for count, not_durable in spy.metas:
        assert not not_durable, (count, not_durable)
    # Committed partial chunks were rewritten whole; never renamed over before an fsync.
    assert not spy.unsafe_replaces, spy.unsafe_replaces
    chunk = loc / "g" / "x" / "c" / ("2" if shard_frames is None else "1") / "0"
    assert str(chunk) in spy.durable
    _assert_same(open_zarr(loc, "g")["x"][:], np.stack([f.fields["x"] for f in frames]))


async def test_rewritten_partial_chunk_is_durable_before_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 6: a commit writes a partial chunk; the next frames fill it and
    it is written again whole, renamed over the committed one only once fsynced."""
    loc = tmp_path / "s"
    spy = _DurabilitySpy(loc, monkeypatch)
    store = ZarrStore(loc, chunk_frames=4)
    await store.open()
    await store.prepare(Schema({"e": "f8"}), times=False)
    chunk = loc / "e" / "c" / "0"
    for s in range(6):
        await store.append(Batch([Frame(s, None, {"e": np.float64(s)})]))
        await store.commit()  # commits 1, 2, 3 rows: chunk 0 is rewritten over committed rows
    assert chunk.exists()
    replaced = [r for r in spy.unsafe_replaces if r.startswith(str(loc))]
    assert not replaced, replaced
    await store.close()
    _assert_same(open_zarr(loc)["e"][:], np.arange(6.0))


async def test_memory_store_skips_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: Any) -> None:
        raise AssertionError("fsync on a MemoryStore")

    monkeypatch.setattr(os, "fsync", boom)
    store = await _one_run(MemoryStore(), "x", range(3))
    assert store is None


# -- reading -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(version=2), "newer"),
        (lambda m: m.update(version="1"), "version"),
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(count="3"), "count"),
        (lambda m: m.update(count=-1), "count"),
        (lambda m: m.update(count=True), "count"),
        (lambda m: m.update(count=1000), "fewer"),
        (lambda m: m.update(schema={"e": {"dtype": "object", "shape": []}}), "schema"),
        (lambda m: m.update(schema={"../e": {"dtype": "f8", "shape": []}}), "schema"),
        (lambda m: m.update(schema=[1]), "schema"),
        (lambda m: m.update(schema={"e": {"dtype": "f4", "shape": []}}), "dtype"),
        (lambda m: m.update(schema={"zz": {"dtype": "f8", "shape": []}}), "missing"),
        (lambda m: m.update(schema=None), "no schema"),
        (lambda m: m.update(times="yes"), "times"),
        (lambda m: m.update(dropped=[[5, 3]]), "dropped"),
        (lambda m: m.update(dropped=[[1, 2, 3]]), "dropped"),
        (lambda m: m.update(dropped="1-3"), "dropped"),
        (lambda m: m.update(closed=1), "closed"),
        (lambda m: m.clear(), "format"),
    ],
)
async def test_corrupted_attributes_raise_format_error(
    tmp_path: Path, mutate: Any, match: str
) -> None:
    loc = str(tmp_path / "s")
    await _one_run(loc, "x", range(3))
    grp = zarr.open_group(loc, mode="r+")
    meta = json.loads(json.dumps(grp.attrs["snapsink"]))
    mutate(meta)
    grp.attrs["snapsink"] = meta
    with pytest.raises(FormatError, match=match):
        open_zarr(loc)
    with pytest.raises(FormatError):
        await ZarrStore(loc, "a").open()


async def test_other_format_errors(tmp_path: Path) -> None:
    loc = str(tmp_path / "s")
    await _one_run(loc, "x", range(3))
    grp = zarr.open_group(loc, mode="r+")
    grp.attrs["attrs"] = [1, 2]
    with pytest.raises(FormatError, match="attrs"):
        open_zarr(loc)
    del grp.attrs["snapsink"]
    with pytest.raises(FormatError, match="not a snapsink store"):
        open_zarr(loc)
    zarr.create_array(str(tmp_path / "arr"), shape=(2,), dtype="i4")
    with pytest.raises(FormatError):
        open_zarr(tmp_path / "arr")


def test_missing_store_and_group(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        open_zarr(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    zarr.create_group(str(tmp_path / "s"))
    with pytest.raises(StoreNotFoundError):
        open_zarr(tmp_path / "s", group="g")
    with pytest.raises(FileNotFoundError):
        open_zarr(MemoryStore())


async def test_is_zarr_store_and_list_groups(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    assert not is_zarr_store(loc)
    assert not is_zarr_store(MemoryStore())
    assert not is_zarr_store(42)
    await _one_run(loc, "x", range(2), group="a/b")
    with pytest.raises(StoreExistsError):  # the root group exists, as a parent of "a/b"
        await _one_run(loc, "x", range(2))
    await _one_run(loc, "a", range(2))  # a group with only subgroups may be adopted
    assert is_zarr_store(loc)
    assert is_zarr_store(str(loc))
    assert is_zarr_store(LocalStore(loc))
    assert list_groups(loc) == ["", "a/b"]
    assert len(open_zarr(loc, "a/b")) == 2


@pytest.mark.parametrize("group", ["../x", "/abs", "a//b", "a/", "static", "a/static", "1a", "a b"])
def test_bad_group_names(group: str) -> None:
    with pytest.raises(ConfigError):
        check_group(group)
    with pytest.raises(ConfigError):
        ZarrStore(MemoryStore(), group=group)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="mode"):
        ZarrStore(MemoryStore(), "r")
    with pytest.raises(ConfigError, match="store"):
        ZarrStore(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="attrs"):
        ZarrStore(MemoryStore(), attrs={"x": float("nan")})
    with pytest.raises(ConfigError, match="commit_seconds"):
        ZarrStore(MemoryStore(), commit_seconds=0)


async def test_protocol_misuse_is_refused() -> None:
    store = ZarrStore(MemoryStore())
    assert isinstance(store, Store)
    # one error type for a store driven out of order, in every store
    with pytest.raises(snapsink.StoreStateError, match="open"):
        await store.append(Batch([]))
    await store.open()
    with pytest.raises(snapsink.StoreStateError, match="called twice"):
        await store.open()
    with pytest.raises(snapsink.StoreStateError, match="prepare"):
        await store.append(Batch([Frame(0, None, {"e": np.float64(1)})]))
    await store.close()
    with pytest.raises(snapsink.StoreStateError, match="closed"):
        await store.commit()
    mem = snapsink.HostMemory()
    mem.open()
    with pytest.raises(snapsink.StoreStateError, match="prepare"):
        mem.append(Batch([Frame(0, None, {"e": np.float64(1)})]))
    assert issubclass(snapsink.StoreStateError, RuntimeError)
    await store.close()  # idempotent


async def test_trajectory_reports_groups_and_clean_close(tmp_path: Path) -> None:
    from snapsink import Sink
    from snapsink import open as open_store

    path = tmp_path / "md.zarr"
    async with (
        Sink(ZarrStore(path, group="thermo")) as a,
        Sink(ZarrStore(path, group="frames")) as b,
    ):
        await a.write({"e": 1.0})
        await b.write({"x": np.zeros(3)})
        await a.flush()
        running = open_store(path, group="thermo")
        assert running.closed is False  # the writer is still running
    traj = open_store(path, group="thermo")
    assert traj.closed is True
    assert traj.groups == ["frames", "thermo"]


def test_listing_groups_of_a_store_with_corrupt_array_metadata_is_a_format_error(
    tmp_path: Path,
) -> None:
    """As open does: a node's unreadable zarr.json is a FormatError naming the
    store, never zarr's or json's own exception (the CLI's info then exits 2)."""
    path = tmp_path / "run.zarr"
    with snapsink.SyncSink(ZarrStore(path), writer="thread") as sink:
        sink.write({"x": np.arange(4.0)}, step=0)
    (path / "steps" / "zarr.json").write_text("{bad")
    with pytest.raises(snapsink.FormatError, match="listing its groups: JSONDecodeError"):
        list_groups(path)
    with pytest.raises(snapsink.FormatError):
        snapsink.open(path)
    from snapsink.cli import main

    assert main(["info", str(path)]) == 2
