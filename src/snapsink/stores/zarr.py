"""ZarrStore: frames into a Zarr v3 group, written with zarr-python's async API.

The layout (one array per field, chunked along frames, bookkeeping in the
group's attributes, commit-last) is specified in ``docs/formats/zarr.md``; the
I/O-free decisions live in :mod:`._zarrplan`.

The writer side (:class:`ZarrStore`) is a :class:`~snapsink.Store` whose methods
are coroutines, awaited on the sink writer's own asyncio loop (in the writer
process, or the writer thread): zarr-python is the format authority (metadata,
codecs, chunk keys) and asyncio-only, and the simulation's own event loop, on
any backend, never runs them. On a local directory, whole blocks of every array
are encoded with each array's own zarr codec pipeline and written durably by a
thread pool (:mod:`._zarrio`), and the rows of an uncompressed array go
straight from the frames into their chunk files (:mod:`._zarrcolumns`); on
other zarr stores (memory, remote) blocks go through zarr's async array API,
many at a time. Either way the loop never blocks.

The reader side (:class:`ZarrSource`, :func:`open_zarr`, :func:`list_groups`,
:func:`is_zarr_store`) runs in user code and uses zarr's sync API.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.abc.store import Store as ZarrStoreLike
from zarr.core.dtype import get_data_type_from_native_dtype
from zarr.errors import (
    ContainsArrayError,
    ContainsGroupError,
    NodeNotFoundError,
    NodeTypeValidationError,
)
from zarr.storage import LocalStore

from .._checks import commit_seconds as check_commit_seconds
from .._errors import (
    ConfigError,
    DTypeError,
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreStateError,
)
from .._schema import Batch, Schema
from .._store import Resume, StoreSpec
from ._common import check_attrs, check_mode, check_static, merge_metadata
from ._lock import StoreLock, acquire_dir_lock
from ._zarrclaim import NODE_KEYS, claim_local_dir, remove_tree_contents
from ._zarrcolumns import Column, Run, blocks_of, in_place
from ._zarrio import (
    BlockWriter,
    DurableLocalStore,
    first_error,
)
from ._zarrobject import (
    Inflight,
    close_session,
    create_group_if_absent,
    is_plain,
    is_url,
    url_store,
)
from ._zarrread import ZarrSource, as_zarr_store, is_zarr_store, list_groups, open_zarr

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

from ._zarrplan import (
    ATTRS_KEY,
    META_KEY,
    STATIC_GROUP,
    ArrayPlan,
    Block,
    Meta,
    RowBuffer,
    check_group,
    check_rows,
    grow_capacity,
    parse_meta,
    plan_arrays,
)

__all__ = ["ZarrSource", "ZarrStore", "is_zarr_store", "list_groups", "open_zarr"]

#: Every chunk is written, even one equal to the fill value: a snapsink chunk is
#: data, and skipping it would turn a rewrite of a chunk into a deletion.
_ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
#: Blocks (chunks or shards) in flight at once through zarr's API (non-local
#: stores: memory, S3): each is one PUT on an object store. Chosen with
#: ``benchmarks/s3.py`` against a local S3 server (see docs/guides/writers.md).
_MAX_CONCURRENT_BLOCKS = 32


def _key(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _local_store(store: ZarrStoreLike) -> tuple[ZarrStoreLike, Path | None]:
    """A LocalStore becomes a :class:`DurableLocalStore` on the same root (fsync
    before rename); the root, or None for any other store."""
    if isinstance(store, LocalStore):
        if not isinstance(store, DurableLocalStore):
            store = DurableLocalStore(store.root, read_only=store.read_only)
        return store, Path(store.root)
    return store, None


def check_zarr_dtypes(schema: Schema, where: str = "ZarrStore") -> None:
    """Refuse a schema with a dtype that Zarr v3 cannot hold (float128, complex256).

    Raises
    ------
    DTypeError
        Naming the field, its dtype and what Zarr holds instead.
    """
    for name, fld in schema.items():
        _check_zarr_dtype(fld.dtype, f"{where}: field {name!r}")


def _check_zarr_dtype(dtype: np.dtype[Any], what: str) -> None:
    try:
        get_data_type_from_native_dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise DTypeError(
            f"{what}: dtype {dtype} cannot be stored in Zarr v3 (it holds bool, "
            "int8-int64, uint8-uint64, float16/32/64 and complex64/128); cast the "
            "field, e.g. to float64 or complex128, or use NpyDirectory"
        ) from exc


async def _gather(aws: Sequence[Awaitable[None]]) -> None:
    """Await ``aws`` concurrently; failures are raised as the first OSError (see
    :func:`._zarrio.first_error`), never as an ExceptionGroup."""
    if len(aws) == 1:
        await aws[0]
        return
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise first_error(errors)


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
        A path (a zarr ``LocalStore`` is made on it), an object-store URL such
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
    compressors
        Passed to zarr's ``create_array``. ``None`` (default): uncompressed, the
        fastest to write and the easiest for other tools; ``"auto"``: zarr's
        default (zstd); or codecs such as ``zarr.codecs.BloscCodec()``.
    commit_every, commit_seconds
        ``append`` commits once this many frames, or this many seconds, have
        passed since the last commit; ``commit_seconds=None``: on frame count
        (and ``commit()``) only.
    storage_options
        For a URL ``store``: fsspec's options for its filesystem (for S3,
        s3fs's: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``, ...).

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
    ):
        self._mode = check_mode(mode)
        self._url: str | None = None
        self._storage_options: dict[str, Any] | None = None
        if is_url(store):
            assert isinstance(store, str)
            store_url = store
            store = url_store(  # checks the options
                store_url, storage_options, read_only=False, connections=_MAX_CONCURRENT_BLOCKS
            )
            self._url, self._storage_options = store_url, dict(storage_options or {})
        elif storage_options is not None:
            raise ConfigError(
                "storage_options: only for a URL store such as 's3://bucket/run.zarr', "
                f"got store {store!r}"
            )
        self._store, self._root = _local_store(as_zarr_store(store, read_only=False))
        self._path = check_group(group) if group != "" else ""
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        for name, value in self._static.items():
            _check_zarr_dtype(value.dtype, f"static {name!r}")
        self._chunk_frames = check_rows(chunk_frames, "chunk_frames")
        self._shard_frames = check_rows(shard_frames, "shard_frames")
        if self._chunk_frames and self._shard_frames and self._shard_frames % self._chunk_frames:
            raise ConfigError(
                f"shard_frames: expected a multiple of chunk_frames={self._chunk_frames}, "
                f"got {self._shard_frames}"
            )
        self._compressors = compressors
        self._commit_every = check_rows(commit_every, "commit_every") or 1024
        self._commit_seconds = check_commit_seconds(commit_seconds)
        self._group: Any = None
        self._meta = Meta()
        self._columns: dict[str, Column] = {}
        self._frames = 0  # appended (committed or not)
        self._writer = BlockWriter(self._root) if self._root is not None else None
        #: block writes through zarr's API in flight (other stores than a local directory)
        self._inflight = Inflight(_MAX_CONCURRENT_BLOCKS)
        #: buffers handed over by RowBuffers, given back once their write is done
        self._lent: list[tuple[asyncio.Future[None], RowBuffer, np.ndarray[Any, Any]]] = []
        self._last_commit = time.monotonic()
        self._state = "new"  # new -> open -> closed; "failed" after a failed write
        self._lock: StoreLock | None = None  # the single-writer lock, from open to close

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
            },
        )

    def __repr__(self) -> str:
        where = self._root if self._root is not None else self._url or type(self._store).__name__
        return f"<ZarrStore {where} group={self._path or '/'!r} mode={self._mode!r}>"

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
            _check_zarr_dtype(value.dtype, f"static {name!r}")
        self._attrs, self._static = new_attrs, new_static

    def check_schema(self, schema: Schema) -> None:
        """Refuse, before anything is written, a schema this store cannot hold.

        I/O-free, so a sink may call it where the schema is fixed (at the first
        ``write``); :meth:`prepare` calls it too.

        Raises
        ------
        DTypeError
            A field's dtype has no Zarr v3 data type (float128, complex256).
        """
        check_zarr_dtypes(schema, repr(self))

    # -- Store protocol -----------------------------------------------------
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
        if self._root is not None:
            await anyio.to_thread.run_sync(self._claim_local_dir)
        try:
            return await self._open_claimed()
        except BaseException:
            self._release_lock()
            await self._close_session()
            raise

    async def _open_claimed(self) -> Resume | None:
        exists = await self._node_exists()
        if exists and self._mode == "x":
            raise StoreExistsError(
                f"{self!r}: a zarr node already exists at group {self._path or '/'!r}; "
                "pass mode='w' to replace it or mode='a' to append to it"
            )
        if exists and self._mode == "w":
            await self._delete_group()
            exists = False
        resume: Resume | None = None
        if exists:
            resume = await self._open_existing()
        elif await create_group_if_absent(self._store, self._path, self._attributes(), repr(self)):
            self._group = await za.open_group(
                self._store, path=self._path, mode="r+", zarr_format=3
            )
            parts = self._path.split("/") if self._path else []
            for k in range(len(parts)):  # the implicit parents, as zarr makes them
                parent = "/".join(parts[:k])
                if not await self._store.exists(_key(parent, "zarr.json")):
                    await za.open_group(self._store, path=parent, mode="a", zarr_format=3)
        else:
            try:
                self._group = await za.open_group(
                    self._store,
                    path=self._path,
                    mode="w-",
                    zarr_format=3,
                    attributes=self._attributes(),
                )
            except (ContainsGroupError, ContainsArrayError, FileExistsError) as exc:
                raise StoreExistsError(
                    f"{self!r}: a zarr node appeared at group {self._path or '/'!r} "
                    "while this store was opening it (another writer?)"
                ) from exc
        self._state = "open"
        await self._write_static()
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
        await self._create_arrays(schema, times)
        self._meta.schema = schema
        self._meta.times = times
        await self.commit()

    async def append(self, batch: Batch) -> None:
        """Buffer ``batch`` and write every block it fills; commit when due."""
        self._check_usable()
        self._meta.dropped.add_all(batch.dropped_steps)
        frames = batch.frames
        if frames:
            schema = self._meta.schema
            if schema is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            try:
                writes = blocks_of(
                    self._columns, schema, frames, times=bool(self._meta.times), who=repr(self)
                )
                await self._write_blocks(*writes)
            except BaseException:
                # Columns may now disagree; keep the last commit as the truth.
                self._state = "failed"
                raise
            self._frames += len(frames)
        pending = self._frames - self._meta.count
        if pending >= self._commit_every or (
            self._commit_seconds is not None
            and (pending or batch.dropped_steps)
            and time.monotonic() - self._last_commit >= self._commit_seconds
        ):
            await self.commit()

    async def commit(self) -> None:
        """Write partial blocks, make them durable, then the metadata (commit-last)."""
        self._check_usable()
        try:
            if self._writer is not None:
                await self._writer.drain()
            else:
                await self._inflight.drain()  # every chunk PUT before the metadata PUT
            parts: list[tuple[Column, int, np.ndarray[Any, Any]]] = []
            for col in self._columns.values():
                part = col.buf.partial()
                if part is not None:
                    parts.append((col, *part))
            if parts:
                await self._write_partials(parts)
            if self._writer is not None:
                await anyio.to_thread.run_sync(self._writer.sync)
            await self._check_not_removed()
            await self._show_committed()
            self._meta.count = self._frames
            await self._write_meta()
        except BaseException:
            self._state = "failed"
            raise
        self._last_commit = time.monotonic()

    async def close(self) -> None:
        """Commit, trim the arrays to the committed frames, and mark the group closed.

        After a failed write nothing more is written: the last commit stands.
        """
        if self._state != "open":
            self._state = "closed"
            await self._stop_writer()
            self._release_lock()
            await self._close_session()
            return
        try:
            await self.commit()
            for col in self._columns.values():
                length = col.length
                if col.capacity != length:
                    await col.array.resize((length, *col.plan.row_shape))
                    col.capacity = length
            self._meta.closed = True
            await self._write_meta()
        finally:
            self._state = "closed"
            await self._stop_writer()
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

    async def _stop_writer(self) -> None:
        """Wait for block writes still running (after a failure), then stop the pool."""
        if self._writer is not None:
            await self._writer.drain(raise_errors=False)
            self._writer.shutdown()
        await self._inflight.drain(raise_errors=False)
        self._lent.clear()

    async def _check_not_removed(self) -> None:
        """On a LocalStore, fail if the group vanished under the writer.

        Chunk writes recreate missing directories, so after someone removes the
        store the writer would carry on and rebuild a store whose earlier chunks
        are gone (read back as fill values): refuse to commit onto it instead.
        """
        if self._root is None:
            return
        meta = self._root / _key(self._path, "zarr.json")
        if not await anyio.to_thread.run_sync(meta.is_file):
            raise FileNotFoundError(
                errno.ENOENT,
                f"{self!r}: the group's zarr.json vanished while writing (the store was "
                "removed or moved); refusing to commit onto a partial store",
                str(meta),
            )

    async def _write_meta(self) -> None:
        # Through DurableLocalStore on a local directory: fsynced, then renamed.
        await self._group.update_attributes(self._attributes())

    async def _node_exists(self) -> bool:
        for name in NODE_KEYS:
            if await self._store.exists(_key(self._path, name)):
                return True
        return False

    def _claim_local_dir(self) -> None:
        """Take the group's single-writer lock, then say what its directory holds
        before zarr looks (worker thread).

        The lock is the directory itself (``flock``), not a file in it: zarr's
        readers warn about any file of the group that is not a node.
        """
        assert self._root is not None
        gdir = self._root / self._path if self._path else self._root
        if os.path.lexists(gdir) and not gdir.is_dir():
            claim_local_dir(gdir, self._mode, repr(self))  # says what is there
        gdir.mkdir(parents=True, exist_ok=True)
        lock = acquire_dir_lock(str(gdir), repr(self))
        try:
            claim_local_dir(gdir, self._mode, repr(self))
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._lock_finalizer = weakref.finalize(self, lock.release)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _delete_group(self) -> None:
        if self._root is not None:
            # Only zarr's own entries (_claim_local_dir refused anything else), in a
            # thread: LocalStore.delete_dir would run rmtree on the event loop.
            target = self._root / self._path if self._path else self._root
            await anyio.to_thread.run_sync(remove_tree_contents, target)
        else:
            await self._store.delete_dir(self._path)
            for name in NODE_KEYS:
                await self._store.delete(_key(self._path, name))

    async def _open_existing(self) -> Resume | None:
        try:
            self._group = await za.open_group(
                self._store, path=self._path, mode="r+", zarr_format=3
            )
        except (ContainsArrayError, NodeTypeValidationError, NodeNotFoundError) as exc:
            raise FormatError(
                f"{self!r}: the node at the group's path is not a zarr v3 group"
            ) from exc
        attrs = dict(self._group.attrs)
        if META_KEY not in attrs:
            # Adopt a plain group (e.g. the implicit parent of other groups), but
            # never one holding arrays or a 'static' member of its own.
            async for name, node in self._group.members():
                if isinstance(node, zarr.AsyncArray) or name == STATIC_GROUP:
                    raise FormatError(
                        f"{self!r}: group {self._path or '/'!r} holds zarr arrays that are "
                        "not a snapsink store; pick another group or use mode='w'"
                    )
            meta, user = Meta(), dict[str, Any]()
        else:
            meta, user = parse_meta(attrs, repr(self))
        self._meta = meta
        self._meta.closed = False
        self._attrs = {**user, **self._attrs}
        self._frames = meta.count
        if meta.schema is None:
            return None
        await self._load_columns(meta.schema, bool(meta.times))
        if not meta.count:
            return Resume(schema=meta.schema, count=0)
        last_step = int(await self._last_row("steps"))
        last_time = float(await self._last_row("times")) if meta.times else None
        return Resume(meta.schema, meta.count, last_step, last_time, bool(meta.times))

    async def _last_row(self, name: str) -> Any:
        """The last committed row of frame-indexed column ``name`` (count > 0)."""
        col = self._columns[name]
        row = col.buf.last()
        if row is None:  # the committed frames fill whole blocks: nothing is buffered
            count = self._meta.count
            row = np.asarray(await col.array.getitem(slice(count - 1, count)))[0]
        return row

    async def _load_columns(self, schema: Schema, times: bool) -> None:
        count = self._meta.count
        plans = plan_arrays(schema, times=times)  # names, dtypes, shapes, dims
        lengths: dict[str, int] = {}
        for plan in plans:
            try:
                arr = await self._group.getitem(plan.name)
            except KeyError as exc:
                raise FormatError(f"{self!r}: array {plan.name!r} is missing") from exc
            if not isinstance(arr, zarr.AsyncArray):
                raise FormatError(f"{self!r}: {plan.name!r} is not an array")
            if arr.dtype != plan.dtype or tuple(arr.shape[1:]) != plan.row_shape:
                raise FormatError(
                    f"{self!r}: array {plan.name!r} has dtype {arr.dtype} and shape {arr.shape}; "
                    f"expected {plan.dtype} and rows of shape {plan.row_shape}"
                )
            arr = arr.with_config(_ARRAY_CONFIG)
            shard = arr.shards[0] if arr.shards else None
            actual = ArrayPlan(
                plan.name, plan.dtype, plan.row_shape, arr.chunks[0], shard, plan.dims
            )
            if plan.name in lengths:
                length = lengths[plan.name]
            elif plan.name.endswith(".offsets"):
                length = count + 1
                if arr.shape[0] < length:
                    raise FormatError(f"{self!r}: array {plan.name!r} is shorter than {length}")
                last = np.asarray(await arr.getitem(slice(count, count + 1)))
                lengths[plan.name[: -len(".offsets")]] = int(last[0])
            else:
                length = count
            if arr.shape[0] < length or length < 0:
                raise FormatError(
                    f"{self!r}: array {plan.name!r} holds {arr.shape[0]} rows, fewer than "
                    f"the {length} committed"
                )
            empty = RowBuffer(plan.dtype, plan.row_shape, actual.block)
            col = Column(actual, arr, empty, self._root, in_place=in_place(schema, plan.name),
                          length=length)
            if col.direct is None:
                start = length - length % actual.block
                tail = None
                if length > start:
                    tail = np.asarray(await arr.getitem(slice(start, length)))
                col.buf = RowBuffer(plan.dtype, plan.row_shape, actual.block, length, tail)
            self._columns[plan.name] = col

    async def _create_arrays(self, schema: Schema, times: bool) -> None:
        self._columns = {}
        plans = plan_arrays(
            schema, times=times, chunk_frames=self._chunk_frames, shard_frames=self._shard_frames
        )
        for plan in plans:
            arr = await self._group.create_array(
                plan.name,
                shape=(0, *plan.row_shape),
                dtype=plan.dtype,
                chunks=plan.chunks,
                shards=plan.shards,
                compressors=self._compressors,
                dimension_names=plan.dims,
                overwrite=True,
                config=_ARRAY_CONFIG,
            )
            buf = RowBuffer(plan.dtype, plan.row_shape, plan.block)
            col = Column(plan, arr, buf, self._root, in_place=in_place(schema, plan.name))
            self._columns[plan.name] = col
            if plan.name.endswith(".offsets"):  # offsets start at 0
                await self._write_blocks([(col, b) for b in col.buf.push(np.zeros(1, np.int64))])

    async def _write_static(self) -> None:
        if not self._static:
            return
        sg = await self._group.require_group(STATIC_GROUP)
        existing = {name async for name in sg.array_keys()}
        for name, value in self._static.items():
            if name in existing:
                continue  # written once: mode="a" keeps what is there
            arr = await sg.create_array(
                name,
                shape=value.shape,
                dtype=value.dtype,
                chunks=tuple(max(1, n) for n in value.shape),
                compressors=self._compressors,
                dimension_names=tuple(f"static_{name}_dim_{k}" for k in range(value.ndim)),
                config=_ARRAY_CONFIG,
            )
            await arr.setitem(..., value)  # through DurableLocalStore when local

    # -- blocks ---------------------------------------------------------------
    async def _grow(self, col: Column, stop: int) -> None:
        """Room for rows up to ``stop`` before zarr's own writes (which refuse rows
        past an array's shape). The block writer of a local directory places its
        chunks itself, so there every array keeps the committed shape (see
        :meth:`_show_committed`)."""
        if self._writer is None and stop > col.capacity:
            new = grow_capacity(col.capacity, stop, col.plan.block)
            await col.array.resize((new, *col.plan.row_shape))
            col.capacity = new

    async def _show_committed(self) -> None:
        """Give every array the shape of what this commit holds, before the group's
        metadata names the count: plain zarr and xarray readers then see arrays
        of one length (``frame``) at any moment, mid-run or after a crash, never
        rows past the count (a local directory; other stores trim at close)."""
        if self._writer is None:
            return
        await _gather([
            self._resize(col, col.length)
            for col in self._columns.values()
            if col.capacity != col.length
        ])

    @staticmethod
    async def _resize(col: Column, length: int) -> None:
        # only ever grows here: no chunk is outside the new shape
        await col.array.resize((length, *col.plan.row_shape), delete_outside_chunks=False)
        col.capacity = length

    async def _write_blocks(
        self, blocks: list[tuple[Column, Block]], runs: Sequence[Run] = ()
    ) -> None:
        """Write full, block-aligned runs of rows, and rows in place: all at once,
        whatever their array.

        Local: each block, and each run of rows, goes to the block writer; rows
        that are views of the caller's frames are waited for before returning
        (the sink reuses their memory), owned rows may still be written while the
        next batch arrives.
        """
        self._give_back_buffers()
        if not blocks and not runs:
            return
        for col, (start, rows, _) in blocks:
            await self._grow(col, start + len(rows))
        for run in runs:
            await self._grow(run[0], run[0].length)
        if self._writer is None:
            await self._write_blocks_generic(blocks)
            return
        borrowed: list[asyncio.Future[None]] = []
        for col, index, row, arrays, full, owned in runs:
            assert col.target is not None
            fut = await self._writer.submit_rows(col.target, index, row, arrays, full=full)
            if not owned:
                borrowed.append(fut)
        for col, (start, rows, owned) in blocks:
            assert col.target is not None
            size = col.plan.block
            for k in range(0, len(rows), size):
                fut = await self._writer.submit(col.target, (start + k) // size, rows[k : k + size])
                if not owned:
                    borrowed.append(fut)
            if owned and rows.base is None and len(rows) == size:
                self._lent.append((fut, col.buf, rows))  # a RowBuffer's own buffer
        if borrowed:
            await _gather(borrowed)

    def _give_back_buffers(self) -> None:
        still = []
        for fut, buf, rows in self._lent:
            if not fut.done():
                still.append((fut, buf, rows))
            elif not fut.cancelled() and fut.exception() is None:
                buf.recycle(rows)
        self._lent = still

    async def _write_blocks_generic(self, blocks: list[tuple[Column, Block]]) -> None:
        """Through zarr's async array API (non-local stores), many blocks at a time.

        Each block's write is started and left in flight (at most
        ``_MAX_CONCURRENT_BLOCKS``; :class:`._zarrobject.Inflight`), so the PUTs
        of one batch overlap those of the next; :meth:`commit` waits for all of
        them before it writes the metadata.
        """
        for col, (start, rows, owned) in blocks:
            # A store may keep the encoded buffer, which for uncompressed data is a
            # view of the rows (MemoryStore does): hand it rows nobody reuses. Owned
            # rows are never reused (RowBuffers recycle only on a local directory).
            if not owned:
                rows = rows.copy()
            # One setitem per block: zarr encodes a value of exactly one block's shape
            # as it is, but copies each block of a larger value into a fresh
            # fill-value chunk first, on the event loop.
            size = col.plan.block
            for k in range(0, len(rows), size):
                block = rows[k : k + size]
                await self._inflight.submit(
                    col.array.setitem(slice(start + k, start + k + len(block)), block)
                )

    async def _write_partials(self, parts: list[tuple[Column, int, np.ndarray[Any, Any]]]) -> None:
        """Write each column's partly filled last block (padded with the fill value)."""
        for col, start, rows in parts:
            await self._grow(col, start + len(rows))
        if self._writer is None:
            await self._inflight.drain()  # a full block of the same chunk may be in flight
            await _gather([
                col.array.setitem(slice(start, start + len(rows)), rows.copy())
                for col, start, rows in parts
            ])
        else:
            futs = []
            for col, start, rows in parts:
                assert col.target is not None
                index = start // col.plan.block
                futs.append(await self._writer.submit(col.target, index, rows, whole=False))
            await self._writer.drain()
        for col, _, _ in parts:
            col.buf.mark_written()


