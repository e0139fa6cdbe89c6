"""Bounded memory: a sink's peak RSS does not grow with the number of frames.

Each run is a fresh subprocess that streams N (then 10 x N) frames of 64 KiB
through ``Sink(store, capacity=8, policy="block")`` and reports its peak RSS
(``VmHWM`` from /proc/self/status), and its writer process's after the last
frame was committed (the disk stores' default writer is a process, with a
memory of its own). Both must stay within ``RSS_REL`` + ``RSS_ABS`` of the 1x
run: staging is the channel's slots, NpyDirectory writes through ``pwritev`` (no
memory map, so written data never counts as RSS), ZarrStore buffers at most one
block per array (uncompressed; a compressed store's encode pipeline takes
longer than the 1x run to fill: see benchmarks/memory.py's notes). HostMemory
keeps every frame; it is the positive control showing that the check sees a
growth of that size.

Slack: 5 % of the 1x peak (about 100 MiB, mostly numpy, zarr and anyio) plus
4 MiB absorbs what is not per-frame state but differs from run to run: malloc
arenas of the worker threads (a run may start one more thread), and which
pages of freed buffers glibc gives back. A per-frame leak of even 2 KiB adds
5.3 MiB over the 2,700 extra frames of the 10x run, 64 KiB adds 170 MiB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

N = 300
FRAME_FLOATS = 16384  # 64 KiB of float32
RSS_REL = 0.05
RSS_ABS_KIB = 4 * 1024

_CHILD = """
import sys
import anyio, numpy as np
import snapsink

kind, n, path, floats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
frame = np.zeros(floats, np.float32)

def make():
    if kind == "npy":
        return snapsink.NpyDirectory(path)
    if kind == "zarr":
        return snapsink.ZarrStore(path)
    return snapsink.HostMemory()

def vmhwm(pid="self"):
    # VmHWM, not ru_maxrss: a child forked from a big parent inherits the parent's
    # ru_maxrss across exec, while VmHWM belongs to this process image alone.
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])  # KiB

def children():
    import os
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += f.read().split()
    return pids

async def main():
    store = make()
    async with snapsink.Sink(store, capacity=8, policy="block") as sink:
        for i in range(n):
            frame[:8] = i
            await sink.write({"x": frame, "e": float(i)}, step=i, time=0.5 * i)
        await sink.flush()  # every frame appended and committed by the writer
        kids = children()
        assert len(kids) == (0 if kind == "host" else 1), kids
        writer = sum(vmhwm(pid) for pid in kids)
    return store, writer

store, writer = anyio.run(main)
peak = vmhwm()
if kind == "host":
    assert len(store) == n
else:
    traj = snapsink.open(path)
    assert len(traj) == n and int(traj["x"][n - 1][0]) == n - 1 and traj.steps[-1] == n - 1
print(peak, writer)
"""

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="reads VmHWM from /proc (Linux only)"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = "error"
    return env


def _peaks(tmp_path: Path, kinds: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """Peak RSS (KiB) of a fresh process per (store, frames), and of its writer
    process (0 for a thread writer) after the last frame's commit; run side by side."""
    procs = {}
    for kind in kinds:
        for n in (N, 10 * N):
            path = str(tmp_path / f"{kind}-{n}")
            procs[kind, n] = subprocess.Popen(
                [sys.executable, "-c", _CHILD, kind, str(n), path, str(FRAME_FLOATS)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
    peaks = {}
    for key, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, f"{key}: child failed:\n{err}"
        producer, writer = out.strip().splitlines()[-1].split()
        peaks[key] = int(producer), int(writer)
    return peaks


def _bound(peak_1x: int) -> int:
    return int(peak_1x * (1 + RSS_REL)) + RSS_ABS_KIB


@pytest.mark.timeout(60)
def test_peak_rss_is_independent_of_the_number_of_frames(tmp_path: Path) -> None:
    peaks = _peaks(tmp_path, ["npy", "zarr", "host"])
    for kind in ("npy", "zarr"):
        for who, i in (("the simulation", 0), ("the writer process", 1)):
            small, big = peaks[kind, N][i], peaks[kind, 10 * N][i]
            assert small > 0, (kind, who, peaks)
            assert big <= _bound(small), (
                f"{kind}: {who}'s peak RSS {big / 1024:.1f} MiB after {10 * N} frames, "
                f"{small / 1024:.1f} MiB after {N}: memory grows with the run"
            )
    # The positive control: HostMemory keeps 9 x N more frames (~170 MiB), so
    # the same check must flag it. Its writer is a thread of the simulation.
    small, big = peaks["host", N][0], peaks["host", 10 * N][0]
    assert big > _bound(small) + 100 * 1024, (small, big)
    assert peaks["host", N][1] == peaks["host", 10 * N][1] == 0
