"""The read side of the snapsink Zarr format: a lazy Source over a committed group.

Runs in user code, usually outside any event loop, so it uses zarr's sync API.
Every attribute is type-checked (:func:`._zarrplan.parse_meta`): a corrupt or
hostile store raises :class:`~snapsink.FormatError`, never anything worse.

A reader never reads a group that replaced the one it opened (``mode="w"``):
zarr would decode the new run's chunks with the old arrays' dtypes. In a local
directory the group's identity is the inode of its ``steps`` array's directory
(``mode="w"`` removes it), held open by the reader
(:class:`~snapsink.stores._npyread.PinnedPath`) and compared at each refresh
and after each read. Elsewhere (object stores) the format records no identity:
a refresh refuses a group whose schema changed or whose count went down.
A reader reopened in a Dask worker (:meth:`ZarrSource.opener`) is given what
the graph's reader held, and refuses what its refresh would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    SuffixByteRequest,
)
from zarr.abc.store import Store as ZarrStoreLike
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.common import concurrent_map
from zarr.errors import (
    BaseZarrError,
    ContainsArrayError,
    GroupNotFoundError,
    NodeTypeValidationError,
)
from zarr.storage import LocalStore

from .._errors import ConfigError, FormatError, StoreNotFoundError
from .._schema import Schema
from .._trajectory import Trajectory, check_same_store, read_only, replaced_error
from ._lock import LOCK_NAME
from ._npyfile import file_kind, open_in_store
from ._npyread import PinnedPath
from ._rows import RowArraysSource, check_row_array, committed_rows
from ._zarrobject import refused_options
from ._zarrparplan import rank_array
from ._zarrparread import RankedRagged, parallel_ranks
from ._zarrplan import (
    STATIC_GROUP,
    ArrayPlan,
    Meta,
    check_group,
    is_snapsink_attrs,
    parse_meta,
    plan_arrays,
)

__all__ = ["ZarrSource", "as_zarr_store", "is_zarr_store", "list_groups", "open_zarr"]

#: the group a reader is reopened on (see ZarrSource.opener): the inode number
#: of its steps array's directory (None: unknown), its schema, times flag and
#: committed count
Origin = tuple[int | None, Schema | None, bool | None, int]

_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def as_zarr_store(store: object, *, read_only: bool) -> ZarrStoreLike:
    """A zarr Store for a path (a LocalStore) or a Store instance."""
    if isinstance(store, ZarrStoreLike):
        return store
    if isinstance(store, str | os.PathLike):
        return LocalStore(os.fspath(store), read_only=read_only)
    raise ConfigError(
        f"store: expected a path or a zarr v3 Store (LocalStore, MemoryStore, FsspecStore), "
        f"got {type(store).__name__}"
    )


# -- reading -------------------------------------------------------------------
def _read_checked(
    root: str, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
) -> Buffer | None:
    """LocalStore's read of ``root/key``, through :func:`open_in_store`: never
    through a symbolic link (so never outside the store), never blocking on a
    FIFO, only a regular file."""
    try:
        fd = open_in_store(root, key)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except FormatError:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(os.path.join(root, key)).st_mode):
                return None  # zarr probes keys that may be directories: absent
        raise
    with os.fdopen(fd, "rb") as f:
        if byte_range is None:
            return prototype.buffer.from_bytes(f.read())
        size = f.seek(0, io.SEEK_END)
        if isinstance(byte_range, RangeByteRequest):
            f.seek(byte_range.start)
            return prototype.buffer.from_bytes(f.read(byte_range.end - f.tell()))
        if isinstance(byte_range, OffsetByteRequest):
            f.seek(byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            f.seek(max(0, size - byte_range.suffix))
        else:
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")
        return prototype.buffer.from_bytes(f.read())


class CheckedLocalStore(LocalStore):
    """A read-only zarr ``LocalStore`` whose every read goes through a checked path.

    zarr's LocalStore opens ``root / key`` as given: a chunk or ``zarr.json``
    that is a symbolic link is followed out of the store, and a FIFO blocks the
    reader forever. This one opens each component below the root without
    following links, non-blocking, and refuses anything but a regular file
    (:class:`~snapsink.FormatError`).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(os.fspath(root), read_only=True)

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self._ensure_open_sync()
        return _read_checked(
            str(self.root), key, prototype or default_buffer_prototype(), byte_range
        )

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(
            _read_checked,
            str(self.root),
            key,
            prototype or default_buffer_prototype(),
            byte_range,
        )

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # A writer's lock file is the store's own, not a zarr node (zarr would
        # warn that it "is not recognized as a component of a Zarr hierarchy").
        async for key in super().list_dir(prefix):
            if key != LOCK_NAME:
                yield key

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        root = str(self.root)
        args = [(_read_checked, root, key, prototype, br) for key, br in key_ranges]
        out: list[Buffer | None] = await concurrent_map(args, asyncio.to_thread, limit=None)
        return out


def _open_read_store(path_or_store: object) -> ZarrStoreLike:
    if isinstance(path_or_store, str | os.PathLike):
        if not os.path.isdir(path_or_store):
            raise StoreNotFoundError(f"no zarr store at {os.fspath(path_or_store)!r}")
        return CheckedLocalStore(path_or_store)
    if isinstance(path_or_store, LocalStore) and not isinstance(path_or_store, CheckedLocalStore):
        # Reading needs no write access: read the same directory through checked paths.
        return CheckedLocalStore(path_or_store.root)
    return as_zarr_store(path_or_store, read_only=True)


@contextlib.contextmanager
def _decoding(where: str, what: str) -> Iterator[None]:
    """Whatever zarr raises on corrupt metadata or chunks, as a FormatError."""
    try:
        yield
    except FormatError:
        raise
    except (BaseZarrError, ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        raise FormatError(f"{where}: {what}: {type(exc).__name__}: {exc}") from exc


def _stored_array(grp: Any, plan: ArrayPlan, need: int, where: str) -> Any:
    """Array ``plan.name`` of ``grp``, checked against its plan and ``need`` rows."""
    try:
        with _decoding(where, f"array {plan.name!r}"):
            arr = grp[plan.name]
    except FormatError as exc:
        if isinstance(exc.__cause__, KeyError):
            raise FormatError(f"{where}: array {plan.name!r} is missing") from exc
        raise
    if not isinstance(arr, zarr.Array):
        raise FormatError(f"{where}: {plan.name!r} is not an array")
    check_row_array(where, "array", plan, arr.dtype, arr.shape, need)
    return arr


def _open_group_sync(store: ZarrStoreLike, path: str) -> Any:
    try:
        return zarr.open_group(store, path=path, mode="r", zarr_format=3)
    except FormatError:
        raise
    except (GroupNotFoundError, FileNotFoundError, KeyError) as exc:
        raise StoreNotFoundError(f"no zarr group {path or '/'!r} in {store}") from exc
    except (
        ContainsArrayError,
        NodeTypeValidationError,
        BaseZarrError,
        ValueError,
        TypeError,
    ) as exc:
        refused = refused_options(exc, store)
        if refused is not None:
            raise refused from exc
        raise FormatError(f"{path or '/'!r} in {store} is not a zarr v3 group: {exc}") from exc


class ZarrSource(RowArraysSource):
    """The committed frames of a snapsink Zarr group, read lazily (a Source).

    Parameters
    ----------
    store
        A path or a zarr v3 ``Store``.
    group
        The group's path; ``None`` for the root.
    origin
        The group this reader must be (given by :meth:`opener`): another one
        there is refused as replaced.

    Raises
    ------
    StoreNotFoundError
        No group there.
    FormatError
        The group is not a snapsink store, or its metadata or arrays are corrupt.
    """

    schema: Schema | None
    length: int
    _meta: Meta

    # Deliberate parallel of HDF5Source.__init__ and .closed (_hdf5read.py): each
    # reader opens its own store, builds itself by refresh() and keeps its own
    # closed flag; what the two read alike is shared in _rows.RowArraysSource.
    def __init__(
        self,
        store: str | os.PathLike[str] | ZarrStoreLike,
        group: str | None = None,
        origin: Origin | None = None,
    ):
        self._store = _open_read_store(store)
        self._path = check_group(group) if group != "" else ""
        self.schema = None
        self.length = 0
        self._meta_times: bool | None = None
        self._pin: PinnedPath | None = None
        self._replaced: FormatError | None = None
        self._origin_ino: int | None = None
        if origin is not None:
            # the first refresh then compares the group with the graph's, as a
            # refresh of the graph's own reader would
            self._origin_ino, self.schema, self._meta_times, self.length = origin
        self.refresh()

    def __repr__(self) -> str:
        return f"<ZarrSource {self._store} group={self._path or '/'!r} frames={self.length}>"

    @property
    def closed(self) -> bool:
        """Whether the writer closed the group cleanly (at the last refresh)."""
        return bool(self._meta.closed)

    @property
    def groups(self) -> list[str]:
        """Paths of the groups of this store that hold snapsink data (``""``: the root)."""
        return list_groups(self._store)

    @property
    def location(self) -> str | None:
        """The group's directory; None for a store that is not a local directory."""
        if not isinstance(self._store, LocalStore):
            return None
        return os.path.join(str(self._store.root), *filter(None, self._path.split("/")))

    def _same_group(self) -> None:
        """Raise if the group was replaced since it was opened (sticky)."""
        if self._replaced is None and self._pin is not None and self._pin.moved():
            self._replaced = replaced_error(
                f"zarr group {self._path or '/'!r} in {self._store}",
                "its 'steps' array is another directory, or gone",
            )
        if self._replaced is not None:
            raise self._replaced

    def _pin_steps(self) -> None:
        """Hold the directory of the group's ``steps`` array, once it exists
        (a local store only)."""
        if self._pin is not None or not isinstance(self._store, LocalStore):
            return
        path = os.path.join(str(self._store.root), *filter(None, self._path.split("/")), "steps")
        try:
            fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        except OSError:
            return
        self._pin = PinnedPath(path, fd)

    def refresh(self) -> None:
        """Re-read the group's attributes (committed count, dropped steps, attrs).

        Raises
        ------
        FormatError
            Also when the group was replaced since it was opened.
        """
        self._same_group()
        first = self._pin is None
        # Pinned before the attributes are read, checked after: attributes read
        # while the pin still names the path are the pinned group's (mode="w"
        # removes the steps array before it writes new attributes).
        self._pin_steps()
        grp = _open_group_sync(self._store, self._path)
        where = f"zarr group {self._path or '/'!r} in {self._store}"
        meta, user = parse_meta(dict(grp.attrs), where)
        if first and self._pin is not None and self._pin.moved():
            self._pin = None  # replaced while it was being pinned: as found now
            self._pin_steps()
            grp = _open_group_sync(self._store, self._path)
            meta, user = parse_meta(dict(grp.attrs), where)
        if first and self._origin_ino is not None:
            # (the inode number alone: the device number of one NFS export
            # differs between the hosts of a cluster)
            if self._pin is None or self._pin.inode[1] != self._origin_ino:
                self._replaced = replaced_error(
                    where, "its 'steps' array is another directory, or gone"
                )
        try:
            before = (self.schema, self._meta_times, self.length)
            check_same_store(where, before, (meta.schema, meta.times, meta.count))
        except FormatError as exc:
            self._replaced = exc
        self._same_group()
        arrays: dict[str, Any] = {}
        ranks = parallel_ranks(dict(grp.attrs), where)
        ranked: set[str] = set()  # ragged fields in per-rank arrays (many ranks wrote)
        if meta.schema is not None:
            if ranks is not None:
                ranked = {n for n, f in meta.schema.items() if f.ragged}
            for plan in plan_arrays(meta.schema, times=bool(meta.times)):
                need = committed_rows(plan, meta.schema, meta.count)
                base = plan.name.removesuffix(".offsets")
                if base not in ranked:
                    arrays[plan.name] = _stored_array(grp, plan, need, where)
                    continue
                assert ranks is not None
                for r in range(ranks):
                    name = rank_array(base, r, offsets=base != plan.name)
                    arrays[name] = _stored_array(grp, replace(plan, name=name), need, where)
        self._root = str(self._store.root) if isinstance(self._store, LocalStore) else None
        self._where = where
        self._group = grp
        self._meta = meta
        self._user = user
        self._arrays = arrays
        self._steps: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._times: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._static: dict[str, np.ndarray[Any, Any]] | None = None
        self._ragged_rows: dict[str, int] = {}
        self._same_group()  # (the arrays opened were the group's)
        self.schema = meta.schema
        self._meta_times = meta.times
        self.length = meta.count
        self._ranked = {
            name: RankedRagged(name, ranks or 1, meta.count, self._get, self._stored_rows, where)
            for name in ranked
        }

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        if self._static is None:
            out: dict[str, np.ndarray[Any, Any]] = {}
            try:
                sg = self._group[STATIC_GROUP]
            except KeyError:
                sg = None
            if isinstance(sg, zarr.Group):
                with _decoding(self._where, "static arrays"):
                    members = list(sg.arrays())
                for name, arr in members:
                    with _decoding(self._where, f"static array {name!r}"):
                        # cached read-only: every later read shares it
                        out[name] = read_only(np.asarray(arr[...]))
            self._same_group()
            self._static = out
        return self._static

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self._meta.dropped.to_array(self._where)

    def _get(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rows ``[start, stop)`` of array ``name``, after checking that the chunks
        (or shards) holding them exist: a tampered count or shape is refused
        before zarr allocates the result."""
        arr = self._arrays[name]
        try:
            if stop > start:
                self._check_blocks(name, arr, start, stop)
            with _decoding(self._where, f"array {name!r}, rows [{start}, {stop})"):
                out = np.asarray(arr[start:stop])
        except FormatError:
            self._same_group()  # chunks of a new group: say so, not "missing"
            raise
        # After the read: chunks read before the group was replaced are the old
        # run's; any read after is caught here.
        self._same_group()
        return out

    def _check_blocks(self, name: str, arr: Any, start: int, stop: int) -> None:
        """Every chunk covering rows ``[start, stop)`` is a file (the format writes
        every chunk, including chunks equal to the fill value); LocalStore only."""
        if self._root is None or not all(n > 0 for n in arr.shape[1:]):
            return
        with _decoding(self._where, f"array {name!r}"):
            block = int(arr.shards[0] if arr.shards is not None else arr.chunks[0])
            encode = arr.metadata.chunk_key_encoding.encode_chunk_key
            base = os.path.join(self._root, *arr.store_path.path.split("/"))
            rest = (0,) * (arr.ndim - 1)
        for k in range((start) // block, (stop - 1) // block + 1):
            key = encode((k, *rest))
            try:
                mode = os.lstat(os.path.join(base, *key.split("/"))).st_mode
            except OSError:
                mode = None
            if mode is None or not stat.S_ISREG(mode):
                raise FormatError(
                    f"{self._where}: array {name!r}: chunk {key!r} (rows "
                    f"[{k * block}, {(k + 1) * block})) is "
                    f"{'missing' if mode is None else f'a {file_kind(mode)}, not a regular file'}"
                    ", but the group "
                    f"names rows up to {stop} (a corrupt count or shape, or a damaged store)"
                )

    def _holds(self, key: str) -> bool:
        return key in self._arrays or key.removesuffix(".offsets") in self._ranked

    # -- ragged fields written by many ranks (per-rank arrays, read as one) --------
    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` of ragged field ``name`` and their offsets
        (a field written by many ranks: each frame's rows in rank order)."""
        ranked = self._ranked.get(name)
        if ranked is None:
            return super().read_ragged(name, start, stop)
        self._check_range(start, stop)
        return ranked.read(start, stop)

    def rank_index(self, name: str) -> np.ndarray[Any, Any]:
        """Rows per rank of each frame of a ragged field written by many ranks:
        shape ``(frames, ranks)``; frame ``i``'s rows from rank ``r`` follow those
        of the ranks before it.

        Raises
        ------
        KeyError
            ``name`` is not a ragged field written by many ranks.
        """
        if name not in self._ranked:
            raise KeyError(f"{name!r} is not a ragged field written by many ranks")
        return self._ranked[name].index()

    def array_rows(self, key: str) -> int:
        ranked = self._ranked.get(key)
        if ranked is not None:
            return int(ranked.offsets()[-1])
        return super().array_rows(key)

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        base = key.removesuffix(".offsets")
        ranked = self._ranked.get(base)
        if ranked is None:
            return super().read_rows(key, start, stop)
        rows = self.length + 1 if base != key else int(ranked.offsets()[-1])
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for {rows} rows of {key!r}")
        if base != key:
            return ranked.offsets()[start:stop].copy()  # of the cache: the caller's own
        return ranked.rows(start, stop)

    def _stored_rows(self, key: str) -> int:
        return int(self._arrays[key].shape[0])

    # -- chunk reads (snapsink._dask.ChunkedSource; the rest in RowArraysSource) --
    def array_chunk(self, key: str) -> int:
        """Rows per chunk of array ``key`` (zarr's inner chunks when sharded)."""
        base = key.removesuffix(".offsets")
        if base in self._ranked:  # rank 0's arrays' chunking
            key = rank_array(base, 0, offsets=base != key)
        with _decoding(self._where, f"array {key!r}"):
            return int(self._arrays[key].chunks[0])

    def opener(self) -> Callable[[], ZarrSource]:
        """Reopens the group by path (in a Dask worker's process); a store that
        is not a local directory travels as the store object (it must pickle).
        Another group there is refused as this reader would refuse it: another
        steps array's directory, another schema or times flag, fewer frames."""
        where: Any = self._root if self._root is not None else self._store
        ino = self._pin.inode[1] if self._pin is not None else None
        # Where the inode tells the group, no count: the opener is a worker's
        # cache key (snapsink._dask), and each graph of a growing run would
        # open a reader of its own.
        count = self.length if ino is None else 0
        origin: Origin = (ino, self.schema, self._meta_times, count)
        return functools.partial(ZarrSource, where, self._path, origin)


def is_zarr_store(path_or_store: object) -> bool:
    """True when ``path_or_store`` is the root of a Zarr v3 hierarchy.

    Never creates anything. A path is checked for a root ``zarr.json``; a store
    instance by opening its root group read-only.
    """
    if isinstance(path_or_store, str | os.PathLike):
        return os.path.isfile(os.path.join(os.fspath(path_or_store), "zarr.json"))
    if not isinstance(path_or_store, ZarrStoreLike):
        return False
    try:
        zarr.open_group(path_or_store, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return True


def list_groups(path_or_store: str | os.PathLike[str] | ZarrStoreLike) -> list[str]:
    """Paths of the groups that hold snapsink data, sorted; ``""`` is the root.

    Raises
    ------
    StoreNotFoundError
        No zarr hierarchy there.
    FormatError
        A node's metadata is corrupt.
    """
    store = _open_read_store(path_or_store)
    root = _open_group_sync(store, "")
    found = [""] if is_snapsink_attrs(dict(root.attrs)) else []
    with _decoding(str(store), "listing its groups"):
        for path, node in root.members(max_depth=None):
            if isinstance(node, zarr.Group) and is_snapsink_attrs(dict(node.attrs)):
                found.append(str(path))
    return sorted(found)


# Deliberate parallel of open_hdf5 (_hdf5read.py): each format's public opener
# documents its own Parameters, Returns and Raises.
def open_zarr(
    path_or_store: str | os.PathLike[str] | ZarrStoreLike, group: str | None = None
) -> Trajectory:
    """Open the committed frames of a snapsink Zarr group, lazily.

    Parameters
    ----------
    path_or_store
        A path or a zarr v3 ``Store``.
    group
        The group's path (see :func:`list_groups`); ``None`` for the root.

    Returns
    -------
    Trajectory

    Raises
    ------
    StoreNotFoundError
        No such store or group.
    FormatError
        Not a snapsink group, or corrupt.
    """
    return Trajectory(ZarrSource(path_or_store, group))
