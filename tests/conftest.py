"""Shared test helpers: stores that are slow, gated or failing, on purpose."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import snapsink
from snapsink import Batch, HostMemory


class GatedStore(HostMemory):
    """HostMemory whose append waits for ``gate`` (so tests control the pace).

    ``entered`` is set each time an append starts; ``batches`` records the
    size of every batch the sink handed over.
    """

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.commits = 0

    def append(self, batch: Batch) -> None:
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        self.batches.append(len(batch.frames))
        super().append(batch)

    def commit(self) -> None:
        self.commits += 1

    async def wait_entered(self) -> None:
        """Wait (without sleeping) until an append has started."""
        await anyio.to_thread.run_sync(self.entered.wait, 10)
        assert self.entered.is_set()


class FailingStore(HostMemory):
    """HostMemory whose n-th append (1-based), commit or prepare raises OSError."""

    def __init__(self, fail_append_at: int | None = 1, fail_commit: bool = False):
        super().__init__()
        self.fail_append_at = fail_append_at
        self.fail_commit = fail_commit
        self.appends = 0
        self.closed = False

    def append(self, batch: Batch) -> None:
        self.appends += 1
        if self.fail_append_at is not None and self.appends >= self.fail_append_at:
            raise OSError(28, "No space left on device (injected)")
        super().append(batch)

    def commit(self) -> None:
        if self.fail_commit:
            raise OSError(5, "Input/output error (injected)")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def gated() -> GatedStore:
    store = GatedStore()
    yield store
    store.gate.set()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


__all__ = ["FailingStore", "GatedStore", "snapsink"]


# -- the `slow` marker: soak tests run only when asked for ----------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run @pytest.mark.slow tests"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `pytest -m slow` (any -m naming slow) or `--runslow` runs them; otherwise skip.
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow soak test: run with --runslow or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """A 1 MiB tmpfs, if this process may mount one (root on Linux)."""
    mnt = Path(tempfile.mkdtemp(prefix="snapsink-enospc-"))
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is None or proc.returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=10)
        mnt.rmdir()


def wait_for_orphaned_writer(path: str | Path, timeout: float = 60.0) -> None:
    """Wait until the writer process of a simulation that died (or was killed)
    has stored what it was handed, committed and let go of the NpyDirectory at
    ``path``: the store opens for appending then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            snapsink.SyncSink(snapsink.NpyDirectory(path, mode="a"), writer="thread").close()
            return
        except snapsink.StoreLockedError:
            assert time.monotonic() < deadline, "the writer never finished"
            time.sleep(0.02)
