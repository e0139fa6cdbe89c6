"""Cancellation and shutdown, beyond tests/test_sink.py and tests/test_sync.py:
a producer cancelled inside a spill write or at random moments of a full
channel, a cancelled flush, the owner cancelled with a spill backlog, an error
in the body over a disk store, concurrent and repeated closes.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from conftest import GatedStore
from snapsink import HostMemory, Sink, Spill, SyncSink
from snapsink._spill import SpillDir

pytestmark = pytest.mark.timeout(30)


def spill_files(root: Path) -> list[Path]:
    return [*root.rglob("*.seg"), *root.rglob("*.frame")]


async def test_producer_cancelled_during_its_spill_write(
    gated: GatedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frame was accepted when its spill write started: cancelling the
    producer then must neither lose it nor store it twice, nor leak the entry."""
    in_write = threading.Event()
    release = threading.Event()
    real_append = SpillDir.append

    def slow_append(self: SpillDir, *args: Any, **kwargs: Any) -> Any:
        in_write.set()
        assert release.wait(10)
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(SpillDir, "append", slow_append)
    async with Sink(gated, capacity=1, policy=Spill(tmp_path)) as sink:
        await sink.write({"v": np.full(3, 0.0)}, step=0)
        await gated.wait_entered()  # frame 0 is being appended; the channel is full
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def producer() -> None:
                    await sink.write({"v": np.full(3, 1.0)}, step=1)  # spills

                tg.start_soon(producer)
                await anyio.to_thread.run_sync(in_write.wait, 10)
                scope.cancel()  # the producer is inside the spill write
                release.set()
        gated.gate.set()
        await sink.write({"v": np.full(3, 2.0)}, step=2)
        await sink.flush()
        assert sink.statistics().queued == 0
    traj = gated.trajectory()
    assert traj.steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(traj["v"][:], [[0.0] * 3, [1.0] * 3, [2.0] * 3])
    assert not spill_files(tmp_path)  # replayed and removed


@pytest.mark.parametrize("policy", ["block", "spill"])
async def test_producers_cancelled_at_random_moments(tmp_path: Path, policy: str) -> None:
    """Many producers, each write cancelled after a random delay: a write that
    returned is stored exactly once; a cancelled one is stored at most once;
    order holds; no slot leaks; the sink keeps working."""

    class Slow(HostMemory):
        def append(self, batch: snapsink.Batch) -> None:
            threading.Event().wait(0.0005)
            super().append(batch)

    store = Slow()
    rng = random.Random(5)
    returned: list[int] = []
    cancelled: list[int] = []
    pol: Any = Spill(tmp_path) if policy == "spill" else "block"
    async with Sink(store, capacity=2, policy=pol) as sink:

        async def producer(k: int) -> None:
            for j in range(60):
                ident = 1000 * k + j
                with anyio.move_on_after(rng.uniform(0, 0.002)) as scope:
                    await sink.write({"v": np.full(4, ident, "i8"), "k": k})  # step: auto
                (cancelled if scope.cancelled_caught else returned).append(ident)

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(producer, k)
        await sink.flush()
        s = sink.statistics()
        assert s.queued == 0 and s.dropped == 0
        assert len(sink._channel.pool.free) == 2  # no slot leaked
    traj = store.trajectory()
    steps = traj.steps.tolist()
    assert steps == list(range(len(steps)))
    ids = traj["v"][:][:, 0].tolist()
    assert len(set(ids)) == len(ids)  # never stored twice
    assert set(returned) <= set(ids) <= set(returned) | set(cancelled)
    for k in range(4):  # each producer's frames in its own order
        mine = [i for i in ids if i // 1000 == k]
        assert mine == sorted(mine)
    assert len(returned) > 0
    if policy == "block":  # a spill never waits: a write rarely sees the cancel
        assert len(cancelled) > 0


async def test_write_with_a_pending_cancel_writes_nothing(
    gated: GatedStore, tmp_path: Path
) -> None:
    """A write checkpoints before it offers the frame (as anyio's send does): a
    cancel already pending cancels it, nothing is written, the sink stays usable."""
    async with Sink(gated, capacity=1, policy=Spill(tmp_path)) as sink:
        await sink.write({"v": np.zeros(2)}, step=0)
        await gated.wait_entered()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sink.write({"v": np.ones(2)}, step=1)
        assert scope.cancelled_caught
        await sink.write({"v": np.full(2, 2.0)}, step=2)
        gated.gate.set()
        with anyio.fail_after(5):
            await sink.flush()
    assert gated.trajectory().steps.tolist() == [0, 2]
    np.testing.assert_array_equal(gated.trajectory()["v"][:], [[0, 0], [2, 2]])


async def test_spilling_write_with_a_pending_cancel_is_written(
    gated: GatedStore, tmp_path: Path
) -> None:
    """A cancel that arrives after the write's checkpoint, when the frame spills:
    the frame was accepted, so its spill file must be written. (The worker thread
    used to be skipped by the pending cancel, leaving an entry that never became
    ready: the consumer, flush and close then hung forever.)"""
    async with Sink(gated, capacity=1, policy=Spill(tmp_path)) as sink:
        await sink.write({"v": np.zeros(2)}, step=0)
        await gated.wait_entered()  # the channel is full: the next write spills

        async def no_yield(_: float) -> None:  # the cancel lands after the checkpoint
            return None

        sink._yield = no_yield
        sink._writes = 0
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sink.write({"v": np.ones(2)}, step=1)
        gated.gate.set()
        with anyio.fail_after(5):
            await sink.flush()
    assert gated.trajectory().steps.tolist() == [0, 1]
    np.testing.assert_array_equal(gated.trajectory()["v"][:], [[0, 0], [1, 1]])


async def test_cancelled_flush_leaves_no_waiter_and_a_later_flush_works(
    gated: GatedStore,
) -> None:
    async with Sink(gated, capacity=4) as sink:
        await sink.write({"v": 1.0})
        await gated.wait_entered()
        with anyio.move_on_after(0.05) as scope:
            await sink.flush()  # the store is stuck: times out
        assert scope.cancelled_caught
        assert sink._flush_waiters == []
        gated.gate.set()
        await sink.write({"v": 2.0})
        await sink.flush()
        assert len(gated) == 2


async def test_cancelling_the_owner_with_a_spill_backlog(gated: GatedStore, tmp_path: Path) -> None:
    """Every frame accepted (in memory or spilled) is stored, in order, even when
    the task owning the sink is cancelled; the spill files are removed."""
    with anyio.CancelScope() as scope:
        async with Sink(gated, capacity=2, policy=Spill(tmp_path)) as sink:
            for i in range(20):
                await sink.write({"v": np.full(2, i, "i4")}, step=i)
            assert sink.statistics().spilled >= 17
            scope.cancel()
            gated.gate.set()
            await anyio.sleep(10)  # cancelled here
    assert scope.cancelled_caught
    traj = gated.trajectory()
    assert traj.steps.tolist() == list(range(20))
    np.testing.assert_array_equal(traj["v"][:][:, 1], np.arange(20))
    assert not spill_files(tmp_path)


@pytest.mark.parametrize("kind", ["npy", "zarr"])
async def test_body_exception_commits_a_disk_store_and_reraises(tmp_path: Path, kind: str) -> None:
    path = tmp_path / kind
    store: Any = (
        snapsink.NpyDirectory(path, commit_every=1000)
        if kind == "npy"
        else snapsink.ZarrStore(path, commit_every=1000)
    )
    with pytest.raises(ZeroDivisionError):
        async with Sink(store, capacity=3) as sink:
            for i in range(25):
                await sink.write({"x": np.full((2, 2), i, "f4")}, step=i, time=0.1 * i)
            _ = 1 / 0
    traj = snapsink.open(path)
    assert traj.steps.tolist() == list(range(25))
    np.testing.assert_array_equal(traj["x"][:][:, 1, 1], np.arange(25, dtype="f4"))


async def test_concurrent_and_repeated_closes() -> None:
    """Two tasks closing at once, then closing again: every accepted frame is
    stored once, the store closed once, and later writes are refused."""

    class Counting(HostMemory):
        closes = 0

        def close(self) -> None:
            Counting.closes += 1

    store = Counting()
    sink = Sink(store, capacity=2)
    await sink.__aenter__()
    for i in range(30):
        await sink.write({"v": float(i)})
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.aclose)
        tg.start_soon(sink.aclose)
    await sink.aclose()
    await sink.__aexit__(None, None, None)
    assert Counting.closes == 1
    assert len(store) == 30
    with pytest.raises(snapsink.ClosedSinkError):
        await sink.write({"v": 1.0})
    with pytest.raises(snapsink.ClosedSinkError):
        await sink.flush()
    with pytest.raises(snapsink.ConfigError, match="already opened"):
        async with sink:
            pass


def test_sync_sink_blocked_producer_sees_a_failure_not_a_hang() -> None:
    """A producer blocked on a full channel of a SyncSink whose store fails is
    woken with WriterError (not left waiting)."""

    class Boom(GatedStore):
        def append(self, batch: snapsink.Batch) -> None:
            super().append(batch)
            raise OSError(5, "Input/output error (injected)")

    store = Boom()
    sink = SyncSink(store, capacity=1)
    sink.write({"v": 0.0})
    assert store.entered.wait(10)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for i in range(1, 100):
                sink.write({"v": float(i)})
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=producer)
    t.start()
    threading.Event().wait(0.05)  # let it block on the full channel
    store.gate.set()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(errors[0], snapsink.WriterError)
    assert isinstance(errors[0].__cause__, OSError)
    with pytest.raises(snapsink.WriterError):
        sink.close()
    sink.close()  # closing again is a no-op
