"""Spill: overflow frames to a local directory instead of dropping or blocking.

With ``policy=snapsink.Spill(dir)``, a frame that finds the channel full is
appended to a spill file in a private subdirectory of ``dir``, and so is every
frame after it until the consumer has taken all of them: the spilled frames
form one first-in-first-out queue on disk, behind the frames held in memory,
and are replayed in write order, bit-exact.

On disk (``dir/snapsink-spill-XXXXXXXX/``):

- ``lock``: held (``flock``, shared) by the sink's process and by its writer
  process while they live. A new sink on the same ``dir`` removes the
  leftovers of directories whose lock nobody holds (their owners died).
- ``000001.seg``, ``000002.seg``, ...: segments of at most :func:`segment_limit`
  bytes (a frame never straddles two). Each frame is one record: a header
  (:data:`_MAGIC`, the frame's serial, its data bytes, step, whether it has a
  time, the time, the row count of each ragged field) and the fields' bytes,
  laid out as in a shared-memory slot (:func:`snapsink._writer._shm.frame_layout`).

The records are the queue's only index: a spilled backlog costs a few counters
of RAM however long it grows. The reader (the sink's consumer, or its writer
process) removes a segment once it has read past its end and the frames were
stored; the producer, before each append, removes every segment whose frames
are all stored (the one it appends to included: the next record starts a new
one), so that what ``Spill.max_bytes`` bounds is what the directory holds (see
:meth:`SpillDir.stale_bytes`). A record is complete once the ``write`` that
appended it returned; a torn tail (the producer killed inside a write) is
never read.

The serial (1, 2, ... in the order frames were appended) lets the reader check
that the frame it reads is the one it was told to read: a consumer that is
handed more spilled frames than were appended, or a segment that holds other
bytes than the queue's, fails at once with an error that says where, instead
of storing the wrong frame.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import tempfile
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from ._checks import absolute_path
from ._errors import ConfigError
from ._schema import Field, Schema

__all__ = [
    "Spill",
    "SpillDir",
    "SpillReader",
    "clean_leftovers",
    "lock_shared",
    "record_nbytes",
    "remove_if_empty",
    "segment_limit",
]

_MAGIC: Final = b"SNSP"
_PREFIX: Final = "snapsink-spill-"
_LOCK: Final = "lock"
_SUFFIX: Final = ".seg"
_OLD_SUFFIX: Final = ".frame"  # snapsink 0.1: one file per frame
_ALIGN: Final = 64
#: a directory this young without a lock file may be a live sink's, being set up
_SETUP_GRACE_S: Final = 60.0
#: the largest segment; smaller under a small ``max_bytes`` (see segment_limit)
SEGMENT_BYTES: Final = 64 << 20


def _header(n_ragged: int) -> struct.Struct:
    """magic, padding, serial, data bytes, step, has_time, time, rows of each
    ragged field."""
    return struct.Struct("<4s4xqqqqd" + "q" * n_ragged)


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def record_nbytes(schema: Schema, rows: Sequence[int]) -> int:
    """Bytes of one frame's record in a segment: its header, then its fields as
    laid out in a slot (``rows``: the row count of each ragged field)."""
    from ._writer._shm import frame_layout

    return _padded(_header(len(schema.ragged)).size) + frame_layout(schema, rows)[1]


def segment_limit(max_bytes: int | None) -> int:
    """Bytes after which a new segment starts: a quarter of ``max_bytes`` (so
    that replayed segments free room in steps), at most :data:`SEGMENT_BYTES`."""
    if max_bytes is None:
        return SEGMENT_BYTES
    return max(1 << 16, min(SEGMENT_BYTES, max_bytes // 4))


@dataclass(frozen=True, slots=True)
class Spill:
    """Backpressure policy: overflow to a spill directory on local disk.

    Parameters
    ----------
    dir
        A directory on a fast local disk; created if missing. snapsink works in a
        fresh subdirectory of it and removes only the files it wrote (and those
        that sinks which died left behind). Made absolute when the policy is
        made, as a store's path is: a later ``os.chdir`` does not move it.
    max_bytes
        At most this many bytes in the spill directory (``None``: no limit):
        its segment files, each frame's bytes with a small header, and the
        replayed frames that share a segment with frames still to replay (a
        segment goes whole). When the next frame would exceed it, ``write``
        blocks (``write_nowait`` raises :class:`~snapsink.WouldBlock`) until
        replayed frames free room. A frame larger than ``max_bytes`` is
        spilled alone, once every spilled frame is stored.

    Raises
    ------
    ConfigError
        For a ``max_bytes`` that is not a positive int, or a relative ``dir``
        once the working directory was removed.
    """

    dir: str | os.PathLike[str]
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool)
            or not isinstance(self.max_bytes, int)
            or self.max_bytes <= 0
        ):
            raise ConfigError(
                f"Spill max_bytes: expected a positive int or None, got {self.max_bytes!r}"
            )
        if not isinstance(self.dir, str | os.PathLike):
            raise ConfigError(f"Spill dir: expected a path, got {type(self.dir).__name__}")
        where = absolute_path(os.fspath(self.dir), "Spill dir")
        object.__setattr__(self, "dir", where if isinstance(self.dir, str) else Path(where))


def _segment(directory: Path, index: int) -> Path:
    return directory / f"{index:06d}{_SUFFIX}"


def lock_shared(directory: Path) -> int:
    """Hold a shared lock on a spill directory's lock file; returns the descriptor
    (the lock goes when it is closed, or when its process dies)."""
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def clean_leftovers(base: Path) -> int:
    """Remove what sinks that died left in ``base``: the spill directories whose
    lock nobody holds (only snapsink's own files in them). Returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        d = Path(entry.path)
        try:
            fd = os.open(d / _LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            # no lock yet: a sink being set up, or one from snapsink 0.1
            try:
                young = _time.time() - entry.stat(follow_symlinks=False).st_mtime < _SETUP_GRACE_S
            except OSError:
                continue
            if young:
                continue
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
            for f in os.scandir(d):
                if f.name.endswith((_SUFFIX, _OLD_SUFFIX)) and f.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / _LOCK)
            with contextlib.suppress(OSError):
                d.rmdir()  # kept if someone else's files are in it
                removed += 1
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _check_base(base: Path) -> None:
    """The spill directory must be a writable directory: say so at open."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"Spill dir: expected a directory, got a file at {base}") from None
    except OSError as exc:
        raise ConfigError(f"Spill dir: cannot create {base}: {exc.strerror}") from exc
    st = base.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"Spill dir: expected a directory, got a file at {base}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"Spill dir: expected a writable directory, {base} is not writable")


class SpillDir:
    """The producer's side of a spill directory: appends frames to segments.

    Created when a sink with a Spill policy opens (so that a directory that
    cannot be used is a ConfigError then, not at a ``write``). Appends are
    serialized by the channel (one at a time, in the order frames were taken).
    """

    def __init__(self, config: Spill):
        self.config = config
        base = Path(config.dir)
        _check_base(base)
        clean_leftovers(base)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
            self._lock_fd = lock_shared(self.path)
        except OSError as exc:
            raise ConfigError(f"Spill dir: cannot work in {base}: {exc.strerror}") from exc
        self.limit = segment_limit(config.max_bytes)
        #: (the segment appended to, its bytes, frames appended (the serial of
        #: the last one), the record bytes of the last one, the record bytes of
        #: all of them), replaced whole once a frame is in: an exception at any
        #: point of an append (a Ctrl-C) leaves the frame either appended or
        #: not, never half counted
        self._at = (0, 0, 0, 0, 0)
        #: (index, record bytes appended before its first) of each segment not
        #: yet removed here, oldest first; replaced whole (read under the
        #: channel's lock while an append runs)
        self._segments: tuple[tuple[int, int], ...] = ()
        self._fd = -1
        self._fd_segment = 0  # the segment _fd is open on
        #: a segment whose file an append created and did not yet count (0: none):
        #: the reader may have moved on to it, so appends go there
        self._creating = 0
        self._header: struct.Struct | None = None
        from ._writer._shm import PAGE

        self._pad = bytes(PAGE)  # zeros between fields (each gap is under a page)

    def append(
        self,
        schema: Schema,
        step: int,
        time: float | None,
        items: Sequence[tuple[str, Field, Any]],
        to_host: Callable[[Any], Any] | None = None,
    ) -> int:
        """Append one frame (blocking); returns its record's bytes (header
        included: :func:`record_nbytes`).

        On failure nothing of the frame stays in the segment, and the error
        (an OSError, e.g. ENOSPC) propagates.
        """
        from ._writer._shm import frame_layout

        if self._header is None:
            self._header = _header(len(schema.ragged))
        arrays = []
        rows = []
        for _, field, value in items:
            arr = to_host(value) if to_host is not None else value
            arr = np.asarray(arr, dtype=field.dtype)
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            if field.ragged:
                rows.append(int(arr.shape[0]))
            arrays.append(arr)
        layout, total = frame_layout(schema, rows)
        segment, size, frames, _, appended = self._at
        header = self._header.pack(
            _MAGIC,
            frames + 1,
            total,
            step,
            time is not None,
            0.0 if time is None else time,
            *rows,
        )
        parts: list[Any] = [header, self._pad[: _padded(len(header)) - len(header)]]
        # each field at its offset in the layout, as the reader (and a slot) has it:
        # a field of a page or more starts on a page, so the gap before it may be
        # longer than the 64-byte alignment between the others
        pos = 0
        for (_, _, offset, nbytes, _), arr in zip(layout, arrays, strict=True):
            if offset > pos:
                parts.append(self._pad[: offset - pos])
            if nbytes:
                parts.append(arr.reshape(-1).view(np.uint8))
            pos = offset + nbytes
        parts.append(self._pad[: total - pos])
        record = _padded(len(header)) + total
        target = segment + 1 if self._fd < 0 or (size and size + record > self.limit) else segment
        if self._creating > segment:
            target = self._creating  # an append that made it was cut short
        if target != segment or self._fd_segment != target:
            self._open_segment(target)
            size = 0
        try:
            _write_all(self._fd, parts, record, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise
        self._at = (target, size + record, frames + 1, record, appended + record)
        self._creating = 0
        return record

    @property
    def frames(self) -> int:
        """Frames appended: the serial of the last one."""
        return self._at[2]

    @property
    def last_nbytes(self) -> int:
        """The record bytes of the last frame appended."""
        return self._at[3]

    def stale_bytes(self, stored: int) -> int:
        """Bytes of stored frames that stay on disk past the next append, given
        ``stored``, the record bytes of the frames stored (the first ones
        appended): those before the first frame not stored, in its segment.
        (Segments whose frames are all stored are gone by then: see
        :meth:`remove_stored`. If the last one is, and an append under way
        still adds to it, its bytes stay: they are counted, as stale.)"""
        for _, start in reversed(self._segments):
            if start <= stored:
                return stored - start
        return 0

    def remove_stored(self, stored: int) -> bool:
        """Remove the segments whose frames are all stored (``stored`` as for
        :meth:`stale_bytes`), the one appended to included: the next append
        starts a new one. Whether any was. Run in the appends' turn, before one.

        The reader read past every record in them; it may still hold one open
        at its end, and moves on to the next index as from any other segment.
        Each is emptied before it is unlinked: a file the reader holds open
        would keep its bytes on disk until the reader moves on, which may wait
        for the very frame that needs the room.
        """
        segments = self._segments
        end = self._at[4]
        gone = 0
        for i, (_, start) in enumerate(segments):
            last = segments[i + 1][1] if i + 1 < len(segments) else end
            if last > stored or last == start:  # frames to replay, or empty: kept
                break
            gone = i + 1
        if not gone:
            return False
        for index, _ in segments[:gone]:
            path = _segment(self.path, index)
            if index == self._fd_segment and self._fd >= 0:
                fd, self._fd = self._fd, -1
            else:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue  # the reader removed it
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
            path.unlink(missing_ok=True)
        self._segments = segments[gone:]
        return True

    def _open_segment(self, index: int) -> None:
        """Make segment ``index`` the one appended to, empty. The reader moves on
        to the next index at the end of a segment once its file exists, so once
        made, it is the one appended to, also after an exception here."""
        self._creating = index
        fd = os.open(
            _segment(self.path, index),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        old, self._fd = self._fd, fd
        self._fd_segment = index
        if not self._segments or self._segments[-1][0] != index:
            self._segments = (*self._segments, (index, self._at[4]))
        if old >= 0:
            os.close(old)

    def discard(self) -> None:
        """The sink failed: its spilled frames will never be stored; remove them."""
        for f in self.path.glob(f"*{_SUFFIX}"):
            f.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the segment; remove the lock and the directory if no frame is
        left in it (never user files)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_if_empty(self.path)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _write_all(fd: int, parts: list[Any], total: int, offset: int) -> None:
    """pwritev every part at ``offset``, resuming after short writes."""
    written = os.pwritev(fd, parts, offset)
    if written == total:
        return
    flat = b"".join(bytes(p) for p in parts)
    while written < total:
        n = os.pwrite(fd, flat[written:], offset + written)
        if n <= 0:  # pragma: no cover - the kernel reports errors as OSError
            raise OSError(errno.EIO, "short write to a spill segment")
        written += n


class SpillReader:
    """The consumer's side: reads spilled frames back, in order, bit-exact.

    Each frame read must carry the next serial (see the module docstring);
    :attr:`frames_read` is the serial of the last one.
    """

    def __init__(self, path: Path, schema: Schema):
        self.path = path
        self.schema = schema
        self._header = _header(len(schema.ragged))
        self._head = _padded(self._header.size)
        self._segment = 1
        self._fd = -1
        self._offset = 0
        #: segments read to their end, removed once their frames are stored
        self.exhausted: list[Path] = []
        self.frames_read = 0  # the serial of the last frame read

    def _header_at_next(self) -> tuple[Any, ...] | None:
        """The header of the next record (its data may still be a torn tail),
        the reader moved to its segment; None at the end of what was spilled."""
        while True:
            if self._fd < 0:
                try:
                    self._fd = os.open(
                        _segment(self.path, self._segment),
                        os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                    )
                except FileNotFoundError:
                    return None
                self._offset = 0
            raw = os.pread(self._fd, self._head, self._offset)
            if len(raw) == 0 and os.path.exists(_segment(self.path, self._segment + 1)):
                # The producer starts the next segment only once its last write
                # to this one returned, so this one's size is final now; it may
                # have grown since the read above.
                if os.fstat(self._fd).st_size <= self._offset:
                    self._next_segment()
                continue
            if len(raw) < self._header.size:
                return None  # the end (a torn header is never a frame)
            header: tuple[Any, ...] = self._header.unpack_from(raw)
            magic, serial = header[0], header[1]
            if magic != _MAGIC or serial != self.frames_read + 1:
                found = f"serial {serial}" if magic == _MAGIC else "no frame header"
                raise OSError(
                    errno.EIO,
                    f"spill segment {_segment(self.path, self._segment)} is corrupt at "
                    f"byte {self._offset}: expected spilled frame {self.frames_read + 1}, "
                    f"found {found}",
                )
            return header

    def read(self) -> tuple[int, float | None, dict[str, Any], int] | None:
        """The next frame: ``(step, time, fields, nbytes)`` (``nbytes``: its
        record's bytes, as :meth:`SpillDir.append` returned them), or None
        when no complete frame follows (the end of what was spilled).

        Raises
        ------
        OSError
            ``EIO`` when the bytes there are not the next frame of the queue.
        """
        from ._writer._shm import frame_layout

        header = self._header_at_next()
        if header is None:
            return None
        _, _, total, step, has_time, t, *rows = header
        data = os.pread(self._fd, total, self._offset + self._head)
        if len(data) < total:
            return None  # a torn tail: its write never returned
        self._offset += self._head + total
        self.frames_read += 1
        layout, _ = frame_layout(self.schema, rows)
        buf = np.frombuffer(data, np.uint8)
        fields: dict[str, Any] = {}
        for name, field, offset, nbytes, shape in layout:
            arr = buf[offset : offset + nbytes].view(field.dtype).reshape(shape)
            fields[name] = arr[()] if not shape else arr
        return step, (t if has_time else None), fields, self._head + total

    def read_next(self, context: str = "") -> tuple[int, float | None, dict[str, Any], int]:
        """The next frame, as :meth:`read`, where the caller knows one was spilled
        (the sink's consumer, the writer process).

        Raises
        ------
        OSError
            ``ENOENT`` naming the missing frame, where the queue stands and
            ``context``; ``EIO`` as for :meth:`read`.
        """
        got = self.read()
        if got is None:
            raise OSError(
                errno.ENOENT,
                f"spilled frame {self.frames_read + 1} is missing from {self.path} "
                f"({self.position()}{', ' + context if context else ''})",
            )
        return got

    def more(self) -> bool:
        """Whether a complete frame follows (without reading it)."""
        header = self._header_at_next()
        return header is not None and (
            os.fstat(self._fd).st_size >= self._offset + self._head + header[2]
        )

    def position(self) -> str:
        """Where the reader is, for an error message."""
        path = _segment(self.path, self._segment)
        try:
            size = f" of {path.stat().st_size}"
        except OSError as exc:
            size = f" ({exc.strerror})"
        return (
            f"segment {path.name} at byte {self._offset}{size}, "
            f"after {self.frames_read} spilled frames"
        )

    def _next_segment(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self.exhausted.append(_segment(self.path, self._segment))
        self._segment += 1

    def remove_exhausted(self) -> None:
        """Remove the segments read to their end (their frames are stored)."""
        done, self.exhausted = self.exhausted, []
        for p in done:
            p.unlink(missing_ok=True)

    def close(self, *, remove_dir: bool = False, writer_gone: bool = False) -> None:
        """Close; the segment being read is removed too when it was read to its
        end (``remove_dir``: and the directory, if nothing else is in it).

        ``writer_gone``: the process that spilled is dead and every complete
        frame was read: what is left (the torn last frame its death cut short,
        a segment it had just started) can never be completed and goes too.
        """
        if self._fd >= 0:
            size = os.fstat(self._fd).st_size
            os.close(self._fd)
            self._fd = -1
            if self._offset >= size:
                self.exhausted.append(_segment(self.path, self._segment))
        self.remove_exhausted()
        if writer_gone:
            for leftover in self.path.glob(f"*{_SUFFIX}"):
                leftover.unlink(missing_ok=True)
        if remove_dir:
            remove_if_empty(self.path)


def remove_if_empty(directory: Path) -> None:
    """Remove a spill directory's lock and the directory, if no frame is left
    in it (never user files)."""
    if any(directory.glob(f"*{_SUFFIX}")):
        return
    with contextlib.suppress(OSError):
        (directory / _LOCK).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
