"""The writer process: runs one sink's store, fed through shared memory.

Started by :class:`~snapsink._writer.process.ProcessWriter` through
:mod:`snapsink._writer._start` (``python -P .../_writer/_start.py FD LABEL``,
which calls :func:`main`), with FD its end of the control socket. It
rebuilds the store from its description, opens it, and answers
``("opened", resume)``; then it appends the frames the ring publishes, in order,
commits on flush requests and at close, and exits. The loop is the
:class:`~snapsink._consumer.Consumer` the thread writer runs too; the
:class:`Writer` here is its feed.

Why it keeps going when the sink's process dies: every frame whose ``write``
returned is already in shared memory and published on the ring, or in the
spill queue on disk, so the writer stores and commits all of them before it
exits (end of stream on the socket is how it learns of the death). SIGINT is
ignored, so a Ctrl-C in the terminal leaves the decision to the sink's process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .._channeltypes import DROPS_PER_BATCH, DroppedSteps, expand_runs
from .._consumer import Consumer
from .._schema import Batch, Frame, Schema
from .._spill import SpillReader, lock_shared, remove_if_empty
from . import _shm
from ._wire import Wire, encode_error

#: how long the writer sleeps between looks at the ring when nobody wakes it
_TICK = 0.02
#: between frames, it looks at the ring this often on its own ...
_POLL = 0.001
#: ... until nothing has come for this long; then it sleeps until woken
_QUIET = 0.1


def _set_process_name(label: str) -> None:
    """Name the process (``ps -o comm``, ``top``) after the store it writes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, b"snapsink-writer", 0, 0, 0)  # PR_SET_NAME
    except Exception:  # pragma: no cover - not Linux
        pass


class Writer:
    """The writer's state: the slots' mappings, the ring, requests; the
    :class:`~snapsink._consumer.Feed` of the consumer that runs the store."""

    def __init__(self, wire: Wire):
        self.wire = wire
        #: messages from the sink; None at its end, an exception where one
        #: could not be read (the writer fails with it)
        self.inbox: queue.SimpleQueue[tuple[tuple[Any, ...], list[int]] | BaseException | None] = (
            queue.SimpleQueue()
        )
        self.schema: Schema | None = None
        self.times = False
        self.ring: _shm.Ring | None = None
        self.slots: dict[int, _shm.SlotMemory] = {}
        #: slot index -> (its mapping, [(name, view)]) for a schema without ragged fields
        self.views: dict[int, tuple[_shm.SlotMemory, list[tuple[str, Any]]]] = {}
        self.fixed_layout: list[Any] | None = None
        self.spill_dir: Path | None = None
        self.spill_reader: SpillReader | None = None
        self.spill_lock = -1
        self.spill_done = 0  # spilled bytes stored (reported on the ring)
        self.spill_fields_done = 0  # and their field bytes
        self.batch_limit = 1
        self.byte_budget: int | None = None
        self.done = 0  # seq of the last frame appended
        #: dropped steps not yet handed to the store, as runs (a stall that drops
        #: millions of frames costs a few runs here, not a step each)
        self.dropped = DroppedSteps()
        self.flushes: list[tuple[int, int]] = []  # (generation, seq to cover)
        self.close_at: int | None = None
        self.parent_gone = False
        self.last_work = time.monotonic()
        #: (seq, spilled bytes, their field bytes) of the last take
        self._taken: tuple[int, int, int] | None = None
        self.drained = False  # the sink's process died and the spill queue is read out

    # -- messages ---------------------------------------------------------------
    def send(self, msg: tuple[Any, ...]) -> None:
        """Reply to the sink; a sink that is gone only means: drain and exit.

        A failed reply does not mark the sink gone: its last messages (a slot's
        mapping, a flush) may still be queued on the socket, unread. The inbox
        reader sees the end of the stream after them, and that alone sets
        :attr:`parent_gone` (a reply failing first made a published frame's
        slot look as if it "never arrived").
        """
        try:
            self.wire.send(msg)
        except OSError:
            pass

    def _reader(self) -> None:
        """Queue the sink's messages for :meth:`handle`, up to the end of the
        stream or the first message that cannot be read.

        An unreadable message (one naming a class this process cannot import)
        or a failed read is the writer's failure, reported to the sink as a
        store's is: this thread dying with it left the writer deaf, and the
        sink's flush and close waiting forever.
        """
        while True:
            try:
                got = self.wire.recv()
            except BaseException as exc:
                self.inbox.put(exc)
                return
            self.inbox.put(got)
            if got is None:
                return

    def start_reader(self) -> None:
        threading.Thread(target=self._reader, name="snapsink-writer-inbox", daemon=True).start()

    def handle(self, block: bool = False, timeout: float | None = None) -> None:
        """Apply queued messages; with ``block``, wait (up to ``timeout``) for one."""
        while True:
            try:
                got = self.inbox.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            block = False  # then take only what is already there
            if isinstance(got, BaseException):
                raise RuntimeError(
                    f"writer: could not read a message from the sink ({type(got).__name__}: "
                    f"{got}) after {self.done} frames stored; a message may carry only what "
                    "the writer process can import (builtins: names, steps, times)"
                ) from got
            if got is None:
                self.parent_gone = True
                self._drops_in_header()
                return
            self._apply(*got)

    def _apply(self, msg: tuple[Any, ...], fds: list[int]) -> None:
        kind = msg[0]
        if kind == "wake":
            return
        if kind == "slot":
            _, index, gen, size = msg
            old = self.slots.pop(index, None)
            if old is not None:
                old.close()
            try:
                mem = _shm.SlotMemory(fds[0], size, gen, writable=False)
            except OSError as exc:
                os.close(fds[0])
                raise OSError(
                    exc.errno,
                    f"the writer process could not map slot {index} ({size} bytes) that "
                    f"the sink made: {exc.strerror}"
                    + (f"; {_shm.FDS_HINT}" if exc.errno in (errno.EMFILE, errno.ENFILE) else ""),
                ) from exc
            mem.close()  # the mapping stays (and, before Python 3.13, holds its own)
            self.slots[index] = mem
        elif kind == "ring":
            _, nrecords, schema_json, times, batch_limit, byte_budget = msg
            self.schema = Schema.from_json(schema_json)
            self.times = times
            self.batch_limit = batch_limit
            self.byte_budget = byte_budget
            self.ring = _shm.Ring(fds[0], nrecords, len(self.schema.ragged))
        elif kind == "schema":
            _, schema_json, times = msg
            self.schema = Schema.from_json(schema_json)
            self.times = times
        elif kind == "spilldir":
            self.spill_dir = Path(msg[1])
            # hold the spill directory's lock while this process may read it:
            # its files are not a dead sink's leftovers while the writer drains
            self.spill_lock = lock_shared(self.spill_dir)
        elif kind == "dropped":
            for start, stop in msg[1]:
                self.dropped.add_run(start, stop)
        elif kind == "flush":
            self.flushes.append((msg[1], msg[2]))
        elif kind == "close":
            self.close_at = msg[1]
        else:  # pragma: no cover - a bug, not an input
            raise RuntimeError(f"writer: unknown message {kind!r}")

    def _drops_in_header(self) -> None:
        """The sink's process is gone: the run of dropped steps it was keeping
        in the ring's header (the ring was full) is ours to record."""
        ring = self.ring
        if ring is not None:
            start, stop = ring.get(_shm.DROPS_FROM), ring.get(_shm.DROPS_TO)
            if stop > start:
                self.dropped.add_run(start, stop)

    # -- frames -----------------------------------------------------------------
    def _spill_queue(self) -> SpillReader:
        if self.spill_reader is None:
            assert self.spill_dir is not None and self.schema is not None
            self.spill_reader = SpillReader(self.spill_dir, self.schema)
        return self.spill_reader

    def _spilled(self) -> tuple[Frame, int] | None:
        """The next frame of the spill queue, or None at its end."""
        got = self._spill_queue().read()
        if got is None:
            return None
        step, time, fields, nbytes = got
        return Frame(step, time, fields), nbytes

    def _frame(self, rec: tuple[Any, ...], expected: int) -> tuple[Frame, int]:
        """The frame of a ring record, and its bytes if it was spilled (else 0)."""
        seq, kind, where, gen, step, has_time, time, *rows = rec
        if seq != expected:  # pragma: no cover - a broken ring, never an input
            raise RuntimeError(f"writer: ring record {expected} holds frame {seq}")
        schema = self.schema
        assert schema is not None
        if kind == _shm.SPILLED:
            # ``where`` is the frame's serial in the spill queue: the record
            # names the frame, the writer never counts on its own
            reader = self._spill_queue()
            if where != reader.frames_read + 1:
                raise RuntimeError(
                    f"writer: ring record {seq} names spilled frame {where}, but the next "
                    f"one in {self.spill_dir} is {reader.frames_read + 1} "
                    f"({reader.position()})"
                )
            s_step, s_time, fields, nbytes = reader.read_next(
                f"ring record {seq}, {self.done} frames stored"
            )
            return Frame(s_step, s_time, fields), nbytes
        if rows:
            layout, _ = _shm.frame_layout(schema, rows)
        else:
            if self.fixed_layout is None:
                self.fixed_layout, _ = _shm.frame_layout(schema, rows)
            layout = self.fixed_layout
        slot = self.slots.get(where)
        while slot is None or slot.gen != gen:
            # its mapping was sent before the record was published: it is on its way
            if self.parent_gone and self.inbox.empty():
                raise RuntimeError(f"writer: slot {where} generation {gen} never arrived")
            self.handle(block=True, timeout=_TICK)
            slot = self.slots.get(where)
        views = None if rows else self.views.get(where)
        if views is None or views[0] is not slot:
            views = (slot, [(n, slot.view(o, f, shape)) for n, f, o, _, shape in layout])
            if not rows:  # a fixed layout: the same views for every frame of this mapping
                self.views[where] = views
        out = {name: (arr[()] if not arr.ndim else arr) for name, arr in views[1]}
        return Frame(step, time if has_time else None, out), 0

    # -- the consumer's feed ------------------------------------------------------
    def take(self) -> Batch | None:
        """The next batch of published frames (and pending drops). Once the sink's
        process is gone and every published frame is stored: the frames it spilled
        and never published."""
        self.handle()
        ring = self.ring
        tail = ring.get(_shm.TAIL) if ring is not None else 0
        if tail <= self.done and not self.dropped:
            if self.parent_gone and not self.drained:
                return self._take_unpublished()
            return None
        frames: list[Frame] = []
        spilled = spilled_fields = 0
        budget = self.byte_budget
        seq = self.done
        while seq < tail and len(frames) < self.batch_limit:
            assert ring is not None
            rec = ring.read(seq + 1)
            seq += 1
            if rec[1] == _shm.DROPPED:
                if rec[0] != seq:  # pragma: no cover - a broken ring, never an input
                    raise RuntimeError(f"writer: ring record {seq} holds record {rec[0]}")
                self.dropped.add_run(rec[4], rec[4] + rec[2])  # its first step, how many
                continue
            frame, nbytes = self._frame(rec, seq)
            frames.append(frame)
            if nbytes:
                spilled += nbytes
                spilled_fields += frame.nbytes
            if budget is not None:
                budget -= frame.nbytes
                if budget <= 0:
                    break
        dropped = expand_runs(self.dropped.pop_runs(DROPS_PER_BATCH))
        self._taken = (seq, spilled, spilled_fields)
        return Batch(frames, dropped)

    def _take_unpublished(self) -> Batch | None:
        """Spilled frames the dead sink never handed over (each one's ``write``
        returned), in order, up to a torn tail."""
        frames: list[Frame] = []
        if self.spill_dir is not None and self.schema is not None:
            while len(frames) < max(1, self.batch_limit):
                got = self._spilled()
                if got is None:
                    break
                frames.append(got[0])
        if not frames:
            self.drained = True
            return None
        self._taken = None
        return Batch(frames, [])

    def stored(self) -> None:
        self.last_work = time.monotonic()
        taken, self._taken = self._taken, None
        ring = self.ring
        if taken is not None and ring is not None:
            seq, spilled, spilled_fields = taken
            self.done = seq
            if spilled:
                self.spill_done += spilled
                self.spill_fields_done += spilled_fields
                ring.set(_shm.SPILL_FIELDS_DONE, self.spill_fields_done)
                ring.set(_shm.SPILL_DONE, self.spill_done)
            ring.set(_shm.DONE, seq)
            if ring.get(_shm.WANT_DONE):
                ring.set(_shm.WANT_DONE, 0)
                self.send(("done", seq))
        if self.spill_reader is not None and self.spill_reader.exhausted:
            self.spill_reader.remove_exhausted()

    def flush_due(self) -> int | None:
        due = [g for g, target in self.flushes if target <= self.done]
        if not due:
            return None
        self.flushes = [(g, t) for g, t in self.flushes if t > self.done]
        return max(due)

    def flushed(self, gen: int) -> None:
        self.send(("flushed", gen, self.done))

    def finished(self) -> bool:
        if self.close_at is not None and self.done >= self.close_at:
            self._check_spill_queue_read()
            return True
        return self.parent_gone and self.drained

    def _check_spill_queue_read(self) -> None:
        """At the close: the sink published every frame it spilled, so none may
        be left in the spill queue (else it would be lost without a word)."""
        if self.spill_dir is None or self.schema is None:
            return
        reader = self._spill_queue()
        if reader.more():
            raise RuntimeError(
                f"writer: the sink closed after publishing {reader.frames_read} spilled "
                f"frames, but {self.spill_dir} holds more ({reader.position()})"
            )

    def wait(self, timeout: float | None = None) -> None:
        """Nothing to do. A simulation that writes regularly finds the writer
        polling: its frames are picked up within _POLL, and publishing them costs
        it no system call. After a quiet spell the writer sleeps, and the next
        frame wakes it. ``timeout``: wake by then anyway (a timed commit due)."""
        if self.parent_gone:
            return  # draining: nobody will wake us
        ring = self.ring
        asleep = time.monotonic() - self.last_work >= _QUIET
        if ring is not None:
            ring.set(_shm.IDLE, _shm.ASLEEP if asleep else _shm.POLLING)
            if ring.get(_shm.TAIL) > self.done:
                ring.set(_shm.IDLE, _shm.BUSY)
                return
        tick = _TICK if asleep else _POLL
        self.handle(block=True, timeout=tick if timeout is None else min(tick, timeout))
        if ring is not None:
            ring.set(_shm.IDLE, _shm.BUSY)


def _raise_open_file_limit() -> None:
    """Lift this process's soft open-file limit to its hard one: a writer holds a
    descriptor per slot in use and per file it writes (a store of many fields,
    a chunk file per array), and 1024, the usual soft limit, is a few hundred
    of each. Only this process: the simulation's own limit is its own."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    # A Ctrl-C, or a scheduler's SIGTERM to every process of the job (systemd,
    # SLURM, a container's stop, `timeout`), is the simulation's to act on:
    # this process ends when the simulation closes the sink or dies, after it
    # stored every frame whose write returned (they are in shared memory).
    # Dying on the SIGTERM lost them all. SIGKILL still ends it at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(argv[0])
    _set_process_name(argv[1] if len(argv) > 1 else "")
    _raise_open_file_limit()
    wire = Wire(socket.socket(fileno=fd))
    w = Writer(wire)
    consumer: Consumer | None = None
    try:
        got = wire.recv()
        if got is None:
            return 0
        (_, paths), _ = got
        for p in reversed(paths):
            if p not in sys.path:
                sys.path.insert(0, p)
        got = wire.recv()  # the spill directory, if any, then the store's description
        if got is not None and got[0][0] == "spilldir":
            w._apply(*got)  # its lock held from now on
            got = wire.recv()
        if got is None:
            _remove_dead_sinks_spill_dir(w)
            return 0
        (_, spec), _ = got
        consumer = Consumer(spec.build(), feed=w)
        resume = consumer.open()
    except BaseException as exc:
        try:
            wire.send(("error", encode_error(exc)))
        except OSError:  # the sink's process is gone
            _remove_dead_sinks_spill_dir(w)
        return 1
    try:
        wire.send(("opened", resume))
    except OSError:
        # The sink's process is gone before its open returned (a signal while
        # it started us): no write ever returned, so there is nothing to
        # store. Close the store, quietly: nobody reads a traceback now.
        with contextlib.suppress(BaseException):
            consumer.close()
        _remove_dead_sinks_spill_dir(w)
        return 0
    w.start_reader()
    failed = False
    try:
        consumer.run()
    except BaseException as exc:
        failed = True
        w.send(("error", encode_error(exc)))
        if w.parent_gone:
            raise  # nobody to tell: the traceback goes to stderr
    try:
        consumer.close()
    except BaseException as exc:
        if not failed:
            w.send(("error", encode_error(exc)))
        failed = True
    # Every spilled frame the writer stored is removed; the directory too when
    # the sink's process is gone and left nothing else in it (the torn frame its
    # death cut short included, once every complete one is stored). Before
    # "closed": the sink returns from its close on that message, and removes
    # the directory if nothing is left in it.
    if w.spill_reader is not None:
        gone = w.parent_gone and not failed
        with contextlib.suppress(OSError):
            w.spill_reader.close(remove_dir=gone, writer_gone=gone and w.drained)
    elif w.parent_gone and not failed:
        _remove_dead_sinks_spill_dir(w)
    if not failed:
        try:
            wire.send(("closed", w.done))
        except OSError:
            # the sink's process died after asking for the close, before it
            # could remove its spill directory (every frame of it is stored,
            # and its segments removed)
            _remove_dead_sinks_spill_dir(w)
    return 1 if failed else 0


def _remove_dead_sinks_spill_dir(w: Writer) -> None:
    """The sink's process is gone: remove its spill directory if no frame is left
    in it, which nobody else would until a sink spills there again (one that died
    while its open waited for this process wrote none: the directory was made
    before this process started)."""
    if w.spill_dir is not None:
        remove_if_empty(w.spill_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) if len(sys.argv) > 1 else 2)
