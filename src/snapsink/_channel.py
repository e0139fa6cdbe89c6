"""The bounded channel between producers and a sink's consumer, and its policies.

The channel is the part of a sink that both the async API and the sync facade
share. All of its state sits behind one lock (an ``RLock``, see below); its
methods never wait. When a producer must wait for room, or the consumer for
frames, it hands the channel a *waker* and waits on it in its own way (an
``anyio.Event`` on the event loop, a ``threading.Event`` in a sync caller's
thread); the channel wakes it when the state it waits for may have changed.

Bounds: at most ``capacity`` frames are held (queued or being written), each in
one reusable staging slot, and, when ``max_bytes`` is given, at most that many
bytes (a single frame larger than ``max_bytes`` is still let through alone).
What happens to a frame that finds no room is the *policy*:

- ``"block"``: the producer waits (``write_nowait`` raises ``WouldBlock``);
- ``"drop_newest"``: the new frame is dropped;
- ``"drop_oldest"``: the oldest queued frame not yet being written is dropped
  and the new one takes its slot (when every held frame is being written, the
  new frame is dropped instead);
- :class:`~snapsink.Spill`: the frame goes to a spill directory and is replayed
  in order; past ``Spill.max_bytes`` the producer blocks.

Every drop is counted and its step recorded; the consumer hands the steps to
the store, which lists them in its metadata. A drop that finds no room for the
new frame even once every queued frame is gone drops only the new frame.

Why the lock is an ``RLock``: a signal handler runs in the main thread, maybe
while that thread is inside the channel (a ``write`` holding the lock). A
plain lock made ``statistics()`` from the handler, a normal progress report,
wait for itself forever. The handler may read the counters, as they stand;
it may not change the channel halfway through another change: a ``write``
from it raises :class:`WrongThreadError`, and
:meth:`Channel.raise_if_interrupted` is the check a close or flush makes
first (they would wait for the interrupted write forever).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._channelspill import SpillQueue
from ._channeltypes import (
    DROPS_PER_BATCH,
    DroppedSteps,
    Entry,
    Offer,
    SinkStatistics,
    SpillTicket,
    expand_runs,
    frame_nbytes,
)
from ._errors import ClosedSinkError, WriterError, WrongThreadError
from ._schema import Field, Schema, StepClock
from ._spill import Spill, SpillDir
from ._staging.host import Completion, Slot, SlotPool, capture_fields
from ._wakers import Waker

__all__ = ["Channel"]


class Channel(SpillQueue):
    """Bounded, thread-safe frame queue with a backpressure policy.

    Producers call :meth:`offer` (and, for block, :meth:`park_producer` then wait);
    the consumer calls :meth:`take`, :meth:`release`, :meth:`park_consumer`.
    A writer process replaces the consumer side
    (:class:`~snapsink._writer.publish.ProcessChannel`).

    The channel owns the frames' capture: the host slots, the device stager
    (made at the first device array), the spill directory (made by the sink at
    open, so that an unusable one fails there, and handed over) and its
    reader; :meth:`release_capture` frees them all. The spill side (its
    counters, the spill writes and the reading back) is :class:`SpillQueue`.
    """

    #: a parked party re-checks after this many seconds (None: trust its waker)
    poll_interval: float | None = None

    def __init__(
        self,
        capacity: int,
        policy: str | Spill,
        *,
        max_bytes: int | None = None,
        schema: Schema | None = None,
        clock: StepClock | None = None,
        spill_dir: SpillDir | None = None,
        check_schema: Callable[[Schema], None] | None = None,
        wants_device: bool = False,
    ):
        self.capacity = capacity
        self.policy = policy
        self.policy_name = self.policy_label(policy)
        #: what a WriterError names the store by (the sink sets it: the store's repr)
        self.store_label = ""
        self.max_bytes = max_bytes
        self.schema = schema
        self.clock = clock or StepClock()
        # reentrant, so that a signal handler can tell it interrupted this
        # thread inside the channel (module docstring); no slower than a Lock
        self.lock = threading.RLock()
        self._owned: Callable[[], bool] = self.lock._is_owned  # type: ignore[attr-defined]
        self.pool = SlotPool(capacity)
        self._init_spill_queue(spill_dir)
        self.device: Any = None  # DeviceStager, created at the first device array
        #: the store's ``check_schema`` (I/O-free), run on an inferred schema
        self.check_schema = check_schema
        #: the store keeps frames on the device (GPUBuffer): capture device views
        self.wants_device = wants_device
        #: a queued frame smaller than ``wake_bytes`` wakes the consumer only once
        #: ``wake_frames`` are queued (a consumer thread that also wakes on a timer
        #: then gets batches, not one thread wake-up per tiny frame)
        self.wake_frames = 1
        self.wake_bytes = 0
        self.batch_limit = max(1, capacity // 2)
        self._init_queue()

    def _init_queue(self) -> None:
        """The queue in memory, the counters, and who waits on them."""
        self.queue: deque[Entry] = deque()
        self.seq = 0  # seq of the last accepted entry
        self.held = 0  # frames holding a slot (queued in memory or being written)
        self.held_bytes = 0
        self.pending = 0  # accepted, not yet appended (held + spilled)
        self.pending_dropped = DroppedSteps()

        self.written = 0
        self.dropped = 0
        self.spilled = 0
        self.peak = 0
        self.bytes_written = 0

        self.closed = False
        self.failure: BaseException | None = None
        self.room_waiters: list[Waker] = []
        self.consumer_waker: Waker | None = None
        self.flush_requested = 0  # generation of the latest flush request
        self.flush_target = 0  # seq it must cover

    @staticmethod
    def policy_label(policy: str | Spill) -> str:
        return "spill" if isinstance(policy, Spill) else policy

    # -- producer side ----------------------------------------------------------
    def raise_if_unusable(self) -> None:
        """Raise WriterError after a store failure, ClosedSinkError after close."""
        if self.failure is not None:
            raise self._writer_error() from self.failure
        if self.closed:
            raise ClosedSinkError("the sink is closed; it takes no more frames")

    def raise_if_interrupted(self, what: str) -> None:
        """WrongThreadError if the calling thread is inside a ``write`` of this
        channel: a signal handler that interrupted it calls ``what``, which would
        have to wait for that write (forever) or change the channel halfway
        through it. Inside: holding the lock, or, for a caller that spills in its
        own thread (the sync facade, not the async sink, whose loop thread hands
        its spill writes to workers), writing a frame to the spill directory."""
        me = threading.get_ident()
        abandoned = self.fifo_abandoned
        if self._owned() or any(
            t.owner == me and t.n not in abandoned for t in tuple(self.fifo_open.values())
        ):
            raise WrongThreadError(
                f"{what} called from a signal handler that interrupted a write() of "
                "the same sink, which cannot go on until the handler returns; raise "
                "an exception from the handler (the `with` block then closes the "
                "sink), or set a flag there and act on it in your loop"
            )

    def raise_failure(self) -> None:
        """Raise WriterError, chained to the cause, if the store failed."""
        if self.failure is not None:
            raise self._writer_error() from self.failure

    def _writer_error(self) -> WriterError:
        """The WriterError for :attr:`failure`, naming the store (an OSError of
        the disk, ENOSPC, names neither a file nor the store)."""
        assert self.failure is not None
        store = f" {self.store_label}" if self.store_label else ""
        return WriterError(
            f"the store{store} failed: {type(self.failure).__name__}: {self.failure}"
        )

    def ensure_schema(self, fields: Any) -> Schema:
        """The channel's schema, inferring it from ``fields`` the first time."""
        schema = self.schema
        if schema is None:
            inferred = Schema.infer(fields)
            if self.check_schema is not None:
                self.check_schema(inferred)  # a schema the store cannot hold fixes nothing
            with self.lock:
                if self.schema is None:
                    self.schema = inferred
                schema = self.schema
        return schema

    def offer(
        self,
        items: Sequence[tuple[str, Field, Any]],
        step: object,
        time: object,
        *,
        copy: bool = True,
        stream: Any = None,
        nowait: bool = False,
    ) -> tuple[Offer, Entry | SpillTicket | None]:
        """Try to accept one validated frame.

        Returns ``(outcome, entry)``: ``QUEUED`` (captured),
        ``DROPPED``, ``WAIT`` (no room under block/spill-full: park and retry), or
        ``SPILL`` (with a :class:`SpillTicket`: the caller must write ``items``
        with :meth:`spill_write`).
        """
        if self._owned():
            self.raise_if_interrupted("write()")
        with self.lock:
            if self.failure is not None or self.closed:
                self.raise_if_unusable()
            s, t = self.clock.check(step, time)
            nbytes = frame_nbytes(self.schema, items)
            # a slot, if one is free and the bytes fit (the per-frame hot path
            # spells out _room_for); behind spilled frames a frame spills too,
            # so that the queue keeps its order
            if (
                self.pool.free
                and not (self.fifo_writing or self.fifo_waiting)
                and (
                    self.max_bytes is None
                    or not self.held
                    or self.held_bytes + nbytes <= self.max_bytes
                )
            ) or (
                # no room as last counted: take back what was stored since (a
                # writer process's slots and bytes), then look again
                self._reclaim()
                and not (self.fifo_writing or self.fifo_waiting)
                and self._room_for(nbytes)
            ):
                self.held += 1
                self.held_bytes += nbytes
                slot = self.pool.free.pop()
            else:
                # no room: drop_oldest makes some, the other policies refuse the frame
                evicted = self._evict_for(nbytes) if self.policy == "drop_oldest" else None
                if evicted is None:
                    return self._refuse(s, t, nbytes, items, nowait)
                slot = evicted
            try:
                fields, completion = self._capture(slot, items, copy, stream)
            except BaseException:
                self._unacquire(slot, nbytes)
                raise
            self.seq += 1
            entry = Entry(self.seq, s, t, nbytes)
            entry.slot = slot
            entry.fields = fields
            entry.completion = completion
            self.queue.append(entry)
            # accepted: the clock moves on, and the frame counts as pending
            self.clock.advance(s, t)
            self.pending += 1
            if self.pending > self.peak:
                self.peak = self.pending
            if self.publishes:
                self._queued(entry, items)
                return Offer.QUEUED, entry
            waker = self.consumer_waker
            if waker is not None and (
                len(self.queue) >= self.wake_frames or nbytes >= self.wake_bytes
            ):
                self.consumer_waker = None
                waker.wake()
            return Offer.QUEUED, entry

    def _refuse(
        self,
        step: int,
        time: float | None,
        nbytes: int,
        items: Sequence[tuple[str, Field, Any]],
        nowait: bool,
    ) -> tuple[Offer, SpillTicket | None]:
        """No room for the frame (lock held): what the policy does instead."""
        policy = self.policy
        if policy == "drop_newest" or policy == "drop_oldest":  # (nothing left to evict)
            return self._drop(step, time), None
        if policy == "block" or nowait:
            return Offer.WAIT, None
        return self._offer_spill(step, time, nbytes, items)

    # -- hooks of a channel whose consumer is a writer process ---------------------
    #: accepted frames are published by the channel itself (no consumer takes them)
    publishes = False

    def _queued(self, entry: Entry, items: Sequence[tuple[str, Field, Any]]) -> None:
        """An accepted frame (lock held)."""

    def _reclaim(self) -> bool:
        """No room: take back the slots and bytes of frames already stored (lock
        held). Whether it is worth looking again (False: nothing can have changed)."""
        return False

    def _acquire(self, nbytes: int) -> Slot | None:
        if not self._room_for(nbytes):
            return None
        self.held += 1
        self.held_bytes += nbytes
        return self.pool.free.pop()

    def _unacquire(self, slot: Slot, nbytes: int) -> None:
        self.held -= 1
        self.held_bytes -= nbytes
        self.pool.release(slot)

    def _drop(self, step: int, time: float | None) -> Offer:
        self.clock.advance(step, time)
        self.dropped += 1
        self.pending_dropped.add(step)
        return Offer.DROPPED

    def _evict_for(self, nbytes: int) -> Slot | None:
        """drop_oldest: drop the fewest queued frames (oldest first) that make
        room for ``nbytes``, and take the room; None, dropping nothing, when
        even all of them would not (the bytes are held by frames being written:
        a queued frame dropped then was lost for nothing, the new one as well)."""
        queue = self.queue
        max_bytes = self.max_bytes
        held, held_bytes = self.held, self.held_bytes
        n = 0
        for old in queue:  # decide first: a slot frees with the first one
            n += 1
            held -= 1
            held_bytes -= old.size
            if max_bytes is None or not held or held_bytes + nbytes <= max_bytes:
                break
        else:
            return None
        for _ in range(n):
            old = queue.popleft()
            assert old.slot is not None
            self.dropped += 1
            self.pending -= 1
            self.pending_dropped.add(old.step)
            self._unacquire(old.slot, old.size)
        slot = self._acquire(nbytes)
        assert slot is not None
        return slot

    def _capture(
        self, slot: Slot, items: Sequence[tuple[str, Field, Any]], copy: bool, stream: Any
    ) -> tuple[dict[str, np.ndarray[Any, Any]], Completion | None]:
        fields, device_items = capture_fields(slot, items, copy)
        if device_items is None:
            return fields, None
        if self.device is None:
            from ._staging.device import DeviceStager

            self.device = DeviceStager(self.capacity)
        dev_fields, completion = self.device.capture(
            slot, device_items, stream, to_host=not self.wants_device, borrow=not copy
        )
        fields.update(dev_fields)
        return fields, completion

    def _room_for(self, nbytes: int) -> bool:
        if not self.pool.free:
            return False
        return self.max_bytes is None or not self.held or self.held_bytes + nbytes <= self.max_bytes

    def park_producer(self, waker: Waker, nbytes: int) -> bool:
        """Register ``waker`` to be woken when room may have freed.

        Returns False (and registers nothing) when the channel changed since the
        failed offer in a way that makes retrying worthwhile at once.
        """
        with self.lock:
            if self.failure is not None or self.closed:
                return False
            if not (self.fifo_writing or self.fifo_waiting) and self._room_for(nbytes):
                return False
            policy = self.policy
            if isinstance(policy, Spill) and (
                policy.max_bytes is None
                or not self.spilled_bytes
                or self.spilled_bytes + nbytes <= policy.max_bytes
            ):
                return False
            self.room_waiters.append(waker)
            return True

    def unpark_producer(self, waker: Waker) -> None:
        """Withdraw a waker (its waiter was cancelled); pass a wake-up on."""
        with self.lock:
            try:
                self.room_waiters.remove(waker)
            except ValueError:
                # It was already woken: another producer may be owed the room.
                self._wake_producers()

    def _wake_consumer(self) -> None:
        waker = self.consumer_waker
        if waker is not None:
            self.consumer_waker = None
            waker.wake()

    def _wake_producers(self) -> None:
        waiters, self.room_waiters = self.room_waiters, []
        for w in waiters:
            w.wake()

    # -- consumer side ------------------------------------------------------------
    def take(self) -> tuple[list[Entry], list[int], int]:
        """Pop the ready frames at the head of the queue (at most ``batch_limit``)
        and the steps dropped since the last call; also the seq of the last entry
        popped (void entries included), which the batch covers once appended."""
        with self.lock:
            upto = 0
            entries: list[Entry] = []
            queue = self.queue
            limit = self.batch_limit
            # a batch holds at most half of max_bytes, so that the producers can
            # fill the other half while the store appends this one
            budget = None if self.max_bytes is None else max(1, self.max_bytes // 2)
            while queue and len(entries) < limit:
                entry = queue.popleft()
                upto = entry.seq
                entries.append(entry)
                if budget is not None:
                    budget -= entry.size
                    if budget <= 0:
                        break
            if not queue and self.fifo_waiting and len(entries) < limit:
                # spilled frames, behind every frame in memory; read back by the consumer
                n = min(self.fifo_waiting, limit - len(entries))
                for seq in range(self.fifo_head_seq, self.fifo_head_seq + n):
                    entry = Entry(seq, 0, None, 0)
                    entry.spill = True
                    entries.append(entry)
                upto = self.fifo_head_seq + n - 1
                self.fifo_head_seq += n
                self.fifo_waiting -= n
            runs = self.pending_dropped.pop_runs(DROPS_PER_BATCH) if self.pending_dropped else []
        # the steps as a list, outside the lock (a slice of a long stall's drops)
        return entries, expand_runs(runs), upto

    def release(self, entries: Sequence[Entry]) -> None:
        """The store appended ``entries``: free their slots and count them."""
        with self.lock:
            free = self.pool.free
            nbytes = 0
            for e in entries:
                if e.slot is not None:
                    free.append(e.slot)
                    self.held -= 1
                    self.held_bytes -= e.size
                    e.slot = None
                    nbytes += e.size
                elif e.spill:
                    self.spilled_bytes -= e.size  # as laid out in the spill queue
                    nbytes += e.nbytes  # the fields' bytes, as a frame's in memory
                else:
                    nbytes += e.size
                e.fields = {}
            self.bytes_written += nbytes
            self.written += len(entries)
            self.pending -= len(entries)
            if self.room_waiters:
                self._wake_producers()

    def park_consumer(
        self, waker: Waker, appended_seq: int, done_gen: int, batch: bool = False
    ) -> bool:
        """Register the consumer's waker unless there is work to do now.

        With ``batch``, a few small ready frames are not work yet: the consumer
        waits for ``wake_frames`` of them (or ``wake_bytes``), a blocked producer,
        a flush or the close, so it takes batches instead of racing the producer
        frame by frame.
        """
        with self.lock:
            queue = self.queue
            ready = bool(queue) or self.fifo_waiting > 0
            if ready and batch:
                ready = (
                    len(queue) + self.fifo_waiting >= self.wake_frames
                    or self.held_bytes >= self.wake_bytes
                    or bool(self.room_waiters)
                )
            if (
                ready
                or self.pending_dropped
                or (self.closed and not queue and not self.fifo_writing)
                or self.failure is not None
                or (self.flush_requested > done_gen and appended_seq >= self.flush_target)
            ):
                return False
            self.consumer_waker = waker
            return True

    def finished(self) -> bool:
        """Closed, and nothing left to hand to the store."""
        with self.lock:
            return (
                self.closed
                and not self.queue
                and not self.fifo_writing
                and not self.fifo_waiting
                and not self.pending_dropped
            )

    def request_flush(self) -> int:
        """Ask the consumer to commit everything accepted so far; returns the
        generation to wait for."""
        with self.lock:
            self.raise_if_unusable()
            self.flush_requested += 1
            self.flush_target = self.seq
            self._wake_consumer()
            return self.flush_requested

    def flush_request(self) -> tuple[int, int]:
        with self.lock:
            return self.flush_requested, self.flush_target

    def close(self) -> None:
        """No more frames: wake the consumer to drain, and every parked producer."""
        with self.lock:
            self.closed = True
            self._wake_consumer()
            self._wake_producers()

    def fail(self, exc: BaseException) -> None:
        """The store failed: remember why, discard queued and spilled frames, wake everyone."""
        with self.lock:
            self._fail_locked(exc)
        if self.spill_dir is not None:
            self.spill_dir.discard()

    def _fail_locked(self, exc: BaseException) -> None:
        """:meth:`fail`'s part under the lock (the spill files stay)."""
        if self.failure is None:
            self.failure = exc
        discarded = list(self.queue)
        self.queue.clear()
        for e in discarded:
            if e.slot is not None:
                self._unacquire(e.slot, e.size)
        self.pending = 0
        self.fifo_waiting = 0
        self._wake_consumer()
        self._wake_producers()
        self.fifo_turns.notify_all()

    # -- consumer helpers ---------------------------------------------------------
    def batch_wakeups(self, frames: int, nbytes: int) -> None:
        """Have a queued frame smaller than ``nbytes`` wake the consumer only once
        ``frames`` are queued (for a consumer that also looks on a timer)."""
        with self.lock:
            self.wake_frames = frames
            self.wake_bytes = nbytes

    def release_capture(self) -> None:
        """The sink is closed: free the device stager, remove the spill directory
        (if no frame is left in it)."""
        if self.spill_reader is not None:
            self.spill_reader.close()
        if self.spill_dir is not None:
            self.spill_dir.close()
        if self.device is not None:
            try:
                self.device.close()
            except Exception:
                if self.failure is None:
                    raise
                # the failed copy that failed the sink: its WriterError says it

    def statistics(self) -> SinkStatistics:
        with self.lock:
            return SinkStatistics(
                written=self.written,
                dropped=self.dropped,
                spilled=self.spilled,
                queued=self.pending,
                peak_queued=self.peak,
                bytes_written=self.bytes_written,
                capacity=self.capacity,
                policy=self.policy_name,
            )
