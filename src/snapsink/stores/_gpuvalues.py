"""What a :class:`~snapsink.stores.gpu.GPUBuffer` hands out: plain value types.

:class:`DeviceFrames` (what :meth:`GPUBuffer.read` returns) and
:class:`GPUBufferStatistics` (what :meth:`GPUBuffer.statistics` returns) hold
data only, no device ring and no lock; they are apart from the ring's logic in
``gpu.py`` so that module holds the store's life cycle, and both stay
importable from :mod:`snapsink.stores.gpu`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DeviceFrames", "GPUBufferStatistics"]


@dataclass(frozen=True)
class DeviceFrames:
    """Frames read from a :class:`GPUBuffer`, oldest first.

    Attributes
    ----------
    fields
        ``{name: device array}``: fixed fields stacked ``(frames, *shape)``;
        ragged fields as all rows concatenated ``(rows, *row_shape)``.
    offsets
        ``{name: device int64 array}`` of ``frames + 1`` row offsets per ragged field.
    steps, times
        Host arrays (``times`` is None when the frames carry no time).
    evicted
        Frames overwritten because the ring was full, since the buffer was made.
    dropped_steps
        Steps lost since the buffer was last drained into a store (or cleared),
        sorted: discarded by a sink's drop policy before they reached the ring,
        evicted, or refused.
    refused
        New frames not stored because the ring was full (``overflow="refuse"``),
        since the buffer was made.
    """

    fields: dict[str, Any]
    offsets: dict[str, Any]
    steps: np.ndarray[Any, np.dtype[np.int64]]
    times: np.ndarray[Any, np.dtype[np.float64]] | None
    evicted: int = 0
    dropped_steps: list[int] = field(default_factory=list)
    refused: int = 0


@dataclass(frozen=True)
class GPUBufferStatistics:
    """A snapshot of a :class:`GPUBuffer`'s counters (since it was made).

    Every frame stored is, at any time, in exactly one place:
    ``stored == held + drained + skipped + evicted + cleared``.

    Attributes
    ----------
    held
        Frames in the ring now.
    capacity
        Frames the ring holds at most.
    overflow
        The ring's policy when full.
    stored
        Frames copied into the ring.
    evicted
        Frames overwritten by newer ones (``overflow="evict_oldest"``).
    refused
        New frames not stored because the ring was full (``overflow="refuse"``).
    drained
        Frames moved out by :meth:`GPUBuffer.drain_to`.
    skipped
        Frames a drain left out because the target already held that step or a
        later one.
    cleared
        Frames discarded by :meth:`GPUBuffer.clear`.
    pending_dropped
        Lost steps (dropped before the ring, evicted, refused) not yet handed to
        a store by a drain.
    """

    held: int
    capacity: int
    overflow: str
    stored: int
    evicted: int
    refused: int
    drained: int
    skipped: int
    cleared: int
    pending_dropped: int

    @property
    def dropped(self) -> int:
        """Frames the ring lost to its overflow policy: ``evicted + refused``
        (their steps reach a drained store's ``dropped_steps``)."""
        return self.evicted + self.refused
