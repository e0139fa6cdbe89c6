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
    "POLICIES",
    "Entry",
    "Offer",
    "SinkStatistics",
    "SpillTicket",
    "check_capacity",
    "check_policy",
    "frame_nbytes",
]

POLICIES: Final = ("block", "drop_newest", "drop_oldest")


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
        Frames the store has appended.
    dropped
        Frames a drop policy discarded (their steps are in the store's metadata).
    spilled
        Frames that went through the spill directory (all replayed or pending).
    queued
        Frames accepted and not yet appended (in memory, spilled, or being written).
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
