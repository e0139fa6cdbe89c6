"""SyncSink: the Sink for ordinary (non-async) loops.

One background thread runs an event loop that owns the async :class:`Sink`
(its consumer, its store calls). ``write`` does not hop to that loop: validation
and capture are thread-safe and run in the caller's thread, so a frame costs
no cross-thread round trip; only a full channel (``block``) makes the caller
wait. ``flush`` and ``close`` run on the loop through an anyio BlockingPortal.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # its exit hook first: see below
import contextlib
import os
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

from ._channeltypes import Offer, SinkStatistics, SpillTicket, frame_nbytes
from ._errors import (
    ClosedSinkError,
    ClosesOnExit,
    SnapsinkError,
    WriterError,
    WrongThreadError,
)
from ._schema import Schema
from ._sink import Sink
from ._spill import Spill
from ._store import Resume
from ._wakers import ThreadWaker

__all__ = ["SyncSink"]


class _LoopThread:
    """The thread that runs a SyncSink's event loop, and the async Sink on it.

    Holds no reference to its SyncSink, so that a SyncSink nobody closed can
    be garbage collected (and closed by its finalizer)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.portal: BlockingPortal | None = None
        self.stopped: anyio.Event | None = None
        #: a close began: the sink takes no more frames
        self.closed = False
        #: held by the one close that drains; set once it has ended
        self._closing = threading.Lock()
        #: the thread whose close drains (0: none)
        self.closing_thread = 0
        self.done = threading.Event()
        self._close_error: Exception | None = None
        #: the thread runs its loop (a flag each write() reads, cheaper than
        #: is_alive(), which also lies after a join() interrupted by Ctrl-C on
        #: Python < 3.13: the thread is taken for stopped)
        self.running = False
        #: set when the loop has ended (what a close waits for, not join())
        self.ended = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="snapsink-sync-loop", daemon=True)

    def start(self) -> None:
        self.running = True
        self.thread.start()
        try:
            self._ready.wait()
        except BaseException:
            # Interrupted (Ctrl-C, a signal handler raising) while the loop
            # opens the sink: the open goes on in the thread, and nothing would
            # close what it opens (the store, its writer process)
            self._abandon()
            raise
        if self._startup_error is not None:
            self.thread.join()
            raise self._startup_error
        _open_loops.add(self)

    def _abandon(self) -> None:
        """Close what an interrupted start opens, once it has opened it."""
        _open_loops.add(self)  # interrupted again here: the exit hook closes it
        self._ready.wait()
        if self._startup_error is not None:
            _open_loops.discard(self)
            self.thread.join()
            return
        with contextlib.suppress(Exception):  # the interrupt is what the caller sees
            self.close()

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
        finally:
            self.running = False
            self.ended.set()

    async def _main(self) -> None:
        # The sink outside the portal: an error opening the store is raised as is
        # (not wrapped in the portal's exception group).
        async with self.sink, BlockingPortal() as portal:
            self.portal = portal
            self.stopped = anyio.Event()
            self._ready.set()
            await self.stopped.wait()

    def close(self) -> None:
        """Drain and close, once. A close that finds another one draining waits
        for it and raises its error: each caller may rely on the store being
        complete when its close returns. A close after that is a no-op. A
        close interrupted (Ctrl-C) while the loop drains is not done: the next
        close, or the exit hook, waits for the drain."""
        if self.sink._state == "forked":
            return  # the parent's sink: not this process's to close (nor to wait for)
        if self.done.is_set():
            return
        with self._closing:  # (a drain under way: wait for it)
            if self.done.is_set():
                if self._close_error is not None:
                    raise self._close_error
                return
            self.closing_thread = threading.get_ident()
            self.closed = True
            ended = False
            try:
                self._drain_and_stop()
                ended = True
            except Exception as exc:
                self._close_error = exc
                ended = True
                raise
            finally:
                self.closing_thread = 0
                if ended or not self.running:
                    # in _open_loops until here: the exit hook waits for a close
                    # under way, and finishes an interrupted one
                    _open_loops.discard(self)
                    self.done.set()

    def _drain_and_stop(self) -> None:
        portal = self.portal
        if portal is None or not self.running:
            return
        stopping = self.stopped is not None and self.stopped.is_set()
        try:
            if not stopping:
                portal.call(self.sink.aclose)
        finally:
            if not stopping:
                with contextlib.suppress(RuntimeError):  # the loop already stopped
                    assert self.stopped is not None
                    portal.call(self.stopped.set)
            self.ended.wait()
            self.thread.join()
        if stopping and self.sink._close_error is not None:
            # a close interrupted after the loop was told to stop: the drain
            # ended in the loop, and this is its outcome
            raise self.sink._close_error

    def collect(self, description: str) -> None:
        """The SyncSink was dropped unclosed: drain and close, as a file would."""
        if self.closed or self.sink._state == "forked":
            return
        warnings.warn(
            f"unclosed {description}: its frames were stored and it was closed when "
            "it was garbage collected; use `with SyncSink(...)` or call close()",
            ResourceWarning,
            stacklevel=2,
        )
        if threading.get_ident() == self.sink._loop_thread:
            # collected on its own loop: close from another thread (the exit hook
            # waits for it, if the interpreter ends first)
            threading.Thread(target=self._close_reporting, name="snapsink-close").start()
        else:
            self._close_reporting()

    def _close_reporting(self) -> None:
        try:
            self.close()
        except Exception as exc:
            _report(exc, "a SyncSink nobody closed")


#: loops of SyncSinks not closed yet
_open_loops: set[_LoopThread] = set()


def _report(exc: BaseException, what: str) -> None:
    # never swallowed: the frames of this sink may not all be stored
    traceback.print_exception(exc)
    print(f"snapsink: {what} could not be closed: {exc!r}", file=sys.stderr)


def _close_open_sinks() -> None:
    """Nothing silently lost: drain and commit sinks still open at exit."""
    if not _open_loops:
        return
    try:
        _join_other_threads()
    finally:  # even on a Ctrl-C while waiting for them
        for loop in list(_open_loops):
            try:
                loop.close()
            except Exception as exc:
                _report(exc, "a SyncSink still open at exit")


def _join_other_threads() -> None:
    """Wait for the threads Python waits for at exit, as it does right after
    the exit hooks: one may still be writing to a sink (the main thread ended
    first). Not the workers of concurrent.futures' executors: they end only in
    its exit hook, which runs after this one."""
    workers = concurrent.futures.thread._threads_queues
    process = sys.modules.get("concurrent.futures.process")
    managers = getattr(process, "_threads_wakeups", {})
    me, main = threading.current_thread(), threading.main_thread()
    while True:
        # again after each round: a thread joined may have started another
        waited = [
            t
            for t in threading.enumerate()
            if not t.daemon
            and t.is_alive()  # not one still starting: join() would refuse it
            and t is not me
            and t is not main
            and t not in workers
            and t not in managers
        ]
        if not waited:
            return
        for t in waited:
            t.join()


def _after_fork_in_child() -> None:
    _open_loops.clear()  # the parent's sinks; the child never closes them


# At exit, sinks drain before anything they rely on is torn down: before the
# executors of concurrent.futures stop taking work (zarr's store I/O runs on one;
# their hook is registered when that module is imported, and the hooks run last
# registered first) and before atexit's hooks run (weakref finalizers, which
# close a store's files). These hooks run before Python joins the non-daemon
# threads, so the hook joins them itself (_join_other_threads).
_register_atexit = getattr(threading, "_register_atexit", atexit.register)
_register_atexit(_close_open_sinks)
os.register_at_fork(after_in_child=_after_fork_in_child)


class SyncSink(ClosesOnExit):
    """A :class:`Sink` for ordinary loops, with the same arguments and semantics.

    The sink opens when created and closes at the end of a ``with`` block (or
    on :meth:`close`); frames still queued at interpreter exit are drained.

    Parameters
    ----------
    store, capacity, policy, schema, max_bytes, writer
        As for :class:`Sink`.

    Raises
    ------
    ConfigError
        For an invalid argument.
    StoreExistsError
        When the store exists and its mode is ``"x"``.

    Examples
    --------
    >>> with snapsink.SyncSink(snapsink.NpyDirectory("run")) as sink:  # doctest: +SKIP
    ...     for i in range(n):
    ...         sink.write({"positions": x}, step=i, time=i * dt)
    """

    _closing = "the sink"

    # Deliberate parallel of Sink.__init__ (_sink.py): each public class
    # declares and documents its own constructor; this one passes them on to Sink.
    def __init__(
        self,
        store: Any,
        capacity: int = 8,
        policy: str | Spill = "block",
        *,
        schema: Schema | Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
        writer: str = "auto",
    ):
        self._sink = Sink(
            store, capacity, policy, schema=schema, max_bytes=max_bytes, writer=writer
        )
        self._loop = _LoopThread(self._sink)
        self._loop.start()
        self._finalizer = weakref.finalize(self, self._loop.collect, repr(self))
        self._finalizer.atexit = False  # the exit hook closes it, earlier

    def __repr__(self) -> str:
        return f"SyncSink({self._sink._store!r}, writer={self._sink.writer!r})"

    def _check_caller(self) -> None:
        sink = self._sink
        if threading.get_ident() == sink._loop_thread:
            raise WrongThreadError(
                "SyncSink called from its own event-loop thread, which would deadlock; "
                "in async code use `async with snapsink.Sink(...)` and `await sink.write(...)`"
            )
        if sink._state == "forked":
            raise ClosedSinkError(sink._forked_message())
        if self._loop.closed:
            raise ClosedSinkError("the sink is closed; it takes no more frames")
        if not self._loop.running:
            raise ClosedSinkError("the sync sink's event-loop thread has stopped")

    def write(
        self,
        fields: object,
        *,
        step: int | None = None,
        time: float | None = None,
        copy: bool = True,
        stream: Any = None,
    ) -> None:
        """Write one frame; return once it is captured. See :meth:`Sink.write`.

        Raises
        ------
        SchemaError, DTypeError, WriterError, ClosedSinkError
            As for :meth:`Sink.write`.
        WrongThreadError
            When called from the sink's own event-loop thread.
        """
        # Deliberate parallel of SyncSink.write_nowait and Sink.write (_sink.py):
        # the OP / OP_nowait pair and the async sink each declare the same keywords.
        self._check_caller()
        sink = self._sink
        ch = sink._require_open()
        items = sink._validate(ch, fields, step, time)
        if ch.fifo_open:
            # a spill write under way: maybe this thread's, interrupted by the
            # signal handler calling us (the offer checks only the lock: the
            # async sink's loop thread holds the tickets its workers write)
            ch.raise_if_interrupted("write()")
        # Deliberate parallel of Sink.write's loop (_sink.py): the same offer
        # protocol, waited for here in the caller's thread, there on the loop.
        try:
            while True:
                outcome, entry = ch.offer(items, step, time, copy=copy, stream=stream)
                if outcome is Offer.QUEUED:
                    assert entry is not None
                    sink._queued_step = entry.step  # (see Sink.write)
                    return
                if outcome is Offer.DROPPED:
                    return
                if outcome is Offer.SPILL:
                    assert isinstance(entry, SpillTicket)
                    ch.spill_write(entry, items, stream)
                    sink._queued_step = entry.step
                    return
                # no room: wait here, in the caller's thread (not on the loop)
                waker = ThreadWaker()
                if ch.park_producer(waker, frame_nbytes(ch.schema, items)):
                    timeout = 0.25 if ch.poll_interval is None else ch.poll_interval
                    if not waker.event.wait(timeout):
                        ch.unpark_producer(waker)
                        if not self._loop.running:
                            raise WriterError("the sync sink's event-loop thread has died")
        except WrongThreadError:
            raise  # from a signal handler: the spill write is the interrupted one's
        except BaseException:
            # e.g. a KeyboardInterrupt anywhere after the offer handed this thread
            # a spill write: one left unsettled would hold every later one, and
            # the close, forever
            ch.abandon_spill()
            raise

    # Deliberate parallel of SyncSink.write and Sink.write_nowait (_sink.py): the
    # OP / OP_nowait pair and the async sink each declare the same keywords.
    def write_nowait(
        self,
        fields: object,
        *,
        step: int | None = None,
        time: float | None = None,
        copy: bool = True,
        stream: Any = None,
    ) -> None:
        """Write one frame if no waiting is needed; see :meth:`Sink.write_nowait`.

        Raises
        ------
        WouldBlock
            The channel is full and the policy would wait.
        """
        self._check_caller()
        self._sink.write_nowait(fields, step=step, time=time, copy=copy, stream=stream)

    def flush(self) -> None:
        """Wait until every frame written so far is stored, durable and visible.

        A close from another thread while this waits ends it as the close
        ends: it returns once the close has stored every frame, or raises the
        close's error (see :meth:`Sink.flush`).

        Raises
        ------
        WriterError
            The store failed (chained to the cause).
        ClosedSinkError
            The sink is closed (a close from another thread came first).
        """
        self._check_caller()
        self._raise_if_interrupted("SyncSink.flush()")
        assert self._loop.portal is not None
        try:
            self._loop.portal.call(self._sink.flush)
        except RuntimeError as exc:
            if isinstance(exc, SnapsinkError) or not self._loop.closed:
                raise
            # a close in another thread stopped the loop after the check above
            raise ClosedSinkError("the sink is closed; it takes no more flushes") from None

    def _raise_if_interrupted(self, what: str) -> None:
        """WrongThreadError for a call from a signal handler that interrupted
        this thread inside this sink (a write, or a close): it would wait for
        the interrupted call, which cannot go on until the handler returns."""
        ch = self._sink._channel
        if ch is not None:
            ch.raise_if_interrupted(what)
        if self._loop.closing_thread == threading.get_ident():
            raise WrongThreadError(
                f"{what} called from a signal handler that interrupted a close of the "
                "same sink, which cannot go on until the handler returns; raise an "
                "exception from the handler, or set a flag there and act on it in "
                "your loop"
            )

    def statistics(self) -> SinkStatistics:
        """See :meth:`Sink.statistics`."""
        return self._sink.statistics()

    @property
    def writer(self) -> str:
        """Who writes the store: ``"process"`` or ``"thread"``; see :attr:`Sink.writer`."""
        return self._sink.writer

    @property
    def schema(self) -> Schema | None:
        """The schema in force."""
        return self._sink.schema

    @property
    def last_step(self) -> int | None:
        """See :attr:`Sink.last_step`."""
        return self._sink.last_step

    @property
    def resumed(self) -> Resume | None:
        """See :attr:`Sink.resumed`."""
        return self._sink.resumed

    def close(self) -> None:
        """Drain, commit and close the store, then stop the loop thread. Idempotent.

        From any thread but the sink's own loop: a close called while another
        thread's close drains waits for it (and raises its error); one called
        after it is a no-op.

        Raises
        ------
        WriterError
            If the store failed during the run (chained to the cause).
        """
        if self._loop.done.is_set():
            return
        if threading.get_ident() == self._sink._loop_thread:
            raise WrongThreadError("SyncSink.close called from its own event-loop thread")
        self._raise_if_interrupted("SyncSink.close()")
        self._finalizer.detach()
        self._loop.close()
