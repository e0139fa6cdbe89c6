"""``commit_seconds`` bounds what a crash costs even when no frame comes.

A store checks its timer in ``append``; while the simulation computes and
writes nothing, the consumer asks the store (``commit_due_in()``) and commits
when due. For every disk store and both writer kinds: frames written, then
nothing, are visible to a reader within ``commit_seconds`` (and a small
slack) while the sink is still open, and survive a SIGKILL of the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import Batch, HDF5Store, HostMemory, NpyDirectory, SyncSink, ZarrStore
from snapsink._consumer import DRAIN_TICK
from snapsink._schema import Field, Frame, Schema

pytestmark = pytest.mark.timeout(30)

#: short enough for a fast test, long enough to tell from "at once"
CS = 0.2
#: what a loaded machine may add to the bound (a writer's tick, the commit's fsyncs)
SLACK = 1.0
KINDS = ["npy", "zarr", "hdf5"]
WRITERS = ["thread", "process"]


def make(kind: str, path: Path, **kw: Any) -> Any:
    kw.setdefault("commit_every", 10**6)  # only the timer commits
    kw.setdefault("commit_seconds", CS)
    if kind == "npy":
        return NpyDirectory(path, **kw)
    if kind == "zarr":
        return ZarrStore(path, **kw)
    return HDF5Store(path, **kw)


def path_of(tmp_path: Path, kind: str) -> Path:
    return tmp_path / ("run.h5" if kind == "hdf5" else "run")


def visible(path: Path) -> int:
    """Frames a reader sees now (0 while the store has no commit yet)."""
    try:
        return len(snapsink.open(path))
    except snapsink.SnapsinkError:
        return 0


def wait_visible(path: Path, n: int, within: float) -> float:
    """Seconds until a reader sees ``n`` frames; fails after ``within``."""
    t0 = time.monotonic()
    while (seen := visible(path)) < n:
        waited = time.monotonic() - t0
        assert waited < within, f"{seen} of {n} frames visible after {waited:.2f} s"
        time.sleep(0.005)
    return time.monotonic() - t0


def x(i: int) -> np.ndarray:
    return np.full(4, i, np.float32)


def check_frames(path: Path, steps: list[int]) -> None:
    traj = snapsink.open(path)
    np.testing.assert_array_equal(traj.steps, steps)
    np.testing.assert_array_equal(np.asarray(traj["x"][:]), np.stack([x(s) for s in steps]))


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", KINDS)
def test_idle_frames_visible_within_commit_seconds(
    tmp_path: Path, kind: str, writer: str
) -> None:
    path = path_of(tmp_path, kind)
    with SyncSink(make(kind, path), writer=writer) as sink:
        for i in range(5):
            sink.write({"x": x(i)}, step=i)
        # the simulation computes: no write, no flush; the writer commits on its timer
        waited = wait_visible(path, 5, CS + SLACK)
        check_frames(path, list(range(5)))
        assert sink.statistics().written == 5
    assert waited <= CS + SLACK
    check_frames(path, list(range(5)))


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", KINDS)
def test_bursts_each_visible_within_commit_seconds(
    tmp_path: Path, kind: str, writer: str
) -> None:
    """A burst, a pause longer than commit_seconds, a burst: the second burst's
    first frame commits at its append (the timer ran out in the pause; zarr
    starts that commit in the background), the rest of it by the writer's timer."""
    path = path_of(tmp_path, kind)
    with SyncSink(make(kind, path), writer=writer) as sink:
        for i in range(3):
            sink.write({"x": x(i)}, step=i)
        wait_visible(path, 3, CS + SLACK)
        time.sleep(1.5 * CS)  # computing: the next append finds a commit due
        for i in range(3, 40):
            sink.write({"x": x(i)}, step=i)
        waited = wait_visible(path, 40, CS + SLACK)
    assert waited <= CS + SLACK
    check_frames(path, list(range(40)))


@pytest.mark.parametrize("kind", KINDS)
def test_no_timer_without_commit_seconds(tmp_path: Path, kind: str) -> None:
    """``commit_seconds=None``: frames wait for a flush, as documented."""
    path = path_of(tmp_path, kind)
    store = make(kind, path, commit_seconds=None)
    with SyncSink(store, writer="thread") as sink:
        for i in range(3):
            sink.write({"x": x(i)}, step=i)
        assert store.commit_due_in() is None
        time.sleep(CS)  # would be long enough for a timer
        assert visible(path) == 0
        sink.flush()
        assert visible(path) == 3


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", KINDS)
def test_frames_due_by_count_are_committed_while_the_simulation_is_idle(
    tmp_path: Path, kind: str, writer: str
) -> None:
    """``commit_every=1, commit_seconds=None``: a burst of frames, then nothing.
    Each frame is due by count; NpyDirectory left the ones whose commit found
    another in flight to a later append, which never came: a reader saw 4 (or
    20) of 30 frames until the close, and a crash lost the rest."""
    path = path_of(tmp_path, kind)
    with SyncSink(make(kind, path, commit_every=1, commit_seconds=None), writer=writer) as sink:
        for i in range(30):
            sink.write({"x": x(i)}, step=i)
        wait_visible(path, 30, SLACK)
        check_frames(path, list(range(30)))
    check_frames(path, list(range(30)))


def test_sigkilled_thread_writer_keeps_timed_commit(tmp_path: Path) -> None:
    """The simulation (thread writer, in its process) writes 5 frames, computes,
    and is SIGKILLed after the bound: the 5 frames read back bit-exact."""
    path = tmp_path / "run"
    script = f"""
import sys, time, numpy as np, snapsink
sink = snapsink.SyncSink(
    snapsink.NpyDirectory({str(path)!r}, commit_every=10**6, commit_seconds={CS}),
    writer="thread",
)
for i in range(5):
    sink.write({{"x": np.full(4, i, np.float32)}}, step=i)
print("written", flush=True)
time.sleep(60)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "written\n"
        wait_visible(path, 5, CS + SLACK)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    check_frames(path, list(range(5)))


# -- the stores' timers, without a sink ------------------------------------------

SCHEMA = Schema({"x": Field("float32", (4,))})


def fr(i: int) -> Frame:
    return Frame(i, None, {"x": x(i)})


async def _call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """A store method, blocking or a coroutine (ZarrStore)."""
    got = method(*args, **kwargs)
    if hasattr(got, "__await__"):
        got = await got
    return got


@pytest.mark.parametrize("kind", KINDS)
async def test_commit_due_in_follows_what_is_uncommitted(tmp_path: Path, kind: str) -> None:
    store = make(kind, path_of(tmp_path, kind), commit_seconds=1000.0)
    await _call(store.open)
    await _call(store.prepare, SCHEMA, times=False)
    assert store.commit_due_in() is None  # nothing appended
    await _call(store.append, Batch([fr(0), fr(1)]))
    due = store.commit_due_in()
    assert due is not None and 990 < due <= 1000
    await _call(store.commit)
    assert store.commit_due_in() is None  # all committed
    await _call(store.append, Batch([], dropped_steps=[2]))
    assert store.commit_due_in() is not None  # a drop waits for a commit too
    await _call(store.close)
    assert store.commit_due_in() is None  # closed
    traj = snapsink.open(path_of(tmp_path, kind))
    np.testing.assert_array_equal(traj.steps, [0, 1])
    np.testing.assert_array_equal(traj.dropped_steps, [2])


# -- the consumer's side, with stores that say when --------------------------------


class TimedMemory(HostMemory):
    """HostMemory with a timer: a commit is due ``seconds`` after the first
    uncommitted frame (``stuck``: still due after a commit); commits are
    counted, with their times."""

    def __init__(self, seconds: float, stuck: bool = False) -> None:
        super().__init__()
        self.seconds = seconds
        self.stuck = stuck
        self.since: float | None = None  # the first uncommitted frame's append
        self.commit_times: list[float] = []
        self.committed = threading.Event()

    def append(self, batch: Batch) -> None:
        super().append(batch)
        if batch.frames and self.since is None:
            self.since = time.monotonic()

    def commit_due_in(self) -> float | None:
        if self.since is None:
            return None
        return self.since + self.seconds - time.monotonic()

    def commit(self) -> None:
        super().commit()
        self.commit_times.append(time.monotonic())
        if not self.stuck:
            self.since = None
        self.committed.set()


def test_consumer_commits_when_the_store_says() -> None:
    store = TimedMemory(CS)
    with SyncSink(store, writer="thread") as sink:
        t0 = time.monotonic()
        sink.write({"x": x(0)}, step=0)
        assert store.committed.wait(CS + SLACK)
        assert store.since is None and store.commit_times
        first = store.commit_times[0]
    assert CS <= first - t0 <= CS + SLACK  # not before it is due, and soon after
    assert store.trajectory().steps.tolist() == [0]
    assert len([t for t in store.commit_times if t <= first]) == 1


def test_consumer_never_spins_on_a_store_that_stays_due() -> None:
    """A store that says "due" even right after its commit is committed at most
    once per feed tick, not in a busy loop."""
    store = TimedMemory(0.0, stuck=True)
    with SyncSink(store, writer="thread") as sink:
        sink.write({"x": x(0)}, step=0)
        assert store.committed.wait(5)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:  # the writer idles meanwhile
            time.sleep(0.01)
        commits = [t for t in store.commit_times if t0 <= t <= t0 + 0.3]
    assert 1 <= len(commits) <= 0.3 / DRAIN_TICK + 3


def test_a_coroutine_commit_due_in_is_a_clear_writer_error() -> None:
    class AsyncDue(snapsink.HostMemory):
        async def commit_due_in(self) -> float | None:  # the protocol wants a plain method
            return None

    with pytest.raises(snapsink.WriterError) as info:
        with snapsink.SyncSink(AsyncDue(), writer="thread") as sink:
            sink.write({"x": 1.0}, step=0)
            sink.flush()
    assert "commit_due_in must be a plain method" in str(info.value.__cause__)


@pytest.mark.parametrize("cls", [NpyDirectory, ZarrStore, HDF5Store])
def test_commit_every_is_a_positive_int_on_every_store(tmp_path: Path, cls: Any) -> None:
    """None was taken by ZarrStore and HDF5Store as their default of 1024 (a user
    turning count commits off, as commit_seconds=None turns the timer off, got
    them every 1024 frames); every store refuses it, and nothing is created."""
    if cls is HDF5Store:
        pytest.importorskip("h5py")
    for bad in (None, 0, -1, 1.5, True):
        with pytest.raises(snapsink.ConfigError, match="commit_every: expected a positive int"):
            cls(tmp_path / "s", commit_every=bad)
    assert not (tmp_path / "s").exists()
