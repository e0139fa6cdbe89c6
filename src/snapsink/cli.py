"""The ``snapsink`` command: ``demo``, ``info``, ``bench`` and ``convert``.

``snapsink demo`` runs a small physical simulation (a 2-D wave field and
particles drifting down its gradient) three times, in fresh processes: without
I/O, with a synchronous memmap writer, and streaming snapshots through a
:class:`~snapsink.SyncSink` into a fresh store; it reports what the I/O cost the
simulation and checks every stored frame against the run without I/O.
``snapsink info PATH`` describes a stored run; ``snapsink convert SRC DST``
copies a store into the other format; ``snapsink bench`` runs the benchmarks
of a source checkout.

Errors a user can fix (a missing path, a directory that is no store, an
existing destination, a bad option) print one line and exit with status 2;
Ctrl-C and SIGTERM stop a command with status 130 and 143, after its clean-up.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence

from ._cli import bench, convert, demo, info
from ._cli._interrupt import Terminated, handling, raise_terminated
from ._errors import SnapsinkError
from ._version import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``snapsink`` command."""
    parser = argparse.ArgumentParser(
        prog="snapsink",
        description="Stream simulation snapshots into storage without stalling the simulation.",
    )
    parser.add_argument("--version", action="version", version=f"snapsink {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    info.add_parser(sub)
    convert.add_parser(sub)
    bench.add_parser(sub)
    # the subcommands take their descriptions from docstrings, written for the API docs
    for action in sub._choices_actions:
        action.help = plain(action.help)
    for command in sub.choices.values():
        command.description = plain(command.description)
        for action in command._actions:
            action.help = plain(action.help)
    return parser


_ROLE = re.compile(r":(?:\w+:)?\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def plain(text: str | None) -> str | None:
    """Help text without reStructuredText markup: ``x`` and :class:`~a.B` read x and B."""
    if text is None:
        return None
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return text.replace("``", "").replace("`", "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapsink`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse leaves these to the top parser: say which subcommand refused them
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        # SIGTERM (`timeout`, a batch scheduler) cleans up as Ctrl-C does: a
        # convert removes its partial destination, a benchmark its scratch data
        with handling({signal.SIGTERM: raise_terminated}):
            status: int = args.handler(args)
    except BrokenPipeError:
        # `snapsink info ... | head`: the reader left; not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SnapsinkError, OSError) as exc:
        print(f"snapsink {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        what = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted"
        print(f"snapsink {args.command}: {what}", file=sys.stderr)
        # what it did about its partial output (convert: copy's notes), a line each
        for note in getattr(exc, "__notes__", ()):
            print(f"snapsink {args.command}: {note}", file=sys.stderr)
        return 128 + sig
    return status


if __name__ == "__main__":
    sys.exit(main())
