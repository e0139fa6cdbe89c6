"""Small-frame rate: frames of three float64 scalars through Sink and SyncSink.

Prints frames/s for the async API and the sync facade into HostMemory, next to
a baseline measured in the same run: appending the same frames to Python lists
(the cheapest thing a simulation loop could possibly do), and writes JSON.

    python benchmarks/small_frames.py [--frames N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import anyio

import snapsink


def _baseline(n: int) -> float:
    a: list[float] = []
    b: list[float] = []
    c: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        a.append(1.0 * i)
        b.append(2.0)
        c.append(3.0)
    return n / (time.perf_counter() - t0)


def _async_rate(n: int, capacity: int) -> float:
    store = snapsink.HostMemory()

    async def main() -> float:
        async with snapsink.Sink(store, capacity=capacity) as sink:
            t0 = time.perf_counter()
            for i in range(n):
                await sink.write({"e": 1.0 * i, "t": 2.0, "p": 3.0})
            await sink.flush()
            return n / (time.perf_counter() - t0)

    rate = anyio.run(main)
    assert len(store) == n
    return rate


def _sync_rate(n: int, capacity: int) -> float:
    store = snapsink.HostMemory()
    with snapsink.SyncSink(store, capacity=capacity) as sink:
        t0 = time.perf_counter()
        for i in range(n):
            sink.write({"e": 1.0 * i, "t": 2.0, "p": 3.0})
        sink.flush()
        rate = n / (time.perf_counter() - t0)
    assert len(store) == n
    return rate


def run(frames: int = 200_000, capacity: int = 4096, repeats: int = 3) -> dict[str, Any]:
    """Best of ``repeats`` runs of each variant, measured in one process."""
    base = max(_baseline(frames) for _ in range(repeats))
    arate = max(_async_rate(frames, capacity) for _ in range(repeats))
    srate = max(_sync_rate(frames, capacity) for _ in range(repeats))
    return {
        "benchmark": "small_frames",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "frames": frames,
        "capacity": capacity,
        "async_frames_per_s": arate,
        "sync_frames_per_s": srate,
        "list_append_frames_per_s": base,
        "async_vs_list_append": arate / base,
        "sync_vs_list_append": srate / base,
        "targets": {"async_frames_per_s": 100_000, "sync_frames_per_s": 30_000},
    }


def _row(label: str, rate: float, ratio: float, target: str) -> str:
    return f"{label:<26}{rate:>14,.0f}{ratio:>16.3f}{target:>12}"


def print_table(r: dict[str, Any]) -> None:
    print(f"small frames (3 x float64), {r['frames']} frames, capacity {r['capacity']}")
    print(f"{'variant':<26}{'frames/s':>14}{'vs list.append':>16}{'target':>12}")
    base = r["list_append_frames_per_s"]
    print(_row("list.append (baseline)", base, 1.0, ""))
    print(_row("Sink (async)", r["async_frames_per_s"], r["async_vs_list_append"], ">= 100,000"))
    print(_row("SyncSink", r["sync_frames_per_s"], r["sync_vs_list_append"], ">= 30,000"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--capacity", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.frames, args.capacity, args.repeats)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
