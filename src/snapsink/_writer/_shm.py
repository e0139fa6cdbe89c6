"""Shared memory between a sink and its writer process: slots, the ring, the layout.

Why memfd: each mapping is an anonymous memory file (``memfd_create``) whose
descriptor is handed to the writer over the control socket. Nothing is named
in ``/dev/shm``, so nothing can outlive both processes: the kernel frees the
memory when the last side holding it exits, whichever way it exits.

Two kinds of mapping:

- a **slot** holds one frame, every field (scalars included) at a 64-byte
  aligned offset given by :func:`frame_layout`, a field of a page or more at a
  page-aligned one (so the store can write it with direct I/O, straight from
  the slot; ``stores/_pwrite.py``); it is created at the slot's
  first use and replaced by a larger one (a new *generation*) when a ragged
  frame outgrows it. The producer writes it; the writer only reads it.
- the **ring** publishes frames in write order: a header of counters, then
  fixed-size records, one per published frame (its sequence number, slot or
  spill file, step, time, ragged row counts) or run of dropped steps. The
  producer writes a record, then the ring's ``tail``; the writer appends the
  frames and then advances ``done``. Each counter has a single writer, so
  neither side takes a lock.

The ring relies on stores becoming visible in program order (x86-64's TSO);
a lost wake-up flag costs at most one polling tick, never a frame.

Why the counters are read and written through a ``memoryview`` cast to int64,
never with ``struct``: ``Struct.pack_into`` zero-fills its target before it
packs the value (CPython's ``s_pack_internal``), so the other process could
read a counter as 0, or half written, while it changes. Read as 0, the
writer's ``done`` made the producer publish spilled frames a second time (a
phantom record, "a spilled frame is missing", issue 11). An item of an int64
memoryview is one aligned 8-byte load or store: it is never seen torn.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from .._schema import Field, Schema
from ..stores._pwrite import DIRECT_ALIGN

__all__ = [
    "RING_HEADER",
    "Ring",
    "SlotMemory",
    "frame_layout",
    "record_struct",
]

ALIGN: Final = 64
#: where a field of at least this many bytes starts in a slot: a page boundary,
#: the alignment direct I/O asks of the store's buffers
PAGE: Final = DIRECT_ALIGN

#: ring header: tail (producer), done (writer), want_done (producer sets, writer
#: clears), writer_idle (writer sets, producer clears), the spilled frames the
#: writer has stored: their bytes in the spill queue (what the spill's bound
#: counts) and their field bytes (what ``bytes_written`` counts) (writer), the
#: run of dropped steps that found the ring full, ``[from, to)``, empty unless
#: ``to > from`` (producer; the writer reads it once the producer is gone), each
#: on its own line
RING_HEADER: Final = 8 * ALIGN
TAIL: Final = 0
DONE: Final = ALIGN
WANT_DONE: Final = 2 * ALIGN
IDLE: Final = 3 * ALIGN
SPILL_DONE: Final = 4 * ALIGN
SPILL_FIELDS_DONE: Final = 5 * ALIGN
DROPS_FROM: Final = 6 * ALIGN
DROPS_TO: Final = 7 * ALIGN
#: a DROPS_TO that makes the run empty whatever DROPS_FROM holds
NO_DROPS: Final = -(1 << 63)

#: values of IDLE: the writer is working; it looks at the ring again within a
#: millisecond on its own (a timed sleep: waking it would cost the producer a
#: system call and the machine an interprocessor interrupt); it sleeps until woken
BUSY: Final = 0
POLLING: Final = 1
ASLEEP: Final = 2

#: record kinds: a frame in a slot, a frame in the spill queue, a run of dropped
#: steps (a drop policy's record of frames it discarded: on the ring, it
#: reaches the store even if the sink's process dies right after the drop)
SLOT: Final = 0
SPILLED: Final = 1
DROPPED: Final = 2


def record_struct(n_ragged: int) -> struct.Struct:
    """A ring record: seq, kind, slot (or the spilled frame's serial, 1-based;
    or the number of steps of a run of dropped steps), slot generation, step
    (a run's first), has_time, time, then one row count per ragged field."""
    return struct.Struct("<qqqqqqd" + "q" * n_ragged)


def frame_layout(
    schema: Schema, rows: Sequence[int]
) -> tuple[list[tuple[str, Field, int, int, tuple[int, ...]]], int]:
    """Where each field of a frame lies in a slot.

    ``rows`` gives the row count of each ragged field, in schema order.
    Returns ``([(name, field, offset, nbytes, shape), ...], total_bytes)``.
    Offsets are 64-byte aligned, and page aligned for a field of a page or
    more (a slot's mapping starts on a page).
    """
    out = []
    pos = 0
    r = iter(rows)
    for name, field in schema.items():
        if field.ragged:
            n = int(next(r))
            shape: tuple[int, ...] = (n, *field.row_shape)
            nbytes = n * field.row_nbytes
        else:
            shape = tuple(int(d) for d in field.shape if d is not None)
            nbytes = field.row_nbytes
        if nbytes >= PAGE:
            pos = -(-pos // PAGE) * PAGE
        out.append((name, field, pos, nbytes, shape))
        pos += -(-max(nbytes, 1) // ALIGN) * ALIGN
    return out, pos


#: Python 3.13+ can map a file without keeping a duplicate of its descriptor;
#: before, every mapping holds one open file (a slot costs the writer one
#: descriptor while it lives, none with this)
_UNTRACKED: Final[dict[str, Any]] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


#: What to do when slots run out of open files (either process's EMFILE)
FDS_HINT: Final = (
    "the slots in use hold open files (one each in either process before Python "
    "3.13) until the sink closes, and a channel of small frames behind a slow store "
    "may use up to its capacity in slots: raise the open-file limit (ulimit -n), or "
    "give the sink a smaller capacity or max_bytes"
)


def new_memfd(name: str, size: int) -> int:
    """An anonymous memory file of ``size`` bytes (close-on-exec)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SlotMemory:
    """One generation of a slot's shared mapping, on either side.

    The producer creates it (:meth:`create`, read-write); the writer maps the
    descriptor it received (:meth:`attach`, read-only).
    """

    __slots__ = ("array", "fd", "gen", "map", "size")

    def __init__(self, fd: int, size: int, gen: int, *, writable: bool):
        self.fd = fd
        self.size = size
        self.gen = gen
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot, **_UNTRACKED)
        #: the whole mapping as bytes (read-only on the writer's side)
        self.array: np.ndarray[Any, Any] = np.frombuffer(self.map, np.uint8)
        if not writable:
            self.array.flags.writeable = False

    @classmethod
    def create(cls, size: int, gen: int) -> SlotMemory:
        fd = new_memfd("snapsink-slot", size)
        return cls(fd, size, gen, writable=True)

    def view(self, offset: int, field: Field, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """The field's array at ``offset`` (a 0-d array for a scalar field)."""
        n = field.frame_nbytes(shape[0] if field.ragged else None)
        return self.array[offset : offset + n].view(field.dtype).reshape(shape)

    def close(self) -> None:
        """Drop this side's descriptor; the mapping goes once no array uses it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Ring:
    """The publication ring (see the module docstring) over one shared mapping."""

    __slots__ = ("counters", "fd", "map", "nrecords", "record")

    def __init__(self, fd: int, nrecords: int, n_ragged: int, *, create: bool = False):
        self.fd = fd
        self.nrecords = nrecords
        self.record = record_struct(n_ragged)
        size = RING_HEADER + nrecords * self.record.size
        if create:
            os.ftruncate(fd, size)
        self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        #: the header's counters, each read and written whole (module docstring)
        self.counters = memoryview(self.map)[:RING_HEADER].cast("q")

    @classmethod
    def create(cls, nrecords: int, n_ragged: int) -> Ring:
        fd = os.memfd_create("snapsink-ring", os.MFD_CLOEXEC)
        try:
            return cls(fd, nrecords, n_ragged, create=True)
        except BaseException:
            os.close(fd)
            raise

    def get(self, offset: int) -> int:
        """The counter at ``offset`` (TAIL, DONE, ...), read in one load."""
        return int(self.counters[offset >> 3])

    def set(self, offset: int, value: int) -> None:
        """Store the counter at ``offset`` in one store: never seen torn."""
        self.counters[offset >> 3] = value

    def put(self, seq: int, values: Sequence[Any]) -> None:
        """Write record ``seq`` (1-based); publish it with ``set(TAIL, seq)``."""
        self.record.pack_into(
            self.map, RING_HEADER + ((seq - 1) % self.nrecords) * self.record.size, *values
        )

    def read(self, seq: int) -> tuple[Any, ...]:
        return self.record.unpack_from(
            self.map, RING_HEADER + ((seq - 1) % self.nrecords) * self.record.size
        )

    def close(self) -> None:
        """Drop the descriptor and unmap (a view still held keeps the mapping)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.counters.release()
        with contextlib.suppress(BufferError):
            self.map.close()
