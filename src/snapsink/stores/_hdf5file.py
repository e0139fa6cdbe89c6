"""The file side of the HDF5 store: h5py on demand, locks, crash recovery.

Why sessions. HDF5 allows one writer per file, and a file opened for writing
by a process that then dies is refused by every later writer ("file is
already open for write"). snapsink writes a file in short *sessions*: a
writer takes the file's session lock, opens the file, writes what it
buffered (and commits), closes it, and lets the lock go. Several stores may
so write different groups of one file, from different writer processes, one
session at a time (HDF5's one-writer rule holds at every moment), and a
reader opens between or during sessions.

Why SWMR. Inside a session that creates nothing (appends and commits), the
file is open in HDF5's single-writer/multiple-reader mode (``libver="latest"``,
``H5F_ACC_SWMR_WRITE``): HDF5 then writes its metadata in an order that keeps
the file readable at every moment, so a SIGKILL mid-session leaves a file
whose committed frames read back. Creating groups and datasets is not allowed
in SWMR mode: that happens in short non-SWMR sessions (``open``, ``prepare``,
``close``), each ending with a flush and an fsync.

Why a superblock patch. After a SIGKILL the superblock still says "open for
(SWMR) writing", and HDF5 refuses to open the file for writing until the
flags are cleared (``h5clear -s``). Under the session lock nobody else writes
the file, so :func:`clear_open_flags` clears them itself, and raises the
recorded end of allocated space to the file's size (``h5clear --increment``):
chunks written after the last flush of the superblock are then never
overwritten by new allocations.

Why OFD locks. The locks are Linux open-file-description byte-range locks far
beyond any data (``F_OFD_SETLK``): they die with their holder, they exclude
two holders in one process too, and they never conflict with the ``flock``
that HDF5 itself (and h5py's default ``locking=True``) takes on the file.
Where OFD locks are missing, the store writes without them, with a warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import itertools
import os
import stat
import struct
import sys
import warnings
from collections.abc import Iterator
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

from .._errors import FormatError, StoreLockedError
from ._lock import open_regular_file

__all__ = [
    "HDF5_SIGNATURE",
    "FileLocks",
    "SessionBusy",
    "check_not_truncated",
    "clear_open_flags",
    "file_image",
    "fsync_fd",
    "give_back",
    "import_h5py",
    "is_hdf5_file",
    "lookup3",
    "reserve",
    "wait_for_sessions",
]

#: The first 8 bytes of every HDF5 file (snapsink never writes a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def import_h5py() -> Any:
    """h5py, imported on first use (``import snapsink`` never imports it).

    Raises
    ------
    ModuleNotFoundError
        h5py is not installed; the message names the extra that installs it.
    """
    try:
        import h5py
    except ImportError as exc:
        raise ModuleNotFoundError(
            "snapsink's HDF5 store needs h5py: pip install 'snapsink[hdf5]' (or pip install h5py)"
        ) from exc
    return h5py


def is_hdf5_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file starting with the HDF5 signature.

    Follows a symbolic link: ``path`` is the store itself, which a user may
    name through a link, as an NpyDirectory's or a Zarr store's directory
    (the files *inside* a directory store are the ones opened ``O_NOFOLLOW``,
    so that a reader stays inside the store). Never blocks on a FIFO.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 8, 0) == HDF5_SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)


def fsync_fd(fd: int) -> None:
    """Data and size of the file behind ``fd`` on disk (any descriptor of the
    file will do: the kernel syncs the inode, not the descriptor)."""
    os.fsync(fd)


# -- the superblock --------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: HDF5's metadata checksum."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M32
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _M32
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _M32
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i : i + n] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


#: lookup3's ``mix()``: six steps ``x -= z; x ^= rot(z, k); z += y`` on
#: (x, y, z) = (a, b, c), (b, c, a), (c, a, b), twice round
_MIX_ROTATIONS = (4, 6, 8, 16, 19, 4)
#: lookup3's ``final()``: seven steps ``z ^= y; z -= rot(y, k)`` on
#: (z, y) = (c, b), (a, c), (b, a), ... round
_FINAL_ROTATIONS = (14, 11, 25, 16, 4, 14, 24)


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for k in _MIX_ROTATIONS:
        a = ((a - c) & _M32) ^ _rot(c, k)
        c = (c + b) & _M32
        a, b, c = b, c, a  # the next step's (x, y, z)
    return a, b, c  # six steps: back in place


def _final(a: int, b: int, c: int) -> int:
    """``final()``, returning ``c``."""
    for k in _FINAL_ROTATIONS:
        c = ((c ^ b) - _rot(b, k)) & _M32
        a, b, c = b, c, a  # the next step's z is a, its y is c
    return b  # seven steps: c is one place on, in b


def _superblock(fd: int, where: str) -> tuple[bytearray, int] | None:
    """A version 2 or 3 superblock at offset 0 (what ``libver="latest"``
    writes), checksum checked: ``(raw bytes with the checksum, size of
    offsets)``; None for an older superblock.

    Raises
    ------
    FormatError
        The file is no HDF5 file, or its superblock is corrupt.
    """
    head = os.pread(fd, 12, 0)
    if len(head) < 12 or head[:8] != HDF5_SIGNATURE:
        raise FormatError(f"{where}: not an HDF5 file (no HDF5 signature at offset 0)")
    version, size_of_offsets = head[8], head[9]
    if version not in (2, 3):
        return None
    if size_of_offsets not in (2, 4, 8):
        raise FormatError(f"{where}: corrupt superblock (size of offsets {size_of_offsets})")
    body = 12 + 4 * size_of_offsets
    raw = bytearray(os.pread(fd, body + 4, 0))
    if len(raw) != body + 4:
        raise FormatError(f"{where}: truncated superblock")
    if lookup3(bytes(raw[:body])) != int.from_bytes(raw[body:], "little"):
        raise FormatError(f"{where}: the superblock's checksum does not match (a damaged file)")
    return raw, size_of_offsets


def _field(raw: bytearray, size_of_offsets: int, index: int) -> int:
    """Address ``index`` of a version 2 or 3 superblock (0: base address,
    1: superblock extension, 2: end of file, 3: root object header)."""
    at = 12 + index * size_of_offsets
    return int.from_bytes(raw[at : at + size_of_offsets], "little")


#: Reads of the superblock before its checksum is taken for damage (see below).
_SUPERBLOCK_READS = 3


def check_not_truncated(fd: int, where: str) -> None:
    """Refuse a file shorter than the end-of-file address its superblock records.

    Why. A reader opens a file with a version 2 or 3 superblock in HDF5's
    SWMR read mode, and HDF5 then skips its own check of the file's size:
    on a truncated file (a partial copy or download) it reads metadata past
    the end and retries forever. A whole file is never shorter than that
    address: a writer's flush writes the superblock after what it covers (and
    a live file may be longer: it grows before the next flush records it).
    The superblock is read before the size, so a file growing meanwhile is
    never taken for a truncated one. Older superblocks pass (HDF5 opens their
    files plainly, checking the size itself).

    Raises
    ------
    FormatError
        The file is shorter than recorded, no HDF5 file, or its superblock is
        corrupt.
    """
    for attempt in range(_SUPERBLOCK_READS):
        try:
            found = _superblock(fd, where)
            break
        except FormatError:
            # a live writer's flush rewrites the superblock: a read may catch
            # half of it (HDF5's own SWMR reads retry so too)
            if attempt + 1 == _SUPERBLOCK_READS:
                raise
    if found is None:
        return
    raw, size_of_offsets = found
    recorded = _field(raw, size_of_offsets, 2) + _field(raw, size_of_offsets, 0)
    size = os.fstat(fd).st_size
    if size < recorded:
        raise FormatError(
            f"{where}: truncated HDF5 file: it holds {size} bytes, its superblock "
            f"records {recorded}; copy it again from its source (an interrupted copy "
            "or download, or a full disk, leaves a file so)"
        )


def reserve(fd: int, nbytes: int, where: str) -> None:
    """Allocate the disk blocks of ``nbytes`` past the end of the file, the
    file's size unchanged, before HDF5 writes there.

    Why. A write that fails inside HDF5 (a full disk, a file-size limit, a
    quota) is not always reported, and what follows it is unsafe: HDF5
    writes a cached chunk when its dataset closes, where h5py ignores the
    error (the frames were lost and the commit went on), and a library whose
    write failed halfway may crash the process later. With the blocks
    allocated first (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``), HDF5's
    writes land in them, and a lack of room is this function's error,
    raised before anything is written. The size stays as HDF5 wrote it (a
    writer killed mid-session leaves no room inside the file: the next
    session's :func:`give_back` frees it). A file-size limit
    (``RLIMIT_FSIZE``), which such an allocation does not meet, is checked
    here too. Where ``fallocate`` is missing, the free space is checked.

    Raises
    ------
    OSError
        No room (``ENOSPC``, ``EFBIG`` past the file-size limit, ``EDQUOT``),
        naming the store and the bytes; nothing was allocated.
    """
    if nbytes <= 0:
        return
    size = os.fstat(fd).st_size
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and size + nbytes > limit:
        _no_room(errno.EFBIG, nbytes, where, f"the file-size limit is {limit} bytes")
    allocate = _fallocate()
    err = errno.ENOSYS
    if allocate is not None:
        while True:
            if allocate(fd, _FALLOC_FL_KEEP_SIZE, size, nbytes) == 0:
                return
            err = ctypes.get_errno()
            if err != errno.EINTR:
                break
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            give_back(fd)
            _no_room(err, nbytes, where)
    st = os.fstatvfs(fd)  # no fallocate here: the free space, at least
    if st.f_bavail * st.f_frsize < nbytes:
        _no_room(errno.ENOSPC, nbytes, where)


def give_back(fd: int) -> None:
    """Free the blocks :func:`reserve` allocated past the end of the file (a
    killed writer's too), once HDF5 closed it: the file cut to its own size,
    which frees what lies past it (ext4 keeps such blocks otherwise; a hole
    punched there is not enough). Nothing in the file changes."""
    if _fallocate() is not None:
        os.ftruncate(fd, os.fstat(fd).st_size)


def _no_room(err: int, nbytes: int, where: str, why: str = "") -> None:
    raise OSError(
        err,
        f"{where}: no room for the next {nbytes} bytes of the file "
        f"({why or os.strerror(err)}); nothing of the frames since the last commit "
        "was written, and the committed frames stay",
    )


_FALLOC_FL_KEEP_SIZE = 0x01


@functools.cache
def _fallocate() -> Any:
    """Linux's ``fallocate(2)`` (64-bit offsets) through ctypes; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def file_image(build: Any) -> bytes:
    """The bytes of a new HDF5 file (the latest format, no free-space reuse)
    that ``build(f)`` lays out in an h5py file ``f``, made in memory: the
    caller writes them, so that a full disk is its ``OSError``, never a write
    failing inside HDF5 (see :func:`reserve`)."""
    h5py = import_h5py()
    name = f"snapsink-image-{os.getpid()}-{next(_IMAGES)}.h5"
    with h5py.File(
        name, "w", driver="core", backing_store=False, libver="latest", locking=False,
        fs_strategy="none",
    ) as f:
        if build is not None:
            build(f)
        f.flush()
        return bytes(f.id.get_file_image())


_IMAGES = itertools.count()


def clear_open_flags(fd: int, where: str) -> bool:
    """Clear the "open for writing" flags a killed writer left in the superblock.

    Only for a version 2 or 3 superblock at offset 0 (what ``libver="latest"``
    writes); the end-of-allocation address is raised to the file's size. Call
    it only while holding the session lock (no writer has the file open).

    Returns
    -------
    bool
        Whether the flags were set (a writer died mid-session) and were cleared.

    Raises
    ------
    FormatError
        The file is no HDF5 file, or its superblock is corrupt.
    """
    found = _superblock(fd, where)
    if found is None:
        return False  # older superblocks carry no such flags
    raw, size_of_offsets = found
    if raw[11] == 0:
        return False
    raw[11] = 0
    body = len(raw) - 4
    eoa_at = 12 + 2 * size_of_offsets
    eoa = _field(raw, size_of_offsets, 2)
    size = os.fstat(fd).st_size
    raw[eoa_at : eoa_at + size_of_offsets] = max(eoa, size).to_bytes(size_of_offsets, "little")
    raw[body:] = lookup3(bytes(raw[:body])).to_bytes(4, "little")
    if os.pwrite(fd, bytes(raw), 0) != len(raw):
        raise OSError(errno.EIO, f"{where}: short write of the superblock")
    os.fsync(fd)
    return True


# -- locks -------------------------------------------------------------------------
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]
_OFD = (
    sys.platform == "linux"
    and fcntl is not None
    and hasattr(fcntl, "F_OFD_SETLK")
    and struct.calcsize("P") == 8
)
#: The byte the session lock covers, and the start of the group claims' range:
#: far beyond any real data (HDF5 never reads or writes there).
_SESSION_BYTE = 1 << 62
_GROUP_BASE = _SESSION_BYTE + 1
_GROUP_SPAN = 1 << 56


def _flock_struct(kind: int, start: int, length: int = 1) -> bytes:
    # struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start,
    # off_t l_len (0: to the end), pid_t l_pid (0 for OFD locks), padded to 32 bytes.
    return struct.pack("@hhqqi4x", kind, os.SEEK_SET, start, length, 0)


def _group_byte(group: str) -> int:
    digest = hashlib.blake2b(group.encode("utf-8"), digest_size=8).digest()
    return _GROUP_BASE + int.from_bytes(digest, "little") % _GROUP_SPAN


class FileLocks:
    """The locks of one HDF5 file, on one descriptor of it.

    - :meth:`claim` (a group's single-writer claim, held until :meth:`release`);
    - :meth:`session` (exclusive: the file is open for writing inside it);
    - :meth:`shared` (readers, only while they open the file).

    Parameters
    ----------
    fd
        An open descriptor of the file (read-write for writers).
    where
        How to name the file in messages.
    """

    def __init__(self, fd: int, where: str):
        self.fd = fd
        self.where = where
        self._claimed: str | None = None

    def _lock(self, kind: int, start: int, *, wait: bool) -> bool:
        cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
        try:
            fcntl.fcntl(self.fd, cmd, _flock_struct(kind, start))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def claim(self, group: str) -> None:
        """Claim ``group`` for this writer (``""``: the root group).

        Raises
        ------
        StoreLockedError
            Another writer (in any process, this one included) holds the group.
        """
        if not _OFD:
            warnings.warn(
                f"{self.where}: this platform has no open-file-description locks: "
                "writing without the single-writer lock, so a second writer will not "
                "be refused",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        if not self._lock(fcntl.F_WRLCK, _group_byte(group), wait=False):
            raise StoreLockedError(
                f"{self.where}: another writer is writing group {group or '/'!r} of this "
                "file; a store has one writer: wait for it to finish, stop it, or write "
                "to another group or file",
                store=self.where,
            )
        self._claimed = group

    def hold(self, group: str) -> bool:
        """Take ``group``'s claim besides this writer's own, without waiting
        (``mode="w"`` holds the claims of the runs nested in the group it
        deletes): False when another writer holds it (True where there are no
        OFD locks). Let go with :meth:`unhold`."""
        if not _OFD:
            return True
        return self._lock(fcntl.F_WRLCK, _group_byte(group), wait=False)

    def unhold(self, group: str) -> None:
        """Let go of a claim taken with :meth:`hold` (never this writer's own)."""
        if _OFD and group != self._claimed:
            self._lock(fcntl.F_UNLCK, _group_byte(group), wait=False)

    def others_hold(self) -> bool:
        """Whether another open file description holds any lock of the file:
        a writer's claim or session, a reader opening it (False where there
        are no OFD locks: nobody is known to)."""
        if not _OFD:
            return False
        got = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK, 0, 0))
        return bool(struct.unpack("@hhqqi4x", got)[0] != fcntl.F_UNLCK)

    @contextlib.contextmanager
    def session(self, *, wait: bool = True) -> Iterator[None]:
        """Hold the file's session lock (waits for a session of another writer;
        ``wait=False``: raises :class:`SessionBusy` instead)."""
        if not _OFD:
            yield
            return
        if not self._lock(fcntl.F_WRLCK, _SESSION_BYTE, wait=wait):
            raise SessionBusy(self.where)
        try:
            yield
        finally:
            self._lock(fcntl.F_UNLCK, _SESSION_BYTE, wait=False)

    @contextlib.contextmanager
    def shared(self, *, wait: bool = True) -> Iterator[None]:
        """A reader's lock while it opens the file: never inside a writer's
        non-SWMR session (when the file's structure changes). ``wait=False``:
        raises :class:`SessionBusy` where a writer's session holds the file."""
        if not _OFD:
            yield
            return
        try:
            got = self._lock(fcntl.F_RDLCK, _SESSION_BYTE, wait=wait)
        except OSError:  # a read-only file system, say: read without it
            yield
            return
        if not got:
            raise SessionBusy(self.where)
        try:
            yield
        finally:
            self._lock(fcntl.F_UNLCK, _SESSION_BYTE, wait=False)


class SessionBusy(Exception):
    """A writer's session holds the file's session lock (a lock taken with
    ``wait=False``): wait for it with :func:`wait_for_sessions`, holding no
    other lock, and try again."""


def wait_for_sessions(path: str) -> None:
    """Return once no writer's session holds the file at ``path`` (at that
    moment): the session lock taken shared, waiting, and let go. Call it
    holding no lock a writer's session may wait for (see
    :class:`~snapsink.stores._hdf5read._Handles`)."""
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except OSError:
        return  # gone: the next open says so
    try:
        with FileLocks(fd, path).shared():
            pass
    finally:
        os.close(fd)


def open_store_file(path: str, *, create: bool) -> tuple[int, bool]:
    """A read-write descriptor of the store's file: ``(fd, created)``.

    ``created`` when this call made the (empty) file. Never follows a symbolic
    link.

    Raises
    ------
    ConfigError
        The path is a symbolic link, a directory or not a regular file.
    FileNotFoundError
        No file and ``create`` is false.
    """
    what = "an HDF5 file"
    if create:
        try:
            return open_regular_file(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, what), True
        except FileExistsError:
            pass
    return open_regular_file(path, os.O_RDWR, what), False
