"""NpyDirectory and its reader, driven through the Store protocol directly."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _values import DTYPES, sample

import snapsink
from snapsink._errors import (
    ConfigError,
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreNotFoundError,
    StoreStateError,
)
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink._store import Resume
from snapsink.stores import npy as npy_module
from snapsink.stores._format import StepRanges
from snapsink.stores._npyformat import HEADER_SIZE, build_header, parse_header
from snapsink.stores.npy import NpyDirectory, NpySource, is_npy_store, open_npy


def frame(step: int, time: float | None = None, **fields: Any) -> Frame:
    return Frame(step, time, {k: np.asarray(v) for k, v in fields.items()})


def write_run(
    path: Path, schema: Schema, frames: list[Frame], *, times: bool, close: bool = True, **kw: Any
) -> NpyDirectory:
    store = NpyDirectory(path, **kw)
    assert store.open() is None
    store.prepare(schema, times=times)
    for fr in frames:
        store.append(Batch([fr]))
    if close:
        store.commit()
        store.close()
    return store


def check_files_after_close(path: Path, count: int) -> None:
    """Every growable file np.loads (memmapped) at a 4096-aligned offset with
    exactly the committed frames; no file holds bytes past its data."""
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["closed"] is True
    assert meta["count"] == count
    for f in path.glob("*.npy"):
        arr = np.load(f, mmap_mode="r", allow_pickle=False)
        assert isinstance(arr, np.memmap) or arr.size == 0
        with open(f, "rb") as fh:
            header = parse_header(fh.read(HEADER_SIZE), str(f))
        assert header.offset == HEADER_SIZE
        assert header.offset % 4096 == 0
        assert f.stat().st_size == HEADER_SIZE + arr.nbytes
        if f.name.endswith(".offsets.npy"):
            assert arr.shape[0] == count + 1
        elif f.stem in meta["rows"]:
            assert arr.shape[0] == meta["rows"][f.stem]
        else:
            assert arr.shape[0] == count


# -- round trips -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_bit_exact(tmp_path: Path, dtype: str) -> None:
    dt = np.dtype(dtype)
    schema = Schema({"a": Field(dt, (4, 3)), "s": Field(dt, ()), "r": Field(dt, (None, 2))})
    frames = [
        frame(
            10 + 3 * i,
            0.25 * i,
            a=sample(dt, (4, 3), i),
            s=sample(dt, (1,), 100 + i)[0],
            r=sample(dt, (i % 3, 2), 200 + i),
        )
        for i in range(7)
    ]
    write_run(tmp_path / "run", schema, frames, times=True)

    traj = open_npy(tmp_path / "run")
    assert len(traj) == 7
    assert traj.fields == dict(schema.items())
    np.testing.assert_array_equal(traj.steps, [10 + 3 * i for i in range(7)])
    assert traj.times is not None
    np.testing.assert_array_equal(traj.times, [0.25 * i for i in range(7)])
    a = traj["a"][:]
    assert a.dtype == dt
    assert a.shape == (7, 4, 3)
    for i, fr in enumerate(frames):
        np.testing.assert_array_equal(a[i], fr.fields["a"])
        np.testing.assert_array_equal(traj["s"][i], fr.fields["s"])
        rows = traj["r"][i]
        assert rows.dtype == dt
        assert rows.shape == (i % 3, 2)
        np.testing.assert_array_equal(rows, fr.fields["r"])
    # The files themselves, memory mapped, hold the same bits.
    check_files_after_close(tmp_path / "run", 7)
    mm = np.load(tmp_path / "run" / "a.npy", mmap_mode="r")
    assert mm.dtype == dt
    np.testing.assert_array_equal(mm, np.stack([fr.fields["a"] for fr in frames]))
    assert mm.tobytes() == np.stack([fr.fields["a"] for fr in frames]).tobytes()


def test_ragged_with_empty_frames_and_no_times(tmp_path: Path) -> None:
    schema = Schema({"pos": Field("float32", (None, 3)), "n": Field("int64", ())})
    counts = [0, 5, 0, 0, 2, 7, 0]
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((c, 3)).astype(np.float32) for c in counts]
    frames = [frame(i, pos=r, n=len(r)) for i, r in enumerate(rows)]
    write_run(tmp_path / "r", schema, frames, times=False)

    traj = open_npy(tmp_path / "r")
    assert traj.times is None
    assert not (tmp_path / "r" / "times.npy").exists()
    got = traj["pos"][:]
    assert [g.shape for g in got] == [(c, 3) for c in counts]
    for g, r in zip(got, rows, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, r)
    np.testing.assert_array_equal(traj["pos"][2], np.empty((0, 3), np.float32))
    np.testing.assert_array_equal(traj["n"][:], counts)
    assert traj["pos"][3:3] == []
    offsets = np.load(tmp_path / "r" / "pos.offsets.npy")
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(counts)]))
    np.testing.assert_array_equal(np.load(tmp_path / "r" / "pos.npy"), np.concatenate(rows))
    check_files_after_close(tmp_path / "r", len(counts))


def test_static_and_attrs(tmp_path: Path) -> None:
    z = np.array([1, 6, 8], np.uint8)
    grid = np.linspace(0, 1, 12).reshape(3, 4)
    attrs = {"code": "md", "dt": 0.5, "nested": {"k": [1, 2]}}
    schema = Schema({"e": Field("float64", ())})
    write_run(
        tmp_path / "s", schema, [frame(0, e=1.5)], times=False,
        static={"z": z, "grid": grid}, attrs=attrs,
    )  # fmt: skip
    traj = open_npy(tmp_path / "s")
    assert dict(traj.attrs) == attrs
    assert set(traj.static) == {"z", "grid"}
    np.testing.assert_array_equal(traj.static["z"], z)
    assert traj.static["z"].dtype == np.uint8
    np.testing.assert_array_equal(traj.static["grid"], grid)
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "static" / "grid.npy"), grid)
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["format"] == "snapsink-npy"
    assert meta["version"] == 1
    assert meta["versions"]["numpy"] == np.__version__
    assert meta["created"].endswith("+00:00")
    assert meta["updated"] >= meta["created"]


def test_growth_over_many_doublings(tmp_path: Path) -> None:
    # 1 KiB frames: the first capacity is 1024 frames, so 5000 frames double thrice.
    schema = Schema({"x": Field("float64", (128,)), "r": Field("int32", (None,))})
    n = 5000
    store = NpyDirectory(tmp_path / "g", commit_every=700, commit_seconds=None)
    store.open()
    store.prepare(schema, times=False)
    sizes = set()
    rng = np.random.default_rng(1)
    expect_r = []
    for start in range(0, n, 50):
        frames = []
        for i in range(start, start + 50):
            r = rng.integers(0, 1000, i % 4, dtype=np.int32)
            expect_r.append(r)
            frames.append(frame(i, x=np.full(128, i, np.float64), r=r))
        store.append(Batch(frames))
        sizes.add((tmp_path / "g" / "x.npy").stat().st_size)
    assert len(sizes) >= 4  # several capacity doublings, each a file size
    store.close()
    check_files_after_close(tmp_path / "g", n)
    x = np.load(tmp_path / "g" / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(x[:, 0], np.arange(n, dtype=np.float64))
    np.testing.assert_array_equal(x[:, 127], np.arange(n, dtype=np.float64))
    traj = open_npy(tmp_path / "g")
    got = traj["r"][4990:5000]
    for g, e in zip(got, expect_r[4990:], strict=True):
        np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(traj["x"][[3, 4999]][:, 5], [3.0, 4999.0])


# -- modes ------------------------------------------------------------------------------
SCHEMA = Schema({"x": Field("float32", (2,)), "r": Field("int16", (None,))})


def fr(step: int, time: float | None = None) -> Frame:
    x = np.array([step, -step], np.float32)
    return frame(step, time, x=x, r=np.arange(step % 3, dtype=np.int16))


def test_mode_x_refuses_an_existing_store_or_foreign_directory(tmp_path: Path) -> None:
    write_run(tmp_path / "s", SCHEMA, [fr(0)], times=False)
    with pytest.raises(StoreExistsError, match="mode='w'") as info:
        NpyDirectory(tmp_path / "s").open()
    assert isinstance(info.value, FileExistsError)
    assert len(open_npy(tmp_path / "s")) == 1  # untouched

    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "empty", SCHEMA, [fr(0), fr(1)], times=False)  # an empty dir is fine
    assert len(open_npy(tmp_path / "empty")) == 2

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="not a snapsink store"):
        NpyDirectory(tmp_path / "user").open()
    with pytest.raises(StoreExistsError, match="not a snapsink store"):
        NpyDirectory(tmp_path / "user", "w").open()
    with pytest.raises(FormatError, match="not a snapsink-npy store"):
        NpyDirectory(tmp_path / "user", "a").open()
    assert os.listdir(tmp_path / "user") == ["notes.txt"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreExistsError, match="not a directory"):
        NpyDirectory(tmp_path / "file", "w").open()


def test_mode_w_replaces_only_the_store(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.npy").write_bytes(b"user data")
    write_run(tmp_path / "s", SCHEMA, [fr(i) for i in range(5)], times=False,
              static={"z": np.arange(4)})  # fmt: skip
    schema2 = Schema({"y": Field("int8", ())})
    write_run(tmp_path / "s", schema2, [frame(7, 1.0, y=np.int8(-3))], times=True, mode="w")
    traj = open_npy(tmp_path / "s")
    assert len(traj) == 1
    assert traj.fields == {"y": Field("int8", ())}
    np.testing.assert_array_equal(traj["y"][:], [-3])
    assert dict(traj.static) == {}
    assert sorted(os.listdir(tmp_path / "s")) == [
        ".snapsink.lock", "metadata.json", "steps.npy", "times.npy", "y.npy",
    ]  # fmt: skip
    assert (tmp_path / "other" / "x.npy").read_bytes() == b"user data"

    # A user file inside the store: refuse, delete nothing.
    (tmp_path / "s" / "README").write_text("keep me")
    with pytest.raises(StoreExistsError, match="README"):
        NpyDirectory(tmp_path / "s", "w").open()
    assert (tmp_path / "s" / "README").read_text() == "keep me"
    assert len(open_npy(tmp_path / "s")) == 1


def test_mode_a_resumes_after_committed_frames(tmp_path: Path) -> None:
    write_run(tmp_path / "s", SCHEMA, [fr(i, 0.5 * i) for i in range(4)], times=True,
              attrs={"a": 1}, static={"z": np.arange(2)})  # fmt: skip
    store = NpyDirectory(tmp_path / "s", "a", attrs={"b": 2}, static={"z": np.arange(2)})
    resume = store.open()
    assert resume == Resume(SCHEMA, count=4, last_step=3, last_time=1.5, times=True)
    store.prepare(SCHEMA, times=True)
    store.append(Batch([fr(10, 2.0), fr(11, 2.5)]))
    store.close()  # close commits what was appended
    traj = open_npy(tmp_path / "s")
    np.testing.assert_array_equal(traj.steps, [0, 1, 2, 3, 10, 11])
    np.testing.assert_array_equal(traj.times, [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_array_equal(traj["x"][:][:, 0], [0, 1, 2, 3, 10, 11])
    assert [len(r) for r in traj["r"][:]] == [0, 1, 2, 0, 1, 2]
    assert dict(traj.attrs) == {"a": 1, "b": 2}
    check_files_after_close(tmp_path / "s", 6)

    bad = NpyDirectory(tmp_path / "s", "a")
    bad.open()
    with pytest.raises(SchemaError, match="holds frames of schema"):
        bad.prepare(Schema({"x": Field("float64", (2,)), "r": Field("int16", (None,))}), times=True)
    with pytest.raises(SchemaError, match="times"):
        bad.prepare(SCHEMA, times=False)
    bad.close()
    assert len(open_npy(tmp_path / "s")) == 6

    with pytest.raises(ConfigError, match="static 'z'"):
        NpyDirectory(tmp_path / "s", "a", static={"z": np.arange(3)}).open()


def test_mode_a_on_missing_directory_creates(tmp_path: Path) -> None:
    store = NpyDirectory(tmp_path / "deep" / "new", "a")
    assert store.open() is None
    store.prepare(SCHEMA, times=False)
    store.append(Batch([fr(5)]))
    store.close()
    traj = open_npy(tmp_path / "deep" / "new")
    np.testing.assert_array_equal(traj.steps, [5])
    assert traj.times is None


# -- crash safety ---------------------------------------------------------------------------
def abandon(store: NpyDirectory) -> None:
    """Drop a writer without close(), as a crash would: its finalizer closes the
    descriptors (and so releases the single-writer lock), nothing is committed.
    (The caller still holds a reference, so run the finalizer by hand.)"""
    store._finalizer()
    gc.collect()


def test_commits_run_in_the_background_while_appends_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due commit's fsync runs beside the appends (the writer keeps taking
    frames while the disk syncs); it names only the rows of its snapshot, and
    commit() waits for it and commits the rest."""
    from snapsink.stores._npyfile import GrowableNpyFile

    release = threading.Event()
    started = threading.Event()
    real = GrowableNpyFile.sync_rows

    def slow_sync(self: GrowableNpyFile, rows: int) -> None:
        started.set()
        assert release.wait(10)
        real(self, rows)

    monkeypatch.setattr(GrowableNpyFile, "sync_rows", slow_sync)
    store = NpyDirectory(tmp_path / "s", commit_every=3, commit_seconds=None)
    store.open()
    store.prepare(SCHEMA, times=False)
    reader = open_npy(tmp_path / "s")
    for i in range(3):
        store.append(Batch([fr(i)]))
    assert started.wait(10)  # the commit of frames 0-2 is in its fsync...
    for i in range(3, 7):
        store.append(Batch([fr(i)]))  # ...and appends go on (they would hang here)
    assert len(reader.refresh()) == 0  # nothing visible before it is durable
    release.set()
    store._collect(wait=True)
    assert len(reader.refresh()) == 3  # exactly the snapshot's frames
    store.commit()  # the rest, in this thread
    assert reader.refresh().steps.tolist() == list(range(7))
    np.testing.assert_array_equal(reader["x"][:][:, 0], np.arange(7))
    store.close()


def test_a_background_commit_checking_the_files_while_they_grow_sees_no_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit thread checks each data file's size against its capacity while
    the writer thread appends and grows it: a growth between the two reads is
    no truncation (it failed the store, with a thread writer on tmpfs)."""
    from snapsink.stores import _npyfile

    in_check = threading.Event()
    grown = threading.Event()
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if fd == data_fd and threading.current_thread().name.startswith("snapsink-npy-commit"):
            in_check.set()  # the size is taken: let the writer grow the file now
            assert grown.wait(10)
        return st

    schema = Schema({"u": Field("float32", (256, 256))})  # 256 KiB rows: 16 fit at first
    store = NpyDirectory(tmp_path / "s", commit_every=3, commit_seconds=None)
    store.open()
    store.prepare(schema, times=False)
    rows = [np.full((256, 256), i, np.float32) for i in range(40)]
    for i in range(2):
        store.append(Batch([frame(i, u=rows[i])]))
    data_fd = store._files["u"].fd
    monkeypatch.setattr(_npyfile.os, "fstat", fstat)
    store.append(Batch([frame(2, u=rows[2])]))  # the commit of frames 0-2 starts
    assert in_check.wait(10)
    for i in range(3, 40):  # past the first capacity: the file grows (twice)
        store.append(Batch([frame(i, u=rows[i])]))
    assert store._files["u"].capacity > 16
    grown.set()
    store._collect(wait=True)  # the old code raised FormatError("truncated ...") here
    monkeypatch.undo()
    store.commit()
    store.close()
    got = snapsink.open(tmp_path / "s")
    assert got.steps.tolist() == list(range(40))
    np.testing.assert_array_equal(got["u"][:], np.stack(rows))


def test_a_failed_background_commit_fails_the_store_at_its_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapsink.stores._npyfile import GrowableNpyFile

    store = NpyDirectory(tmp_path / "s", commit_every=2, commit_seconds=None)
    store.open()
    store.prepare(SCHEMA, times=False)
    for i in range(2):
        store.append(Batch([fr(i)]))
    store.commit()

    def failing(self: GrowableNpyFile, rows: int) -> None:
        raise OSError(errno.EIO, "disk gone")

    monkeypatch.setattr(GrowableNpyFile, "sync_rows", failing)
    store.append(Batch([fr(2)]))
    store.append(Batch([fr(3)]))  # starts the commit, which fails in the background
    with pytest.raises(OSError, match="disk gone"):
        store._collect(wait=True)  # (the next append or commit raises it the same way)
    monkeypatch.undo()
    with pytest.raises(StoreStateError):  # after a failed fsync: never commit again
        store.commit()
    store.close()
    assert snapsink.open(tmp_path / "s").steps.tolist() == [0, 1]  # the last commit stands


def test_reader_sees_only_committed_frames_and_refreshes(tmp_path: Path) -> None:
    store = NpyDirectory(tmp_path / "s", commit_every=3, commit_seconds=None)
    store.open()
    store.prepare(SCHEMA, times=False)
    reader = open_npy(tmp_path / "s")
    assert len(reader) == 0
    assert reader.fields == dict(SCHEMA.items())
    for i in range(4):
        store.append(Batch([fr(i)]))
    assert len(reader) == 0
    store._collect(wait=True)  # the commit at 3 frames runs in the background
    assert len(reader.refresh()) == 3  # commit at 3 frames; the 4th is invisible
    np.testing.assert_array_equal(reader.steps, [0, 1, 2])
    np.testing.assert_array_equal(reader["x"][:][:, 0], [0, 1, 2])
    store.commit()
    assert len(reader) == 3
    reader.refresh()
    np.testing.assert_array_equal(reader.steps, [0, 1, 2, 3])
    np.testing.assert_array_equal(reader["r"][2], [0, 1])
    store.close()


def test_abandoned_writer_opens_with_committed_frames_and_a_discards_the_tail(
    tmp_path: Path,
) -> None:
    store = NpyDirectory(tmp_path / "s", commit_every=1000, commit_seconds=None)
    store.open()
    store.prepare(SCHEMA, times=True)
    store.append(Batch([fr(i, float(i)) for i in range(5)], dropped_steps=[100]))
    store.commit()
    # Never committed:
    store.append(Batch([fr(i, float(i)) for i in range(5, 9)], dropped_steps=[200]))
    abandon(store)

    traj = open_npy(tmp_path / "s")
    assert len(traj) == 5
    np.testing.assert_array_equal(traj.steps, np.arange(5))
    np.testing.assert_array_equal(traj.dropped_steps, [100])
    assert json.loads((tmp_path / "s" / "metadata.json").read_text())["closed"] is False

    again = NpyDirectory(tmp_path / "s", "a")
    assert again.open() == Resume(SCHEMA, 5, 4, 4.0, True)
    again.prepare(SCHEMA, times=True)
    new = Frame(50, 9.0, {"x": np.array([7, 7], np.float32), "r": np.full(4, 9, np.int16)})
    again.append(Batch([new]))
    again.commit()
    again.close()
    traj = open_npy(tmp_path / "s")
    np.testing.assert_array_equal(traj.steps, [0, 1, 2, 3, 4, 50])
    np.testing.assert_array_equal(traj["x"][5], [7, 7])
    np.testing.assert_array_equal(traj["r"][5], np.full(4, 9, np.int16))
    np.testing.assert_array_equal(traj["r"][4], [0])
    np.testing.assert_array_equal(traj.dropped_steps, [100])  # the tail's drop was never committed
    check_files_after_close(tmp_path / "s", 6)


def test_commit_seconds_commits_at_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(npy_module, "_clock", lambda: now[0])
    store = NpyDirectory(tmp_path / "s", commit_every=1000, commit_seconds=2.0)
    store.open()
    store.prepare(SCHEMA, times=False)
    reader = NpySource(tmp_path / "s")
    store.append(Batch([fr(0)]))
    now[0] = 1.0
    store.append(Batch([fr(1)]))
    reader.refresh()
    assert reader.length == 0
    now[0] = 2.5
    store.append(Batch([fr(2)]))
    store._collect(wait=True)  # the due commit runs in the background
    reader.refresh()
    assert reader.length == 3
    np.testing.assert_array_equal(reader.steps(), [0, 1, 2])
    store.close()


def test_commit_due_in_counts_from_the_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sink's writer asks when no frame comes: due ``commit_seconds``
    after the last commit started, while frames wait for one; frames a
    background commit covers do not."""
    now = [0.0]
    monkeypatch.setattr(npy_module, "_clock", lambda: now[0])
    store = NpyDirectory(tmp_path / "s", commit_every=1000, commit_seconds=2.0)
    store.open()
    store.prepare(SCHEMA, times=False)
    assert store.commit_due_in() is None
    store.append(Batch([fr(0)]))
    assert store.commit_due_in() == 2.0
    now[0] = 2.5
    assert store.commit_due_in() == -0.5  # due: the writer commits
    store.append(Batch([fr(1)]))  # the append commits (in the background)
    assert store.commit_due_in() is None  # the commit in flight covers both frames
    store.append(Batch([fr(2)]))
    assert store.commit_due_in() == 2.0  # counted from that commit's start
    now[0] = 5.0
    store.commit()
    assert store.commit_due_in() is None
    reader = NpySource(tmp_path / "s")
    np.testing.assert_array_equal(reader.steps(), [0, 1, 2])
    store.close()
    assert store.commit_due_in() is None
    assert NpyDirectory(tmp_path / "t", commit_seconds=None).commit_due_in() is None


def test_dropped_steps_round_trip_compactly(tmp_path: Path) -> None:
    store = NpyDirectory(tmp_path / "s", commit_every=1000)
    store.open()
    store.prepare(SCHEMA, times=False)
    store.append(Batch([fr(0)], dropped_steps=list(range(1, 1_000_001))))
    store.append(Batch([fr(1_000_001)], dropped_steps=[1_000_003, 1_000_005, 1_000_004]))
    store.append(Batch([], dropped_steps=[2_000_000]))
    store.close()
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["dropped"] == [[1, 1_000_001], [1_000_003, 1_000_006], [2_000_000, 2_000_001]]
    dropped = open_npy(tmp_path / "s").dropped_steps
    assert dropped.dtype == np.int64
    assert len(dropped) == 1_000_004
    np.testing.assert_array_equal(dropped[:3], [1, 2, 3])
    np.testing.assert_array_equal(
        dropped[-5:], [1_000_000, 1_000_003, 1_000_004, 1_000_005, 2_000_000]
    )


def test_step_ranges_merge_out_of_order() -> None:
    r = StepRanges()
    for s in [5, 7, 6, 1, 3, 2, 3, 10, 9, 0]:
        r.add(s)
    assert r.to_json() == [[0, 4], [5, 8], [9, 11]]
    assert r.count == 9
    np.testing.assert_array_equal(r.to_array(), [0, 1, 2, 3, 5, 6, 7, 9, 10])


# -- hostile or corrupt stores ------------------------------------------------------------------
def good_store(path: Path) -> dict[str, Any]:
    write_run(path, SCHEMA, [fr(0), fr(1)], times=False)
    meta: dict[str, Any] = json.loads((path / "metadata.json").read_text())
    return meta


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.update(count="2"), "'count'"),
        (lambda m: m.update(count=-1), "'count'"),
        (lambda m: m.update(times=1), "'times'"),
        (lambda m: m.update(version=True), "version"),
        (lambda m: m.update(version=2), "newer snapsink"),
        (lambda m: m.update(format="zarr"), "format"),
        (lambda m: m.pop("rows"), "missing keys"),
        (lambda m: m.update(rows={"r": 1.5}), "'rows'"),
        (lambda m: m.update(dropped=[[3, 1]]), "'dropped'"),
        (lambda m: m.update(dropped=[[1, 3], [2, 5]]), "'dropped'"),
        (lambda m: m.update(attrs=[]), "'attrs'"),
        (lambda m: m.update(static=["../../etc/passwd"]), "'static'"),
        (lambda m: m.update(schema={"../x": {"dtype": "<f4", "shape": [2]}}), "'schema'"),
        (lambda m: m.update(schema={"x": {"dtype": "|O", "shape": [2]}}), "'schema'"),
        (lambda m: m.update(schema=None), "'count' is 2"),
        (lambda m: m.update(closed="yes"), "'closed'"),
        (lambda m: m.update(versions={"numpy": 2}), "'versions'"),
    ],
)
def test_malformed_metadata_raises_format_error(tmp_path: Path, mutate: Any, match: str) -> None:
    meta = good_store(tmp_path / "s")
    mutate(meta)
    (tmp_path / "s" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=match):
        open_npy(tmp_path / "s")


@pytest.mark.parametrize("text", ["", "{", '{"format": "snapsink-npy"', "[1, 2]", "NaN", "\xff"])
def test_truncated_or_garbage_metadata_raises_format_error(tmp_path: Path, text: str) -> None:
    good_store(tmp_path / "s")
    (tmp_path / "s" / "metadata.json").write_bytes(text.encode("latin1"))
    assert is_npy_store(tmp_path / "s")
    with pytest.raises(FormatError):
        open_npy(tmp_path / "s")
    with pytest.raises(FormatError):
        NpyDirectory(tmp_path / "s", "a").open()
    with pytest.raises(FormatError, match="remove it by hand"):
        NpyDirectory(tmp_path / "s", "w").open()
    assert (tmp_path / "s" / "x.npy").exists()


def test_truncated_data_file_raises_format_error(tmp_path: Path) -> None:
    good_store(tmp_path / "s")
    with open(tmp_path / "s" / "x.npy", "r+b") as fh:
        fh.truncate(HEADER_SIZE + 8)  # one frame of two float32
    # Checked against the file's size at open, before anything is read or allocated.
    with pytest.raises(FormatError, match=r"x\.npy: metadata\.json names 2 rows.*holds 4104 bytes"):
        open_npy(tmp_path / "s")
    with pytest.raises(FormatError, match="expected at least 2 committed rows"):
        NpyDirectory(tmp_path / "s", "a").open()


def test_missing_store_and_detection(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        open_npy(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError) as info:
        open_npy(tmp_path / "empty")
    assert isinstance(info.value, FileNotFoundError)
    assert not is_npy_store(tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "metadata.json").write_text('{"format": "other"}')
    assert not is_npy_store(tmp_path / "foreign")
    good_store(tmp_path / "s")
    assert is_npy_store(tmp_path / "s")


# -- arguments and call order --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"commit_every": 0}, "commit_every"),
        ({"commit_every": True}, "commit_every"),
        ({"commit_every": 2.0}, "commit_every"),
        ({"commit_seconds": 0}, "commit_seconds"),
        ({"commit_seconds": float("nan")}, "commit_seconds"),
        ({"commit_seconds": float("inf")}, "commit_seconds"),
        ({"commit_seconds": "1"}, "commit_seconds"),
        ({"mode": "r"}, "mode"),
        ({"attrs": {"x": float("nan")}}, "attrs"),
        ({"static": {"../x": np.zeros(2)}}, "static"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        NpyDirectory(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("path", [123, b"bytes", "", None])
def test_bad_path_raises_config_error(path: Any) -> None:
    with pytest.raises(ConfigError, match="path"):
        NpyDirectory(path)


def test_call_order_is_checked_and_close_is_idempotent(tmp_path: Path) -> None:
    store = NpyDirectory(tmp_path / "s")
    with pytest.raises(snapsink.StoreStateError, match="open"):
        store.append(Batch([fr(0)]))
    store.open()
    with pytest.raises(snapsink.StoreStateError, match=r"open\(\) was already called"):
        store.open()
    with pytest.raises(snapsink.StoreStateError, match="prepare"):
        store.append(Batch([fr(0)]))
    store.prepare(SCHEMA, times=False)
    store.append(Batch([fr(3)]))
    with pytest.raises(SchemaError, match="strictly increase"):
        store.append(Batch([fr(3)]))
    with pytest.raises(SchemaError, match="shape"):
        store.append(Batch([frame(4, x=np.zeros(3, np.float32), r=np.zeros(1, np.int16))]))
    store.append(Batch([fr(4)]))  # a refused batch wrote nothing
    store.close()
    store.close()
    with pytest.raises(snapsink.StoreStateError, match="close"):
        store.append(Batch([fr(5)]))
    np.testing.assert_array_equal(open_npy(tmp_path / "s").steps, [3, 4])


def test_close_commits_and_finalizes_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sink closes a NpyDirectory without committing first (commits_on_close):
    # close alone makes every appended frame durable, with one metadata write.
    assert NpyDirectory.commits_on_close is True
    store = NpyDirectory(tmp_path / "s", commit_every=1000, commit_seconds=None)
    store.open()
    store.prepare(SCHEMA, times=True)
    store.append(Batch([fr(i, 0.5 * i) for i in range(5)], dropped_steps=[5]))
    store.commit()
    store.append(Batch([fr(i, 0.5 * i) for i in range(6, 13)]))
    written: list[bytes] = []
    real = npy_module.replace_atomically

    def counting(directory: str, tmp: str, name: str, data: bytes) -> None:
        written.append(data)
        real(directory, tmp, name, data)

    monkeypatch.setattr(npy_module, "replace_atomically", counting)
    store.close()
    assert len(written) == 1 and json.loads(written[0])["closed"] is True
    check_files_after_close(tmp_path / "s", 12)
    traj = open_npy(tmp_path / "s")
    steps = [*range(5), *range(6, 13)]
    np.testing.assert_array_equal(traj.steps, steps)
    np.testing.assert_array_equal(traj.times, [0.5 * i for i in steps])
    np.testing.assert_array_equal(traj["x"][:][:, 1], [-i for i in steps])
    assert [len(traj["r"][k]) for k in range(12)] == [i % 3 for i in steps]
    assert traj.dropped_steps.tolist() == [5]


def test_header_is_4096_bytes_and_numpy_readable() -> None:
    for dt, shape in [(np.dtype("<c16"), (0, 3, 4)), (np.dtype(bool), (10**12,))]:
        raw = build_header(dt, shape)
        assert len(raw) == HEADER_SIZE
        assert raw.endswith(b"\n")
        header = parse_header(raw, "h")
        assert (header.dtype, header.shape, header.offset) == (dt, shape, HEADER_SIZE)


def test_to_xarray_over_npy(tmp_path: Path) -> None:
    write_run(tmp_path / "s", SCHEMA, [fr(i, 0.1 * i) for i in range(3)], times=True)
    ds = open_npy(tmp_path / "s").to_xarray()
    np.testing.assert_array_equal(ds["x"].values[:, 1], [0, -1, -2])
    np.testing.assert_array_equal(ds["step"].values, [0, 1, 2])


def test_sigkilled_writer_leaves_committed_frames(tmp_path: Path) -> None:
    script = f"""
import os, signal, numpy as np
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink.stores.npy import NpyDirectory
from _values import DTYPES, sample
s = NpyDirectory({str(tmp_path / "k")!r}, commit_every=1000, commit_seconds=None)
s.open()
s.prepare(Schema({{"x": Field("float64", (3,))}}), times=False)
s.append(Batch([Frame(i, None, {{"x": np.full(3, i, np.float64)}}) for i in range(5)]))
s.commit()
s.append(Batch([Frame(i, None, {{"x": np.full(3, i, np.float64)}}) for i in range(5, 9)]))
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    traj = open_npy(tmp_path / "k")
    np.testing.assert_array_equal(traj.steps, np.arange(5))
    np.testing.assert_array_equal(traj["x"][:][:, 2], np.arange(5, dtype=np.float64))


def test_trajectory_reports_clean_close_and_no_groups(tmp_path: Path) -> None:
    from snapsink import open as open_store

    store = NpyDirectory(tmp_path / "run")
    store.open()
    store.prepare(Schema({"e": "f8"}), times=False)
    store.append(Batch([Frame(0, None, {"e": np.float64(1.0)})]))
    store.commit()
    assert open_store(tmp_path / "run").closed is False
    store.close()
    traj = open_store(tmp_path / "run")
    assert traj.closed is True and traj.groups == []
