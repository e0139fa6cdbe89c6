"""A store for the spill tests that stores one batch per token the test hands
out, in the sink's process or in its writer process (a token is a file, which
both see; the writer process imports this module by name)."""

from __future__ import annotations

import os
import time
from typing import Any

import snapsink
from snapsink import Batch
from snapsink._store import StoreSpec


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
