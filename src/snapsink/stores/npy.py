"""NpyDirectory: a crash-safe, growable, resumable directory of ``.npy`` files.

Layout (the full specification is ``docs/formats/npy.md``)::

    run/
      metadata.json          format, schema, committed count, ... (commit-last)
      steps.npy              int64, one per frame
      times.npy              float64, one per frame (only when frames carry times)
      <field>.npy            fixed field: frames on axis 0
      <field>.npy            ragged field: the rows of all frames, concatenated
      <field>.offsets.npy    ragged field: int64 row offsets, committed frames + 1
      static/<name>.npy      arrays written once

Every growable file has a 4096-byte header, so its data is page aligned and the
shape in the header can be rewritten in place. Readers trust only the committed
count in ``metadata.json``; after a clean close ``np.load(f, mmap_mode="r")``
of any file gives exactly the committed data.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._checks import absolute_path, positive_int
from .._checks import commit_seconds as check_commit_seconds
from .._errors import ConfigError, FormatError, SchemaError, StoreExistsError, StoreStateError
from .._schema import Batch, Schema
from .._store import Resume, StoreSpec
from ._common import check_attrs, check_mode, check_static, merge_metadata
from ._format import StepRanges
from ._lock import acquire_store_lock
from ._npyclaim import (
    check_ragged_ends,
    check_same_dir,
    refuse_foreign,
    remove_store,
    static_to_add,
    store_entries,
)
from ._npycommit import StoreHandles
from ._npyfile import (
    GrowableNpyFile,
    check_path,
    fsync_dir,
    read_metadata,
    replace_atomically,
    write_static,
)
from ._npyformat import (
    METADATA,
    METADATA_TMP,
    Metadata,
    bytes_of,
    committed_rows,
    data_files,
    now_iso,
    versions,
)
from ._npyplan import plan_append

__all__ = ["NpyDirectory", "NpySource", "is_npy_store", "open_npy"]

# the read side lives in _npyread; importable from here too
from ._npyread import NpySource, is_npy_store, open_npy

_clock = time.monotonic  # the commit_seconds clock (tests replace it)
#: appended bytes after which the writeback of the new data is started early
_WRITEBACK_BYTES = 16 << 20
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class NpyDirectory:
    """A store writing one ``.npy`` file per field into a directory.

    Crash safe (commit-last ``metadata.json``), growable without rewriting data
    (capacity doubling), resumable (``mode="a"``), and readable during the run
    with :func:`snapsink.open` (or ``snapsink.stores.npy.open_npy``), or with
    ``np.load(mmap_mode="r")`` after close.

    Parameters
    ----------
    path
        The store's directory. Created (with its parents) when missing; an
        existing directory must be empty or hold a snapsink-npy store. A
        relative path is taken against the working directory when the store
        is made (a later ``os.chdir`` does not move it).
    mode
        ``"x"``: create; fail if the directory holds anything. ``"w"``: replace
        an existing store (only the files its layout owns; a directory holding
        other files is refused). ``"a"``: append after the committed frames of
        an existing store (create one when there is none).
    attrs
        JSON metadata, stored in ``metadata.json``: str, int, float, bool,
        None, lists and str-keyed dicts; NumPy scalars and arrays are converted
        (``np.int64`` to ``int``, arrays with ``tolist()``), tuples become
        lists; NaN and infinity are refused. With ``"a"`` they update the
        stored attrs.
    static
        ``{name: array}`` written once to ``static/<name>.npy``. With ``"a"``
        a name already stored must hold an equal array.
    commit_every
        Commit after this many frames appended since the last commit (each
        commit is an fsync of every data file, then the metadata: for small
        frames a low value costs throughput; ``flush()`` commits on demand).
    commit_seconds
        Also commit when this many seconds passed since the last commit and
        something was appended since: at an append, or, when no frame comes,
        by the sink's writer (:meth:`commit_due_in`); ``None`` to commit on
        frame count (and ``commit()``) only.
    direct_io
        Write runs of rows of at least 1 MiB whose length and memory are page
        aligned with ``O_DIRECT``: the disk reads them from the writer's memory,
        with no copy into the page cache (several times less CPU on the
        benchmark machine's disk, and faster beside a computing simulation;
        slower where the page cache would absorb a whole run on an idle core:
        ``docs/guides/writers.md`` gives both). Anything
        else, and any file system that refuses direct I/O, is written through
        the page cache. ``False``: everything through the page cache. The
        bytes stored and the durability are the same either way.

    Raises
    ------
    ConfigError
        For a bad path, mode, attrs, static array or commit setting.

    Notes
    -----
    A store has one writer: ``open()`` takes an OS lock that a second writer,
    in any process and any mode, is refused with (:class:`~snapsink.StoreLockedError`);
    the lock dies with its holder. Before each commit the store checks that its
    directory and data files are still the ones it opened (and not truncated).
    Methods block and are meant for one thread at a time (the sink runs them in
    a worker thread). Only frames committed (every ``commit_every`` frames,
    every ``commit_seconds``, at ``commit()`` and at ``close()``) survive a crash;
    a process that dies leaves a store that opens with its committed frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "x",
        *,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
        commit_every: int = 4096,
        commit_seconds: float | None = 5.0,
        direct_io: bool = True,
    ):
        self._path = absolute_path(check_path(path))
        self._mode = check_mode(mode)
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        self._commit_every = positive_int(commit_every, "commit_every")
        self._commit_seconds = check_commit_seconds(commit_seconds)
        if not isinstance(direct_io, bool):
            raise ConfigError(f"direct_io: expected True or False, got {direct_io!r}")
        self._direct_io = direct_io

        self._state = "new"  # new -> open -> closed; "failed" after a failed commit
        self._schema: Schema | None = None
        self._times = False
        self._count = 0  # frames appended
        self._committed = 0  # frames named by metadata.json
        self._since_commit = 0
        self._unsynced = 0  # bytes appended since the last early writeback
        self._last_commit = _clock()
        self._last_step: int | None = None
        self._dropped = StepRanges()
        self._dropped_dirty = False
        self._static_names: list[str] = []
        self._created = now_iso()
        self._new_entries = False
        self._handles = StoreHandles()
        self._files = self._handles.files
        # A writer dropped without close() acts like a crash: descriptors are
        # closed (the lock with them), nothing is committed.
        self._finalizer = weakref.finalize(self, self._handles.close)

    def __repr__(self) -> str:
        return f"NpyDirectory({self._path!r}, mode={self._mode!r})"

    # Deliberate parallel of HDF5Store.describe (stores/hdf5.py): each public store
    # documents its own method; only the arguments to rebuild it differ.
    def describe(self) -> StoreSpec | None:
        """How a writer process builds this store again (see :class:`~snapsink.Sink`).

        Returns
        -------
        StoreSpec or None
            The store's class and arguments (the path absolute since the
            store was made); None for a subclass with an ``__init__`` of its
            own (it must describe itself).
        """
        if type(self).__init__ is not NpyDirectory.__init__:
            return None
        return StoreSpec(
            type(self),
            (self._path, self._mode),
            {
                "attrs": self._attrs,
                "static": self._static,
                "commit_every": self._commit_every,
                "commit_seconds": self._commit_seconds,
                "direct_io": self._direct_io,
            },
        )

    @property
    def path(self) -> str:
        """The store's directory (an absolute path)."""
        return self._path

    # Deliberate parallel of ZarrStore.add_metadata (stores/zarr.py) and
    # HostMemory.add_metadata (stores/memory.py): each public store documents its
    # own method; the merge itself is shared (_common.merge_metadata).
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
        StoreStateError
            When the store was already opened.
        """
        if self._state != "new":
            raise StoreStateError(
                f"{self!r}: add_metadata() after open(): static arrays and attrs are "
                "written when the store opens"
            )
        self._attrs, self._static = merge_metadata(self._attrs, self._static, attrs, static)

    # -- Store protocol ---------------------------------------------------------
    #: close() commits what was appended (the sink skips the commit before it)
    commits_on_close = True

    def open(self) -> Resume | None:
        """Claim the directory according to the mode, and take the store's
        single-writer lock (``.snapsink.lock``, held until ``close()``).

        Returns
        -------
        Resume or None
            ``None`` for a new store; with ``mode="a"`` on an existing store,
            its schema, committed count, last step and time.

        Raises
        ------
        StoreLockedError
            Another writer (in any process, this one included) holds the store.
        StoreExistsError
            ``"x"`` on a non-empty directory; ``"w"`` on a directory holding
            files that are not the store's; a path that is not a directory.
        FormatError
            The existing store's metadata is corrupt or foreign (``"w"``,
            ``"a"``), or ``"a"`` on a non-empty directory that is no store.
        ConfigError
            A static array differs from the stored one.
        StoreStateError
            ``open()`` called twice.
        """
        if self._state != "new":
            raise StoreStateError(f"{self!r}: open() was already called")
        path = self._path
        if os.path.lexists(path) and not os.path.isdir(path):
            raise StoreExistsError(f"{path!r} exists and is not a directory")
        if os.path.isdir(path):
            # A user's directory is refused before anything (the lock file) is
            # created in it.
            refuse_foreign(path, store_entries(path), self._mode)
        else:
            os.makedirs(path, exist_ok=True)
            fsync_dir(os.path.dirname(os.path.abspath(path)))
        handles = self._handles
        try:
            handles.dir_fd = os.open(path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
            handles.lock = acquire_store_lock(path, f"the snapsink-npy store at {path!r}")
            # Under the lock: what is there now is what no other writer changes.
            entries = store_entries(path)
            refuse_foreign(path, entries, self._mode)
            if entries and self._mode == "x":
                raise StoreExistsError(
                    f"a store exists at {path!r}; pass mode='w' to replace it or mode='a' "
                    "to append to it"
                )
            if entries and self._mode == "a":
                return self._resume()
            if entries:
                remove_store(path, entries)
            self._create()
        except BaseException:
            # A failed open leaves nothing half-claimed: close() then does nothing.
            handles.close()
            self._state = "new"
            raise
        return None

    def prepare(self, schema: Schema, *, times: bool) -> None:
        """Create the files of ``schema`` (or check it against the stored one).

        Parameters
        ----------
        schema
            The fields of every frame.
        times
            Whether frames carry a time.

        Raises
        ------
        SchemaError
            Appending (``"a"``) with a schema or a times flag other than the
            stored frames'.
        """
        self._check_open("prepare")
        if not isinstance(schema, Schema):
            raise ConfigError(f"prepare: expected a Schema, got {type(schema).__name__}")
        times = bool(times)
        if self._schema is not None:
            if schema != self._schema:
                raise SchemaError(
                    f"the store at {self._path!r} holds frames of schema {self._schema!r}; "
                    f"got {schema!r}: append with the same fields, dtypes and shapes, or "
                    "write to a new store"
                )
            if self._count and times != self._times:
                had = "carry" if self._times else "carry no"
                raise SchemaError(
                    f"the store at {self._path!r} holds frames that {had} times; new frames "
                    f"must do the same (got times={times})"
                )
            self._times = times
            if times and "times" not in self._files:
                self._add_file("times", np.dtype(np.float64), ())
            self._write_metadata(closed=False)
            return
        self._schema = schema
        self._times = times
        # Metadata names the files before they exist, so that mode="w" owns
        # whatever a crash in between leaves behind.
        self._write_metadata(closed=False)
        for key, dtype, row_shape in data_files(schema, times):
            self._add_file(key, dtype, row_shape)

    def append(self, batch: Batch) -> None:
        """Write ``batch.frames`` after the appended frames; note its dropped steps.

        Commits when ``commit_every`` frames were appended since the last commit
        or ``commit_seconds`` passed. A failure leaves the appended count as it
        was: a later append overwrites whatever part of the batch was written.

        Raises
        ------
        SchemaError
            A frame whose steps, time or shapes disagree with the store.
        OSError
            The disk failed (full, I/O error).
        """
        self._check_open("append")
        self._collect(wait=False)
        for s in batch.dropped_steps:
            self._dropped.add(int(s))
            self._dropped_dirty = True
        frames = batch.frames
        if frames:
            schema = self._schema
            if schema is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            ragged_rows = {name: self._files[name].used for name in schema.ragged}
            plan, last_step = plan_append(
                schema, self._times, frames, self._last_step, ragged_rows
            )
            writes = [(self._files[key], rows, bufs) for key, rows, bufs in plan]
            for file, rows, _ in writes:
                file.reserve(rows)
            for file, _, bufs in writes:
                file.write_at(file.used, bufs)
            # Only now that every byte went out do the counts move.
            nbytes = 0
            for file, rows, _ in writes:
                file.used += rows
                nbytes += rows * file.row_bytes
            self._count += len(frames)
            self._unsynced += nbytes
            if self._unsynced >= _WRITEBACK_BYTES:
                # the disk starts on them now: the commit's fsync (and the final
                # one, the tail a writer process's simulation waits for) has
                # little left to do
                self._unsynced = 0
                self._handles.start_writeback()
            self._last_step = last_step
            self._since_commit += len(frames)
            # frames of steps dropped before a resume: no longer dropped
            if self._dropped.discard_stored(f.step for f in frames):
                self._dropped_dirty = True
        if self._since_commit >= self._commit_every or (
            self._commit_seconds is not None
            and (self._since_commit or self._dropped_dirty)
            and _clock() - self._last_commit >= self._commit_seconds
        ):
            self._commit_soon()

    def commit_due_in(self) -> float | None:
        """Seconds until a commit of what was appended since the last one
        started is due (0 or less: due now); None when nothing waits for one.
        Due now when ``commit_every`` frames wait (their commit found another
        in flight and was left to a later append, which may not come), else
        when ``commit_seconds`` says (never with ``commit_seconds=None``). The
        writer commits then if no append came first (see :class:`~snapsink.Store`).
        """
        if self._state != "open" or not (self._since_commit or self._dropped_dirty):
            return None
        if self._since_commit >= self._commit_every:
            return 0.0
        if self._commit_seconds is None:
            return None
        return self._last_commit + self._commit_seconds - _clock()

    def _commit_soon(self) -> None:
        """Start a commit of everything appended, in the background (see
        :mod:`._npycommit`); none while one is in flight (then at a later
        append, or at ``commit()``)."""
        committer = self._handles.committer
        if committer.busy():
            return
        self._collect(wait=False)
        dirty = [(f, f.used) for f in self._files.values() if f.dirty]
        for f, _ in dirty:
            f.dirty = False
        meta = self._metadata(closed=False, rows=lambda f: f.used)
        text = json.dumps(meta.to_json(), allow_nan=False, separators=(",", ":"))
        new_entries, self._new_entries = self._new_entries, False
        self._dropped_dirty = False
        self._since_commit = self._count - meta.count
        self._last_commit = _clock()

        def done() -> None:
            self._committed = max(self._committed, meta.count)

        committer.start_commit(
            dirty, self._path, text, new_entries=new_entries, check=self._check_unchanged,
            on_done=done,
        )  # fmt: skip

    def _collect(self, *, wait: bool) -> None:
        """Finish a background commit that ended (with ``wait``: once it ends);
        its failure fails the store, as a failed commit does."""
        try:
            self._handles.committer.collect(wait=wait)
        except BaseException:
            self._state = "failed"
            raise

    def commit(self) -> None:
        """Make every appended frame durable and visible (commit-last).

        Data files written since the last commit are fsynced (their headers
        naming the new row counts), then ``metadata.json`` is replaced
        atomically and the directory fsynced. A commit running in the
        background (started by ``append``) ends first.
        """
        self._check_open("commit")
        self._collect(wait=True)
        dirty = [f for f in self._files.values() if f.dirty]
        if not dirty and not self._dropped_dirty and self._committed == self._count:
            return
        try:
            for f in dirty:
                f.sync()
            self._write_metadata(closed=False)
        except BaseException:
            # After a failed fsync the kernel may have dropped the dirty pages and
            # a retry would "succeed": never commit again, the last commit stands.
            self._state = "failed"
            raise

    def close(self) -> None:
        """Commit what was appended, cut every file to its committed data, mark
        the store closed. Idempotent; file descriptors are closed even on error.
        """
        if self._state == "closed":
            return
        try:
            if self._state == "open":
                # The commit and the finalizing in one pass, in commit-last
                # order: each file's header names its rows, the file is cut to
                # them and fsynced; then metadata.json (closed) names them. One
                # fsync per file and one metadata write, where a commit first
                # took two of each.
                self._collect(wait=True)
                self._check_unchanged()
                for f in self._files.values():
                    f.finalize(f.used)
                self._write_metadata(closed=True)
        finally:
            self._state = "closed"
            self._finalizer()

    # -- internals --------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._state == "failed":
            raise StoreStateError(
                f"{self!r}: {what}(): an earlier commit failed; the store takes no "
                "more frames (its last successful commit stands)"
            )
        if self._state != "open":
            raise StoreStateError(
                f"{self!r}: {what}() needs an open store (state: {self._state}); "
                "call open() first and nothing after close()"
            )

    def _add_file(self, key: str, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> None:
        f = self._files[key] = GrowableNpyFile.create(
            os.path.join(self._path, f"{key}.npy"), dtype, row_shape, self._direct_io
        )
        self._new_entries = True
        if key.endswith(".offsets"):  # offsets start with a 0
            f.reserve(1)
            f.write_at(0, [bytes_of(np.zeros(1, np.int64))])
            f.used = 1

    def _reopen(
        self, key: str, dtype: np.dtype[Any], row_shape: tuple[int, ...], rows: int
    ) -> None:
        path = os.path.join(self._path, f"{key}.npy")
        if self._count == 0:  # nothing committed: start the file afresh
            self._add_file(key, dtype, row_shape)
            return
        try:
            self._files[key] = GrowableNpyFile.reopen(path, dtype, row_shape, rows, self._direct_io)
        except FileNotFoundError:
            raise FormatError(
                f"{path}: missing, but {METADATA} names {self._count} committed frames"
            ) from None

    def _create(self) -> None:
        self._state = "open"
        self._write_metadata(closed=False)
        write_static(self._path, self._static)
        self._static_names = list(self._static)
        if self._static_names:
            self._write_metadata(closed=False)

    def _resume(self) -> Resume | None:
        meta = read_metadata(self._path)
        self._state = "open"
        self._created = meta.created
        self._attrs = {**meta.attrs, **self._attrs}
        self._dropped = StepRanges(meta.dropped)
        self._static_names = list(meta.static)
        new_static = static_to_add(self._path, meta, self._static)
        self._schema = meta.schema
        self._times = meta.times
        self._count = self._committed = meta.count
        if meta.schema is not None:
            for key, dtype, row_shape in data_files(meta.schema, meta.times):
                self._reopen(key, dtype, row_shape, committed_rows(meta, key))
            check_ragged_ends(self._files, meta)
        write_static(self._path, new_static)
        self._static_names += list(new_static)
        self._write_metadata(closed=False)
        if meta.schema is None:
            return None
        if not meta.count:
            return Resume(schema=meta.schema, count=0)
        last_step = int(self._files["steps"].read_row(meta.count - 1)[()])
        self._last_step = last_step
        last_time = (
            float(self._files["times"].read_row(meta.count - 1)[()]) if meta.times else None
        )
        return Resume(meta.schema, meta.count, last_step, last_time, meta.times)

    def _check_unchanged(self) -> None:
        """Fail unless the path still names the directory and the files this
        store opened, each holding what was written to it.

        Someone may delete and recreate the directory, or truncate or replace a
        data file, while the writer runs; a commit then would name frames that
        are not on disk (they read back as zeros or not at all). A descriptor of
        the directory is held since ``open()``, so its inode cannot be reused.

        Raises
        ------
        FileNotFoundError
            The directory or a data file was deleted (or moved away).
        FormatError
            The directory or a data file was replaced, or a data file truncated.
        """
        check_same_dir(self._path, self._handles.dir_fd)
        for f in self._files.values():
            f.check_unchanged()

    def _write_metadata(self, *, closed: bool) -> None:
        """Commit-last: metadata.json via a fsynced temp file and an atomic rename,
        after checking that the store's files are still the ones it writes."""
        self._check_unchanged()
        if self._new_entries:
            fsync_dir(self._path)  # new data files' entries before the metadata naming them
            self._new_entries = False
        # Counts only: a file's committed rows lag its used rows until sync().
        meta = self._metadata(closed=closed, rows=lambda f: f.committed)
        text = json.dumps(meta.to_json(), allow_nan=False, separators=(",", ":"))
        replace_atomically(self._path, METADATA_TMP, METADATA, text.encode("utf-8"))
        self._committed = meta.count
        self._dropped_dirty = False
        self._since_commit = self._count - self._committed
        self._last_commit = _clock()

    def _metadata(self, *, closed: bool, rows: Callable[[GrowableNpyFile], int]) -> Metadata:
        """The metadata naming ``rows(file)`` rows of each data file."""
        schema = self._schema
        ragged = schema.ragged if schema is not None else ()
        return Metadata(
            schema=schema,
            count=rows(self._files["steps"]) if "steps" in self._files else self._committed,
            rows={n: rows(self._files[n]) if n in self._files else 0 for n in ragged},
            times=self._times,
            dropped=self._dropped.to_json(),
            attrs=self._attrs,
            static=self._static_names,
            versions=versions(),
            created=self._created,
            updated=now_iso(),
            closed=closed,
        )
