"""The writer process's ring: a counter one process stores is never read torn
by the other (issue 11: ``struct.pack_into`` zero-fills before it packs, and a
``done`` read as 0 had spilled frames published twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import snapsink
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
