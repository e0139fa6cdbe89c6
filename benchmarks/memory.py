"""Peak memory against run length: each store's peak RSS after N and 10 x N frames.

Every run is a fresh process that streams frames of ``--frame-kib`` float32 (plus
a float scalar, with steps and times) through ``Sink(store, capacity=8,
policy="block")`` and reports its peak RSS (``VmHWM`` from /proc/self/status). The disk stores
should print a ratio of ~1.00 (staging is bounded by the channel capacity, the
stores hold at most one block per array); HostMemory, which keeps every frame
in RAM, is the contrast that shows what growth looks like. Only the producer
process is measured: a disk store's writer process (``writer="auto"``), where
the store's blocks live, is not counted.

    python benchmarks/memory.py [--frames N] [--frame-kib K] [--json PATH | --save]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

DEFAULT_JSON = Path(__file__).parent / "results" / "memory-cpu.json"
STORES = ("npy", "zarr", "zarr+zstd1", "host")

_CHILD = """
import sys
import anyio, numpy as np
import snapsink

kind, n, floats, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
frame = np.zeros(floats, np.float32)

def make():
    if kind == "npy":
        return snapsink.NpyDirectory(path)
    if kind == "zarr":
        return snapsink.ZarrStore(path)
    if kind == "zarr+zstd1":
        import zarr.codecs
        return snapsink.ZarrStore(path, compressors=zarr.codecs.ZstdCodec(level=1))
    return snapsink.HostMemory()

async def main():
    async with snapsink.Sink(make(), capacity=8, policy="block") as sink:
        for i in range(n):
            frame[:8] = i
            await sink.write({"x": frame, "e": float(i)}, step=i, time=0.5 * i)

anyio.run(main)
# VmHWM, not ru_maxrss: a child forked from a big parent inherits the parent's
# ru_maxrss across exec, while VmHWM belongs to this process image alone.
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])  # KiB
print(peak)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def peak_rss_kib(kind: str, frames: int, floats: int, directory: str) -> int:
    with _common.scratch(f"snapsink-mem-{kind}-", directory) as path:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, kind, str(frames), str(floats),
             os.path.join(path, "store")],
            capture_output=True, text=True, env=_env(), check=True,
        )
    return int(out.stdout.split()[-1])


def run(frames: int = 1000, frame_kib: float = 64.0, directory: str | None = None,
        stores: tuple[str, ...] = STORES) -> dict[str, Any]:
    floats = int(frame_kib * 1024) // 4
    directory = directory or os.getcwd()
    rows = {}
    for kind in stores:
        small = peak_rss_kib(kind, frames, floats, directory)
        big = peak_rss_kib(kind, 10 * frames, floats, directory)
        rows[kind] = {
            "peak_rss_mib_1x": small / 1024,
            "peak_rss_mib_10x": big / 1024,
            "ratio_10x_1x": big / small,
            "growth_mib": (big - small) / 1024,
        }
    return {
        "benchmark": "memory",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "frames_1x": frames,
        "frames_10x": 10 * frames,
        "frame_bytes": floats * 4,
        "bytes_written_1x": frames * floats * 4,
        "bytes_written_10x": 10 * frames * floats * 4,
        "capacity": 8,
        "stores": rows,
        "bound": "disk stores: 10x peak <= 1.05 x 1x peak + 4 MiB (tests/test_memory_bound.py)",
    }


def print_table(r: dict[str, Any]) -> None:
    mb = r["frame_bytes"] / 1e6
    print(f"peak RSS, {r['frames_1x']} vs {r['frames_10x']} frames of {r['frame_bytes'] // 1024} "
          f"KiB ({r['frames_1x'] * mb:.0f} MB vs {r['frames_10x'] * mb:.0f} MB written), "
          f"sink capacity {r['capacity']}")
    print(f"{'store':<14}{'1x (MiB)':>10}{'10x (MiB)':>11}{'10x/1x':>9}{'growth':>10}")
    for kind, row in r["stores"].items():
        print(f"{kind:<14}{row['peak_rss_mib_1x']:>10.1f}{row['peak_rss_mib_10x']:>11.1f}"
              f"{row['ratio_10x_1x']:>9.3f}{row['growth_mib']:>9.1f}M")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--frame-kib", type=float, default=64.0)
    parser.add_argument("--dir", default=None, help="where the stores go (default: the CWD)")
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--json", type=Path, default=None,
                       help="where the result goes (default: nowhere)")
    where.add_argument("--save", action="store_true",
                       help=f"write it over the recorded results/{DEFAULT_JSON.name}")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("peak RSS is read from /proc/self/status (Linux only)")
    result = run(args.frames, args.frame_kib, args.dir, tuple(args.stores))
    # only when asked: a trial run used to overwrite the results the docs render
    return _common.finish(result, print_table, DEFAULT_JSON if args.save else args.json)


if __name__ == "__main__":
    main()
