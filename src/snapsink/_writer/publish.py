"""The writer process's channel: frames captured into shared slots and
published on the ring, in the sink's process.

Cost model: a frame costs its capture (one memcpy into a shared slot) and one
ring record (a few hundred nanoseconds); no system call, no pickling, no
thread hand-off. The writer is woken through the control socket only when it
sleeps, and only once a batch's worth of frames (or one large frame) waits.
Slots come back when the writer advances the ring's ``done`` counter, which
the producer reads when it needs room: the writer sends a message for that
only when a producer waits.

The :class:`ProcessChannel` keeps every policy decision of :class:`Channel`
(block, drops, spill, ``max_bytes``) in the producer's process; what changes is
where an accepted frame goes: it is *published* on the ring at once, in write
order, unless it must wait for its spill file or its device copy, or, under
``drop_oldest``, while half the slots are already with the writer (the frames
that stay may still be evicted by newer ones).

Kept apart from :mod:`.process` (the writer process's lifecycle: start, the
proxy thread that reads its replies, close): this module is the per-frame hot
path, and knows the writer only as a :class:`Control` to send messages on.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .._channel import Channel
from .._channeltypes import Entry, Offer, SinkStatistics
from .._schema import Field, is_device_array
from .._spill import Spill
from .._staging.host import Completion, Slot
from . import _shm
from ._wire import Wire

__all__ = ["POLL", "Control", "ProcessChannel"]

#: the longest a waiting producer trusts a wake-up flag before looking again
POLL = 0.005


def copy_into(view: np.ndarray[Any, Any], value: Any) -> None:
    """``np.copyto(view, value, casting="unsafe")``, holding the GIL for a plain copy.

    NumPy releases the GIL around a large copy. The producer's process has other
    threads (the sync facade's loop, the proxy that reads the writer's replies),
    and giving the GIL up and taking it back costs far more than it lets them
    do: measured on the 2-core VM, a 256 KiB copy between stretches of Python
    compute took 3 µs with the GIL held and 11 µs through ``np.copyto`` once a
    thread that wakes every few ms existed (19 µs with a sink open). The frame's
    bytes are copied as they are, so a contiguous array of the field's own
    dtype (byte order included) goes by ``memoryview`` assignment, one
    ``memmove`` under the GIL; anything else (a cast, strides, a scalar, a
    dtype the buffer protocol cannot name) through ``np.copyto``. ``view`` is a
    slot's field: contiguous by construction (:meth:`_shm.SlotMemory.view`).
    """
    if (
        type(value) is np.ndarray
        and value.dtype == view.dtype
        and value.shape == view.shape
        and value.flags.c_contiguous
    ):
        try:
            view.data.cast("B")[:] = value.data.cast("B")
            return
        except (TypeError, ValueError):  # e.g. datetime64: no buffer format
            pass
    np.copyto(view, value, casting="unsafe")


class Control(Protocol):
    """The sink's end of a writer process's control channel
    (:class:`~snapsink._writer.process.ProcessWriter`)."""

    #: the control socket; None once closed (or forgotten after a fork)
    wire: Wire | None

    def send(self, msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
        """Send ``msg`` (and ``fds``); a writer that is gone is reported elsewhere."""
        ...

    def nudge(self) -> None:
        """Wake the proxy thread, which waits without a timeout while nothing is
        queued (see :attr:`ProcessChannel.proxy_idle`)."""
        ...


class ProcessChannel(Channel):
    """A :class:`Channel` whose frames are stored by a writer process.

    Slots are shared memory; accepted frames are published on the ring (see the
    module docstring). The queue holds only frames not yet published.
    """

    poll_interval = POLL
    publishes = True

    def __init__(
        self,
        capacity: int,
        policy: str | Spill,
        *,
        writer: Control,
        **kw: Any,
    ):
        super().__init__(capacity, policy, **kw)
        self.writer = writer
        self.ring: _shm.Ring | None = None
        self.inflight: collections.deque[Entry] = collections.deque()
        self.inflight_slots = 0  # published frames that hold a slot (not spilled)
        self.published = 0
        self.window = max(1, capacity // 2) if policy == "drop_oldest" else capacity
        # room for every frame in flight (a few per slot), bounded: frames
        # beyond it wait in the queue (a channel of 10**7 slots needs no 2 GB ring)
        self.nrecords = min(max(1024, 4 * capacity), 1 << 16)
        self.flushes: list[tuple[int, int]] = []  # (generation, accepted seq to cover)
        self.spill_published = 0  # spilled frames published: the serial of the last one
        self._done = 0  # frames the writer stored, as last read from the ring
        self._spill_done = 0  # spilled bytes the writer stored (counted so far)
        self._spill_fields_done = 0  # and their field bytes
        self._schema_sent = False
        self._ring_sent = False
        #: the run of dropped steps the ring's header shows (see _publish_drops)
        self._drops_shown: tuple[int, int] | None = None
        #: the proxy thread waits for the writer's replies with no timeout (it saw
        #: nothing queued): a frame left queued must nudge it (lock held both ways)
        self.proxy_idle = False
        self._rows: list[int] = []
        self._fixed_layout: tuple[list[Any], int] | None = None

    # -- capture into shared slots ---------------------------------------------------
    def _capture(
        self, slot: Slot, items: Sequence[tuple[str, Field, Any]], copy: bool, stream: Any
    ) -> tuple[dict[str, np.ndarray[Any, Any]], Completion | None]:
        schema = self.schema
        assert schema is not None
        if self.ring is None:
            # before the frame is accepted, as everything here that may fail
            # (EMFILE, ENOMEM): a write that raises has taken nothing
            self.ring = _shm.Ring.create(self.nrecords, len(schema.ragged))
        if schema.ragged:
            rows = [int(value.shape[0]) for _, field, value in items if field.ragged]
            layout, total = _shm.frame_layout(schema, rows)
        else:  # the same layout for every frame
            rows = []
            if self._fixed_layout is None:
                self._fixed_layout = _shm.frame_layout(schema, rows)
            layout, total = self._fixed_layout
        self._rows = rows
        mem: _shm.SlotMemory | None = slot.shared
        if mem is None or mem.size < total:
            mem = self._grow(slot, total)
        device: list[tuple[str, Field, Any]] = []
        views: dict[str, np.ndarray[Any, Any]] = {}
        # A fixed layout keeps its views in the slot (made once per mapping).
        cached = slot.buffers if not rows else None
        for (name, field, offset, nbytes, shape), (_, _, value) in zip(layout, items, strict=True):
            kind = type(value)
            if kind is not np.ndarray and kind is not float and is_device_array(value):
                device.append((name, field, value))
                views[name] = mem.array[offset : offset + nbytes]
                continue
            # Host arrays are always copied: the writer cannot see the caller's memory.
            view = cached.get(name) if cached is not None else None
            if view is None:
                view = mem.view(offset, field, shape)
                if cached is not None:
                    cached[name] = view
            if shape:
                copy_into(view, value)
            else:
                view[()] = value  # a scalar: validation checked the cast is safe
        if not device:
            return {}, None
        if self.device is None:
            from .._staging.device import DeviceStager

            self.device = DeviceStager(self.capacity)
        slot.host_views = views
        try:
            _, completion = self.device.capture(slot, device, stream, borrow=not copy)
        finally:
            slot.host_views = None
        return {}, completion

    def _grow(self, slot: Slot, total: int) -> _shm.SlotMemory:
        """A new, larger mapping for ``slot``, handed to the writer."""
        old: _shm.SlotMemory | None = slot.shared
        size = total
        if self.schema is not None and self.schema.ragged:
            size = max(total, int(total * 1.25))  # ragged frames vary: grow with room
        size = max(_shm.ALIGN, -(-size // 4096) * 4096)
        try:
            mem = _shm.SlotMemory.create(size, 1 if old is None else old.gen + 1)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # nothing was taken: the frame may be written again (a larger limit)
            raise OSError(
                exc.errno,
                f"no open file left to make the sink's slot {slot.index} (capacity="
                f"{self.capacity}): {exc.strerror}; {_shm.FDS_HINT}; nothing of this "
                "frame was taken",
            ) from exc
        self.writer.send(("slot", slot.index, mem.gen, mem.size), (mem.fd,))
        mem.close()  # the mapping stays; the writer holds its own descriptor
        slot.buffers.clear()  # views of the old mapping
        if self.device is not None:
            self.device.forget_host(slot.index)
        slot.shared = mem
        return mem

    def _queued(self, entry: Entry, items: Sequence[tuple[str, Field, Any]]) -> None:
        entry.rows = self._rows  # counted by _capture, under the same lock
        self._pump()

    # -- publication ----------------------------------------------------------------
    def _ensure_ring(self) -> _shm.Ring:
        """The ring, the writer told of it (lock held). Made by the first
        frame's capture; told here, once the frame is accepted, since the
        message says whether frames carry times."""
        ring = self.ring
        if ring is None or not self._ring_sent:
            schema = self.schema
            assert schema is not None
            if ring is None:
                ring = self.ring = _shm.Ring.create(self.nrecords, len(schema.ragged))
            self._ring_sent = True
            # batches of at most half of max_bytes (as Channel.take)
            budget = None if self.max_bytes is None else max(1, self.max_bytes // 2)
            self.writer.send(
                (
                    "ring",
                    self.nrecords,
                    schema.to_json(),
                    bool(self.clock.has_times),
                    self.batch_limit,
                    budget,
                ),
                (ring.fd,),
            )
            self._schema_sent = True
        return ring

    def _writer_done(self, ring: _shm.Ring) -> int:
        """Frames the writer has stored (lock held): its ``done`` counter, taken
        as never less than before nor more than was published, so that the
        room computed from it can never be negative."""
        done = ring.get(_shm.DONE)
        if done > self._done:
            self._done = min(done, self.published)
        return self._done

    def _pump(self) -> None:
        """Publish every queued frame that may go (lock held); send due flushes."""
        # One piece: this runs for every accepted frame, under the channel's lock;
        # the steps off the per-frame path (spilled frames, drops, flushes) are calls.
        self._reap()
        queue = self.queue
        if queue or self.fifo_waiting:
            ring = self._ensure_ring()
            start = self.published
            pub = start
            done = self._done  # as _reap just read it
            slots = self.inflight_slots
            while queue:
                e = queue[0]
                if e.completion is not None and not self._copied(e.completion):
                    break  # its device copy is running (or failed: nothing goes)
                if e.slot is not None and slots >= self.window:
                    break
                if pub - done >= self.nrecords:
                    break
                queue.popleft()
                pub += 1
                e.pub = pub
                t = e.time
                assert e.slot is not None and e.slot.shared is not None
                ring.put(
                    pub,
                    (
                        pub,
                        _shm.SLOT,
                        e.slot.index,
                        e.slot.shared.gen,
                        e.step,
                        t is not None,
                        0.0 if t is None else t,
                        *e.rows,
                    ),
                )
                slots += 1
                self.inflight.append(e)
            if not queue and self.fifo_waiting:
                pub = self._publish_spilled(ring, pub, done)
            self.inflight_slots = slots
            if pub != start:
                self.published = pub
                ring.set(_shm.TAIL, pub)
                # Wake a sleeping writer; a polling one only when the frames it
                # has not taken fill half the window (the producer may soon wait).
                idle = ring.get(_shm.IDLE)
                if idle == _shm.ASLEEP or (
                    idle == _shm.POLLING and pub - done >= max(1, self.window // 2)
                ):
                    self._wake_writer(ring)
            if queue or self.fifo_waiting:
                ring.set(_shm.WANT_DONE, 1)  # call back when the writer advances
                if self.proxy_idle:
                    # and have the proxy look again every tick until none is left:
                    # the call back is the fast path, the tick the safety net
                    self.proxy_idle = False
                    self.writer.nudge()
        if self.pending_dropped:
            self._publish_drops()
        if self.flushes:
            self._send_flushes()

    @property
    def _blank_rows(self) -> tuple[int, ...]:
        """Row counts of a record that holds no frame (one 0 per ragged field)."""
        assert self.schema is not None
        return (0,) * len(self.schema.ragged)

    def _publish_spilled(self, ring: _shm.Ring, pub: int, done: int) -> int:
        """Publish spilled frames, behind every frame in memory, as the ring has
        room (lock held); the new last position. The writer reads their step,
        time and fields from the spill queue itself, and checks that the frame
        it reads is the one each record names."""
        n = min(self.fifo_waiting, max(0, self.nrecords - (pub - done)))
        blank = self._blank_rows
        serial = self.spill_published
        for _ in range(n):
            pub += 1
            serial += 1
            e = Entry(self.fifo_head_seq, 0, None, 0)
            e.spill = True
            e.pub = pub
            self.fifo_head_seq += 1
            ring.put(pub, (pub, _shm.SPILLED, serial, 0, 0, 0, 0.0, *blank))
            self.inflight.append(e)
        self.spill_published = serial
        self.fifo_waiting -= n
        return pub

    def _drop(self, step: int, time: float | None) -> Offer:
        outcome = super()._drop(step, time)
        self._publish_drops()
        return outcome

    def _publish_drops(self) -> None:
        """Hand the dropped steps to the writer at once (lock held), each run of
        consecutive steps as a ring record: no system call, and like a published
        frame a drop reaches the store even if this process dies right after it.

        While the ring is full (the store stalls, and every new frame is
        dropped), the last run waits here and in the ring's header, which the
        writer reads if this process dies: a drop that extends it costs one
        store to shared memory, no message and no memory, however long the
        stall. An earlier run that found the ring full goes as one message
        (the socket keeps it as well), so what waits here is one run.
        """
        pending = self.pending_dropped
        if not pending:
            return
        ring = self._ensure_ring()
        runs = pending.runs
        pub = self.published
        n = min(len(runs), self.nrecords - (pub - self._writer_done(ring)))
        if n > 0:
            blank = self._blank_rows
            for start, stop in runs[:n]:
                pub += 1
                ring.put(pub, (pub, _shm.DROPPED, stop - start, 0, start, 0, 0.0, *blank))
            self.published = pub
            ring.set(_shm.TAIL, pub)
            del runs[:n]
        if len(runs) > 1:
            self.writer.send(("dropped", [(a, b) for a, b in runs[:-1]]))
            del runs[:-1]
        self._show_drops(ring)

    def _show_drops(self, ring: _shm.Ring) -> None:
        """Have the ring's header show the run still waiting here, if any (lock
        held). Stored so that the writer, reading it after this process died
        at any point, finds that run or none (a run it also has from the ring
        or a message is no harm: a store keeps a set of steps)."""
        runs = self.pending_dropped.runs
        run = (runs[0][0], runs[0][1]) if runs else None
        shown = self._drops_shown
        if run == shown:
            return
        if run is not None and shown is not None and run[0] == shown[0]:
            ring.set(_shm.DROPS_TO, run[1])  # the run grew
        else:
            ring.set(_shm.DROPS_TO, _shm.NO_DROPS)
            if run is not None:
                ring.set(_shm.DROPS_FROM, run[0])
                ring.set(_shm.DROPS_TO, run[1])
        self._drops_shown = run

    def _send_drops(self) -> None:
        """Every dropped step still here goes to the writer now (lock held): a
        flush and the close cover the drops before them."""
        self._publish_drops()
        runs = self.pending_dropped.pop_runs()
        if runs:
            self.writer.send(("dropped", runs))
            assert self.ring is not None
            self._show_drops(self.ring)

    def _send_flushes(self) -> None:
        head = self.queue[0].seq if self.queue else math.inf
        due = [g for g, target in self.flushes if target < head]
        if not due:
            return
        self.flushes = [(g, t) for g, t in self.flushes if t >= head]
        self._send_schema()
        self._send_drops()
        self.writer.send(("flush", max(due), self.published))

    def _send_schema(self) -> None:
        """Tell the writer the schema if no ring did yet (a flush or close before
        any frame: the store is still prepared)."""
        if not self._schema_sent and self.schema is not None:
            self.writer.send(("schema", self.schema.to_json(), bool(self.clock.has_times)))
            self._schema_sent = True

    def _copied(self, completion: Completion) -> bool:
        """Whether a queued frame's device copy completed (lock held). A copy
        that failed (a CUDA error, which the event's query returns) leaves a
        slot with no frame in it: the sink fails, chained to the error, so the
        next write, flush and the close raise WriterError; nothing of it is
        published."""
        try:
            return completion.done()
        except Exception as exc:
            self._fail_locked(exc)
            return False

    def copying(self) -> Completion | None:
        """The completion of the first queued frame while its device copy runs
        (what publication waits for), else None."""
        with self.lock:
            queue = self.queue
            if queue and self.failure is None:
                completion = queue[0].completion
                if completion is not None and not self._copied(completion):
                    return None if self.failure is not None else completion
        return None

    def idle_unless_queued(self) -> bool:
        """For the proxy thread: True (and marked idle) when no frame waits to be
        published, so that it may wait for the writer with no timeout."""
        with self.lock:
            idle = not (self.queue or self.fifo_waiting)
            self.proxy_idle = idle
            return idle

    def pump(self) -> None:
        """Publish what may go now (called by the proxy thread and at close)."""
        with self.lock:
            if self.failure is None:
                self._pump()
            if self.room_waiters:
                self._wake_producers()

    def publish_all(self) -> bool:
        """Publish everything queued (dropped steps included); True when nothing is left."""
        with self.lock:
            self.window = self.capacity
            self._pump()
            if self.queue or self.fifo_waiting or self.fifo_writing:
                return False
            self._send_schema()
            self._send_drops()
            return True

    # -- slots coming back ---------------------------------------------------------
    def _reap(self, upto: int | None = None) -> int:
        """Free the slots of frames the writer appended (lock held)."""
        if upto is None:
            if self.ring is None:
                return 0
            upto = self._writer_done(self.ring)
        if self.ring is not None and self.spill_published:
            # spilled frames' sizes: the writer read them from disk and counts them
            spill_done = self.ring.get(_shm.SPILL_DONE)
            if spill_done > self._spill_done:
                # the spill's bound counts bytes in the spill queue; bytes
                # written, the fields' bytes (SPILL_FIELDS_DONE is stored first)
                self.spilled_bytes -= spill_done - self._spill_done
                self._spill_done = spill_done
                fields_done = self.ring.get(_shm.SPILL_FIELDS_DONE)
                self.bytes_written += fields_done - self._spill_fields_done
                self._spill_fields_done = fields_done
        inflight = self.inflight
        n = 0
        while inflight and inflight[0].pub <= upto:
            e = inflight.popleft()
            if e.slot is not None:
                self.inflight_slots -= 1
                self.pool.free.append(e.slot)
                self.held -= 1
                self.held_bytes -= e.size
                e.slot = None
            self.bytes_written += e.size
            n += 1
        if n:
            self.written += n
            self.pending -= n
        return n

    def reap(self, *, final: bool = False) -> None:
        with self.lock:
            self._reap(self.published if final else None)

    def _reclaim(self) -> bool:
        # publish too: a frame whose device copy completed since it was queued
        # can go now, and only published frames ever free a slot
        self._pump()
        return True

    def _wake_writer(self, ring: _shm.Ring) -> None:
        ring.set(_shm.IDLE, _shm.BUSY)
        self.writer.send(("wake",))

    def park_producer(self, waker: Any, nbytes: int) -> bool:
        with self.lock:
            ring = self.ring
            if ring is not None:
                ring.set(_shm.WANT_DONE, 1)
            if self.failure is None:
                self._pump()
                # the producer waits for room: a polling writer must not keep it waiting
                if (
                    ring is not None
                    and ring.get(_shm.IDLE) != _shm.BUSY
                    and (self.published > self._writer_done(ring))
                ):
                    self._wake_writer(ring)
        return super().park_producer(waker, nbytes)

    def _wake_consumer(self) -> None:
        # a spill file is written, or the sink closes: publish what may go
        if self.failure is None and self.writer.wire is not None:
            self._pump()

    def request_flush(self) -> int:
        with self.lock:
            self.raise_if_unusable()
            self.flush_requested += 1
            self.flushes.append((self.flush_requested, self.seq))
            self._pump()
            return self.flush_requested

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.ring is not None:
                # what the writer stored before it failed was written: counted
                # now, as the spilled ones' bytes are (statistics stay whole)
                self._reap()
            lost = list(self.inflight)
            self.inflight.clear()
            self.inflight_slots = 0
            for e in lost:
                if e.slot is not None:
                    self._unacquire(e.slot, e.size)
        super().fail(exc)

    def statistics(self) -> SinkStatistics:
        if not self._owned():  # (a signal handler inside the channel only reads)
            with self.lock:
                self._reap()
        return super().statistics()

    def release_memory(self) -> None:
        """Unmap the slots and the ring (after the writer is gone), also while
        the sink object lives on: each mapping holds its memory and a
        descriptor until the last array over it goes."""
        if self.device is not None:
            with contextlib.suppress(Exception):
                self.device.close()
        for slot in self.pool.slots:
            slot.buffers.clear()  # views of the slot's mapping
            slot.shared = None
        with self.lock:
            if self.ring is not None:
                self._reap()  # the writer's last counts, read before the ring goes
            ring, self.ring = self.ring, None
        if ring is not None:
            ring.close()
