"""Stores for the writer-process tests (imported by the writer process too).

They are NpyDirectory subclasses that describe themselves, so the writer
process rebuilds them; a gate and a fault are files, which both processes see.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import snapsink
from snapsink import Batch
from snapsink._store import StoreSpec


def _pass_gate(gate: str) -> None:
    """Create ``<gate>.entered``, then wait for ``gate`` to exist (30 s at most)."""
    Path(gate + ".entered").touch()
    deadline = time.monotonic() + 30
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError("test gate never opened")
        time.sleep(0.001)


class _GateNpy(snapsink.NpyDirectory):
    """An NpyDirectory with a gate file, which a writer process rebuilds as it is
    (its subclasses choose the method the gate holds up)."""

    def __init__(self, path: str, gate: str, **kw: Any):
        super().__init__(path, **kw)
        self.gate = gate
        self.kw = kw

    def describe(self) -> StoreSpec:
        return StoreSpec(type(self), (os.path.abspath(self.path), self.gate), self.kw)


class GatedNpy(_GateNpy):
    """Each append first creates ``<gate>.entered``, then waits for ``gate`` to exist."""

    def append(self, batch: Batch) -> None:
        _pass_gate(self.gate)
        super().append(batch)


class FailingNpy(snapsink.NpyDirectory):
    """The ``fail_at``-th append (1-based) and every later one raises ENOSPC."""

    def __init__(self, path: str, fail_at: int = 1, **kw: Any):
        super().__init__(path, **kw)
        self.fail_at = fail_at
        self.appends = 0
        self.kw = kw

    def describe(self) -> StoreSpec:
        return StoreSpec(FailingNpy, (os.path.abspath(self.path), self.fail_at), self.kw)

    def append(self, batch: Batch) -> None:
        self.appends += 1
        if self.appends >= self.fail_at:
            raise OSError(28, "No space left on device (injected)")
        super().append(batch)


class SlowNpy(snapsink.NpyDirectory):
    """Each append first sleeps ``delay`` seconds (a slow disk)."""

    def __init__(self, path: str, delay: float = 0.01, **kw: Any):
        super().__init__(path, **kw)
        self.delay = delay
        self.kw = kw

    def describe(self) -> StoreSpec:
        return StoreSpec(SlowNpy, (os.path.abspath(self.path), self.delay), self.kw)

    def append(self, batch: Batch) -> None:
        time.sleep(self.delay)
        super().append(batch)


class TokenNpy(snapsink.NpyDirectory):
    """The ``k``-th append (from 0) waits for the file ``<tokens>/<k>``, or for
    ``<tokens>/open``, after which none waits."""

    def __init__(self, path: str, tokens: str, **kw: Any):
        super().__init__(path, **kw)
        self.tokens = tokens
        self.appends = 0
        self.kw = kw

    def describe(self) -> StoreSpec:
        return StoreSpec(TokenNpy, (os.path.abspath(self.path), self.tokens), self.kw)

    def append(self, batch: Batch) -> None:
        token = os.path.join(self.tokens, str(self.appends))
        opened = os.path.join(self.tokens, "open")
        deadline = time.monotonic() + 30
        while not (os.path.exists(token) or os.path.exists(opened)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"test token {token} never came")
            time.sleep(0.0005)
        self.appends += 1
        super().append(batch)


class OpenGatedNpy(_GateNpy):
    """Its ``open`` first creates ``<gate>.entered``, then waits for ``gate`` to exist."""

    def open(self) -> snapsink.Resume | None:
        _pass_gate(self.gate)
        return super().open()


class CloseGatedNpy(_GateNpy):
    """Its ``close`` first creates ``<gate>.entered``, then waits for ``gate`` to exist."""

    def close(self) -> None:
        _pass_gate(self.gate)
        super().close()
