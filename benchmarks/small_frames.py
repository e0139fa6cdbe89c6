"""Small-frame rate: frames of three float64 scalars through Sink and SyncSink.

Prints frames/s for the async API and the sync facade into HostMemory and into
NpyDirectory (its default commit settings), each through the default writer
(``writer="auto"``: a thread for HostMemory, a writer process for NpyDirectory;
``--writer`` passes another where this snapsink takes ``writer=``), next to a
baseline measured in the same run: appending the same frames to Python lists
(the cheapest thing a simulation loop could possibly do), and writes JSON.
A rate runs from the first write to the return of ``flush()`` (every frame
stored; on disk, committed). Targets: >= 100,000 frames/s async, >= 80,000 sync.

    python benchmarks/small_frames.py [--frames N] [--stores memory,npy] [--json PATH]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

import snapsink  # noqa: E402

STORES = ("memory", "npy")
TARGETS = {"async": 100_000, "sync": 80_000}


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


def _store(kind: str, where: Path) -> Any:
    # the stores' own commit settings: small frames are where a low commit_every costs
    return _common.make_store(kind, where / "frames", commit_every=None)


def _async_rate(n: int, capacity: int, kind: str, writer: str) -> tuple[float, str]:
    with _common.scratch("snapsink-small-") as where:
        store = _store(kind, where)
        kw = _common.sink_kwargs(snapsink.Sink, writer)

        async def main() -> tuple[float, str]:
            async with snapsink.Sink(store, capacity=capacity, **kw) as sink:
                used = _common.writer_kind(sink, writer, store)[0]
                t0 = time.perf_counter()
                for i in range(n):
                    await sink.write({"e": 1.0 * i, "t": 2.0, "p": 3.0})
                await sink.flush()
                rate = n / (time.perf_counter() - t0)
            return rate, used

        rate, used = anyio.run(main)
        got = _common.stored(kind, store, where / "frames")
    assert got == n, (got, n)
    return rate, used


def _sync_rate(n: int, capacity: int, kind: str, writer: str) -> tuple[float, str]:
    with _common.scratch("snapsink-small-") as where:
        store = _store(kind, where)
        kw = _common.sink_kwargs(snapsink.SyncSink, writer)
        with snapsink.SyncSink(store, capacity=capacity, **kw) as sink:
            used = _common.writer_kind(sink, writer, store)[0]
            t0 = time.perf_counter()
            for i in range(n):
                sink.write({"e": 1.0 * i, "t": 2.0, "p": 3.0})
            sink.flush()
            rate = n / (time.perf_counter() - t0)
        got = _common.stored(kind, store, where / "frames")
    assert got == n, (got, n)
    return rate, used


def run(
    frames: int = 200_000,
    capacity: int = 4096,
    repeats: int = 3,
    stores: list[str] | None = None,
    writer: str = "auto",
) -> dict[str, Any]:
    """Best of ``repeats`` runs of each variant, measured in one process."""
    stores = stores or list(STORES)
    base = max(_baseline(frames) for _ in range(repeats))
    rows = []
    for kind in stores:
        for api, fn in (("async", _async_rate), ("sync", _sync_rate)):
            runs = [fn(frames, capacity, kind, writer) for _ in range(repeats)]
            rate = max(r[0] for r in runs)
            rows.append(
                {
                    "store": kind,
                    "api": api,
                    "writer_requested": writer,
                    "writer": runs[0][1],
                    "frames_per_s": rate,
                    "vs_list_append": rate / base,
                    "target": TARGETS[api],
                    "meets_target": rate >= TARGETS[api],
                    "samples": [r[0] for r in runs],
                }
            )
    out: dict[str, Any] = {
        "benchmark": "small_frames",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "snapsink": snapsink.__version__,
        "frames": frames,
        "capacity": capacity,
        "repeats": repeats,
        "writer_option": writer,
        "writer_supported": _common.writer_supported(snapsink.Sink),
        "list_append_frames_per_s": base,
        "rows": rows,
        "targets": {"async_frames_per_s": TARGETS["async"], "sync_frames_per_s": TARGETS["sync"]},
    }
    # the HostMemory figures under the keys of earlier results
    for x in rows:
        if x["store"] == "memory":
            out[f"{x['api']}_frames_per_s"] = x["frames_per_s"]
            out[f"{x['api']}_vs_list_append"] = x["vs_list_append"]
    return out


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, for run.py's summary: frames/s over the target."""
    return {
        f"frames/s / target, {_common.STORE_LABEL[x['store']]} {x['api']} {x['writer']}": x[
            "frames_per_s"
        ]
        / x["target"]
        for x in r["rows"]
    }


def _row(label: str, rate: float, ratio: float, target: str) -> str:
    return f"{label:<36}{rate:>14,.0f}{ratio:>16.3f}{target:>12}"


def print_table(r: dict[str, Any]) -> None:
    print(f"small frames (3 x float64), {r['frames']} frames, capacity {r['capacity']}")
    print(f"{'variant':<36}{'frames/s':>14}{'vs list.append':>16}{'target':>12}")
    print(_row("list.append (baseline)", r["list_append_frames_per_s"], 1.0, ""))
    for x in r["rows"]:
        api = "Sink (async)" if x["api"] == "async" else "SyncSink"
        label = f"{api}, {_common.STORE_LABEL[x['store']]}, {x['writer']}"
        miss = "" if x["meets_target"] else "  MISS"
        print(_row(label, x["frames_per_s"], x["vs_list_append"], f">= {x['target']:,}") + miss)


def _stores(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = sorted(set(items) - set(STORES))
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; expected memory and/or npy")
    return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--capacity", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", type=_stores, default=None, help="memory,npy (both)")
    parser.add_argument(
        "--writer",
        choices=_common.WRITER_CHOICES,
        default="auto",
        help="passed to Sink/SyncSink when they take writer=",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    _common.writers_to_run(args.writer)  # refuses a writer this snapsink cannot run
    result = run(args.frames, args.capacity, args.repeats, args.stores, args.writer)
    return _common.finish(result, print_table, args.json)


if __name__ == "__main__":
    main()
