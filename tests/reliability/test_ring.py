"""The writer process's ring: a counter one process stores is never read torn
by the other (issue 11: ``struct.pack_into`` zero-fills before it packs, and a
``done`` read as 0 had spilled frames published twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from conftest import wait_for_orphaned_writer
from process_stores import GatedNpy
from snapsink._writer import _shm

pytestmark = pytest.mark.timeout(60)

#: stores 1, 2, 3, ... into DONE for a second, then the last value into TAIL
_STORES = """
import sys, time
from snapsink._writer import _shm
ring = _shm.Ring(int(sys.argv[1]), 16, 0)
end = time.monotonic() + float(sys.argv[2])
value = 0
while time.monotonic() < end:
    for _ in range(1000):
        value += 1
        ring.set(_shm.DONE, value)
ring.set(_shm.TAIL, value)
"""


def test_a_counter_stored_by_one_process_is_never_read_torn_by_the_other() -> None:
    ring = _shm.Ring.create(16, 0)
    env = dict(os.environ)
    src = str(Path(snapsink.__file__).resolve().parents[1])  # the snapsink under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _STORES, str(ring.fd), "1.0"], pass_fds=[ring.fd], env=env
        )
        reads = went_back = 0
        last = 0
        example: tuple[int, int] | None = None
        try:
            while proc.poll() is None:
                for _ in range(1000):
                    value = ring.get(_shm.DONE)
                    if value < last:  # a counter that only grows, seen smaller: torn
                        went_back += 1
                        example = example or (last, value)
                    last = max(last, value)
                reads += 1000
        finally:
            proc.wait(timeout=30)
        assert proc.returncode == 0
        final = ring.get(_shm.TAIL)
        assert final > 1000 and ring.get(_shm.DONE) == final  # it stored, we read
        assert went_back == 0, (
            f"{went_back} of {reads} reads saw the counter go back (e.g. {example[0]} "
            f"then {example[1]})"
            if example
            else ""
        )
    finally:
        ring.close()


# -- a stall under a drop policy: one run in the ring's header, no message per drop -----
def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + 20
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.001)


def test_drops_past_a_full_ring_cost_one_run_and_no_message(tmp_path: Path) -> None:
    """While the store stalls, drops fill the ring (a record each); every drop
    after that extends one run, kept in the ring's header: no message to the
    writer per drop (a system call in write(), and memory queued in the writer
    for each), and every dropped step reaches the store."""
    gate = str(tmp_path / "gate")
    n = 5000
    store = GatedNpy(str(tmp_path / "run"), gate)
    with snapsink.SyncSink(store, capacity=2, policy="drop_newest", writer="process") as sink:
        ch: Any = sink._sink._channel
        sent: list[str] = []
        send = ch.writer.send

        def counting(msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
            sent.append(msg[0])
            send(msg, fds)

        try:
            sink.write({"v": np.zeros(2)}, step=0)
            _wait_for_file(gate + ".entered")  # step 0 is being written, and stalls
            ch.writer.send = counting
            for i in range(1, n):
                sink.write({"v": np.full(2, float(i))}, step=i)
            assert ch.nrecords < n  # the ring filled up
            assert "dropped" not in sent
            assert len(ch.pending_dropped) == 1  # what waits in this process: one run
            ring = ch.ring
            start, stop = ring.get(_shm.DROPS_FROM), ring.get(_shm.DROPS_TO)
            assert 2 < start < stop == n  # shown to the writer, should this process die
            assert sink.statistics().dropped == n - 2
        finally:
            Path(gate).touch()
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [0, 1]
    assert traj["v"][:, 0].tolist() == [0.0, 1.0]
    assert traj.dropped_steps.tolist() == list(range(2, n))


_KILLED_IN_A_STALL = """
import os, signal, sys, time
import numpy as np, snapsink
sys.path.insert(0, sys.argv[3])
from process_stores import GatedNpy
path, gate, n = sys.argv[1], sys.argv[2], int(sys.argv[4])
s = snapsink.SyncSink(GatedNpy(path, gate), capacity=1, policy="drop_newest", writer="process")
s.write({"v": np.zeros(2)}, step=0)
while not os.path.exists(gate + ".entered"):
    time.sleep(0.001)
for i in range(1, n):
    s.write({"v": np.full(2, float(i))}, step=i)
print(s.statistics().dropped, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_drops_kept_in_the_ring_header_reach_the_store_when_the_simulation_dies(
    tmp_path: Path,
) -> None:
    """The run of drops the ring had no room for is in the ring's header: the
    writer records it when the simulation's process dies (SIGKILL), as the
    drops on the ring and the frames it was handed."""
    path, gate, n = str(tmp_path / "run"), str(tmp_path / "gate"), 3000
    env = dict(os.environ)
    src = str(Path(snapsink.__file__).resolve().parents[1])  # the snapsink under test
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    tests = str(Path(__file__).resolve().parents[1])
    # (its output read as a line: the writer, gated, holds the pipe after it died)
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_IN_A_STALL, path, gate, tests, str(n)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        dropped = proc.stdout.readline()
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert int(dropped) == n - 1
    Path(gate).touch()  # the orphaned writer stores what it was handed, commits, exits
    wait_for_orphaned_writer(path, timeout=30)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [0]
    assert traj.dropped_steps.tolist() == list(range(1, n))
