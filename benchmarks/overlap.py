"""Overlap: how much of the I/O snapsink hides behind a simulation's compute.

A simulation loop computes one step, then writes a 4 MiB snapshot (a 1024 x 1024
float32 field and a float64 scalar), for each of four kinds of compute, each
step calibrated to about the time of writing one frame (``T_compute ~= T_io``):

- ``python``: a pure-Python float loop, which holds the GIL;
- ``numpy-small``: many small NumPy ops on 256 x 256 float64 arrays (temporaries);
- ``numpy-large``: one large GIL-releasing NumPy op per step (``np.exp`` over a
  big array; ``--large-op matmul``: a BLAS matmul);
- ``sleep``: ``time.sleep``.

For each store (NpyDirectory, ZarrStore; ``commit_every=8``, so every case pays
real fsyncs) and API (async ``Sink``, ``SyncSink``; policy block; writer per
``--writer``) it measures, side by side in one run:

- ``T_compute``: the loop with no I/O, minus its capture floor; for the async
  rows, the same loop as a task on an event loop, yielding once a step (a
  pure-Python step runs 6-15% slower there than in a plain loop, with no sink
  at all: that is the event loop's cost, not the sink's);
- ``capture``: a bare ``np.copyto`` of each frame into a preallocated buffer,
  timed in that loop: the least any capture can cost, so the best possible
  eta is ``1 - capture / T_io``;
- ``T_io``: the same frames appended synchronously to a fresh store (open,
  appends, commits, close; no compute);
- ``T_memmap``: the loop writing each frame into an ``np.lib.format.open_memmap``
  file, flushed (msync: data to disk) at the same cadence: the synchronous way;
- ``T_total``: the loop with snapsink, from creating the sink to its close
  (every frame durable).

and reports ``eta = (T_compute + T_io - T_total) / T_io`` (1: the I/O is entirely
hidden; 0: nothing is) and the loop time over the memmap loop's. Targets: eta
>= 0.85 for every kind; loop time <= 0.55x the memmap loop.

Each variant runs in a fresh subprocess whose environment pins glibc's malloc
thresholds (see ``_common.MMAP_THRESHOLD``: otherwise NumPy temporaries cost
what the heap's history makes them, ~2x apart between processes); variants are
interleaved (rotated every other round and reversed in odd ones, recorded as
``round_orders``; each case
after an ``os.sync()``, so that none pays for the one before) and each figure
is the best of ``--repeat`` runs. Each case writes
at least ``--io-seconds`` of I/O (5 s; 1 s with ``--quick``), so that the
writer's start and the last frames' commit, which nothing can hide, stay small.

    python benchmarks/overlap.py [--quick] [--writer auto|thread|process|both]
                                 [--kinds ...] [--stores npy,zarr] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
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
STORES = ("npy", "zarr")
APIS = ("async", "sync")
SIDE = 1024  # a 1024 x 1024 float32 field: 4 MiB
TARGET_ETA = 0.85
TARGET_LOOP_VS_MEMMAP = 0.55
DEFAULT_JSON = HERE / "results" / "overlap-cpu.json"


# -- in the child: one variant ------------------------------------------------------------
def _field(side: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random((side, side), dtype=np.float32)


def _make_compute(spec: Mapping[str, Any]) -> _compute.Compute:
    c = _compute.make(spec["kind"], spec["units"], spec.get("large_op", "exp"))
    for _ in range(2):
        c.step()  # warm up (first-touch of its arrays)
    return c


def child_calibrate(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Frames per case and seconds to write one frame to each store; units of each step.

    A short probe sets the number of frames; the time per frame is then taken
    from a run of that length (a long run through the page cache writes slower
    per frame than a short one), and each kind's step is scaled to it. Where
    that run's time per frame differs from the probe's so much that the case
    would write under 90% of ``io_seconds`` (or over twice it), the number of
    frames is set again from it and measured again (twice at most): a
    case with less I/O than asked leaves the sink's start and final commit a
    larger share of ``T_total``.

    Each of those runs is timed as the cases time ``T_io``: after
    ``_common.settle_disk()``, the best of 3. The step still comes out
    1.0-2.0x the ``T_io`` of its cases, not the 1x asked: on the 2-core VM the
    disk's speed swings 3-4x from one round of cases to the next (see "The
    disk's speed" in docs/benchmarks.md), and eta's loss to a slower step grows
    with that ratio.
    """
    u = _field(spec["side"])
    fields = {"u": u, "e": np.float64(1.0)}
    where = Path(spec["dir"])
    ce = spec["commit_every"]
    t_io: dict[str, float] = {}
    t_probe: dict[str, float] = {}
    frames: dict[str, int] = {}
    units: dict[str, dict[str, Any]] = {}

    def per_frame(store: str, n: int, runs: int) -> float:
        best = math.inf
        for _ in range(runs):
            _common.settle_disk()
            best = min(best, _common.io_alone(store, fields, n, where / f"probe-{store}", ce) / n)
        return best

    for store in spec["stores"]:
        n = spec["probe_frames"]
        t_probe[store] = per_frame(store, n, 2)
        frames[store] = spec["frames"] or max(
            2 * ce, ce * math.ceil(spec["io_seconds"] / t_probe[store] / ce)
        )
        for attempt in range(3):
            n = frames[store]
            _check_room(where, n, u.nbytes + 8)
            t_io[store] = per_frame(store, n, 3)
            seconds = n * t_io[store]
            close_enough = 0.9 * spec["io_seconds"] <= seconds <= 2 * spec["io_seconds"]
            if spec["frames"] or close_enough or attempt == 2:
                break
            frames[store] = max(2 * ce, ce * math.ceil(spec["io_seconds"] / t_io[store] / ce))
        units[store] = {}
        for kind in spec["kinds"]:
            target = t_io[store] * spec["compute_ratio"]
            n_units, measured = _compute.calibrate(kind, target, spec["large_op"])
            c = _compute.make(kind, n_units, spec["large_op"])
            units[store][kind] = {
                "units": n_units,
                "step_seconds": measured,
                "what": c.describe(),
            }
    return {"t_io_frame": t_io, "t_io_frame_probe": t_probe, "frames": frames, "units": units}


def _mem_available() -> int:
    """Bytes of memory the kernel says are available (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # pragma: no cover - not Linux


def _check_room(where: Path, frames: int, frame_bytes: int) -> None:
    """Refuse a case that would not fit where the stores go: on tmpfs (``--dir
    /dev/shm``) the files are memory, and 5 s of I/O at the page cache's speed
    is more than this machine has (SystemExit, before anything is written)."""
    need = frames * frame_bytes
    free = shutil.disk_usage(where).free
    room = f"{free / 1e9:.1f} GB is free there"
    if _common.filesystem(where).startswith("tmpfs"):
        # tmpfs says how large it may grow, not how much memory is there: a
        # case may take at most half of what is available
        half = _mem_available() // 2
        if half < free:
            free = half
            room = f"tmpfs is memory: half the memory available is {half / 1e9:.1f} GB"
    if need * 1.2 > free:
        most = int(free / 1.2 // frame_bytes)
        raise SystemExit(
            f"overlap: --dir {where.parent}: a case writes {need / 1e9:.1f} GB "
            f"({frames} frames of {frame_bytes} bytes), and {room}; pass --frames {most} "
            "or fewer (or a smaller --io-seconds)"
        )


def _preemptions() -> int:
    """Times this thread was preempted so far (Linux; 0 elsewhere): another task
    took its core, an interrupt's work included."""
    if not hasattr(resource, "RUSAGE_THREAD"):  # pragma: no cover - not Linux
        return 0
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


def child_compute(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The loop with no I/O; a bare copy of each frame, timed apart (the capture
    floor). ``api`` "async": the same loop as a task on an event loop, yielding
    once a step as the async sink's write does (the async rows' reference)."""
    c, u = _make_compute(spec), _field(spec["side"])
    buf = np.empty_like(u)
    side, frames = spec["side"], spec["frames"]
    steps: list[float] = []
    acc = {"cpu": 0.0, "capture": 0.0}

    def one(i: int) -> None:
        s0, c0 = time.perf_counter(), time.thread_time()
        e = c.step()
        s1 = time.perf_counter()
        acc["cpu"] += time.thread_time() - c0
        steps.append(s1 - s0)
        u[i % side, 0] = e
        c0 = time.perf_counter()
        np.copyto(buf, u)
        acc["capture"] += time.perf_counter() - c0

    p0 = _preemptions()
    t0 = time.perf_counter()
    if spec.get("api") == "async":

        async def body() -> None:
            for i in range(frames):
                one(i)
                await anyio.lowlevel.checkpoint()

        anyio.run(body)
    else:
        for i in range(frames):
            one(i)
    t_loop = time.perf_counter() - t0
    return {
        "t_loop": t_loop,
        "capture": acc["capture"],
        "t_compute": t_loop - acc["capture"],
        "step_mean": statistics.mean(steps),
        "step_cpu_mean": acc["cpu"] / frames,
        "preempted_per_s": (_preemptions() - p0) / t_loop,
    }


def child_memmap(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The loop writing each frame into a preallocated ``.npy`` memmap, synchronously."""
    c, u = _make_compute(spec), _field(spec["side"])
    side, frames, every = spec["side"], spec["frames"], spec["commit_every"]
    where = Path(spec["dir"]) / "memmap"
    where.mkdir()
    t0 = time.perf_counter()
    mu = np.lib.format.open_memmap(
        where / "u.npy", mode="w+", dtype=u.dtype, shape=(frames, *u.shape)
    )
    me = np.lib.format.open_memmap(where / "e.npy", mode="w+", dtype=np.float64, shape=(frames,))
    for i in range(frames):
        e = c.step()
        u[i % side, 0] = e
        mu[i] = u
        me[i] = e
        if (i + 1) % every == 0:
            mu.flush()  # msync(MS_SYNC): the dirty pages on disk, as a commit's fsync
            me.flush()
    mu.flush()
    me.flush()
    del mu, me
    t_total = time.perf_counter() - t0
    got = np.load(where / "u.npy", mmap_mode="r").shape[0]
    shutil.rmtree(where, ignore_errors=True)
    assert got == frames, (got, frames)
    return {"t_total": t_total}


def child_io(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The same frames appended synchronously to a fresh store, no compute."""
    fields = {"u": _field(spec["side"]), "e": np.float64(1.0)}
    path = Path(spec["dir"]) / "io"
    return {
        "t_io": _common.io_alone(spec["store"], fields, spec["frames"], path, spec["commit_every"])
    }


def child_sink(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The loop writing each frame through snapsink (policy block)."""
    c, u = _make_compute(spec), _field(spec["side"])
    side, frames, kind = spec["side"], spec["frames"], spec["store"]
    path = Path(spec["dir"]) / "sink"
    requested = spec["writer"]
    _common.store_class(kind)  # its module imported now, as T_io's case has it
    steps: list[float] = []
    acc = {"t_write": 0.0, "t_open": 0.0, "cpu": 0.0}
    p0 = _preemptions()

    def one(i: int) -> dict[str, Any]:
        s0, c0 = time.perf_counter(), time.thread_time()
        e = c.step()
        steps.append(time.perf_counter() - s0)
        acc["cpu"] += time.thread_time() - c0
        u[i % side, 0] = e
        return {"u": u, "e": np.float64(e)}

    if spec["api"] == "sync":
        t0 = time.perf_counter()
        store = _common.make_store(kind, path, spec["commit_every"])
        kw = _common.sink_kwargs(snapsink.SyncSink, requested)
        with snapsink.SyncSink(store, capacity=spec["capacity"], policy="block", **kw) as sink:
            acc["t_open"] = time.perf_counter() - t0
            writer = _common.writer_kind(sink, requested, store)
            t_last = time.perf_counter()
            for i in range(frames):
                fields = one(i)
                w0 = time.perf_counter()
                sink.write(fields, step=i, time=i * 0.01)
                t_last = time.perf_counter()
                acc["t_write"] += t_last - w0
        t_end = time.perf_counter()
    else:

        async def body() -> tuple[float, float, float, tuple[str, str], Any]:
            t0 = time.perf_counter()
            store = _common.make_store(kind, path, spec["commit_every"])
            kw = _common.sink_kwargs(snapsink.Sink, requested)
            sink = snapsink.Sink(store, capacity=spec["capacity"], policy="block", **kw)
            async with sink:
                acc["t_open"] = time.perf_counter() - t0
                writer = _common.writer_kind(sink, requested, store)
                t_last = time.perf_counter()
                for i in range(frames):
                    fields = one(i)
                    w0 = time.perf_counter()
                    await sink.write(fields, step=i, time=i * 0.01)
                    t_last = time.perf_counter()
                    acc["t_write"] += t_last - w0
            return t0, t_last, time.perf_counter(), writer, sink

        t0, t_last, t_end, writer, sink = anyio.run(body)
    stats = sink.statistics()
    got = len(snapsink.open(path))
    shutil.rmtree(path, ignore_errors=True)
    assert got == stats.written == frames, (got, stats, frames)
    return {
        "t_total": t_end - t0,
        "t_open": acc["t_open"],
        "t_write": acc["t_write"],
        "t_close": t_end - t_last,
        "step_mean": statistics.mean(steps),
        "step_cpu_mean": acc["cpu"] / frames,
        "preempted_per_s": (_preemptions() - p0) / (t_end - t0),
        "writer": writer[0],
        "writer_how": writer[1],
        "written": stats.written,
        "dropped": stats.dropped,
        "spilled": stats.spilled,
        "peak_queued": stats.peak_queued,
    }


CHILDREN = {
    "calibrate": child_calibrate,
    "compute": child_compute,
    "memmap": child_memmap,
    "io": child_io,
    "sink": child_sink,
}


# -- the parent ---------------------------------------------------------------------------
def _variants(apis: list[str], writers: list[str]) -> list[tuple[str, str, str]]:
    """(variant, api, writer): the references, then every snapsink loop."""
    refs = [("compute", "", ""), ("memmap", "", ""), ("io", "", "")]
    if "async" in apis:
        # the async rows' own reference: the same loop on an event loop, no sink
        refs.insert(1, ("compute", "async", ""))
    return refs + [("sink", a, w) for a in apis for w in writers]


def _round_order(
    variants: list[tuple[str, str, str]], rep: int
) -> list[tuple[str, str, str]]:
    """Round ``rep``'s order: rotated by ``rep // 2``, reversed in odd rounds, so
    no variant always runs first (round 2k+1 starts with what ended round 2k),
    nor always right after the same one. The rotation alone kept the async sink
    right after the synchronous io case in every round, whose deleted gigabytes
    the disk and the kernel were still working off (the async rows came out
    0.05-0.29 below the sync ones); reversing a rotation by ``rep`` started
    rounds 2k and 2k+1 with the same variant."""
    k = (rep // 2) % len(variants)
    order = variants[k:] + variants[:k]
    if rep % 2:
        order.reverse()
    return order


def run(
    quick: bool = False,
    kinds: list[str] | None = None,
    stores: list[str] | None = None,
    apis: list[str] | None = None,
    writer: str = "auto",
    repeats: int | None = None,
    io_seconds: float | None = None,
    frames: int | None = None,
    capacity: int = 8,
    side: int = SIDE,
    compute_ratio: float = 1.0,
    large_op: str = "exp",
    directory: str | None = None,
    mmap_threshold: int = _common.MMAP_THRESHOLD,
    trim_threshold: int = _common.TRIM_THRESHOLD,
    verbose: bool = True,
) -> dict[str, Any]:
    """Calibrate, then measure every (kind, store) group; returns the JSON-able result."""
    kinds = kinds or list(_compute.KINDS)
    stores = stores or (["npy"] if quick else list(STORES))
    apis = apis or list(APIS)
    repeats = repeats or (1 if quick else 3)
    io_seconds = io_seconds or (1.0 if quick else 5.0)
    writers = _common.writers_to_run(writer)
    env = _common.child_env(mmap_threshold, trim_threshold)
    ce = _common.COMMIT_EVERY
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        if verbose:
            print(f"  overlap: {msg}", file=sys.stderr, flush=True)

    with _common.scratch("snapsink-overlap-", directory) as where:
        fs = _common.filesystem(where)
        base = {"side": side, "commit_every": ce, "large_op": large_op, "dir": str(where)}
        log("calibrating")
        cal = _common.spawn(
            SCRIPT,
            {
                **base,
                "variant": "calibrate",
                "stores": stores,
                "kinds": kinds,
                "compute_ratio": compute_ratio,
                "probe_frames": 6 * ce,
                "io_seconds": io_seconds,
                "frames": frames,
            },
            env,
        )
        n_frames: dict[str, int] = cal["frames"]
        groups = [(k, s) for s in stores for k in kinds]
        variants = _variants(apis, writers)
        samples: dict[tuple[str, str], dict[tuple[str, str, str], list[dict[str, Any]]]] = {
            g: {v: [] for v in variants} for g in groups
        }
        orders = [_round_order(variants, rep) for rep in range(repeats)]
        for rep in range(repeats):
            for kind, store in groups:
                for v in orders[rep]:
                    variant, api, w = v
                    log(f"round {rep + 1}/{repeats}: {kind} {store} {variant} {api} {w}".rstrip())
                    # what the previous case left to the disk is written first
                    _common.settle_disk()
                    spec = {
                        **base,
                        "variant": variant,
                        "kind": kind,
                        "units": cal["units"][store][kind]["units"],
                        "store": store,
                        "frames": n_frames[store],
                        "api": api,
                        "writer": w,
                        "capacity": capacity,
                    }
                    samples[(kind, store)][v].append(_common.spawn(SCRIPT, spec, env))
    rows = [
        _row(kind, store, v, samples[(kind, store)], cal, n_frames[store], side)
        for kind, store in groups
        for v in variants
        if v[0] == "sink"
    ]
    return {
        "benchmark": "overlap",
        "version": 2,
        **_common.machine(),
        "quick": quick,
        "frame": f"{side}x{side} float32 + float64 scalar",
        "frame_bytes": side * side * 4 + 8,
        "side": side,
        "capacity": capacity,
        "policy": "block",
        "commit_every": ce,
        "repeats": repeats,
        "round_orders": [[" ".join(filter(None, v)) for v in o] for o in orders],
        "io_seconds": io_seconds,
        "compute_ratio": compute_ratio,
        "large_op": large_op,
        "writer_option": writer,
        "writer_supported": {
            "Sink": _common.writer_supported(snapsink.Sink),
            "SyncSink": _common.writer_supported(snapsink.SyncSink),
        },
        "writers_requested": writers,
        "filesystem": fs,
        "malloc_env": _common.malloc_settings(env),
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.perf_counter() - t_start,
        "calibration": cal,
        "rows": rows,
        "targets": {"eta": TARGET_ETA, "loop_vs_memmap": TARGET_LOOP_VS_MEMMAP},
    }


def _row(
    kind: str,
    store: str,
    v: tuple[str, str, str],
    s: Mapping[tuple[str, str, str], list[dict[str, Any]]],
    cal: Mapping[str, Any],
    frames: int,
    side: int,
) -> dict[str, Any]:
    mm, io, runs = s[("memmap", "", "")], s[("io", "", "")], s[v]
    # the compute alone where the sink's loop runs it: an async driver's on its
    # event loop (a pure-Python step ran 6-15% slower there than in a plain
    # loop, with no sink at all: the loop's cost, not the sink's)
    comp = s.get(("compute", v[1], "")) or s[("compute", "", "")]
    best = min(runs, key=lambda r: r["t_total"])
    tc = min(r["t_compute"] for r in comp)
    capture = min(r["capture"] for r in comp)
    tio = min(r["t_io"] for r in io)
    tmm = min(r["t_total"] for r in mm)
    step_alone = min(r["step_mean"] for r in comp)
    eta = (tc + tio - best["t_total"]) / tio
    loop_vs_mm = best["t_total"] / tmm
    return {
        "kind": kind,
        "compute": cal["units"][store][kind]["what"],
        "store": store,
        "api": v[1],
        "writer_requested": v[2],
        "writer": best["writer"],
        "writer_how": best["writer_how"],
        "frames": frames,
        "frame_bytes": side * side * 4 + 8,
        "t_compute": tc,
        "t_io": tio,
        "t_memmap": tmm,
        "t_total": best["t_total"],
        "capture": capture,
        "compute_over_io": tc / tio,
        "eta": eta,
        # the capture floor: a sink must at least copy each frame, in the loop
        "eta_floor": 1 - capture / tio,
        # the best any sink could do: T_total >= max(T_compute + capture, T_io)
        # (equal to eta_floor when T_compute + capture >= T_io)
        "eta_best": (tc + tio - max(tc + capture, tio)) / tio,
        # without the sink's start (a writer process spawning) and its close (the
        # last frames' write and commit): what a long run tends to
        "eta_loop": (tc + tio - (best["t_total"] - best["t_open"] - best["t_close"])) / tio,
        "loop_vs_memmap": loop_vs_mm,
        "memmap_vs_compute": tmm / tc,
        "t_open": best["t_open"],
        "t_close": best["t_close"],
        "t_in_write": best["t_write"],
        "compute_slowdown": min(r["step_mean"] for r in runs) / step_alone,
        # the same in CPU time: what is left once preemption is taken out (the
        # caches and memory the writer shares with the simulation)
        "compute_cpu_slowdown": min(r["step_cpu_mean"] for r in runs)
        / min(r["step_cpu_mean"] for r in comp),
        # the simulation's thread preempted per second (a core's interrupts
        # included): in the best run, and alone
        "preempted_per_s": best["preempted_per_s"],
        "preempted_per_s_alone": min(r["preempted_per_s"] for r in comp),
        "written": best["written"],
        "dropped": best["dropped"],
        "spilled": best["spilled"],
        "peak_queued": best["peak_queued"],
        "meets_eta": eta >= TARGET_ETA,
        "meets_loop_vs_memmap": loop_vs_mm <= TARGET_LOOP_VS_MEMMAP,
        "samples": {
            "t_total": [r["t_total"] for r in runs],
            "t_compute": [r["t_compute"] for r in comp],
            "capture": [r["capture"] for r in comp],
            "t_io": [r["t_io"] for r in io],
            "t_memmap": [r["t_total"] for r in mm],
        },
    }


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, for run.py's summary: per kind, the worst row."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(x["kind"] for x in r["rows"]):
        rows = [x for x in r["rows"] if x["kind"] == kind]
        out[f"eta, {kind}, worst row (>= {TARGET_ETA})"] = min(x["eta"] for x in rows)
        out[f"loop / memmap loop, {kind}, worst row (<= {TARGET_LOOP_VS_MEMMAP})"] = max(
            x["loop_vs_memmap"] for x in rows
        )
    return out


def _mark(ok: bool) -> str:
    return " " if ok else "!"


def print_table(r: dict[str, Any]) -> None:
    cal = r["calibration"]
    io = ", ".join(
        f"{_common.STORE_LABEL[s]} {t * 1e3:.2f} ms ({cal['frames'][s]} frames)"
        for s, t in cal["t_io_frame"].items()
    )
    print(
        f"overlap: {r['frame']} frames ({r['frame_bytes'] / 2**20:.0f} MiB), capacity "
        f"{r['capacity']}, commit every {r['commit_every']}, policy block, best of "
        f"{r['repeats']}; one frame's synchronous write: {io}; stores on "
        f"{r.get('filesystem', '?')}"
    )
    print(
        f"writer: --writer {r['writer_option']} (writer= option "
        f"{'supported' if r['writer_supported']['Sink'] else 'absent: the consumer thread'}); "
        f"children: {', '.join(f'{k}={v}' for k, v in r['malloc_env'].items())}"
    )
    head = (
        f"{'kind':<12}{'store':<13}{'api':<6}{'writer':<8}{'T_comp':>7}{'T_io':>7}{'T_mm':>7}"
        f"{'T_total':>8}{'eta':>7}{'floor':>7}{'best':>6}{'eta_lp':>7}{'/mm':>7}{'open':>6}"
        f"{'write':>6}{'close':>6}{'slowdn':>7}{'cpu_sl':>7}{'pre/s':>7}"
    )
    print(head)
    print("-" * len(head))
    for x in r["rows"]:
        print(
            f"{x['kind']:<12}{_common.STORE_LABEL[x['store']]:<13}{x['api']:<6}"
            f"{x['writer']:<8}{x['t_compute']:>7.2f}{x['t_io']:>7.2f}{x['t_memmap']:>7.2f}"
            f"{x['t_total']:>8.2f}{x['eta']:>6.2f}{_mark(x['meets_eta'])}{x['eta_floor']:>7.2f}"
            f"{x['eta_best']:>6.2f}{x['eta_loop']:>7.2f}{x['loop_vs_memmap']:>6.2f}{_mark(x['meets_loop_vs_memmap'])}"
            f"{x['t_open']:>6.2f}{x['t_in_write']:>6.2f}{x['t_close']:>6.2f}"
            f"{x['compute_slowdown']:>7.2f}{x['compute_cpu_slowdown']:>7.2f}"
            f"{x['preempted_per_s']:>7.0f}"
        )
    print(
        "eta = (T_compute + T_io - T_total) / T_io; floor = 1 - capture / T_io (capture: a bare "
        "np.copyto of every frame, timed in the loop); best: the best eta any sink could reach, "
        "with T_total = max(T_compute + capture, T_io) (the floor when T_compute + capture >= "
        "T_io); eta_lp: eta without the sink's open and close; /mm: T_total over the "
        "synchronous memmap loop's T_mm; open, write, close: seconds creating and entering the "
        "sink, inside write() calls, and closing it; slowdn: compute step time with the sink / "
        "alone; cpu_sl: the same in the thread's CPU time (preemption taken out); pre/s: the "
        "simulation's thread preempted per second in that run (another task or a core's "
        "interrupt work took its core)"
    )
    n_eta = sum(x["meets_eta"] for x in r["rows"])
    n_mm = sum(x["meets_loop_vs_memmap"] for x in r["rows"])
    print(
        f"targets: eta >= {TARGET_ETA} ({n_eta}/{len(r['rows'])} rows), loop <= "
        f"{TARGET_LOOP_VS_MEMMAP}x the memmap loop ({n_mm}/{len(r['rows'])} rows); ! marks a "
        f"miss; load average {r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} "
        f"after; {r['seconds']:.0f} s"
    )
    for s, per in cal["units"].items():
        what = "; ".join(f"{k}: {u['what']}" for k, u in per.items())
        print(f"compute per step ({_common.STORE_LABEL[s]}): {what}")


def _list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = sorted(set(items) - set(choices))
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)}; expected some of {', '.join(choices)}"
            )
        return items

    return parse


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="NpyDirectory only, 1 s of I/O")
    parser.add_argument("--kinds", type=_list(_compute.KINDS), default=None)
    parser.add_argument("--stores", type=_list(STORES), default=None)
    parser.add_argument("--apis", type=_list(APIS), default=None)
    parser.add_argument(
        "--writer",
        choices=(*_common.WRITER_CHOICES, "both"),
        default="auto",
        help="passed to Sink/SyncSink when they take writer=; both: thread and process rows",
    )
    parser.add_argument("--repeat", "--repeats", dest="repeats", type=int, default=None)
    parser.add_argument("--io-seconds", type=float, default=None, help="I/O per case (5; 1)")
    parser.add_argument("--frames", type=int, default=None, help="frames per case (overrides)")
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--side", type=int, default=SIDE, help="field side (1024: 4 MiB)")
    parser.add_argument("--compute-ratio", type=float, default=1.0, help="T_compute / T_io")
    parser.add_argument("--large-op", choices=("exp", "matmul"), default="exp")
    parser.add_argument(
        "--dir",
        default=None,
        help="where the stores go (default: the temp directory); e.g. /dev/shm: the "
        "page cache's copy alone, without the disk's run-to-run variation",
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
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["variant"]](spec)))
        return {}
    result = run(
        quick=args.quick,
        kinds=args.kinds,
        stores=args.stores,
        apis=args.apis,
        writer=args.writer,
        repeats=args.repeats,
        io_seconds=args.io_seconds,
        frames=args.frames,
        capacity=args.capacity,
        side=args.side,
        compute_ratio=args.compute_ratio,
        large_op=args.large_op,
        directory=args.dir,
        mmap_threshold=args.mmap_threshold,
        trim_threshold=args.trim_threshold,
    )
    return _common.finish(result, print_table, args.json or (None if args.quick else DEFAULT_JSON))


if __name__ == "__main__":
    main()
