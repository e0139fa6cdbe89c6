"""The single-writer lock of a store: an OS advisory lock on a file in the store.

A store has one writer. The writer takes an exclusive ``flock`` on
``<directory>/.snapsink.lock`` where it opens the store (in the process that
writes: the writer process, or the sink's own process for ``writer="thread"``)
and holds it until it closes the store. A second writer, in this process or any
other, in any mode, is refused with :class:`~snapsink.StoreLockedError` naming
the holder's pid.

Why ``flock`` and not a pid file: the kernel drops the lock when the holder's
last descriptor closes, which includes the holder's death (SIGKILL, OOM, a
power cut), so a stale lock file never blocks a resume. ``flock`` locks belong
to an open file description, so two writers in one process exclude each other
too (``fcntl`` record locks would not). The descriptor is close-on-exec.

The lock file is never removed: removing it would let a writer that opened the
old file and one that created a new one both "hold" the lock. A writer that
finds the file replaced between its open and its ``flock`` starts again.
Readers take no lock and ignore the file.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import warnings
from typing import Any

from .._errors import ConfigError, StoreLockedError

__all__ = [
    "LOCK_NAME",
    "StoreLock",
    "acquire_dir_lock",
    "acquire_store_lock",
    "open_regular_file",
    "read_lock_holder",
]

#: The lock file's name inside a store directory (a store format owns it).
LOCK_NAME = ".snapsink.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: errors of a file system without (flock) locks: write unlocked, with a warning
_NO_LOCKS = frozenset(
    getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)
)
#: how much of a lock file a refused writer reads to name the holder
_MAX_INFO = 4096


class StoreLock:
    """A held single-writer lock; :meth:`release` (idempotent) lets it go."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def __repr__(self) -> str:
        return f"StoreLock({self.path!r}, held={self.fd >= 0})"

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        """Close the lock file, which releases the lock."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def read_lock_holder(path: str) -> dict[str, Any]:
    """What a lock file says about its holder (``{"pid": ..., "host": ...}``),
    or ``{}`` when it cannot be read. Never blocks, never follows a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.pread(fd, _MAX_INFO, 0)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe_holder(info: dict[str, Any]) -> str:
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return "another writer (pid unknown)"
    host = info.get("host")
    here = socket.gethostname()
    where = f" on host {host!r}" if isinstance(host, str) and host != here else ""
    own = " (this process)" if pid == os.getpid() and not where else ""
    return f"another writer, pid {pid}{where}{own}"


def open_regular_file(path: str, flags: int, expected: str, fix: str = "") -> int:
    """``os.open(path, flags)`` for a regular file: never following a symbolic
    link, never blocking on a FIFO, close-on-exec (the HDF5 store's file and
    a store's lock file).

    Parameters
    ----------
    expected
        What the file should be, for messages ("an HDF5 file").
    fix
        Appended to the message ("remove it").

    Raises
    ------
    ConfigError
        The path is a symbolic link, a directory or not a regular file.
    OSError
        Any other failure of ``os.open`` (``FileNotFoundError``, ``FileExistsError``).
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise ConfigError(
                f"{path!r}: expected {expected} (a regular file); found a directory, a "
                f"symbolic link or a special file{fix}"
            ) from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path!r}: expected {expected} (a regular file){fix}")
    return fd


def acquire_store_lock(directory: str, store: str) -> StoreLock:
    """Take the single-writer lock of the store in ``directory`` (which must exist).

    Parameters
    ----------
    directory
        The store's directory; the lock file is ``directory/.snapsink.lock``.
    store
        How to name the store in an error message.

    Returns
    -------
    StoreLock
        Held until :meth:`StoreLock.release` or the process's death.

    Raises
    ------
    StoreLockedError
        Another writer holds the lock (its pid in the message and in ``.pid``).
    ConfigError
        The lock file is a symbolic link or not a regular file.
    OSError
        The lock file cannot be created (a read-only directory, ...).
    """
    path = os.path.join(directory, LOCK_NAME)
    if fcntl is None:  # pragma: no cover - not POSIX
        raise ConfigError("the single-writer lock needs fcntl.flock (POSIX)")
    while True:
        fd = open_regular_file(path, os.O_RDWR | os.O_CREAT, "the store's lock file", ": remove it")
        try:
            st = os.fstat(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _locked(store, path) from None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                warnings.warn(
                    f"{store}: the file system refuses locks ({exc.strerror}): writing without "
                    "the single-writer lock, so a second writer will not be refused",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return StoreLock(fd, path)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # the file was replaced after our open: lock the new one
                continue
            info_bytes = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info_bytes + b"\n", 0)
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
        return StoreLock(fd, path)


def _locked(store: str, path: str) -> StoreLockedError:
    """The refusal of a second writer, naming the holder the lock file names."""
    info = read_lock_holder(path)
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    return StoreLockedError(
        f"{store}: {_describe_holder(info)} is writing this store (it holds "
        f"{path}); a store has one writer: wait for it to finish, stop it, or "
        "write to another store",
        store=store,
        pid=pid,
    )


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid holding an flock on the inode of ``st``, from ``/proc/locks``
    (Linux); None when unknown."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev:
                    return int(parts[4])
    except (OSError, ValueError):
        return None
    return None


def acquire_dir_lock(directory: str, store: str, *, warn: bool = True) -> StoreLock:
    """Take the single-writer lock of a store by locking its directory itself.

    For formats whose readers reject unknown files in the store (zarr lists a
    group's directory and warns about anything that is not a node): no lock
    file is created. The holder's pid comes from ``/proc/locks`` where there
    is one. A file system without directory locks (NFS) writes unlocked, with
    a ``RuntimeWarning`` (``warn=False``: silently, for a lock taken only to
    see that nobody holds a directory).

    Raises
    ------
    StoreLockedError
        Another writer holds the directory.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        raise ConfigError("the single-writer lock needs fcntl.flock (POSIX)")
    # the store's own path may be a symbolic link to its directory: followed
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _flock_holder(os.fstat(fd))
            who = f"another writer, pid {pid}" if pid is not None else "another writer"
            if pid == os.getpid():
                who += " (this process)"
            raise StoreLockedError(
                f"{store}: {who} is writing this store (it holds a lock on {directory}); "
                "a store has one writer: wait for it to finish, stop it, or write to "
                "another store",
                store=store,
                pid=pid,
            ) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS and exc.errno != errno.EBADF:
                raise
            if warn:
                warnings.warn(
                    f"{store}: the file system refuses directory locks ({exc.strerror}): "
                    "writing without the single-writer lock, so a second writer will not "
                    "be refused",
                    RuntimeWarning,
                    stacklevel=3,
                )
    except BaseException:
        os.close(fd)
        raise
    return StoreLock(fd, directory)
