"""The writer checks that it still writes the store it opened (issue 11, item 2)
and a store has one writer (item 3).

Item 2: someone deletes and recreates the store's directory, truncates a data
file or replaces it while a writer runs. The next commit must fail (the producer
gets WriterError) and no commit may name frames that are not on disk.

Item 3: a second writer, in this process or another, in any mode, is refused
with StoreLockedError naming the store and the holder's pid; the lock dies with
its holder, so a resume after a crash is never blocked; readers take no lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import snapsink
from snapsink import FormatError, StoreExistsError, StoreLockedError, SyncSink, WriterError
from snapsink.stores._lock import LOCK_NAME
from snapsink.stores._npyformat import HEADER_SIZE

pytestmark = pytest.mark.timeout(120)

WRITERS = ["process", "thread"]


def frame(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full(4, i + 1, np.float64), "r": np.full((i % 3, 2), i + 1, np.int32)}


SCHEMA = {"x": snapsink.Field("float64", (4,)), "r": snapsink.Field("int32", (None, 2))}


def committed_count(store: Path) -> int:
    return int(json.loads((store / "metadata.json").read_text())["count"])


def open_sink(store: Path, writer: str, mode: str = "x") -> SyncSink:
    return SyncSink(
        snapsink.NpyDirectory(store, mode, commit_every=1000, commit_seconds=None),
        schema=SCHEMA,
        writer=writer,
    )


def write_range(sink: SyncSink, start: int, stop: int) -> None:
    for i in range(start, stop):
        sink.write(frame(i), step=i, time=float(i))


def assert_frames(store: Path, n: int) -> None:
    traj = snapsink.open(store)
    assert len(traj) == n
    assert traj.steps.tolist() == list(range(n))
    xs = traj["x"][:]
    for i in range(n):
        np.testing.assert_array_equal(xs[i], np.full(4, i + 1, np.float64))
        np.testing.assert_array_equal(traj["r"][i], frame(i)["r"])


# -- item 2: the writer still writes what it opened -------------------------------------
def _tamper_delete_and_recreate(store: Path) -> None:
    shutil.rmtree(store)
    store.mkdir()


def _tamper_truncate(store: Path) -> None:
    with open(store / "x.npy", "r+b") as fh:
        fh.truncate(HEADER_SIZE)


def _tamper_replace(store: Path) -> None:
    # An identical copy: same bytes, another file. The writer's later frames
    # would go to the old inode, and the copy would never hold them.
    shutil.copyfile(store / "x.npy", store / "x.npy.new")
    os.replace(store / "x.npy.new", store / "x.npy")


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize(
    "tamper", [_tamper_delete_and_recreate, _tamper_truncate, _tamper_replace],
    ids=["dir-deleted-recreated", "file-truncated", "file-replaced"],
)
def test_commit_refuses_a_store_changed_under_the_writer(
    tmp_path: Path, writer: str, tamper: object
) -> None:
    store = tmp_path / "s"
    sink = open_sink(store, writer)
    write_range(sink, 0, 10)
    sink.flush()
    assert committed_count(store) == 10
    tamper(store)  # type: ignore[operator]
    write_range(sink, 10, 20)
    with pytest.raises(WriterError) as info:
        sink.flush()
    cause = info.value.__cause__
    assert isinstance(cause, FormatError), repr(cause)
    assert str(store) in str(cause)
    assert any(w in str(cause) for w in ("deleted", "replaced", "truncated")), str(cause)
    with pytest.raises(WriterError):
        sink.close()
    # No commit names the frames 10..19, wherever the path points now.
    if tamper is _tamper_delete_and_recreate:
        assert os.listdir(store) == []  # nothing was committed into the new directory
        with pytest.raises(FormatError, match="not a snapsink store"):
            snapsink.open(store)
    else:
        assert committed_count(store) == 10
        meta = json.loads((store / "metadata.json").read_text())
        assert meta["closed"] is False


@pytest.mark.parametrize("writer", WRITERS)
def test_untouched_store_commits_and_closes(tmp_path: Path, writer: str) -> None:
    """The checks pass on a store nobody touched (many commits, growth, close)."""
    store = tmp_path / "s"
    with open_sink(store, writer) as sink:
        for i in range(40):
            sink.write(frame(i), step=i, time=float(i))
            if i % 7 == 0:
                sink.flush()
    assert_frames(store, 40)


def test_truncation_then_growth_is_still_caught(tmp_path: Path) -> None:
    """Appends that refill a truncated file up to its old size must not hide the cut
    (the file is checked against its capacity, and before it grows)."""
    from snapsink._schema import Batch, Frame, Schema

    store = snapsink.NpyDirectory(tmp_path / "s", commit_every=10**6, commit_seconds=None)
    store.open()
    store.prepare(Schema({"x": snapsink.Field("float64", (1024,))}), times=False)

    def batch(a: int, b: int) -> Batch:
        return Batch([Frame(i, None, {"x": np.full(1024, i, np.float64)}) for i in range(a, b)])

    store.append(batch(0, 10))
    store.commit()
    with open(tmp_path / "s" / "x.npy", "r+b") as fh:
        fh.truncate(HEADER_SIZE)
    with pytest.raises(FormatError, match="truncated"):
        store.append(batch(10, 400))  # grows past the first capacity (128 frames)
    with pytest.raises(FormatError, match="truncated"):
        store.close()  # nor does close commit onto it
    assert committed_count(tmp_path / "s") == 10


# -- item 3: one writer per store ---------------------------------------------------
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("mode", ["x", "w", "a"])
def test_second_writer_in_this_process_is_refused(tmp_path: Path, writer: str, mode: str) -> None:
    store = tmp_path / "s"
    with open_sink(store, writer) as first:
        write_range(first, 0, 5)
        first.flush()
        with pytest.raises(StoreLockedError) as info:
            open_sink(store, writer, mode)
        err = info.value
        assert isinstance(err, StoreExistsError)
        assert str(store) in str(err)
        assert isinstance(err.pid, int) and f"pid {err.pid}" in str(err)
        if writer == "thread":
            assert err.pid == os.getpid()
        else:
            assert err.pid != os.getpid()  # the first sink's writer process
        # Readers take no lock: the flushed frames read back while the writer runs.
        assert_frames(store, 5)
        write_range(first, 5, 12)
    # The refused writer touched nothing, whatever its mode ("w" deletes nothing).
    assert_frames(store, 12)
    # Released at close: the next writer resumes.
    with open_sink(store, writer, "a") as again:
        write_range(again, 12, 15)
    assert_frames(store, 15)


def test_lock_is_per_store_object_not_per_process(tmp_path: Path) -> None:
    """Two NpyDirectory objects in one thread: flock excludes open file
    descriptions, so the second is refused even in the holder's own process."""
    a = snapsink.NpyDirectory(tmp_path / "s")
    a.open()
    b = snapsink.NpyDirectory(tmp_path / "s", "a")
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} \\(this process\\)"):
        b.open()
    a.close()
    assert b.open() is None  # the lock is free once a closed; nothing stored yet
    b.close()
    assert snapsink.open(tmp_path / "s").steps.tolist() == []


HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import snapsink
    store = snapsink.NpyDirectory(sys.argv[1], sys.argv[2], commit_every=1000,
                                  commit_seconds=None)
    sink = snapsink.SyncSink(store, schema={"x": snapsink.Field("float64", (4,)),
                                            "r": snapsink.Field("int32", (None, 2))},
                             writer="thread")
    start = int(sys.argv[3])
    for i in range(start, start + 5):
        sink.write({"x": np.full(4, i + 1, np.float64),
                    "r": np.full((i % 3, 2), i + 1, np.int32)}, step=i, time=float(i))
    sink.flush()
    print("ready", flush=True)
    sys.stdin.readline()  # hold the store until told (or killed)
    sink.close()
    """
)


def test_writer_in_another_process_is_refused_and_its_death_frees_the_store(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store), "x", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ready"
            for mode in ("x", "w", "a"):
                with pytest.raises(StoreLockedError) as info:
                    open_sink(store, "process", mode)
                assert info.value.pid == holder.pid
                assert f"pid {holder.pid}" in str(info.value)
            assert_frames(store, 5)  # a reader takes no lock
            holder.send_signal(signal.SIGKILL)  # dies holding the lock, store unclosed
            holder.wait(30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(30)
    assert (store / LOCK_NAME).exists()  # a stale lock file ...
    with open_sink(store, "process", "a") as sink:  # ... never blocks the resume
        write_range(sink, 5, 9)
    assert_frames(store, 9)


def test_lock_file_is_invisible_to_readers_info_and_mode_w(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_sink(store, "thread") as sink:
        write_range(sink, 0, 3)
    assert (store / LOCK_NAME).is_file()
    assert_frames(store, 3)
    got = subprocess.run(
        [sys.executable, "-m", "snapsink", "info", str(store)],
        capture_output=True, text=True, timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert "3" in got.stdout
    with open_sink(store, "thread", "w") as sink:  # the lock file is the store's own
        write_range(sink, 0, 2)
    assert_frames(store, 2)
    assert sorted(os.listdir(store)) == sorted(
        [LOCK_NAME, "metadata.json", "steps.npy", "times.npy", "x.npy", "r.npy",
         "r.offsets.npy"]
    )


def test_refused_directory_gets_no_lock_file(tmp_path: Path) -> None:
    """A user's non-empty directory is refused before anything is created in it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    for mode in ("x", "w"):
        with pytest.raises(StoreExistsError):
            snapsink.NpyDirectory(tmp_path / "d", mode).open()
    with pytest.raises(FormatError):
        snapsink.NpyDirectory(tmp_path / "d", "a").open()
    assert os.listdir(tmp_path / "d") == ["notes.txt"]


def test_directory_holding_only_a_lock_file_is_empty(tmp_path: Path) -> None:
    """A writer killed between taking the lock and its first commit leaves only
    the lock file: "x" still creates the store there."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK_NAME).write_text('{"pid": 1}\n')
    with open_sink(tmp_path / "s", "thread", "x") as sink:
        write_range(sink, 0, 2)
    assert_frames(tmp_path / "s", 2)


# -- item 3 for ZarrStore: the group's directory is the lock ------------------------------
def open_zarr_sink(store: Path, writer: str, mode: str = "x", group: str | None = None) -> SyncSink:
    return SyncSink(
        snapsink.ZarrStore(store, mode, group=group, chunk_frames=4),
        schema=SCHEMA,
        writer=writer,
    )


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("mode", ["x", "w", "a"])
def test_second_zarr_writer_is_refused(tmp_path: Path, writer: str, mode: str) -> None:
    store = tmp_path / "s.zarr"
    with open_zarr_sink(store, writer) as first:
        write_range(first, 0, 5)
        first.flush()
        with pytest.raises(StoreLockedError) as info:
            open_zarr_sink(store, writer, mode)
        assert str(store) in str(info.value)
        if writer == "thread":
            assert info.value.pid == os.getpid()
        else:
            assert isinstance(info.value.pid, int) and info.value.pid != os.getpid()
        assert_frames(store, 5)  # readers take no lock
        write_range(first, 5, 12)
    assert_frames(store, 12)  # the refused writer touched nothing ("w" deleted nothing)
    with open_zarr_sink(store, writer, "a") as again:
        write_range(again, 12, 15)
    assert_frames(store, 15)


def test_two_zarr_groups_of_one_store_have_a_writer_each(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with open_zarr_sink(store, "process", group="a") as a, open_zarr_sink(
        store, "process", group="b"
    ) as b:
        write_range(a, 0, 3)
        write_range(b, 0, 4)
        with pytest.raises(StoreLockedError):
            open_zarr_sink(store, "thread", "a", group="b")
    assert len(snapsink.open(store, group="a")) == 3
    assert len(snapsink.open(store, group="b")) == 4


ZARR_HOLDER = textwrap.dedent(
    """
    import sys, numpy as np, snapsink
    schema = {"x": snapsink.Field("float64", (4,)), "r": snapsink.Field("int32", (None, 2))}
    sink = snapsink.SyncSink(
        snapsink.ZarrStore(sys.argv[1], chunk_frames=4), schema=schema, writer="thread"
    )
    for i in range(5):
        sink.write({"x": np.full(4, i + 1, np.float64),
                    "r": np.full((i % 3, 2), i + 1, np.int32)}, step=i, time=float(i))
    sink.flush()
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_dead_zarr_writer_never_blocks_the_resume(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    with subprocess.Popen(
        [sys.executable, "-c", ZARR_HOLDER, str(store)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ready"
            with pytest.raises(StoreLockedError) as info:
                open_zarr_sink(store, "process", "a")
            assert info.value.pid == holder.pid  # named, from /proc/locks
            holder.send_signal(signal.SIGKILL)
            holder.wait(30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(30)
    with open_zarr_sink(store, "process", "a") as sink:
        write_range(sink, 5, 9)
    assert_frames(store, 9)
    # no lock file: zarr's own listing finds nothing it does not know
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(k for k, _ in zarr.open_group(store, mode="r").members()) == [
            "r", "r.offsets", "steps", "times", "x",
        ]  # fmt: skip
