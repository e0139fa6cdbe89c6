"""How much of the device-to-host I/O of snapshots hides behind GPU compute.

h5bench-style: every figure is a ratio measured in the same run, on the same
GPU, so nothing depends on an absolute time.

For each frame size (a float32 state array that a 1-D stencil updates on the
simulation's stream) it reports:

- ``peak``: a pinned ``cudaMemcpyAsync`` device-to-host, back to back (GB/s);
- ``sync_get``: host time of a synchronous ``arr.get()`` of the frame (the
  blocking cost a naive writer pays per frame), idle GPU;
- per capture strategy (``snapshot``, ``direct``):
  ``block``: host time of one ``write`` (validate + ``DeviceStager.capture``), median;
  ``block/sync_get``; ``bw``: achieved D2H bandwidth of back-to-back captures and
  its fraction of ``peak``;
  for compute/I-O ratios r (steps per frame set so T_compute = r x T_io):
  ``eta = (T_compute + T_io - T_total) / T_io`` and the compute slowdown
  ``T_total / T_compute - 1``;
- the same loop with a synchronous ``.get()`` per frame (the baseline);
- end-to-end through ``snapsink.Sink`` when it exists (a store that only checks).

Usage::

    PYTHONPATH=src python benchmarks/gpu_overlap.py [--sizes-mb 4,16,64,256] [--out DIR]

Writes ``gpu_overlap-<device>.json`` to ``benchmarks/results`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np

from snapsink._schema import Field, Schema
from snapsink._staging.device import DeviceStager
from snapsink._staging.host import SlotPool

try:
    import cupy as cp
except ImportError:  # pragma: no cover - the benchmark needs a GPU
    sys.exit("gpu_overlap: CuPy and a CUDA GPU are needed (pip install 'snapsink[gpu]')")

CAPACITY = 4

_stencil = cp.ElementwiseKernel(
    "raw T u, int64 n",
    "T v",
    "v = (i > 0 && i < n - 1) ? (T)0.25 * (u[i - 1] + u[i + 1]) + (T)0.5 * u[i] : u[i]",
    "snapsink_bench_stencil",
)


class Sim:
    """A 1-D diffusion stencil on the simulation's own non-blocking stream."""

    def __init__(self, nbytes: int):
        self.n = nbytes // 4
        self.stream = cp.cuda.Stream(non_blocking=True)
        with self.stream:
            self.u = cp.random.default_rng(0).random(self.n, dtype=cp.float32)
            self.v = cp.empty_like(self.u)

    def step(self, k: int = 1) -> None:
        with self.stream:
            for _ in range(k):
                _stencil(self.u, self.n, self.v)
                self.u, self.v = self.v, self.u

    def step_functional(self, k: int = 1) -> None:
        """Each step writes a fresh array (the JAX / functional style): the
        state handed to ``write(copy=False)`` is never modified afterwards."""
        with self.stream:
            for _ in range(k):
                out = cp.empty_like(self.u)  # from the pool; the old state is left alone
                _stencil(self.u, self.n, out)
                self.u = out


def peak_d2h(nbytes: int, reps: int = 10) -> float:
    """GB/s of back-to-back pinned cudaMemcpyAsync D2H, timed with CUDA events."""
    src = cp.empty(nbytes, cp.uint8)
    mem = cp.cuda.alloc_pinned_memory(nbytes)
    dst = np.frombuffer(mem, np.uint8, nbytes)
    s = cp.cuda.Stream(non_blocking=True)
    rt = cp.cuda.runtime
    rt.memcpyAsync(dst.ctypes.data, src.data.ptr, nbytes, rt.memcpyDeviceToHost, s.ptr)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record(s)
    for _ in range(reps):
        rt.memcpyAsync(dst.ctypes.data, src.data.ptr, nbytes, rt.memcpyDeviceToHost, s.ptr)
    stop.record(s)
    stop.synchronize()
    ms = cp.cuda.get_elapsed_time(start, stop)
    return reps * nbytes / (ms * 1e-3) / 1e9


def shared_d2h(nbytes: int, reps: int = 10) -> tuple[float, float, float]:
    """A writer-process slot's costs: page-locking a shared (memfd) mapping of
    ``nbytes`` (ms), unlocking it (ms), and the GB/s of D2H copies into it."""
    import mmap

    src = cp.empty(nbytes, cp.uint8)
    fd = os.memfd_create("snapsink-bench", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        m = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    dst = np.frombuffer(m, np.uint8)
    rt = cp.cuda.runtime
    t = time.perf_counter()
    rt.hostRegister(dst.ctypes.data, nbytes, 0)
    register_ms = (time.perf_counter() - t) * 1e3
    s = cp.cuda.Stream(non_blocking=True)
    rt.memcpyAsync(dst.ctypes.data, src.data.ptr, nbytes, rt.memcpyDeviceToHost, s.ptr)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record(s)
    for _ in range(reps):
        rt.memcpyAsync(dst.ctypes.data, src.data.ptr, nbytes, rt.memcpyDeviceToHost, s.ptr)
    stop.record(s)
    stop.synchronize()
    gbps = reps * nbytes / (cp.cuda.get_elapsed_time(start, stop) * 1e-3) / 1e9
    t = time.perf_counter()
    rt.hostUnregister(dst.ctypes.data)
    unregister_ms = (time.perf_counter() - t) * 1e3
    del dst
    m.close()
    return register_ms, unregister_ms, gbps


def sync_get_time(sim: Sim, reps: int = 5) -> tuple[float, float]:
    """Median host time of ``u.get()`` (pageable) and ``u.get(out=pinned)``, idle GPU."""
    sim.stream.synchronize()
    mem = cp.cuda.alloc_pinned_memory(sim.u.nbytes)
    pinned = np.frombuffer(mem, np.float32, sim.n)
    pageable, pinned_t = [], []
    for _ in range(reps):
        t = time.perf_counter()
        sim.u.get(stream=sim.stream)
        pageable.append(time.perf_counter() - t)
        t = time.perf_counter()
        sim.u.get(stream=sim.stream, out=pinned)
        pinned_t.append(time.perf_counter() - t)
    return statistics.median(pageable), statistics.median(pinned_t)


_pools: dict[int, SlotPool] = {}


async def stager_loop(
    sim: Sim, stager: DeviceStager | None, frames: int, spf: int
) -> tuple[float, list[float]]:
    """``frames`` frames of ``spf`` steps, each captured (or not when stager is None).

    Returns the wall time until everything is computed and stored, and the
    host time of each ``write`` (validate + capture).
    """
    schema = Schema({"u": Field("float32", (sim.n,))})
    # one pool per stager, as a sink keeps its slots (and their pinned buffers)
    pool = _pools.setdefault(id(stager), SlotPool(CAPACITY))
    pending: collections.deque[tuple[Any, Any, Any]] = collections.deque()
    blocking: list[float] = []
    checked = 0

    async def consume_one() -> None:
        nonlocal checked
        slot, fields, completion = pending.popleft()
        await completion.wait()
        checked += bool(np.isfinite(fields["u"][0]))  # "store": touch the host data
        pool.release(slot)

    sim.stream.synchronize()
    t0 = time.perf_counter()
    for f in range(frames):
        sim.step(spf)
        if stager is None:
            continue
        slot = pool.acquire()
        while slot is None:
            await consume_one()
            slot = pool.acquire()
        t = time.perf_counter()
        fields, completion = stager.capture(slot, schema.validate({"u": sim.u}, f), sim.stream)
        blocking.append(time.perf_counter() - t)
        pending.append((slot, fields, completion))
        while pending and pending[0][2].done():
            await consume_one()
        await anyio.lowlevel.checkpoint()
    while pending:
        await consume_one()
    sim.stream.synchronize()
    return time.perf_counter() - t0, blocking


def functional_compute(sim: Sim, frames: int, spf: int) -> float:
    """T_compute of the functional-style loop alone (no snapshots)."""
    sim.stream.synchronize()
    t0 = time.perf_counter()
    for _ in range(frames):
        sim.step_functional(spf)
    sim.stream.synchronize()
    return time.perf_counter() - t0


def sync_loop(sim: Sim, frames: int, spf: int) -> float:
    """The baseline: a synchronous ``.get()`` of every frame."""
    sim.stream.synchronize()
    t0 = time.perf_counter()
    for _ in range(frames):
        sim.step(spf)
        sim.u.get(stream=sim.stream)
    sim.stream.synchronize()
    return time.perf_counter() - t0


async def sink_loop(
    sim: Sim, frames: int, spf: int, copy: bool = True, writer: str = "thread"
) -> tuple[float, list[float], int, float, float]:
    """The loop through a Sink whose store keeps nothing (it checks each frame
    is finite): the device path, the capture and the writer alone. ``writer``
    is the Sink's: a thread of this process, or the writer process (the frame
    is copied from the device into the shared slots).

    The sink is started and warmed (``CAPACITY + 2`` frames written and flushed:
    its writer started, its slots allocated and page-locked) before the clock
    starts, as in a long run; the clock stops when the sink is closed (every
    frame stored). Returns the loop's time, each write's blocking time, the
    frames stored, the start-up time (start and warm-up), and the loop's time
    to its last ``flush`` (every frame stored, the sink still open: the close,
    which frees the slots, is a cost of the run's end, not of its frames)."""
    from _common import CheckingStore

    import snapsink

    store = CheckingStore()
    blocking: list[float] = []
    sim.stream.synchronize()
    t_start = time.perf_counter()
    async with snapsink.Sink(store, capacity=CAPACITY, policy="block", writer=writer) as sink:
        for f in range(CAPACITY + 2):
            await sink.write({"u": sim.u}, step=f - CAPACITY - 2, stream=sim.stream, copy=copy)
        await sink.flush()
        sim.stream.synchronize()
        t0 = time.perf_counter()
        for f in range(frames):
            if copy:
                sim.step(spf)
            else:
                sim.step_functional(spf)
            t = time.perf_counter()
            await sink.write({"u": sim.u}, step=f, stream=sim.stream, copy=copy)
            blocking.append(time.perf_counter() - t)
        await sink.flush()
        t_flushed = time.perf_counter()
    sim.stream.synchronize()
    t_end = time.perf_counter()
    # the process writer's store counted in the writer: what the sink says it wrote
    stored = store.frames if writer == "thread" else sink.statistics().written
    return t_end - t0, blocking, stored - CAPACITY - 2, t0 - t_start, t_flushed - t0


def eta(t_compute: float, t_io: float, t_total: float) -> float:
    return (t_compute + t_io - t_total) / t_io


async def bench_size(size_mb: int, frames: int, ratios: list[float]) -> dict[str, Any]:
    nbytes = size_mb << 20
    sim = Sim(nbytes)
    out: dict[str, Any] = {"size_mb": size_mb, "frames": frames, "capacity": CAPACITY}
    out["peak_gbps"] = peak_d2h(nbytes)
    reg, unreg, shared_gbps = shared_d2h(nbytes)
    out["shared_register_ms"], out["shared_unregister_ms"] = reg, unreg
    out["shared_gbps"] = shared_gbps
    get_pageable, get_pinned = sync_get_time(sim)
    out["sync_get_ms"] = get_pageable * 1e3
    out["sync_get_pinned_ms"] = get_pinned * 1e3
    # one stencil step, to size the compute per frame
    sim.step(5)
    sim.stream.synchronize()
    t = time.perf_counter()
    sim.step(50)
    sim.stream.synchronize()
    t_step = (time.perf_counter() - t) / 50
    out["step_ms"] = t_step * 1e3

    compute_cache: dict[int, float] = {}

    async def t_compute(spf: int) -> float:
        if spf not in compute_cache:
            compute_cache[spf] = (await stager_loop(sim, None, frames, spf))[0]
        return compute_cache[spf]

    for strategy in ("snapshot", "direct"):
        stager = DeviceStager(CAPACITY, strategy=strategy)
        await stager_loop(sim, stager, CAPACITY + 2, 0)  # warm-up: buffers allocated
        t_io, blocking = await stager_loop(sim, stager, frames, 0)
        res: dict[str, Any] = {
            "t_io_ms": t_io * 1e3,
            "block_ms": statistics.median(blocking) * 1e3,
            "block_max_ms": max(blocking) * 1e3,
            "bw_gbps": frames * nbytes / t_io / 1e9,
        }
        res["block_over_sync_get"] = res["block_ms"] / out["sync_get_ms"]
        res["bw_over_peak"] = res["bw_gbps"] / out["peak_gbps"]
        per_ratio = []
        for r in ratios:
            spf = max(1, math.ceil(r * (t_io / frames) / t_step))
            tc = await t_compute(spf)
            tt, blk = await stager_loop(sim, stager, frames, spf)
            per_ratio.append(
                {
                    "ratio": r,
                    "steps_per_frame": spf,
                    "compute_over_io": tc / t_io,
                    "t_compute_ms": tc * 1e3,
                    "t_total_ms": tt * 1e3,
                    "eta": eta(tc, t_io, tt),
                    "slowdown": tt / tc - 1,
                    "block_ms": statistics.median(blk) * 1e3,
                }
            )
        res["overlap"] = per_ratio
        stager.close()
        _pools.pop(id(stager), None)
        out[strategy] = res

    base = []
    t_io_sync = sync_loop(sim, frames, 0)
    for r in ratios:
        spf = max(1, math.ceil(r * (out["snapshot"]["t_io_ms"] * 1e-3 / frames) / t_step))
        tc = await t_compute(spf)
        tt = sync_loop(sim, frames, spf)
        base.append(
            {
                "ratio": r,
                "t_total_ms": tt * 1e3,
                "eta": eta(tc, t_io_sync, tt),
                "slowdown": tt / tc - 1,
            }
        )
    out["sync"] = {"t_io_ms": t_io_sync * 1e3, "overlap": base}

    async def sink_rows(
        copy: bool, io_basis_s: float | None = None, writer: str = "thread"
    ) -> dict[str, Any]:
        """Sink rows at every ratio: I/O alone, then compute = r x I/O (copy=False runs
        the functional-style loop, whose compute is timed on its own)."""
        await sink_loop(sim, CAPACITY + 2, 0, copy=copy, writer=writer)  # warm-up
        t_io, blk0, _, t_startup, t_io_run = await sink_loop(
            sim, frames, 0, copy=copy, writer=writer
        )
        basis = t_io if io_basis_s is None else io_basis_s
        rows = []
        for r in ratios:
            spf = max(1, math.ceil(r * (basis / frames) / t_step))
            tc = await t_compute(spf) if copy else functional_compute(sim, frames, spf)
            tt, blk, stored, _, tt_run = await sink_loop(sim, frames, spf, copy=copy, writer=writer)
            rows.append(
                {
                    "ratio": r,
                    "compute_over_io": tc / t_io,
                    "eta": eta(tc, t_io, tt),
                    "slowdown": tt / tc - 1,
                    # to the last flush: the frames' cost without the sink's close
                    "eta_run": eta(tc, t_io_run, tt_run),
                    "slowdown_run": tt_run / tc - 1,
                    "close_ms": (tt - tt_run) * 1e3,
                    "block_ms": statistics.median(blk) * 1e3,
                    "block_over_sync_get": statistics.median(blk) * 1e3 / out["sync_get_ms"],
                    "frames_stored": stored,
                }
            )
        return {
            "t_io_ms": t_io * 1e3,
            "t_io_run_ms": t_io_run * 1e3,
            "startup_ms": t_startup * 1e3,
            "bw_gbps": frames * nbytes / t_io / 1e9,
            "bw_over_peak": frames * nbytes / t_io / 1e9 / out["peak_gbps"],
            "block_ms": statistics.median(blk0) * 1e3,
            "block_over_sync_get": statistics.median(blk0) * 1e3 / out["sync_get_ms"],
            "overlap": rows,
        }

    try:
        import snapsink

        has_sink = hasattr(snapsink, "Sink")
    except Exception:  # the package may be mid-edit; the stager figures stand alone
        has_sink = False
    if has_sink:
        try:
            # with the capture contract; compute sized on the stager's snapshot I/O time
            out["sink"] = await sink_rows(copy=True, io_basis_s=out["snapshot"]["t_io_ms"] * 1e-3)
            # write(copy=False) on a functional-style loop: no snapshot, no wait
            out["sink_borrow"] = await sink_rows(copy=False)
            # the same two through the writer process
            basis = out["snapshot"]["t_io_ms"] * 1e-3
            out["sink_process"] = await sink_rows(copy=True, io_basis_s=basis, writer="process")
            out["sink_borrow_process"] = await sink_rows(copy=False, writer="process")
        except Exception as exc:
            out["sink_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{size_mb} MB: Sink rows failed: {out['sink_error']}", flush=True)

    cp.get_default_memory_pool().free_all_blocks()
    return out


def print_table(results: dict[str, Any]) -> None:
    print(f"device: {results['device']}")
    hdr = (
        f"{'MB':>5} {'strategy':>9} {'block ms':>9} {'/sync get':>9} {'bw GB/s':>8} "
        f"{'/peak':>6} {'ratio':>5} {'eta':>6} {'slowdown':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for s in results["sizes"]:
        print(
            f"{s['size_mb']:>5} {'peak':>9} {'':>9} {'':>9} {s['peak_gbps']:>8.1f}"
            f"   sync .get() {s['sync_get_ms']:.3f} ms (pinned out {s['sync_get_pinned_ms']:.3f})"
        )
        if "shared_gbps" in s:
            print(
                f"{s['size_mb']:>5} {'shm slot':>9} {'':>9} {'':>9} {s['shared_gbps']:>8.1f}"
                f"   page-lock {s['shared_register_ms']:.2f} ms, unlock "
                f"{s['shared_unregister_ms']:.2f} ms (a writer-process slot)"
            )
        for strategy in ("snapshot", "direct"):
            res = s[strategy]
            for o in res["overlap"]:
                print(
                    f"{s['size_mb']:>5} {strategy:>9} {res['block_ms']:>9.4f} "
                    f"{res['block_over_sync_get']:>9.4f} {res['bw_gbps']:>8.1f} "
                    f"{res['bw_over_peak']:>6.2f} {o['ratio']:>5} {o['eta']:>6.3f} "
                    f"{o['slowdown']:>8.3f}"
                )
        for o in s["sync"]["overlap"]:
            print(
                f"{s['size_mb']:>5} {'sync get':>9} {'':>9} {'':>9} {'':>8} {'':>6} "
                f"{o['ratio']:>5} {o['eta']:>6.3f} {o['slowdown']:>8.3f}"
            )
        for key, label in (
            ("sink", "Sink"),
            ("sink_borrow", "Sink/borw"),
            ("sink_process", "Sink/proc"),
            ("sink_borrow_process", "borw/proc"),
        ):
            if key not in s:
                continue
            k = s[key]
            if "error" in k:
                print(f"{s['size_mb']:>5} {label:>9} error: {k['error']}")
            else:
                if "startup_ms" in k:
                    print(f"{s['size_mb']:>5} {label:>9} start-up {k['startup_ms']:.1f} ms")
                for o in k["overlap"]:
                    print(
                        f"{s['size_mb']:>5} {label:>9} {o['block_ms']:>9.4f} "
                        f"{o['block_over_sync_get']:>9.4f} {k['bw_gbps']:>8.1f} "
                        f"{k['bw_over_peak']:>6.2f} {o['ratio']:>5} "
                        f"{o['eta']:>6.3f} {o['slowdown']:>8.3f}"
                        + (
                            f"  to flush: eta {o['eta_run']:.3f} slowdown "
                            f"{o['slowdown_run']:.3f}, close {o['close_ms']:.1f} ms"
                            if "eta_run" in o
                            else ""
                        )
                    )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    results: dict[str, Any] = {
        "benchmark": "gpu_overlap",
        "device": name,
        "cupy": cp.__version__,
        "ratios": args.ratios,
        "sizes": [],
    }
    for mb in args.sizes_mb:
        results["sizes"].append(await bench_size(mb, args.frames, args.ratios))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes-mb", default="4,16,64,256", type=lambda s: [int(x) for x in s.split(",")]
    )
    p.add_argument("--ratios", default="0.5,1,2,4", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--frames", default=30, type=int)
    p.add_argument("--capacity", default=4, type=int, help="slots of the stager and the Sink")
    p.add_argument("--tag", default="", help="suffix of the JSON file name (e.g. =_cap8)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    global CAPACITY
    CAPACITY = args.capacity
    results = anyio.run(amain, args)
    results["capacity"] = CAPACITY
    print_table(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", results["device"]).strip("-").lower()
    path = out / f"gpu_overlap-{slug}{args.tag}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
