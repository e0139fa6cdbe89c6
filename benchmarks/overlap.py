"""Overlap: how much of the I/O snapsink hides behind a simulation's compute.

A simulation loop (a 5-point Jacobi stencil on a 2048 x 2048 float32 grid, whose
NumPy ufuncs release the GIL; or ``time.sleep`` of the same length, labelled
``sleep``) writes a snapshot (the 16 MiB grid and a float64 scalar) every
``k`` steps. For each store (NpyDirectory, ZarrStore, HostMemory), policy
(block, drop_oldest, spill) and API (async ``Sink``, ``SyncSink``) it reports,
all measured in this one run:

- ``T_compute``: the same loop with no snapshots;
- ``T_io``: the same frames appended synchronously, one by one, to a fresh store
  of the same kind (open, prepare, appends, commit, close; no compute);
- ``T_total``: the loop with snapsink, from opening the sink to its close
  (every frame durable);
- exposed I/O ``T_total - T_compute``;
- overlap efficiency ``eta = (T_compute + T_io - T_total) / T_io`` (1: the
  I/O is entirely hidden; 0: nothing is hidden);
- compute slowdown: mean time of one compute step with snapsink running,
  over the same without it (memory-bandwidth and CPU contention).

``k`` is calibrated at start: the main rows take ``k`` so that
``T_compute ~= 1.5 T_io``; the I/O-bound rows take ``k = 1`` (``T_io > T_compute``)
where the policies differ (block waits, drop_oldest drops, spill spills).

    python benchmarks/overlap.py [--quick] [--frames N] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import snapsink
from snapsink import Batch, Frame

GRID = 2048
STORES = ("npy", "zarr", "memory")
POLICIES = ("block", "drop_oldest", "spill")
APIS = ("async", "sync")
STORE_LABEL = {"npy": "NpyDirectory", "zarr": "ZarrStore", "memory": "HostMemory"}


# -- the simulation -------------------------------------------------------------------
class Stencil:
    """Jacobi relaxation (5-point) of a float32 grid with a fixed source term.

    Each step is five NumPy ufunc calls on ~4 M elements, which release the GIL:
    a writer thread can run on the other core while the simulation computes.
    """

    label = "numpy stencil"

    def __init__(self, n: int = GRID):
        rng = np.random.default_rng(0)
        self.u = rng.random((n, n), dtype=np.float32)
        self.v = self.u.copy()
        self.source = (rng.random((n - 2, n - 2), dtype=np.float32) - 0.5) * np.float32(0.01)

    def step(self) -> None:
        u, v = self.u, self.v
        inner = v[1:-1, 1:-1]
        np.add(u[:-2, 1:-1], u[2:, 1:-1], out=inner)
        inner += u[1:-1, :-2]
        inner += u[1:-1, 2:]
        inner *= np.float32(0.25)
        inner += self.source
        self.u, self.v = v, u

    def frame(self) -> dict[str, Any]:
        # A diagnostic, as simulations log one with each snapshot (a host reduction).
        # A 1-element array, not a scalar: a spilled 0-d field comes back with
        # shape (1,) (np.ascontiguousarray in _spill.py), which NpyDirectory rejects.
        return {"u": self.u, "residual": np.array([np.abs(self.u[::64, ::64]).mean()])}


class Sleeper(Stencil):
    """The same frames, but each step sleeps (no CPU, no memory traffic)."""

    label = "sleep"

    def __init__(self, n: int = GRID, step_s: float = 0.0125):
        super().__init__(n)
        self.step_s = step_s

    def step(self) -> None:
        time.sleep(self.step_s)


def time_step(kernel: Stencil, n: int = 20) -> float:
    """Median seconds of one ``kernel.step()``."""
    for _ in range(3):
        kernel.step()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        kernel.step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# -- stores ---------------------------------------------------------------------------
@contextlib.contextmanager
def scratch(prefix: str = "snapsink-bench-") -> Iterator[Path]:
    """A temporary directory on the default temp filesystem, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: Frames between commits (fsync + metadata) of the disk stores, here and in T_io.
#: A commit is where the data reaches the disk; the stores' defaults (256 and 1024
#: frames, or 5 s) would put all of it at the close of these short runs.
COMMIT_EVERY = 8


def make_store(kind: str, path: Path) -> Any:
    if kind == "npy":
        return snapsink.NpyDirectory(path, commit_every=COMMIT_EVERY)
    if kind == "zarr":
        return snapsink.ZarrStore(path, commit_every=COMMIT_EVERY)
    if kind == "memory":
        return snapsink.HostMemory()
    raise ValueError(f"unknown store kind {kind!r}")


def make_policy(name: str, spill_dir: Path) -> str | snapsink.Spill:
    return snapsink.Spill(spill_dir) if name == "spill" else name


def io_alone(kind: str, fields: dict[str, Any], frames: int, every: int, where: Path) -> float:
    """Seconds to write ``frames`` copies of ``fields`` synchronously to a fresh store."""
    store = make_store(kind, where / f"io-{kind}")
    schema = snapsink.Schema.infer(fields)
    host = {
        k: (np.asarray(v) if isinstance(v, np.ndarray) else np.float64(v))
        for k, v in fields.items()
    }
    if inspect.iscoroutinefunction(store.append):

        async def body() -> None:
            await store.open()
            await store.prepare(schema, times=True)
            for i in range(frames):
                step = (i + 1) * every
                await store.append(Batch([Frame(step, step * 0.01, host)]))
            await store.commit()
            await store.close()

        t0 = time.perf_counter()
        anyio.run(body)
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    store.open()
    store.prepare(schema, times=True)
    for i in range(frames):
        step = (i + 1) * every
        store.append(Batch([Frame(step, step * 0.01, host)]))
    store.commit()
    store.close()
    return time.perf_counter() - t0


# -- the loops ---------------------------------------------------------------------------
@dataclass
class LoopResult:
    t_total: float
    step_times: list[float]
    stats: snapsink.SinkStatistics | None = None
    t_write: float = 0.0  # inside write() calls (capture, waiting for room)
    t_close: float = 0.0  # after the last write: draining, final commit, close


def compute_alone(kernel: Stencil, frames: int, every: int) -> LoopResult:
    """The simulation loop without snapshots (the diagnostic is still computed)."""
    steps: list[float] = []
    t0 = time.perf_counter()
    for _ in range(frames):
        for _ in range(every):
            s0 = time.perf_counter()
            kernel.step()
            steps.append(time.perf_counter() - s0)
        kernel.frame()
    return LoopResult(time.perf_counter() - t0, steps)


def loop_sync(
    kernel: Stencil, store: Any, policy: Any, frames: int, every: int, capacity: int
) -> LoopResult:
    steps: list[float] = []
    t_write = 0.0
    t0 = time.perf_counter()
    with snapsink.SyncSink(store, capacity=capacity, policy=policy) as sink:
        for i in range(frames):
            for _ in range(every):
                s0 = time.perf_counter()
                kernel.step()
                steps.append(time.perf_counter() - s0)
            step = (i + 1) * every
            fields = kernel.frame()
            w0 = time.perf_counter()
            sink.write(fields, step=step, time=step * 0.01)
            t_last = time.perf_counter()
            t_write += t_last - w0
    t_end = time.perf_counter()
    return LoopResult(t_end - t0, steps, sink.statistics(), t_write, t_end - t_last)


def loop_async(
    kernel: Stencil, store: Any, policy: Any, frames: int, every: int, capacity: int
) -> LoopResult:
    async def body() -> LoopResult:
        steps: list[float] = []
        t_write = 0.0
        t0 = t_last = time.perf_counter()
        async with snapsink.Sink(store, capacity=capacity, policy=policy) as sink:
            for i in range(frames):
                for _ in range(every):
                    s0 = time.perf_counter()
                    kernel.step()
                    steps.append(time.perf_counter() - s0)
                step = (i + 1) * every
                fields = kernel.frame()
                w0 = time.perf_counter()
                await sink.write(fields, step=step, time=step * 0.01)
                t_last = time.perf_counter()
                t_write += t_last - w0
        t_end = time.perf_counter()
        return LoopResult(t_end - t0, steps, sink.statistics(), t_write, t_end - t_last)

    out: LoopResult = anyio.run(body)
    return out


LOOPS = {"async": loop_async, "sync": loop_sync}


# -- one configuration -------------------------------------------------------------------
@dataclass
class Config:
    label: str
    kernel: Stencil
    every: int
    rows: list[tuple[str, str, str]]  # (store, policy, api)


def run_config(
    cfg: Config,
    frames: int,
    capacity: int,
    where: Path,
    repeats: int = 2,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Rows of one configuration, each the best of ``repeats`` runs.

    The repeats are interleaved (compute alone, I/O alone, every row; again), so
    a disturbance from other processes on a shared machine hits one sample, and
    the minimum of each quantity is taken.
    """
    kernel, every = cfg.kernel, cfg.every
    fields = kernel.frame()
    kinds = list(dict.fromkeys(r[0] for r in cfg.rows))
    alone: list[LoopResult] = []
    t_io: dict[str, list[float]] = {k: [] for k in kinds}
    runs: list[list[LoopResult]] = [[] for _ in cfg.rows]
    for _ in range(repeats):
        alone.append(compute_alone(kernel, frames, every))
        for kind in kinds:
            t_io[kind].append(io_alone(kind, fields, frames, every, where))
            shutil.rmtree(where / f"io-{kind}", ignore_errors=True)
        for n, (kind, policy, api) in enumerate(cfg.rows):
            path = where / f"row{n}"
            store = make_store(kind, path)
            gc.collect()
            if verbose:
                print(
                    f"  {cfg.label}: {STORE_LABEL[kind]} {policy} {api}",
                    file=sys.stderr,
                    flush=True,
                )
            res = LOOPS[api](
                kernel, store, make_policy(policy, where / f"spill{n}"), frames, every, capacity
            )
            got = len(store) if kind == "memory" else len(snapsink.open(path))
            assert res.stats is not None
            assert got == res.stats.written == frames - res.stats.dropped, (got, res.stats)
            runs[n].append(res)
            del store
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(where / f"spill{n}", ignore_errors=True)
    t_compute = min(a.t_total for a in alone)
    step_alone = min(statistics.mean(a.step_times) for a in alone)
    out = []
    for (kind, policy, api), samples in zip(cfg.rows, runs, strict=True):
        best = min(samples, key=lambda r: r.t_total)
        tio = min(t_io[kind])
        stats = best.stats
        assert stats is not None
        out.append(
            {
                "config": cfg.label,
                "kernel": kernel.label,
                "every": every,
                "store": kind,
                "policy": policy,
                "api": api,
                "frames": frames,
                "frame_bytes": int(sum(np.asarray(v).nbytes for v in fields.values())),
                "t_compute": t_compute,
                "t_io": tio,
                "t_total": best.t_total,
                "exposed_io": best.t_total - t_compute,
                "eta": (t_compute + tio - best.t_total) / tio,
                # the same without the close: the last frames' write and final
                # commit cannot overlap any compute (a constant, whatever the run)
                "eta_before_close": (t_compute + tio - best.t_total + best.t_close) / tio,
                "t_in_write": best.t_write,
                "t_close": best.t_close,
                "compute_slowdown": min(statistics.mean(r.step_times) for r in samples)
                / step_alone,
                "written": stats.written,
                "dropped": stats.dropped,
                "spilled": stats.spilled,
                "peak_queued": stats.peak_queued,
                "samples": {
                    "t_total": [r.t_total for r in samples],
                    "t_compute": [a.t_total for a in alone],
                    "t_io": t_io[kind],
                },
            }
        )
    return out


def run(
    frames: int | None = None,
    quick: bool = False,
    capacity: int = 8,
    grid: int = GRID,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Calibrate ``k``, then measure every row; returns the JSON-able result."""
    frames = frames or (16 if quick else 40)
    repeats = repeats or (2 if quick else 3)
    load_before = os.getloadavg()
    stencil = Stencil(grid)
    step_s = time_step(stencil)
    with scratch() as where:
        # Calibrate: synchronous write time of one frame (one commit per 8 frames).
        probes = []
        for _ in range(2):
            probes.append(io_alone("npy", stencil.frame(), 8, 1, where) / 8)
            shutil.rmtree(where / "io-npy", ignore_errors=True)
        probe = min(probes)
        every = max(2, math.ceil(1.5 * probe / step_s))
        main_rows = [(s, "block", a) for s in STORES for a in APIS]
        if not quick:
            main_rows += [(s, p, a) for s in STORES for p in POLICIES[1:] for a in APIS]
        else:
            main_rows += [("npy", p, "async") for p in POLICIES[1:]]
        io_rows = [("npy", p, "async") for p in POLICIES] + [("npy", "block", "sync")]
        if not quick:
            io_rows += [("zarr", p, "async") for p in POLICIES] + [("zarr", "block", "sync")]
        configs = [
            Config("compute-bound", stencil, every, main_rows),
            Config("sleep", Sleeper(grid, step_s), every, [("npy", "block", a) for a in APIS]),
            Config("io-bound", stencil, 1, io_rows),
        ]
        rows: list[dict[str, Any]] = []
        for cfg in configs:
            rows.extend(run_config(cfg, frames, capacity, where, repeats))
    return {
        "benchmark": "overlap",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "snapsink": snapsink.__version__,
        "quick": quick,
        "grid": grid,
        "capacity": capacity,
        "commit_every": COMMIT_EVERY,
        "repeats": repeats,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "step_seconds": step_s,
        "npy_frame_write_seconds": probe,
        "rows": rows,
        "targets": {"eta_npy_compute_bound_numpy": 0.8},
    }


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, for run.py's summary."""
    main = [
        x
        for x in r["rows"]
        if x["config"] == "compute-bound" and x["store"] == "npy" and x["policy"] == "block"
    ]
    return {f"eta, NpyDirectory block {x['api']}": x["eta"] for x in main}


def eta_cell(x: dict[str, Any], key: str = "eta") -> str:
    """eta, in parentheses where frames were dropped (T_total then covers fewer writes)."""
    return f"({x[key]:.2f})" if x["dropped"] else f"{x[key]:.2f}"


def print_table(r: dict[str, Any]) -> None:
    print(
        f"overlap: {r['grid']}x{r['grid']} float32 frames ({r['grid'] ** 2 * 4 / 2**20:.0f} MiB), "
        f"capacity {r['capacity']}, {r['rows'][0]['frames']} frames per row; one stencil step "
        f"{r['step_seconds'] * 1e3:.1f} ms, one NpyDirectory frame write "
        f"{r['npy_frame_write_seconds'] * 1e3:.1f} ms"
    )
    head = (
        f"{'config':<14}{'k':>3} {'store':<13}{'policy':<12}{'api':<6}"
        f"{'T_comp':>8}{'T_io':>8}{'T_total':>8}{'exposed':>9}{'close':>7}{'eta':>7}{'eta<cl':>7}"
        f"{'slowdn':>8}"
        f"{'drop':>6}{'spill':>6}"
    )
    print(head)
    print("-" * len(head))
    for x in r["rows"]:
        print(
            f"{x['config']:<14}{x['every']:>3} {STORE_LABEL[x['store']]:<13}{x['policy']:<12}"
            f"{x['api']:<6}{x['t_compute']:>8.2f}{x['t_io']:>8.2f}{x['t_total']:>8.2f}"
            f"{x['exposed_io']:>9.3f}{x['t_close']:>7.3f}{eta_cell(x):>7}"
            f"{eta_cell(x, 'eta_before_close'):>7}{x['compute_slowdown']:>8.3f}"
            f"{x['dropped']:>6}{x['spilled']:>6}"
        )
    print(
        "eta = (T_compute + T_io - T_total) / T_io (in parentheses: frames were dropped, so "
        "less than T_io was written); close: T_total after the last write (draining, final "
        "commit); eta<cl: eta without it; slowdn: compute step time with the sink / alone"
    )
    print(
        "target: eta >= 0.8 for NpyDirectory, compute-bound, numpy kernel; "
        f"load average {r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and rows")
    parser.add_argument("--frames", type=int, default=None, help="snapshots per row")
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--grid", type=int, default=GRID)
    parser.add_argument("--repeats", type=int, default=None, help="runs per row (best kept)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.frames, args.quick, args.capacity, args.grid, args.repeats)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
