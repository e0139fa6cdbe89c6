"""``snapsink demo``: one simulation run three ways, to show what snapsink saves.

A 2-D scalar wave field (leapfrog) and particles drifting down its gradient,
on NumPy or CuPy; every ``--every`` steps a frame (the field, the particles'
positions, the energy) is produced. The same run is timed (a) without I/O,
(b) with the synchronous writer most codes use today (a preallocated ``.npy``
memmap per field, a row written per frame, flush and fsync at the end) and
(c) through ``snapsink.SyncSink(store)``, the store built as a user builds it.
The summary compares the three loop times and the three end-to-end times
(the setup before the loop included: files, store, writer process), and checks
every stored frame, step and time, bit for bit, against the run without I/O.

Each run is a fresh process with the same pinned allocator settings
(:data:`MALLOC_ENV`): the loop's compute alone varies about 2x between
processes otherwise, which would drown the difference being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, SnapsinkError, StoreExistsError
from ._demorun import FIELDS, digest, pick_device
from ._interrupt import Terminated, handling, raise_terminated
from ._wavesim import WaveSim

__all__ = ["MALLOC_ENV", "WaveSim", "add_parser", "end_to_end", "frame_bytes", "judge", "run"]

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
# `snapsink.__main__` runs the command when imported. It starts with SIGINT and
# SIGTERM blocked (_spawn) and only records them until its imports are done:
# an interrupt there raised in the middle of an import (numpy's C modules fail
# with odd errors then) and printed tracebacks; child() acts on what came.
_CHILD = """\
import signal, sys
came = []
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, f: came.append(n))
if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
if came:  # stopped before it began: nothing to import
    sys.exit(128 + came[0])
from snapsink._cli._demorun import child
sys.exit(child(sys.argv[1], came))
"""
#: how long a run may take to close after it was interrupted before it is killed
_GRACE = 10.0


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
        "--keep",
        action="store_true",
        help="keep the store written to the temporary directory (a finished run's)",
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


# -- the runs' processes, and signals ---------------------------------------------------------
@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM held back (pending, not lost) for the block: a run
    started in it inherits them blocked, so that an interrupt never finds it
    before it can take one (its imports); :data:`_CHILD` unblocks them."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    # The child imports the snapsink this process runs, installed or not.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _died(variant: str, code: int, where: Path) -> str:
    """What a run killed by signal ``-code`` says: the signal, and its likely cause."""
    label = LABELS[variant]
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == getattr(signal, "SIGBUS", None):
        free = _free_bytes(where)
        room = f"{free / 1e6:,.0f} MB free in {where}" if free is not None else f"at {where}"
        what = (
            "its memory-mapped .npy files"
            if variant == "sync"
            else "a memory-mapped file or shared memory (/dev/shm)"
        )
        return (
            f"the {label} run died of SIGBUS, a failed write to {what}: "
            f"the disk is probably full ({room})"
        )
    if -code == getattr(signal, "SIGKILL", None):
        return f"the {label} run was killed (SIGKILL), perhaps by the kernel for want of memory"
    return f"the {label} run died of {name}"


def _stop(proc: subprocess.Popen[str] | None, sig: int) -> None:
    """After this process was interrupted: pass the signal on to the run (it
    ignores a second copy, when it came to the whole process group), let it close
    its sink within :data:`_GRACE`, then kill it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _status(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{text}" if text else "\r\x1b[K")
        sys.stderr.flush()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- where the data goes ----------------------------------------------------------------------
@dataclass
class _Places:
    """The store to keep or show, a scratch directory on the same file system,
    and what this run created (so that an unfinished run removes only that)."""

    out: Path
    scratch: Path
    made: list[Path] = field(default_factory=list)  # --out's parents, outermost first
    started: bool = False  # the snapsink run began to write `out` (absent until then)
    proc: subprocess.Popen[str] | None = None  # the run in progress


def frame_bytes(grid: int) -> int:
    """Bytes of one frame: the field, the particles' positions, energy, step, time."""
    return grid * grid * 4 + WaveSim.particles * 2 * 4 + 3 * 8


def _check_room(where: Path, args: argparse.Namespace) -> None:
    """Refuse up front a run the file system has no room for (a full disk kills
    the synchronous writer's memmap with SIGBUS)."""
    per_frame = frame_bytes(args.grid)
    # one store at a time, plus the kept one from the second round on; 1% and 4
    # MiB for metadata, static arrays, directories
    copies = 1 if args.repeat == 1 else 2
    need = int(copies * args.frames * per_frame * 1.01) + (4 << 20)
    free = _free_bytes(where)
    if free is not None and free < need:
        two = ", two stores at a time with --repeat" if copies == 2 else ""
        raise ConfigError(
            f"not enough free space in {where}: the runs write about {need / 1e6:,.0f} MB "
            f"({args.frames} frames of {per_frame / 1e6:.2f} MB{two}), "
            f"{free / 1e6:,.0f} MB is free; pass fewer --frames or a smaller --grid, "
            "or --out PATH on a file system with room"
        )


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    while not (path.exists() or path.is_symlink()) and path.parent != path:
        path = path.parent
    return path


def _places(args: argparse.Namespace) -> _Places:
    """Where the runs write; checked (and room checked) before anything is created."""
    suffix = ".zarr" if args.format == "zarr" else ""
    if not args.out:
        tmp = Path(tempfile.gettempdir())
        _check_room(tmp, args)
        scratch = Path(tempfile.mkdtemp(prefix="snapsink-demo-"))
        return _Places(scratch / f"run{suffix}", scratch)
    out = Path(args.out).absolute()
    if out.exists() or out.is_symlink():
        raise StoreExistsError(
            f"--out {args.out!r} exists; the demo never overwrites: "
            "pick a new path or leave --out out"
        )
    base = _existing(out.parent)
    if not base.is_dir():
        raise ConfigError(f"--out {args.out!r}: {str(base)!r} is not a directory")
    _check_room(base, args)
    made = []
    for d in reversed([out.parent, *out.parent.parents]):
        if d.is_dir():
            continue
        try:
            d.mkdir()
        except FileExistsError:
            raise ConfigError(f"--out {args.out!r}: {str(d)!r} is not a directory") from None
        made.append(d)
    places = _Places(out, Path(), made)
    try:
        places.scratch = Path(tempfile.mkdtemp(prefix=".snapsink-demo-", dir=out.parent))
    except OSError:
        _remove_made(places)
        raise
    return places


def _remove_made(places: _Places) -> None:
    for d in reversed(places.made):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty


def _tidy(args: argparse.Namespace, places: _Places, keep_out: bool) -> str | None:
    """Remove what the runs leave: the scratch, and the store unless ``keep_out``
    (a store this run started, never one it found). Safe to call again. Returns
    what to tell the user about the store when the run did not end normally."""
    out, scratch = places.out, places.scratch
    if not args.out:
        if keep_out and scratch.is_dir():
            for p in scratch.iterdir():
                if p != out:
                    _remove(p)
            return f"the store (complete) is at {out}"
        _remove(scratch)
        if args.keep:
            return "nothing kept: the run did not finish (--keep keeps a finished run's store)"
        return None
    _remove(scratch)
    if keep_out:
        return f"the store (complete) is at {out}"
    if not places.started:
        _remove_made(places)
        return None
    _remove(out)
    if out.exists() or out.is_symlink():
        return f"a partial store was left at {out}"
    _remove_made(places)
    return f"removed the partial store it had started at {out} (the run did not finish)"


# -- the runs -------------------------------------------------------------------------------
def _spawn(spec: dict[str, Any], env: dict[str, str], places: _Places) -> dict[str, Any]:
    variant = spec["variant"]
    label = LABELS[variant]
    with _signals_blocked():  # an interrupt meanwhile comes once the run is known
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        places.proc = proc  # an interrupt stops it (run's handler)
    stdout, _ = proc.communicate()
    places.proc = None
    code = proc.returncode
    if code in (128 + signal.SIGINT, -signal.SIGINT):
        raise KeyboardInterrupt
    if code in (128 + signal.SIGTERM, -signal.SIGTERM):
        raise Terminated
    if code < 0:
        raise SnapsinkError(_died(variant, code, places.scratch.parent))
    lines = stdout.strip().splitlines()
    if code != 0 or not lines:
        raise SnapsinkError(f"the {label} run failed (exit status {code}); its error is above")
    result: dict[str, Any] = json.loads(lines[-1])
    if "error" in result:
        raise SnapsinkError(f"the {label} run: {result['error']}")
    return result


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


def end_to_end(t_sync: float, t_snap: float, open_s: float) -> str:
    """The end-to-end comparison (setup, loop, close) in one plain sentence."""
    diff = t_snap - t_sync
    if abs(diff) < max(0.03 * t_sync, 0.02):
        how = "about as long as the synchronous writer"
    elif diff < 0:
        how = f"{-diff:.2f} s less than the synchronous writer"
    else:
        how = f"{diff:.2f} s more than the synchronous writer"
    return (
        f"snapsink took {how}, the start of its writer process ({open_s:.2f} s, "
        "once per run) included"
    )


def _check_args(args: argparse.Namespace) -> None:
    if min(args.frames, args.every, args.capacity, args.repeat) < 1 or args.grid < 8:
        raise SnapsinkError(
            "--frames, --every, --capacity and --repeat must be >= 1, --grid >= 8; "
            f"got --frames {args.frames} --every {args.every} --capacity {args.capacity} "
            f"--repeat {args.repeat} --grid {args.grid}"
        )


def _read_back(out: Path, ref: dict[str, Any]) -> str | None:
    """``None`` when the store holds exactly the frames of the run without I/O
    (``ref``, from its untimed reference pass): every frame's fields (by their
    digests), the steps (strictly increasing) and the times, bit for bit;
    otherwise what is wrong, naming the first frame and field that differ."""
    import snapsink

    steps_ref = np.asarray(ref["steps"], np.int64)
    times_ref = np.asarray(ref["times"], np.float64)
    digests: dict[str, list[str]] = ref["digests"]
    n = len(steps_ref)
    try:
        t = snapsink.open(out)
        if len(t) != n:
            return f"the store holds {len(t)} frames, the run without I/O wrote {n}"
        if set(t.fields) != set(digests):
            return f"the store holds fields {sorted(t.fields)}, the run wrote {sorted(digests)}"
        steps = np.asarray(t.steps)
        back = np.flatnonzero(np.diff(steps) <= 0)
        if back.size:
            i = int(back[0]) + 1
            return (
                f"frame {i}: step {steps[i]} does not follow step {steps[i - 1]} of frame {i - 1}"
            )
        off = np.flatnonzero(steps != steps_ref)
        if off.size:
            i = int(off[0])
            return f"frame {i}: step {steps[i]}, the run without I/O wrote step {steps_ref[i]}"
        times = None if t.times is None else np.asarray(t.times)
        if times is None or times.dtype != np.float64:
            return f"the store's times are {None if times is None else times.dtype}, not float64"
        off = np.flatnonzero(times.view(np.uint64) != times_ref.view(np.uint64))
        if off.size:
            i = int(off[0])
            return (
                f"frame {i} (step {steps[i]}): time {times[i]!r}, "
                f"the run without I/O wrote {times_ref[i]!r}"
            )
        block = max(1, (16 << 20) // max(1, t["field"][0].nbytes))  # about 16 MiB a read
        for start in range(0, n, block):
            rows = {name: t[name][start : start + block] for name in FIELDS}
            for k in range(len(rows[FIELDS[0]])):
                i = start + k
                for name in FIELDS:
                    if digest(rows[name][k]) != digests[name][i]:
                        return (
                            f"frame {i} (step {steps[i]}): field {name!r} differs "
                            "from the run without I/O"
                        )
    except (SnapsinkError, OSError, ValueError, KeyError, IndexError) as exc:
        return f"reading it back failed: {exc}"
    return None


@dataclass
class _Runs:
    """Seconds per variant and round (the loop; end to end), the kept snapsink
    run's result, the reference pass of the run without I/O, final-state checksums."""

    times: dict[str, list[float]]
    totals: dict[str, list[float]]
    snapsink: dict[str, Any]
    reference: dict[str, Any]
    states: set[int]


def _measure(args: argparse.Namespace, spec: dict[str, Any], places: _Places) -> _Runs:
    """Every variant ``--repeat`` times, interleaved, each in a fresh process."""
    env = _child_env()
    out, scratch = places.out, places.scratch
    runs = _Runs({v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}, {}, {}, set())
    total = args.repeat * len(VARIANTS)
    for r in range(args.repeat):
        # rotated each round, so that no variant always follows the same one
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for k, variant in enumerate(order):
            if variant == "none":
                path = None
            elif variant == "snapsink" and r == 0:
                path = out  # the store to show; later rounds write scratch copies
                if out.exists() or out.is_symlink():  # made by someone else meanwhile
                    raise StoreExistsError(f"--out {str(out)!r} appeared during the demo")
                places.started = True
            else:
                path = scratch / f"{variant}-{r}{out.suffix}"
            _status(f"  running {LABELS[variant]} ({r * len(VARIANTS) + k + 1}/{total})")
            # the first run without I/O also makes the reference, after its timed loop
            reference = variant == "none" and r == 0
            res = _spawn(
                {**spec, "variant": variant, "path": str(path), "reference": reference}, env, places
            )
            _status("")
            if path is not None and path != out:
                _remove(path)
            runs.times[variant].append(res["seconds"])
            runs.totals[variant].append(res["total_seconds"])
            runs.states.add(res["state"])
            if reference:
                runs.reference = res["reference"]
                runs.states.add(runs.reference["state"])
            if path == out:
                runs.snapsink = res
    return runs


def _report(args: argparse.Namespace, runs: _Runs, out: Path, keep: bool) -> int:
    best = {v: max(min(ts), 1e-9) for v, ts in runs.times.items()}
    whole = {v: max(min(ts), 1e-9) for v, ts in runs.totals.items()}
    store = "NpyDirectory" if args.format == "npy" else "ZarrStore"
    snap = runs.snapsink

    def line(variant: str, what: str) -> None:
        each = ""
        if args.repeat > 1:
            each = " (runs: " + " ".join(f"{t:.2f}" for t in runs.times[variant]) + ")"
        times = f"{best[variant]:6.2f} s {whole[variant]:8.2f} s"
        print(f"    {LABELS[variant]:<18} {times}  {what}{each}")

    print(f"    {'':<18} {'loop':>8} {'end to end':>10}")
    line("none", "the simulation alone")
    both = " (the baseline for both formats)" if args.format == "zarr" else ""
    line("sync", f"a .npy memmap per field{both}, a row per frame, flush + fsync at the end")
    line("snapsink", f"snapsink.SyncSink(snapsink.{store}(path)), closed: every frame durable")
    print(
        f"    {'':<18} {'':19}  (end to end adds what comes before the loop: the sync "
        f"writer creates its files; snapsink builds its store and starts its writer "
        f"process, {snap['open_seconds']:.2f} s)"
    )
    claim, verdict = judge(best["none"], best["sync"], best["snapsink"])
    print(
        f"  loop       : no I/O {best['none']:.2f} s | synchronous writer {best['sync']:.2f} s "
        f"({best['sync'] / best['none']:.2f}x) | snapsink {best['snapsink']:.2f} s "
        f"({best['snapsink'] / best['none']:.2f}x): in the loop, {claim}"
    )
    print(
        f"  end to end : no I/O {whole['none']:.2f} s | synchronous writer {whole['sync']:.2f} s "
        f"| snapsink {whole['snapsink']:.2f} s: "
        + end_to_end(whole["sync"], whole["snapsink"], snap["open_seconds"])
    )
    print(f"  verdict    : {verdict}")
    print(
        f"  stored     : {snap['written']} frames ({snap['bytes'] / 1e6:,.1f} MB) in a "
        f"{args.format} store, dropped {snap['dropped']}, spilled {snap['spilled']}; "
        f"queue peaked at {snap['peak_queued']}/{snap['capacity']}"
    )
    if len(runs.states) != 1:
        problem: str | None = "the runs did not compute the same final state"
    else:
        problem = _read_back(out, runs.reference)
    if problem is None:
        print(
            f"  checked    : snapsink.open read back {args.frames} frames: every frame's "
            f"{', '.join(FIELDS)}, step and time is bit-identical to the run without I/O"
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
    places = _places(args)
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
    finished = False
    with handling({signal.SIGTERM: raise_terminated}):
        try:
            print(
                f"snapsink demo: {args.frames} frames, one every {args.every} steps of a "
                f"{args.grid}x{args.grid} wave field + {WaveSim.particles} particles, "
                f"on {device}",
                flush=True,
            )
            print(
                f"  the same run three ways, each in a fresh process ({best_of}), "
                f"malloc pinned: {malloc}",
                flush=True,
            )
            runs = _measure(args, spec, places)
            finished = True
            # read back before the data can go (the report checks the store)
            return _report(args, runs, places.out, keep)
        except KeyboardInterrupt as exc:
            sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            # the clean-up is bounded (_GRACE): further signals would only cut it short
            with handling({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
                _stop(places.proc, sig)
                _status("")
                note = _tidy(args, places, keep and finished)
            what = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
            print(f"snapsink demo: {what}" + (f"; {note}" if note else ""), file=sys.stderr)
            return 128 + sig
        except BrokenPipeError:
            raise  # `snapsink demo | head`: the reader left, not an error (main says nothing)
        except (SnapsinkError, OSError) as exc:
            _status("")
            note = _tidy(args, places, keep and finished)
            print(f"snapsink demo: error: {exc}", file=sys.stderr)
            if note:
                print(f"snapsink demo: {note}", file=sys.stderr)
            return 2
        finally:
            _status("")
            _tidy(args, places, keep and finished)
