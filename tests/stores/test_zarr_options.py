"""ZarrStore's options and what it takes as a store and a group.

- a field with a dimension of length 0 stores and reads back (empty arrays of
  the right shape) in every configuration: compressed, sharded, uncompressed,
  on a local directory and in memory, across a resume;
- ``compressors`` is checked when the store is made (``ConfigError`` naming it);
- a read-only zarr store, and a group below an array, are refused when the
  store is made or opened, with nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs
from zarr.storage import LocalStore, MemoryStore

import snapsink
from snapsink._errors import ConfigError
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink.stores.zarr import ZarrStore, open_zarr

EMPTY = Schema({
    "x": Field("f8", ()),
    "e": Field("f4", (0,)),
    "m": Field("i2", (2, 0, 3)),
    "r": Field("u1", (None, 0)),
})  # fmt: skip


def _empty_frames(start: int, stop: int) -> list[Frame]:
    return [
        Frame(s, None, {
            "x": np.float64(s) + 0.5,
            "e": np.zeros(0, "f4"),
            "m": np.zeros((2, 0, 3), "i2"),
            "r": np.zeros((s % 3, 0), "u1"),
        })
        for s in range(start, stop)
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"compressors": "auto"},
        {"compressors": zarr.codecs.BloscCodec(cname="lz4"), "chunk_frames": 2},
        {"shard_frames": 4},
        {"compressors": "auto", "chunk_frames": 2, "shard_frames": 4},
    ],
    ids=["raw", "auto", "blosc", "sharded", "auto-sharded"],
)
async def test_a_dimension_of_length_zero_stores_in_every_configuration(
    tmp_path: Path, where: str, options: dict[str, Any]
) -> None:
    loc: Any = tmp_path / "s" if where == "local" else MemoryStore()
    store = ZarrStore(loc, **options)
    await store.open()
    await store.prepare(EMPTY, times=False)
    await store.append(Batch(_empty_frames(0, 3)))
    await store.commit()  # partly filled blocks
    await store.append(Batch(_empty_frames(3, 5)))
    await store.close()
    if where == "local":  # and a resume reads the empty tail back
        store = ZarrStore(loc, "a")
        resume = await store.open()
        assert resume is not None and resume.count == 5
        await store.prepare(EMPTY, times=False)
        await store.append(Batch(_empty_frames(5, 7)))
        await store.close()
    n = 7 if where == "local" else 5
    traj = open_zarr(loc)
    assert len(traj) == n
    np.testing.assert_array_equal(traj.steps, np.arange(n))
    assert np.asarray(traj["x"][:]).tobytes() == (np.arange(n) + 0.5).tobytes()
    assert np.asarray(traj["e"][:]).shape == (n, 0)
    assert np.asarray(traj["m"][:]).shape == (n, 2, 0, 3)
    assert np.asarray(traj["m"][:]).dtype == np.int16
    for i in range(n):
        assert np.asarray(traj["r"][i]).shape == (i % 3, 0)
    group = zarr.open_group(loc, mode="r")
    assert group["m"].shape == (n, 2, 0, 3)  # plain zarr agrees


def test_an_empty_field_through_a_sink(tmp_path: Path) -> None:
    loc = tmp_path / "s"
    with snapsink.SyncSink(ZarrStore(loc, compressors="auto"), writer="thread") as sink:
        for i in range(3):
            sink.write({"x": float(i), "e": np.zeros((3, 0))}, step=i)
    traj = snapsink.open(loc)
    assert len(traj) == 3
    assert traj["e"][:].shape == (3, 3, 0)


BAD_COMPRESSORS = {
    "name": "zstd",
    "int": 42,
    "array-codec": zarr.codecs.TransposeCodec(order=(0,)),
    "list-with-a-name": [zarr.codecs.ZstdCodec(), "gzip"],
    "dict-of-a-serializer": {"name": "bytes"},
}
GOOD_COMPRESSORS = {
    "codec": zarr.codecs.ZstdCodec(level=1),
    "list": [zarr.codecs.GzipCodec(level=1), zarr.codecs.Crc32cCodec()],
    "dict": {"name": "zstd", "configuration": {"level": 1}},
    "empty": (),
}


@pytest.mark.parametrize("bad", BAD_COMPRESSORS.values(), ids=list(BAD_COMPRESSORS))
def test_bad_compressors_are_refused_when_the_store_is_made(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^compressors: expected None, 'auto'.*got ") as info:
        ZarrStore(tmp_path / "s", compressors=bad)
    assert "got " + repr(bad if not isinstance(bad, list) else bad[1]) in str(info.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("good", GOOD_COMPRESSORS.values(), ids=list(GOOD_COMPRESSORS))
async def test_good_compressors_store_and_read_back(tmp_path: Path, good: Any) -> None:
    store = ZarrStore(tmp_path / "s", compressors=good, chunk_frames=2)
    await store.open()
    await store.prepare(Schema({"x": Field("f8", (3,))}), times=False)
    await store.append(Batch([Frame(s, None, {"x": np.arange(3.0) + s}) for s in range(3)]))
    await store.close()
    got = np.asarray(open_zarr(tmp_path / "s")["x"][:])
    assert got.tobytes() == (np.arange(3.0) + np.arange(3)[:, None]).tobytes()


def test_a_read_only_store_is_refused_when_the_store_is_made(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    for ro in (LocalStore(tmp_path / "ro", read_only=True), MemoryStore(read_only=True)):
        with pytest.raises(ConfigError, match=r"store: expected a writable zarr store.*read-only"):
            ZarrStore(ro)
    assert not list((tmp_path / "ro").iterdir())  # nothing written


@pytest.mark.parametrize("mode", ["x", "a", "w"])
@pytest.mark.parametrize("where", ["local", "memory"])
async def test_a_group_below_an_array_is_refused(tmp_path: Path, mode: str, where: str) -> None:
    loc: Any = tmp_path / "s" if where == "local" else MemoryStore()
    store = ZarrStore(loc)
    await store.open()
    await store.prepare(Schema({"x": Field("f8", (2,))}), times=False)
    await store.append(Batch([Frame(0, None, {"x": np.arange(2.0)})]))
    await store.close()
    with pytest.raises(ConfigError, match=r"got 'x/sub/run', but 'x' is a zarr array"):
        await ZarrStore(loc, mode, group="x/sub/run").open()
    if where == "local":
        assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["c", "zarr.json"]
    np.testing.assert_array_equal(open_zarr(loc)["x"][:], [np.arange(2.0)])
