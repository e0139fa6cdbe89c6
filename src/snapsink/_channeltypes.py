"""The values a :class:`~snapsink._channel.Channel` hands out and takes, and the
checks of its configuration.

Kept apart from the channel itself: these are plain values (what an offer did,
an accepted frame, a spill ticket, a statistics snapshot) and I/O-free
checks that the async sink, the sync facade, the recorder and the integrations
import without needing the channel's locking machinery.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._checks import positive_int
from ._errors import ConfigError
from ._schema import Field, Frame, Schema
from ._spill import Spill
from ._staging.host import Completion, Slot

__all__ = [
    "DROPS_PER_BATCH",
    "POLICIES",
    "DroppedSteps",
    "Entry",
    "Offer",
    "SinkStatistics",
    "SpillTicket",
    "check_capacity",
    "check_policy",
    "expand_runs",
    "frame_nbytes",
]

POLICIES: Final = ("block", "drop_newest", "drop_oldest")

#: the most dropped steps one batch hands a store: a store that stalled while
#: millions of frames were dropped gets them in slices, never as one list
DROPS_PER_BATCH: Final = 1 << 14


class Offer(enum.Enum):
    """What :meth:`Channel.offer` did with a frame."""

    QUEUED = "queued"  # captured: the frame is on its way to the store
    DROPPED = "dropped"  # refused by a drop policy: counted and recorded
    WAIT = "wait"  # no room now (block, or a full spill): park, then offer again
    SPILL = "spill"  # accepted into the spill queue: write it with spill_write


def check_policy(policy: object) -> str | Spill:
    """``policy`` if it names a known policy, else ConfigError."""
    if isinstance(policy, Spill) or (isinstance(policy, str) and policy in POLICIES):
        return policy
    raise ConfigError(
        f"policy: expected 'block', 'drop_newest', 'drop_oldest' or snapsink.Spill(dir), "
        f"got {policy!r}"
    )


def check_capacity(capacity: object, what: str = "capacity") -> int:
    """``capacity`` as an int >= 1, else ConfigError naming ``what``."""
    return positive_int(capacity, what)


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    """A snapshot of a sink's counters.

    Attributes
    ----------
    written
        Frames the store has appended (durable once a flush or the close has
        returned; after a WriterError, what was committed is what a reader
        reads back, not this count).
    dropped
        Frames a drop policy discarded (their steps are in the store's metadata).
    spilled
        Frames that went through the spill directory (all replayed or pending).
    queued
        Frames accepted and not yet appended (in memory, spilled, or being
        written): under Spill, more than ``capacity`` when frames wait on disk.
    peak_queued
        The largest ``queued`` seen.
    bytes_written
        Bytes of field data the store has appended.
    capacity
        The channel's bound in frames.
    policy
        The backpressure policy's name (``"spill"`` for a Spill policy).
    """

    written: int
    dropped: int
    spilled: int
    queued: int
    peak_queued: int
    bytes_written: int
    capacity: int
    policy: str


class Entry(Frame):
    """One accepted frame on its way to the store: a :class:`Frame` (so a batch
    hands entries to the store as they are) plus the channel's bookkeeping."""

    __slots__ = ("completion", "pub", "rows", "seq", "size", "slot", "spill")

    def __init__(self, seq: int, step: int, time: float | None, nbytes: int):
        self.seq = seq
        self.pub = 0  # writer process: the frame's position on the ring once published
        self.rows: list[int] = []  # writer process: row counts of the ragged fields
        self.step = step
        self.time = time
        self.size = nbytes  # bytes of the frame as planned (also once released)
        self.fields = {}
        self.slot: Slot | None = None
        self.completion: Completion | None = None
        #: a spilled frame: its step, time and fields are read back from disk
        self.spill = False


class SpillTicket:
    """A frame accepted into the spill queue, its write to disk still to do."""

    __slots__ = ("before", "n", "nbytes", "owner", "step", "time")

    def __init__(
        self,
        n: int,
        step: int,
        time: float | None,
        nbytes: int,
        before: tuple[int | None, float | None, bool | None],
    ):
        self.n = n
        self.step = step
        self.time = time
        self.nbytes = nbytes
        self.before = before  # the clock before it, to give the step back on failure
        self.owner = 0  # the thread it was handed to (threading.get_ident())


def frame_nbytes(schema: Schema | None, items: Sequence[tuple[str, Field, Any]]) -> int:
    """Bytes of one validated frame."""
    assert schema is not None
    total = schema.fixed_nbytes
    if schema.ragged:
        for _, field, value in items:
            if field.ragged:
                total += len(value) * field.row_nbytes
    return total


class DroppedSteps:
    """Dropped steps waiting to be handed on, as runs of consecutive steps.

    Why runs: while the store stalls, a drop policy drops every new frame, and
    those steps wait here (in the channel, on the way to the writer process,
    in its inbox) until the store takes them. Kept one by one, a long stall
    grew memory by a step each; as ``[start, stop)`` runs, a drop that extends
    the last run costs nothing, and the whole wait costs O(number of runs).
    """

    __slots__ = ("runs",)

    def __init__(self) -> None:
        #: ``[start, stop)`` runs, in the order they were dropped (drop_oldest
        #: may drop a step below one dropped before it)
        self.runs: list[list[int]] = []

    def __bool__(self) -> bool:
        return bool(self.runs)

    def __len__(self) -> int:
        """Runs, not steps: the size of what waits."""
        return len(self.runs)

    def add(self, step: int) -> None:
        runs = self.runs
        if runs and runs[-1][1] == step:
            runs[-1][1] = step + 1
        else:
            runs.append([step, step + 1])

    def add_run(self, start: int, stop: int) -> None:
        runs = self.runs
        if stop <= start:
            return
        if runs and runs[-1][1] == start:
            runs[-1][1] = stop
        else:
            runs.append([start, stop])

    def pop_runs(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Remove and return the runs, sorted, of at most ``limit`` steps in all
        (the rest stays)."""
        runs = self.runs
        if limit is None:
            self.runs = []
            return sorted((a, b) for a, b in runs)
        runs.sort()
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(runs) and limit > 0:
            a, b = runs[i]
            if b - a > limit:
                out.append((a, a + limit))
                runs[i][0] = a + limit
                break
            out.append((a, b))
            limit -= b - a
            i += 1
        del runs[:i]
        return out


def expand_runs(runs: Sequence[tuple[int, int]]) -> list[int]:
    """Every step of ``runs``, in order (what :class:`~snapsink.Batch` hands a store)."""
    steps: list[int] = []
    for a, b in runs:
        steps.extend(range(a, b))
    return steps
