"""snapsink.copy: a finished run into a store, in chunks, bit-exact (and its errors)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import Batch, Field, Frame, HostMemory, Schema
from snapsink._arraysource import ArraySource
from snapsink._copy import frames_per_chunk
from snapsink._trajectory import Trajectory
from snapsink.stores.gpu import GPUBuffer

SCHEMA = Schema(
    {
        "positions": Field("float32", (None, 3)),  # ragged
        "grid": Field("float64", (4, 5)),
        "energy": Field("float64", ()),
        "flags": Field("uint8", (2,)),
    }
)
STEPS = [0, 3, 4, 10, 11, 12, 20, 21]
DROPPED = [1, 2, 5, 6, 7, 13]
STATIC = {"masses": np.array([1.008, 12.011, 15.999]), "ids": np.arange(5, dtype=np.int32)}
ATTRS = {"model": "copy-test", "dt": 0.25, "nested": {"a": [1, 2]}}


def _frames(steps: list[int] = STEPS) -> list[Frame]:
    rng = np.random.default_rng(11)
    out = []
    for k, step in enumerate(steps):
        grid = rng.standard_normal((4, 5))
        grid[0, :4] = [np.nan, -0.0, 5e-324, -np.inf]  # NaN, signed zero, subnormal: bit-exact
        fields = {
            "positions": rng.standard_normal((k % 4, 3)).astype(np.float32),  # 0 rows too
            "grid": grid,
            "energy": np.float64(-1.5 * k + 0.1),
            "flags": np.array([k, 255 - k], np.uint8),
        }
        out.append(Frame(step, 0.25 * step + 1e-9, fields))
    return out


def _memory(**kw: Any) -> HostMemory:
    """A finished HostMemory: frames in two batches, steps dropped on the way."""
    mem = HostMemory(attrs=ATTRS, static=STATIC, **kw)
    mem.prepare(SCHEMA, times=True)
    frames = _frames()
    mem.append(Batch(frames[:3], DROPPED[:2]))
    mem.append(Batch(frames[3:], DROPPED[2:]))
    return mem


def _same_bits(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def assert_same(src: Trajectory, dst: Trajectory, static: bool = True) -> None:
    assert len(dst) == len(src)
    assert dst.fields == src.fields
    _same_bits(dst.steps, src.steps)
    assert src.times is not None and dst.times is not None
    _same_bits(dst.times, src.times)
    _same_bits(dst.dropped_steps, src.dropped_steps)
    for name, f in src.fields.items():
        if f.ragged:
            for a, b in zip(src[name][:], dst[name][:], strict=True):
                _same_bits(np.asarray(a), np.asarray(b))
        else:
            _same_bits(np.asarray(dst[name][:]), np.asarray(src[name][:]))
    if static:
        assert dict(dst.attrs) == dict(src.attrs)
        assert sorted(dst.static) == sorted(src.static)
        for name, arr in src.static.items():
            _same_bits(np.asarray(dst.static[name]), np.asarray(arr))


def test_host_memory_to_npy_directory(tmp_path: Path) -> None:
    mem = _memory()
    assert snapsink.copy(mem, tmp_path / "run") == len(STEPS)
    back = snapsink.open(tmp_path / "run")
    assert_same(mem.trajectory(), back)
    assert back.dropped_steps.tolist() == DROPPED
    np.testing.assert_array_equal(back.steps, STEPS)
    assert dict(back.attrs) == ATTRS
    np.testing.assert_array_equal(back.static["masses"], STATIC["masses"])


@pytest.mark.parametrize("name", ["run.h5", "run.hdf5"])
@pytest.mark.parametrize("group", [None, "run/frames"])
def test_a_path_named_like_hdf5_gets_an_hdf5_file(
    tmp_path: Path, name: str, group: str | None
) -> None:
    """It got an NpyDirectory (a directory named run.h5, which h5py cannot open)."""
    pytest.importorskip("h5py")
    mem = _memory()
    assert snapsink.copy(mem, tmp_path / name, group=group) == len(STEPS)
    assert (tmp_path / name).is_file()
    back = snapsink.open(tmp_path / name, group=group)
    assert_same(mem.trajectory(), back)
    assert dict(back.attrs) == ATTRS
    np.testing.assert_array_equal(back.static["masses"], STATIC["masses"])


@pytest.mark.parametrize("group", [None, "run/frames"])
def test_host_memory_to_zarr(tmp_path: Path, group: str | None) -> None:
    mem = _memory()
    assert snapsink.copy(mem, str(tmp_path / "run.zarr"), group=group) == len(STEPS)
    assert_same(mem.trajectory(), snapsink.open(tmp_path / "run.zarr", group=group))


def test_npy_directory_to_zarr_and_back(tmp_path: Path) -> None:
    mem = _memory()
    snapsink.copy(mem, tmp_path / "a")
    npy = snapsink.open(tmp_path / "a")
    assert snapsink.copy(npy, tmp_path / "b", format="zarr", chunk_bytes=700) == len(STEPS)
    zarr = snapsink.open(tmp_path / "b")
    assert_same(npy, zarr)
    snapsink.copy(zarr, tmp_path / "c.npy-store", format="npy")
    assert_same(mem.trajectory(), snapsink.open(tmp_path / "c.npy-store"))


def test_into_a_store_object_keeps_its_own_attrs_and_static(tmp_path: Path) -> None:
    mem = _memory()
    # a store object is used as built: it carries what it was given
    built = snapsink.NpyDirectory(tmp_path / "run", attrs={"mine": 1}, static={"z": np.ones(2)})
    assert snapsink.copy(mem, built) == len(STEPS)
    back = snapsink.open(tmp_path / "run")
    assert_same(mem.trajectory(), back, static=False)
    assert dict(back.attrs) == {"mine": 1} and list(back.static) == ["z"]
    # and one built with the source's carries those
    out = HostMemory(attrs=dict(mem.trajectory().attrs), static=dict(mem.trajectory().static))
    assert snapsink.copy(mem.trajectory(), out) == len(STEPS)
    assert_same(mem.trajectory(), out.trajectory())


def test_appends_after_a_store_s_frames_with_mode_a(tmp_path: Path) -> None:
    first = HostMemory()
    first.prepare(SCHEMA, times=True)
    frames = _frames([0, 1, 2, 30, 31])
    first.append(Batch(frames[:3], [5]))
    later = HostMemory()
    later.prepare(SCHEMA, times=True)
    later.append(Batch(frames[3:], [29]))
    snapsink.copy(first, tmp_path / "run")
    assert snapsink.copy(later, snapsink.NpyDirectory(tmp_path / "run", mode="a")) == 2
    back = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(back.steps, [0, 1, 2, 30, 31])
    assert back.dropped_steps.tolist() == [5, 29]
    _same_bits(np.asarray(back["grid"][4]), frames[4].fields["grid"])


class _CountingSource(ArraySource):
    """An ArraySource that records the largest frame range read at once."""

    widest = 0

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        self.widest = max(self.widest, stop - start)
        return super().read(name, start, stop)

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        self.widest = max(self.widest, stop - start)
        return super().read_ragged(name, start, stop)


def _big_source(n: int) -> _CountingSource:
    schema = Schema({"x": Field("float64", (128,)), "r": Field("int16", (None, 2))})
    rows = np.arange(n) % 5
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(rows, out=offsets[1:])
    return _CountingSource(
        schema=schema,
        steps=np.arange(n, dtype=np.int64) * 2,
        times=np.arange(n, dtype=np.float64) / 3,
        data={
            "x": np.arange(n * 128, dtype=np.float64).reshape(n, 128),
            "r": np.arange(int(offsets[-1]) * 2, dtype=np.int16).reshape(-1, 2),
        },
        offsets={"r": offsets},
        dropped_steps=[1, 3],
    )


def test_reads_in_bounded_chunks(tmp_path: Path) -> None:
    source = _big_source(200)
    traj = Trajectory(source)
    frame_bytes = 128 * 8 + 4 * 2 * 2  # x, plus r at its largest (4 rows) in the samples
    chunk = frames_per_chunk(traj, 10 * frame_bytes)
    assert chunk == 10
    assert snapsink.copy(traj, tmp_path / "run", chunk_bytes=10 * frame_bytes) == 200
    assert 0 < source.widest <= chunk
    back = snapsink.open(tmp_path / "run")
    _same_bits(np.asarray(back["x"][:]), source._data["x"])
    for i in (0, 3, 4, 199):
        _same_bits(back["r"][i], traj["r"][i])
    assert back.dropped_steps.tolist() == [1, 3]
    np.testing.assert_array_equal(back.steps, np.arange(200) * 2)


def test_empty_source_keeps_schema_attrs_and_dropped(tmp_path: Path) -> None:
    mem = HostMemory(attrs={"x": 1})
    mem.prepare(SCHEMA, times=False)
    mem.append(Batch([], [3, 4]))
    assert snapsink.copy(mem, tmp_path / "run.zarr") == 0
    back = snapsink.open(tmp_path / "run.zarr")
    assert len(back) == 0 and back.fields == dict(SCHEMA.items())
    assert back.dropped_steps.tolist() == [3, 4] and dict(back.attrs) == {"x": 1}


@pytest.mark.parametrize("times", [True, False])
def test_empty_source_keeps_its_times_setting(tmp_path: Path, times: bool) -> None:
    """With no frame to say so, the copy still knows whether frames carry times."""
    mem = HostMemory()
    mem.prepare(SCHEMA, times=times)
    mem.append(Batch([], [3]))
    snapsink.copy(mem, tmp_path / "run")
    snapsink.copy(snapsink.open(tmp_path / "run"), tmp_path / "run.zarr")
    for path in ("run", "run.zarr"):
        back = snapsink.open(tmp_path / path)
        assert len(back) == 0 and back.dropped_steps.tolist() == [3]
        assert (back.times is not None) is times
        if times:
            assert back.times.dtype == np.float64 and back.times.shape == (0,)


def test_a_drained_gpubuffer_copies_on(tmp_path: Path) -> None:
    """GPUBuffer -> HostMemory (drain_to) -> disk (copy): the evicted steps follow."""
    import anyio

    buf = GPUBuffer(3, backend="emulation")
    buf.prepare(Schema({"x": Field("float32", (4,))}), times=False)
    buf.append(Batch([Frame(i, None, {"x": np.full(4, i, np.float32)}) for i in range(7)]))
    mem = HostMemory()
    assert anyio.run(buf.drain_to, mem) == 3
    assert snapsink.copy(mem, tmp_path / "run") == 3
    back = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(back.steps, [4, 5, 6])
    np.testing.assert_array_equal(back["x"][:, 0], [4, 5, 6])
    assert back.dropped_steps.tolist() == [0, 1, 2, 3]


# -- refusals: a clear error, nothing written ----------------------------------------
def test_never_clobbers(tmp_path: Path) -> None:
    snapsink.copy(_memory(), tmp_path / "run")
    other = HostMemory()
    other.prepare(Schema({"y": Field("int8", ())}), times=False)
    other.append(Batch([Frame(0, None, {"y": np.int8(1)})]))
    with pytest.raises(snapsink.StoreExistsError, match="exists"):
        snapsink.copy(other, tmp_path / "run")
    assert_same(_memory().trajectory(), snapsink.open(tmp_path / "run"))


def test_refuses_steps_the_destination_already_has(tmp_path: Path) -> None:
    snapsink.copy(_memory(), tmp_path / "run")
    with pytest.raises(snapsink.SchemaError, match=r"up to step 21.*starts at step 0"):
        snapsink.copy(_memory(), snapsink.NpyDirectory(tmp_path / "run", mode="a"))
    back = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(back.steps, STEPS)
    assert back.dropped_steps.tolist() == DROPPED  # the source's drops did not go in


def test_refuses_another_schema(tmp_path: Path) -> None:
    snapsink.copy(_memory(), tmp_path / "run")
    other = HostMemory()
    other.prepare(Schema({"y": Field("int8", ())}), times=False)
    other.append(Batch([Frame(100, None, {"y": np.int8(1)})], [99]))
    with pytest.raises(snapsink.SchemaError, match="schema"):
        snapsink.copy(other, snapsink.NpyDirectory(tmp_path / "run", mode="a"))
    back = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(back.steps, STEPS)
    assert back.dropped_steps.tolist() == DROPPED


class _NotAStore:
    def append(self, batch: Batch) -> None: ...


@pytest.mark.parametrize(
    ("src", "dst", "kwargs", "match"),
    [
        ("a string", "out", {}, r"src: expected a snapsink\.Trajectory.*got str"),
        ("gpubuffer", "out", {}, r"got GPUBuffer \(drain a GPUBuffer with its drain_to"),
        ("memory", _NotAStore(), {}, r"dst: expected a path or a store.*got _NotAStore"),
        ("memory", 3, {}, r"dst: expected a path or a store.*got int"),
        ("memory", "", {}, "dst: expected a non-empty path"),
        ("memory", "out", {"format": "h5"}, r"format: expected 'npy', 'zarr', 'hdf5' or None"),
        ("memory", "out", {"group": "g"}, r"group='g': an NpyDirectory has no groups"),
        ("memory", "store", {"format": "zarr"}, r"choose the store copy makes at a path"),
        ("memory", "out", {"chunk_bytes": 0}, "chunk_bytes: expected a positive int, got 0"),
        ("memory", "out", {"chunk_bytes": True}, "chunk_bytes: expected a positive int"),
        ("memory", "out", {"capacity": 0}, "capacity"),
    ],
)
def test_bad_arguments(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    src: Any,
    dst: Any,
    kwargs: Mapping[str, Any],
    match: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    if src == "memory":
        src = _memory()
    elif src == "gpubuffer":
        src = GPUBuffer(2, backend="emulation")
    if dst == "store":
        dst = HostMemory()
    with pytest.raises(snapsink.ConfigError, match=match):
        snapsink.copy(src, dst, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_dropped_steps_without_a_schema_are_refused(tmp_path: Path) -> None:
    mem = HostMemory()
    mem.append(Batch([], [1, 2]))  # steps dropped before any frame fixed a schema
    with pytest.raises(snapsink.SchemaError, match="2 dropped steps cannot be stored"):
        snapsink.copy(mem, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _damaged_zarr(path: Path) -> None:
    """10 frames of 8 KB, two a chunk; the chunk of frames 6 and 7 removed."""
    with snapsink.SyncSink(snapsink.ZarrStore(path, chunk_frames=2), writer="thread") as sink:
        for i in range(10):
            sink.write({"x": np.full(1000, float(i))}, step=i)
    (path / "x" / "c" / "3" / "0").unlink()


@pytest.mark.parametrize("where", ["new", "empty-dir", "zarr-group"])
def test_a_failed_copy_to_a_path_removes_what_it_created(where: str, tmp_path: Path) -> None:
    _damaged_zarr(tmp_path / "src.zarr")
    if where == "new":
        # the store goes; the parents it made stay (another copy may write beside it)
        dst, kwargs, made = tmp_path / "a" / "b" / "run", {}, tmp_path / "a" / "b" / "run"
    elif where == "empty-dir":
        (tmp_path / "empty").mkdir()
        dst, kwargs, made = tmp_path / "empty", {}, tmp_path / "empty"
    else:  # a group added to an existing Zarr store: the group goes, with the g it made
        snapsink.copy(_memory(), tmp_path / "have.zarr")
        dst, kwargs, made = tmp_path / "have.zarr", {"group": "g/h"}, tmp_path / "have.zarr/g"
    with pytest.raises(snapsink.FormatError, match="chunk") as info:
        snapsink.copy(snapsink.open(tmp_path / "src.zarr"), dst, chunk_bytes=16000, **kwargs)
    note = "".join(info.value.__notes__)
    assert f"removed {str(made)!r}" in note and "6 frames (steps 0..5) of 10" in note
    if where == "empty-dir":
        assert list(made.iterdir()) == []  # the directory was there: it stays, empty
    else:
        assert not made.exists() and made.parent.is_dir()
    if where == "zarr-group":
        assert snapsink.groups(dst) == [""]
        assert_same(_memory().trajectory(), snapsink.open(dst))


def test_a_failed_copy_never_removes_a_parent_another_copy_writes_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copy b starts into a new directory; copy a writes beside it meanwhile;
    b fails: only b's own store goes, never the directory both made."""
    _damaged_zarr(tmp_path / "src.zarr")
    src = snapsink.open(tmp_path / "src.zarr")
    chunks = src.iter_chunks

    def with_another_copy_meanwhile(frames: int) -> Any:
        for k, part in enumerate(chunks(frames)):
            if k == 1:
                snapsink.copy(_memory(), tmp_path / "out" / "a")
            yield part

    monkeypatch.setattr(src, "iter_chunks", with_another_copy_meanwhile)
    with pytest.raises(snapsink.FormatError):
        snapsink.copy(src, tmp_path / "out" / "b", chunk_bytes=16000)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]
    assert_same(_memory().trajectory(), snapsink.open(tmp_path / "out" / "a"))


def test_a_copy_whose_open_failed_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store another writer made at the path while the copy started is not
    the copy's to remove: only a destination the copy opened is."""
    dst = tmp_path / "run"

    def another_writer_got_there_first(self: Any) -> None:
        dst.mkdir()
        (dst / "theirs.txt").write_text("theirs")
        raise snapsink.StoreExistsError(f"{dst}: exists")

    monkeypatch.setattr(snapsink.NpyDirectory, "open", another_writer_got_there_first)
    with pytest.raises(snapsink.StoreExistsError):
        snapsink.copy(_memory(), dst)
    assert (dst / "theirs.txt").read_text() == "theirs"


def test_a_failed_copy_into_a_store_object_keeps_its_frames_and_says_so(tmp_path: Path) -> None:
    _damaged_zarr(tmp_path / "src.zarr")
    dst = HostMemory()
    with pytest.raises(snapsink.FormatError, match="chunk") as info:
        snapsink.copy(snapsink.open(tmp_path / "src.zarr"), dst, chunk_bytes=16000)
    assert "6 frames (steps 0..5) of 10 had been written to dst" in "".join(info.value.__notes__)
    back = dst.trajectory()
    assert back.steps.tolist() == list(range(6))
    np.testing.assert_array_equal(back["x"][:], np.repeat(np.arange(6.0), 1000).reshape(6, 1000))


def test_refuses_dropped_steps_the_destination_already_has(tmp_path: Path) -> None:
    snapsink.copy(_memory(), tmp_path / "run")
    later = HostMemory()
    later.prepare(SCHEMA, times=True)
    frame = _frames([30])[0]
    later.append(Batch([frame], [21]))  # step 21 is stored in dst
    with pytest.raises(snapsink.SchemaError, match=r"up to step 21.*records step 21 as dropped"):
        snapsink.copy(later, snapsink.NpyDirectory(tmp_path / "run", mode="a"))
    back = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(back.steps, STEPS)
    assert back.dropped_steps.tolist() == DROPPED


@pytest.mark.parametrize(
    ("dst", "match"),
    [
        ("run/sub", "is inside the source store"),
        ("run", "is the source store"),
        (".", "holds the source store"),
        ("npy:run/sub", "is inside the source store"),
    ],
)
def test_refuses_a_destination_inside_the_source(
    dst: str, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    snapsink.copy(_memory(), "run")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    target: Any = snapsink.NpyDirectory(dst[4:]) if dst.startswith("npy:") else dst
    with pytest.raises(snapsink.ConfigError, match=match):
        snapsink.copy(snapsink.open("run"), target)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    assert_same(_memory().trajectory(), snapsink.open("run"))


@pytest.mark.parametrize("dst", ["new.zarr", "new.h5"])
def test_a_failed_copy_into_a_group_of_a_new_store_removes_the_store(
    dst: str, tmp_path: Path
) -> None:
    """The group of a new HDF5 file lives in the file; a new Zarr store's root
    holds the group: neither is left behind, reading as a store."""
    _damaged_zarr(tmp_path / "src.zarr")
    with pytest.raises(snapsink.FormatError, match="chunk") as info:
        snapsink.copy(
            snapsink.open(tmp_path / "src.zarr"), tmp_path / dst, group="g", chunk_bytes=16000
        )
    note = "".join(info.value.__notes__)
    assert f"removed {str(tmp_path / dst)!r}" in note and "6 frames (steps 0..5) of 10" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr"]


def test_a_failed_copy_into_a_new_zarr_group_removes_the_groups_it_made(tmp_path: Path) -> None:
    """Into an existing store's group p (holding run p/q), group p/r/s: r and s
    go; p, p/q and the root stay as they were."""
    _damaged_zarr(tmp_path / "src.zarr")
    have = tmp_path / "have.zarr"
    snapsink.copy(_memory(), have, group="p/q")
    with pytest.raises(snapsink.FormatError, match="chunk") as info:
        snapsink.copy(snapsink.open(tmp_path / "src.zarr"), have, group="p/r/s", chunk_bytes=16000)
    assert f"removed {str(have / 'p' / 'r')!r}" in "".join(info.value.__notes__)
    assert sorted(p.name for p in (have / "p").iterdir()) == ["q", "zarr.json"]
    assert snapsink.groups(have) == ["p/q"]
    assert_same(_memory().trajectory(), snapsink.open(have, group="p/q"))


def test_a_failed_copy_keeps_a_group_another_copy_added_beside_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copy b makes new.zarr/g/h; copy a adds g/k meanwhile; b fails: only
    g/h goes (g and the root now hold a's run)."""
    _damaged_zarr(tmp_path / "src.zarr")
    src = snapsink.open(tmp_path / "src.zarr")
    chunks = src.iter_chunks
    dst = tmp_path / "new.zarr"

    def with_another_copy_meanwhile(frames: int) -> Any:
        for k, part in enumerate(chunks(frames)):
            if k == 1:
                snapsink.copy(_memory(), dst, group="g/k")
            yield part

    monkeypatch.setattr(src, "iter_chunks", with_another_copy_meanwhile)
    with pytest.raises(snapsink.FormatError) as info:
        snapsink.copy(src, dst, group="g/h", chunk_bytes=16000)
    assert f"removed {str(dst / 'g' / 'h')!r}" in "".join(info.value.__notes__)
    assert snapsink.groups(dst) == ["g/k"]
    assert_same(_memory().trajectory(), snapsink.open(dst, group="g/k"))


def test_a_failed_copy_into_a_group_of_an_existing_hdf5_file_says_it_stays(
    tmp_path: Path,
) -> None:
    """Copy removes nothing from a file it did not create: the partial group
    stays, and the note says it is not a complete copy; the file's other group
    is untouched."""
    _damaged_zarr(tmp_path / "src.zarr")
    have = tmp_path / "have.h5"
    snapsink.copy(_memory(), have, group="a")
    with pytest.raises(snapsink.FormatError, match="chunk") as info:
        snapsink.copy(snapsink.open(tmp_path / "src.zarr"), have, group="b", chunk_bytes=16000)
    note = "".join(info.value.__notes__)
    assert f"6 frames (steps 0..5) of 10 had been written to group 'b' of {str(have)!r}" in note
    assert "not a complete copy" in note
    assert_same(_memory().trajectory(), snapsink.open(have, group="a"))
