"""``snapsink demo``: one simulation run three ways, to show what snapsink saves.

A 2-D scalar wave field (leapfrog) and particles drifting down its gradient,
on NumPy or CuPy; every ``--every`` steps a frame (the field, the particles'
positions, the energy) is produced. The same run is timed (a) without I/O,
(b) with the synchronous writer most codes use today (a preallocated ``.npy``
memmap per field, a row written per frame, flush and fsync at the end) and
(c) through ``snapsink.SyncSink(store)``, the store built as a user builds it.
The summary compares the three loop times and checks the stored frames.

Each run is a fresh process with the same pinned allocator settings
(:data:`MALLOC_ENV`): the loop's compute alone varies about 2x between
processes otherwise, which would drown the difference being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._errors import SnapsinkError, StoreExistsError
from ._wavesim import WaveSim

__all__ = ["MALLOC_ENV", "WaveSim", "add_parser", "judge", "run"]

#: glibc malloc settings every run gets (unless already set in the environment).
#: The simulation's NumPy temporaries are ``4 * grid**2`` bytes (256 KiB at the
#: default grid). Left to itself, glibc moves its mmap threshold as chunks are
#: freed, so whether those temporaries come from the heap or from a fresh
#: mmap (page faults on every use) depends on the process's heap history: the
#: same loop measured 0.65 s or 1.43 s in identical processes. Pinning the
#: threshold at 32 MiB (the largest glibc accepts) keeps every temporary up to
#: grid 2896 on the heap. Pinning it also freezes the trim threshold at its
#: 128 KiB default, so each freed temporary at the top of the heap would go
#: back to the kernel and fault in again (2.5 s for that loop): the trim
#: threshold is raised to 64 MiB with it. The result is the steady state a long
#: simulation reaches, the same in every run.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}

VARIANTS = ("none", "sync", "snapsink")
LABELS = {"none": "no I/O", "sync": "synchronous writer", "snapsink": "snapsink"}

# The child runs under `-c`, not `-m snapsink`: snapsink's writer process may be
# started with the spawn method, which re-imports a `-m` main module, and
# `snapsink.__main__` runs the command when imported.
_CHILD = "import sys; from snapsink._cli.demo import _child; sys.exit(_child(sys.argv[1]))"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a small simulation without I/O, with a synchronous writer and with snapsink",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--out",
        help="the snapsink store to create and keep; must not exist "
        "(default: a temporary directory, removed at the end)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the data written to the temporary directory"
    )
    p.add_argument("--frames", type=int, default=600, help="snapshots to write (600)")
    p.add_argument("--every", type=int, default=5, help="simulation steps per snapshot (5)")
    p.add_argument("--grid", type=int, default=256, help="grid points per side (256)")
    p.add_argument("--capacity", type=int, default=8, help="sink channel capacity (8)")
    p.add_argument(
        "--repeat", type=int, default=1, help="run the three N times, interleaved; best of N (1)"
    )
    p.add_argument("--format", choices=("npy", "zarr"), default="npy")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.set_defaults(handler=run)


def pick_device(choice: str) -> tuple[Any, str]:
    """The array module for ``--device`` and a description of it."""
    if choice == "cpu":
        return np, "cpu (NumPy)"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
            return cupy, f"gpu (CuPy, {name})"
    except Exception as exc:
        if choice == "gpu":
            raise SnapsinkError(
                f"--device gpu: no usable CUDA device via CuPy ({exc}); "
                "install the gpu extra: pip install 'snapsink[gpu]'"
            ) from exc
    if choice == "gpu":
        raise SnapsinkError("--device gpu: CuPy sees no CUDA device")
    return np, "cpu (NumPy)"


class Progress:
    """A one-line progress bar on a terminal (silent otherwise), redrawn at most 10x/s.

    Hand-written rather than tqdm: it needs the sink's queue and bytes, and a
    dependency for thirty lines is not worth it. The statistics are asked for
    only when the bar is redrawn.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, statistics: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        st = statistics()
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        fill = int(width * done / max(self.total, 1))
        self.stream.write(
            f"\r  snapsink {100 * done / max(self.total, 1):3.0f}% "
            f"|{'#' * fill}{'.' * (width - fill)}| {done}/{self.total} frames  "
            f"{st.bytes_written / 1e6 / elapsed:,.1f} MB/s stored  "
            f"queue {st.queued}/{st.capacity}  {elapsed:.0f}s<{left:.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- one run, in a fresh process ------------------------------------------------------------
def _host(xp: Any) -> Callable[[Any], np.ndarray[Any, Any]]:
    if xp is np:
        return np.asarray
    return lambda a: a.get()  # a device-to-host copy that waits for the stream


def _checksum(*arrays: np.ndarray[Any, Any]) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc


def _run_none(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(spec["frames"]):
        sim.advance(spec["every"])
    return {"seconds": time.perf_counter() - t0}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_sync(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    """What simulation codes do today: a preallocated ``.npy`` memmap per field."""
    host = _host(sim.xp)
    frames, every = spec["frames"], spec["every"]
    out = Path(spec["path"])
    out.mkdir()
    shapes: dict[str, tuple[Any, tuple[int, ...]]] = {
        "field": (np.float32, (frames, *sim.u.shape)),
        "positions": (np.float32, (frames, *sim.pos.shape)),
        "energy": (np.float64, (frames,)),
        "steps": (np.int64, (frames,)),
        "times": (np.float64, (frames,)),
    }
    maps = {
        name: np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
        for name, (dt, shape) in shapes.items()
    }
    t0 = time.perf_counter()  # the loop, as for snapsink: files set up before it
    for i in range(frames):
        energy = sim.advance(every)
        step = (i + 1) * every
        maps["field"][i] = host(sim.u)
        maps["positions"][i] = host(sim.pos)
        maps["energy"][i] = energy
        maps["steps"][i] = step
        maps["times"][i] = step * 0.1
    for m in maps.values():
        m.flush()
    del maps
    for name in shapes:
        _fsync(out / f"{name}.npy")
    _fsync(out)
    return {"seconds": time.perf_counter() - t0}


def _run_snapsink(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    """The user's code path: ``snapsink.SyncSink(store)``, the store as a user builds it."""
    import snapsink

    frames, every = spec["frames"], spec["every"]
    attrs = {
        "model": "2-D wave equation + advected particles",
        "grid": sim.n,
        "every": every,
        "device": spec["device_name"],
    }
    static = {
        "grid_spacing": np.float64(1.0),
        "particle_ids": np.arange(sim.particles, dtype=np.int32),
    }
    bar = Progress(frames)
    store: Any
    if spec["format"] == "npy":
        store = snapsink.NpyDirectory(spec["path"], attrs=attrs, static=static)
    else:
        store = snapsink.ZarrStore(spec["path"], attrs=attrs, static=static)
    # the writer's start, timed from here: building the store above imported
    # its module (zarr for ZarrStore, 0.1 s), which is the program's own start
    t_open = time.perf_counter()
    try:
        with snapsink.SyncSink(store, capacity=spec["capacity"]) as sink:
            # the loop, from here to the close: the writer process started above,
            # once per run, like the synchronous writer's files
            t0 = time.perf_counter()
            open_s = t0 - t_open
            for i in range(frames):
                energy = sim.advance(every)
                step = (i + 1) * every
                sink.write(
                    {"field": sim.u, "positions": sim.pos, "energy": energy},
                    step=step,
                    time=step * 0.1,
                )
                bar.update(i + 1, sink.statistics)
        seconds = time.perf_counter() - t0  # closed: every frame durable
    finally:
        bar.close()
    st = sink.statistics()
    return {
        "seconds": seconds,
        "open_seconds": open_s,
        "written": st.written,
        "bytes": st.bytes_written,
        "dropped": st.dropped,
        "spilled": st.spilled,
        "peak_queued": st.peak_queued,
        "capacity": st.capacity,
    }


def _child(spec_json: str) -> int:
    """Entry point of one run's process: its result as one JSON line on stdout."""
    spec = json.loads(spec_json)
    try:
        xp, spec["device_name"] = pick_device(spec["device"])
        sim = WaveSim(n=spec["grid"], xp=xp)
        runner = {"none": _run_none, "sync": _run_sync, "snapsink": _run_snapsink}
        result = runner[spec["variant"]](sim, spec)
        host = _host(xp)
        result["state"] = _checksum(host(sim.u), host(sim.pos))
    except (SnapsinkError, OSError) as exc:
        result = {"error": str(exc)}
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result), flush=True)
    return 0


# -- the command ----------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    # The child imports the snapsink this process runs, installed or not.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _spawn(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    label = LABELS[spec["variant"]]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0 or not lines:
        raise SnapsinkError(
            f"the {label} run failed (exit status {proc.returncode}); its error is above"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise SnapsinkError(f"the {label} run: {result['error']}")
    return result


def _status(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{text}" if text else "\r\x1b[K")
        sys.stderr.flush()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def judge(t_none: float, t_sync: float, t_snap: float) -> tuple[str, str]:
    """What snapsink saved against the synchronous writer, and a one-sentence verdict.

    Parameters
    ----------
    t_none, t_sync, t_snap
        Loop seconds without I/O, with the synchronous writer, with snapsink.

    Returns
    -------
    tuple of str
        The claim (``"snapsink hid 89% of the I/O the synchronous writer paid"``)
        and the verdict, a plain sentence.
    """
    t_none, t_sync, t_snap = (max(t, 1e-9) for t in (t_none, t_sync, t_snap))
    paid = t_sync - t_none
    cost = t_snap - t_none
    if paid < max(0.03 * t_none, 0.02):
        return (
            f"the synchronous writer cost {paid:+.2f} s, within the noise between runs",
            "Writing these frames is nearly free on this machine (a fast disk, the page cache), "
            f"so there was no I/O to hide; snapsink cost {cost:+.2f} s. "
            "Try more --frames or a larger --grid.",
        )
    hidden = 1.0 - cost / paid
    if hidden >= 0.995:
        claim = "snapsink hid all of the I/O the synchronous writer paid"
    elif hidden > 0:
        claim = f"snapsink hid {hidden:.0%} of the I/O the synchronous writer paid"
    else:
        claim = f"snapsink hid none of the {paid:.2f} s of I/O the synchronous writer paid"
    if hidden >= 0.75:
        kept = (
            "ran as fast as without I/O (to within the noise between runs)"
            if t_snap <= t_none
            else f"kept {t_none / t_snap:.0%} of its speed without I/O"
        )
        verdict = (
            f"With snapsink the simulation {kept} and stored every frame; "
            f"the synchronous writer held it to {t_none / t_sync:.0%}."
        )
    elif hidden >= 0.25:
        verdict = (
            f"snapsink hid part of the I/O: the simulation lost {cost:.2f} s to it "
            f"instead of {paid:.2f} s."
        )
    elif hidden > 0:
        verdict = (
            f"snapsink hid little of the I/O here: the simulation lost {cost:.2f} s to it "
            f"instead of {paid:.2f} s."
        )
    else:
        verdict = (
            f"snapsink did not pay off here: it cost the simulation {cost:.2f} s, "
            f"the synchronous writer {paid:.2f} s."
        )
    cores = os.cpu_count() or 1
    if hidden < 0.75 and cores <= 2:
        verdict += f" With {cores} CPU cores, the writer competes with the simulation for them."
    return claim, verdict


def _check_args(args: argparse.Namespace) -> None:
    if min(args.frames, args.every, args.capacity, args.repeat) < 1 or args.grid < 8:
        raise SnapsinkError(
            "--frames, --every, --capacity and --repeat must be >= 1, --grid >= 8; "
            f"got --frames {args.frames} --every {args.every} --capacity {args.capacity} "
            f"--repeat {args.repeat} --grid {args.grid}"
        )


def _places(args: argparse.Namespace) -> tuple[Path, Path]:
    """The store to keep or show, and a scratch directory on the same file system."""
    suffix = ".zarr" if args.format == "zarr" else ""
    if args.out:
        out = Path(args.out).absolute()
        if out.exists() or out.is_symlink():
            raise StoreExistsError(
                f"--out {args.out!r} exists; the demo never overwrites: "
                "pick a new path or leave --out out"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".snapsink-demo-", dir=out.parent))
        return out, scratch
    scratch = Path(tempfile.mkdtemp(prefix="snapsink-demo-"))
    return scratch / f"run{suffix}", scratch


def _read_back(out: Path, frames: int, every: int, state: int) -> str | None:
    """``None`` when the store holds the run's frames, else what is wrong."""
    import snapsink

    t = snapsink.open(out)
    if len(t) != frames or int(t.steps[-1]) != frames * every:
        upto = int(t.steps[-1]) if len(t) else None
        return f"the store holds {len(t)} frames up to step {upto}, expected {frames} frames"
    last = t.frame(frames - 1)
    if _checksum(np.asarray(last["field"]), np.asarray(last["positions"])) != state:
        return "the stored last frame differs from the final state of the run without I/O"
    return None


@dataclass
class _Runs:
    """Loop seconds per variant, the kept snapsink run's result, final-state checksums."""

    times: dict[str, list[float]]
    snapsink: dict[str, Any]
    states: set[int]


def _measure(args: argparse.Namespace, spec: dict[str, Any], out: Path, scratch: Path) -> _Runs:
    """Every variant ``--repeat`` times, interleaved, each in a fresh process."""
    env = _child_env()
    runs = _Runs({v: [] for v in VARIANTS}, {}, set())
    total = args.repeat * len(VARIANTS)
    for r in range(args.repeat):
        # rotated each round, so that no variant always follows the same one
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for k, variant in enumerate(order):
            if variant == "none":
                path = None
            elif variant == "snapsink" and r == 0:
                path = out  # the store to show; later rounds write scratch copies
            else:
                path = scratch / f"{variant}-{r}{out.suffix}"
            _status(f"  running {LABELS[variant]} ({r * len(VARIANTS) + k + 1}/{total})")
            res = _spawn({**spec, "variant": variant, "path": str(path)}, env)
            _status("")
            if path is not None and path != out:
                _remove(path)
            runs.times[variant].append(res["seconds"])
            runs.states.add(res["state"])
            if path == out:
                runs.snapsink = res
    return runs


def _report(args: argparse.Namespace, runs: _Runs, out: Path, keep: bool) -> int:
    best = {v: max(min(ts), 1e-9) for v, ts in runs.times.items()}
    store = "NpyDirectory" if args.format == "npy" else "ZarrStore"

    def line(variant: str, what: str) -> None:
        each = ""
        if args.repeat > 1:
            each = " (runs: " + " ".join(f"{t:.2f}" for t in runs.times[variant]) + ")"
        print(f"    {LABELS[variant]:<18} {best[variant]:6.2f} s  {what}{each}")

    line("none", "the simulation alone")
    both = " (the baseline for both formats)" if args.format == "zarr" else ""
    line("sync", f"a .npy memmap per field{both}, a row per frame, flush + fsync at the end")
    line("snapsink", f"snapsink.SyncSink(snapsink.{store}(path)), closed: every frame durable")
    if runs.snapsink is not None and "open_seconds" in runs.snapsink:
        print(
            f"    {'':<18} {'':6}    (before each loop: the sync writer created its files, "
            f"snapsink started its writer process in {runs.snapsink['open_seconds']:.2f} s)"
        )
    claim, verdict = judge(best["none"], best["sync"], best["snapsink"])
    print(
        f"  no I/O {best['none']:.2f} s | synchronous writer {best['sync']:.2f} s "
        f"({best['sync'] / best['none']:.2f}x) | snapsink {best['snapsink']:.2f} s "
        f"({best['snapsink'] / best['none']:.2f}x): {claim}"
    )
    print(f"  verdict    : {verdict}")
    snap = runs.snapsink
    print(
        f"  stored     : {snap['written']} frames ({snap['bytes'] / 1e6:,.1f} MB) in a "
        f"{args.format} store, dropped {snap['dropped']}, spilled {snap['spilled']}; "
        f"queue peaked at {snap['peak_queued']}/{snap['capacity']}"
    )
    problem = None
    if len(runs.states) != 1:
        problem = "the three runs did not compute the same final state"
    else:
        problem = _read_back(out, args.frames, args.every, next(iter(runs.states)))
    if problem is None:
        print(
            f"  checked    : snapsink.open read back {args.frames} frames; the last is "
            "bit-identical to the final state of the run without I/O"
        )
    else:
        print(f"  checked    : MISMATCH: {problem}")
    if keep:
        code = (
            f"import snapsink; t = snapsink.open({json.dumps(str(out))}); "
            'print(len(t), t["field"][-1].mean())'
        )
        print(f"  data       : {out}")
        print(f"  read back  : {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    else:
        print("  data       : removed with its temporary directory (--keep or --out PATH keeps it)")
    return 0 if problem is None else 1


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    xp, device = pick_device(args.device)
    out, scratch = _places(args)
    keep = bool(args.out) or args.keep
    spec = {
        "frames": args.frames,
        "every": args.every,
        "grid": args.grid,
        "capacity": args.capacity,
        "format": args.format,
        "device": "cpu" if xp is np else "gpu",
    }
    malloc = ", ".join(f"{k}={os.environ.get(k, v)}" for k, v in MALLOC_ENV.items())
    best_of = f"best of {args.repeat}" if args.repeat > 1 else "one run each"
    print(
        f"snapsink demo: {args.frames} frames, one every {args.every} steps of a "
        f"{args.grid}x{args.grid} wave field + {WaveSim.particles} particles, on {device}",
        flush=True,
    )
    print(
        f"  the same run three ways, each in a fresh process ({best_of}), malloc pinned: {malloc}",
        flush=True,
    )
    try:
        runs = _measure(args, spec, out, scratch)
        # read back before the data can go (the report checks the store)
        return _report(args, runs, out, keep)
    finally:
        _status("")
        if keep and not args.out:
            for p in scratch.iterdir():
                if p != out:
                    _remove(p)
        else:
            _remove(scratch)
