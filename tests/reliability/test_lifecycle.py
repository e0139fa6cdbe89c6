"""A SyncSink's life outside the ``with`` block: interpreter exit, garbage
collection, and a fork of the process that holds it.

- still open at normal interpreter exit: drained and committed, both stores,
  both writer kinds; an error closing it is printed, never swallowed;
- dropped unclosed: drained and closed by its finalizer, with a ResourceWarning,
  and its threads end;
- forked while busy: the child's copy raises ClosedSinkError for every call and
  never hangs, and it does not hold the writer's socket.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from conftest import GatedStore

pytestmark = pytest.mark.timeout(120)

STORES = {
    "npy": "snapsink.NpyDirectory",
    "zarr": "snapsink.ZarrStore",
}


def _frame(i: int) -> np.ndarray:
    return np.arange(16, dtype=np.float64) * 0.5 + i


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("store", sorted(STORES))
def test_open_sink_at_exit_is_drained_and_committed(
    tmp_path: Path, store: str, writer: str
) -> None:
    path = tmp_path / f"run.{store}"
    code = (
        "import numpy as np, snapsink\n"
        f"s = snapsink.SyncSink({STORES[store]}({str(path)!r}), capacity=4, writer={writer!r})\n"
        "for i in range(100):\n"
        "    s.write({'v': np.arange(16, dtype=np.float64) * 0.5 + i}, step=i)\n"
        # no close: the interpreter exits with frames still queued
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert "could not be closed" not in done.stderr, done.stderr
    traj = snapsink.open(path)
    assert traj.steps.tolist() == list(range(100))
    assert traj["v"][:].tobytes() == np.stack([_frame(i) for i in range(100)]).tobytes()


def test_an_error_closing_at_exit_is_printed(tmp_path: Path) -> None:
    code = (
        "import snapsink\n"
        "class Failing(snapsink.HostMemory):\n"
        "    def commit(self):\n"
        "        raise OSError(28, 'No space left on device')\n"
        "s = snapsink.SyncSink(Failing())\n"
        "s.write({'v': 1.0}, step=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "a SyncSink still open at exit could not be closed" in done.stderr
    assert "No space left on device" in done.stderr


def _loop_threads() -> int:
    return sum(t.name == "snapsink-sync-loop" for t in threading.enumerate())


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_dropped_unclosed_sink_is_closed_by_its_finalizer(
    tmp_path: Path, writer: str
) -> None:
    before = _loop_threads()

    def run() -> None:
        sink = snapsink.SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer=writer)
        for i in range(50):
            sink.write({"v": _frame(i)}, step=i)
        # dropped here, unclosed

    with pytest.warns(ResourceWarning, match="unclosed SyncSink"):
        run()  # the last reference goes when it returns
    gc.collect()
    assert _loop_threads() == before
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(50))
    assert traj["v"][49].tobytes() == _frame(49).tobytes()


_FORK_SCRIPT = r"""
import os, signal, sys, time
import numpy as np, snapsink
sys.path.insert(0, {tests!r})
from process_stores import SlowNpy

class Slow(snapsink.HostMemory):
    def append(self, batch):
        time.sleep(0.002)  # keeps the sink busy: forks land while it works
        super().append(batch)

writer = {writer!r}
store = Slow() if writer == "thread" else SlowNpy({run!r}, delay=0.002)
frame = lambda i: np.arange(16, dtype=np.float64) * 0.5 + i
children = []
with snapsink.SyncSink(store, capacity=2, writer=writer) as sink:
    for i in range(200):
        sink.write({{"v": frame(i)}}, step=i)
        if i % 10 == 5:
            pid = os.fork()
            if pid == 0:  # the child: every call raises at once
                code = 0
                try:
                    signal.alarm(10)  # a hang fails the child
                    for call in (
                        sink.statistics,
                        sink.flush,
                        lambda: sink.write({{"v": frame(0)}}, step=10**6),
                        lambda: sink.write_nowait({{"v": frame(0)}}, step=10**6),
                    ):
                        try:
                            call()
                            code = 3
                        except snapsink.ClosedSinkError as exc:
                            if "forked child" not in str(exc):
                                code = 4
                    if writer == "process" and sink._sink._process.wire is not None:
                        code = 5  # the writer's socket must not live on here
                    sink.close()  # not this process's sink: a no-op
                except BaseException:
                    code = 6
                os._exit(code)
            children.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
traj = store.trajectory() if writer == "thread" else snapsink.open({run!r})
ok = traj["v"][:].tobytes() == np.stack([frame(i) for i in range(200)]).tobytes()
print(codes, traj.steps.tolist() == list(range(200)), ok)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_forked_copy_refuses_every_call_and_never_hangs(tmp_path: Path, writer: str) -> None:
    # in a fresh interpreter: the test process has threads of its own (JAX's)
    code = _FORK_SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[1]), run=str(tmp_path / "run"), writer=writer
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{[0] * 20} True True", done.stdout + done.stderr


_FORK_MID_COMMIT = """
import os, sys, time
import numpy as np, snapsink
import snapsink.stores._npycommit as commit
replace = commit.replace_atomically
def slow(*args, **kwargs):  # the background commit lasts 0.5 s: the fork lands in it
    time.sleep(0.5)
    return replace(*args, **kwargs)
commit.replace_atomically = slow
sink = snapsink.SyncSink(
    snapsink.NpyDirectory({run!r}, commit_every=2, commit_seconds=None), writer="thread"
)
for i in range(3):
    sink.write({{"x": np.full(4, float(i))}}, step=i)
time.sleep(0.2)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the store's finalizer runs in the child
t0 = time.monotonic()
while not os.waitpid(pid, os.WNOHANG)[0]:
    if time.monotonic() - t0 > 20:
        os.kill(pid, 9)
        print("the child hung at its exit")
        break
    time.sleep(0.02)
sink.close()
print(snapsink.open({run!r}).steps.tolist())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_background_commit_exits(tmp_path: Path) -> None:
    """The child's copy of the store's finalizer waited for the parent's commit,
    whose thread the child does not have: the child hung at its exit."""
    code = _FORK_MID_COMMIT.format(run=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2]", done.stdout + done.stderr


class _GatedFailing(GatedStore):
    """Its appends wait for the gate, then fail."""

    def append(self, batch: Any) -> None:
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        raise OSError(28, "No space left on device (injected)")


async def test_an_aclose_during_another_tasks_aclose_raises_its_error() -> None:
    """Two tasks close one Sink while its store fails: the one that finds the
    close under way waits for it and raises the same WriterError (it returned
    quietly, as if every frame were stored)."""
    store = _GatedFailing()
    sink = snapsink.Sink(store)
    await sink.__aenter__()
    await sink.write({"x": _frame(0)}, step=0)
    await store.wait_entered()
    errors: dict[str, BaseException | None] = {}

    async def close(name: str) -> None:
        try:
            await sink.aclose()
            errors[name] = None
        except snapsink.WriterError as exc:
            errors[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(close, "first")
        await anyio.sleep(0.05)  # the first close is draining
        tg.start_soon(close, "second")
        await anyio.sleep(0.05)
        store.gate.set()
    assert isinstance(errors["first"], snapsink.WriterError)
    assert errors["second"] is errors["first"]
    assert "No space left on device" in str(errors["second"])
