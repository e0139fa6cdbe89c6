"""One HDF5Store's hold on its file: the descriptor, the group's claim, and
the file opened for writing in sessions under the session lock.

The rules (why sessions, why SWMR, why the superblock patch, why OFD locks)
are :mod:`._hdf5file`'s; this module applies them for one writer of one
group. Split from ``hdf5.py`` so that the store holds its life cycle (modes,
buffering, commits) and this the file handling every session repeats: the
file must still be the one the store opened, a killed writer's flags are
cleared, a reader of this process lets go of the file first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import FormatError
from ._hdf5file import (
    FileLocks,
    clear_open_flags,
    file_image,
    fsync_fd,
    give_back,
    import_h5py,
    open_store_file,
    reserve,
)
from ._hdf5plan import META_ATTR, is_snapsink_attr
from ._hdf5read import HANDLES
from ._lock import open_regular_file
from ._npyfile import fsync_dir

__all__ = ["METADATA_ROOM", "FileReplaced", "StoreFile"]

#: Room allocated for a session's metadata (object headers, chunk-index
#: blocks, the commit record) before HDF5 writes it (see
#: :func:`._hdf5file.reserve`). A session's metadata measured a few KiB (2.7
#: KiB at the 99th percentile of 1,500 commits); a chunk index grows in
#: blocks that double, and this covers one of 16k chunk addresses
METADATA_ROOM = 256 << 10


class StoreFile:
    """The file of one store, held through one read-write descriptor.

    Parameters
    ----------
    path
        The HDF5 file (created, empty, when missing).
    group
        The store's group (``""``: the root).
    owner
        The store: the descriptor is closed when it is collected.
    where
        How to name the store in messages.
    """

    def __init__(self, path: str, group: str, owner: object, where: str):
        fd, self.created = open_store_file(path, create=True)
        self.path = path
        self.group = group
        self.where = where
        self.fd = fd
        self.locks = FileLocks(fd, where)
        st = os.fstat(fd)
        self._ino = (st.st_dev, st.st_ino)
        #: every descriptor this store opened (a remade file's old one stays
        #: open until the release: its session lock is released on it)
        self._fds = [fd]
        self._finalizer = weakref.finalize(owner, _close_all, self._fds)
        #: the file is the one :meth:`remake` made for this store, nothing committed
        self.fresh = False

    def release(self) -> None:
        """Close the descriptors (idempotent): the group claim goes with them."""
        self._finalizer()

    def remake(
        self, build: Callable[[Any], None], *, copy: bool = False, room: int = METADATA_ROOM
    ) -> None:
        """Replace the file, atomically, by one that ``build(f)`` lays out in
        an h5py file ``f`` (with ``copy``: a copy of the file as it is).

        Why: HDF5 writes a file's structure (superblock, object headers) in no
        crash-safe order outside SWMR mode, and a writer killed while it made
        a new file, or a new store's datasets, left a file HDF5 cannot open:
        the path was then unusable (``mode="a"`` could not resume, and nothing
        was committed to keep). Built at a temporary name beside the file,
        fsynced, and renamed over it, the path names the old file or the whole
        new one at every moment; a temporary file a kill leaves is
        ``.<name>.<hex>.partial``, which no reader opens.

        Called under the session lock with the group claimed, as the
        session's last step: the claim moves to the new file before the
        rename; the session lock stays on the old one, and ends with the
        session.

        A new file is built in memory (:func:`._hdf5file.file_image`) and
        written here; a copy gets ``room`` bytes allocated before HDF5 writes
        it (:func:`._hdf5file.reserve`): a full disk is an ``OSError`` raised
        here, never a write failing inside HDF5.
        """
        self._check_unchanged()
        directory, name = os.path.split(os.path.abspath(self.path))
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.partial")
        fd = -1
        try:
            if copy:
                HANDLES.release(self.path)
                shutil.copyfile(self.path, tmp, follow_symlinks=False)
                fd = open_regular_file(tmp, os.O_RDWR, "an HDF5 file")
                reserve(fd, room, self.where)
                h5py = import_h5py()
                with h5py.File(tmp, "r+", libver="latest", locking=False) as f:
                    build(f)
                give_back(fd)
            else:
                # the latest format (SWMR), no free-space reuse (a chunk freed
                # mid-session is never overwritten before a commit names its
                # replacement)
                image = file_image(build)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666)
                _write_all(fd, image)
            fsync_fd(fd)
            locks = FileLocks(fd, self.where)
            locks.claim(self.group)  # a new file: nobody else can hold it
            os.rename(tmp, self.path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fds.append(fd)
        self.fd, self.locks = fd, locks
        st = os.fstat(fd)
        self._ino = (st.st_dev, st.st_ino)
        fsync_dir(directory)  # the rename is durable
        self.fresh = True

    def remove_leftovers(self) -> None:
        """Remove the temporary files of :meth:`remake` that a killed writer of
        this path left (``.<name>.<32 hex digits>.partial``; called under the
        session lock, so none is being made)."""
        directory, name = os.path.split(os.path.abspath(self.path))
        pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}\.partial")
        with os.scandir(directory) as entries:
            for entry in entries:
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def new_file(self) -> None:
        """Create (or truncate) the file in place: the latest format (SWMR), no
        free-space reuse (a chunk freed mid-session is never overwritten
        before a commit names its replacement), written from an image made in
        memory (a full disk is an ``OSError`` here). Not crash safe (see
        :meth:`remake`): only where others hold the file."""
        image = file_image(None)
        self._check_unchanged()
        HANDLES.release(self.path)
        os.ftruncate(self.fd, 0)
        _write_all(self.fd, image)
        fsync_fd(self.fd)

    def shared_with_others(self) -> bool:
        """Whether another writer or reader holds a lock on the file (so that
        :meth:`remake` would pull it from under them)."""
        return self.locks.others_hold()

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def group_of(self, f: Any) -> Any:
        """The store's group in the open file ``f``."""
        return f[self.group] if self.group else f

    @contextlib.contextmanager
    def file(self, *, swmr: bool, locked: bool = False, room: int = METADATA_ROOM) -> Iterator[Any]:
        """A session: the file open for writing under the session lock (taken
        here unless ``locked``), closed at the end. ``room`` bytes are
        allocated first (:meth:`reserve`: what the session writes, at most),
        and what HDF5 left unused is freed at the end. A non-SWMR session
        (which may create objects) is flushed and fsynced before the lock goes.

        Raises
        ------
        OSError
            No room for ``room`` bytes: before the file is opened.
        """
        with contextlib.ExitStack() as stack:
            if not locked:
                stack.enter_context(self.locks.session())
            self._check_unchanged()
            clear_open_flags(self.fd, self.where)  # a writer of the file was killed
            self.reserve(room)
            f = self._open_file(swmr=swmr)
            try:
                yield f
                f.flush()
            finally:
                f.close()
            give_back(self.fd)
            if not swmr:
                fsync_fd(self.fd)

    def reserve(self, nbytes: int) -> None:
        """Allocate ``nbytes`` past the end of the file (see
        :func:`._hdf5file.reserve`); in a session, before HDF5 writes them.

        Raises
        ------
        OSError
            No room (``ENOSPC``, ``EFBIG``, ``EDQUOT``); nothing was written.
        """
        reserve(self.fd, nbytes, self.where)

    def _open_file(self, *, swmr: bool) -> Any:
        """The file, open for writing: in SWMR mode, or not (to create objects)."""
        h5py = import_h5py()
        HANDLES.release(self.path)  # a reader of this process holds it read-only
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
        fapl.set_file_locking(False, True)  # our own locks (see _hdf5file)
        flags = h5py.h5f.ACC_RDWR | (h5py.h5f.ACC_SWMR_WRITE if swmr else 0)
        fid = h5py.h5f.open(os.fsencode(self.path), flags, fapl=fapl)
        return h5py.File(fid)

    def names_its_file(self) -> bool:
        """Whether the path still names the file this store opened."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._ino

    def _check_unchanged(self) -> None:
        """Fail unless the path still names the file this store opened."""
        if not self.names_its_file():
            raise FileReplaced(
                f"{self.where}: the file was deleted or replaced while the store was writing "
                "it; refusing to commit frames that are not there"
            )

    def root_is_ours(self, h5py: Any) -> bool:
        """Whether the file's root group is a snapsink store (a file of an old
        format, which h5py opens read-only only)."""
        HANDLES.release(self.path)
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                return is_snapsink_attr(f.attrs.get(META_ATTR))
        except OSError:
            return False


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


class FileReplaced(FormatError):
    """The path no longer names the file the store opened (checked before
    every write of the file)."""


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` at the start of ``fd`` (raises ``OSError``; a short write
    goes on where it stopped)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], done)
