"""Run the benchmark suite and print each benchmark's ratio table.

    python benchmarks/run.py [--quick] [--only small_frames,overlap,...] [--json-dir DIR]
                             [--writer auto|thread|process|both]

Benchmarks: ``small_frames``, ``throughput`` (skipped when benchmarks/throughput.py
is absent), ``overlap``, ``capture``, ``baselines`` and ``ase_md`` (skipped
without ASE). Each is a sibling script with a ``main(argv)`` that prints its
table and returns its result; ``--quick`` passes each its smaller settings (the
suite then takes a few minutes on two cores). ``--writer`` is passed to the
benchmarks that take it (``both`` only to overlap and capture). With
``--json-dir`` every result is written there as ``<name>-cpu.json``; without it
a full run of overlap, capture or ase_md writes its default
``benchmarks/results/<name>-cpu.json`` and the others write nothing
(throughput.py and memory.py write there only with their own ``--save``;
``snapsink bench`` always passes ``--json-dir``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

ORDER = ("small_frames", "throughput", "overlap", "capture", "baselines", "ase_md")
#: the benchmarks taking --writer, and whether they take --writer both
WRITER_OPTION = {"small_frames": False, "overlap": True, "capture": True}


def _argv(name: str, quick: bool, json_path: Path | None, writer: str | None = None) -> list[str]:
    argv: list[str] = []
    if quick:
        # small_frames has no --quick: fewer frames and one repeat instead.
        argv += ["--frames", "50000", "--repeats", "1"] if name == "small_frames" else ["--quick"]
    if json_path is not None:
        argv += ["--json", str(json_path)]
    if writer and name in WRITER_OPTION and (writer != "both" or WRITER_OPTION[name]):
        argv += ["--writer", writer]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the number of benchmarks that failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings (a few minutes)")
    parser.add_argument("--only", help="comma-separated subset of " + ", ".join(ORDER))
    parser.add_argument("--json-dir", type=Path, default=None)
    parser.add_argument(
        "--writer",
        choices=("auto", "thread", "process", "both"),
        default=None,
        help="the sink's writer, for the benchmarks that take it (default: theirs, auto)",
    )
    args = parser.parse_args(argv)
    if args.json_dir is not None:
        # checked before the suite runs, not when the first result is written
        try:
            args.json_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            parser.error(f"--json-dir {str(args.json_dir)!r} exists and is not a directory")
        except OSError as exc:
            parser.error(f"--json-dir {str(args.json_dir)!r}: {exc.strerror}")
    names = list(ORDER)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(ORDER))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
    failed = 0
    timings: dict[str, Any] = {}
    headlines: dict[str, float] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"== {name}: skipped (benchmarks/{name}.py is not there)\n", flush=True)
                timings[name] = "skipped"
                continue
            raise
        if not hasattr(module, "main"):
            print(f"== {name}: skipped (no main(argv))\n", flush=True)
            timings[name] = "skipped"
            continue
        json_path = args.json_dir / f"{name}-cpu.json" if args.json_dir else None
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        try:
            result = module.main(_argv(name, args.quick, json_path, args.writer))
        except Exception:
            failed += 1
            traceback.print_exc()
            timings[name] = "failed"
            continue
        timings[name] = time.perf_counter() - t0
        if hasattr(module, "summary") and isinstance(result, dict):
            headlines.update({f"{name}: {k}": v for k, v in module.summary(result).items()})
        print(f"   ({timings[name]:.0f} s)\n", flush=True)
    done = ", ".join(
        f"{k} {v:.0f} s" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items()
    )
    if headlines:
        print("headline figures")
        for k, v in headlines.items():
            print(f"  {k:<62}{v:>8.2f}")
    print(f"suite: {done}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
