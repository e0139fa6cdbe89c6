"""``snapsink bench``: run the benchmark suite of a source checkout (benchmarks/run.py).

The benchmarks are scripts next to ``src/`` in the repository, not part of the
package: ``snapsink bench`` finds them from the package's location (an
editable install, ``pip install -e .``, or ``PYTHONPATH=src``), or from the
``SNAPSINK_BENCHMARKS`` environment variable.

The results recorded in the repository (``benchmarks/results/*.json``, which
docs/benchmarks.md is rendered from) change only when asked: each benchmark's
JSON goes to a fresh temporary directory, or to ``--json-dir DIR``, and
``--save`` writes it over ``benchmarks/results/``.

The stores the benchmarks write go to a scratch directory (:data:`SCRATCH`),
removed when each benchmark ends, after Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._errors import ConfigError, SnapsinkError

__all__ = ["SCRATCH", "add_parser", "find_benchmarks", "run"]

#: where the benchmarks write their stores (said in the command's help)
SCRATCH = (
    "Their stores go to a scratch directory, removed when each benchmark ends "
    "(Ctrl-C and SIGTERM included): throughput's under the current directory "
    "(its disk is the one measured), the others' under the temporary directory "
    "($TMPDIR)."
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (small frames, throughput, overlap, capture, baselines, "
        "ASE MD) and print ratios",
        description="Run the benchmark suite of a source checkout (benchmarks/run.py) and "
        "print each benchmark's ratio table. Each result is written as JSON into a fresh "
        "temporary directory (or --json-dir); --save records it in benchmarks/results/, "
        "the files docs/benchmarks.md is rendered from. " + SCRATCH,
    )
    p.add_argument("--quick", action="store_true", help="a smaller suite, a few minutes")
    p.add_argument(
        "--only",
        help="comma-separated benchmarks to run "
        "(small_frames, throughput, overlap, capture, baselines, ase_md; "
        "ase_md is skipped without ASE)",
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
    if args.only is not None:  # "" too (an unset "$LIST"): it names no benchmark
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if known and n not in known]
        if unknown or not names:
            raise ConfigError(
                f"--only {args.only!r}: unknown benchmark(s) {', '.join(unknown) or '(none)'}; "
                f"known: {', '.join(known)}"
            )
        argv += ["--only", ",".join(names)]
    made = False
    if args.save:
        json_dir = where / "results"
    elif args.json_dir:
        json_dir = Path(args.json_dir)
        _check_json_dir(json_dir)
    else:
        json_dir = Path(tempfile.mkdtemp(prefix="snapsink-bench-"))
        made = True
    argv += ["--json-dir", str(json_dir)]
    if getattr(args, "writer", None):
        argv += ["--writer", args.writer]
    before = _results(json_dir)

    def written() -> list[str]:
        return sorted(name for name, st in _results(json_dir).items() if before.get(name) != st)

    try:
        failed: int = module.main(argv)
    except BaseException as exc:
        # an interrupt: say where finished results went; leave no empty directory
        done = written()
        if made and not done:
            shutil.rmtree(json_dir, ignore_errors=True)
        elif done:
            print(f"results of the finished benchmarks written to {json_dir}", file=sys.stderr)
        if isinstance(exc, SystemExit):  # the suite's own argument parser refused something
            if exc.code in (0, None):
                return 0
            raise ConfigError(f"benchmarks/run.py exited with {exc.code!r}") from exc
        raise
    done = written()
    if not done:
        if made:
            shutil.rmtree(json_dir, ignore_errors=True)
        print("no results written" + ("" if made else f" to {json_dir}"))
    else:
        saved = "recorded in" if args.save else "written to"
        print(f"results {saved} {json_dir}" + ("" if args.save else " (--save records them)"))
    return 1 if failed else 0


def _check_json_dir(path: Path) -> None:
    """``--json-dir``: a directory, or one that can be made; checked before the
    suite runs (it used to fail after it, writing the first result)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--json-dir {str(path)!r} exists and is not a directory") from None
    except NotADirectoryError:
        raise ConfigError(
            f"--json-dir {str(path)!r}: a parent of it is a file, not a directory"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--json-dir {str(path)!r}: cannot make it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--json-dir {str(path)!r}: not writable")


def _results(path: Path) -> dict[str, tuple[int, int]]:
    """The JSON files in ``path``: name -> (modification time, size)."""
    found = {}
    with contextlib.suppress(OSError):
        for p in path.glob("*.json"):
            st = p.stat()
            found[p.name] = (st.st_mtime_ns, st.st_size)
    return found
