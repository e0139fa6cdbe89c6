"""Writing buffers to a file: :func:`pwrite_all`, and direct I/O for large
aligned writes (:class:`DirectWriter`), where the disk reads the writer's memory.

A buffered ``pwrite`` copies every byte into the page cache, and the kernel
later writes the dirty pages out; both cost CPU in the writer's process. With
``O_DIRECT`` the disk takes the bytes from the writer's buffer (a staging slot
in shared memory) by DMA, and the page cache is left alone. On the 2-core VM
that the benchmarks run on (ext4 on a virtio disk, fdatasync every 8 writes;
``docs/benchmarks.md``) writes of 4 MiB went at 4.2 GB/s direct against
0.4-1.5 GB/s buffered, using 0.04 instead of 0.5-2.5 CPU-seconds per GB: the CPU
a writer process needs beside a simulation that holds the other core. Writes
of 1 MiB gained 1.4x; at 256 KiB the two were even, and at 64 KiB direct was
half as fast (each write waits for the disk): hence :data:`DIRECT_MIN_BYTES`.
Where the page cache can absorb a whole run and a core is idle, buffered
writes finish sooner (``docs/guides/writers.md``).

Direct I/O asks that a write's file offset, its length and the address and
length of every buffer be aligned. :class:`DirectWriter` writes direct only
when all of them are multiples of :data:`DIRECT_ALIGN` and the write is large
enough; anything else, and any file system that refuses ``O_DIRECT``
(``EINVAL``), goes through the buffered descriptor as before. Durability is
unchanged: a direct write may still sit in the disk's volatile cache, and the
commit's ``fdatasync`` (of the file, whichever descriptor wrote it) flushes it.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DIRECT_ALIGN",
    "DIRECT_MIN_BYTES",
    "DirectWriter",
    "direct_eligible",
    "direct_io_pays",
    "memory_backed",
    "page_aligned_empty",
    "pwrite_all",
]

#: ``O_DIRECT`` where the platform has it (Linux); 0 elsewhere: never direct.
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
#: The alignment asked of a direct write's offset and of each buffer's address
#: and length: the page size, which covers the logical block sizes Linux disks
#: report (512, 4096).
DIRECT_ALIGN = 4096
#: The smallest write that goes direct (see the module's figures).
DIRECT_MIN_BYTES = 1 << 20
#: Linux IOV_MAX; a pwritev call takes at most this many buffers.
_IOV_MAX = 1024


def pwrite_all(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """Write every byte of ``buffers`` back to back at ``offset`` (``pwritev``,
    at most IOV_MAX buffers a call, short writes resumed); return the bytes
    written. NpyDirectory's rows and ZarrStore's in-place chunks go out here."""
    pending = [b for b in buffers if b.nbytes]
    total = 0
    while pending:
        chunk = pending[:_IOV_MAX]
        written = os.pwritev(fd, chunk, offset)
        offset += written
        total += written
        rest: list[memoryview] = []
        for k, b in enumerate(chunk):
            if written >= b.nbytes:
                written -= b.nbytes
                continue
            rest = [b[written:], *chunk[k + 1 :]]  # short write (rare): resume
            break
        pending = rest + pending[_IOV_MAX:]
    return total


def page_aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """``np.empty(shape, dtype)``, starting on a page when it takes a page or
    more: the staging slots of a thread writer, whose rows may then go direct."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < DIRECT_ALIGN:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + DIRECT_ALIGN, np.uint8)
    start = -raw.ctypes.data % DIRECT_ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _address(b: memoryview) -> int:
    return int(np.frombuffer(b, np.uint8).ctypes.data)


#: statfs ``f_type`` of the file systems whose pages are memory (tmpfs, ramfs):
#: a direct write there is the same copy as a buffered one
_MEMORY_FS = frozenset({0x01021994, 0x858458F6})


def memory_backed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies on tmpfs or ramfs, where direct I/O saves no copy
    (Linux ``statfs``; False wherever that cannot be asked)."""
    if not sys.platform.startswith("linux"):
        return False
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # a store not created yet: where it will be
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)  # struct statfs: f_type first, 120 bytes
        if libc.statfs(os.fsencode(path), buf) != 0:
            return False
        f_type = ctypes.c_long.from_buffer(buf).value
    except (OSError, AttributeError):  # pragma: no cover - no libc to ask
        return False
    return (f_type & 0xFFFFFFFF) in _MEMORY_FS


def direct_io_pays(path: str | os.PathLike[str]) -> bool:
    """Whether direct I/O can save a copy for files under ``path``: the
    platform has ``O_DIRECT`` and the file system is not memory (a file system
    that refuses it is found at the first write)."""
    return bool(_O_DIRECT) and not memory_backed(path)


def direct_eligible(buffers: Sequence[memoryview], offset: int) -> bool:
    """Whether ``buffers``, written back to back at ``offset``, may go direct:
    every offset, address and length aligned, at least DIRECT_MIN_BYTES in all."""
    if not _O_DIRECT or offset % DIRECT_ALIGN:
        return False
    total = 0
    for b in buffers:
        n = b.nbytes
        if n % DIRECT_ALIGN or not b.c_contiguous:
            return False
        if n and _address(b) % DIRECT_ALIGN:
            return False
        total += n
    return total >= DIRECT_MIN_BYTES


class DirectWriter:
    """A file's second descriptor, opened with ``O_DIRECT``, for its large
    aligned writes.

    It is opened at the first write that qualifies, through
    ``/proc/self/fd/<fd>``: the file already open, whatever its path names now.
    Where that open or a direct write fails with ``EINVAL`` (a file system
    without direct I/O, an alignment stricter than :data:`DIRECT_ALIGN`), or
    ``/proc`` is missing, direct I/O is off for this file and the caller writes
    buffered. Other errors (a full disk, an I/O error) are raised as they are.
    Threads may write through one DirectWriter at once (ZarrStore's pool writes
    rows of one chunk file from several).
    """

    __slots__ = ("_lock", "fd", "usable", "writes")

    def __init__(self, usable: bool = True) -> None:
        self._lock = threading.Lock()
        self.fd = -1
        #: False once direct I/O was refused (or was never wanted)
        self.usable = usable and bool(_O_DIRECT)
        #: how many writes went direct (statistics and tests)
        self.writes = 0

    def write(self, fd: int, buffers: Sequence[memoryview], offset: int) -> bool:
        """Write ``buffers`` back to back at ``offset`` of ``fd``'s file,
        direct; False when this write cannot go direct and nothing needs
        undoing (the caller writes it buffered; a direct write refused half
        way is written over)."""
        if not self.usable or not direct_eligible(buffers, offset):
            return False
        dfd = self.fd
        if dfd < 0:
            with self._lock:
                if self.fd < 0 and self.usable:
                    try:
                        self.fd = os.open(
                            f"/proc/self/fd/{fd}", os.O_WRONLY | _O_DIRECT | _CLOEXEC
                        )
                    except OSError:  # no /proc, or a file system without O_DIRECT
                        self.usable = False
                dfd = self.fd
            if dfd < 0:
                return False
        try:
            pwrite_all(dfd, buffers, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.usable = False  # later writes go buffered; the descriptor stays
            return False  # until close, as another thread may be writing with it
        self.writes += 1
        return True

    def close(self) -> None:
        """Close the direct descriptor (no write may be under way)."""
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
