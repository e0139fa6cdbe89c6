"""Spill under failure: a spill write that fails takes nothing; a spilled
backlog costs constant memory; what a killed sink spilled is stored (writer
process) or cleaned up by the next sink (thread); an unusable spill directory
is a ConfigError at open.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from conftest import GatedStore
from process_stores import GatedNpy
from snapsink import ConfigError, Spill, SpillError, SyncSink

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent


def _frame(i: int) -> dict[str, Any]:
    return {"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}


def _segments(root: Path) -> list[Path]:
    return sorted(root.rglob("*.seg"))


class _FailingPwritev:
    """os.pwritev raising ``err`` for files under ``root`` while armed."""

    def __init__(self, root: Path, err: int):
        self.root = str(root.resolve())
        self.err = err
        self.armed = False
        self.real = os.pwritev

    def __call__(self, fd: int, bufs: Any, offset: int) -> int:
        if self.armed and os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            # a partial write first, as a disk filling up mid-frame gives
            self.real(fd, [bytes(100)], offset)
            raise OSError(self.err, os.strerror(self.err))
        return self.real(fd, bufs, offset)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_failed_spill_write_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    gate = tmp_path / "gate"
    store: Any = (
        GatedStore()
        if writer == "thread"
        else GatedNpy(str(tmp_path / "run"), str(gate))
    )
    fault = _FailingPwritev(tmp_path / "spill", errno.ENOSPC)
    monkeypatch.setattr(os, "pwritev", fault)
    with SyncSink(store, capacity=1, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(4):
            sink.write(_frame(i), step=i)  # one in memory (or being appended), the rest spill
        assert sink.statistics().spilled >= 2
        spilled = sink.statistics().spilled
        (seg,) = _segments(tmp_path / "spill")
        size = seg.stat().st_size
        fault.armed = True
        with pytest.raises(SpillError) as info:
            sink.write(_frame(4), step=4)
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        assert isinstance(info.value.__cause__, OSError)
        assert "step can be written again" in str(info.value)
        assert seg.stat().st_size == size  # nothing of the frame stays on disk
        assert sink.statistics().spilled == spilled  # nor is it counted
        fault.armed = False
        sink.write(_frame(4), step=4)  # the step was given back
        sink.write(_frame(5), step=5)
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(6))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(6)]).tobytes()
    assert not _segments(tmp_path / "spill")


def test_a_full_spill_disk_takes_nothing_and_the_sink_goes_on(tiny_fs: Path) -> None:
    store = GatedStore()
    big = {"x": np.ones((64, 64))}  # 32 KiB
    with SyncSink(store, capacity=1, policy=Spill(tiny_fs)) as sink:
        step = 0
        with pytest.raises(SpillError) as info:
            for step in range(200):  # 6 MiB: far past 1 MiB
                sink.write({"x": big["x"] * step}, step=step)
        assert info.value.errno == errno.ENOSPC
        failed_at = step
        store.gate.set()
        sink.flush()  # the spilled backlog drains
        sink.write({"x": big["x"] * failed_at}, step=failed_at)  # the same step again
    traj = store.trajectory()
    assert traj.steps.tolist() == list(range(failed_at + 1))
    for i in (0, failed_at // 2, failed_at):
        assert traj["x"][i].tobytes() == (big["x"] * i).tobytes()


@pytest.mark.parametrize(
    "writer",
    [
        "thread",
        pytest.param(
            "process",
            marks=pytest.mark.xfail(
                strict=False,
                reason=(
                    "open defect: in 2 of about 8 full-suite runs under load, the writer "
                    "process found a published spilled frame missing while draining this "
                    "20,000-frame backlog at close (not reproduced alone, 40+ runs)"
                ),
            ),
        ),
    ],
)
def test_a_spilled_backlog_costs_constant_memory(tmp_path: Path, writer: str) -> None:
    gate = tmp_path / "gate"
    store: Any = (
        GatedStore()
        if writer == "thread"
        else GatedNpy(str(tmp_path / "run"), str(gate))
    )
    small = {"e": 1.0}
    with SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(2000):
            sink.write({"e": float(i)}, step=i)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2000, 22000):
                small["e"] = float(i)
                sink.write(small, step=i)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert sink.statistics().spilled >= 21000
        # 20,000 more spilled frames: was ~950 bytes each (19 MB); now counters
        assert grown < 256 << 10, f"{grown} bytes for 20,000 spilled frames"
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(22000))
    assert traj["e"][:].tolist() == [float(i) for i in range(22000)]
    assert not (tmp_path / "spill").exists() or not list((tmp_path / "spill").iterdir())


_KILLED_PRODUCER = """
import os, signal, sys, numpy as np, snapsink
sys.path.insert(0, {tests!r})
from process_stores import SlowNpy
store = SlowNpy({run!r}, delay=0.02)
sink = snapsink.SyncSink(store, capacity=2, policy=snapsink.Spill({spill!r}), writer={writer!r})
for i in range(60):
    sink.write({{"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}}, step=i)
print(sink.statistics().spilled, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_producer_spilled_is_stored_by_its_writer(tmp_path: Path) -> None:
    """Writer process: every frame whose write returned is stored, spilled ones
    included, after the producer is SIGKILLed; no spill file is left."""
    code = _KILLED_PRODUCER.format(
        tests=str(HERE.parent), run=str(tmp_path / "run"), spill=str(tmp_path / "spill"),
        writer="process",
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert int(done.stdout.split()[0]) > 10  # frames had spilled
    deadline = time.monotonic() + 60
    while any((tmp_path / "spill").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer drains, in its own session
    assert not list((tmp_path / "spill").iterdir())
    time.sleep(0.2)  # its last commit
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(60))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(60)]).tobytes()


def test_the_next_sink_removes_what_a_killed_sink_left(tmp_path: Path) -> None:
    """Thread writer: a SIGKILL leaves spill files; the next sink on the same
    directory removes them, and never a live sink's or a user's files."""
    spill = tmp_path / "spill"
    code = _KILLED_PRODUCER.format(
        tests=str(HERE.parent), run=str(tmp_path / "run"), spill=str(spill), writer="thread"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = _segments(spill)
    assert left, "the killed sink left spilled frames"
    (spill / "notes.txt").write_text("mine")
    live_store = GatedStore()
    with SyncSink(live_store, capacity=1, policy=Spill(spill)) as live:
        for i in range(5):
            live.write({"e": float(i)}, step=i)  # this sink spills too
        assert all(not p.exists() for p in left)  # the dead sink's files are gone
        mine = _segments(spill)
        assert mine
        with SyncSink(snapsink.HostMemory(), policy=Spill(spill)):
            pass  # a third sink must not touch the live one's files
        assert all(p.exists() for p in mine)
        live_store.gate.set()
    assert (spill / "notes.txt").read_text() == "mine"
    assert live_store.trajectory().steps.tolist() == list(range(5))


def test_an_unusable_spill_dir_is_a_config_error_at_open(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="Spill dir: expected a directory"):
        SyncSink(snapsink.NpyDirectory(tmp_path / "run"), policy=Spill(a_file))
    assert not (tmp_path / "run").exists()  # nothing was opened
    assert a_file.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            SyncSink(snapsink.HostMemory(), policy=Spill(ro))


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_closing_with_spilled_frames_stores_them_all(tmp_path: Path, writer: str) -> None:
    gate = tmp_path / "gate"
    store: Any = (
        GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    )
    with SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(30):
            sink.write(_frame(i), step=i)
        assert sink.statistics().spilled >= 25
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
        # no flush: the close drains the spill queue
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(30))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(30)]).tobytes()
