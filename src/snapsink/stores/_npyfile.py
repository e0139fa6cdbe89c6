"""File I/O of the ``snapsink-npy`` format (see ``docs/formats/npy.md``).

- :class:`GrowableNpyFile`: one ``.npy`` file grown along axis 0 by capacity
  doubling, written with ``os.pwritev``;
- :func:`open_in_store`: every file of a store opened without following
  symbolic links and never blocking on a FIFO;
- reading: :func:`read_metadata`, :func:`load_static`, :func:`read_exactly`,
  :func:`data_size`;
- writing durably: :func:`write_static`, :func:`replace_atomically`
  (commit-last metadata) and :func:`fsync_dir`.

What the bytes mean (headers, metadata, layout) is decided without I/O in
:mod:`._npyformat`; this module only moves them to and from the disk.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, StoreNotFoundError
from ._npyformat import (
    HEADER_SIZE,
    MAX_METADATA_BYTES,
    METADATA,
    STATIC_DIR,
    Header,
    Metadata,
    build_header,
    check_header,
    decode_metadata,
    parse_header,
)
from ._pwrite import DirectWriter, pwrite_all

__all__ = [
    "GrowableNpyFile",
    "check_path",
    "data_size",
    "file_kind",
    "fsync_dir",
    "load_static",
    "open_in_store",
    "pwrite_all",
    "read_at",
    "read_exactly",
    "read_metadata",
    "replace_atomically",
    "start_writeback",
    "unreadable",
    "write_static",
]

#: First capacity of a file: this many bytes' worth of rows, and at least 16 rows.
_INITIAL_BYTES = 1 << 20
_CAN_ADVISE = hasattr(os, "posix_fadvise") and sys.platform == "linux"


# -- writing and opening files ----------------------------------------------------
def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing a file's dirty range (``length`` 0: to the end) to disk,
    without waiting: Linux starts the writeback at ``POSIX_FADV_DONTNEED``
    (and drops the range's clean pages, which a writer does not read again).
    The next fsync then has little left to do, and the disk works while the
    writer takes the next frames. A no-op where the advice is missing.

    Every store's early writeback (NpyDirectory's rows, ZarrStore's chunks,
    HDF5Store's sessions) comes here."""
    if not _CAN_ADVISE:
        return
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:  # advice only: the commit's fsync still syncs
        pass


def fsync_dir(path: str) -> None:
    """fsync a directory so the entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_datasync = getattr(os, "fdatasync", os.fsync)
#: Data files are never opened through a symlink: a hostile store could point
#: one at a file outside it, which appends would then overwrite.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Opening a FIFO blocks until a writer opens it too; non-blocking, the open
#: returns at once and fstat tells it is no regular file.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


#: errors of the machine, not of the store: raised as they are, never as a FormatError
_NOT_THE_STORE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR})


def unreadable(where: str, exc: OSError, what: str = "cannot read") -> FormatError:
    """The :class:`~snapsink.FormatError` for a store file that could not be
    read; ``exc`` is raised as it is instead when the machine, not the store,
    is at fault (too many open files, no memory): a FormatError would call a
    good store damaged."""
    if exc.errno in _NOT_THE_STORE:
        raise exc
    return FormatError(f"{where}: {what}: {exc}")


def open_in_store(root: str, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open the regular file ``rel`` (``"x.npy"``, ``"static/m.npy"``) of the store
    at ``root`` and return its descriptor.

    Every component below ``root`` is opened relative to its parent without
    following symbolic links, so nothing outside the store is ever reached;
    the file is opened non-blocking and must be a regular file, so a FIFO or a
    device in the store never hangs the caller.

    Raises
    ------
    FileNotFoundError
        ``root`` or the file is missing.
    FormatError
        A symbolic link, or something other than a regular file (a directory
        for a file, a FIFO, a socket, a device).
    """
    where = os.path.join(root, rel)
    *dirs, name = rel.split("/")
    dfd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in dirs:
            try:
                nfd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                # Linux says ENOTDIR for a symlink opened with O_DIRECTORY|O_NOFOLLOW.
                if exc.errno == errno.ELOOP or (
                    exc.errno == errno.ENOTDIR and _is_link(part, dfd)
                ):
                    raise FormatError(
                        f"{where}: {part!r} is a symbolic link; a store holds only regular "
                        "files and its own directories (refusing to reach outside it)"
                    ) from exc
                raise  # missing (FileNotFoundError) or a file (NotADirectoryError)
            os.close(dfd)
            dfd = nfd
        try:
            fd = os.open(name, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FormatError(
                    f"{where}: is a symbolic link; a store's files must be regular files "
                    "(refusing to open a file outside the store)"
                ) from exc
            if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
                raise FormatError(
                    f"{where}: not a regular file ({exc.strerror}); a store's files must be "
                    "regular files"
                ) from exc
            raise
    finally:
        os.close(dfd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FormatError(
                f"{where}: not a regular file (a {file_kind(mode)}); a store's files must "
                "be regular files"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return kind
    return "special file"


def read_at(fd: int, n: int, pos: int) -> bytes:
    """Up to ``n`` bytes at ``pos`` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    while n > 0:
        chunk = os.pread(fd, n, pos)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        pos += len(chunk)
    return b"".join(parts)


# -- a growable file --------------------------------------------------------------
class GrowableNpyFile:
    """One ``.npy`` file grown along axis 0: header at 0, rows from offset 4096.

    ``used`` rows are written; ``committed`` rows are durable and named by the
    header. Capacity grows geometrically with ``ftruncate`` (a sparse extent on
    most file systems), so data already written is never copied.

    Rows go out with ``os.pwritev`` rather than through a memory map: on a
    64 MiB run (1024 frames of 64 KiB, 200k frames of 12 B, 2800 of 12 KB,
    batches of 1 and 16, ext4 on a VM) pwritev was as fast or faster in every
    case (e.g. 100 vs 116 ms, 40 vs 176 ms, 54 vs 83 ms for batches of 16),
    needs no remap on growth, and reports a full disk as an ``OSError`` where a
    memory map would raise SIGBUS. Runs of rows of at least 1 MiB whose offset,
    length and buffers are page aligned go direct (:class:`DirectWriter`); the
    data offset of 4096 is what makes a file's rows alignable.
    """

    __slots__ = ("capacity", "committed", "direct", "dirty", "dtype", "fd", "path",
                 "row_bytes", "row_shape", "used", "written_back")

    def __init__(self, path: str, fd: int, dtype: np.dtype[Any], row_shape: tuple[int, ...],
                 committed: int, capacity: int, direct_io: bool = True):
        self.path = path
        self.fd = fd
        self.dtype = dtype
        self.row_shape = row_shape
        self.row_bytes = math.prod(row_shape) * dtype.itemsize
        self.committed = committed
        self.used = committed
        self.capacity = capacity
        self.dirty = False
        #: rows whose writeback was started early (:meth:`start_writeback`)
        self.written_back = committed
        #: large aligned writes go direct (off: ``NpyDirectory(direct_io=False)``)
        self.direct = DirectWriter(direct_io)

    @classmethod
    def create(cls, path: str, dtype: np.dtype[Any], row_shape: tuple[int, ...],
               direct_io: bool = True) -> GrowableNpyFile:
        """Create (or truncate) ``path`` with zero rows and a first capacity."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644)
        try:
            f = cls(path, fd, dtype, row_shape, 0, 0, direct_io)
            os.pwrite(fd, build_header(dtype, (0, *row_shape)), 0)
            f.reserve(max(16, _INITIAL_BYTES // max(f.row_bytes, 1)))
        except BaseException:
            os.close(fd)
            raise
        f.dirty = True
        return f

    @classmethod
    def reopen(cls, path: str, dtype: np.dtype[Any], row_shape: tuple[int, ...],
               committed: int, direct_io: bool = True) -> GrowableNpyFile:
        """Open an existing file to append after its first ``committed`` rows.

        Rows past ``committed`` (an uncommitted tail) are overwritten by later
        appends and cut off at close.

        Raises
        ------
        FormatError
            The header does not match ``dtype``/``row_shape``, or the file holds
            fewer than ``committed`` rows.
        """
        # Never through a symlink (appends would overwrite a file outside the
        # store), never blocking on a FIFO: only a regular file.
        fd = open_in_store(os.path.dirname(path) or ".", os.path.basename(path), os.O_RDWR)
        try:
            header = check_header(parse_header(os.pread(fd, HEADER_SIZE, 0), path), dtype,
                                  row_shape, path)
            if header.offset != HEADER_SIZE:
                raise FormatError(f"{path}: data offset {header.offset}, expected {HEADER_SIZE}")
            size = os.fstat(fd).st_size
            f = cls(path, fd, dtype, row_shape, committed, 0, direct_io)
            have = (size - HEADER_SIZE) // f.row_bytes if f.row_bytes else committed
            if size < HEADER_SIZE or have < committed:
                raise FormatError(
                    f"{path}: expected at least {committed} committed rows, the file holds {have}"
                )
            f.capacity = have
        except BaseException:
            os.close(fd)
            raise
        return f

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows after ``used`` (capacity doubling)."""
        need = self.used + rows
        if need > self.capacity:
            if self.capacity:  # growing would hide a truncation: look first
                self._check_size(os.fstat(self.fd).st_size, self.capacity)
            cap = max(need, 2 * self.capacity)
            os.ftruncate(self.fd, HEADER_SIZE + cap * self.row_bytes)
            self.capacity = cap

    def write_at(self, row: int, buffers: Sequence[memoryview]) -> None:
        """Write contiguous row data at row index ``row`` (room must be reserved);
        direct when the run is large and aligned, else through the page cache."""
        offset = HEADER_SIZE + row * self.row_bytes
        if not self.direct.write(self.fd, buffers, offset):
            pwrite_all(self.fd, buffers, offset)
        self.dirty = True

    def read_row(self, row: int) -> np.ndarray[Any, Any]:
        """Read one row back (resume needs the last step and time)."""
        raw = os.pread(self.fd, self.row_bytes, HEADER_SIZE + row * self.row_bytes)
        if len(raw) != self.row_bytes:
            raise FormatError(f"{self.path}: short read at row {row}")
        return np.frombuffer(raw, self.dtype).reshape(self.row_shape)

    def start_writeback(self) -> None:
        """Start writing the rows written since the last call to disk, without
        waiting (Linux starts the writeback of a dirty range at
        ``POSIX_FADV_DONTNEED``); a no-op where that advice is not available."""
        start = self.written_back
        if self.used <= start:
            return
        start_writeback(
            self.fd, HEADER_SIZE + start * self.row_bytes, (self.used - start) * self.row_bytes
        )
        self.written_back = self.used

    def sync(self) -> None:
        """Name the ``used`` rows in the header and make everything durable."""
        self.sync_rows(self.used)
        self.committed = self.used
        self.dirty = False

    def sync_rows(self, rows: int) -> None:
        """Name ``rows`` rows in the header and make the file durable; changes
        none of this object's fields (a background commit calls it while
        more rows are appended)."""
        os.pwrite(self.fd, build_header(self.dtype, (rows, *self.row_shape)), 0)
        _datasync(self.fd)

    def finalize(self, rows: int) -> None:
        """Header naming ``rows`` rows, file cut to exactly those rows, durable."""
        os.pwrite(self.fd, build_header(self.dtype, (rows, *self.row_shape)), 0)
        os.ftruncate(self.fd, HEADER_SIZE + rows * self.row_bytes)
        os.fsync(self.fd)
        self.capacity = self.used = self.committed = rows
        self.dirty = False

    def check_unchanged(self) -> None:
        """Fail unless ``path`` still names the file this object writes and that
        file still holds every row written.

        Raises
        ------
        FileNotFoundError
            The file was deleted (or its directory removed).
        FormatError
            The file was replaced (another inode at ``path``) or truncated below
            the rows written, by someone other than this writer.
        """
        # The capacity before the size: a background commit runs this while the
        # writer thread grows the file (ftruncate, then capacity), so a size
        # taken first could predate a growth whose capacity is read after it.
        # Taken in this order, the file is at least that capacity.
        capacity = self.capacity
        st = os.fstat(self.fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                f"{self.path}: deleted while the store was writing it (or its directory "
                "was removed or moved); refusing to commit frames that are not there",
                self.path,
            ) from None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise FormatError(
                f"{self.path}: replaced by another file while the store was writing it "
                f"(device/inode {st.st_dev}/{st.st_ino} opened, {now.st_dev}/{now.st_ino} "
                "now at the path)"
            )
        self._check_size(st.st_size, capacity)

    def _check_size(self, size: int, capacity: int) -> None:
        # Against the capacity, not the rows used: the file is never shorter
        # than its capacity, and appends after a truncation that stay within
        # the capacity (refilling the cut part with a hole) do not hide it.
        need = HEADER_SIZE + capacity * self.row_bytes
        if size < need:
            raise FormatError(
                f"{self.path}: truncated to {size} bytes while the store was writing it "
                f"(it held {need}: room for {capacity} rows)"
            )

    def close(self) -> None:
        self.direct.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# -- a store's files ----------------------------------------------------------------
# check_path is I/O-free, but hdf5.py imports it from here (it validates the
# path argument that open_in_store and the writers then use).
def check_path(path: object) -> str:
    if isinstance(path, str | os.PathLike):
        p = os.fspath(path)
        if isinstance(p, str) and p:
            return p
    raise ConfigError(
        f"path: expected a non-empty str or os.PathLike, got {type(path).__name__} {path!r}"
    )


def read_metadata(path: str) -> Metadata:
    """Load and validate ``<path>/metadata.json``.

    Raises
    ------
    StoreNotFoundError
        No directory or no metadata.json.
    FormatError
        Unreadable, truncated, foreign or malformed metadata.
    """
    if not os.path.isdir(path):
        raise StoreNotFoundError(f"no snapsink-npy store at {path!r}: not a directory")
    where = os.path.join(path, METADATA)
    try:
        fd = open_in_store(path, METADATA)
    except FileNotFoundError:
        raise StoreNotFoundError(
            f"no snapsink-npy store at {path!r}: the directory has no {METADATA}"
        ) from None
    except OSError as exc:
        raise unreadable(where, exc) from exc
    try:
        size = os.fstat(fd).st_size
        if size > MAX_METADATA_BYTES:
            raise FormatError(f"{where}: larger than {MAX_METADATA_BYTES} bytes")
        raw = read_at(fd, size, 0)
    except OSError as exc:
        raise unreadable(where, exc) from exc
    finally:
        os.close(fd)
    return decode_metadata(raw, where)


#: the most header bytes a static ``.npy`` file may have (numpy's reader refuses
#: headers over 10000 bytes unless told otherwise)
_MAX_STATIC_HEADER = 1 << 16


def load_static(path: str, name: str) -> np.ndarray[Any, Any]:
    """Read ``static/<name>.npy`` of the store at ``path``.

    The header's claim (dtype and shape) is checked against the file's real size
    before anything is allocated; the file must be a regular file inside the store.

    Raises
    ------
    FormatError
        Missing, a symbolic link or a special file, a header that claims more data
        than the file holds, or not a plain numeric ``.npy`` file.
    """
    rel = f"{STATIC_DIR}/{name}.npy"
    where = os.path.join(path, rel)
    try:
        fd = open_in_store(path, rel)
    except FileNotFoundError:
        raise FormatError(f"{where}: missing, but {METADATA} lists static {name!r}") from None
    except OSError as exc:
        raise unreadable(where, exc) from exc
    with os.fdopen(fd, "rb") as fh:
        try:
            size = os.fstat(fd).st_size
            header = parse_header(
                read_at(fd, min(size, _MAX_STATIC_HEADER), 0), where, allow_fortran=True
            )
            need = header.offset + math.prod(header.shape) * header.dtype.itemsize
            if size < need:
                raise FormatError(
                    f"{where}: the header claims {math.prod(header.shape)} elements of "
                    f"{header.dtype} (shape {header.shape}, {need} bytes with the header); "
                    f"the file holds {size} bytes"
                )
            arr = np.lib.format.read_array(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{where}: not a readable .npy file: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise FormatError(f"{where}: not a plain numeric array")
    return arr


def write_static(path: str, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """Write each array to ``static/<name>.npy`` of the store at ``path``, durably."""
    if not arrays:
        return
    sdir = os.path.join(path, STATIC_DIR)
    os.makedirs(sdir, exist_ok=True)
    for name, arr in arrays.items():
        with open(os.path.join(sdir, f"{name}.npy"), "wb") as fh:
            np.lib.format.write_array(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_dir(sdir)


def replace_atomically(directory: str, tmp_name: str, name: str, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it, rename it onto ``name``, fsync the directory."""
    tmp = os.path.join(directory, tmp_name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))
    fsync_dir(directory)


def read_exactly(root: str, rel: str, pos: int, out: np.ndarray[Any, Any], what: str) -> None:
    """Fill ``out`` with the bytes of the store file ``root/rel`` from offset ``pos``.

    Raises
    ------
    FormatError
        The file is unreadable, not a regular file inside the store, or ends
        early (fewer rows than metadata names).
    """
    where = os.path.join(root, rel)
    buf = out.reshape(-1).view(np.uint8).data
    got = 0
    try:
        fd = open_in_store(root, rel)
        try:
            while got < len(buf):
                n = os.preadv(fd, [buf[got:]], pos + got)
                if not n:
                    break
                got += n
        finally:
            os.close(fd)
    except OSError as exc:
        raise unreadable(where, exc) from exc
    if got != len(buf):
        raise FormatError(
            f"{where}: holds fewer rows than {METADATA} names ({what} asked for); "
            "the store is truncated"
        )


def data_size(root: str, rel: str) -> tuple[Header, int]:
    """The header and the size in bytes of the growable file ``root/rel``.

    Raises
    ------
    FormatError
        Missing, unreadable, not a regular file inside the store, or no ``.npy``.
    """
    where = os.path.join(root, rel)
    try:
        fd = open_in_store(root, rel)
        try:
            size = os.fstat(fd).st_size
            raw = read_at(fd, HEADER_SIZE, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise unreadable(where, exc, "cannot read a file the store names") from exc
    return parse_header(raw, where), size
