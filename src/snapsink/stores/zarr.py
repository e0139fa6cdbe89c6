"""ZarrStore: frames into a Zarr v3 group, written with zarr-python's async API.

The layout (one array per field, chunked along frames, bookkeeping in the
group's attributes, commit-last) is specified in ``docs/formats/zarr.md``; the
I/O-free decisions live in :mod:`._zarrplan`. This module keeps the store's
life cycle (modes, the order of a commit, metadata); the group and its arrays
are :mod:`._zarrgroup`'s, the writes :mod:`._zarrblocks`', and claiming a local
directory :mod:`._zarrclaim`'s.

The writer side (:class:`ZarrStore`) is a :class:`~snapsink.Store` whose methods
are coroutines, awaited on the sink writer's own asyncio loop (in the writer
process, or the writer thread): zarr-python is the format authority (metadata,
codecs, chunk keys) and asyncio-only, and the simulation's own event loop, on
any backend, never runs them. On a local directory, whole blocks of every array
are encoded with each array's own zarr codec pipeline and written durably by a
thread pool (:mod:`._zarrio`), and the rows of an uncompressed array go
straight from the frames into their chunk files (:mod:`._zarrcolumns`); on
other zarr stores (memory, remote) blocks go through zarr's async array API,
many at a time. Either way the loop never blocks: blocking steps (fsyncs,
the lock, directory checks) run in the loop's default executor
(``asyncio.to_thread``), whose threads last as long as the loop. anyio's worker
threads last only as long as the task that first used them, and every store
call, like every commit in the background, is a task of its own: through anyio,
each commit started and stopped a thread.

The reader side (:class:`ZarrSource`, :func:`open_zarr`, :func:`list_groups`,
:func:`is_zarr_store`) runs in user code and uses zarr's sync API.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from zarr.abc.store import Store as ZarrStoreLike

from .._checks import absolute_path, positive_int
from .._checks import commit_seconds as check_commit_seconds
from .._errors import ConfigError, SchemaError, StoreExistsError, StoreStateError
from .._schema import MAX_NDIM, Batch, Schema
from .._store import Resume, StoreSpec
from ._common import check_attrs, check_mode, check_static, merge_metadata
from ._lock import StoreLock
from ._zarrblocks import BlockIO, Partial
from ._zarrclaim import check_not_removed, claim_group_dir, local_store
from ._zarrcolumns import Column, blocks_of
from ._zarrgroup import (
    check_adoptable,
    check_parents,
    check_replaceable,
    check_zarr_dtype,
    check_zarr_dtypes,
    create_columns,
    create_group,
    delete_group,
    last_row,
    load_columns,
    node_exists,
    open_group,
    write_static,
)
from ._zarrio import DurableLocalStore, zstd_encoder
from ._zarrobject import (
    close_session,
    file_url_path,
    is_plain,
    is_url,
    refused_options,
    url_store,
)
from ._zarrplan import (
    ATTRS_KEY,
    META_KEY,
    Meta,
    check_compressors,
    check_group,
    check_rows,
    parse_meta,
)
from ._zarrread import ZarrSource, as_zarr_store, is_zarr_store, list_groups, open_zarr

__all__ = ["ZarrSource", "ZarrStore", "is_zarr_store", "list_groups", "open_zarr"]

#: the most dimensions of a field in sharded arrays: a shard's index is an
#: array of the chunk grid's dimensions (the frame axis too) and one more
_MAX_SHARDED_NDIM = MAX_NDIM - 1

#: Blocks (chunks or shards) in flight at once through zarr's API (non-local
#: stores: memory, S3): each is one PUT on an object store, and the HTTP pool of
#: an s3:// store gets as many connections. Chosen with ``benchmarks/s3.py
#: --sweep`` against a local S3 server answering each PUT 20 ms late: with
#: 256 KiB chunks 1/4/16/32/64 in flight wrote 1.0/3.1/5.7/6.2/5.6x as fast as
#: one at a time (16-64 within the noise, 32 the best in two runs); 8 MiB chunks
#: never had more than 3 in flight. 32 x 20 ms PUTs is 1,600 PUT/s, under S3's 3,500
#: per prefix (docs/guides/writers.md, "Object-store defaults").
_MAX_CONCURRENT_BLOCKS = 32


def _from_url(
    store: object, storage_options: Mapping[str, Any] | None
) -> tuple[object, str | None, dict[str, Any] | None]:
    """``(store to write, URL, storage options)``: for an object-store URL, the
    zarr store made for it; for a local path (or ``file://`` URL), the path
    made absolute now (see :func:`snapsink._checks.absolute_path`); else ``store`` as
    given; no URL for either.

    Raises
    ------
    ConfigError
        Bad ``storage_options`` (see :func:`._zarrobject.url_store`), or any
        given with a store that is not a URL.
    """
    if is_url(store):
        assert isinstance(store, str)
        made = url_store(  # checks the options
            store, storage_options, read_only=False, connections=_MAX_CONCURRENT_BLOCKS
        )
        return made, store, dict(storage_options or {})
    if storage_options is not None:
        raise ConfigError(
            "storage_options: only for a URL store such as 's3://bucket/run.zarr', "
            f"got store {store!r}"
        )
    if isinstance(store, str | os.PathLike) and isinstance(path := os.fspath(store), str):
        return absolute_path(file_url_path(path)), None, None
    return store, None, None


class ZarrStore:
    """A store writing frames into a Zarr v3 group, one array per field.

    Frames are buffered in host memory (at most one chunk, or one shard when
    sharding, per array, plus the blocks being written) and written in whole
    blocks; arrays grow by doubling in whole blocks and are trimmed to the
    committed count at close. Metadata (count, schema, dropped steps, attrs) is
    written to the group's attributes after the data: commit-last.

    On a local directory, blocks of every array are encoded by the array's own
    zarr codec pipeline and written by a thread pool sized to the cores, each to
    a temporary file renamed into place (fsynced first when it replaces a
    chunk); an uncompressed, unsharded array instead takes each frame's rows at
    their offset in its chunk file (made durable at the commit, before the
    metadata). On other zarr stores, blocks go through zarr's array API, many at once.

    Parameters
    ----------
    store
        A path (a zarr ``LocalStore`` is made on it; a relative path is taken
        against the working directory when the store is made, and a
        ``file://`` URL names its local path), an object-store URL such
        as ``"s3://bucket/run.zarr"`` (a zarr ``FsspecStore``; the ``s3`` extra
        installs s3fs), or any zarr v3 ``Store`` (``LocalStore``,
        ``MemoryStore``, ``FsspecStore``, ...).
    mode
        ``"x"``: create, fail if a zarr node exists at the group's path (default);
        ``"w"``: replace that group (other groups of the store are untouched; a
        directory holding files that are not zarr's is refused);
        ``"a"``: append after the committed frames (created when missing).
    group
        Path of the group inside the store (``"thermo"``, ``"run1/frames"``);
        ``None`` for the root. Several stores may write different groups of one
        store path concurrently.
    attrs
        JSON user metadata (group attribute ``"attrs"``): str, int, float,
        bool, None, lists and str-keyed dicts; NumPy scalars and arrays are
        converted (``np.int64`` to ``int``, arrays with ``tolist()``), tuples
        become lists; NaN and infinity are refused. With ``"a"`` they update
        the stored attrs.
    static
        Arrays written once into the ``static`` subgroup (masses, a grid).
    chunk_frames
        Frames per chunk of every frame-indexed array. ``None`` picks, per array,
        from the bytes of a frame (see ``docs/formats/zarr.md``).
    shard_frames
        Frames per shard (a multiple of ``chunk_frames``); ``None``: no sharding.
        Sharded fields have at most 62 dimensions (63 without).
    compressors
        Passed to zarr's ``create_array``. ``None`` (default): uncompressed, the
        fastest to write and the easiest for other tools; ``"auto"``: zarr's
        default (zstd); or codecs such as ``zarr.codecs.BloscCodec()``.
    commit_every, commit_seconds
        ``append`` commits once this many frames, or this many seconds, have
        passed since the last commit; when no frame comes, the sink's writer
        commits once ``commit_seconds`` passed (:meth:`commit_due_in`);
        ``commit_seconds=None``: on frame count (and ``commit()``) only.
    storage_options
        For a URL ``store``: fsspec's options for its filesystem (for S3,
        s3fs's: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``, ...).
    comm
        Many ranks, one trajectory: an mpi4py communicator or a
        ``torch.distributed`` process group. Every rank builds its store with
        the same path and arguments and its own ``region``, and writes its own
        sink; see ``docs/guides/many-ranks.md`` (rules: policy ``"block"``,
        the same steps on every rank, ``flush()``/``close()`` called by all
        ranks together; a local path only; ``commit_seconds`` must be None).
    region
        With ``comm``: this rank's block of each decomposed field, as slices of
        the global per-frame array, e.g. ``{"rho": (slice(0, 64), slice(64, 128))}``.
        Ragged fields hold each rank's rows (frame ``i`` reads as the
        concatenation over ranks, in rank order); other fields, steps and times
        are written by rank 0 alone.
    chunks
        With ``comm``: spatial chunk shapes of decomposed fields; default, per
        dimension, the largest divisor of every rank boundary.
    direct_io
        On a local directory, rows written in place into an uncompressed
        chunk file go out with ``O_DIRECT`` when a run is at least 1 MiB and
        page aligned (the disk reads them from the writer's memory, no copy
        into the page cache); ``False``: always through the page cache. The
        bytes stored and the durability are the same either way.

    Raises
    ------
    ConfigError
        For an invalid mode, group, chunking, attrs, static array or commit setting.
    DTypeError
        A static array of a dtype Zarr cannot hold (float128, complex256).

    Notes
    -----
    Durability: on a ``LocalStore`` every chunk file written since the last
    commit and every directory whose entries changed are fsynced before the
    metadata is updated; metadata files are fsynced before they are renamed.
    On other stores, durability is the store's (object stores make each put
    atomic and durable on success): every chunk of a commit is PUT, many at
    once, and awaited before the group's ``zarr.json`` (the count) is PUT. On
    S3 the group is created with a conditional PUT (``If-None-Match``), so
    of two writers creating one group, the second is refused; there is no
    lock on an existing group (``mode="a"``): run one writer per group.
    ``mode="a"`` ignores ``chunk_frames``, ``shard_frames`` and ``compressors``:
    the existing arrays keep theirs.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | ZarrStoreLike,
        mode: str = "x",
        *,
        group: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
        chunk_frames: int | None = None,
        shard_frames: int | None = None,
        compressors: Any = None,
        commit_every: int = 1024,
        commit_seconds: float | None = 5.0,
        storage_options: Mapping[str, Any] | None = None,
        comm: object = None,
        region: Mapping[str, Any] | None = None,
        chunks: Mapping[str, tuple[int, ...]] | None = None,
        direct_io: bool = True,
    ):
        if comm is None and (region is not None or chunks is not None):
            raise ConfigError("region and chunks: only with comm (many ranks, one store)")
        self._mode = check_mode(mode)
        #: the URL and its storage options, for a store made from a URL
        target, self._url, self._storage_options = _from_url(store, storage_options)
        if isinstance(target, ZarrStoreLike) and target.read_only:
            raise ConfigError(
                f"store: expected a writable zarr store, got {target!r}, which is read-only "
                "(made with read_only=True); give a store made with read_only=False, or a path"
            )
        self._store, self._root = local_store(as_zarr_store(target, read_only=False))
        self._path = check_group(group) if group != "" else ""
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        for name, value in self._static.items():
            check_zarr_dtype(value.dtype, f"static {name!r}")
        self._chunk_frames = check_rows(chunk_frames, "chunk_frames")
        self._shard_frames = check_rows(shard_frames, "shard_frames")
        if self._chunk_frames and self._shard_frames and self._shard_frames % self._chunk_frames:
            raise ConfigError(
                f"shard_frames: expected a multiple of chunk_frames={self._chunk_frames}, "
                f"got {self._shard_frames}"
            )
        self._compressors = check_compressors(compressors)
        zstd_encoder()  # a bad SNAPSINK_ZSTD_ENCODER fails here, not in the writer
        self._commit_every = positive_int(commit_every, "commit_every")
        self._commit_seconds = check_commit_seconds(commit_seconds)
        self._group: Any = None
        self._meta = Meta()
        self._columns: dict[str, Column] = {}
        #: open() found the group already there (it may hold uncommitted arrays)
        self._reopened = False
        self._frames = 0  # appended (committed or not)
        if not isinstance(direct_io, bool):
            raise ConfigError(f"direct_io: expected True or False, got {direct_io!r}")
        self._direct_io = direct_io
        self._io = BlockIO(self._root, _MAX_CONCURRENT_BLOCKS, direct_io)
        self._last_commit = time.monotonic()
        #: the frames the last commit started covers (it may still run, see _settle)
        self._commit_target = 0
        #: steps were dropped since the last commit started
        self._dropped_pending = False
        #: a commit running in the background, on the writer's loop (see append)
        self._background: asyncio.Task[None] | None = None
        self._state = "new"  # new -> open -> closed; "failed" after a failed write
        self._lock: StoreLock | None = None  # the single-writer lock, from open to close

    def __new__(cls, *args: Any, comm: object = None, **kwargs: Any) -> ZarrStore:
        # ZarrStore(..., comm=comm) is the store of one rank of many
        # (stores/_zarrparallel.py): a subclass, so the single-writer class keeps
        # its own life cycle and the rank's store adds the collectives.
        if comm is not None and cls is ZarrStore:
            from ._zarrparallel import ParallelZarrStore

            return super().__new__(ParallelZarrStore)
        return super().__new__(cls)

    def describe(self) -> StoreSpec | None:
        """How a writer process builds this store again, or None when it cannot.

        Returns
        -------
        StoreSpec or None
            For a local directory (a path or a ``LocalStore``) or a URL whose
            ``storage_options`` are plain data (str, numbers, bool, None, lists
            and str-keyed dicts of them), ``ZarrStore`` and its arguments; ``None``
            for other zarr stores (in memory, a store object), which the sink
            then writes from a thread of its own process.
        """
        if type(self).__init__ is not ZarrStore.__init__:
            return None  # a subclass with an __init__ of its own must describe itself
        extra: dict[str, Any] = {}
        if self._url is not None:
            if not is_plain(self._storage_options):
                return None  # a credentials object, a session: not rebuilt elsewhere
            where = self._url
            extra = {"storage_options": self._storage_options}
        elif self._root is not None:
            where = str(self._root.resolve())
        else:
            return None
        return StoreSpec(
            type(self),
            (where, self._mode),
            {
                **extra,
                "group": self._path or None,
                "attrs": self._attrs,
                "static": self._static,
                "chunk_frames": self._chunk_frames,
                "shard_frames": self._shard_frames,
                "compressors": self._compressors,
                "commit_every": self._commit_every,
                "commit_seconds": self._commit_seconds,
                "direct_io": self._direct_io,
            },
        )

    def __repr__(self) -> str:
        where = self._root if self._root is not None else self._url or type(self._store).__name__
        return f"<ZarrStore {where} group={self._path or '/'!r} mode={self._mode!r}>"

    # Deliberate parallel of NpyDirectory.add_metadata (npy.py), HostMemory.add_metadata
    # (memory.py) and HDF5Store.add_metadata (hdf5.py): each store documents its own
    # method (here: the Zarr dtype check).
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
            A static array of a dtype Zarr cannot hold; nothing is changed.
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
            check_zarr_dtype(value.dtype, f"static {name!r}")
        self._attrs, self._static = new_attrs, new_static

    def check_schema(self, schema: Schema) -> None:
        """Refuse, before anything is written, a schema this store cannot hold.

        I/O-free, so a sink may call it where the schema is fixed (at the first
        ``write``); :meth:`prepare` calls it too.

        Raises
        ------
        DTypeError
            A field's dtype has no Zarr v3 data type (float128, complex256).
        SchemaError
            With ``shard_frames``, a field of more than 62 dimensions: zarr
            indexes a shard with an array of two more than the chunks' (the
            frame axis and one), and numpy holds 64.
        """
        check_zarr_dtypes(schema, repr(self))
        if self._shard_frames:
            for name, f in schema.items():
                if len(f.shape) > _MAX_SHARDED_NDIM:
                    raise SchemaError(
                        f"{self!r}: field {name!r}: expected at most {_MAX_SHARDED_NDIM} "
                        f"dimensions with shard_frames (zarr's shard index has two more, "
                        f"and numpy holds 64), got {len(f.shape)}; nothing was written: "
                        "reshape the field, or write without shard_frames"
                    )

    # -- Store protocol -----------------------------------------------------
    #: close() commits what was appended (the sink skips the commit before it)
    commits_on_close = True

    # Deliberate parallel of HDF5Store.open (hdf5.py): each store documents its own
    # open, whose Returns section reads the same for every resumable store.
    async def open(self) -> Resume | None:
        """Claim the group, honouring the mode; write static arrays and attrs.

        Returns
        -------
        Resume or None
            What is stored, for ``mode="a"`` on an existing group with a schema.

        Raises
        ------
        StoreExistsError
            ``mode="x"`` and a zarr node (or the leftovers of an interrupted
            first commit) exists at the group's path; ``"x"``/``"w"`` on a
            directory holding files that are not zarr's.
        FormatError
            ``mode="a"`` on a group that is not a snapsink store or is corrupt,
            or on a directory holding files that are not zarr's.
        """
        if self._state != "new":
            raise StoreStateError(f"{self!r}: open() called twice")
        try:
            await check_parents(self._store, self._path, repr(self))
            if self._mode == "w":
                # (before the claim of a local group, which empties it for "w")
                await check_replaceable(self._store, self._path, repr(self))
        except BaseException as exc:
            await self._close_session()
            refused = refused_options(exc, repr(self))
            if refused is not None:
                raise refused from exc
            raise
        if self._root is not None:
            self._lock = await asyncio.to_thread(
                claim_group_dir, self._root, self._path, self._mode, repr(self)
            )
            self._lock_finalizer = weakref.finalize(self, self._lock.release)
        try:
            return await self._open_claimed()
        except BaseException as exc:
            self._release_lock()
            await self._close_session()
            refused = refused_options(exc, repr(self))  # the first request builds the session
            if refused is not None:
                raise refused from exc
            raise

    async def _open_claimed(self) -> Resume | None:
        exists = await node_exists(self._store, self._path)
        if exists and self._mode == "x":
            raise StoreExistsError(
                f"{self!r}: a zarr node already exists at group {self._path or '/'!r}; "
                "pass mode='w' to replace it or mode='a' to append to it"
            )
        if exists and self._mode == "w":
            await delete_group(self._store, self._root, self._path)
            exists = False
        resume: Resume | None = None
        if exists:
            resume = await self._open_existing()
        else:
            self._group = await create_group(
                self._store, self._path, self._attributes(), repr(self)
            )
        self._state = "open"
        await write_static(self._group, self._static, self._compressors)
        await self._write_meta()
        return resume

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        """Create the arrays of ``schema`` (or check it against the stored one).

        Raises
        ------
        DTypeError
            A field's dtype has no Zarr v3 data type (nothing is written).
        SchemaError
            The group holds frames of another schema, or disagrees on times.
        """
        self._check_usable()
        self.check_schema(schema)
        stored = self._meta.schema
        if stored is not None:
            if stored != schema:
                raise SchemaError(
                    f"{self!r}: the group holds frames of {stored!r}; got {schema!r} "
                    "(append with the same schema, or use mode='w' to replace the group)"
                )
            if self._meta.count and self._meta.times != times:
                had = "with" if self._meta.times else "without"
                raise SchemaError(
                    f"{self!r}: the stored frames are {had} times; new frames must be too"
                )
            if self._columns and self._meta.times == times:
                return
        # The arrays are created without their fsyncs (three an array, one after
        # another: most of the first frame's wait), and named by no commit yet:
        # the first commit syncs them before its attributes name the schema. A
        # crash before it leaves the group as open() made it, and the next
        # prepare replaces the arrays.
        durable = self._store if isinstance(self._store, DurableLocalStore) else None
        with durable.deferred() if durable is not None else contextlib.nullcontext():
            self._columns = await create_columns(
                self._group,
                schema,
                times=times,
                chunk_frames=self._chunk_frames,
                shard_frames=self._shard_frames,
                compressors=self._compressors,
                root=self._root,
                leftovers=self._reopened,
            )
        for col in self._columns.values():
            if col.plan.name.endswith(".offsets"):  # offsets start at 0
                await self._io.write([(col, b) for b in col.buf.push(np.zeros(1, np.int64))])
        self._meta.schema = schema
        self._meta.times = times
        if durable is None:
            await self.commit()

    async def append(self, batch: Batch) -> None:
        """Buffer ``batch`` and write every block it fills; commit when due.

        A commit due here (``commit_every``, ``commit_seconds``) runs in the
        background on a local directory, while the next batches are appended:
        see :meth:`_start_background_commit`.
        """
        self._check_usable()
        if self._background is not None and self._background.done():
            await self._settle()  # its failure fails this append
        self._meta.dropped.add_all(batch.dropped_steps)
        if batch.dropped_steps:
            self._dropped_pending = True
        frames = batch.frames
        if frames:
            schema = self._meta.schema
            if schema is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            try:
                writes = blocks_of(
                    self._columns, schema, frames, times=bool(self._meta.times), who=repr(self)
                )
                await self._io.write(*writes)
            except BaseException:
                # Columns may now disagree; keep the last commit as the truth.
                self._state = "failed"
                raise
            self._frames += len(frames)
            # frames of steps dropped before a resume: no longer dropped (this
            # goes to disk with the frames' own count, at their commit)
            self._meta.dropped.discard_stored(f.step for f in frames)
        if self._commit_due(bool(batch.dropped_steps)):
            if not self._in_background():
                await self.commit()
            elif self._background is None:
                self._start_background_commit()
            # else one is in flight: this one starts at a later append, once it ended

    async def commit(self) -> None:
        """Write partial blocks, make them durable, then the metadata (commit-last).

        Every frame appended is durable and visible when it returns (a commit
        still running in the background ends first)."""
        self._check_usable()
        await self._settle()
        try:
            await self._commit_steps(*self._snapshot(background=False))
        except BaseException:
            self._state = "failed"
            raise
        self._last_commit = time.monotonic()

    # -- commits in the background ---------------------------------------------
    @property
    def background(self) -> bool:
        """A commit runs in the background: the writer calls :meth:`settle` when
        it has nothing else to do, so that the commit ends without waiting for
        the next frame (the writer's loop runs only while it calls the store)."""
        return self._background is not None

    async def settle(self, budget: float | None = None) -> None:
        """Let a commit running in the background end (raise what it raised);
        then commit what fell due meanwhile (it waited for this one).

        ``budget``: give it at most that many seconds, then return (the writer's look
        while it has nothing to store: it comes back for new frames, and calls
        again); a commit due then starts in the background in its turn. None:
        wait until every commit that was due has ended.
        """
        task = self._background
        if task is not None and budget is not None:
            await asyncio.wait([task], timeout=budget)
            if not task.done():
                return
        await self._settle()
        if self._state == "open" and self._commit_due(False):
            if budget is not None and self._in_background():
                self._start_background_commit()
            else:
                await self.commit()

    def _commit_due(self, dropped: bool) -> bool:
        """Whether the commit policy asks for a commit now (``dropped``: steps
        were dropped since the last commit)."""
        pending = self._frames - self._commit_target
        return pending >= self._commit_every or (
            self._commit_seconds is not None
            and bool(pending or dropped or self._dropped_pending)
            and time.monotonic() - self._last_commit >= self._commit_seconds
        )

    def commit_due_in(self) -> float | None:
        """Seconds until ``commit_seconds`` asks for a commit of what was
        appended since the last commit started (0 or less: due now); None when
        nothing waits for one, or with ``commit_seconds=None``. The writer
        commits then if no append came first (see :class:`~snapsink.Store`).
        A plain method: the writer calls it between store calls."""
        if (
            self._commit_seconds is None
            or self._state != "open"
            or not (self._frames > self._commit_target or self._dropped_pending)
        ):
            return None
        return self._last_commit + self._commit_seconds - time.monotonic()

    def _in_background(self) -> bool:
        """Whether commits due in ``append`` may run in the background: a local
        directory (whose block writer lands the writes of one chunk in the order
        they were made: a partly filled block a commit writes never replaces
        the whole block appended after it, see ``_zarrio.Landings``); one writer
        per group (a many-rank store's commits are collectives)."""
        return (
            self._root is not None and type(self)._commits_in_background and bool(self._columns)
        )

    #: a subclass whose commits must run where they are called sets this False
    _commits_in_background = True

    def _start_background_commit(self) -> None:
        """Commit the frames appended so far while the next ones are appended.

        What the commit names is taken now: the count, each array's length and
        the group's attributes; frames appended meanwhile wait for the next
        commit. Its steps are those of :meth:`commit`, in the same order (rows
        durable, arrays shown at the count, the attributes last), so a crash at
        any moment leaves the last commit or this one, never a mix.
        """
        self._last_commit = time.monotonic()
        self._background = asyncio.ensure_future(
            self._commit_steps(*self._snapshot(background=True))
        )

    def _snapshot(
        self, *, background: bool
    ) -> tuple[int, dict[str, int], dict[str, Any], list[Partial]]:
        """What a commit starting now names: every frame appended, each array's
        length, the group's attributes with that count, and each array's partly
        filled last block (copied for a commit in the ``background``); marks it
        started."""
        count = self._commit_target = self._frames
        self._dropped_pending = False
        lengths = {name: col.length for name, col in self._columns.items()}
        attrs = self._attributes()
        attrs[META_KEY] = {**attrs[META_KEY], "count": count}
        parts = self._io.partials(self._columns.values(), copy=background)
        return count, lengths, attrs, parts

    async def _commit_steps(
        self, count: int, lengths: dict[str, int], attrs: dict[str, Any], parts: list[Partial]
    ) -> None:
        """A commit's steps for a :meth:`_snapshot`, in the commit-last order:
        rows (and partial blocks) durable, arrays shown at the count, then the
        attributes naming it. Run by :meth:`commit`, or in the background."""
        await self._io.flush(self._columns.values(), parts)
        if self._root is not None:
            await asyncio.to_thread(check_not_removed, self._root, self._path, repr(self))
        if isinstance(self._store, DurableLocalStore) and self._store.has_deferred:
            await asyncio.to_thread(self._store.sync_deferred)  # the arrays prepare made
        await self._io.show_committed(self._columns.values(), lengths)
        await self._group.update_attributes(attrs)
        self._meta.count = count

    async def _settle(self) -> None:
        task, self._background = self._background, None
        if task is None:
            return
        try:
            await task
        except BaseException:
            self._state = "failed"
            raise

    async def close(self) -> None:
        """Commit, trim the arrays to the committed frames, and mark the group closed.

        After a failed write nothing more is written: the last commit stands.
        """
        if self._state != "open":
            self._state = "closed"
            if self._background is not None:
                # a failed store: its commit running in the background ends
                # first (its error was or will be reported by the failure)
                with contextlib.suppress(Exception):
                    await self._settle()
            await self._io.stop()
            self._release_lock()
            await self._close_session()
            return
        try:
            # A local directory's commit shows every array at the count: nothing
            # is left to trim, and the commit's own attributes mark the group
            # closed (one metadata write and its fsyncs fewer). Elsewhere the
            # arrays are trimmed first, then marked.
            local = self._root is not None
            self._meta.closed = local
            try:
                await self.commit()
            except BaseException:
                self._meta.closed = False
                raise
            if not local:
                await self._io.trim(self._columns.values())
                self._meta.closed = True
                await self._write_meta()
        finally:
            self._state = "closed"
            await self._io.stop()
            self._release_lock()
            await self._close_session()

    async def _close_session(self) -> None:
        """The HTTP session of a store this ZarrStore made from a URL (not a
        store object the caller passed: that one is the caller's)."""
        if self._url is not None:
            await close_session(self._store)

    # -- internals ------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            raise StoreStateError(f"{self!r}: open() must come first")
        if self._state == "failed":
            raise StoreStateError(
                f"{self!r}: an earlier write failed; the store takes no more frames"
            )
        raise StoreStateError(f"{self!r}: the store is closed")

    def _attributes(self) -> dict[str, Any]:
        return {META_KEY: self._meta.to_json(), ATTRS_KEY: self._attrs}

    async def _write_meta(self) -> None:
        # Through DurableLocalStore on a local directory: fsynced, then renamed.
        await self._group.update_attributes(self._attributes())

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _open_existing(self) -> Resume | None:
        self._group = await open_group(self._store, self._path, repr(self))
        self._reopened = True
        attrs = dict(self._group.attrs)
        if META_KEY not in attrs:
            await check_adoptable(self._group, self._path, repr(self))
            meta, user = Meta(), dict[str, Any]()
        else:
            meta, user = parse_meta(attrs, repr(self))
        self._meta = meta
        self._meta.closed = False
        self._attrs = {**user, **self._attrs}
        self._frames = self._commit_target = meta.count
        if meta.schema is None:
            return None
        times = bool(meta.times)
        self._columns = await load_columns(
            self._group, meta.schema, times=times, count=meta.count, root=self._root, who=repr(self)
        )
        if not meta.count:
            return Resume(schema=meta.schema, count=0)
        last_step = int(await last_row(self._columns["steps"], meta.count))
        last_time = float(await last_row(self._columns["times"], meta.count)) if times else None
        return Resume(meta.schema, meta.count, last_step, last_time, times)


# ZarrStore.__new__ only picks the class (one rank of many when comm is given):
# the signature users see (help(), inspect.signature, the docs) is __init__'s.
_init_params = list(inspect.signature(ZarrStore.__init__).parameters.values())[1:]
setattr(  # noqa: B010 - a class attribute inspect reads, set once its __init__ exists
    ZarrStore, "__signature__", inspect.Signature(_init_params)
)
del _init_params
