"""The thread writer: a sink's consumer in a thread of the sink's own process.

For stores that cannot move to a writer process (HostMemory, GPUBuffer, zarr
memory or remote stores, objects of the caller's making) or when asked for
(``writer="thread"``). The thread opens the store, runs the
:class:`~snapsink._consumer.Consumer` fed by the channel, and closes the store:
every store call, blocking or async, runs in this one thread (async ones on
its own event loop), so the store never competes for the simulation's loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._channel import Channel
from .._consumer import ChannelFeed, Consumer
from .._store import Resume

__all__ = ["ThreadWriter"]


class ThreadWriter:
    """Runs one sink's store in a thread; the sink's side of it.

    :meth:`start` (blocking) opens the store in the thread; :meth:`attach`
    hands it the channel to drain, or :meth:`abandon` has it close the store
    unused; :meth:`join` waits for the end (the channel closed and drained,
    the store committed and closed).
    """

    def __init__(self, store: Any, label: str):
        self.store = store
        self.label = label
        self.on_flushed: Callable[[int], None] = lambda gen: None
        self.on_failed: Callable[[], None] = lambda: None
        #: an error closing the store (the run's own errors fail the channel)
        self.close_error: BaseException | None = None
        self._channel: Channel | None = None
        self._opened = threading.Event()
        self._go = threading.Event()
        self._resume: Resume | None = None
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"snapsink-writer {label}", daemon=True
        )

    def start(self) -> Resume | None:
        """Open the store in the writer thread; return its Resume, or raise what
        opening raised."""
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error
        return self._resume

    def attach(self, channel: Channel) -> None:
        """Start draining ``channel``."""
        self._channel = channel
        self._go.set()

    def abandon(self) -> None:
        """Close the store without running (the sink could not start); blocking."""
        self._go.set()
        self._thread.join()

    def join(self) -> None:
        self._thread.join()

    def _main(self) -> None:
        consumer = Consumer(self.store)
        try:
            self._resume = consumer.open()
        except BaseException as exc:
            self._open_error = exc
            consumer.call.close()
            self._opened.set()
            return
        self._opened.set()
        self._go.wait()
        ch = self._channel
        try:
            if ch is not None:
                consumer.feed = ChannelFeed(ch, self.on_flushed)
                try:
                    consumer.run()
                except BaseException as exc:
                    ch.fail(exc)
                    self.on_failed()
        finally:
            try:
                consumer.close()
            except Exception as exc:
                self.close_error = exc
