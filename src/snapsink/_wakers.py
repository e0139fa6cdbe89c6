"""Wakers: how a party that waits for the channel is woken, one kind per way of
waiting, and the event loop's thread-safe scheduling they need.

The channel's methods never wait (see :mod:`snapsink._channel`): a producer
that must wait for room, or the consumer for frames, hands the channel a
:class:`Waker` and waits on it in its own way. A :class:`ThreadWaker` wakes a
thread (the sync facade's caller, the thread consumer); an :class:`AsyncWaker`
wakes a task on the sink's event loop from whichever thread frees the room.
Kept apart from the channel, which only calls ``wake``, and from the sink,
which only makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

import anyio

__all__ = ["AsyncWaker", "ThreadWaker", "Waker", "on_asyncio", "thread_safe_scheduler"]


class Waker:
    """Something a waiting party can be woken through; see module docstring."""

    __slots__ = ()

    def wake(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ThreadWaker(Waker):
    """Wakes a thread blocked in ``threading.Event.wait``."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


def thread_safe_scheduler() -> Callable[[Callable[[], object]], object]:
    """A function that runs a callback on the current event loop from any thread."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # pragma: no cover - exercised only where trio is installed
        import trio  # type: ignore[import-not-found]

        return trio.lowlevel.current_trio_token().run_sync_soon  # type: ignore[no-any-return]


class AsyncWaker(Waker):
    """Wakes a task waiting on the sink's event loop, from any thread."""

    __slots__ = ("event", "loop_thread", "schedule")

    def __init__(self, loop_thread: int, schedule: Callable[[Callable[[], object]], object]):
        self.event = anyio.Event()
        self.loop_thread = loop_thread
        self.schedule = schedule

    def wake(self) -> None:
        if threading.get_ident() == self.loop_thread:
            self.event.set()
        else:
            # a loop that is gone has no waiter left to wake (the sink refuses
            # to wait on another); its error must not kill the waking thread
            with contextlib.suppress(RuntimeError):
                self.schedule(self.event.set)


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (else trio's, through anyio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
