"""HDF5Store: frames into a group of an HDF5 file, through h5py.

Layout (the full specification is ``docs/formats/hdf5.md``)::

    run.h5
      /<group>                  attrs: snapsink (format, version, schema, times),
                                       attrs (the user's, JSON)
        snapsink.commit         int64 [count, dropped runs, closed]: written last
        snapsink.dropped        int64 (runs, 2): dropped-step [start, stop) runs
        steps                   int64 (frames,)
        times                   float64 (frames,)      (when frames carry times)
        <field>                 (frames, *shape)       fixed field
        <field>                 (rows, *row_shape)     ragged field: every frame's rows
        <field>.offsets         int64 (frames + 1,)    ragged field: row offsets
        static/<name>           arrays written once

Every frame-indexed dataset is chunked along frames and growable; rows are
buffered and written in whole chunks. The file is written in short sessions
under a lock, in HDF5's SWMR mode when nothing is created (see
:mod:`._hdf5file`): so several stores may write different groups of one
file, a reader opens it at any time, and a SIGKILL leaves it readable.
Readers trust only the commit record.

``layout="h5md"`` adds an H5MD 1.1 tree (``/h5md``, ``/particles``,
``/observables``) whose datasets are hard links to the group's (see
:mod:`._hdf5md`): the same commit-last machinery serves both layouts.

h5py is imported when a store opens (``import snapsink`` never imports it).
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import commit_seconds as check_commit_seconds
from .._errors import (
    ConfigError,
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreStateError,
)
from .._schema import Batch, Frame, Schema
from .._store import Resume, StoreSpec
from ._common import check_attrs, check_mode, check_same_layout, check_static
from ._format import StepRanges, parse_step_ranges
from ._hdf5file import (
    HDF5_SIGNATURE,
    FileLocks,
    clear_open_flags,
    fsync_fd,
    import_h5py,
    open_store_file,
)
from ._hdf5md import (
    H5MD_ROOTS,
    H5MDMapping,
    check_h5md,
    check_h5md_schema,
    write_h5md_tree,
)
from ._hdf5plan import (
    ATTRS_ATTR,
    COMMIT,
    DROPPED,
    DROPPED_CHUNK,
    META_ATTR,
    STATIC_GROUP,
    CommitRecord,
    GroupMeta,
    check_compression,
    check_hdf5_dtype,
    check_hdf5_dtypes,
    is_snapsink_attr,
    maxshape,
    parse_commit,
    parse_group_meta,
    parse_user_attrs,
)
from ._hdf5read import HANDLES, HDF5Source, is_hdf5_store, list_hdf5_groups, open_hdf5
from ._npyfile import check_path
from ._zarrplan import ArrayPlan, RowBuffer, check_group, check_rows, plan_arrays

__all__ = ["HDF5Source", "HDF5Store", "is_hdf5_store", "list_hdf5_groups", "open_hdf5"]

LAYOUTS = ("snapsink", "h5md")
#: the snapsink group of an H5MD file when ``group`` is None
H5MD_GROUP = "snapsink"
#: full chunks buffered before a session writes them (besides commits): bounds
#: the store's memory and keeps sessions short for other writers of the file
_SESSION_BYTES = 64 << 20


@dataclass(slots=True)
class _Column:
    """One growing dataset: its plan, the buffer of its last chunk, and how
    far the dataset on disk extends."""

    plan: ArrayPlan
    buf: RowBuffer
    extent: int  # rows the dataset holds on disk (may exceed the committed ones)
    direct: bool  # whole chunks go straight to the file (no filter)


class HDF5Store:
    """A store writing frames into a group of an HDF5 file (h5py).

    Crash safe (commit-last record, SWMR sessions), resumable (``mode="a"``),
    readable while written (:func:`snapsink.open`, or h5py with ``swmr=True``),
    and shareable: stores on different groups of one file may write at once,
    from different processes (say, the routes of a :class:`~snapsink.Recorder`).

    Parameters
    ----------
    path
        The HDF5 file (created with its parent directories when missing).
    mode
        ``"x"``: create; fail if the group (for the root: a non-empty file)
        exists. ``"w"``: replace the group (for the root: the whole file, if it
        is a snapsink store). ``"a"``: append after the group's committed
        frames (created when missing).
    group
        Path of the group in the file (``"traj"``, ``"run1/thermo"``); ``None``
        for the root group (with ``layout="h5md"``: the group ``"snapsink"``).
    layout
        ``"snapsink"``: the layout of ``docs/formats/hdf5.md``. ``"h5md"``: the
        same group plus an H5MD 1.1 tree of links to its datasets (MDAnalysis
        and other H5MD readers read the file); needs ``h5md``.
    chunk_frames
        Frames per chunk of every frame-indexed dataset; ``None`` picks about
        8 MiB per chunk, per dataset (as ZarrStore does).
    compression
        ``None`` (default, fastest), ``"gzip"``, ``("gzip", level)``, ``"lzf"``,
        or an hdf5plugin filter (``hdf5plugin.Zstd()``, ``hdf5plugin.Blosc()``;
        readers need hdf5plugin too). Encoding runs in the writer, never in the
        producer.
    attrs
        JSON-serializable metadata (the group's ``attrs`` attribute, JSON text).
        With ``"a"`` they update the stored attrs.
    static
        ``{name: array}`` written once to ``static/<name>``. With ``"a"`` a name
        already stored must hold an equal array.
    commit_every, commit_seconds
        ``append`` commits once this many frames, or this many seconds, have
        passed since the last commit; ``commit_seconds=None``: on frame count
        (and ``commit()``) only.
    h5md
        With ``layout="h5md"``: which fields are which H5MD elements, e.g.
        ``{"position": "positions", "velocity": "velocities", "force":
        "forces", "box": "cell", "observables": ["potential_energy"]}``; also
        ``"boundary"`` (``"periodic"``, ``"none"`` or one per dimension),
        ``"particles"`` (the particle group, ``"all"``) and ``"author"``. The
        box may name a static array (fixed edges). Never guessed from names.
    units
        With ``layout="h5md"``: ``{field or "time": unit}``, written as the
        datasets' ``unit`` attributes (e.g. ``{"positions": "nm", "time": "ps"}``).

    Raises
    ------
    ConfigError
        For a bad path, mode, group, layout, chunking, compression, attrs,
        static array, commit setting, H5MD mapping or units.
    DTypeError
        A static array of a dtype the store does not hold (float128, complex256).

    Notes
    -----
    One writer per group: ``open()`` claims the group with an OS lock that a
    second writer, in any process and any mode, is refused with
    (:class:`~snapsink.StoreLockedError`); it dies with its holder. Writers of
    different groups take turns on the file, one short session at a time.
    ``mode="w"`` and ``"a"`` ignore nothing: ``"a"`` keeps the existing
    datasets' chunking and compression. HDF5 never gives space back: a
    replaced group's space stays in the file (``h5repack`` reclaims it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "x",
        *,
        group: str | None = None,
        layout: str = "snapsink",
        chunk_frames: int | None = None,
        compression: Any = None,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
        commit_every: int = 1024,
        commit_seconds: float | None = 5.0,
        h5md: Mapping[str, Any] | None = None,
        units: Mapping[str, str] | None = None,
    ):
        self._path = check_path(path)
        self._mode = check_mode(mode)
        if layout not in LAYOUTS:
            raise ConfigError(
                f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}"
            )
        self._layout = layout
        self._h5md: H5MDMapping | None = None
        self._h5md_args: tuple[dict[str, Any], dict[str, str]] | None = None
        if layout == "h5md":
            if h5md is None:
                raise ConfigError(
                    "layout='h5md' needs h5md={...}: which fields are the particle "
                    "elements, e.g. h5md={'position': 'positions', 'box': 'cell'}"
                )
            self._h5md = check_h5md(h5md, units)
            self._h5md_args = (dict(h5md), dict(units or {}))
            if group is None:
                group = H5MD_GROUP
        elif h5md is not None or units is not None:
            raise ConfigError(
                "h5md and units: only with layout='h5md' (the snapsink layout records "
                f"no H5MD mapping), got layout={layout!r}"
            )
        self._group = check_group(group) if group not in ("", "/") else ""
        self._chunk_frames = check_rows(chunk_frames, "chunk_frames")
        self._compression = check_compression(compression)
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        for name, value in self._static.items():
            check_hdf5_dtype(value.dtype, f"static {name!r}")
        self._commit_every = check_rows(commit_every, "commit_every") or 1024
        self._commit_seconds = check_commit_seconds(commit_seconds)

        self._state = "new"  # new -> open -> closed; "failed" after a failed write
        self._meta = GroupMeta()
        self._columns: dict[str, _Column] = {}
        self._pending: list[tuple[str, int, np.ndarray[Any, Any]]] = []
        self._pending_bytes = 0
        self._count = 0  # frames appended
        self._committed = 0  # frames named by the commit record
        self._dropped = StepRanges()
        self._dropped_dirty = False
        self._last_commit = time.monotonic()
        self._fd = -1
        self._locks: FileLocks | None = None
        self._ino: tuple[int, int] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"<HDF5Store {self._path!r} group={self._group or '/'!r} mode={self._mode!r}>"

    @property
    def path(self) -> str:
        """The HDF5 file."""
        return self._path

    @property
    def group(self) -> str:
        """The group's path in the file (``""``: the root)."""
        return self._group

    def describe(self) -> StoreSpec | None:
        """How a writer process builds this store again (see :class:`~snapsink.Sink`).

        Returns
        -------
        StoreSpec or None
            The store's class and arguments, the path made absolute; None for a
            subclass with an ``__init__`` of its own (it must describe itself).
        """
        if type(self).__init__ is not HDF5Store.__init__:
            return None
        return StoreSpec(
            type(self),
            (os.path.abspath(self._path), self._mode),
            {
                "group": self._group or None,
                "layout": self._layout,
                "chunk_frames": self._chunk_frames,
                "compression": self._compression,
                "attrs": self._attrs,
                "static": self._static,
                "commit_every": self._commit_every,
                "commit_seconds": self._commit_seconds,
                "h5md": self._h5md_args[0] if self._h5md_args else None,
                "units": self._h5md_args[1] if self._h5md_args else None,
            },
        )

    def check_schema(self, schema: Schema) -> None:
        """Refuse, before anything is written, a schema this store cannot hold.

        Raises
        ------
        DTypeError
            A field of dtype float128 or complex256.
        SchemaError
            With ``layout="h5md"``: a field the mapping names is missing, ragged
            or of a shape H5MD does not allow.
        """
        check_hdf5_dtypes(schema, repr(self))
        if self._h5md is not None:
            check_h5md_schema(self._h5md, schema, self._static, repr(self))

    # -- Store protocol -------------------------------------------------------------
    def open(self) -> Resume | None:
        """Claim the group (honouring the mode), write attrs and static arrays.

        Returns
        -------
        Resume or None
            What is stored, for ``mode="a"`` on an existing group with a schema.

        Raises
        ------
        StoreLockedError
            Another writer holds the group.
        StoreExistsError
            ``"x"`` on an existing group (the root: a non-empty file); ``"x"``
            or ``"w"`` on a file that is no HDF5 file, or on a group holding
            objects that are no snapsink store.
        FormatError
            ``"a"`` on a file or group that is not a snapsink store, or corrupt.
        ConfigError
            A static array differs from the stored one.
        StoreStateError
            ``open()`` called twice.
        """
        if self._state != "new":
            raise StoreStateError(f"{self!r}: open() was already called")
        h5py = import_h5py()
        parent = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(parent, exist_ok=True)
        fd, created = open_store_file(self._path, create=True)
        self._fd = fd
        self._locks = FileLocks(fd, repr(self))
        st = os.fstat(fd)
        self._ino = (st.st_dev, st.st_ino)
        self._finalizer = weakref.finalize(self, os.close, fd)
        try:
            self._locks.claim(self._group)
            with self._locks.session():
                resume = self._claim(h5py)
        except BaseException:
            if created and os.fstat(fd).st_size == 0:
                # nothing of ours was ever in it: leave no empty file behind
                try:
                    os.unlink(self._path)
                except OSError:
                    pass
            self._release()
            raise
        self._state = "open"
        return resume

    def prepare(self, schema: Schema, *, times: bool) -> None:
        """Create the datasets of ``schema`` (or check it against the stored one).

        Raises
        ------
        DTypeError
            A field's dtype is not held (nothing is written).
        SchemaError
            The group holds frames of another schema, or disagrees on times.
        """
        self._check_usable("prepare")
        if not isinstance(schema, Schema):
            raise ConfigError(f"prepare: expected a Schema, got {type(schema).__name__}")
        self.check_schema(schema)
        times = bool(times)
        meta = self._meta
        if meta.schema is not None:
            check_same_layout(repr(self), meta.schema, meta.times, self._count, schema, times)
            if meta.times == times and self._columns and self._h5md is None:
                return
        try:
            with self._file(swmr=False) as f:
                grp = self._group_of(f)
                if meta.schema is None or not self._columns:
                    self._create_datasets(grp, schema, times)
                elif times and "times" not in self._columns:
                    self._create_datasets(grp, schema, times, only="times")
                meta.schema, meta.times = schema, times
                grp.attrs[META_ATTR] = meta.to_text()
                if self._h5md is not None:
                    self._write_h5md(f, grp, schema, times)
        except BaseException:
            self._state = "failed"
            raise

    def append(self, batch: Batch) -> None:
        """Buffer ``batch``; write full chunks in a session when enough are
        buffered; commit when due.

        Raises
        ------
        SchemaError
            A frame whose shapes or time disagree with the store (nothing of the
            batch is kept: the store stays usable).
        """
        self._check_usable("append")
        frames = batch.frames
        if frames:
            schema = self._meta.schema
            if schema is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            pushes = self._plan_rows(schema, frames)  # checks everything first
            for name, rows in pushes:
                col = self._columns[name]
                # arrays built here are the store's own; a fixed field's frames
                # are copied once, into the chunk buffer or a stack of chunks
                blocks = (
                    col.buf.push(rows, owned=True)
                    if isinstance(rows, np.ndarray)
                    else col.buf.push_frames(rows)
                )
                for start, block, _ in blocks:
                    self._pending.append((name, start, block))
                    self._pending_bytes += block.nbytes
            self._count += len(frames)
        if batch.dropped_steps:
            self._dropped.add_all(batch.dropped_steps)
            self._dropped_dirty = True
        pending = self._count - self._committed
        if pending >= self._commit_every or (
            self._commit_seconds is not None
            and (pending or self._dropped_dirty)
            and time.monotonic() - self._last_commit >= self._commit_seconds
        ):
            self.commit()
        elif self._pending_bytes >= _SESSION_BYTES:
            self._session(commit=False)

    def commit(self) -> None:
        """Write what is buffered, make it durable, then the commit record
        (flush and fsync the data, then the record, then flush and fsync)."""
        self._check_usable("commit")
        if self._committed == self._count and not self._dropped_dirty and not self._pending:
            return
        self._session(commit=True)

    def close(self) -> None:
        """Commit, trim the datasets to the committed frames, mark the group
        closed. Idempotent; after a failure nothing more is written."""
        if self._state == "closed":
            return
        try:
            if self._state == "open":
                self._session(commit=True, closed=True)
        finally:
            self._state = "closed"
            self._release()

    # -- sessions -------------------------------------------------------------------
    def _open_file(self, *, swmr: bool) -> Any:
        """The file, open for writing: in SWMR mode, or not (to create objects)."""
        h5py = import_h5py()
        HANDLES.release(self._path)  # a reader of this process holds it read-only
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
        fapl.set_file_locking(False, True)  # our own locks (see _hdf5file)
        flags = h5py.h5f.ACC_RDWR | (h5py.h5f.ACC_SWMR_WRITE if swmr else 0)
        fid = h5py.h5f.open(os.fsencode(self._path), flags, fapl=fapl)
        return h5py.File(fid)

    def _check_unchanged(self) -> None:
        """Fail unless the path still names the file this store opened."""
        try:
            st = os.stat(self._path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ino:
            raise FormatError(
                f"{self!r}: the file was deleted or replaced while the store was writing "
                "it; refusing to commit frames that are not there"
            )

    def _group_of(self, f: Any) -> Any:
        return f[self._group] if self._group else f

    @contextlib.contextmanager
    def _file(self, *, swmr: bool, locked: bool = False) -> Iterator[Any]:
        """A session: the file open for writing under the session lock (taken
        here unless ``locked``), closed at the end. A non-SWMR session (which
        may create objects) is flushed and fsynced before the lock goes."""
        assert self._locks is not None
        with contextlib.ExitStack() as stack:
            if not locked:
                stack.enter_context(self._locks.session())
            self._check_unchanged()
            clear_open_flags(self._fd, repr(self))  # a writer of the file was killed
            f = self._open_file(swmr=swmr)
            try:
                yield f
                f.flush()
            finally:
                f.close()
            if not swmr:
                fsync_fd(self._fd)

    def _session(self, *, commit: bool, closed: bool = False) -> None:
        """Write the buffered chunks in a SWMR session; with ``commit``, also the
        partly filled chunks, then (durably) the commit record."""
        try:
            with self._file(swmr=True) as f:
                grp = self._group_of(f)
                self._write_rows(grp, commit=commit)
                if commit:
                    f.flush()
                    fsync_fd(self._fd)
                    if closed:  # a resumed group may hold rows past the commit
                        for name, col in self._columns.items():
                            if col.extent != col.buf.length:
                                grp[name].resize(col.buf.length, axis=0)
                                col.extent = col.buf.length
                    self._write_record(grp, closed=closed)
                    f.flush()
                    fsync_fd(self._fd)
        except BaseException:
            # Datasets may now disagree; the last commit stays the truth.
            self._state = "failed"
            raise
        if commit:
            self._committed = self._count
            self._dropped_dirty = False
            self._last_commit = time.monotonic()

    def _write_rows(self, grp: Any, *, commit: bool) -> None:
        parts: list[tuple[str, int, np.ndarray[Any, Any]]] = []
        if commit:
            for name, col in self._columns.items():
                part = col.buf.partial()
                if part is not None:
                    parts.append((name, *part))
        ends: dict[str, int] = {}
        for name, start, rows in (*self._pending, *parts):
            ends[name] = max(ends.get(name, 0), start + len(rows))
        datasets = {name: grp[name] for name in ends}
        for name, end in ends.items():
            col = self._columns[name]
            if end > col.extent:
                datasets[name].resize(end, axis=0)
                col.extent = end
        for name, start, rows in self._pending:
            col = self._columns[name]
            ds = datasets[name]
            chunk = col.plan.chunk
            if not rows.size:
                continue  # rows of no bytes (a dimension of size 0): nothing to write
            if col.direct:
                rest = (0,) * (rows.ndim - 1)
                for k in range(0, len(rows), chunk):
                    block = np.ascontiguousarray(rows[k : k + chunk])
                    ds.id.write_direct_chunk((start + k, *rest), block)
            else:
                ds[start : start + len(rows)] = rows
        for name, start, rows in parts:
            if rows.size:
                datasets[name][start : start + len(rows)] = rows
        self._pending.clear()
        self._pending_bytes = 0
        for name, _, _ in parts:
            self._columns[name].buf.mark_written()

    def _write_record(self, grp: Any, *, closed: bool) -> None:
        runs = self._dropped.to_json()
        if self._dropped_dirty or closed:
            ds = grp[DROPPED]
            if ds.shape[0] < len(runs):
                ds.resize(len(runs), axis=0)
            if runs:
                ds[: len(runs)] = np.asarray(runs, np.int64)
        record = CommitRecord(self._count, len(runs), closed)
        grp[COMMIT][...] = record.to_array()

    # -- opening --------------------------------------------------------------------
    def _claim(self, h5py: Any) -> Resume | None:
        """Under the session lock: decide by mode and what the file holds."""
        fd = self._fd
        where = repr(self)
        if os.fstat(fd).st_size == 0:
            self._new_file(h5py)
            self._create_group()
            return None
        if os.pread(fd, 8, 0) != HDF5_SIGNATURE:
            if self._mode == "a":
                raise FormatError(f"{where}: the file exists and is not an HDF5 file")
            raise StoreExistsError(
                f"{where}: the file exists and is not an HDF5 file; refusing to overwrite "
                "it: remove it or choose another path"
            )
        if os.pread(fd, 9, 0)[8] < 2:
            # superblock 0/1: written without SWMR support (by another program)
            if self._mode == "w" and not self._group and self._root_is_ours(h5py):
                self._new_file(h5py)
                self._create_group()
                return None
            raise (FormatError if self._mode == "a" else StoreExistsError)(
                f"{where}: the file was written by another HDF5 program in a format "
                "without SWMR support (superblock version < 2); snapsink writes groups "
                "only into files it created: choose another file"
            )
        clear_open_flags(fd, where)
        kind = self._inspect(h5py)
        if self._h5md is not None:
            self._claim_h5md(kind)
        if kind == "missing":
            self._create_group()
            return None
        if kind == "empty" and self._mode != "w":
            self._create_group(adopt=True)
            return None
        if self._mode == "x":
            raise StoreExistsError(
                f"{where}: the group already exists; pass mode='w' to replace it or "
                "mode='a' to append to it"
            )
        if kind == "foreign":
            raise (FormatError if self._mode == "a" else StoreExistsError)(
                f"{where}: the group holds HDF5 objects that are not a snapsink store; "
                "refusing to "
                + ("append to" if self._mode == "a" else "replace")
                + " it: choose another group or file"
            )
        if self._mode == "w":
            if not self._group:
                self._new_file(h5py)
            else:
                with self._file(swmr=False, locked=True) as f:
                    del f[self._group]
            self._create_group()
            return None
        return self._resume()

    def _claim_h5md(self, kind: str) -> None:
        """An H5MD file holds one run: refuse a new group where an H5MD tree
        is; with ``"w"``, remove the replaced run's tree (``/h5md``,
        ``/particles``, ``/observables``)."""
        assert self._h5md is not None
        with self._file(swmr=False, locked=True) as f:
            found = [p for p in H5MD_ROOTS if p in f]
            if kind in ("missing", "empty") and found and self._mode != "w":
                raise StoreExistsError(
                    f"{self!r}: the file already holds an H5MD run ({', '.join(found)}); an "
                    "H5MD file holds one run: choose another file, or mode='w' to replace it"
                )
            if self._mode == "w" and kind in ("missing", "empty", "snapsink"):
                for p in found:
                    del f[p]

    def _inspect(self, h5py: Any) -> str:
        """``"missing"``, ``"empty"``, ``"snapsink"`` or ``"foreign"``: what is at
        the group's path."""
        with self._file(swmr=False, locked=True) as f:
            node = f.get(self._group) if self._group else f
            if node is None:
                return "missing"
            if not isinstance(node, h5py.Group):
                return "foreign"
            if is_snapsink_attr(node.attrs.get(META_ATTR)):
                return "snapsink"
            return "empty" if not len(node) and not len(node.attrs) else "foreign"

    def _root_is_ours(self, h5py: Any) -> bool:
        HANDLES.release(self._path)
        try:
            with h5py.File(self._path, "r", locking=False) as f:
                return is_snapsink_attr(f.attrs.get(META_ATTR))
        except OSError:
            return False

    def _new_file(self, h5py: Any) -> None:
        """Create (or truncate) the file: latest format (SWMR), no free-space
        reuse (a chunk freed mid-session is never overwritten before a commit
        names its replacement)."""
        HANDLES.release(self._path)
        f = h5py.File(self._path, "w", libver="latest", locking=False, fs_strategy="none")
        f.close()
        st = os.stat(self._path, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != self._ino:  # pragma: no cover - replaced under us
            raise FormatError(f"{self!r}: the file was replaced while it was created")
        fsync_fd(self._fd)

    def _create_group(self, *, adopt: bool = False) -> None:
        with self._file(swmr=False, locked=True) as f:
            grp = (
                (f.require_group(self._group) if adopt else f.create_group(self._group))
                if (self._group)
                else f
            )
            grp.attrs[META_ATTR] = self._meta.to_text()
            grp.attrs[ATTRS_ATTR] = _json(self._attrs)
            grp.create_dataset(
                DROPPED, (0, 2), np.int64, maxshape=(None, 2), chunks=(DROPPED_CHUNK, 2)
            )
            self._write_static(grp, self._static)
            grp.create_dataset(COMMIT, data=CommitRecord().to_array())
        if self._group:
            # the parent directory entry of a new file is durable too
            _fsync_dir(os.path.dirname(os.path.abspath(self._path)))

    def _write_static(self, grp: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
        if not arrays:
            return
        sg = grp.require_group(STATIC_GROUP)
        for name, arr in arrays.items():
            sg.create_dataset(name, data=arr)

    def _resume(self) -> Resume | None:
        """``mode="a"`` on a snapsink group: read it back and reopen its columns."""
        where = repr(self)
        h5py = import_h5py()
        with self._file(swmr=False, locked=True) as f:
            grp = self._group_of(f)
            meta = parse_group_meta(grp.attrs.get(META_ATTR), where)
            user = parse_user_attrs(grp.attrs.get(ATTRS_ATTR), where)
            if COMMIT not in grp or DROPPED not in grp:
                raise FormatError(f"{where}: {COMMIT!r} or {DROPPED!r} is missing")
            record = parse_commit(grp[COMMIT][...], where)
            runs = np.asarray(grp[DROPPED][: record.runs], np.int64)
            if runs.shape != (record.runs, 2):
                raise FormatError(f"{where}: {DROPPED!r} holds fewer than {record.runs} runs")
            ranges = parse_step_ranges(runs.tolist(), lambda m: FormatError(f"{where}: {m}"))
            if record.count and meta.schema is None:
                raise FormatError(f"{where}: {record.count} frames but no schema")
            # static: equal arrays, or new names
            sg = grp.get(STATIC_GROUP)
            new_static = {}
            for name, arr in self._static.items():
                if sg is not None and name in sg:
                    stored = np.asarray(sg[name][...])
                    if stored.dtype != arr.dtype or not np.array_equal(stored, arr):
                        raise ConfigError(
                            f"static {name!r}: the store holds a different array "
                            f"({stored.dtype}, shape {stored.shape}); static arrays are "
                            "written once"
                        )
                else:
                    new_static[name] = arr
            self._write_static(grp, new_static)
            self._attrs = {**user, **self._attrs}
            grp.attrs[ATTRS_ATTR] = _json(self._attrs)
            self._meta = meta
            self._dropped = StepRanges(ranges)
            self._count = self._committed = record.count
            if record.closed:
                self._write_record_raw(grp, record)
            if meta.schema is None:
                return None
            self._load_columns(h5py, grp, meta.schema, bool(meta.times), record.count)
            if not record.count:
                return Resume(schema=meta.schema, count=0)
            last = record.count - 1
            last_step = int(grp["steps"][last])
            last_time = float(grp["times"][last]) if meta.times else None
        return Resume(meta.schema, record.count, last_step, last_time, bool(meta.times))

    def _write_record_raw(self, grp: Any, record: CommitRecord) -> None:
        """Mark a reopened group as open again (closed = 0)."""
        grp[COMMIT][...] = CommitRecord(record.count, record.runs, False).to_array()

    def _load_columns(self, h5py: Any, grp: Any, schema: Schema, times: bool, count: int) -> None:
        where = repr(self)
        plans = plan_arrays(schema, times=times)
        lengths: dict[str, int] = {}
        columns: dict[str, _Column] = {}
        for plan in plans:
            ds = grp.get(plan.name)
            if not isinstance(ds, h5py.Dataset):
                raise FormatError(f"{where}: dataset {plan.name!r} is missing")
            if ds.dtype != plan.dtype or tuple(ds.shape[1:]) != plan.row_shape or ds.chunks is None:
                raise FormatError(
                    f"{where}: dataset {plan.name!r} has dtype {ds.dtype}, shape {ds.shape} "
                    f"and chunks {ds.chunks}; expected chunked {plan.dtype} rows of shape "
                    f"{plan.row_shape}"
                )
            if plan.name in lengths:
                length = lengths[plan.name]
            elif plan.name.endswith(".offsets"):
                length = count + 1
                if ds.shape[0] < length:
                    raise FormatError(f"{where}: {plan.name!r} is shorter than {length}")
                ends = np.asarray(ds[[0, count]] if count else ds[0:1], np.int64)
                if int(ends[0]) != 0:
                    raise FormatError(f"{where}: {plan.name!r} does not start at 0")
                lengths[plan.name[: -len(".offsets")]] = int(ends[-1])
            else:
                length = count
            if ds.shape[0] < length or length < 0:
                raise FormatError(
                    f"{where}: dataset {plan.name!r} holds {ds.shape[0]} rows, fewer than "
                    f"the {length} committed"
                )
            chunk = int(ds.chunks[0])
            actual = ArrayPlan(plan.name, plan.dtype, plan.row_shape, chunk, None, plan.dims)
            start = length - length % chunk
            tail = np.asarray(ds[start:length]) if length > start else None
            buf = RowBuffer(plan.dtype, plan.row_shape, chunk, length, tail)
            columns[plan.name] = _Column(actual, buf, int(ds.shape[0]), _direct(ds))
        self._columns = columns

    def _create_datasets(
        self, grp: Any, schema: Schema, times: bool, only: str | None = None
    ) -> None:
        kw: dict[str, Any] = {}
        if self._compression is not None:
            kind, opts = self._compression
            if isinstance(kind, int):
                _load_filter_plugins()
            kw = {"compression": kind, "compression_opts": opts}
        plans = plan_arrays(schema, times=times, chunk_frames=self._chunk_frames)
        for plan in plans:
            if only is not None and plan.name != only:
                continue
            if plan.name in grp:  # left by an interrupted prepare: made again
                del grp[plan.name]
            offsets = plan.name.endswith(".offsets")
            length = 1 if offsets else 0
            ds = grp.create_dataset(
                plan.name,
                shape=(length, *plan.row_shape),
                maxshape=maxshape(plan.row_shape),
                chunks=plan.chunks,
                dtype=plan.dtype,
                **kw,
            )
            tail = None
            if offsets:
                tail = np.zeros(1, np.int64)
                ds[0] = 0
            buf = RowBuffer(plan.dtype, plan.row_shape, plan.chunk, length, tail)
            self._columns[plan.name] = _Column(plan, buf, length, _direct(ds))

    def _write_h5md(self, f: Any, grp: Any, schema: Schema, times: bool) -> None:
        """The H5MD tree: links to the group's datasets (see :mod:`._hdf5md`)."""
        from .. import __version__

        assert self._h5md is not None
        dim = check_h5md_schema(self._h5md, schema, self._static, repr(self))
        static_box = self._h5md.box is not None and self._h5md.box not in schema
        write_h5md_tree(
            f, grp, self._h5md, dim, times=times, static_box=static_box, version=__version__
        )

    # -- frames ---------------------------------------------------------------------
    def _plan_rows(self, schema: Schema, frames: list[Frame]) -> list[tuple[str, Any]]:
        """What each dataset gets from ``frames``, after checking every frame
        (nothing is buffered when a frame is refused)."""
        n = len(frames)
        steps = np.fromiter((fr.step for fr in frames), np.int64, n)
        out: list[tuple[str, Any]] = [("steps", steps)]
        if self._meta.times:
            if any(fr.time is None for fr in frames):
                raise SchemaError(f"{self!r}: every frame must carry a time (the store has times)")
            out.append(("times", np.fromiter((fr.time for fr in frames), np.float64, n)))
        for name, f in schema.items():
            arrays = []
            for fr in frames:
                a = fr.fields[name]
                if not isinstance(a, np.ndarray) or a.dtype != f.dtype:
                    a = np.asarray(a, dtype=f.dtype)
                if f.ragged:
                    if a.ndim != len(f.shape) or a.shape[1:] != f.row_shape:
                        raise SchemaError(
                            f"field {name!r}: expected rows of shape {f.row_shape}, got an "
                            f"array of shape {a.shape} at step {fr.step}"
                        )
                elif a.shape != f.shape:
                    raise SchemaError(
                        f"field {name!r}: expected shape {f.shape}, got {a.shape} at step {fr.step}"
                    )
                arrays.append(a)
            if not f.ragged:
                out.append((name, arrays))
                continue
            counts = np.fromiter((len(a) for a in arrays), np.int64, n)
            col = self._columns[name]
            offsets = col.buf.length + np.cumsum(counts)
            rows = np.concatenate(arrays) if arrays else np.empty((0, *f.row_shape), f.dtype)
            out.append((name, rows))
            out.append((f"{name}.offsets", offsets))
        return out

    # -- internals ------------------------------------------------------------------
    def _check_usable(self, what: str) -> None:
        if self._state == "open":
            return
        if self._state == "failed":
            raise StoreStateError(
                f"{self!r}: {what}(): an earlier write failed; the store takes no more "
                "frames (its last successful commit stands)"
            )
        raise StoreStateError(
            f"{self!r}: {what}() needs an open store (state: {self._state}); call open() "
            "first and nothing after close()"
        )

    def _release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the descriptor: the group claim goes with it
            self._finalizer = None
        self._fd = -1
        self._locks = None


def _direct(ds: Any) -> bool:
    """Whole chunks of ``ds`` may be written as raw bytes (no filter)."""
    return ds.compression is None and not ds.id.get_create_plist().get_nfilters()


def _json(obj: Mapping[str, Any]) -> str:
    import json

    return json.dumps(dict(obj), allow_nan=False, separators=(",", ":"))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_filter_plugins() -> None:
    """Register hdf5plugin's filters (Blosc, Zstd, ...) when it is installed."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
