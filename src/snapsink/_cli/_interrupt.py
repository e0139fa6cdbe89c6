"""SIGTERM raised as an interrupt, so that every command cleans up after
``timeout``, a batch scheduler or ``kill`` as it does after Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "handling", "raise_terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a batch scheduler, ``kill``), raised as an interrupt:
    every path that cleans up after Ctrl-C cleans up after it."""


def raise_terminated(signum: int, frame: Any) -> None:
    # once: `timeout` sends it twice (to this process, then to its group), and a
    # second one would cut short the clean-up the first started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextlib.contextmanager
def handling(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """``handlers`` installed for the block (only the main thread can)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
