"""``snapsink bench``: run the benchmark suite of a source checkout (benchmarks/run.py).

The benchmarks are scripts next to ``src/`` in the repository, not part of the
package: ``snapsink bench`` finds them from the package's location (an
editable install, ``pip install -e .``, or ``PYTHONPATH=src``), or from the
``SNAPSINK_BENCHMARKS`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .._errors import SnapsinkError

__all__ = ["add_parser", "find_benchmarks", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (overlap, capture, baselines, throughput, small frames) "
        "and print ratios",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
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
    p.add_argument("--json-dir", help="write each benchmark's JSON result into this directory")
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
    argv = ["--quick"] if args.quick else []
    if args.only:
        argv += ["--only", args.only]
    if args.json_dir:
        argv += ["--json-dir", args.json_dir]
    if getattr(args, "writer", None):
        argv += ["--writer", args.writer]
    failed: int = module.main(argv)
    return 1 if failed else 0
