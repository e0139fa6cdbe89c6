"""The ``snapsink`` command: ``demo``, ``info``, ``bench`` and ``convert``.

``snapsink demo`` runs a small physical simulation (a 2-D wave field and
particles drifting down its gradient), streams snapshots through an async
:class:`~snapsink.Sink` into a fresh store, and reports what the I/O cost the
simulation. ``snapsink info PATH`` describes a stored run; ``snapsink convert
SRC DST`` copies a store into the other format; ``snapsink bench`` runs the
benchmarks of a source checkout.

Errors a user can fix (a missing path, a directory that is no store, an
existing destination, a bad option) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._cli import bench, convert, demo, info
from ._errors import SnapsinkError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``snapsink`` command."""
    parser = argparse.ArgumentParser(
        prog="snapsink",
        description="Stream simulation snapshots into storage without stalling the simulation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    info.add_parser(sub)
    convert.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapsink`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except BrokenPipeError:
        # `snapsink info ... | head`: the reader left; not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SnapsinkError, OSError) as exc:
        print(f"snapsink {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"snapsink {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
