"""Dask arrays over a stored run: :meth:`Trajectory.to_dask` and
``Trajectory.to_xarray(chunks=...)``.

Why it is built this way:

- **Lazy.** Building the graph reads metadata only (shapes, chunks, committed
  counts, and for a ragged field its committed row count); each task reads its
  chunk through the store's reader when it runs.
- **Runs on other processes.** A task holds a picklable *opener* (the store's
  path and group, and the identity of the run read: another run written there
  since, ``mode="w"``, is refused as the graph's own reader refuses it), never
  an open file: on a ``dask.distributed`` worker it reopens the store once per
  run and process and reads only its rows. In the process that built the
  graph, the already open reader is used. An in-memory store (HostMemory)
  travels as its arrays.
- **Committed frames only.** Shapes are the committed counts when the graph is
  built; frames committed later are never read by it.
- **The store's chunks.** Zarr and HDF5 chunk along frames (rows); a task reads
  one such chunk. A store without chunks (npy, memory) is split into chunks of
  about :data:`DEFAULT_CHUNK_BYTES`.

A reader provides these hooks (see :class:`ChunkedSource`); ``key`` names a
stored array: a fixed-shape field, a ragged field's rows, or its
``<name>.offsets``.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ._errors import ConfigError

if TYPE_CHECKING:
    import dask.array

    from ._trajectory import Source, Trajectory

__all__ = ["DEFAULT_CHUNK_BYTES", "ChunkedSource", "dask_arrays", "frame_chunks"]

#: chunk size for stores without chunks of their own (npy, memory): dask's
#: advice is chunks of tens to hundreds of MiB, large enough that a task's
#: overhead (about 1 ms) is small against its read.
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: how many reopened stores a worker process keeps open
_CACHE_SIZE = 8


@runtime_checkable
class ChunkedSource(Protocol):
    """The chunk-read hooks a :class:`~snapsink.Source` offers for Dask."""

    def array_rows(self, key: str) -> int:
        """Committed rows of stored array ``key``: the committed frames for a
        fixed-shape field, one more for ``<name>.offsets``, the committed rows
        of a ragged field."""
        ...

    def array_chunk(self, key: str) -> int | None:
        """The store's rows per chunk of ``key`` along axis 0 (None: not chunked)."""
        ...

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rows ``[start, stop)`` of stored array ``key``, within its committed rows."""
        ...

    def opener(self) -> Callable[[], Any] | None:
        """A picklable callable that opens this store again (by path) in another
        process, refusing another run there (see the module's docstring), or
        None where the source itself travels (in-memory arrays)."""
        ...


# -- a worker's reopened stores ----------------------------------------------------
_opened: OrderedDict[Any, Any] = OrderedDict()
_opened_lock = threading.Lock()


def _cache_key(opener: Callable[[], Any]) -> Any:
    """A hashable key for ``opener`` (a ``functools.partial`` over a path and the
    run's identity, so that a run replaced since is another key), or None when
    it has none (a zarr store object): then it is opened per task."""
    func = getattr(opener, "func", None)
    args = getattr(opener, "args", None)
    if func is None or args is None:
        return None
    key = (func, args, tuple(sorted(getattr(opener, "keywords", {}).items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _reopen(opener: Callable[[], Any]) -> Any:
    key = _cache_key(opener)
    if key is None:
        return opener()
    with _opened_lock:
        source = _opened.get(key)
        if source is not None:
            _opened.move_to_end(key)
            return source
    source = opener()
    with _opened_lock:
        _opened[key] = source
        while len(_opened) > _CACHE_SIZE:
            _opened.popitem(last=False)
    return source


class StoredArray:
    """One stored array as dask's ``from_array`` wants it: ``shape``, ``dtype``,
    ``ndim`` and ``__getitem__``, reading rows through the store's reader.

    Pickled, it carries the opener only (or, for an in-memory store, the source).
    """

    def __init__(self, source: Any, key: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.key = key
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)
        self._opener = source.opener()
        self._source: Any = source

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state["_opener"] is not None:
            state["_source"] = None  # reopened by path where it lands
        return state

    def _live(self, stop: int) -> Any:
        source = self._source
        if source is None:
            source = self._source = _reopen(self._opener)
        if stop > source.array_rows(self.key):
            # a reader reopened earlier, by this process, before the frames
            # this graph was built on were committed
            source.refresh()
        return source

    def _read(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        out: np.ndarray[Any, Any] = np.asarray(self._live(stop).read_rows(self.key, start, stop))
        return out

    def __getitem__(self, index: Any) -> np.ndarray[Any, Any]:
        index = index if isinstance(index, tuple) else (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        n = self.shape[0]
        if isinstance(first, slice) and (first.step is None or first.step > 0):
            start, stop, step = first.indices(n)
            out = self._read(start, max(start, stop))
            return out[(slice(None, None, step), *rest)] if step != 1 or rest else out
        if isinstance(first, int | np.integer):
            i = int(first) + n if int(first) < 0 else int(first)
            if not 0 <= i < n:
                raise IndexError(f"row {first} out of range for {n} rows of {self.key!r}")
            return np.asarray(self._read(i, i + 1)[(0, *rest)])
        return np.asarray(self._read(0, n)[(first, *rest)])

    def __repr__(self) -> str:
        return f"<StoredArray {self.key!r} shape={self.shape} dtype={self.dtype}>"


# -- planning --------------------------------------------------------------------
def frame_chunks(chunks: object) -> int | None:
    """Frames per chunk from ``to_dask(chunks=...)`` / ``to_xarray(chunks=...)``:
    None for the store's chunks.

    Raises
    ------
    ConfigError
        Anything but ``"store"``, ``{}``, ``{"frame": n}`` or a positive int.
    """
    if isinstance(chunks, str) and chunks == "store":
        return None
    if isinstance(chunks, Mapping):
        extra = set(chunks) - {"frame"}
        if not extra:
            return frame_chunks(chunks["frame"]) if "frame" in chunks else None
        raise ConfigError(
            f"chunks: expected a mapping of 'frame' to frames per chunk, got keys "
            f"{sorted(map(str, extra))!r} (other dimensions are never split)"
        )
    if isinstance(chunks, int | np.integer) and not isinstance(chunks, bool) and chunks >= 1:
        return int(chunks)
    raise ConfigError(
        f"chunks: expected 'store' (the store's own chunks), {{}}, {{'frame': n}} or a "
        f"positive int of frames per chunk, got {chunks!r}"
    )


def _default_rows(dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> int:
    row_nbytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    return max(1, DEFAULT_CHUNK_BYTES // max(1, row_nbytes))


def _checked_source(source: Source) -> ChunkedSource:
    if not isinstance(source, ChunkedSource):
        raise TypeError(
            f"{type(source).__name__} has no chunk-read hooks (array_rows, array_chunk, "
            "read_rows, opener): to_dask needs them; see snapsink._dask.ChunkedSource"
        )
    return source


def _one(
    source: ChunkedSource,
    key: str,
    dtype: np.dtype[Any],
    row_shape: tuple[int, ...],
    per_chunk: int | None,
) -> dask.array.Array:
    import dask.array as da

    from_array: Any = da.from_array  # dask's signature is partly untyped
    rows = source.array_rows(key)
    if per_chunk is None:
        per_chunk = source.array_chunk(key) or _default_rows(dtype, row_shape)
    arr = StoredArray(source, key, (rows, *row_shape), dtype)
    out: dask.array.Array = from_array(
        arr,
        chunks=(per_chunk, *row_shape),
        name=f"snapsink-{key}-{uuid.uuid4().hex}",
        meta=np.empty((0,) * arr.ndim, dtype),
        asarray=True,
        fancy=False,
        lock=False,
    )
    return out


def dask_arrays(
    traj: Trajectory, names: list[str], chunks: object = "store"
) -> dict[str, dask.array.Array]:
    """``{key: dask array}`` of fields ``names``; a ragged field gives its rows
    under its name and its ``<name>.offsets``.

    ``chunks`` sets frames per chunk of frame-indexed arrays (fixed-shape
    fields and offsets); a ragged field's rows always follow the store's row
    chunks (or about :data:`DEFAULT_CHUNK_BYTES`).
    """
    from ._schema import offsets_name

    per_chunk = frame_chunks(chunks)
    source = _checked_source(traj._source)
    fields = traj.fields
    out: dict[str, dask.array.Array] = {}
    for name in names:
        f = fields[name]
        row_shape = tuple(int(n) for n in f.shape if n is not None)
        if not f.ragged:
            out[name] = _one(source, name, f.dtype, row_shape, per_chunk)
            continue
        key = offsets_name(name)
        if not len(traj):
            # no frames: a store may hold no offsets yet (read_ragged gives [0])
            import dask.array as da

            empty: Any = da.from_array  # dask's signature is partly untyped
            out[name] = empty(np.empty((0, *row_shape), f.dtype))
            out[key] = empty(np.zeros(1, np.int64))
            continue
        out[name] = _one(source, name, f.dtype, row_shape, None)
        out[key] = _one(source, key, np.dtype(np.int64), (), per_chunk)
    return out
