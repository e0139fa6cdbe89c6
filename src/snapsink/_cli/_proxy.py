"""A Store wrapper for the command line: times the store's work, carries dropped steps.

``convert`` uses it to hand the source's dropped steps to the destination (a
Sink only records the steps its own policy drops). ``demo`` no longer uses it:
wrapping a store changes the sink's code path (its methods become coroutines),
so the demo times the user's path, ``SyncSink(store)``, from the outside.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio.to_thread

from .._schema import Batch, Schema
from .._store import Resume

__all__ = ["TimedStore"]


class TimedStore:
    """Forwards the :class:`~snapsink.Store` protocol to ``inner``.

    Every method is a coroutine function: a blocking store method runs in a
    worker thread (as the sink itself would run it), an async one is awaited.

    Attributes
    ----------
    busy
        Seconds spent in ``prepare``, ``append``, ``commit`` and ``close``: the
        store's work, whether the producer waited for it or not. Blocking
        methods are timed in the worker thread; async ones around the await.
    """

    def __init__(self, inner: Any, dropped_steps: Iterable[int] = ()):
        self.inner = inner
        self.busy = 0.0
        self._dropped = sorted(int(s) for s in dropped_steps)
        self._prepared = False

    async def _run(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            # Includes any wait for the event loop: an upper bound of the work.
            t0 = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.busy += time.perf_counter() - t0
        call = functools.partial(self._timed, method, *args, **kwargs)
        return await anyio.to_thread.run_sync(call)

    def _timed(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Timed in the worker thread: the store's work, not the wait for the loop.
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            self.busy += time.perf_counter() - t0

    async def open(self) -> Resume | None:
        out: Resume | None = await self._run(self.inner.open)
        self.busy = 0.0  # claiming the location is not the I/O of the frames
        return out

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        await self._run(self.inner.prepare, schema, times=times)
        self._prepared = True

    async def append(self, batch: Batch) -> None:
        if self._dropped:
            merged = sorted({*batch.dropped_steps, *self._dropped})
            batch = Batch(batch.frames, merged)
            self._dropped = []
        await self._run(self.inner.append, batch)

    async def commit(self) -> None:
        if self._dropped and self._prepared:
            # No frame came (an empty source): the dropped steps still go in.
            await self.append(Batch([], []))
        await self._run(self.inner.commit)

    async def close(self) -> None:
        await self._run(self.inner.close)
