"""The read side of the snapsink HDF5 layout: a lazy Source over a committed group.

Readers trust only the commit record (``snapsink.commit``), take no writer
lock, and open the file in HDF5's SWMR read mode: a file being written, or
left by a killed writer, opens with its committed frames. Every attribute and
shape is checked before anything is allocated: a corrupt or hostile file
raises :class:`~snapsink.FormatError`.

A reader never reads a group that replaced the one it opened (``mode="w"``):
the group's identity is the file's inode (a root replaced with ``mode="w"``
is a new file; the reader's handle keeps the old inode from being reused) and
the group's address in the file (a group replaced in place is a new object),
compared at each refresh and each read. A reader reopened in a Dask worker
(:meth:`HDF5Source.opener`) is given the inode number and the address of the
graph's group, and refuses another.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np

from .._errors import ConfigError, FormatError, SnapsinkError, StoreNotFoundError
from .._schema import Schema
from .._trajectory import Trajectory, check_same_store, read_only, replaced_error
from ._format import StepRanges, parse_step_ranges
from ._h5mdread import H5MDSource
from ._hdf5file import (
    FileLocks,
    SessionBusy,
    check_not_truncated,
    clear_open_flags,
    import_h5py,
    is_hdf5_file,
    wait_for_sessions,
)
from ._hdf5md import is_h5md_file
from ._hdf5plan import (
    ATTRS_ATTR,
    COMMIT,
    DROPPED,
    META_ATTR,
    STATIC_GROUP,
    CommitRecord,
    GroupMeta,
    is_snapsink_attr,
    parse_commit,
    parse_group_meta,
    parse_user_attrs,
)
from ._rows import RowArraysSource
from ._zarrplan import check_group, plan_arrays

__all__ = ["HDF5Source", "is_hdf5_store", "list_hdf5_groups", "open_hdf5"]

T = TypeVar("T")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def open_for_reading(path: str) -> Any:
    """The HDF5 file at ``path``, open read-only: in SWMR mode when the file
    supports it (a file being written or left by a killed writer), else plainly.

    Never waits for a writer's session (it may be a writer thread of this
    process, waiting for the lock of :data:`HANDLES` that the caller holds):
    raises :class:`~snapsink.stores._hdf5file.SessionBusy` instead; the
    caller waits (:func:`~snapsink.stores._hdf5file.wait_for_sessions`)
    outside its locks and tries again.

    A file still marked open for writing by a writer that died (its session
    lock is gone with it) is recovered first, as the next writer would do it
    (:func:`~snapsink.stores._hdf5file.clear_open_flags`, ``h5clear -s``),
    when the file can be opened for writing.

    ``path`` may be a symbolic link to the file (the store's own path, as a
    directory store's may be).

    Raises
    ------
    StoreNotFoundError
        No file.
    FormatError
        Not an HDF5 file, shorter than its superblock records (truncated), or
        HDF5 refuses it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
    except FileNotFoundError:
        raise StoreNotFoundError(f"no HDF5 file at {path!r}") from None
    except OSError as exc:
        raise FormatError(f"{path!r}: cannot be opened as an HDF5 file: {exc}") from exc
    try:
        if not is_hdf5_file(path):
            raise FormatError(f"{path!r} is not an HDF5 file")
        check_not_truncated(fd, repr(path))  # before HDF5 may loop on it
        try:
            return _open_shared(path, fd)
        except _MarkedOpen as marked:
            if not _recover(path):
                raise FormatError(
                    f"{path!r}: a writer died while it wrote the file (it is still marked "
                    "open for writing) and this process cannot write it to recover it; "
                    "reopen its group for writing with mode='a' where you can"
                ) from marked.__cause__
        try:
            return _open_shared(path, fd)
        except _MarkedOpen as marked:  # a writer's session began and died since
            raise FormatError(
                f"{path!r}: HDF5 cannot open it: {marked.__cause__}"
            ) from marked.__cause__
    finally:
        os.close(fd)


class _MarkedOpen(Exception):
    """The file's superblock says a writer has it open (HDF5 refused it)."""


def _open_shared(path: str, fd: int) -> Any:
    h5py = import_h5py()
    swmr = os.pread(fd, 9, 0)[8] >= 2  # superblock v2+: SWMR-capable
    # Not while a writer changes the file's structure (see _hdf5file).
    with FileLocks(fd, path).shared(wait=False):
        try:
            # h5py's default locking, so that plain h5py opens the file in
            # this process too (HDF5 refuses a second open with other flags)
            return h5py.File(path, "r", swmr=swmr)
        except OSError as exc:
            text = str(exc)
            if swmr and "SWMR read access flag not the same" in text:
                # this process already has the file open without SWMR (plain
                # h5py, MDAnalysis): HDF5 shares that open file, so read it so
                return _open_plain(h5py, path, exc)
            if "already open for write" in text or "not already open for SWMR writing" in text:
                raise _MarkedOpen() from exc
            raise FormatError(f"{path!r}: HDF5 cannot open it: {exc}") from exc


def _open_plain(h5py: Any, path: str, cause: OSError) -> Any:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path!r}: HDF5 cannot open it: {cause}") from exc


def _recover(path: str) -> bool:
    """Clear a dead writer's "open for writing" flags under the session lock
    (no live writer is in a session then); False when the file cannot be
    opened for writing (permissions, a read-only file system)."""
    try:
        fd = os.open(path, os.O_RDWR | _CLOEXEC | _NONBLOCK)
    except OSError:
        return False
    try:
        with FileLocks(fd, path).session(wait=False):
            clear_open_flags(fd, repr(path))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class _Handles:
    """The read-only h5py files of this process, one per file (by inode).

    HDF5 shares one open file per process: a second open of a file already
    open returns the same file, with the metadata and chunks it cached. A
    reader that refreshes therefore closes the shared handle and opens the
    file afresh (every reader of the file then reopens it at its next read),
    and a writer in this process closes it before a session (HDF5 refuses to
    open for writing a file open read-only).

    A handle stays open while a reader holds it (``get(..., reader=source)``:
    for as long as the Source lives) or an operation uses it (:meth:`borrowed`),
    and is closed after the last: every file ever read used to stay open until
    the process exited, one descriptor each (an analysis over a few thousand
    trajectories ran out of them; a deleted file kept its disk space).
    """

    def __init__(self) -> None:
        #: handles closed under their readers: a writer of this process began
        #: a session, or a reader asked for a fresh handle (see
        #: HDF5Source._reading). Counted, because a closed handle is not always
        #: seen invalid: HDF5 gives its identifier to the next file opened
        self.closes = 0
        self._files: dict[tuple[int, int], Any] = {}
        #: the live readers holding each file's handle
        self._readers: dict[tuple[int, int], weakref.WeakSet[Any]] = {}
        #: operations using a handle no reader may hold yet (see borrowed)
        self._busy: dict[tuple[int, int], int] = {}
        #: a reader died while the lock was taken: sweep at the next operation
        self._stale = False
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def get(self, path: str, *, fresh: bool = False, reader: object = None) -> Any:
        """The shared handle of ``path``; ``fresh``: a new one; ``reader``: held
        by it from now on, for as long as it lives (called again after a
        reopen, the hold follows the file to its new inode)."""
        return self.get_keyed(path, fresh=fresh, reader=reader)[0]

    def get_keyed(
        self, path: str, *, fresh: bool = False, reader: object = None
    ) -> tuple[Any, tuple[int, int] | None]:
        """:meth:`get`, and the file's ``(st_dev, st_ino)`` (None: unknown)."""
        with self._opened(path, fresh) as (f, key):
            if reader is not None:
                self._hold(reader, key)
            if self._stale:
                self._sweep(keep=key)
            return f, key

    @contextlib.contextmanager
    def _opened(self, path: str, fresh: bool) -> Iterator[tuple[Any, tuple[int, int] | None]]:
        """Under this object's lock, :meth:`_get`'s handle and key; a writer's
        session is waited for with the lock let go (see :meth:`_get`)."""
        while True:
            with self._lock:
                try:
                    got = self._get(path, fresh)
                except SessionBusy:
                    pass
                else:
                    yield got
                    return
            wait_for_sessions(path)  # outside the lock

    def _get(self, path: str, fresh: bool) -> tuple[Any, tuple[int, int] | None]:
        """The handle and the file's key (as the path names it now).

        Why never wait here. A writer of this process (``writer="thread"``)
        takes the file's session lock, then this object's lock to close the
        handle (:meth:`release`). A reader that waited for the session lock
        while holding this object's lock would wait for that writer forever,
        and the writer for it. So the file is opened without waiting
        (:class:`SessionBusy` when a session holds it), and the callers wait
        for the session with this object's lock let go, then try again: the
        locks are always taken in one order, the session lock first.
        """
        key = self._key(path)
        f = self._files.get(key) if key is not None else None
        if f is not None and (fresh or not f.id.valid):
            self._close(key)
            f = None
        if f is None:
            f = open_for_reading(path)
            key = self._key(path)
            if key is not None:
                self._files[key] = f
        return f, key

    @contextlib.contextmanager
    def borrowed(self, path: str, *, fresh: bool = False) -> Iterator[Any]:
        """The shared handle of ``path`` for one operation; closed after it
        unless a reader holds it."""
        with self._opened(path, fresh) as (f, key):
            if key is not None:
                self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield f
        finally:
            with self._lock:
                if key is not None:
                    left = self._busy.pop(key) - 1
                    if left:
                        self._busy[key] = left
                self._sweep()

    def _hold(self, reader: object, key: tuple[int, int] | None) -> None:
        for k, readers in self._readers.items():
            if k != key:
                readers.discard(reader)
        if key is not None:
            readers = self._readers.setdefault(key, weakref.WeakSet())
            if reader not in readers:
                readers.add(reader)
                weakref.finalize(reader, self._reader_gone)

    def _reader_gone(self) -> None:
        # A finalizer: it may run inside an operation of this very thread (a
        # garbage collection while the lock is held). Sweep only when the lock
        # is free, else the next operation sweeps.
        if self._lock.acquire(blocking=False):
            try:
                self._sweep()
            finally:
                self._lock.release()
        else:
            self._stale = True

    def _sweep(self, keep: tuple[int, int] | None = None) -> None:
        """Close every handle (but ``keep``'s) that no live reader holds and no
        operation uses."""
        self._stale = False
        # (iterated, not len(): a finalizer may run before the WeakSet drops the
        # dead reader, and iteration skips dead ones)
        for key in [k for k, r in self._readers.items() if not any(True for _ in r)]:
            del self._readers[key]
        for key in list(self._files):
            if key != keep and key not in self._readers and key not in self._busy:
                self._close(key)

    def _close(self, key: tuple[int, int] | None) -> None:
        f = self._files.pop(key, None) if key is not None else None
        if f is not None and f.id.valid:
            self.closes += 1
            f.close()

    def release(self, path: str) -> None:
        """Close the shared handle of ``path`` (a writer of this process needs
        the file); readers open it again at their next read."""
        with self._lock:
            self.closes += 1  # (a session: a read now may see it begin)
            self._close(self._key(path))


HANDLES = _Handles()


class HDF5Source(RowArraysSource):
    """The committed frames of a snapsink group of an HDF5 file, read lazily.

    Parameters
    ----------
    path
        The HDF5 file.
    group
        The group's path; ``None`` for the root.
    origin
        The group this reader must be (given by :meth:`opener`): the file's
        inode number and the group's address (None: unknown); another group
        there is refused as replaced.

    Raises
    ------
    StoreNotFoundError
        No file, or no such group.
    FormatError
        The group is not a snapsink store, or its metadata or datasets are corrupt.
    """

    ARRAY_KIND = "dataset"

    schema: Schema | None
    length: int

    # Deliberate parallel of ZarrSource.__init__, __repr__ and closed (_zarrread.py):
    # each Source opens its own kind of store and documents its own properties;
    # what the two readers share is in RowArraysSource (_rows.py).
    def __init__(
        self,
        path: str | os.PathLike[str],
        group: str | None = None,
        origin: tuple[int | None, int | None] | None = None,
    ):
        self._path = os.fspath(path)
        self._origin = origin
        self._group = check_group(group) if group not in (None, "", "/") else ""
        self._names: dict[str, str] = {}
        self.schema = None
        self.length = 0
        #: the group opened: the file's (st_dev, st_ino), the group's address
        self._identity: tuple[tuple[int, int] | None, int | None] | None = None
        #: the handle of the last read, and HANDLES.closes when it began
        #: (see _reading)
        self._handle: Any = None
        self._closes = 0
        self._replaced: FormatError | None = None
        self.refresh()

    def __repr__(self) -> str:
        return f"<HDF5Source {self._path!r} group={self._group or '/'!r} frames={self.length}>"

    @property
    def closed(self) -> bool:
        """Whether the writer closed the group cleanly (at the last refresh)."""
        return self._record.closed

    @property
    def groups(self) -> list[str]:
        """The file's groups holding snapsink data (``""``: the root)."""
        return list_hdf5_groups(self._path)

    @property
    def location(self) -> str:
        """The HDF5 file."""
        return self._path

    def _grp(self) -> Any:
        """The group, in the process's shared handle of the file (held by this
        reader: a file replaced since the last refresh is the one it now reads).

        Checks first that the file was not truncated since it was opened: HDF5
        would loop on a read past its end (see :func:`check_not_truncated`).
        """
        f, key = HANDLES.get_keyed(self._path, reader=self)
        self._handle = f
        _check_open_file(f, self._path)
        grp = f[self._group] if self._group else f
        self._same_group(key, grp)
        return grp

    def _reading(self, op: Callable[[], T]) -> T:
        """``op()``, a read through the shared handle, again on a fresh handle
        when the handle was closed under it: a writer thread of this process
        closes the process's read handles as each of its sessions begins
        (HDF5 opens a file once per process), between any two calls of a reader,
        and a read that spans such a session may find the file in any state."""
        for attempt in range(_TRIES):
            self._closes = HANDLES.closes
            try:
                return op()
            except Exception:
                if attempt + 1 < _TRIES and self._disturbed():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _same_group(self, key: tuple[int, int] | None, grp: Any) -> None:
        """Raise if the file or the group is not the one opened (sticky: the
        old file's inode is free once the handle moved to the new file)."""
        if self._replaced is None and self._identity is not None:
            file_key, addr = self._identity
            now = _address(grp)
            if key == file_key and now == addr:
                return
            if not _valid(grp) or HANDLES.closes != self._closes:
                # disturbed by a writer of this process (see _reading):
                # nothing to judge by; read again
                raise _Closed(self._path)
            if self.schema is None and not self.length:
                # Nothing was read of it yet: a new store's file, which its
                # writer makes anew, whole, at its first prepare (see
                # StoreFile.remake). That file is the store.
                self._identity = (key, now)
                return
            why = "the path names another file" if key != file_key else (
                "the group is another HDF5 object"
            )
            where = f"HDF5 group {self._group or '/'!r} in {self._path!r}"
            self._replaced = replaced_error(where, why)
        if self._replaced is not None:
            raise self._replaced

    def _same_origin(self, key: tuple[int, int] | None, grp: Any, where: str) -> None:
        """Raise if the group is not the one the reader was reopened on (see
        :meth:`opener`)."""
        ino, addr = self._origin or (None, None)
        # (the inode number alone: the device number of one NFS export differs
        # between the hosts of a cluster)
        same_file = ino is None or (key is not None and key[1] == ino)
        if same_file and (addr is None or _address(grp) == addr):
            return
        if self._disturbed() or not _valid(grp):
            raise _Closed(self._path)  # nothing to judge by: read again
        why = "the group is another HDF5 object" if same_file else "the path names another file"
        self._replaced = replaced_error(where, why)
        raise self._replaced

    def _dataset(self, name: str) -> Any:
        return self._grp()[name]

    def refresh(self) -> None:
        """Open the file again and re-read the commit record and metadata.

        Raises
        ------
        FormatError
            Not a snapsink group, or HDF5 cannot read the file's structure
            (h5py's own error is the cause).
        StoreNotFoundError
            No such group.
        """
        if self._replaced is not None:
            raise self._replaced
        with structure_errors(self._path):
            for attempt in range(_TRIES):
                self._closes = HANDLES.closes
                # (maybe a new file now). Fresh the first time only: a retry's
                # handle was opened since this refresh began (the one it used
                # was closed), and a fresh one each time would close the
                # handle of another reader's retry, and that one's this one's
                f, key = HANDLES.get_keyed(self._path, fresh=attempt == 0, reader=self)
                self._handle = f
                try:
                    self._refresh(f, key)
                    return
                except Exception:
                    # disturbed by a writer of this process (see _reading):
                    # nothing it found says anything of the file; read it again
                    if attempt + 1 < _TRIES and self._disturbed():
                        continue
                    raise

    def _disturbed(self) -> bool:
        """Whether the read just begun may have been spoiled by a writer of
        this process: its handle closed under it, or a session begun since."""
        return not _valid(self._handle) or HANDLES.closes != self._closes

    def _refresh(self, f: Any, key: tuple[int, int] | None) -> None:
        h5py = import_h5py()
        where = f"HDF5 group {self._group or '/'!r} in {self._path!r}"
        grp = f.get(self._group) if self._group else f
        if grp is None and self._identity is not None and not self._disturbed():
            self._replaced = replaced_error(where, "the group is gone")
            raise self._replaced
        if grp is None:
            found = list_hdf5_groups(self._path)
            names = ", ".join(repr(g or "/") for g in found) or "none"
            raise StoreNotFoundError(
                f"no group {self._group!r} in {self._path!r} (its snapsink groups: {names})"
            )
        if not isinstance(grp, h5py.Group):
            raise FormatError(f"{where}: not a group")
        meta = parse_group_meta(grp.attrs.get(META_ATTR), where)
        user = parse_user_attrs(grp.attrs.get(ATTRS_ATTR), where)
        commit = grp.get(COMMIT)
        if not isinstance(commit, h5py.Dataset):
            raise FormatError(f"{where}: the commit record {COMMIT!r} is missing")
        record = parse_commit(commit[...], where)
        self._same_group(key, grp)
        if self._identity is None and self._origin is not None:
            self._same_origin(key, grp, where)
        if self._identity is not None:
            try:
                before = (self.schema, self._meta.times, self.length)
                check_same_store(where, before, (meta.schema, meta.times, record.count))
            except FormatError as exc:
                if self._disturbed():
                    raise _Closed(self._path) from None
                self._replaced = exc
                raise
        if record.count and (meta.schema is None or meta.times is None):
            raise FormatError(f"{where}: {record.count} frames but no schema or times flag")
        datasets: dict[str, Any] = {}
        if meta.schema is not None:
            for plan in plan_arrays(meta.schema, times=bool(meta.times)):
                ds = grp.get(plan.name)
                if not isinstance(ds, h5py.Dataset):
                    raise FormatError(f"{where}: dataset {plan.name!r} is missing")
                if ds.dtype != plan.dtype or tuple(ds.shape[1:]) != plan.row_shape:
                    raise FormatError(
                        f"{where}: dataset {plan.name!r} has dtype {ds.dtype} and shape "
                        f"{ds.shape}; expected {plan.dtype} rows of shape {plan.row_shape}"
                    )
                need = record.count + 1 if plan.name.endswith(".offsets") else record.count
                if plan.name in meta.schema and meta.schema[plan.name].ragged:
                    need = 0  # checked against the offsets when read
                if ds.shape[0] < need:
                    raise FormatError(
                        f"{where}: dataset {plan.name!r} holds {ds.shape[0]} rows, fewer "
                        f"than the {need} committed"
                    )
                datasets[plan.name] = int(ds.shape[0])
        self._where = where
        self._meta: GroupMeta = meta
        self._user = user
        self._record: CommitRecord = record
        self._datasets = datasets
        self._steps: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._times: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._static: dict[str, np.ndarray[Any, Any]] | None = None
        self._dropped: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._ragged_rows: dict[str, int] = {}
        self.schema = meta.schema
        self.length = record.count
        if self._identity is None:
            addr = _address(grp)
            if addr is None and self._disturbed():
                raise _Closed(self._path)  # closed under this refresh: again
            self._identity = (key, addr)

    def _get(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        return self._reading(lambda: self._read_rows(name, start, stop))

    def _read_rows(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        ds = self._dataset(name)
        if stop > ds.shape[0]:
            raise FormatError(
                f"{self._where}: dataset {name!r} holds {ds.shape[0]} rows; rows up to "
                f"{stop} were asked for (a corrupt count or offsets)"
            )
        try:
            return np.asarray(ds[start:stop])
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise FormatError(
                f"{self._where}: dataset {name!r}, rows [{start}, {stop}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        if not self._meta.times:
            return None
        if self._times is None:
            # cached read-only: every later read shares it (as static, dropped)
            self._times = read_only(np.asarray(self._get("times", 0, self.length), np.float64))
        return self._times

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        if self._static is None:
            self._static = self._reading(self._read_static)
        return self._static

    def _read_static(self) -> dict[str, np.ndarray[Any, Any]]:
        h5py = import_h5py()
        out: dict[str, np.ndarray[Any, Any]] = {}
        sg = self._grp().get(STATIC_GROUP)
        if isinstance(sg, h5py.Group):
            for name in sg:
                ds = sg[name]
                if isinstance(ds, h5py.Dataset):
                    out[name] = read_only(np.asarray(ds[()]))
        return out

    def attrs(self) -> Mapping[str, Any]:
        return self._user

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        if self._dropped is None:
            runs = self._record.runs
            ds = self._reading(lambda: self._grp().get(DROPPED))
            if runs and (ds is None or ds.shape[0] < runs or ds.shape[1:] != (2,)):
                raise FormatError(f"{self._where}: {DROPPED!r} holds fewer than {runs} runs")
            raw = np.asarray(ds[:runs], np.int64).tolist() if runs else []
            parsed = parse_step_ranges(raw, lambda m: FormatError(f"{self._where}: {m}"))
            self._dropped = read_only(StepRanges(parsed).to_array(self._where))
        return self._dropped

    def _holds(self, key: str) -> bool:
        return key in self._datasets

    def _stored_rows(self, key: str) -> int:
        return int(self._datasets[key])

    # -- chunk reads (snapsink._dask.ChunkedSource; the rest in RowArraysSource) --
    def array_chunk(self, key: str) -> int | None:
        """Rows per chunk of dataset ``key`` (None: contiguous)."""
        chunks = self._reading(lambda: self._dataset(key).chunks)
        return int(chunks[0]) if chunks else None

    def opener(self) -> Callable[[], HDF5Source]:
        """Reopens the file by path (in a Dask worker's process), refusing another
        group there as this reader would: in another file, or another object."""
        origin = None
        if self._identity is not None and (self.schema is not None or self.length):
            # (not before: until then its writer's first prepare may make the
            # file anew, and that file is the store; see _same_group)
            key, addr = self._identity
            origin = (key[1] if key is not None else None, addr)
        return functools.partial(HDF5Source, self._path, self._group or None, origin)


#: reads of a handle closed under them, at most (see HDF5Source._reading)
_TRIES = 32


class _Closed(FormatError):
    """The shared handle was closed under a read (see HDF5Source._reading)."""

    def __init__(self, path: str):
        super().__init__(
            f"{path!r}: the file's handle was closed under every read: a writer of this "
            "process (writer='thread') kept starting sessions; read it from another "
            "process, or with writer='process'"
        )


def _valid(obj: Any) -> bool:
    """Whether an h5py object's handle is still open."""
    try:
        return bool(obj.id.valid)
    except Exception:
        return False


def _address(grp: Any) -> int | None:
    """The group's address in its file (None where HDF5 gives none): a group
    deleted and made again is another object, at another address."""
    h5py = import_h5py()
    try:
        addr = h5py.h5o.get_info(grp["/"].id if grp.name == "/" else grp.id).addr
    except (AttributeError, KeyError, OSError, ValueError, RuntimeError):
        return None
    return int(addr) if isinstance(addr, int) else None


def _check_open_file(f: Any, path: str) -> None:
    """:func:`check_not_truncated` on the descriptor of the open file ``f``
    (the file read, even where ``path`` names another one by now); a pread
    and an fstat. Skipped where HDF5's driver has no descriptor to give."""
    try:
        fd = f.id.get_vfd_handle()
    except (OSError, ValueError, TypeError, RuntimeError):
        return
    if isinstance(fd, int):
        check_not_truncated(fd, repr(path))


def is_hdf5_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file (any: :func:`open_hdf5` then says
    whether it holds snapsink groups)."""
    return os.path.isfile(path) and is_hdf5_file(path)


def list_hdf5_groups(path: str | os.PathLike[str]) -> list[str]:
    """Paths of the file's groups that hold snapsink data, sorted (``""``: the root).

    Raises
    ------
    StoreNotFoundError
        No file.
    FormatError
        Not an HDF5 file.
    """
    h5py = import_h5py()
    with structure_errors(os.fspath(path)), HANDLES.borrowed(os.fspath(path), fresh=True) as f:
        found = [""] if is_snapsink_attr(f.attrs.get(META_ATTR)) else []

        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Group) and is_snapsink_attr(node.attrs.get(META_ATTR)):
                found.append(name)

        f.visititems(visit)
    return sorted(found)


@contextlib.contextmanager
def structure_errors(path: str) -> Iterator[None]:
    """h5py's errors reading a file's structure as :class:`FormatError` (the
    cause kept): a reader gets snapsink's error, naming the file, whatever
    HDF5 found torn."""
    try:
        yield
    except (SnapsinkError, FileNotFoundError):
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise FormatError(
            f"{path!r}: HDF5 cannot read the file's structure ({exc}); a writer killed "
            "while it changed the structure of a file other writers held (a group "
            "added) can leave a file so: see 'Crashes' in docs/formats/hdf5.md"
        ) from exc


def _is_h5md(path: str) -> bool:
    with HANDLES.borrowed(path) as f:
        return is_h5md_file(f)


def open_hdf5(path: str | os.PathLike[str], group: str | None = None) -> Trajectory:
    """Open the committed frames of a snapsink group of an HDF5 file, lazily;
    or an H5MD file that another program wrote (no snapsink group in it: see
    :class:`~snapsink.stores._hdf5md.H5MDSource`).

    Parameters
    ----------
    path
        The HDF5 file.
    group
        The group's path (see :func:`list_hdf5_groups`); ``None``: the root, or
        the file's only snapsink group. For an H5MD file of another program:
        its particle group (under ``/particles``), ``None`` for the only one.

    Returns
    -------
    Trajectory

    Raises
    ------
    StoreNotFoundError
        No such file or group (the message lists the groups there are).
    FormatError
        Not a snapsink group, or corrupt.
    ConfigError
        ``group`` is not a valid group path.
    """
    if group is not None and not isinstance(group, str):
        raise ConfigError(f"group: expected a str or None, got {type(group).__name__}")
    try:
        return Trajectory(HDF5Source(path, group))
    except (FormatError, StoreNotFoundError) as exc:
        found = list_hdf5_groups(path)
        if not found and _is_h5md(os.fspath(path)):
            # an H5MD file another program wrote: group= names its particle group
            return Trajectory(H5MDSource(path, None if group in (None, "", "/") else group))
        if group not in (None, "", "/") or isinstance(exc, StoreNotFoundError):
            raise
        if len(found) == 1 and found[0]:
            return Trajectory(HDF5Source(path, found[0]))
        if found and found != [""]:  # (the root alone: there is nothing to pass)
            names = ", ".join(repr(g or "/") for g in found)
            raise FormatError(
                f"{exc}; the file's snapsink groups are {names}: pass group=..."
            ) from exc
        raise
