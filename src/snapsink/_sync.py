"""SyncSink: the Sink for ordinary (non-async) loops.

One background thread runs an event loop that owns the async :class:`Sink`
(its consumer, its store calls). ``write`` does not hop to that loop: validation
and capture are thread-safe and run in the caller's thread, so a frame costs
no cross-thread round trip; only a full channel (``block``) makes the caller
wait. ``flush`` and ``close`` run on the loop through an anyio BlockingPortal.
"""

from __future__ import annotations

import atexit
import sys
import threading
import traceback
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal

from ._channel import SinkStatistics
from ._errors import ClosedSinkError, WrongThreadError
from ._schema import Schema
from ._sink import Sink
from ._spill import Spill

__all__ = ["SyncSink"]

_open_sinks: weakref.WeakSet[SyncSink] = weakref.WeakSet()


@atexit.register
def _close_open_sinks() -> None:
    """Nothing silently lost: drain and commit sinks still open at exit."""
    for sink in list(_open_sinks):
        try:
            sink.close()
        except Exception as exc:
            # never swallowed: the frames of this sink may not all be stored
            traceback.print_exception(exc)
            print(
                f"snapsink: a SyncSink still open at exit could not be closed: {exc!r}",
                file=sys.stderr,
            )


class SyncSink:
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
        self._closed = False
        self._portal: BlockingPortal | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run_loop, name="snapsink-sync-loop", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        _open_sinks.add(self)

    def _run_loop(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()

    async def _main(self) -> None:
        # The sink outside the portal: an error opening the store is raised as is
        # (not wrapped in the portal's exception group).
        async with self._sink, BlockingPortal() as portal:
            self._portal = portal
            self._stopped = anyio.Event()
            self._ready.set()
            await self._stopped.wait()

    def _check_caller(self) -> None:
        if threading.get_ident() == self._sink._loop_thread:
            raise WrongThreadError(
                "SyncSink called from its own event-loop thread, which would deadlock; "
                "in async code use `async with snapsink.Sink(...)` and `await sink.write(...)`"
            )
        if self._closed:
            raise ClosedSinkError("the sink is closed; it takes no more frames")
        if not self._thread.is_alive():
            raise ClosedSinkError("the sync sink's event-loop thread has stopped")

    def __enter__(self) -> SyncSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except BaseException as err:
            if exc is None:
                raise
            exc.add_note(f"snapsink: closing the sink also failed: {err!r}")

    def write(
        self,
        fields: Mapping[str, Any],
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
        self._check_caller()
        self._sink._write_blocking(fields, step, time, copy, stream, self._thread.is_alive)

    def write_nowait(
        self,
        fields: Mapping[str, Any],
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

        Raises
        ------
        WriterError
            The store failed (chained to the cause).
        """
        self._check_caller()
        assert self._portal is not None
        self._portal.call(self._sink.flush)

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

    def close(self) -> None:
        """Drain, commit and close the store, then stop the loop thread. Idempotent.

        Raises
        ------
        WriterError
            If the store failed during the run (chained to the cause).
        """
        if self._closed:
            return
        if threading.get_ident() == self._sink._loop_thread:
            raise WrongThreadError("SyncSink.close called from its own event-loop thread")
        self._closed = True
        _open_sinks.discard(self)
        portal = self._portal
        if portal is None or not self._thread.is_alive():
            return
        try:
            portal.call(self._sink.aclose)
        finally:
            try:
                portal.call(self._stopped.set)
            except RuntimeError:
                pass  # the loop already stopped
            self._thread.join()
