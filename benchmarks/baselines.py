"""Baselines: the writers simulation codes use today, against snapsink, in one loop.

The loop is the stencil simulation of ``_stencil.py`` (a 2048 x 2048 float32 grid,
a snapshot of the grid every ``k`` steps). Writers, each implemented minimally here:

(a) ``memmap``: a pre-allocated ``.npy`` memmap (``np.lib.format.open_memmap``),
    ``mm[i] = grid`` in the loop, ``mm.flush()`` at the end (the tidal pattern);
(b) ``thread+queue``: an unbounded ``queue.Queue`` fed with ``grid.copy()`` and a
    background thread appending each frame to a file, fsync at the end (the
    common "async" pattern: kUPS, many hand-written MD drivers);
(c) ``zarr append``: zarr-python's sync API, ``arr.append(grid[None])`` per
    snapshot on an array created with zarr's defaults (zstd compression);
    ``zarr append raw`` is the same without compression;
snapsink: ``SyncSink`` (and the async ``Sink``) over ``NpyDirectory``, policy block.

Each run is a fresh subprocess; it reports its loop time (first step to every
frame written and flushed), its peak RSS (``VmHWM``: anonymous plus mapped
file pages) and the peak of the memory its writer holds (``RssAnon`` plus
``RssShmem``, and its child processes' ``RssAnon``: snapsink's slots are shared
memory and its default writer is a process; sampled every 5 ms by a thread),
the longest queue (b), the writer snapsink's sink ran (``sink_writer``), and
the frames stored (read back afterwards).

Scenarios: ``balanced`` (``k`` such that compute ~ the memmap writer's I/O);
``io-bound`` (``k = 1``: writing, with zarr's compression or fsync, costs more
than computing); ``slow-disk`` (``k = 1``, and every writer's writes throttled
to 400 MB/s, emulating a filesystem slower than this machine's page cache, so
that (b)'s queue grows).

    python benchmarks/baselines.py [--quick] [--frames N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling modules: helpers, the stencil and its loops)
import _stencil  # noqa: E402

#: The slow-disk rows: every writer waits 16 MiB / this after each frame it
#: writes (in its writer thread, or in the loop for the synchronous ones): a
#: filesystem slower than the compute (a busy parallel FS), where (b)'s queue
#: grows. The page cache of this machine takes ~4 GB/s, faster than the loop.
SLOW_DISK_BPS = 400e6

#: Frames between NpyDirectory commits for snapsink (as in overlap.py).
COMMIT_EVERY = _common.COMMIT_EVERY


# -- memory sampling (in the child) --------------------------------------------------------
class RssSampler:
    """Peak anonymous and file-backed RSS of this process and its children, read
    from /proc every 5 ms.

    "Anonymous" counts what a writer holds in memory wherever it is: this
    process's ``RssAnon`` and ``RssShmem`` (snapsink's slots are shared memory,
    not anonymous pages), plus each child process's ``RssAnon`` (snapsink's writer
    process; the slots it maps are already counted here)."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.peak_anon = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> tuple[int, int]:
        own = _common.proc_status("self", ("RssAnon", "RssShmem", "RssFile"))
        anon = own["RssAnon"] + own["RssShmem"]
        for pid in _common.child_pids():
            anon += _common.proc_status(pid, ("RssAnon",))["RssAnon"]
        return anon, own["RssFile"]

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        anon, file = self.read()
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_file = max(self.peak_file, file)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def vm_hwm() -> int:
    """Peak RSS of this process (``VmHWM``)."""
    return _common.proc_status("self", ("VmHWM",))["VmHWM"]


# -- the writers (run in the child) -----------------------------------------------------------
#: Bytes per second of the emulated slow filesystem (0: the real disk, through
#: the page cache). Set in the child from its configuration.
THROTTLE = {"bps": 0.0}


def throttle(nbytes: int) -> None:
    """Wait as a write of ``nbytes`` would on a filesystem of ``THROTTLE['bps']``."""
    if THROTTLE["bps"]:
        time.sleep(nbytes / THROTTLE["bps"])


def _steps(sim: _stencil.Stencil, every: int) -> None:
    for _ in range(every):
        sim.step()


def w_memmap(sim: _stencil.Stencil, frames: int, every: int, where: Path) -> dict[str, Any]:
    mm = np.lib.format.open_memmap(
        where / "u.npy", mode="w+", dtype=sim.u.dtype, shape=(frames, *sim.u.shape)
    )
    for i in range(frames):
        _steps(sim, every)
        sim.frame()
        mm[i] = sim.u
        throttle(sim.u.nbytes)
    mm.flush()
    del mm
    return {"stored": int(np.load(where / "u.npy", mmap_mode="r").shape[0])}


def w_thread_queue(sim: _stencil.Stencil, frames: int, every: int, where: Path) -> dict[str, Any]:
    q: queue.Queue[np.ndarray[Any, Any] | None] = queue.Queue()  # unbounded, as usual
    path = where / "u.raw"

    def writer() -> None:
        with open(path, "wb") as fh:
            while (item := q.get()) is not None:
                fh.write(item.data)
                throttle(item.nbytes)
            fh.flush()
            os.fsync(fh.fileno())

    t = threading.Thread(target=writer)
    t.start()
    max_q = 0
    for _ in range(frames):
        _steps(sim, every)
        sim.frame()
        q.put(sim.u.copy())
        max_q = max(max_q, q.qsize())
    q.put(None)
    t.join()
    return {"stored": path.stat().st_size // sim.u.nbytes, "max_queue": max_q}


def _zarr_append(
    sim: _stencil.Stencil, frames: int, every: int, where: Path, compressors: Any
) -> dict[str, Any]:
    import zarr

    kw = {} if compressors == "default" else {"compressors": compressors}
    arr = zarr.create_array(
        store=str(where / "u.zarr"),
        shape=(0, *sim.u.shape),
        chunks=(1, *sim.u.shape),
        dtype=sim.u.dtype,
        **kw,
    )
    for _ in range(frames):
        _steps(sim, every)
        sim.frame()
        arr.append(sim.u[np.newaxis])
        throttle(sim.u.nbytes)
    return {"stored": int(zarr.open_array(str(where / "u.zarr"), mode="r").shape[0])}


def w_zarr(sim: _stencil.Stencil, frames: int, every: int, where: Path) -> dict[str, Any]:
    return _zarr_append(sim, frames, every, where, "default")


def w_zarr_raw(sim: _stencil.Stencil, frames: int, every: int, where: Path) -> dict[str, Any]:
    return _zarr_append(sim, frames, every, where, None)


def _snapsink(api: str) -> Callable[[_stencil.Stencil, int, int, Path], dict[str, Any]]:
    def run(sim: _stencil.Stencil, frames: int, every: int, where: Path) -> dict[str, Any]:
        import snapsink

        # the same slow filesystem as the other writers', in whichever writer
        # the sink runs ("auto": a process, which rebuilds this store)
        store = _common.ThrottledNpy(
            where / "run", bps=THROTTLE["bps"], commit_every=COMMIT_EVERY
        )
        res = _stencil.LOOPS[api](sim, store, "block", frames, every, 8)
        assert res.stats is not None
        return {
            "stored": len(snapsink.open(where / "run")),
            "max_queue": res.stats.peak_queued,
            "dropped": res.stats.dropped,
            "sink_writer": res.writer,
        }

    return run


WRITERS: dict[str, Callable[[_stencil.Stencil, int, int, Path], dict[str, Any]]] = {
    "memmap": w_memmap,
    "thread+queue": w_thread_queue,
    "zarr append": w_zarr,
    "zarr append raw": w_zarr_raw,
    "snapsink sync": _snapsink("sync"),
    "snapsink async": _snapsink("async"),
}
LABEL = {
    "memmap": "(a) memmap .npy, sync",
    "thread+queue": "(b) unbounded Queue + thread",
    "zarr append": "(c) zarr append (zstd)",
    "zarr append raw": "(c') zarr append (raw)",
    "snapsink sync": "snapsink SyncSink npy",
    "snapsink async": "snapsink Sink npy",
}


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One run, in this (fresh) process."""
    where = Path(cfg["dir"])
    THROTTLE["bps"] = float(cfg.get("throttle_bps", 0.0))
    sim = _stencil.Stencil(cfg["grid"])
    _steps(sim, 3)  # warm up
    rss0 = RssSampler.read()
    with RssSampler() as rss:
        t0 = time.perf_counter()
        out = WRITERS[cfg["writer"]](sim, cfg["frames"], cfg["every"], where)
        t_loop = time.perf_counter() - t0
    return {
        "t_loop": t_loop,
        "peak_rss": vm_hwm(),
        "rss_anon_start": rss0[0],
        "peak_rss_anon": rss.peak_anon,
        "peak_rss_file": rss.peak_file,
        **out,
    }


# -- the parent ------------------------------------------------------------------------------
def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    import snapsink

    env = dict(os.environ)
    # the child imports the snapsink this process imported (a checkout's src/ or a copy)
    src = Path(snapsink.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"baseline child {cfg['writer']!r} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def calibrate(grid: int, where: Path) -> tuple[float, float]:
    """Seconds of one stencil step, and of writing one frame with the memmap writer."""
    sim = _stencil.Stencil(grid)
    step = _stencil.time_step(sim)
    best = math.inf
    n = 24
    for rep in range(2):
        path = where / f"cal{rep}.npy"
        t0 = time.perf_counter()
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, grid, grid))
        for i in range(n):
            mm[i] = sim.u
        mm.flush()
        del mm
        best = min(best, (time.perf_counter() - t0) / n)
        path.unlink()
    return step, best


def run(
    frames: int | None = None,
    quick: bool = False,
    grid: int = _stencil.GRID,
    repeats: int | None = None,
) -> dict[str, Any]:
    frames = frames or (16 if quick else 40)
    repeats = repeats or (1 if quick else 3)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with _common.scratch("snapsink-baselines-") as where:
        step, frame_io = calibrate(grid, where)
        k_bal = max(1, round(frame_io / step))
        snap = ["snapsink sync", "snapsink async"]
        scenarios = [
            ("balanced", k_bal, 0.0, list(WRITERS)),
            ("io-bound", 1, 0.0, ["memmap", "zarr append", "zarr append raw", *snap]),
            ("slow-disk", 1, SLOW_DISK_BPS, ["memmap", "thread+queue", *snap]),
        ]
        for label, every, bps, writers in scenarios:
            samples: dict[str, list[dict[str, Any]]] = {w: [] for w in writers}
            for _ in range(repeats):
                for w in writers:
                    d = where / "run"
                    d.mkdir()
                    print(f"  baselines {label}: {w}", file=sys.stderr, flush=True)
                    samples[w].append(
                        _spawn(
                            {
                                "writer": w,
                                "frames": frames,
                                "every": every,
                                "grid": grid,
                                "throttle_bps": bps,
                                "dir": str(d),
                            }
                        )
                    )
                    shutil.rmtree(d)
            for w in writers:
                best = min(samples[w], key=lambda s: s["t_loop"])
                rows.append(
                    {
                        "scenario": label,
                        "every": every,
                        "throttle_bps": bps,
                        "writer": w,
                        "frames": frames,
                        **best,
                        "frames_lost": frames - best["stored"],
                        "rss_anon_growth": best["peak_rss_anon"] - best["rss_anon_start"],
                        "t_loop_samples": [s["t_loop"] for s in samples[w]],
                    }
                )
    result: dict[str, Any] = {
        "benchmark": "baselines",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "quick": quick,
        "grid": grid,
        "frame_bytes": grid * grid * 4,
        "repeats": repeats,
        "commit_every": COMMIT_EVERY,
        "slow_disk_bytes_per_s": SLOW_DISK_BPS,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "step_seconds": step,
        "memmap_frame_write_seconds": frame_io,
        "rss_method": "fresh subprocess per run: VmHWM (peak RSS, anon + file pages) and "
        "RssAnon + RssShmem of the run's process plus its children's RssAnon (a writer "
        "process), sampled every 5 ms by a thread",
        "rows": rows,
    }
    result["ratios"] = ratios(result)
    return result


def _row(r: dict[str, Any], scenario: str, writer: str) -> dict[str, Any]:
    return next(x for x in r["rows"] if x["scenario"] == scenario and x["writer"] == writer)


def ratios(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """snapsink's loop time over each baseline's, with the target."""
    out: dict[str, dict[str, Any]] = {}
    for api in ("sync", "async"):
        s_bal = _row(r, "balanced", f"snapsink {api}")["t_loop"]
        s_io = _row(r, "io-bound", f"snapsink {api}")["t_loop"]
        out[f"snapsink {api} / (a) memmap, balanced"] = {
            "ratio": s_bal / _row(r, "balanced", "memmap")["t_loop"],
            "target": "<= 0.6",
        }
        s_slow = _row(r, "slow-disk", f"snapsink {api}")
        b_slow = _row(r, "slow-disk", "thread+queue")
        out[f"snapsink {api} / (b) thread+queue, slow-disk"] = {
            "ratio": s_slow["t_loop"] / b_slow["t_loop"],
            "target": "<= 1.0",
        }
        out[f"snapsink {api} / (b) RssAnon growth, slow-disk"] = {
            "ratio": s_slow["rss_anon_growth"] / max(b_slow["rss_anon_growth"], 1),
            "target": "bounded (< 1)",
        }
        for scen, s_t in (("balanced", s_bal), ("io-bound", s_io)):
            out[f"(c) zarr append / snapsink {api}, {scen}"] = {
                "ratio": _row(r, scen, "zarr append")["t_loop"] / s_t,
                "target": ">= 2",
            }
            out[f"(c') zarr append raw / snapsink {api}, {scen}"] = {
                "ratio": _row(r, scen, "zarr append raw")["t_loop"] / s_t,
                "target": "(info)",
            }
    return out


def summary(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v["ratio"] for k, v in r["ratios"].items()}


def print_table(r: dict[str, Any]) -> None:
    mib = r["frame_bytes"] / 2**20
    print(
        f"baselines: {r['frames'] if 'frames' in r else r['rows'][0]['frames']} frames of "
        f"{mib:.0f} MiB; one step {r['step_seconds'] * 1e3:.1f} ms, one memmap frame write "
        f"{r['memmap_frame_write_seconds'] * 1e3:.1f} ms; best of {r['repeats']}"
    )
    head = (
        f"{'scenario':<10}{'k':>3} {'writer':<30}{'loop s':>8}{'peak RSS':>10}"
        f"{'anon +':>9}{'max q':>7}{'lost':>6}"
    )
    print(head)
    print("-" * len(head))
    for x in r["rows"]:
        mq = x.get("max_queue")
        print(
            f"{x['scenario']:<10}{x['every']:>3} {LABEL[x['writer']]:<30}{x['t_loop']:>8.2f}"
            f"{x['peak_rss'] / 2**20:>9.0f}M{x['rss_anon_growth'] / 2**20:>8.0f}M"
            f"{'' if mq is None else mq:>7}{x['frames_lost']:>6}"
        )
    print(
        "peak RSS: VmHWM of a fresh process (the memmap's file pages count); anon +: "
        "growth of RssAnon + RssShmem during the loop, a writer process's RssAnon "
        "included (sampled every 5 ms)"
    )
    print(f"{'ratio':<50}{'value':>8}  target")
    for name, v in r["ratios"].items():
        print(f"{name:<50}{v['ratio']:>8.2f}  {v['target']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--grid", type=int, default=_stencil.GRID)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    result = run(args.frames, args.quick, args.grid, args.repeats)
    return _common.finish(result, print_table, args.json)


if __name__ == "__main__":
    main()
