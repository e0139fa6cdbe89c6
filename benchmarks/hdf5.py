"""HDF5Store through a Sink, next to raw writes and a naive h5py loop, in one run.

Every variant writes the same float32 frames (``--sizes-kib``: 64 KiB and 2 MiB
by default) into a fresh file in a temp directory under ``--dir``, and ends
with everything durable:

- ``raw``: the frame bytes written with ``os.write`` (one call per frame) into
  one file, one ``fsync`` at the end: the disk's own pace.
- ``hdf5``: ``snapsink.Sink(HDF5Store(path), policy="block")`` from an async
  loop (writer process, default chunking, commits every 1024 frames or 5 s);
  timed from the open sink to the closed one (startup reported apart).
- ``npy`` (reference): the same through ``Sink(NpyDirectory(...))``: what
  snapsink's own format reaches on this disk, the same run.
- ``naive h5py``: what a user writes first: one chunked dataset with
  ``maxshape=None``, per frame ``resize`` and ``ds[i] = frame``, then
  ``flush`` and one ``fsync`` at the end (and no crash safety: a kill mid-run
  may leave the file unreadable).

Variants are interleaved (round r runs each once, in an order rotated per
round); the best of ``--repeats`` runs is reported (interference on a shared
machine only slows a run down). ``os.sync()`` runs before each measurement.
The store's file is read back after its runs and checked bit-exact.

    python benchmarks/hdf5.py [--quick] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import h5py
import numpy as np

import snapsink

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

POOL = 8  # distinct frames, cycled (the caller may reuse its arrays at once)


def _frames(frame_bytes: int) -> list[np.ndarray[Any, Any]]:
    n = frame_bytes // 4
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(POOL)]


def _raw(path: str, pool: list[np.ndarray[Any, Any]], n: int) -> float:
    t0 = time.perf_counter()
    _common.raw_write(path, pool, n)
    return time.perf_counter() - t0


STARTUP: list[float] = []


def _hdf5(path: str, pool: list[np.ndarray[Any, Any]], n: int) -> float:
    async def main() -> float:
        t_enter = time.perf_counter()
        async with snapsink.Sink(snapsink.HDF5Store(path), capacity=8, policy="block") as sink:
            t0 = time.perf_counter()
            STARTUP.append(t0 - t_enter)
            for i in range(n):
                await sink.write({"x": pool[i % POOL]}, step=i)
        return time.perf_counter() - t0

    return anyio.run(main)


def _npy(path: str, pool: list[np.ndarray[Any, Any]], n: int) -> float:
    async def main() -> float:
        async with snapsink.Sink(snapsink.NpyDirectory(path), capacity=8, policy="block") as sink:
            t0 = time.perf_counter()
            for i in range(n):
                await sink.write({"x": pool[i % POOL]}, step=i)
        return time.perf_counter() - t0

    return anyio.run(main)


def _naive(path: str, pool: list[np.ndarray[Any, Any]], n: int) -> float:
    t0 = time.perf_counter()
    size = pool[0].size
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", (0, size), np.float32, maxshape=(None, size), chunks=(1, size))
        for i in range(n):
            ds.resize(i + 1, axis=0)
            ds[i] = pool[i % POOL]
        f.flush()
    _common.fsync_path(path)
    return time.perf_counter() - t0


VARIANTS: dict[str, Callable[[str, list[np.ndarray[Any, Any]], int], float]] = {
    "raw": _raw,
    "hdf5": _hdf5,
    "npy": _npy,
    "naive h5py": _naive,
}


def measure(root: str, kib: int, total_mib: int, repeats: int) -> dict[str, Any]:
    pool = _frames(kib << 10)
    n = max(8, (total_mib << 20) // (kib << 10))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    STARTUP.clear()
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            path = os.path.join(root, f"{name.replace(' ', '_')}-{kib}-{r}.h5")
            os.sync()
            times[name].append(VARIANTS[name](path, pool, n))
            if name == "hdf5" and r == 0:
                traj = snapsink.open(path)
                assert len(traj) == n
                got = traj["x"][n - 1]
                assert got.tobytes() == pool[(n - 1) % POOL].tobytes(), "hdf5: bits differ"
                del traj
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    best = {name: min(t) for name, t in times.items()}
    mib = n * kib / 1024
    return {
        "frame_kib": kib,
        "frames": n,
        "mib": mib,
        "best_s": best,
        "mib_per_s": {name: mib / t for name, t in best.items()},
        "hdf5_vs_raw": best["raw"] / best["hdf5"],
        "hdf5_vs_naive": best["naive h5py"] / best["hdf5"],
        "npy_vs_raw": best["raw"] / best["npy"],
        "hdf5_startup_s": min(STARTUP),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    ap.add_argument("--sizes-kib", type=int, nargs="+", default=[64, 2048])
    ap.add_argument("--total-mib", type=int, default=None,
                    help="bytes per run (default 512; --quick 64)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3; --quick 2")
    ap.add_argument("--quick", action="store_true", help="64 MiB per run, 2 repeats")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        _common.fill_unset(args, total_mib=64, repeats=2)
    _common.fill_unset(args, total_mib=512, repeats=3)
    root = tempfile.mkdtemp(prefix="snapsink-hdf5-bench-", dir=args.dir)
    try:
        cases = [measure(root, kib, args.total_mib, args.repeats) for kib in args.sizes_kib]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "cases": cases,
    }
    print(f"HDF5 {result['hdf5']}, h5py {result['h5py']}, {os.cpu_count()} cpus")
    print(
        f"{'frame':>8} {'frames':>7} {'raw MiB/s':>10} {'hdf5 MiB/s':>11} "
        f"{'naive MiB/s':>12} {'hdf5/raw':>9} {'hdf5/naive':>11} {'npy/raw':>8}"
    )
    for c in cases:
        m = c["mib_per_s"]
        print(
            f"{c['frame_kib']:>5}KiB {c['frames']:>7} {m['raw']:>10.0f} {m['hdf5']:>11.0f} "
            f"{m['naive h5py']:>12.0f} {c['hdf5_vs_raw']:>8.2f}x {c['hdf5_vs_naive']:>10.2f}x "
            f"{c['npy_vs_raw']:>7.2f}x"
        )
    print(f"hdf5 sink startup (not timed above): {min(c['hdf5_startup_s'] for c in cases):.2f} s")
    # the table is printed above; finish makes the JSON's folder
    return _common.finish(result, lambda _: None, args.json or None)


if __name__ == "__main__":
    main()
