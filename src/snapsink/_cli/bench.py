"""``snapsink bench``: run the benchmark suite of a source checkout (benchmarks/run.py).

The benchmarks are scripts next to ``src/`` in the repository, not part of the
package: ``snapsink bench`` finds them from the package's location (an
editable install, ``pip install -e .``, or ``PYTHONPATH=src``), or from the
``SNAPSINK_BENCHMARKS`` environment variable.

The results recorded in the repository (``benchmarks/results/*.json``, which
docs/benchmarks.md is rendered from) change only when asked: each benchmark's
JSON goes to a fresh temporary directory, or to ``--json-dir DIR``, and
``--save`` writes it over ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._errors import ConfigError, SnapsinkError

__all__ = ["add_parser", "find_benchmarks", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (overlap, capture, baselines, throughput, small frames) "
        "and print ratios",
        description="Run the benchmark suite of a source checkout (benchmarks/run.py) and "
        "print each benchmark's ratio table. Each result is written as JSON into a fresh "
        "temporary directory (or --json-dir); --save records it in benchmarks/results/, "
        "the files docs/benchmarks.md is rendered from.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller suite, a few minutes")
    p.add_argument(
        "--only",
        help="comma-separated benchmarks to run "
        "(small_frames, throughput, overlap, capture, baselines)",
    )
    p.add_argument(
        "--writer",
        choices=("auto", "thread", "process", "both"),
        help="the sink's writer in the benchmarks that take it (both: thread and process rows)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--json-dir", help="write each benchmark's JSON result into this directory")
    where.add_argument(
        "--save",
        action="store_true",
        help="record the results in benchmarks/results/ (replacing the recorded ones)",
    )
    p.set_defaults(handler=run)


def find_benchmarks() -> Path:
    """The ``benchmarks`` directory holding ``run.py``.

    Raises
    ------
    SnapsinkError
        When there is none (an installed wheel ships no benchmarks).
    """
    env = os.environ.get("SNAPSINK_BENCHMARKS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    # src/snapsink/_cli/bench.py -> the repository root is three levels above the package
    candidates += [parent / "benchmarks" for parent in here.parents[2:5]]
    for c in candidates:
        if (c / "run.py").is_file():
            return c
    raise SnapsinkError(
        "snapsink bench needs the benchmarks/ directory of a source checkout "
        "(pip install -e . from the repository), or SNAPSINK_BENCHMARKS=/path/to/benchmarks"
    )


def run(args: argparse.Namespace) -> int:
    where = find_benchmarks()
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    spec = importlib.util.spec_from_file_location("snapsink_bench_run", where / "run.py")
    if spec is None or spec.loader is None:  # pragma: no cover - checked by find_benchmarks
        raise SnapsinkError(f"cannot load {where / 'run.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    known = tuple(getattr(module, "ORDER", ()))
    argv = ["--quick"] if args.quick else []
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if known and n not in known]
        if unknown or not names:
            raise ConfigError(
                f"--only {args.only!r}: unknown benchmark(s) {', '.join(unknown) or '(none)'}; "
                f"known: {', '.join(known)}"
            )
        argv += ["--only", ",".join(names)]
    if args.save:
        json_dir = where / "results"
    elif args.json_dir:
        json_dir = Path(args.json_dir)
    else:
        json_dir = Path(tempfile.mkdtemp(prefix="snapsink-bench-"))
    argv += ["--json-dir", str(json_dir)]
    if getattr(args, "writer", None):
        argv += ["--writer", args.writer]
    try:
        failed: int = module.main(argv)
    except SystemExit as exc:  # the suite's own argument parser refused something
        if exc.code in (0, None):
            return 0
        raise ConfigError(f"benchmarks/run.py exited with {exc.code!r}") from exc
    saved = "recorded in" if args.save else "written to"
    print(f"results {saved} {json_dir}" + ("" if args.save else " (--save records them)"))
    return 1 if failed else 0
