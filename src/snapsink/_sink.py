"""Sink: the producer's side of a sink, fed into a bounded channel.

Lifecycle: ``Sink(...)`` → ``async with`` starts the writer (a process, or a
thread of this process; see :mod:`snapsink._writer`), which opens the store →
``write``/``flush`` → leaving the block closes the channel; the writer stores
every accepted frame, commits and closes the store, and the block ends once
it has.

The writer runs outside the caller's tasks: a frame the sink has accepted under
``block`` or ``spill`` is stored even when the task that owns the sink is
cancelled (the close in ``__aexit__`` is shielded).

A close, once begun, is one drain in a worker thread (:meth:`Sink._drain`),
whatever happens to the task that began it: a close cancelled while it waits
(asyncio's ``task.cancel()`` passes anyio's shield) stops waiting, the drain
goes on, and the sink stays "closing" until a close sees it end, which takes
its outcome over (as an interrupted ``SyncSink.close`` leaves the next close
to finish it). So no close returns before the store has every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._channel import Channel
from ._channeltypes import (
    Offer,
    SinkStatistics,
    SpillTicket,
    check_capacity,
    check_policy,
    frame_nbytes,
)
from ._checks import positive_int
from ._errors import (
    ClosedSinkError,
    ConfigError,
    SchemaError,
    WouldBlock,
    WriterError,
    WrongThreadError,
)
from ._schema import Schema, StepClock, is_device_array
from ._spill import Spill, SpillDir
from ._store import Resume
from ._wakers import AsyncWaker, on_asyncio, thread_safe_scheduler
from ._writer.process import ProcessWriter, choose_writer
from ._writer.publish import ProcessChannel
from ._writer.thread import ThreadWriter

__all__ = ["Sink"]

_STORE_METHODS = ("open", "prepare", "append", "commit", "close")

#: sinks opened in this process (for the fork handler)
_live_sinks: weakref.WeakSet[Sink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    parent = os.getppid()
    for sink in list(_live_sinks):
        if sink._state != "new":
            sink._forget_after_fork(parent)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _caller_stream(items: list[tuple[str, Any, Any]], stream: Any) -> Any:
    """``stream``, or the calling thread's current stream of the first device value."""
    if stream is not None:
        return stream
    for _, _, value in items:
        if is_device_array(value):
            from ._staging.device import backend_for

            return backend_for(value).resolve_stream(None, value)
    return None


def _check_store(store: object) -> None:
    missing = [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]
    if missing:
        raise ConfigError(
            f"store: expected an object with the snapsink.Store methods "
            f"({', '.join(_STORE_METHODS)}), {type(store).__name__} lacks {', '.join(missing)}"
        )


def _check_schema(schema: object) -> Schema | None:
    if schema is None or isinstance(schema, Schema):
        return schema
    if isinstance(schema, Mapping):
        return Schema(schema)
    raise ConfigError(
        f"schema: expected a snapsink.Schema or a mapping, got {type(schema).__name__}"
    )


def _check_max_bytes(max_bytes: object) -> int | None:
    return positive_int(max_bytes, "max_bytes", optional=True)


def _nothing() -> None:
    """A callback that does nothing: scheduled to learn whether a loop still runs."""


def _label(store: Any) -> str:
    """The store as errors name it: its repr (a user store's repr may fail)."""
    try:
        return repr(store)
    except Exception:
        return type(store).__name__


def _close_failure(ch: Channel, writer: ThreadWriter | ProcessWriter) -> WriterError | None:
    """The WriterError a close ends with: the store failed during the run, or
    its closing did; None when every frame was stored and committed."""
    try:
        ch.raise_failure()
        close_exc = getattr(writer, "close_error", None)
        if close_exc is not None:
            raise WriterError(
                f"closing the store failed: {type(close_exc).__name__}: {close_exc}"
            ) from close_exc
    except WriterError as err:
        return err
    return None


class Sink:
    """An async consumer that writes frames to a store, fed from a bounded channel.

    Parameters
    ----------
    store
        Where frames go: :class:`~snapsink.HostMemory`, :class:`~snapsink.NpyDirectory`,
        :class:`~snapsink.ZarrStore`, or any object implementing :class:`~snapsink.Store`.
    capacity
        Frames the channel holds at most (queued or being written); host staging
        memory is bounded by ``capacity`` frames.
    policy
        What a frame that finds the channel full does: ``"block"`` (wait),
        ``"drop_newest"``, ``"drop_oldest"``, or ``snapsink.Spill(dir)``.
    schema
        The frames' fields (a :class:`~snapsink.Schema` or a mapping); inferred
        from the first frame when omitted. Ragged fields must be declared.
    max_bytes
        Optional bound on the bytes held in the channel, besides ``capacity``.
    writer
        Who runs the store: ``"process"``, a writer process of the sink's own
        (it shares no GIL with the simulation, and stores every frame whose
        ``write`` returned even if the simulation's process dies);
        ``"thread"``, a thread of this process; ``"auto"`` (default), the
        process for stores that can be rebuilt in one (NpyDirectory, ZarrStore
        on a local directory, any store with ``describe()``), else the thread
        (HostMemory, GPUBuffer, in-memory or remote zarr stores).

    Raises
    ------
    ConfigError
        For an invalid store, capacity, policy, schema, max_bytes or writer, or
        ``writer="process"`` with a store that cannot move to another process.

    Examples
    --------
    >>> async with snapsink.Sink(snapsink.HostMemory()) as sink:  # doctest: +SKIP
    ...     await sink.write({"positions": x, "energy": e}, step=i, time=t)
    """

    # Deliberate parallel of SyncSink.__init__ (_sync.py): each public class
    # declares and documents its own constructor; SyncSink passes its arguments on.
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
        _check_store(store)
        self._store = store
        self._capacity = check_capacity(capacity)
        self._policy = check_policy(policy)
        if isinstance(self._policy, str) and self._policy != "block" and (
            getattr(store, "needs_every_frame", False)
        ):
            raise ConfigError(
                f"policy: {store!r} needs every frame (each rank stores the same steps): "
                f"expected 'block' or snapsink.Spill(dir), got {policy!r}"
            )
        self._schema = _check_schema(schema)
        self._max_bytes = _check_max_bytes(max_bytes)
        self._spec = choose_writer(store, writer)
        self._resumed: Resume | None = None
        self._process: ProcessWriter | None = None
        self._channel: Channel | None = None
        # new -> opening -> open -> closing -> closed; "forked" in a child
        self._state = "new"
        self._forked_from = 0
        self._loop_thread = 0
        self._schedule: Callable[[Callable[[], object]], object] | None = None
        self._thread_writer: ThreadWriter | None = None
        #: set once __aenter__ has ended (opened or failed): a close waits for it
        self._opened: anyio.Event | None = None
        #: aclose() was called while the sink opened: __aenter__ closes it
        self._close_requested = False
        #: the drain runs once; a close that finds it under way waits on the lock
        self._drain_lock = threading.Lock()
        self._drain_done = False
        #: what the close raises (a WriterError: the store failed; or what the
        #: drain itself raised): every close that waited for it raises it too
        self._close_error: BaseException | None = None
        self._flush_waiters: list[tuple[int, anyio.Event]] = []
        #: the latest flush generation the writer acknowledged (committed)
        self._flushed_gen = 0
        #: the close drained the channel and the writer committed every frame
        #: (a flush the close ended returns on it)
        self._drained = False
        #: the step of the last frame a write queued or spilled (a dropped one is
        #: not): the Recorder marks a selection's systems stored only for it
        self._queued_step: int | None = None
        self._writes = 0
        #: the cheapest yield of the running backend (asyncio.sleep), or None
        self._yield: Callable[[float], Any] | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def __aenter__(self) -> Sink:
        """Open the store and start the writer.

        Raises
        ------
        ConfigError
            The sink was already opened (or closed).
        ClosedSinkError
            Another task called :meth:`aclose` while this opened: the sink
            was opened, then closed (its store complete and closed).
        """
        if self._state != "new":
            raise ConfigError("this Sink was already opened (or closed); create a new Sink")
        self._state = "opening"
        _live_sinks.add(self)
        self._loop_thread = threading.get_ident()
        self._schedule = thread_safe_scheduler()
        self._yield = asyncio.sleep if on_asyncio() else None
        self._opened = anyio.Event()
        try:
            await self._open()
        finally:
            self._opened.set()  # a close waiting for the open goes on
        if self._close_requested:
            # no task has the sink yet: close it here (with the close that asked)
            try:
                with anyio.CancelScope(shield=True):
                    await self.aclose()
            except Exception as err:
                raise ClosedSinkError(
                    "the sink was closed (aclose() in another task) while it opened, "
                    "and closing it failed; open a new Sink"
                ) from err
            raise ClosedSinkError(
                "the sink was closed (aclose() in another task) while it opened: it "
                "takes no frames; open a new Sink"
            )
        return self

    async def _open(self) -> None:
        # a declared schema the store cannot hold, and a spill directory that
        # cannot be used, fail before anything is opened
        check = getattr(self._store, "check_schema", None)
        if self._schema is not None and check is not None:
            try:
                check(self._schema)
            except BaseException:
                self._state = "closed"
                raise
        policy = self._policy
        spill = SpillDir(policy) if isinstance(policy, Spill) else None
        try:
            if self._spec is not None:
                await self._open_process(self._spec, spill)
            else:
                await self._open_thread(spill)
        except BaseException:
            if spill is not None:
                spill.close()
            self._state = "closed"
            raise

    def _resumed_clock(self, resume: Resume | None) -> tuple[Schema | None, StepClock]:
        """The schema and step clock after the store's ``open``; SchemaError when
        the declared schema differs from the stored one."""
        schema = self._schema
        self._resumed = resume
        if resume is None:
            return schema, StepClock()
        if resume.schema is not None:
            if schema is not None and schema != resume.schema:
                raise SchemaError(
                    f"schema: the store holds frames of {resume.schema!r}, "
                    f"but the sink declares {schema!r}; append with the stored schema"
                )
            schema = resume.schema
        return schema, StepClock(resume.last_step, resume.last_time, resume.times)

    async def _open_thread(self, spill: SpillDir | None) -> None:
        """Start the writer thread, which opens the store and then drains the channel."""
        writer = ThreadWriter(self._store, type(self._store).__name__)
        with anyio.CancelScope(shield=True):
            try:
                resume = await anyio.to_thread.run_sync(writer.start)
            except BaseException:
                # asyncio's task.cancel() passes the shield while the store opens:
                # close the store once its open ends (the cancel is delivered, so
                # this wait is not cancelled), not leave it open and locked
                await anyio.to_thread.run_sync(writer.abandon)
                raise
            try:
                schema, clock = self._resumed_clock(resume)
            except BaseException:
                await anyio.to_thread.run_sync(writer.abandon)
                raise
        ch = Channel(
            self._capacity,
            self._policy,
            max_bytes=self._max_bytes,
            schema=schema,
            clock=clock,
            spill_dir=spill,
            check_schema=getattr(self._store, "check_schema", None),
            wants_device=bool(getattr(self._store, "wants_device", False)),
        )
        ch.store_label = _label(self._store)
        self._connect(writer)
        writer.attach(ch)
        self._channel = ch
        self._thread_writer = writer
        self._state = "open"

    def _connect(self, writer: ThreadWriter | ProcessWriter) -> None:
        """Have ``writer``'s flush acknowledgements and failure wake flush waiters
        on the sink's loop."""
        assert self._schedule is not None
        schedule = self._schedule

        def flushed(gen: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                schedule(functools.partial(self._wake_flushers, gen))

        def failed() -> None:
            with contextlib.suppress(RuntimeError):
                schedule(functools.partial(self._wake_flushers, None))

        writer.on_flushed = flushed
        writer.on_failed = failed

    async def _open_process(self, spec: Any, spill: SpillDir | None) -> None:
        """Start the writer process, which opens the store; no consumer task here."""
        label = _label(self._store)
        writer = ProcessWriter(spec, label)
        try:
            with anyio.CancelScope(shield=True):
                resume = await anyio.to_thread.run_sync(
                    writer.start, None if spill is None else str(spill.path)
                )
            schema, clock = self._resumed_clock(resume)
        except BaseException:
            writer.abort()
            self._state = "closed"
            raise
        ch = ProcessChannel(
            self._capacity,
            self._policy,
            writer=writer,
            max_bytes=self._max_bytes,
            schema=schema,
            clock=clock,
            spill_dir=spill,
            check_schema=getattr(self._store, "check_schema", None),
        )
        ch.store_label = label
        self._connect(writer)
        writer.attach(ch)
        self._channel = ch
        self._process = writer
        self._state = "open"

    # Deliberate parallel of Recorder.__aexit__ (_recorder.py): each async context
    # manager declares the protocol's signature.
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        close_error: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        except BaseException as err:
            close_error = err
        if close_error is not None:
            if exc is None:
                raise close_error
            exc.add_note(f"snapsink: closing the sink also failed: {close_error!r}")
        return False

    async def aclose(self) -> None:
        """Close the channel, store every accepted frame, commit and close the store.

        Idempotent. Called by ``async with`` on exit. A close during another
        task's close waits for it, and raises its error; one cancelled while
        it waits leaves the close going on, and the next close waits for it
        (and raises its error). A close while another task opens the sink
        waits for the open, then closes the sink: that task's ``async with``
        raises ClosedSinkError.

        Raises
        ------
        WriterError
            If the store failed at any point of the run (chained to the cause).
        WrongThreadError
            Called on another event loop than the one that opened the sink,
            while that one runs (nothing is changed: close it there). Once that
            loop has ended, a close on another loop is taken.
        """
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        if self._state == "forked":
            return  # the parent's sink: not this process's to close
        self._check_close_loop()
        if self._state == "opening":
            # the opening task closes the sink once it is open; wait for that
            self._close_requested = True
            assert self._opened is not None  # set with "opening"
            await self._opened.wait()
            await self.aclose()
            return
        if self._state == "open":
            self._state = "closing"
            ch = self._channel
            assert ch is not None  # set with "open"
            ch.close()  # no more frames: parked producers wake to ClosedSinkError
        # The drain runs once, in a worker thread; a close that finds it under
        # way (or whose thread never started: cancelled first) waits on its lock.
        # Shielded, as the drain goes on anyway; asyncio's task.cancel() still
        # ends the wait: the sink then stays "closing" for the next close.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._drain)
        self._state = "closed"
        if self._close_error is not None:
            raise self._close_error

    def _drain(self) -> None:
        """Have the writer store every accepted frame, commit and close the
        store, then free the capture; once (blocking, in a worker thread)."""
        with self._drain_lock:
            if self._drain_done:
                return
            ch = self._channel
            writer: ThreadWriter | ProcessWriter | None = self._process or self._thread_writer
            assert ch is not None and writer is not None  # set with "open"
            try:
                try:
                    if isinstance(writer, ProcessWriter):
                        writer.close()
                    else:
                        writer.join()
                    # decided before the flushes wake: a flush waiting returns,
                    # or raises this error, on what the close did
                    self._close_error = _close_failure(ch, writer)
                    self._drained = True
                finally:
                    ch.release_capture()
            except BaseException as exc:  # raised by every close, not only this thread's
                if self._close_error is None:
                    self._close_error = exc
            finally:
                self._drain_done = True
            assert self._schedule is not None
            with contextlib.suppress(RuntimeError):  # the loop is gone: no flush waits
                self._schedule(functools.partial(self._wake_flushers, None))

    def _check_close_loop(self) -> None:
        """A close wakes tasks on the sink's event loop (a close or a flush
        waiting for it), which a close from another loop's thread would not wake:
        it raises WrongThreadError there, changing nothing. Once the sink's loop
        has ended (``asyncio.run`` returned), no task is left on it to wake: the
        loop that closes the sink takes it over, and its frames are stored."""
        if thread_safe_scheduler() == self._schedule:
            return
        assert self._schedule is not None
        try:
            self._schedule(_nothing)
        except RuntimeError:  # that loop is closed (trio: RunFinishedError)
            self._loop_thread = threading.get_ident()
            self._schedule = thread_safe_scheduler()
            return
        raise WrongThreadError(
            "this Sink was opened on another event loop, which still runs and is "
            "the one its close must wake: close it there (leave its `async with` "
            "block, or await sink.aclose() on that loop)"
        )

    def _check_loop(self) -> None:
        """Before a wait: the sink's wake-ups go to the event loop that opened it,
        so waiting on another one (after that one ended) would never end."""
        if thread_safe_scheduler() != self._schedule:
            raise WrongThreadError(
                "this Sink was opened on another event loop, which its wake-ups go "
                "to: a wait here (a flush, a write waiting for room) would never end; "
                "open the sink (async with Sink(...)) on the loop that uses it"
            )

    def _require_open(self) -> Channel:
        ch = self._channel
        if self._state != "open" or ch is None:
            if self._state == "forked":
                raise ClosedSinkError(self._forked_message())
            if self._state in ("closing", "closed"):
                if ch is not None and ch.failure is not None:
                    ch.raise_if_unusable()
                raise ClosedSinkError("the sink is closed; it takes no more frames")
            if self._state == "opening":
                raise ClosedSinkError(
                    "the sink is still opening: use it once its `async with` has entered"
                )
            raise ClosedSinkError("the sink is not open: use it as `async with Sink(...) as sink:`")
        return ch

    # -- producers -----------------------------------------------------------------
    def _validate(
        self, ch: Channel, fields: object, step: object, time: object
    ) -> list[tuple[str, Any, Any]]:
        schema = ch.schema
        if schema is None:
            # the first frame fixes the schema: a frame refused for its step or
            # time must not (the offer checks them again, under the lock)
            ch.clock.check(step, time)
            schema = ch.ensure_schema(fields)
        label = (
            step
            if isinstance(step, int)
            else (0 if ch.clock.last_step is None else ch.clock.last_step + 1)
        )
        return schema.validate(fields, label)

    # Deliberate parallel of Sink.write_nowait and SyncSink.write (_sync.py): the
    # OP / OP_nowait pair and the sync facade each declare the same keywords,
    # documented with each method.
    async def write(
        self,
        fields: object,
        *,
        step: int | None = None,
        time: float | None = None,
        copy: bool = True,
        stream: Any = None,
    ) -> None:
        """Write one frame; return once it is captured.

        When this returns, the caller may overwrite its host arrays, or enqueue
        work that overwrites its device arrays on its stream: the stored frame
        holds the values at the time of the call.

        Parameters
        ----------
        fields
            ``{name: array or scalar}``, every field of the schema. Device arrays
            (CuPy, PyTorch CUDA tensors, JAX GPU arrays) are copied on a CUDA
            copy stream. Nested state (nested mappings, dataclasses, NamedTuples,
            lists of arrays, JAX pytrees) is stored as fields named by their
            path, ``params.w`` (see "Nested state" in the sinks guide).
        step
            A strictly increasing int; default: the previous step + 1 (0 first).
        time
            Optional finite, non-decreasing float; given on every frame or on none.
        copy
            ``False`` borrows the arrays instead of capturing a copy: the caller
            promises not to modify them until the frame is written. For device
            arrays the device-to-host copy then reads them directly and the
            caller's stream never waits (always safe for immutable JAX arrays).
        stream
            The CUDA stream the device arrays were produced on (default: the
            current stream).

        Raises
        ------
        SchemaError, DTypeError
            Bad input: nothing is written and the sink stays usable.
        WriterError
            The store failed earlier (chained to the cause).
        ClosedSinkError
            The sink is closed.
        """
        ch = self._require_open()
        # Every write yields to the loop before it offers the frame, whatever the
        # outcome (as anyio's send does): a store or task on the loop is never
        # starved by a producer whose only await is write. A cancellation there
        # leaves nothing written. anyio's checkpoint costs ~2.5 us against ~1.7 us
        # for a bare asyncio yield, so the full cancel check runs every 32nd write
        # (and at every wait below).
        self._writes += 1
        if not self._writes & 31 or self._yield is None:
            await anyio.lowlevel.checkpoint()
        else:
            await self._yield(0)
        items = self._validate(ch, fields, step, time)
        # Deliberate parallel of SyncSink.write's loop (_sync.py): the same offer
        # protocol, waited for here on the event loop and there in the caller's
        # thread; one shared loop would put a generator or callbacks on the
        # per-frame path.
        while True:
            outcome, entry = ch.offer(items, step, time, copy=copy, stream=stream)
            if outcome is Offer.QUEUED:
                assert entry is not None
                self._queued_step = entry.step
                return
            if outcome is Offer.DROPPED:
                return
            if outcome is Offer.SPILL:
                assert isinstance(entry, SpillTicket)
                # The current CUDA stream is per thread: resolve it here, not in the worker.
                stream = _caller_stream(items, stream)
                # Shielded: the frame is accepted, so it must be written. (run_sync
                # checks for cancellation before it starts the thread: unshielded, a
                # pending cancel would leave the entry unready and stall the consumer.)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(ch.spill_write, entry, items, stream)
                self._queued_step = entry.step
                return
            self._check_loop()
            assert self._schedule is not None
            waker = AsyncWaker(self._loop_thread, self._schedule)
            if ch.park_producer(waker, frame_nbytes(ch.schema, items)):
                try:
                    if ch.poll_interval is None:
                        await waker.event.wait()
                    else:
                        # a writer process's wake-up flag may be missed: look again soon
                        with anyio.move_on_after(ch.poll_interval):
                            await waker.event.wait()
                except BaseException:
                    ch.unpark_producer(waker)
                    raise
                if not waker.event.is_set():
                    ch.unpark_producer(waker)

    # Deliberate parallel of Sink.write and SyncSink.write_nowait (_sync.py): the
    # OP / OP_nowait pair and the sync facade each declare the same keywords.
    def write_nowait(
        self,
        fields: object,
        *,
        step: int | None = None,
        time: float | None = None,
        copy: bool = True,
        stream: Any = None,
    ) -> None:
        """Write one frame if that needs no waiting.

        Same as :meth:`write`, but never waits: under ``"block"`` (and under a
        Spill policy, whose disk write would wait) a full channel raises
        :class:`~snapsink.WouldBlock`, and nothing is written.

        Raises
        ------
        WouldBlock
            The channel is full and the policy would wait.
        SchemaError, DTypeError, WriterError, ClosedSinkError
            As for :meth:`write`.
        """
        ch = self._require_open()
        items = self._validate(ch, fields, step, time)
        outcome, entry = ch.offer(items, step, time, copy=copy, stream=stream, nowait=True)
        if outcome is Offer.QUEUED:
            assert entry is not None
            self._queued_step = entry.step
        elif outcome is not Offer.DROPPED:
            raise WouldBlock(
                f"the channel is full ({ch.capacity} frames) and policy {ch.policy_name!r} "
                "would wait; use `await sink.write(...)` or a drop policy"
            )

    # -- flush & statistics ----------------------------------------------------------
    # Deliberate parallel of the ASE recording's flush (integrations/ase.py):
    # each public flush documents its own errors.
    async def flush(self) -> None:
        """Wait until every frame written before this call is stored, committed
        (durable, for disk stores) and visible to readers.

        A close by another task while this waits ends it too: the close
        stores and commits every frame, so the flush returns (or raises the
        close's error).

        Raises
        ------
        WriterError
            The store failed, or closing it did (chained to the cause).
        ClosedSinkError
            The sink is closed, or a close that did not finish (it failed
            before the store had every frame) ended this flush.
        """
        ch = self._require_open()
        self._check_loop()
        gen = ch.request_flush()
        event = anyio.Event()
        self._flush_waiters.append((gen, event))
        try:
            await event.wait()
        finally:
            if (gen, event) in self._flush_waiters:
                self._flush_waiters.remove((gen, event))
        ch.raise_failure()
        if gen <= self._flushed_gen:
            return  # the writer committed it
        # woken by a close: every frame is committed if it drained
        if isinstance(self._close_error, WriterError):
            raise self._close_error
        if not self._drained:
            raise ClosedSinkError(
                "the sink was closed while this flush waited, and the close did not "
                "finish (it was interrupted): frames written before the flush may "
                "not be stored"
            )

    def statistics(self) -> SinkStatistics:
        """Counters: written, dropped, spilled, queued, peak_queued, bytes_written."""
        if self._state == "forked":
            raise ClosedSinkError(self._forked_message())
        if self._channel is None:
            return SinkStatistics(
                0, 0, 0, 0, 0, 0, self._capacity, Channel.policy_label(self._policy)
            )
        return self._channel.statistics()

    def _forget_after_fork(self, parent: int) -> None:
        """In a forked child: this copy of the sink is unusable (its threads and
        the locks they held did not come along). Every call raises; nothing waits."""
        self._state = "forked"
        self._forked_from = parent

    def _forked_message(self) -> str:
        return (
            f"this sink belongs to process {self._forked_from}; a copy of it in a "
            "forked child cannot be used (open a new sink in the child)"
        )

    @property
    def writer(self) -> str:
        """Who writes the store: ``"process"`` or ``"thread"`` (what ``"auto"`` chose)."""
        return "thread" if self._spec is None else "process"

    @property
    def schema(self) -> Schema | None:
        """The schema in force (declared, resumed, or inferred from the first frame)."""
        return self._channel.schema if self._channel is not None else self._schema

    @property
    def last_step(self) -> int | None:
        """The step of the last frame the sink accepted (or that the store held
        when it opened to append); None before any. The next write's step must
        be greater."""
        ch = self._channel
        if ch is not None:
            return ch.clock.last_step
        return None if self._resumed is None else self._resumed.last_step

    @property
    def resumed(self) -> Resume | None:
        """What the store held when the sink opened it to append (``mode="a"``):
        its frame count, last step and time; None for a new store (or before
        the sink is open)."""
        return self._resumed

    # -- flush acknowledgements ----------------------------------------------------
    def _wake_flushers(self, done_gen: int | None) -> None:
        """Wake the flushes that ``done_gen`` covers (None: all, at a close or
        a failure); on the sink's loop only."""
        if done_gen is not None and done_gen > self._flushed_gen:
            self._flushed_gen = done_gen
        keep = []
        for gen, event in self._flush_waiters:
            if done_gen is None or gen <= done_gen:
                event.set()
            else:
                keep.append((gen, event))
        self._flush_waiters = keep
