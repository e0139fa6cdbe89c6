"""The writer process, seen from the sink: start it, publish frames, flush, close.

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
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._channel import Channel
from .._channeltypes import Entry, SinkStatistics
from .._errors import ConfigError, WriterError
from .._schema import Field, is_device_array
from .._spill import Spill
from .._staging.host import Completion, Slot
from .._store import Resume, StoreSpec
from . import _shm
from ._wire import Wire, decode_error, picklable

__all__ = ["WRITERS", "ProcessChannel", "ProcessWriter", "choose_writer", "store_spec"]

#: the longest a waiting producer trusts a wake-up flag before looking again
POLL = 0.005
#: drops sent to the writer in batches of this many (and at every flush and close)
_DROP_BATCH = 256


WRITERS = ("auto", "process", "thread")

#: writers whose control socket this process holds
_live_writers: weakref.WeakSet[ProcessWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must not hold the writers' sockets: the writer learns of
    the sink's death from the end of its stream, which a copy in a child (a
    multiprocessing worker, say) would hold off for as long as the child lives."""
    for writer in list(_live_writers):
        writer.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def store_spec(store: Any) -> tuple[StoreSpec | None, str]:
    """The store's description for a writer process, or None and why not."""
    if getattr(store, "wants_device", False):
        return None, "it keeps frames on the device"
    describe = getattr(store, "describe", None)
    if not callable(describe):
        return None, "it has no describe() method returning a snapsink StoreSpec"
    spec = describe()
    if not isinstance(spec, StoreSpec):
        return None, "its describe() returned no StoreSpec (it cannot be rebuilt elsewhere)"
    exc = picklable(spec)
    if exc is not None:
        return None, f"its description cannot be pickled ({type(exc).__name__}: {exc})"
    return spec, ""


def choose_writer(store: Any, writer: object) -> StoreSpec | None:
    """The store's description when ``writer`` asks for a process (and the
    store can move), None for a thread; ConfigError for a bad request."""
    if writer not in WRITERS:
        raise ConfigError(f"writer: expected 'auto', 'process' or 'thread', got {writer!r}")
    if writer == "thread":
        return None
    spec, why = store_spec(store)
    if spec is None and writer == "process":
        raise ConfigError(
            f"writer='process': {type(store).__name__} cannot be written from another "
            f"process: {why}; use writer='thread' (or 'auto')"
        )
    return spec


class ProcessWriter:
    """A writer process and the sink's end of its control channel.

    Parameters
    ----------
    spec
        How the writer rebuilds the store.
    label
        What ``ps`` shows on the writer's command line.
    """

    def __init__(self, spec: StoreSpec, label: str):
        self.spec = spec
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.wire: Wire | None = None
        self.channel: ProcessChannel | None = None
        self.on_flushed: Callable[[int], None] = lambda gen: None
        self.on_failed: Callable[[], None] = lambda: None
        self._proxy: threading.Thread | None = None
        self._closed_cleanly = False
        self._stop = False

    # -- startup ------------------------------------------------------------------
    def start(self) -> Resume | None:
        """Start the process, have it open the store; blocking.

        Returns the store's :class:`Resume` (or None). Raises what opening the
        store raised (e.g. StoreExistsError), or WriterError if the process
        could not start.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "snapsink._writer._child",
                    str(child.fileno()),
                    f"snapsink-writer {self.label}",
                ],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                # its own session: a Ctrl-C in the terminal interrupts the
                # simulation, never the writer draining its frames
                start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            raise WriterError(f"could not start the writer process: {exc}") from exc
        finally:
            child.close()
        self.wire = Wire(parent)
        _live_writers.add(self)
        try:
            # the path first: unpickling the description may import the store's module
            self.wire.send(("path", list(sys.path)))
            self.wire.send(("init", self.spec))
            got = self.wire.recv()
        except BaseException:
            self.abort()
            raise
        if got is None:
            self.abort()
            raise WriterError(
                f"the writer process exited while opening the store "
                f"({self._exit_status()}); its error output is above"
            )
        msg, _ = got
        if msg[0] == "error":
            self.abort()
            raise decode_error(msg[1])
        resume: Resume | None = msg[1]
        return resume

    def attach(self, channel: ProcessChannel) -> None:
        """Start serving ``channel``: the proxy thread reads the writer's replies."""
        self.channel = channel
        self._proxy = threading.Thread(
            target=self._serve, name="snapsink-writer-proxy", daemon=True
        )
        self._proxy.start()

    def send(self, msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
        assert self.wire is not None
        try:
            self.wire.send(msg, fds)
        except OSError:
            # The writer is gone; the proxy thread reports why.
            pass

    # -- the proxy thread ----------------------------------------------------------
    def _serve(self) -> None:
        ch = self.channel
        wire = self.wire
        assert ch is not None and wire is not None
        while True:
            # Device frames are published once their copy completed. The first
            # queued frame's copy is waited for here, so it is published the
            # moment it lands (the wait releases the GIL; the writer's messages
            # queue meanwhile, a copy takes micro- to milliseconds). Otherwise
            # look every 2 ms while device frames are in use (a capture may start
            # while this thread waits), else every 50 ms.
            copying = ch.copying()
            if copying is not None and not select.select([wire.sock], [], [], 0)[0]:
                try:
                    copying.synchronize()
                except Exception:  # a CUDA error: the producer's next poll reports it
                    time.sleep(0.002)
                ch.pump()
                continue
            tick = 0.002 if ch.device is not None else 0.05
            ready, _, _ = select.select([wire.sock], [], [], tick)
            if not ready:
                if ch.queue or ch.fifo_waiting:
                    ch.pump()
                continue
            got = wire.recv()
            if got is None:
                break
            msg, _ = got
            kind = msg[0]
            if kind == "done":
                ch.pump()
            elif kind == "flushed":
                ch.pump()
                self.on_flushed(msg[1])
            elif kind == "error":
                self._fail(decode_error(msg[1]))
            elif kind == "closed":
                # the store is committed and closed: the close need not wait
                # for the process to exit (it is reaped in the background)
                self._closed_cleanly = True
                break
        if not self._closed_cleanly and not self._stop:
            self._fail(
                WriterError(
                    f"the writer process died ({self._exit_status()}); frames "
                    "committed before stay readable"
                )
            )
        elif not self._closed_cleanly and ch.failure is None:
            self._fail(WriterError(f"the writer process ended early ({self._exit_status()})"))

    def _fail(self, exc: BaseException) -> None:
        ch = self.channel
        assert ch is not None
        ch.fail(exc)
        self.on_failed()

    def _exit_status(self) -> str:
        proc = self.proc
        if proc is None:
            return "not started"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def forget_after_fork(self) -> None:
        """In a forked child: close this copy of the socket, touch nothing else
        (the proxy thread and the locks did not come along)."""
        wire, self.wire = self.wire, None
        self._stop = True
        self.proc = None
        if wire is not None:
            with contextlib.suppress(OSError):
                os.close(wire.sock.detach())

    # -- shutdown -----------------------------------------------------------------
    def close(self) -> None:
        """Publish what is left, have the writer commit and close the store, and
        wait for it to exit (blocking)."""
        ch = self.channel
        assert ch is not None
        # Frames waiting for a device copy or a spill file are published as they
        # become ready.
        while ch.failure is None and not ch.publish_all():
            time.sleep(0.0005)
        self._stop = True
        if ch.failure is None:
            self.send(("close", ch.published))
        if self._proxy is not None:
            self._proxy.join()
        self._shutdown()
        ch.reap(final=self._closed_cleanly)

    def abort(self) -> None:
        """Stop the writer without waiting for frames (startup failed)."""
        self._stop = True
        self._shutdown()

    def _shutdown(self) -> None:
        if self.wire is not None:
            self.wire.close()
        proc = self.proc
        if proc is not None and self._closed_cleanly:
            # it said "closed" and is exiting: reap it without making the
            # simulation wait for an interpreter's teardown
            threading.Thread(target=proc.wait, name="snapsink-writer-reaper", daemon=True).start()
        elif proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged writer
                proc.kill()
                proc.wait()
        if self.channel is not None:
            self.channel.release_memory()


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
        writer: ProcessWriter,
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
        self._schema_sent = False
        self._rows: list[int] = []
        self._fixed_layout: tuple[list[Any], int] | None = None

    # -- capture into shared slots ---------------------------------------------------
    def _capture(
        self, slot: Slot, items: Sequence[tuple[str, Field, Any]], copy: bool, stream: Any
    ) -> tuple[dict[str, np.ndarray[Any, Any]], Completion | None]:
        schema = self.schema
        assert schema is not None
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
                np.copyto(view, value, casting="unsafe")
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
        mem = _shm.SlotMemory.create(size, 1 if old is None else old.gen + 1)
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
        ring = self.ring
        if ring is None:
            schema = self.schema
            assert schema is not None
            ring = self.ring = _shm.Ring.create(self.nrecords, len(schema.ragged))
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
        self._reap()
        queue = self.queue
        if queue or self.fifo_waiting:
            ring = self._ensure_ring()
            start = self.published
            pub = start
            done = self._writer_done(ring)
            slots = self.inflight_slots
            while queue:
                e = queue[0]
                if e.completion is not None and not e.completion.done():
                    break  # its device copy is running
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
                # spilled frames, behind every frame in memory: the writer reads
                # their step, time and fields from the spill queue itself, and
                # checks that the frame it reads is the one each record names
                n = min(self.fifo_waiting, max(0, self.nrecords - (pub - done)))
                assert self.schema is not None
                blank = (0,) * len(self.schema.ragged)
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
        if len(self.pending_dropped) >= _DROP_BATCH:
            self._send_drops()
        if self.flushes:
            self._send_flushes()

    def _send_drops(self) -> None:
        if self.pending_dropped:
            steps, self.pending_dropped = self.pending_dropped, []
            self.writer.send(("dropped", steps))

    def _send_flushes(self) -> None:
        head = self.queue[0].seq if self.queue else math.inf
        due = [g for g, target in self.flushes if target < head]
        if not due:
            return
        self.flushes = [(g, t) for g, t in self.flushes if t >= head]
        self._send_drops()
        self._send_schema()
        self.writer.send(("flush", max(due), self.published))

    def _send_schema(self) -> None:
        """Tell the writer the schema if no ring did yet (a flush or close before
        any frame: the store is still prepared)."""
        if not self._schema_sent and self.schema is not None:
            self.writer.send(("schema", self.schema.to_json(), bool(self.clock.has_times)))
            self._schema_sent = True

    def copying(self) -> Completion | None:
        """The completion of the first queued frame while its device copy runs
        (what publication waits for), else None."""
        with self.lock:
            queue = self.queue
            if queue and self.failure is None:
                completion = queue[0].completion
                if completion is not None and not completion.done():
                    return completion
        return None

    def pump(self) -> None:
        """Publish what may go now (called by the proxy thread and at close)."""
        with self.lock:
            if self.failure is None:
                self._pump()
            if self.room_waiters:
                self._wake_producers()

    def publish_all(self) -> bool:
        """Publish everything queued and send pending drops; True when nothing is left."""
        with self.lock:
            self.window = self.capacity
            self._pump()
            if self.queue or self.fifo_waiting or self.fifo_writing:
                return False
            self._send_drops()
            self._send_schema()
            return True

    # -- slots coming back ---------------------------------------------------------
    def _reap(self, upto: int | None = None) -> int:
        """Free the slots of frames the writer appended (lock held)."""
        if upto is None:
            if self.ring is None:
                return 0
            upto = self._writer_done(self.ring)
        if self.ring is not None:
            # spilled frames' sizes: the writer read them from disk and counts them
            spill_done = self.ring.get(_shm.SPILL_DONE)
            if spill_done > self._spill_done:
                self.spilled_bytes -= spill_done - self._spill_done
                self.bytes_written += spill_done - self._spill_done
                self._spill_done = spill_done
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

    def _reclaim(self) -> None:
        # publish too: a frame whose device copy completed since it was queued
        # can go now, and only published frames ever free a slot
        self._pump()

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
            lost = list(self.inflight)
            self.inflight.clear()
            self.inflight_slots = 0
            for e in lost:
                if e.slot is not None:
                    self._unacquire(e.slot, e.size)
        super().fail(exc)

    def statistics(self) -> SinkStatistics:
        with self.lock:
            self._reap()
        return super().statistics()

    def release_memory(self) -> None:
        """Unmap the slots and the ring (after the writer is gone)."""
        if self.device is not None:
            with contextlib.suppress(Exception):
                self.device.close()
        for slot in self.pool.slots:
            slot.shared = None
        if self.ring is not None:
            self.ring.close()
