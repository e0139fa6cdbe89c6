"""The consumer: takes batches of frames, appends them to the store, commits.

One loop for both runners of a sink's store:

- the **thread writer** (:mod:`snapsink._writer.thread`) runs it in a thread of
  the sink's process, fed by the :class:`~snapsink._channel.Channel`
  (:class:`ChannelFeed`);
- the **writer process** (:mod:`snapsink._writer._child`) runs it in its main
  thread, fed by the shared-memory ring.

A :class:`Feed` says what is there to store; :class:`Consumer` decides the order
of store calls: ``prepare`` once before the first batch, ``append`` per batch,
``commit`` when a flush is due, when the store's ``commit_seconds`` timer falls
due while nothing comes (:meth:`Consumer.run`), and at the end, then ``close``. Store methods
that are coroutine functions run on the consumer's own event loop
(:class:`StoreCaller`), never on the simulation's: a simulation that computes
on its event loop cannot starve its store.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._channel import Channel
from ._channeltypes import Entry
from ._schema import Batch, Schema
from ._store import Resume
from ._wakers import ThreadWaker

__all__ = ["ChannelFeed", "Consumer", "Feed", "StoreCaller"]

#: how long an idle thread consumer sleeps before it looks again on its own
DRAIN_TICK = 0.02
#: while a store's background work runs, the consumer looks for frames this often
IDLE_SLICE = 0.001


class StoreCaller:
    """Calls store methods in the consumer's thread: a blocking method directly,
    a coroutine function on an event loop of the consumer's own (asyncio, as
    zarr-python needs), the same loop for every call.

    The loop is driven with ``run_until_complete``, not :class:`asyncio.Runner`:
    a Runner in the main thread (the writer process's consumer) swaps the
    SIGINT handler at every call, four signal calls per append, a tenth of a
    small frame's cost. The writer process ignores SIGINT anyway, and a thread
    has no handler to swap.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(method(*args, **kwargs))
        return method(*args, **kwargs)

    def close(self) -> None:
        """Cancel what is left on the loop, as :meth:`asyncio.Runner.close` does, and close it."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


class Feed(Protocol):
    """What a consumer stores, and whom it tells."""

    @property
    def schema(self) -> Schema | None:
        """The frames' schema (None until the first frame fixes it)."""

    @property
    def times(self) -> bool:
        """Whether frames carry times."""

    def take(self) -> Batch | None:
        """The next batch (frames and dropped steps), or None if nothing is ready."""

    def stored(self) -> None:
        """The batch from the last :meth:`take` is appended: free what held it."""

    def flush_due(self) -> int | None:
        """A flush generation whose frames are all appended, or None."""

    def flushed(self, gen: int) -> None:
        """Flush ``gen`` is committed."""

    def finished(self) -> bool:
        """Nothing more will come."""

    def wait(self, timeout: float | None = None) -> None:
        """Nothing to do now: wait a while (at most ``timeout`` seconds), or
        until woken."""


class Consumer:
    """Runs a store for one sink, fed by ``feed`` (set before :meth:`run`)."""

    def __init__(self, store: Any, feed: Feed | None = None):
        self.store = store
        self.feed = feed
        self.call = StoreCaller()
        self.prepared = False

    def open(self) -> Resume | None:
        resume: Resume | None = self.call(self.store.open)
        return resume

    def prepare(self) -> None:
        feed = self.feed
        assert feed is not None
        if not self.prepared and feed.schema is not None:
            self.call(self.store.prepare, feed.schema, times=feed.times)
            self.prepared = True

    def commit(self) -> None:
        self.prepare()
        if self.prepared:
            self.call(self.store.commit)

    def run(self) -> None:
        """Store everything the feed brings, committing flushes, until it is
        finished; then commit. A store error propagates.

        A store commits on its own (``commit_every``, ``commit_seconds``) only
        in ``append``; when nothing comes, the store's ``commit_due_in()`` (see
        :class:`~snapsink.Store`) bounds the wait, and the commit it asks for
        runs here. Asked only when there is nothing to store: nothing per frame.
        """
        feed = self.feed
        assert feed is not None
        store = self.store
        due_in: Callable[[], float | None] | None = getattr(store, "commit_due_in", None)
        if inspect.iscoroutinefunction(due_in):
            raise TypeError(
                f"{store!r}: commit_due_in must be a plain method (the writer asks it "
                "between store calls, without awaiting), not a coroutine function"
            )
        timed = False  # a timed commit ran since the last wait
        while True:
            batch = feed.take()
            if batch is not None:
                self.prepare()
                self.call(store.append, batch)
                feed.stored()
                timed = False
                continue
            gen = feed.flush_due()
            if gen is not None:
                self.commit()
                feed.flushed(gen)
                continue
            if feed.finished():
                break
            if getattr(store, "background", False):
                # Nothing to store: let the store's background work (a commit
                # ZarrStore started in append) go on, since its loop runs only
                # while the store is called; a slice at a time, so that new
                # frames are taken as soon as they come (the store's work is in
                # its threads; its loop only starts each next step).
                self.call(store.settle, IDLE_SLICE)
                continue
            due = due_in() if due_in is not None and self.prepared else None
            if due is not None and due <= 0:
                if not timed:
                    # commit_seconds passed with frames uncommitted and none
                    # coming: commit them now, not at some later append
                    timed = True
                    self.commit()
                    continue
                # still due right after a commit: a store that cannot commit
                # more now (never spin on it; ask again after the feed's tick)
                due = None
            feed.wait(due)
            timed = False
        if getattr(store, "commits_on_close", False):
            # its close commits in the same pass (one round of fsyncs and one
            # metadata write fewer, at the close the simulation waits for)
            self.prepare()
        else:
            self.commit()

    def close(self) -> None:
        """Close the store (and the consumer's event loop)."""
        try:
            self.call(self.store.close)
        finally:
            self.call.close()


class ChannelFeed:
    """A channel as the thread consumer sees it (runs in the consumer's thread)."""

    def __init__(self, ch: Channel, on_flushed: Callable[[int], None]):
        self.ch = ch
        self.on_flushed = on_flushed
        self.appended_seq = 0  # the last seq the store has appended
        self.done_gen = 0  # the last flush generation committed
        self._entries: Sequence[Entry] = ()
        self._upto = 0
        self._small = False  # the last batch was small: wait for a batch's worth
        # Small frames wake the consumer a batch at a time (it also looks every
        # DRAIN_TICK seconds); a frame of 256 KiB or more at once: its append
        # (a copy of 256 KiB, tens of microseconds) outweighs a thread wake-up
        # (a few microseconds), and starting its I/O early is worth it.
        ch.batch_wakeups(max(1, ch.batch_limit // 2), 256 << 10)

    @property
    def schema(self) -> Schema | None:
        return self.ch.schema

    @property
    def times(self) -> bool:
        return bool(self.ch.clock.has_times)

    def take(self) -> Batch | None:
        ch = self.ch
        if self._small:
            self._small = False
            waker = ThreadWaker()
            if ch.park_consumer(waker, self.appended_seq, self.done_gen, batch=True):
                waker.event.wait(DRAIN_TICK)
        entries, dropped, upto = ch.take()
        if not entries and not dropped:
            self.appended_seq = max(self.appended_seq, upto)
            return None
        for e in entries:
            if e.spill:
                ch.read_spilled(e)
            elif e.completion is not None and not e.completion.done():
                e.completion.synchronize()
        self._entries = entries
        self._upto = upto
        return Batch(list(entries), dropped)  # entries are Frames

    def stored(self) -> None:
        ch = self.ch
        entries, self._entries = self._entries, ()
        ch.release(entries)
        ch.remove_stored_spills()
        self._small = len(entries) < ch.wake_frames and (
            sum(e.size for e in entries) < ch.wake_bytes
        )
        self.appended_seq = max(self.appended_seq, self._upto)

    def flush_due(self) -> int | None:
        gen, target = self.ch.flush_request()
        return gen if gen > self.done_gen and self.appended_seq >= target else None

    def flushed(self, gen: int) -> None:
        self.done_gen = gen
        self.on_flushed(gen)

    def finished(self) -> bool:
        return self.ch.finished()

    def wait(self, timeout: float | None = None) -> None:
        waker = ThreadWaker()
        if self.ch.park_consumer(waker, self.appended_seq, self.done_gen):
            waker.event.wait(DRAIN_TICK if timeout is None else min(DRAIN_TICK, timeout))
