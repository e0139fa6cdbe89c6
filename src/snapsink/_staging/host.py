"""Host staging: a bounded pool of reusable slots that frames are copied into.

A slot holds one frame. Its buffers are allocated at the slot's first use and
reused afterwards, so a long run allocates nothing per frame and host memory is
bounded by ``capacity x frame bytes`` (ragged buffers grow to the largest frame
seen). A slot returns to the pool once the store has appended its frame. A
buffer of a page or more starts on a page, so that a store may write it with
direct I/O (``stores/_pwrite.py``), as it does from a writer process's slots.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._arrays import is_device_array
from ..stores._pwrite import page_aligned_empty

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._schema import Field

__all__ = ["Completion", "Slot", "SlotPool", "borrow_host", "capture_fields"]


class Completion(Protocol):
    """Completion of a capture that finishes later (a device-to-host copy)."""

    def done(self) -> bool:
        """True once the captured data is in host memory."""
        ...

    async def wait(self) -> None:
        """Wait, without blocking the event loop, until :meth:`done`."""
        ...

    def synchronize(self) -> None:
        """Block the calling (worker) thread until :meth:`done`."""
        ...


class Slot:
    """One frame's worth of reusable host buffers (plus device-side state)."""

    __slots__ = ("buffers", "device", "host_views", "index", "shared")

    def __init__(self, index: int):
        self.index = index
        self.buffers: dict[str, np.ndarray[Any, Any]] = {}
        #: per-slot state owned by the device stager (pinned buffers), if any
        self.device: Any = None
        #: writer process: the slot's shared mapping (a ``SlotMemory``), owned by
        #: the ProcessChannel
        self.shared: Any = None
        #: during a device capture into shared memory: ``{name: flat uint8 view}``
        #: where each field's device-to-host copy must land
        self.host_views: dict[str, np.ndarray[Any, Any]] | None = None

    def buffer(self, name: str, field: Field, rows: int | None = None) -> np.ndarray[Any, Any]:
        """A writable array of the field's dtype and this frame's shape."""
        if not field.ragged:
            buf = self.buffers.get(name)
            if buf is None:
                shape = tuple(int(d) for d in field.shape if d is not None)  # fixed: all ints
                buf = self.buffers[name] = page_aligned_empty(shape, field.dtype)
            return buf
        row_shape = field.row_shape
        need = (rows or 0) * math.prod(row_shape)
        flat = self.buffers.get(name)
        if flat is None or flat.size < need:
            flat = self.buffers[name] = page_aligned_empty((max(need, 1),), field.dtype)
        return flat[:need].reshape((rows or 0, *row_shape))

    def capture_host(self, name: str, field: Field, value: Any) -> np.ndarray[Any, Any]:
        """Copy a host value (array or scalar) into this slot; return the copy.

        A scalar field becomes an immutable numpy scalar (no slot buffer needed).
        """
        if not field.shape:
            return field.dtype.type(value)  # type: ignore[no-any-return]
        rows = len(value) if field.ragged else None
        buf = self.buffer(name, field, rows)
        np.copyto(buf, value, casting="unsafe")  # safety was checked by validation
        return buf


class FreeSlots:
    """The free slots of a pool, made on first use: a channel of capacity 10**7
    costs nothing until its frames come (``pop`` gives a released slot, the most
    recent first, else a new one; ``append`` releases)."""

    __slots__ = ("_capacity", "_made", "_released")

    def __init__(self, capacity: int, made: list[Slot]):
        self._capacity = capacity
        self._made = made
        self._released: list[Slot] = []

    def __bool__(self) -> bool:
        return bool(self._released) or len(self._made) < self._capacity

    def __len__(self) -> int:
        return len(self._released) + self._capacity - len(self._made)

    def pop(self) -> Slot:
        if self._released:
            return self._released.pop()
        if len(self._made) >= self._capacity:
            raise IndexError("pop from an empty pool")
        slot = Slot(len(self._made))
        self._made.append(slot)
        return slot

    def append(self, slot: Slot) -> None:
        self._released.append(slot)


class SlotPool:
    """``capacity`` slots, made as frames need them, and the free ones (not
    thread-safe: the channel's lock guards it)."""

    __slots__ = ("free", "slots")

    def __init__(self, capacity: int):
        #: the slots made so far (at most ``capacity``)
        self.slots: list[Slot] = []
        self.free = FreeSlots(capacity, self.slots)

    def acquire(self) -> Slot | None:
        return self.free.pop() if self.free else None

    def release(self, slot: Slot) -> None:
        self.free.append(slot)


def borrow_host(field: Field, value: Any) -> np.ndarray[Any, Any]:
    """The caller's value as an array of the field's dtype, without a copy when
    possible (``write(..., copy=False)``)."""
    arr = np.asarray(value)
    if arr.dtype != field.dtype:
        arr = arr.astype(field.dtype)
    return arr


def capture_fields(
    slot: Slot, items: Sequence[tuple[str, Field, Any]], copy: bool
) -> tuple[dict[str, np.ndarray[Any, Any]], list[tuple[str, Field, Any]] | None]:
    """Capture a frame's host fields into ``slot`` (borrow them without ``copy``).

    Returns the fields in schema order, a device array's as a ``None`` place
    holder, and the device fields for the device stager (None when there are
    none). A scalar field becomes an immutable numpy scalar (no slot buffer).
    """
    fields: dict[str, np.ndarray[Any, Any]] = {}
    device_items: list[tuple[str, Field, Any]] | None = None
    for name, field, value in items:
        kind = type(value)
        if kind is not np.ndarray and kind is not float and is_device_array(value):
            if device_items is None:
                device_items = []
            device_items.append((name, field, value))
            fields[name] = None  # type: ignore[assignment]  # keeps schema order
        elif not field.shape:
            fields[name] = field.dtype.type(value)  # immutable: no slot buffer needed
        elif copy:
            fields[name] = slot.capture_host(name, field, value)
        else:
            fields[name] = borrow_host(field, value)
    return fields, device_items
