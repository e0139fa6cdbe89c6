"""Capture cost: the producer's time in ``write()`` against a bare ``np.copyto``.

``write`` returns once the frame is captured (copied into a slot the writer
reads), so the least it can cost the producer is one copy of the frame. Between
stretches of pure-Python compute that holds the GIL (a Python float loop lasting
1.5x the time of writing one frame synchronously, so that the writer keeps up
and ``write`` never waits for room), this benchmark times

- a bare ``np.copyto`` of the frame into a preallocated buffer, with no sink open:
  ``compute; copyto (timed); ...``
- the same copy into one of two buffers in shared memory that another process
  reads whole after each copy, as the writer process reads a slot (``handoff``,
  no sink open): what the copy itself costs when its memory is handed to
  another process, without any of snapsink's work (on the 2-core VM: the bare
  copy's time at 256 KiB, up to 1.5x it at 4 MiB);
- then, with the sink open, ``write`` of the same frame, and a copy as above in
  the same loop (``in loop``: how much the running writer slows the producer's
  own work, e.g. a thread writer holding the GIL when the copy wants it back):
  ``compute; copyto (timed); compute; write (timed); ...``

for 256 KiB and 4 MiB frames (a 256 x 256 or 1024 x 1024 float32 field and a
float64 scalar), through ``SyncSink`` and the async ``Sink`` into NpyDirectory
(``commit_every=8``, the default writer unless ``--writer`` says otherwise). It
reports the mean, median and 90th percentile of each; target: write <= 1.5x
the bare copyto (means), with write over the hand-off copy beside it.

Each case runs in a fresh subprocess (malloc thresholds pinned, as overlap.py),
interleaved, best of ``--repeat``.

    python benchmarks/capture.py [--quick] [--dir DIR] [--writer auto|thread|process|both]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling modules)
import _compute  # noqa: E402

import snapsink  # noqa: E402

SCRIPT = Path(__file__).resolve()
SIZES = {"256 KiB": 256, "4 MiB": 1024}  # label: side of the float32 field
APIS = ("sync", "async")
TARGET = 1.5
DEFAULT_JSON = HERE / "results" / "capture-cpu.json"


# -- in the child: one case ---------------------------------------------------------------
def _stats(xs: list[float]) -> dict[str, float]:
    ys = sorted(xs)
    return {
        "mean": statistics.fmean(ys),
        "median": statistics.median(ys),
        "p90": ys[int(0.9 * (len(ys) - 1))],
        "max": ys[-1],
    }


def handoff_copies(u: np.ndarray[Any, Any], comp: Any, frames: int, warmup: int) -> list[float]:
    """Times of ``np.copyto`` of ``u`` into one of two buffers in shared memory that
    another process reads whole after each copy, as a writer process reads a slot
    (no sink open; the same compute between copies).

    What the copy costs when another core reads its memory between copies (that
    core may hold the buffer's cache lines); the bare copy's buffer is read by
    no one else.
    """
    n = u.nbytes
    mem = mmap.mmap(-1, 2 * n + 64, flags=mmap.MAP_SHARED)
    bufs = [np.frombuffer(mem, u.dtype, u.size, k * n).reshape(u.shape) for k in range(2)]
    flags = np.frombuffer(mem, np.int64, 2, 2 * n)  # [copied, read]
    sink = np.empty_like(u)
    pid = os.fork()
    if pid == 0:  # the reader: waits for each copy, reads it whole, says so
        try:
            seen = 0
            while True:
                c = int(flags[0])
                if c < 0:
                    break
                if c != seen:
                    np.copyto(sink, bufs[c % 2])
                    seen = c
                    flags[1] = c
        finally:
            os._exit(0)
    times = []
    try:
        for i in range(1, warmup + frames + 1):
            u[i % u.shape[0], 0] = comp.step()
            t0 = time.perf_counter()
            np.copyto(bufs[i % 2], u)
            dt = time.perf_counter() - t0
            flags[0] = i
            while int(flags[1]) != i:
                pass
            if i > warmup:
                times.append(dt)
    finally:
        flags[0] = -1
        os.waitpid(pid, 0)
    del bufs, flags
    mem.close()
    return times


def child(spec: Mapping[str, Any]) -> dict[str, Any]:
    side, frames, warmup = spec["side"], spec["frames"], spec["warmup"]
    u = np.random.default_rng(0).random((side, side), dtype=np.float32)
    buf = np.empty_like(u)
    where = Path(spec["dir"])
    fields = {"u": u, "e": np.float64(1.0)}
    n = 6 * _common.COMMIT_EVERY
    t_io = min(_common.io_alone("npy", fields, n, where / "probe") / n for _ in range(2))
    gap = max(spec["gap_ratio"] * t_io, spec["min_gap"])
    units, gap_measured = _compute.calibrate("python", gap)
    comp = _compute.make("python", units)

    def copy() -> float:
        t0 = time.perf_counter()
        np.copyto(buf, u)
        return time.perf_counter() - t0

    # the bare copy: no sink open
    bare = []
    for i in range(warmup + frames):
        u[i % side, 0] = comp.step()
        dt = copy()
        if i >= warmup:
            bare.append(dt)

    handoff = handoff_copies(u, comp, frames, warmup)

    copies: list[float] = []
    writes: list[float] = []
    path = where / "sink"
    store = _common.make_store("npy", path)
    requested = spec["writer"]

    def before_write(i: int) -> dict[str, Any]:
        e = comp.step()
        u[i % side, 0] = e
        dt = copy()
        e = comp.step()
        u[i % side, 1] = e
        if i >= warmup:
            copies.append(dt)
        return {"u": u, "e": np.float64(e)}

    def record(i: int, dt: float) -> None:
        if i >= warmup:
            writes.append(dt)

    if spec["api"] == "sync":
        kw = _common.sink_kwargs(snapsink.SyncSink, requested)
        with snapsink.SyncSink(store, capacity=spec["capacity"], **kw) as sink:
            writer = _common.writer_kind(sink, requested, store)
            for i in range(warmup + frames):
                fr = before_write(i)
                t0 = time.perf_counter()
                sink.write(fr, step=i)
                record(i, time.perf_counter() - t0)
        stats = sink.statistics()
    else:

        async def body() -> tuple[Any, tuple[str, str]]:
            kw = _common.sink_kwargs(snapsink.Sink, requested)
            async with snapsink.Sink(store, capacity=spec["capacity"], **kw) as sink:
                writer = _common.writer_kind(sink, requested, store)
                for i in range(warmup + frames):
                    fr = before_write(i)
                    t0 = time.perf_counter()
                    await sink.write(fr, step=i)
                    record(i, time.perf_counter() - t0)
            return sink.statistics(), writer

        stats, writer = anyio.run(body)
    assert len(snapsink.open(path)) == stats.written == warmup + frames
    return {
        "copy": _stats(bare),
        "write": _stats(writes),
        "copy_in_loop": _stats(copies),
        "copy_handoff": _stats(handoff),
        "t_io_frame": t_io,
        "gap_seconds": gap_measured,
        "gap": comp.describe(),
        "writer": writer[0],
        "writer_how": writer[1],
        "peak_queued": stats.peak_queued,
    }


# -- the parent ---------------------------------------------------------------------------
def run(
    quick: bool = False,
    writer: str = "auto",
    frames: int | None = None,
    repeats: int | None = None,
    capacity: int = 8,
    gap_ratio: float = 1.5,
    mmap_threshold: int = _common.MMAP_THRESHOLD,
    trim_threshold: int = _common.TRIM_THRESHOLD,
    verbose: bool = True,
    root: Path | None = None,
) -> dict[str, Any]:
    frames = frames or (60 if quick else 300)
    repeats = repeats or (1 if quick else 3)
    writers = _common.writers_to_run(writer)
    env = _common.child_env(mmap_threshold, trim_threshold)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    cases = [(size, api, w) for size in SIZES for api in APIS for w in writers]
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {c: [] for c in cases}
    with _common.scratch("snapsink-capture-", root) as where:
        fs = _common.filesystem(where)
        for rep in range(repeats):
            for size, api, w in cases:
                if verbose:
                    print(
                        f"  capture: round {rep + 1}/{repeats}: {size} {api} {w}",
                        file=sys.stderr,
                        flush=True,
                    )
                spec: dict[str, Any] = {
                    "side": SIZES[size],
                    "api": api,
                    "writer": w,
                    "frames": frames,
                    "warmup": 2 * capacity,
                    "capacity": capacity,
                    "gap_ratio": gap_ratio,
                    "min_gap": 1e-3,
                    "dir": str(where / f"r{rep}-{SIZES[size]}-{api}-{w}"),
                }
                Path(spec["dir"]).mkdir()
                samples[(size, api, w)].append(_common.spawn(SCRIPT, spec, env))
    rows = []
    for (size, api, w), runs in samples.items():

        def best(part: str, key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(min(r[part][key] for r in runs))

        write_mean, copy_mean = best("write", "mean"), best("copy", "mean")
        rows.append(
            {
                "size": size,
                "frame_bytes": SIZES[size] ** 2 * 4 + 8,
                "api": api,
                "writer_requested": w,
                "writer": runs[0]["writer"],
                "writer_how": runs[0]["writer_how"],
                "frames": frames,
                "write_mean": write_mean,
                "write_median": best("write", "median"),
                "write_p90": best("write", "p90"),
                "copy_mean": copy_mean,
                "copy_median": best("copy", "median"),
                "copy_in_loop_mean": best("copy_in_loop", "mean"),
                "copy_in_loop_median": best("copy_in_loop", "median"),
                "copy_handoff_mean": best("copy_handoff", "mean"),
                "copy_handoff_median": best("copy_handoff", "median"),
                "ratio": write_mean / copy_mean,
                "ratio_median": best("write", "median") / best("copy", "median"),
                "ratio_vs_copy_in_loop": write_mean / best("copy_in_loop", "mean"),
                "handoff_over_copy": best("copy_handoff", "mean") / copy_mean,
                "ratio_vs_handoff": write_mean / best("copy_handoff", "mean"),
                "meets_target": write_mean / copy_mean <= TARGET,
                "t_io_frame": min(r["t_io_frame"] for r in runs),
                "gap_seconds": min(r["gap_seconds"] for r in runs),
                "gap": runs[0]["gap"],
                "peak_queued": max(r["peak_queued"] for r in runs),
                "samples": {
                    "write_mean": [r["write"]["mean"] for r in runs],
                    "copy_mean": [r["copy"]["mean"] for r in runs],
                    "copy_in_loop_mean": [r["copy_in_loop"]["mean"] for r in runs],
                    "copy_handoff_mean": [r["copy_handoff"]["mean"] for r in runs],
                },
            }
        )
    return {
        "benchmark": "capture",
        **_common.machine(),
        "quick": quick,
        "filesystem": fs,
        "store": "NpyDirectory",
        "commit_every": _common.COMMIT_EVERY,
        "capacity": capacity,
        "repeats": repeats,
        "gap_ratio": gap_ratio,
        "writer_option": writer,
        "writer_supported": {
            "Sink": _common.writer_supported(snapsink.Sink),
            "SyncSink": _common.writer_supported(snapsink.SyncSink),
        },
        "writers_requested": writers,
        "malloc_env": _common.malloc_settings(env),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.perf_counter() - t_start,
        "rows": rows,
        "targets": {"write_over_copyto": TARGET},
    }


def summary(r: dict[str, Any]) -> dict[str, Any]:
    return {
        f"write / copyto, {x['size']} {x['api']} {x['writer']} (<= {TARGET})": x["ratio"]
        for x in r["rows"]
    }


def print_table(r: dict[str, Any]) -> None:
    print(
        f"capture: write() vs np.copyto of the same frame, NpyDirectory (commit every "
        f"{r['commit_every']}), capacity {r['capacity']}, {r['rows'][0]['frames']} frames per "
        f"case after a warm-up, Python compute of {r['gap_ratio']}x one frame's synchronous "
        f"write between calls; best of {r['repeats']}; stores on {r.get('filesystem', '?')}"
    )
    head = (
        f"{'frame':<9}{'api':<6}{'writer':<9}{'write ms':>9}{'p50':>8}{'p90':>8}"
        f"{'copy ms':>9}{'p50':>8}{'in loop':>9}{'handoff':>9}{'ratio':>8}{'p50':>7}{'w/hand':>8}"
        f"{'gap ms':>8}{'target':>9}"
    )
    print(head)
    print("-" * len(head))
    for x in r["rows"]:
        print(
            f"{x['size']:<9}{x['api']:<6}{x['writer']:<9}{x['write_mean'] * 1e3:>9.3f}"
            f"{x['write_median'] * 1e3:>8.3f}{x['write_p90'] * 1e3:>8.3f}"
            f"{x['copy_mean'] * 1e3:>9.3f}{x['copy_median'] * 1e3:>8.3f}"
            f"{x['copy_in_loop_mean'] * 1e3:>9.3f}{x['copy_handoff_mean'] * 1e3:>9.3f}"
            f"{x['ratio']:>8.2f}{x['ratio_median']:>7.2f}{x['ratio_vs_handoff']:>8.2f}"
            f"{x['gap_seconds'] * 1e3:>8.2f}{'<= ' + str(TARGET):>9}"
            f"{'' if x['meets_target'] else '  MISS'}"
        )
    print(
        "write/copy: means (p50: medians, p90: 90th percentile) of the producer's time in "
        "write() and in a bare np.copyto of the same frame (no sink open); in loop: the same "
        "copy timed between the writes, the sink running; handoff: the same copy into one of "
        "two shared buffers that another process reads after each copy, as the writer reads a "
        "slot (no sink open); ratio: write / bare "
        "copy (means, the target); w/hand: write / handoff"
    )
    print(
        f"load average {r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} "
        f"after; {r['seconds']:.0f} s"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, one round")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the stores go (default: the temp directory)"
    )
    parser.add_argument(
        "--writer",
        choices=(*_common.WRITER_CHOICES, "both"),
        default="auto",
        help="passed to Sink/SyncSink when they take writer=; both: thread and process rows",
    )
    parser.add_argument("--frames", type=int, default=None, help="timed frames per case")
    parser.add_argument("--repeat", "--repeats", dest="repeats", type=int, default=None)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument(
        "--gap-ratio", type=float, default=1.5, help="compute between calls / one frame's I/O"
    )
    parser.add_argument("--mmap-threshold", type=int, default=_common.MMAP_THRESHOLD)
    parser.add_argument("--trim-threshold", type=int, default=_common.TRIM_THRESHOLD)
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"where to write the result (default: {DEFAULT_JSON.relative_to(HERE.parent)}; "
        "a --quick run writes none unless asked)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    result = run(
        quick=args.quick,
        writer=args.writer,
        frames=args.frames,
        repeats=args.repeats,
        capacity=args.capacity,
        gap_ratio=args.gap_ratio,
        mmap_threshold=args.mmap_threshold,
        trim_threshold=args.trim_threshold,
        root=args.dir,
    )
    return _common.finish(result, print_table, args.json or (None if args.quick else DEFAULT_JSON))


if __name__ == "__main__":
    main()
