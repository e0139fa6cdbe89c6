"""ZarrStore: frames into a Zarr v3 group, written with zarr-python's async API.

The layout (one array per field, chunked along frames, bookkeeping in the
group's attributes, commit-last) is specified in ``docs/formats/zarr.md``; the
I/O-free decisions live in :mod:`._zarrplan`.

The writer side (:class:`ZarrStore`) is a :class:`~snapsink.Store` whose methods
are coroutines awaited on the sink's event loop: zarr's async API runs codecs
and LocalStore file I/O in worker threads, and the fsyncs snapsink adds run in
worker threads too, so the loop never blocks. zarr-python is asyncio-only, so
the sink must run on the asyncio backend.

The reader side (:class:`ZarrSource`, :func:`open_zarr`, :func:`list_groups`,
:func:`is_zarr_store`) runs in user code and uses zarr's sync API.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Awaitable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.abc.store import Store as ZarrStoreLike
from zarr.errors import (
    ContainsArrayError,
    ContainsGroupError,
    NodeNotFoundError,
    NodeTypeValidationError,
)
from zarr.storage import LocalStore

from .._errors import ConfigError, FormatError, SchemaError, StoreExistsError
from .._schema import Batch, Schema
from .._store import Resume, StoreSpec
from ._common import check_attrs, check_mode, check_static
from ._zarrread import ZarrSource, as_zarr_store, is_zarr_store, list_groups, open_zarr

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

from ._zarrplan import (
    ATTRS_KEY,
    META_KEY,
    STATIC_GROUP,
    ArrayPlan,
    Meta,
    RowBuffer,
    check_group,
    check_rows,
    grow_capacity,
    offsets_name,
    parse_meta,
    plan_arrays,
)

__all__ = ["ZarrSource", "ZarrStore", "is_zarr_store", "list_groups", "open_zarr"]

#: Every chunk is written, even one equal to the fill value: a snapsink chunk is
#: data, and skipping it would turn a rewrite of a chunk into a deletion.
_ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}
_NODE_KEYS = ("zarr.json", ".zgroup", ".zarray")
#: Blocks (chunks or shards) written concurrently by one ``_write_rows``.
_MAX_CONCURRENT_BLOCKS = 16


def _key(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _local_root(store: ZarrStoreLike) -> Path | None:
    return Path(store.root) if isinstance(store, LocalStore) else None


def _fsync_keys(root: Path, keys: Iterable[str]) -> None:
    """fsync the files ``root/key`` and every directory between them and ``root``.

    Runs in a worker thread. zarr's LocalStore writes each object to a temporary
    file and renames it into place, but never fsyncs: without this a power cut
    could leave a committed chunk empty or its directory entry missing.
    """
    dirs: set[Path] = {root, root.parent}
    for key in keys:
        path = root / key
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # deleted since written (a trimmed chunk): nothing to make durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        parent = path.parent
        while parent != root and root in parent.parents:
            dirs.add(parent)
            parent = parent.parent
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere
        return
    for d in dirs:
        try:
            fd = os.open(d, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def _gather(aws: list[Awaitable[None]]) -> None:
    """Await ``aws`` concurrently; a single failure is raised as itself."""
    if len(aws) == 1:
        await aws[0]
        return

    async def run(aw: Awaitable[None]) -> None:
        await aw

    try:
        async with anyio.create_task_group() as tg:
            for aw in aws:
                tg.start_soon(run, aw)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class _Column:
    """One growing array: its plan, zarr handle, capacity and trailing block."""

    __slots__ = ("array", "buf", "capacity", "plan")

    def __init__(self, plan: ArrayPlan, array: Any, buf: RowBuffer):
        self.plan = plan
        self.array = array
        self.buf = buf
        self.capacity = int(array.shape[0])


class ZarrStore:
    """A store writing frames into a Zarr v3 group, one array per field.

    Frames are buffered in host memory (at most one chunk, or one shard when
    sharding, per array) and written in whole chunks with one ``setitem`` per
    chunk-aligned block; arrays grow by doubling in whole blocks and are trimmed
    to the committed count at close. Metadata (count, schema, dropped steps,
    attrs) is written to the group's attributes after the data: commit-last.

    Parameters
    ----------
    store
        A path (a zarr ``LocalStore`` is made on it) or any zarr v3 ``Store``
        (``LocalStore``, ``MemoryStore``, ``FsspecStore``, ...).
    mode
        ``"x"``: create, fail if a zarr node exists at the group's path (default);
        ``"w"``: replace that group (other groups of the store are untouched);
        ``"a"``: append after the committed frames (created when missing).
    group
        Path of the group inside the store (``"thermo"``, ``"run1/frames"``);
        ``None`` for the root. Several stores may write different groups of one
        store path concurrently.
    attrs
        JSON-serializable user metadata (group attribute ``"attrs"``).
    static
        Arrays written once into the ``static`` subgroup (masses, a grid).
    chunk_frames
        Frames per chunk of every frame-indexed array. ``None`` picks, per array,
        about 8 MiB per chunk (at least 1 frame, at most 65536 frames).
    shard_frames
        Frames per shard (a multiple of ``chunk_frames``); ``None``: no sharding.
    compressors
        Passed to zarr's ``create_array``. ``None`` (default): uncompressed, the
        fastest to write and the easiest for other tools; ``"auto"``: zarr's
        default (zstd); or codecs such as ``zarr.codecs.BloscCodec()``.
    commit_every, commit_seconds
        ``append`` commits once this many frames, or this many seconds, have
        passed since the last commit.

    Raises
    ------
    ConfigError
        For an invalid mode, group, chunking, attrs or static array.

    Notes
    -----
    Durability: on a ``LocalStore`` every written chunk file and its directories
    are fsynced before the metadata is updated, and the metadata file after.
    On other stores, durability is the store's (object stores make each put
    atomic and durable on success). ``mode="a"`` ignores ``chunk_frames``,
    ``shard_frames`` and ``compressors``: the existing arrays keep theirs.
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
        commit_seconds: float = 5.0,
    ):
        self._mode = check_mode(mode)
        self._store = as_zarr_store(store, read_only=False)
        self._path = check_group(group) if group != "" else ""
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        self._chunk_frames = check_rows(chunk_frames, "chunk_frames")
        self._shard_frames = check_rows(shard_frames, "shard_frames")
        if self._chunk_frames and self._shard_frames and self._shard_frames % self._chunk_frames:
            raise ConfigError(
                f"shard_frames: expected a multiple of chunk_frames={self._chunk_frames}, "
                f"got {self._shard_frames}"
            )
        self._compressors = compressors
        self._commit_every = check_rows(commit_every, "commit_every") or 1024
        if not isinstance(commit_seconds, int | float) or not commit_seconds > 0:
            raise ConfigError(f"commit_seconds: expected a positive number, got {commit_seconds!r}")
        self._commit_seconds = float(commit_seconds)
        self._root = _local_root(self._store)
        self._group: Any = None
        self._meta = Meta()
        self._columns: dict[str, _Column] = {}
        self._frames = 0  # appended (committed or not)
        self._dirty: set[str] = set()
        self._last_commit = time.monotonic()
        self._state = "new"  # new -> open -> closed; "failed" after a failed write

    def describe(self) -> StoreSpec | None:
        """How a writer process builds this store again, or None when it cannot.

        Returns
        -------
        StoreSpec or None
            For a local directory (a path or a ``LocalStore``), ``ZarrStore`` and
            its arguments; ``None`` for other zarr stores (in memory, remote),
            which the sink then writes from a thread of its own process.
        """
        if self._root is None or type(self).__init__ is not ZarrStore.__init__:
            return None  # a subclass with an __init__ of its own must describe itself
        return StoreSpec(
            type(self),
            (str(self._root.resolve()), self._mode),
            {
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
        where = self._root if self._root is not None else type(self._store).__name__
        return f"<ZarrStore {where} group={self._path or '/'!r} mode={self._mode!r}>"

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
            ``mode="x"`` and a zarr node exists at the group's path.
        FormatError
            ``mode="a"`` on a group that is not a snapsink store or is corrupt.
        """
        if self._state != "new":
            raise RuntimeError(f"{self!r}: open() called twice")
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
                    f"{self!r}: a zarr node appeared at group {self._path or '/'!r}"
                ) from exc
            self._mark(_key(self._path, "zarr.json"))
        self._state = "open"
        await self._write_static()
        await self._write_meta()
        return resume

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        """Create the arrays of ``schema`` (or check it against the stored one).

        Raises
        ------
        SchemaError
            The group holds frames of another schema, or disagrees on times.
        """
        self._check_usable()
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
        self._meta.dropped.add(batch.dropped_steps)
        frames = batch.frames
        if frames:
            schema = self._meta.schema
            if schema is None:
                raise RuntimeError(f"{self!r}: prepare() must come before append()")
            work: list[tuple[_Column, np.ndarray[Any, Any]]] = []
            cols = self._columns
            steps = np.fromiter((f.step for f in frames), np.int64, len(frames))
            work.append((cols["steps"], steps))
            if self._meta.times:
                if any(f.time is None for f in frames):
                    raise SchemaError(f"{self!r}: expected a time on every frame")
                times = np.fromiter((f.time for f in frames), np.float64, len(frames))
                work.append((cols["times"], times))
            for name, fld in schema.items():
                arrays = [f.fields[name] for f in frames]
                if fld.ragged:
                    data = cols[name]
                    counts = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
                    offsets = data.buf.length + np.cumsum(counts)
                    work.append((cols[offsets_name(name)], offsets))
                    work.append((data, arrays[0] if len(arrays) == 1 else np.concatenate(arrays)))
                else:
                    if len(arrays) == 1:
                        work.append((cols[name], np.asarray(arrays[0])[np.newaxis]))
                    else:
                        work.append((cols[name], np.stack(arrays)))
            try:
                await _gather([self._push(col, rows) for col, rows in work])
            except BaseException:
                # Columns may now disagree; keep the last commit as the truth.
                self._state = "failed"
                raise
            self._frames += len(frames)
        pending = self._frames - self._meta.count
        if pending >= self._commit_every or (
            (pending or batch.dropped_steps)
            and time.monotonic() - self._last_commit >= self._commit_seconds
        ):
            await self.commit()

    async def commit(self) -> None:
        """Write partial blocks, make them durable, then the metadata (commit-last)."""
        self._check_usable()
        try:
            writes: list[Awaitable[None]] = []
            for col in self._columns.values():
                part = col.buf.partial()
                if part is not None:
                    writes.append(self._write_partial(col, *part))
            if writes:
                await _gather(writes)
            await self._sync_dirty()
            await self._check_not_removed()
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
            return
        try:
            await self.commit()
            for col in self._columns.values():
                length = col.buf.length
                if col.capacity != length:
                    await col.array.resize((length, *col.plan.row_shape))
                    col.capacity = length
                    self._mark(_key(col.array.store_path.path, "zarr.json"))
            await self._sync_dirty()
            self._meta.closed = True
            await self._write_meta()
        finally:
            self._state = "closed"

    # -- internals ------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            raise RuntimeError(f"{self!r}: open() must come first")
        if self._state == "failed":
            raise RuntimeError(f"{self!r}: an earlier write failed; the store takes no more frames")
        raise RuntimeError(f"{self!r}: the store is closed")

    def _attributes(self) -> dict[str, Any]:
        return {META_KEY: self._meta.to_json(), ATTRS_KEY: self._attrs}

    def _mark(self, key: str) -> None:
        if self._root is not None:
            self._dirty.add(key)

    async def _sync_dirty(self) -> None:
        if self._root is None or not self._dirty:
            return
        keys, self._dirty = sorted(self._dirty), set()
        await anyio.to_thread.run_sync(_fsync_keys, self._root, keys)

    async def _check_not_removed(self) -> None:
        """On a LocalStore, fail if the group vanished under the writer.

        zarr recreates the directories of every chunk it writes, so after
        someone removes the store the writer would carry on and rebuild a store
        whose earlier chunks are gone (read back as fill values): refuse to
        commit onto it instead.
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
        await self._group.update_attributes(self._attributes())
        self._mark(_key(self._path, "zarr.json"))
        await self._sync_dirty()

    async def _node_exists(self) -> bool:
        for name in _NODE_KEYS:
            if await self._store.exists(_key(self._path, name)):
                return True
        return False

    async def _delete_group(self) -> None:
        if self._root is not None:
            # LocalStore.delete_dir runs rmtree on the event loop: do it in a thread.
            target = self._root / self._path if self._path else self._root
            await anyio.to_thread.run_sync(self._rmtree_contents, target)
        else:
            await self._store.delete_dir(self._path)
            for name in _NODE_KEYS:
                await self._store.delete(_key(self._path, name))

    @staticmethod
    def _rmtree_contents(target: Path) -> None:
        if not target.is_dir():
            return
        for child in target.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

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
            start = length - length % actual.block
            tail = np.asarray(await arr.getitem(slice(start, length))) if length > start else None
            buf = RowBuffer(plan.dtype, plan.row_shape, actual.block, length, tail)
            self._columns[plan.name] = _Column(actual, arr, buf)

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
            self._mark(_key(arr.store_path.path, "zarr.json"))
            col = _Column(plan, arr, RowBuffer(plan.dtype, plan.row_shape, plan.block))
            self._columns[plan.name] = col
            if plan.name.endswith(".offsets"):
                await self._push(col, np.zeros(1, np.int64))  # offsets start at 0

    async def _write_static(self) -> None:
        if not self._static:
            return
        sg = await self._group.require_group(STATIC_GROUP)
        self._mark(_key(sg.store_path.path, "zarr.json"))
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
            await arr.setitem(..., value)
            apath = arr.store_path.path
            self._mark(_key(apath, "zarr.json"))
            if value.size:
                self._mark(_key(apath, arr.metadata.encode_chunk_key((0,) * value.ndim)))

    async def _push(self, col: _Column, rows: np.ndarray[Any, Any]) -> None:
        for start, block in col.buf.push(rows):
            await self._write_rows(col, start, block)

    async def _write_partial(self, col: _Column, start: int, rows: np.ndarray[Any, Any]) -> None:
        await self._write_rows(col, start, rows)
        col.buf.mark_written()

    async def _write_rows(self, col: _Column, start: int, rows: np.ndarray[Any, Any]) -> None:
        arr = col.array
        stop = start + len(rows)
        path = arr.store_path.path
        if stop > col.capacity:
            new = grow_capacity(col.capacity, stop, col.plan.block)
            await arr.resize((new, *col.plan.row_shape))
            col.capacity = new
            self._mark(_key(path, "zarr.json"))
        if self._root is None:
            # A store may keep the encoded buffer, which for uncompressed data is a
            # view of ``rows`` (MemoryStore does): hand it rows that nobody reuses.
            rows = rows.copy()
        block = col.plan.block
        if len(rows) <= block:
            await arr.setitem(slice(start, stop), rows)
        else:
            # One setitem per block (rows are block aligned here): zarr encodes a
            # value of exactly one chunk's shape as it is, but copies each chunk of
            # a larger value into a fresh fill-value chunk first, on the event loop
            # (np.full, then a copy: two extra passes over every byte).
            firsts = range(start, stop, block)
            for k in range(0, len(firsts), _MAX_CONCURRENT_BLOCKS):
                await _gather([
                    arr.setitem(slice(i, min(i + block, stop)), rows[i - start : i - start + block])
                    for i in firsts[k : k + _MAX_CONCURRENT_BLOCKS]
                ])
        if self._root is not None and all(n > 0 for n in col.plan.row_shape):
            inner = (0,) * len(col.plan.row_shape)
            for i in range(start // block, -(-stop // block)):
                self._mark(_key(path, arr.metadata.encode_chunk_key((i, *inner))))
