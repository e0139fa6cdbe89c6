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

This module holds the store's life cycle (modes, buffering, commits); the
rest of the writer is split by role: :mod:`._hdf5session` (the file held and
written in sessions), :mod:`._hdf5claim` (what ``open`` finds and makes, by
mode), :mod:`._hdf5columns` (the datasets), :mod:`._hdf5plan` (I/O-free
decisions), :mod:`._hdf5md` (the H5MD tree).

h5py is imported when a store opens (``import snapsink`` never imports it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._checks import absolute_path, positive_int
from .._checks import commit_seconds as check_commit_seconds
from .._errors import ConfigError, StoreStateError
from .._schema import Batch, Schema
from .._store import Resume, StoreSpec
from .._version import __version__
from ._common import (
    check_attrs,
    check_mode,
    check_same_layout,
    check_static,
    merge_metadata,
)
from ._format import StepRanges
from ._hdf5claim import claim_group
from ._hdf5columns import (
    Column,
    Pending,
    create_columns,
    plan_rows,
    session_bytes,
    write_rows,
)
from ._hdf5file import fsync_fd, import_h5py
from ._hdf5md import (
    H5MD_ROOTS,
    H5MDMapping,
    check_h5md,
    check_h5md_schema,
    h5md_tree_is_current,
    write_h5md_tree,
)
from ._hdf5plan import (
    COMMIT,
    DROPPED,
    META_ATTR,
    CommitRecord,
    GroupMeta,
    check_compression,
    check_hdf5_dtypes,
    check_hdf5_names,
    check_hdf5_ranks,
    check_hdf5_static,
)
from ._hdf5read import HDF5Source, is_hdf5_store, list_hdf5_groups, open_hdf5
from ._hdf5session import METADATA_ROOM, FileReplaced, StoreFile
from ._npyfile import check_path, start_writeback
from ._zarrplan import check_group, check_rows, plan_arrays

__all__ = ["HDF5Source", "HDF5Store", "is_hdf5_store", "list_hdf5_groups", "open_hdf5"]

LAYOUTS = ("snapsink", "h5md")
#: the snapsink group of an H5MD file when ``group`` is None
H5MD_GROUP = "snapsink"
#: full chunks buffered before a session writes them (besides commits): bounds
#: the store's memory and keeps sessions short for other writers of the file
_SESSION_BYTES = 64 << 20
#: times an opening store follows its path to a file another writer made anew
#: meanwhile (see HDF5Store.open)
_FOLLOWS = 8


class HDF5Store:
    """A store writing frames into a group of an HDF5 file (h5py).

    Crash safe (commit-last record, SWMR sessions), resumable (``mode="a"``),
    readable while written (:func:`snapsink.open`, or h5py with ``swmr=True``),
    and shareable: stores on different groups of one file may write at once,
    from different processes (say, the routes of a :class:`~snapsink.Recorder`).

    Parameters
    ----------
    path
        The HDF5 file (created with its parent directories when missing). A
        relative path is taken against the working directory when the store
        is made (a later ``os.chdir`` does not move it).
    mode
        ``"x"``: create; fail if the group (for the root: a non-empty file)
        exists. ``"w"``: replace the group (for the root: the whole file, if it
        is a snapsink store) with the runs nested in it; refused, nothing
        deleted, where another writer holds one or anything below is not
        snapsink's. ``"a"``: append after the group's committed
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
        passed since the last commit; a sink's writer with nothing to store
        commits once ``commit_seconds`` passed (:meth:`commit_due_in`);
        ``commit_seconds=None``: on frame count (and ``commit()``) only.
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
        self._path = absolute_path(check_path(path))
        self._mode = check_mode(mode)
        self._layout = layout
        self._h5md, self._h5md_args, group = _check_layout(layout, group, h5md, units)
        self._group = check_group(group) if group not in ("", "/") else ""
        self._chunk_frames = check_rows(chunk_frames, "chunk_frames")
        self._compression = check_compression(compression)
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        for name, value in self._static.items():
            check_hdf5_static(name, value)
        self._commit_every = positive_int(commit_every, "commit_every")
        self._commit_seconds = check_commit_seconds(commit_seconds)

        self._state = "new"  # new -> open -> closed; "failed" after a failed write
        self._meta = GroupMeta()
        self._columns: dict[str, Column] = {}
        self._pending: list[Pending] = []
        self._pending_bytes = 0
        self._count = 0  # frames appended
        self._committed = 0  # frames named by the commit record
        self._dropped = StepRanges()
        self._dropped_dirty = False
        self._last_commit = time.monotonic()
        self._store_file: StoreFile | None = None  # from open() to close()

    def __repr__(self) -> str:
        return f"<HDF5Store {self._path!r} group={self._group or '/'!r} mode={self._mode!r}>"

    @property
    def path(self) -> str:
        """The HDF5 file (an absolute path)."""
        return self._path

    @property
    def group(self) -> str:
        """The group's path in the file (``""``: the root)."""
        return self._group

    # Deliberate parallel of NpyDirectory.describe and ZarrStore.describe: each
    # store documents its own method and lists its own arguments.
    def describe(self) -> StoreSpec | None:
        """How a writer process builds this store again (see :class:`~snapsink.Sink`).

        Returns
        -------
        StoreSpec or None
            The store's class and arguments (the path absolute since the
            store was made); None for a subclass with an ``__init__`` of its
            own (it must describe itself).
        """
        if type(self).__init__ is not HDF5Store.__init__:
            return None
        return StoreSpec(
            type(self),
            (self._path, self._mode),
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

    # Deliberate parallel of ZarrStore.add_metadata (zarr.py): each store
    # documents its own method (here: the HDF5 dtype check).
    def add_metadata(
        self,
        *,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
    ) -> None:
        """Add attrs and static arrays after the store was built, before it opens.

        For code that learns them only when the run starts, such as the py-pde
        tracker (:mod:`snapsink.integrations.pde`), which sees the grid then.

        Parameters
        ----------
        attrs
            More metadata, converted as the constructor's ``attrs``.
        static
            More static arrays, as the constructor's ``static``.

        Raises
        ------
        ConfigError
            For a bad value, or a key or name already set to a different value;
            nothing is changed.
        DTypeError
            A static array of a dtype the HDF5 store does not hold; nothing is
            changed.
        StoreStateError
            When the store was already opened.
        """
        if self._state != "new":
            raise StoreStateError(
                f"{self!r}: add_metadata() after open(): static arrays and attrs are "
                "written when the store opens"
            )
        new_attrs, new_static = merge_metadata(self._attrs, self._static, attrs, static)
        for name, value in new_static.items():
            check_hdf5_static(name, value)
        self._attrs, self._static = new_attrs, new_static

    def check_schema(self, schema: Schema) -> None:
        """Refuse, before anything is written, a schema this store cannot hold.

        Raises
        ------
        DTypeError
            A field of dtype float128 or complex256.
        SchemaError
            A field of more than 31 dimensions (an HDF5 dataset holds 32, one
            of them the frames). A field whose dataset would take the place of the store's own
            (``snapsink.*``; with ``layout="h5md"`` in the root group: ``h5md``,
            ``particles``, ``observables``). With ``layout="h5md"``: a field the
            mapping names is missing, ragged or of a shape H5MD does not allow.
        """
        check_hdf5_dtypes(schema, repr(self))
        check_hdf5_ranks(schema, repr(self))
        root_h5md = self._h5md is not None and not self._group
        check_hdf5_names(schema, repr(self), H5MD_ROOTS if root_h5md else ())
        if self._h5md is not None:
            check_h5md_schema(self._h5md, schema, self._static, repr(self))

    # -- Store protocol -------------------------------------------------------------
    #: close() commits what was appended (the sink skips the commit before it)
    commits_on_close = True

    # Deliberate parallel of ZarrStore.open's docstring: each store documents
    # its own method (the same protocol, the same errors).
    def open(self) -> Resume | None:
        """Claim the group (honouring the mode), write attrs and static arrays.

        Returns
        -------
        Resume or None
            What is stored, for ``mode="a"`` on an existing group with a schema.

        Raises
        ------
        StoreLockedError
            Another writer holds the group, or (``"w"``) a run nested in it.
        StoreExistsError
            ``"x"`` on an existing group (the root: a non-empty file); ``"x"``
            or ``"w"`` on a file that is no HDF5 file, or on a group holding
            objects that are no snapsink store (``"w"``: at any depth); a
            group path through a dataset, or inside a run at a name it holds.
        FormatError
            ``"a"`` on a file or group that is not a snapsink store, or corrupt.
        ConfigError
            A static array differs from the stored one; (``"a"``) units that
            differ from the stored ones.
        StoreStateError
            ``open()`` called twice.
        """
        if self._state != "new":
            raise StoreStateError(f"{self!r}: open() was already called")
        import_h5py()  # before anything is made: the message names the extra
        # A path that is a symbolic link names the file it points to (a run
        # directory linked to scratch): the store works on that file, so that
        # a new file (mode "w", a remade one) replaces the target, not the link.
        path = os.path.realpath(self._path) if os.path.islink(self._path) else self._path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        for attempt in range(_FOLLOWS + 1):
            sf = self._store_file = StoreFile(path, self._group, self, repr(self))
            try:
                sf.locks.claim(self._group)
                with sf.locks.session():
                    claimed = claim_group(
                        sf,
                        self._mode,
                        attrs=self._attrs,
                        static=self._static,
                        h5md=self._h5md is not None,
                        units=self._h5md.units if self._h5md is not None else None,
                    )
                break
            except FileReplaced:
                # Another writer made the file anew (whole, then renamed over
                # the path) after this one opened it and before it claimed its
                # group: two writers of two groups starting at once on a new
                # file. Nothing of this store was written (the path is checked
                # before every write): follow the path to that file.
                self._release()
                if attempt == _FOLLOWS:
                    raise
            except BaseException:
                if sf.created and sf.size() == 0 and sf.names_its_file():
                    # nothing of ours was ever in it: leave no empty file behind
                    # (never a file another writer renamed over the path)
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                self._release()
                raise
        self._attrs, self._meta, self._dropped = claimed.attrs, claimed.meta, claimed.dropped
        self._count = self._committed = claimed.count
        self._columns = claimed.columns
        self._state = "open"
        return claimed.resume

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
            if meta.times == times and self._columns and self._h5md_is_current(schema, times):
                return
        sf = self._held()
        # the room the datasets take: their headers, and the first chunk of
        # each offsets dataset (it holds a 0), allocated before HDF5 writes
        room = METADATA_ROOM + sum(
            p.chunk * p.row_nbytes
            for p in plan_arrays(schema, times=times, chunk_frames=self._chunk_frames)
            if p.name.endswith(".offsets")
        )
        try:
            with sf.locks.session():
                if sf.fresh and not sf.shared_with_others():
                    # a new file of this store alone: made anew, whole (see remake)
                    sf.remake(lambda f: self._lay_out(f, schema, times), copy=True, room=room)
                else:  # a file others write: HDF5's window (docs/formats/hdf5.md)
                    with sf.file(swmr=False, locked=True, room=room) as f:
                        self._lay_out(f, schema, times)
        except BaseException:
            self._state = "failed"
            raise
        sf.fresh = False

    def _lay_out(self, f: Any, schema: Schema, times: bool) -> None:
        """The datasets of ``schema`` in the group of file ``f``, the group's
        metadata naming it, and the H5MD tree."""
        meta = self._meta
        grp = self._held().group_of(f)
        if meta.schema is None or not self._columns:
            self._columns.update(self._create_columns(grp, schema, times))
        elif times and "times" not in self._columns:
            self._columns.update(self._create_columns(grp, schema, times, only="times"))
        meta.schema, meta.times = schema, times
        grp.attrs[META_ATTR] = meta.to_text()
        if self._h5md is not None:
            self._write_h5md(f, grp, schema, times)

    def _h5md_is_current(self, schema: Schema, times: bool) -> bool:
        """Whether a resumed group's H5MD tree (if any) needs no writing: a
        resumed store then opens no session outside SWMR mode."""
        m = self._h5md
        if m is None:
            return True
        dim = check_h5md_schema(m, schema, self._static, repr(self))
        static_box = m.box is not None and m.box not in schema
        with self._held().file(swmr=True) as f:
            return h5md_tree_is_current(
                f, self._held().group_of(f), m, dim, times=times, static_box=static_box
            )

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
            # checks everything first
            pushes = plan_rows(
                schema, frames, self._columns, times=bool(self._meta.times), where=repr(self)
            )
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
        if batch.frames and self._dropped.discard_stored(f.step for f in batch.frames):
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

    def commit_due_in(self) -> float | None:
        """Seconds until ``commit_seconds`` asks for a commit of what was
        appended (0 or less: due now); None when nothing waits for one, or
        with ``commit_seconds=None``. The writer commits then if no append
        came first (see :class:`~snapsink.Store`)."""
        if (
            self._commit_seconds is None
            or self._state != "open"
            or not (self._count > self._committed or self._dropped_dirty)
        ):
            return None
        return self._last_commit + self._commit_seconds - time.monotonic()

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
    def _held(self) -> StoreFile:
        """The store's file, held from :meth:`open` to :meth:`close`."""
        assert self._store_file is not None
        return self._store_file

    def _session(self, *, commit: bool, closed: bool = False) -> None:
        """Write the buffered chunks in a SWMR session; with ``commit``, also the
        partly filled chunks, then (durably) the commit record."""
        sf = self._held()
        # the room for everything the session writes, allocated before HDF5
        # writes any of it: a full disk is a clear error, never a lost write
        room = session_bytes(self._columns, self._pending, commit=commit) + METADATA_ROOM
        try:
            with sf.file(swmr=True, room=room) as f:
                grp = sf.group_of(f)
                write_rows(grp, self._columns, self._pending, commit=commit)
                self._pending.clear()
                self._pending_bytes = 0
                if commit:
                    f.flush()
                    fsync_fd(sf.fd)
                    if closed:  # a resumed group may hold rows past the commit
                        for name, col in self._columns.items():
                            if col.extent != col.buf.length:
                                grp[name].resize(col.buf.length, axis=0)
                                col.extent = col.buf.length
                    # the record's room again: a flush of HDF5's that cut the file
                    # to its end of allocation freed the blocks past it (ext4)
                    sf.reserve(METADATA_ROOM + 16 * len(self._dropped.to_json()))
                    self._write_record(grp, closed=closed)
                    f.flush()
                    fsync_fd(sf.fd)
        except BaseException:
            # Datasets may now disagree; the last commit stays the truth.
            self._state = "failed"
            raise
        if not commit:
            # the disk starts on the session's chunks now, while more frames
            # come: the commit's fsync then has little left (as NpyDirectory)
            start_writeback(sf.fd)
        if commit:
            self._committed = self._count
            self._dropped_dirty = False
            self._last_commit = time.monotonic()

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

    # -- datasets -------------------------------------------------------------------
    def _create_columns(
        self, grp: Any, schema: Schema, times: bool, only: str | None = None
    ) -> dict[str, Column]:
        return create_columns(
            grp,
            schema,
            times=times,
            chunk_frames=self._chunk_frames,
            compression=self._compression,
            only=only,
            where=repr(self),
        )

    def _write_h5md(self, f: Any, grp: Any, schema: Schema, times: bool) -> None:
        """The H5MD tree: links to the group's datasets (see :mod:`._hdf5md`)."""
        assert self._h5md is not None
        dim = check_h5md_schema(self._h5md, schema, self._static, repr(self))
        static_box = self._h5md.box is not None and self._h5md.box not in schema
        write_h5md_tree(
            f, grp, self._h5md, dim, times=times, static_box=static_box, version=__version__
        )

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
        if self._store_file is not None:
            self._store_file.release()  # closes the descriptor: the group claim goes with it
            self._store_file = None


def _check_layout(
    layout: str, group: str | None, h5md: Mapping[str, Any] | None, units: Mapping[str, str] | None
) -> tuple[H5MDMapping | None, tuple[dict[str, Any], dict[str, str]] | None, str | None]:
    """Check ``layout`` with the H5MD arguments: the checked mapping, the
    arguments as given (for :meth:`HDF5Store.describe`), and the group (an
    H5MD store's default: :data:`H5MD_GROUP`).

    Raises
    ------
    ConfigError
        An unknown layout, ``layout="h5md"`` without a mapping, a mapping or
        units with the snapsink layout, a bad mapping, or (H5MD) a group in
        the H5MD tree's ``/h5md``, ``/particles`` or ``/observables``.
    """
    if layout not in LAYOUTS:
        raise ConfigError(
            f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}"
        )
    if layout == "snapsink":
        if h5md is not None or units is not None:
            raise ConfigError(
                "h5md and units: only with layout='h5md' (the snapsink layout records "
                f"no H5MD mapping), got layout={layout!r}"
            )
        return None, None, group
    if h5md is None:
        raise ConfigError(
            "layout='h5md' needs h5md={...}: which fields are the particle "
            "elements, e.g. h5md={'position': 'positions', 'box': 'cell'}"
        )
    mapping = check_h5md(h5md, units)
    top = group.strip("/").split("/")[0] if isinstance(group, str) else None
    if top in H5MD_ROOTS:
        raise ConfigError(
            f"group {group!r}: with layout='h5md' the store's group may not be in the H5MD "
            f"tree's /{top} (the tree's {', '.join('/' + r for r in H5MD_ROOTS)} are made "
            f"beside it); choose another group, e.g. the default {H5MD_GROUP!r}"
        )
    return mapping, (dict(h5md), dict(units or {})), H5MD_GROUP if group is None else group
