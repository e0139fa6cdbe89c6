"""Disk throughput: NpyDirectory and ZarrStore through a Sink, next to raw writes
and a naive zarr loop, all measured in one run on the same disk.

Every variant writes the same frames (float32, ``--frame-mib`` each, plus a
small-frame case of ``--small-kib`` each) into fresh files in a temp directory
under ``--dir``, and ends with everything durable:

- ``raw``: the frame bytes written with ``os.write`` (one call per frame) into
  one file, one ``fsync`` at the end (and of the directory). The most favourable
  cadence for raw: the stores also fsync at each commit (NpyDirectory every 256
  frames or 5 s, ZarrStore every 1024 frames or 5 s), so the ratios against raw
  are conservative.
- ``npy``: ``snapsink.Sink(NpyDirectory(...), policy="block")`` from an async loop.
- ``zarr``, ``zarr+zstd1``, ``zarr+lz4``: ``Sink(ZarrStore(..., compressors=...))``.
- ``naive zarr``, ``naive zarr+zstd1``, ``naive zarr+lz4``: what people write
  today: ``zarr.create_array`` preallocated for all frames, one chunk per frame,
  the same compressor, and ``arr[i] = frame`` per frame with zarr's sync API;
  then every file and directory of the store fsynced (zarr itself never fsyncs).
  One chunk per frame is the strongest naive loop: zarr's default chunks
  (e.g. ``(8, 65536)`` for 256 frames of 1M floats) make every ``arr[i] = frame``
  a read-modify-write of many partly covered chunks, far slower still.

Timing covers store creation to close (durable). Variants are interleaved
(round r runs every variant once, in an order rotated per round); each is run
``--repeats`` times and the best run is reported (``--stat median`` for the
median): on a shared machine, interference only ever slows a run down.
``os.sync()`` runs before each measurement so no other dirty data is flushed
during it, and each variant's files are deleted after it (outside the timing).

    python benchmarks/throughput.py [--quick] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import zarr
import zarr.codecs
from zarr.storage import LocalStore

import snapsink

MB = 1e6
DEFAULT_JSON = Path(__file__).parent / "results" / "throughput-cpu.json"
#: distinct frames cycled through (enough that no store can dedupe, small enough
#: to generate quickly)
POOL = 8


def _compressors() -> dict[str, Any]:
    """The compressor settings measured: uncompressed, zstd level 1, blosc lz4."""
    return {
        "": None,
        "+zstd1": zarr.codecs.ZstdCodec(level=1),
        "+lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }


def _frames(frame_bytes: int, seed: int = 0) -> list[np.ndarray[Any, Any]]:
    """Simulation-like float32 frames: a smooth field plus noise, so that a
    compressor has something to find (not all zeros, not white noise)."""
    n = frame_bytes // 4
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 8 * np.pi, n, dtype=np.float64)
    out = []
    for k in range(POOL):
        f = np.sin(x + k) * 10.0 + rng.standard_normal(n) * 0.01
        out.append(f.astype(np.float32))
    return out


# -- the variants: each writes n frames into ``path`` and returns seconds ----------
def _fsync_path(p: str, directory: bool = False) -> None:
    fd = os.open(p, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for d, _, files in os.walk(root):
        for name in files:
            _fsync_path(os.path.join(d, name))
        _fsync_path(d, directory=True)
    _fsync_path(os.path.dirname(root), directory=True)


def _raw(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
    t0 = time.perf_counter()
    os.mkdir(path)
    fd = os.open(os.path.join(path, "raw.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(n):
            view = memoryview(pool[i % POOL]).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_path(path, directory=True)
    return time.perf_counter() - t0


def _through_sink(make_store: Callable[[], Any], pool: list[np.ndarray[Any, Any]], n: int,
                  capacity: int) -> float:
    async def main() -> float:
        t0 = time.perf_counter()
        async with snapsink.Sink(make_store(), capacity=capacity, policy="block") as sink:
            for i in range(n):
                await sink.write({"x": pool[i % POOL]}, step=i)
        return time.perf_counter() - t0

    return anyio.run(main)


def _npy(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
    return _through_sink(lambda: snapsink.NpyDirectory(path), pool, n, capacity)


def _zarr(compressors: Any) -> Callable[..., float]:
    def run(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
        return _through_sink(
            lambda: snapsink.ZarrStore(path, compressors=compressors), pool, n, capacity
        )

    return run


def _naive(compressors: Any) -> Callable[..., float]:
    def run(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
        shape = pool[0].shape
        t0 = time.perf_counter()
        arr = zarr.create_array(
            LocalStore(path),
            shape=(n, *shape),
            chunks=(1, *shape),
            dtype=pool[0].dtype,
            compressors=compressors,
        )
        for i in range(n):
            arr[i] = pool[i % POOL]
        _fsync_tree(path)
        return time.perf_counter() - t0

    return run


def _check(name: str, path: str, pool: list[np.ndarray[Any, Any]], n: int) -> None:
    """Everything written reads back (outside the timing)."""
    if name == "raw":
        assert os.path.getsize(os.path.join(path, "raw.bin")) == n * pool[0].nbytes
        return
    if name.startswith("naive"):
        arr = zarr.open_array(LocalStore(path, read_only=True), mode="r")
        got = [arr[0], arr[n - 1]]
    else:
        traj = snapsink.open(path)
        assert len(traj) == n, (name, len(traj), n)
        got = [traj["x"][0], traj["x"][n - 1]]
    np.testing.assert_array_equal(got[0], pool[0])
    np.testing.assert_array_equal(got[1], pool[(n - 1) % POOL])


def variants() -> dict[str, Callable[..., float]]:
    out: dict[str, Callable[..., float]] = {"raw": _raw, "npy": _npy}
    comps = _compressors()
    for label, c in comps.items():
        out[f"zarr{label}"] = _zarr(c)
    for label, c in comps.items():
        out[f"naive zarr{label}"] = _naive(c)
    return out


def measure_case(
    root: str, frame_bytes: int, n: int, capacity: int, repeats: int,
    only: list[str] | None = None,
) -> dict[str, Any]:
    pool = _frames(frame_bytes)
    todo = variants()
    if only:
        todo = {k: v for k, v in todo.items() if k in only}
    names = list(todo)
    secs: dict[str, list[float]] = {k: [] for k in names}
    total = n * frame_bytes
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            path = os.path.join(root, f"{name.replace(' ', '_').replace('+', '_')}-{r}")
            os.sync()
            secs[name].append(todo[name](path, pool, n, capacity))
            _check(name, path, pool, n)
            shutil.rmtree(path)
    return {
        "frame_bytes": frame_bytes,
        "frames": n,
        "total_bytes": total,
        "capacity": capacity,
        "seconds": secs,
        "mb_per_s": {k: [total / MB / s for s in v] for k, v in secs.items()},
    }


def summarize(case: dict[str, Any], stat: str) -> dict[str, Any]:
    pick = max if stat == "best" else statistics.median
    rate = {k: pick(v) for k, v in case["mb_per_s"].items()}
    ratios: dict[str, float] = {}
    if "raw" in rate:
        for k in ("npy", "zarr"):
            if k in rate:
                ratios[f"{k}/raw"] = rate[k] / rate["raw"]
    for label in _compressors():
        z, nv = f"zarr{label}", f"naive zarr{label}"
        if z in rate and nv in rate:
            ratios[f"{z}/{nv}"] = rate[z] / rate[nv]
    targets = {"npy/raw": 0.9, "zarr/raw": 0.8}
    targets.update({k: 2.0 for k in ratios if "naive" in k})
    case["stat"] = stat
    case["rate"] = rate
    case["best_mb_per_s"] = {k: max(v) for k, v in case["mb_per_s"].items()}
    case["median_mb_per_s"] = {k: statistics.median(v) for k, v in case["mb_per_s"].items()}
    case["ratios"] = ratios
    case["targets"] = {k: v for k, v in targets.items() if k in ratios}
    case["met"] = {k: ratios[k] >= v for k, v in case["targets"].items()}
    return case


def _filesystem(path: str) -> str:
    """The mount point and type of ``path`` (Linux), for the record."""
    best = ("", "?")
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mnt, fstype = parts[1], parts[2]
                real = os.path.realpath(path)
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(
                    best[0]
                ):
                    best = (mnt, fstype)
    except OSError:
        pass
    return f"{best[1]} at {best[0] or '?'}"


def run(
    directory: str | None = None,
    *,
    quick: bool = False,
    frame_mib: float = 4.0,
    small_kib: float = 64.0,
    total_mib: float | None = None,
    small_total_mib: float | None = None,
    capacity: int = 8,
    small_capacity: int = 64,
    repeats: int = 3,
    stat: str = "best",
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Measure every variant for a large-frame and a small-frame case."""
    total_mib = total_mib or (192.0 if quick else 1024.0)
    small_total_mib = small_total_mib or (64.0 if quick else 256.0)
    base = directory or os.getcwd()
    os.makedirs(base, exist_ok=True)
    root = tempfile.mkdtemp(prefix="snapsink-throughput-", dir=base)
    cases = {}
    try:
        for label, fbytes, tot, cap in (
            ("large", int(frame_mib * (1 << 20)), total_mib, capacity),
            ("small", int(small_kib * (1 << 10)), small_total_mib, small_capacity),
        ):
            fbytes -= fbytes % 4
            n = max(2, int(tot * (1 << 20)) // fbytes)
            cases[label] = summarize(measure_case(root, fbytes, n, cap, repeats, only), stat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "throughput",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "filesystem": _filesystem(root),
        "repeats": repeats,
        "raw_fsync": "one fsync at the end (and of the directory)",
        "cases": cases,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"disk throughput on {result['filesystem']}, {result['cpus']} CPUs; "
          f"{result['repeats']} interleaved runs per variant")
    for label, case in result["cases"].items():
        print()
        print(f"{label} frames: {case['frames']} x {case['frame_bytes'] / 1024:.0f} KiB "
              f"= {case['total_bytes'] / MB:.0f} MB, sink capacity {case['capacity']}, "
              f"{case['stat']} of runs")
        print(f"{'variant':<20}{'MB/s':>10}   runs (MB/s)")
        for name, r in case["rate"].items():
            runs = " ".join(f"{x:.0f}" for x in case["mb_per_s"][name])
            print(f"{name:<20}{r:>10.0f}   {runs}")
        print(f"{'ratio':<34}{'value':>8}{'target':>9}")
        for k, v in case["ratios"].items():
            t = case["targets"].get(k)
            mark = "" if t is None else ("  ok" if v >= t else "  MISSED")
            tt = "" if t is None else f">= {t:g}"
            print(f"{k:<34}{v:>8.2f}{tt:>9}{mark}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None,
                        help="where the temp directory goes (default: the CWD's file system)")
    parser.add_argument("--quick", action="store_true", help="~200 MB + 64 MB instead of 1 GiB")
    parser.add_argument("--frame-mib", type=float, default=4.0)
    parser.add_argument("--small-kib", type=float, default=64.0)
    parser.add_argument("--total-mib", type=float, default=None)
    parser.add_argument("--small-total-mib", type=float, default=None)
    parser.add_argument("--capacity", type=int, default=8, help="sink capacity, large frames")
    parser.add_argument("--small-capacity", type=int, default=64,
                        help="sink capacity, small frames")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stat", choices=("median", "best"), default="best")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    result = run(
        args.dir, quick=args.quick, frame_mib=args.frame_mib, small_kib=args.small_kib,
        total_mib=args.total_mib, small_total_mib=args.small_total_mib, capacity=args.capacity,
        small_capacity=args.small_capacity, repeats=args.repeats, stat=args.stat, only=args.only,
    )
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
