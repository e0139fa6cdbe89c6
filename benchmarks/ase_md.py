"""ASE MD: what recording costs the dynamics, snapsink's adapter next to ASE's Trajectory.

500 Cu atoms (fcc, 5 x 5 x 5 cubic cells) with ASE's EMT calculator, velocity
Verlet with a 2 fs step. Variants, side by side in one run:

- ``traj``: ASE's own ``ase.io.Trajectory`` writer, ``dyn.attach(traj.write, interval=n)``
  (positions, momenta, forces, energy, cell; written in the dynamics' thread);
- ``npy``, ``zarr``: ``snapsink.integrations.ase.attach(dyn, path, every=n)`` into
  a NpyDirectory or a ZarrStore (its defaults: positions, velocities, forces,
  potential and kinetic energy, cell, pbc; the default writer, a writer process);
- ``none``: nothing recorded, only the timestamp observers (the control: what
  the method reads when there is nothing to find);

each recording every step (``n = 1``) and every 10 steps.

How. Each variant runs in a fresh subprocess (malloc thresholds pinned, as in
overlap.py); variants are interleaved round by round, ``--repeat`` rounds. A
child runs 10 steps with nothing attached (EMT's neighbour list, warm caches),
attaches its variant (the writer's start is not timed), then alternates blocks
of 10 steps with the variant's observers detached ("off") and attached ("on"),
``--blocks`` pairs, the order flipped every pair so that a drift cancels. The
cost added by recording is the median, over every pair of every round, of the
on block's time less the off block's, per step: wall clock, the CPU time of the
dynamics' thread, and that of its whole process (with the sink's event-loop
thread). Pairs of adjacent blocks in one process leave out what differs between
processes and what load other programs put on the machine between pairs; what
remains (about 1 ms per step between adjacent 10-step blocks on the 2-core VM
this was written on, against a recording cost of a fraction of a millisecond)
takes many pairs: 125 by default. The sink and the writer stay open through the
off blocks: what is measured is the cost of recording frames, not of having a
sink open.

Reported, per variant: the step time off and on, the time added per step and
per recorded frame (median and quartiles of the pairs), and the time spent
inside the variant's observer per frame (two timestamp observers around it:
untouched by the noise of the EMT steps, blind to costs paid elsewhere, such as
a writer competing for the CPU); closing (draining and committing) is timed
after the last block. The key figure: snapsink's added cost per step over the
Trajectory's, at the same interval (target <= 0.5).

    python benchmarks/ase_md.py [--quick] [--blocks N] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

import snapsink  # noqa: E402

SCRIPT = Path(__file__).resolve()
KINDS = ("none", "traj", "npy", "zarr")
LABEL = {
    "none": "no recording (control)",
    "traj": "ase.io.Trajectory",
    "npy": "snapsink NpyDirectory",
    "zarr": "snapsink ZarrStore",
}
EVERY = (1, 10)
BLOCK = 10  # steps per block: a multiple of every interval, so each on block records alike
REPEAT_CELLS = 5  # 4 atoms per cubic cell: 500 atoms
WARMUP = 10
DT_FS = 2.0
TARGET = 0.5
DEFAULT_JSON = HERE / "results" / "ase_md-cpu.json"


# -- in the child: one variant --------------------------------------------------------------
def child(spec: Mapping[str, Any]) -> dict[str, Any]:
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import Trajectory
    from ase.md.verlet import VelocityVerlet

    from snapsink.integrations import ase as ss_ase

    kind, every, blocks = spec["kind"], spec["every"], spec["blocks"]
    atoms = bulk("Cu", cubic=True).repeat((spec["cells"],) * 3)
    atoms.calc = EMT()
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.02, size=(len(atoms), 3)))
    dyn = VelocityVerlet(atoms, timestep=DT_FS * units.fs)
    dyn.run(spec["warmup"])  # nothing attached yet

    clock = time.perf_counter
    starts: list[float] = []
    ends: list[float] = []
    dyn.attach(lambda: starts.append(clock()), interval=every)
    path = Path(spec["dir"]) / ("md.zarr" if kind == "zarr" else "md")
    close: Any = None
    writer = ""
    t0 = clock()
    if kind == "traj":
        traj = Trajectory(str(path) + ".traj", "w", atoms)
        dyn.attach(traj.write, interval=every)
        close = traj.close
    elif kind in ("npy", "zarr"):
        rec = ss_ase.attach(dyn, path, every=every)
        writer = rec.sink.writer
        close = rec.close
    setup = clock() - t0
    dyn.attach(lambda: ends.append(clock()), interval=every)
    attached = list(dyn.observers)

    on: list[tuple[float, float, float]] = []  # wall, main-thread CPU, process CPU
    off: list[tuple[float, float, float]] = []
    for pair in range(blocks):
        for recording in (False, True) if pair % 2 == 0 else (True, False):
            # the control's "on" blocks have the timestamp observers alone
            dyn.observers[:] = attached if recording else []
            t0, c0, p0 = clock(), time.thread_time(), time.process_time()
            dyn.run(spec["block"])
            (on if recording else off).append(
                (clock() - t0, time.thread_time() - c0, time.process_time() - p0)
            )
    dyn.observers[:] = attached
    t0 = clock()
    if close is not None:
        close()
    closing = clock() - t0

    frames = len(starts)
    if kind == "traj":
        with Trajectory(str(path) + ".traj") as t:
            stored = len(t)
    elif kind in ("npy", "zarr"):
        stored = len(snapsink.open(path))
    else:
        stored = frames
    expected = blocks * spec["block"] // every
    if not stored == frames == expected:
        raise RuntimeError(f"{kind}: {expected} frames due, {frames} recorded, {stored} stored")
    in_observer = [e - s for s, e in zip(starts, ends, strict=True)]
    return {
        "kind": kind,
        "every": every,
        "atoms": len(atoms),
        "frames": frames,
        "on": on,
        "off": off,
        "observer_mean_s": statistics.fmean(in_observer),
        "observer_median_s": statistics.median(in_observer),
        "setup_s": setup,
        "close_s": closing,
        "writer": writer,
    }


# -- the parent -------------------------------------------------------------------------
def _cases() -> list[tuple[str, int]]:
    return [(kind, n) for n in EVERY for kind in KINDS]


def _over(x: float, ref: float, ref_se: float = 0.0) -> float | None:
    """``x / ref``; None when ``ref`` is not clearly above zero (2 standard errors)."""
    return x / ref if ref > 2 * ref_se and ref > 0 else None


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(xs, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def _median_se(xs: list[float]) -> float:
    """Standard error of the median of ``xs``, from their interquartile range."""
    q1, _, q3 = _quartiles(xs)
    return 1.2533 * (q3 - q1) / 1.349 / len(xs) ** 0.5


#: the loop measures of the added cost: name -> (row field in ms per step, its samples)
LOOP_MEASURES = {
    "loop_wall": ("added_ms_per_step", "added_wall_s_per_step"),
    "loop_cpu": ("added_cpu_ms_per_step", "added_cpu_s_per_step"),
    "loop_process_cpu": ("added_process_cpu_ms_per_step", "added_process_cpu_s_per_step"),
}
KEY_LABEL = {
    "loop_wall": "loop",
    "loop_cpu": "thread CPU",
    "loop_process_cpu": "process CPU",
    "observer": "observer",
}


def key_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """snapsink's added cost over the Trajectory's, per store and interval.

    A ratio is None where the Trajectory's own added cost is not above twice
    its standard error: the loop figures of ``every=10`` (a few hundredths of a
    millisecond per step) usually are, on a shared machine.
    """
    by = {(x["kind"], x["every"]): x for x in rows}
    tick = by[("none", 1)]["observer_median_ms_per_frame"]  # the timestamp observers alone
    key = []
    for every in EVERY:
        ref = by[("traj", every)]
        for kind in ("npy", "zarr"):
            x = by[(kind, every)]
            ratios = {
                name: _over(x[field], ref[field], _median_se(ref["samples"][sample]) * 1e3)
                for name, (field, sample) in LOOP_MEASURES.items()
            }
            ratios["observer"] = _over(
                x["observer_ms_per_frame"] - tick, ref["observer_ms_per_frame"] - tick
            )
            key.append(
                {
                    "store": kind,
                    "every": every,
                    **{f"ratio_{k}": v for k, v in ratios.items()},
                    "meets_target": {k: v is not None and v <= TARGET for k, v in ratios.items()},
                }
            )
    return key


def run(
    quick: bool = False,
    blocks: int | None = None,
    repeats: int | None = None,
    cells: int = REPEAT_CELLS,
    verbose: bool = True,
) -> dict[str, Any]:
    blocks = blocks or (4 if quick else 25)
    repeats = repeats or (1 if quick else 5)
    env = _common.child_env()
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    cases = _cases()
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in cases}
    with _common.scratch("snapsink-ase-") as where:
        for rep in range(repeats):
            for kind, every in cases:
                if verbose:
                    print(
                        f"  ase_md: round {rep + 1}/{repeats}: {kind} every {every}",
                        file=sys.stderr,
                        flush=True,
                    )
                spec = {
                    "kind": kind,
                    "every": every,
                    "blocks": blocks,
                    "block": BLOCK,
                    "warmup": WARMUP,
                    "cells": cells,
                    "dir": str(where / f"r{rep}-{kind}-{every}"),
                }
                Path(spec["dir"]).mkdir()
                samples[(kind, every)].append(_common.spawn(SCRIPT, spec, env))

    rows = []
    for case in cases:
        kind, every = case
        runs = samples[case]
        # per step, each pair: on block less off block (wall, main-thread CPU, process CPU)
        wall, cpu, proc = (
            [(a[k] - b[k]) / BLOCK for r in runs for a, b in zip(r["on"], r["off"], strict=True)]
            for k in range(3)
        )
        step_off = statistics.median(b[0] / BLOCK for r in runs for b in r["off"])
        step_on = statistics.median(a[0] / BLOCK for r in runs for a in r["on"])
        per_frame = every  # steps per recorded frame
        wq, cq, pq = _quartiles(wall), _quartiles(cpu), _quartiles(proc)
        rows.append(
            {
                "kind": kind,
                "label": LABEL[kind],
                "every": every,
                "frames_per_run": runs[0]["frames"],
                "writer": runs[0]["writer"],
                "step_off_ms": step_off * 1e3,
                "step_on_ms": step_on * 1e3,
                "on_over_off": step_on / step_off,
                "added_ms_per_step": wq[1] * 1e3,
                "added_ms_per_step_se": _median_se(wall) * 1e3,
                "added_ms_per_step_quartiles": [wq[0] * 1e3, wq[2] * 1e3],
                "added_ms_per_frame": wq[1] * per_frame * 1e3,
                "added_cpu_ms_per_step": cq[1] * 1e3,
                "added_cpu_ms_per_step_quartiles": [cq[0] * 1e3, cq[2] * 1e3],
                "added_cpu_ms_per_frame": cq[1] * per_frame * 1e3,
                "added_process_cpu_ms_per_step": pq[1] * 1e3,
                "added_process_cpu_ms_per_step_quartiles": [pq[0] * 1e3, pq[2] * 1e3],
                "added_process_cpu_ms_per_frame": pq[1] * per_frame * 1e3,
                "observer_ms_per_frame": min(r["observer_mean_s"] for r in runs) * 1e3,
                "observer_median_ms_per_frame": min(r["observer_median_s"] for r in runs) * 1e3,
                "setup_s": min(r["setup_s"] for r in runs),
                "close_s": min(r["close_s"] for r in runs),
                "pairs": len(wall),
                "samples": {
                    "observer_mean_s": [r["observer_mean_s"] for r in runs],
                    "added_wall_s_per_step": wall,
                    "added_cpu_s_per_step": cpu,
                    "added_process_cpu_s_per_step": proc,
                },
            }
        )
    key = key_figures(rows)
    tick = next(x for x in rows if x["kind"] == "none")["observer_median_ms_per_frame"]
    atoms = samples[("none", 1)][0]["atoms"]
    return {
        "benchmark": "ase_md",
        **_common.machine(),
        "ase": _ase_version(),
        "quick": quick,
        "system": f"{atoms} Cu atoms, EMT, VelocityVerlet {DT_FS} fs",
        "atoms": atoms,
        "block_steps": BLOCK,
        "blocks_per_run": blocks,
        "warmup_steps": WARMUP,
        "repeats": repeats,
        "method": (
            "a fresh subprocess per variant and round, variants interleaved; in each, "
            "alternating blocks with the variant's observers detached and attached; "
            "added cost: median over pairs of (on - off) per step"
        ),
        "malloc_env": _common.malloc_settings(env),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": time.perf_counter() - t_start,
        "tick_observer_ms": tick,
        "rows": rows,
        "key": key,
        "targets": {"snapsink_added_over_trajectory_added": TARGET},
    }


def _ase_version() -> str | None:
    try:
        import ase
    except ImportError:  # pragma: no cover - main() skips first
        return None
    return str(ase.__version__)


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """Headline figures for run.py: snapsink's added cost over the Trajectory's."""
    out: dict[str, Any] = {}
    for k in r.get("key", []):
        label = _common.STORE_LABEL[k["store"]]
        for name in ("loop_wall", "observer"):
            if k[f"ratio_{name}"] is not None:
                out[
                    f"added/Trajectory's ({KEY_LABEL[name]}), {label} every {k['every']} "
                    f"(<= {TARGET})"
                ] = k[f"ratio_{name}"]
    return out


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def print_table(r: dict[str, Any]) -> None:
    print(
        f"ase_md: {r['system']}; {r['repeats']} rounds x {r['blocks_per_run']} pairs of "
        f"{r['block_steps']}-step blocks (recording off, on) per variant"
    )
    head = (
        f"{'variant':<24}{'every':>6}{'step off':>9}{'on':>8}{'on/off':>8}"
        f"{'+ms/step':>9}{'± se':>7}{'+ms/frame':>10}{'thread':>8}{'process':>8}"
        f"{'observer':>9}{'p50':>7}{'close s':>8}"
    )
    print(head)
    print("-" * len(head))
    for x in r["rows"]:
        print(
            f"{x['label']:<24}{x['every']:>6}{x['step_off_ms']:>9.2f}{x['step_on_ms']:>8.2f}"
            f"{x['on_over_off']:>8.3f}{x['added_ms_per_step']:>9.3f}"
            f"{x['added_ms_per_step_se']:>7.3f}{x['added_ms_per_frame']:>10.3f}"
            f"{x['added_cpu_ms_per_frame']:>8.3f}{x['added_process_cpu_ms_per_frame']:>8.3f}"
            f"{x['observer_ms_per_frame']:>9.3f}"
            f"{x['observer_median_ms_per_frame']:>7.3f}{x['close_s']:>8.3f}"
        )
    print(
        "ms per step (medians): off/on blocks; +ms/step: median of (on - off) over the pairs, "
        "± its standard error; +ms/frame: per recorded frame, wall clock, then CPU time of "
        "the dynamics' thread and of its whole process (all threads); observer: ms inside "
        "the variant's observer per frame, mean and median (p50); close: draining and "
        "committing"
    )
    print(f"key figure: snapsink's added cost / ASE Trajectory's, same interval (<= {TARGET})")
    print(f"{'store':<14}{'every':>6}" + "".join(f"{v:>12}" for v in KEY_LABEL.values()))
    for k in r["key"]:
        print(
            f"{_common.STORE_LABEL[k['store']]:<14}{k['every']:>6}"
            + "".join(f"{_ratio(k[f'ratio_{n}']):>12}" for n in KEY_LABEL)
        )
    print(
        f"load average {r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after; "
        f"{r['seconds']:.0f} s"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 pairs of blocks, one round")
    parser.add_argument("--blocks", type=int, default=None, help="pairs of blocks per run (25)")
    parser.add_argument("--repeat", "--repeats", dest="repeats", type=int, default=None)
    parser.add_argument("--cells", type=int, default=REPEAT_CELLS, help="cubic cells per side")
    parser.add_argument(
        "--json",
        "--out",
        dest="json",
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
    if importlib.util.find_spec("ase") is None:
        print("ase_md: skipped (needs ASE: pip install -e '.[integrations]')")
        return {}
    result = run(quick=args.quick, blocks=args.blocks, repeats=args.repeats, cells=args.cells)
    return _common.finish(result, print_table, args.json or (None if args.quick else DEFAULT_JSON))


if __name__ == "__main__":
    main()
