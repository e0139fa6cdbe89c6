"""Trajectory: the read side shared by every store.

A store's reader implements :class:`Source` (a few I/O methods); the
:class:`Trajectory` built on it gives users one API whatever the format:
``len``, ``steps``, ``times``, ``fields``, ``static``, ``attrs``,
``dropped_steps``, lazy ``traj[name][i:j]``, ``frame(i)``, ``iter_chunks``,
``to_xarray`` and ``to_dask`` (chunk reads: :mod:`._dask`). Nested state
(fields named ``params.w``) reads back as a tree:
``frame(i, nested=True)``, ``iter_frames(nested=True)``, ``nested(prefix)``, or
in the structure of a template with ``like=``.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Iterator, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import numpy as np

from ._errors import FormatError, SchemaError
from ._pytree import SEP, rebuild, unflatten
from ._schema import Field, Schema, offsets_name

if TYPE_CHECKING:
    import xarray

__all__ = [
    "FieldView",
    "Source",
    "Trajectory",
    "check_same_store",
    "read_only",
    "replaced_error",
]

Index = int | slice | Sequence[int] | np.ndarray[Any, Any]
T = TypeVar("T")
DT = TypeVar("DT", bound=np.dtype[Any])


class Source(Protocol):
    """What a format's reader provides; all counts are *committed* frames.

    :meth:`Trajectory.to_dask` also needs the chunk-read hooks of
    :class:`snapsink._dask.ChunkedSource` (``array_rows``, ``array_chunk``,
    ``read_rows``, ``opener``), which every snapsink reader has.
    """

    schema: Schema | None
    length: int

    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]: ...
    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None: ...
    def static(self) -> Mapping[str, np.ndarray[Any, Any]]: ...
    def attrs(self) -> Mapping[str, Any]: ...
    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]: ...

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Frames ``[start, stop)`` of a fixed-shape field, stacked on axis 0."""
        ...

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` of a ragged field and their
        ``stop - start + 1`` offsets, relative to the first returned row."""
        ...

    def refresh(self) -> None:
        """Re-read the committed count (and metadata) from the store."""
        ...


def replaced_error(where: str, why: str) -> FormatError:
    """The error of a reader whose store was replaced (``mode="w"``, or deleted
    and written again) since it was opened: its frames, schema and counts are
    the old run's, so nothing it would read of the new one is right."""
    return FormatError(
        f"the store at {where} was replaced since it was opened ({why}); open it "
        "again (snapsink.open) to read the new run"
    )


def check_same_store(
    where: str,
    before: tuple[Schema | None, bool | None, int],
    after: tuple[Schema | None, bool | None, int],
) -> None:
    """At a refresh, refuse what no writer of the same store does: change its
    schema or its times flag once they are set, or commit fewer frames.
    ``before`` and ``after`` are ``(schema, times, count)``.

    Raises
    ------
    FormatError
        :func:`replaced_error`, saying what changed.
    """
    (schema0, times0, count0), (schema, times, count) = before, after
    if schema0 is not None and schema != schema0:
        raise replaced_error(where, "its schema changed")
    if schema0 is not None and times0 is not None and bool(times) != bool(times0):
        raise replaced_error(where, f"its frames {'had' if times0 else 'had no'} times")
    if count < count0:
        raise replaced_error(where, f"it holds {count} frames, fewer than the {count0} it held")


def read_only(arr: np.ndarray[Any, DT]) -> np.ndarray[Any, DT]:
    """A view of ``arr`` that refuses writes. What a reader caches (steps, times,
    static arrays) is shared by every later read: an in-place edit of it raises
    numpy's own "read-only" error instead of changing what they return."""
    view = arr.view()
    view.flags.writeable = False
    return view


#: what indexes a ragged field's frames, for messages
_FRAME_INDEX = "int, slice, 1-d int array or boolean mask"


def _in_frames(arr: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, np.dtype[np.intp]] | None:
    """Int index array ``arr`` as frame numbers in ``[0, n)`` (negatives count
    from the end), or None when one is out of range. Checked, then made intp,
    before ``+ n``: in the index's own dtype (int8, uint8) the sum overflows."""
    if arr.size and (int(arr.min()) < -n or int(arr.max()) >= n):
        return None
    out = arr.astype(np.intp)
    return np.where(out < 0, out + n, out)


def _normalize(index: Index, n: int) -> tuple[int, int, int] | np.ndarray[Any, Any] | int:
    if isinstance(index, slice):
        return index.indices(n)
    if isinstance(index, bool | np.bool_):
        # an int to Python, but a bool is no frame number (numpy reads it as a
        # mask with a new axis): refuse both alike
        raise IndexError(f"frame index: expected {_FRAME_INDEX}, got {index!r}")
    if isinstance(index, int | np.integer):
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index {index} out of range for {n} frames")
        return i
    arr = np.asarray(index)
    if arr.size == 0 and arr.ndim == 1:
        arr = arr.astype(np.int64)  # [] is float64 to numpy: no frames
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean frame mask: expected shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise IndexError(f"frame index: expected {_FRAME_INDEX}, got {index!r}")
    frames = _in_frames(arr, n)
    if frames is None:
        raise IndexError(f"frame index out of range for {n} frames")
    return frames.astype(np.int64)


def _as_index_array(k: Any) -> np.ndarray[Any, Any] | None:
    """``k`` (an array or a sequence) as numpy reads it as an index; None where
    numpy cannot make it an array (nested lists of unequal lengths)."""
    try:
        arr = np.asarray(k)
    except ValueError:
        return None
    if not isinstance(k, np.ndarray) and arr.size == 0:
        arr = arr.astype(np.intp)  # [] is float64 to numpy, but an index of nothing
    return arr


def _is_bool_scalar(k: Any) -> bool:
    return isinstance(k, bool | np.bool_) or (
        isinstance(k, np.ndarray) and k.ndim == 0 and k.dtype == bool
    )


def _index_dims(k: Any) -> int:
    """How many axes one entry of an index tuple consumes, as numpy counts them."""
    if k is None or k is Ellipsis or _is_bool_scalar(k):
        return 0
    if isinstance(k, np.ndarray) or (isinstance(k, Sequence) and not isinstance(k, str | bytes)):
        arr = _as_index_array(k)
        return arr.ndim if arr is not None and arr.dtype == bool else 1
    return 1


class FieldView:
    """Lazy, frame-indexed view of one field: ``view[i]``, ``view[a:b]``, ``view[[1, 5]]``.

    A fixed-shape field indexes as the numpy array of shape ``(frames,
    *frame_shape)`` would, with numpy's rules (ints, slices, int arrays, boolean
    masks, ``...`` and ``None``; several index arrays broadcast together), except
    that a bool is no frame number (``view[True]`` is refused). A ragged field
    returns the rows of one frame for an int index, and a list of per-frame row
    arrays otherwise. Only the frames asked for are read, each once.

    Parameters
    ----------
    source
        The format's reader.
    name, field
        The field's name and declaration.
    length
        Committed frames.
    """

    def __init__(self, source: Source, name: str, field: Field, length: int):
        self._source = source
        self.name = name
        self.field = field
        self._length = length

    def __len__(self) -> int:
        return self._length

    @property
    def dtype(self) -> np.dtype[Any]:
        """The field's dtype."""
        return self.field.dtype

    @property
    def shape(self) -> tuple[int | None, ...]:
        """``(frames, *per_frame_shape)``; a ragged field has ``None`` rows."""
        return (self._length, *self.field.shape)

    def __repr__(self) -> str:
        return f"<FieldView {self.name!r} {self.field!r} frames={self._length}>"

    def _read_range(self, start: int, stop: int) -> Any:
        if self.field.ragged:
            data, offsets = self._source.read_ragged(self.name, start, stop)
            return [data[offsets[i] : offsets[i + 1]] for i in range(stop - start)]
        return self._source.read(self.name, start, stop)

    @overload
    def __getitem__(self, index: int) -> np.ndarray[Any, Any]: ...
    @overload
    def __getitem__(
        self, index: slice | Sequence[Any] | np.ndarray[Any, Any] | EllipsisType | None
    ) -> Any: ...

    def __getitem__(self, index: Index | EllipsisType | tuple[Any, ...] | None) -> Any:
        if isinstance(index, tuple) and not index:
            return self[:]
        if self.field.ragged:
            return self._ragged_item(index)
        key = index if isinstance(index, tuple) else (index,)
        pos = self._frame_position(key)
        if pos is None:  # the key leaves the frame axis whole (``view[..., 0]``, ``view[None]``)
            return self._read_range(0, self._length)[key]
        sub, entry = self._select_frames(key, pos)
        try:
            return sub[(*key[:pos], entry, *key[pos + 1 :])]
        except IndexError as exc:
            raise IndexError(f"field {self.name!r}: {exc}") from exc

    def _ragged_item(self, index: Any) -> Any:
        if isinstance(index, tuple):
            # ``(i,)``, ``(i, ...)`` and ``(...,)`` select frames as ``i`` and ``...`` do
            rest = [k for k in index if k is not Ellipsis]
            if len(index) - len(rest) > 1:
                raise IndexError("an index can only have a single ellipsis ('...')")
            if len(rest) > 1:
                raise IndexError(
                    f"field {self.name!r} is ragged: index its frames only ({_FRAME_INDEX}, "
                    f"or ...), then a frame's rows: traj[{self.name!r}][i][rows]; got {index!r}"
                )
            index = rest[0] if rest else Ellipsis
        if index is Ellipsis:
            index = slice(None)
        norm = _normalize(index, self._length)
        if isinstance(norm, int):
            return self._read_range(norm, norm + 1)[0]
        if isinstance(norm, tuple):
            start, stop, step = norm
            if step == 1:
                return self._read_range(start, max(start, stop))
            norm = np.arange(start, stop, step, dtype=np.int64)
        return [self._read_range(int(i), int(i) + 1)[0] for i in norm]

    def _frame_position(self, key: tuple[Any, ...]) -> int | None:
        """Where in ``key`` the entry indexing the frame axis is, as NumPy reads
        ``key`` on an array of shape ``(frames, *frame_shape)``; None when no entry
        does (an Ellipsis spans the frame axis, or nothing but ``None`` is given)."""
        ndim = 1 + len(self.field.shape)
        dims = [_index_dims(k) for k in key]
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if sum(dims) > ndim:
            raise IndexError(
                f"too many indices for field {self.name!r}: it is {ndim}-dimensional "
                f"(frames first), but {sum(dims)} were indexed"
            )
        for pos, k in enumerate(key):
            if k is Ellipsis:
                if ndim - sum(dims) > 0:
                    return None
                continue
            if _is_bool_scalar(k):
                # an int to Python, but a bool is no frame number (numpy reads it
                # as a mask with a new axis): refuse it where a frame index goes
                raise IndexError(
                    f"frame index: expected int, slice, or int array or boolean mask, got {k!r} "
                    f"for field {self.name!r} (a bool is no frame number)"
                )
            if dims[pos]:
                return pos
        return None

    def _select_frames(self, key: tuple[Any, ...], pos: int) -> tuple[np.ndarray[Any, Any], Any]:
        """Read the frames ``key[pos]`` selects, each once and in order; return them
        with the entry that selects, in them, what ``key[pos]`` selects in all frames."""
        n = self._length
        entry = key[pos]
        if isinstance(entry, slice):
            start, stop, step = entry.indices(n)
            if step == 1:
                return self._read_range(start, max(start, stop)), slice(None)
            frames = np.arange(start, stop, step, dtype=np.intp)
            if step > 0:
                return self._read_frames(frames), slice(None)
            return self._read_frames(frames[::-1]), slice(None, None, -1)
        if isinstance(entry, int | np.integer):
            i = self._check_frame(int(entry))
            return self._read_range(i, i + 1), 0
        if isinstance(entry, np.ndarray) or (
            isinstance(entry, Sequence) and not isinstance(entry, str | bytes)
        ):
            arr = _as_index_array(entry)
            if arr is not None and arr.dtype == bool:
                if arr.shape[0] != n:
                    raise IndexError(
                        f"boolean index did not match field {self.name!r} along its frame "
                        f"axis: {n} frames, but the boolean index has {arr.shape[0]}"
                    )
                hit = arr.any(axis=tuple(range(1, arr.ndim))) if arr.ndim > 1 else arr
                frames = np.flatnonzero(hit)
                return self._read_frames(frames), arr[frames]
            if arr is not None and arr.dtype.kind in "iu":
                norm = _in_frames(arr, n)
                if norm is None:
                    return self._out_of_range(key, arr)
                frames, inverse = np.unique(norm.ravel(), return_inverse=True)
                return self._read_frames(frames), inverse.reshape(arr.shape)
        elif hasattr(entry, "__index__"):
            i = self._check_frame(operator.index(entry))
            return self._read_range(i, i + 1), 0
        # What numpy refuses (floats, strings, object arrays), refused as numpy
        # does; what it takes that is not foreseen here, read whole and indexed.
        shape = (n, *(d for d in self.field.shape if d is not None))
        np.broadcast_to(np.zeros((), np.uint8), shape)[key]
        return self._read_range(0, n), entry

    def _out_of_range(
        self, key: tuple[Any, ...], arr: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], Any]:
        """An int array ``arr`` with frames out of range: numpy checks no bound
        where the index arrays broadcast to an empty selection, so then no frame
        is read; else the first bad frame is named."""
        n = self._length
        shape = (n, *(d for d in self.field.shape if d is not None))
        try:
            empty = np.broadcast_to(np.zeros((), np.uint8), shape)[key].size == 0
        except IndexError:
            empty = False
        if not empty:
            raise self._frame_error(int(arr[(arr < -n) | (arr >= n)].flat[0]))
        return self._read_frames(np.zeros(0, np.intp)), arr

    def _frame_error(self, i: int) -> IndexError:
        return IndexError(
            f"index {i} is out of bounds for the frame axis of field {self.name!r}, "
            f"which holds {self._length} frames"
        )

    def _check_frame(self, i: int) -> int:
        n = self._length
        if not -n <= i < n:
            raise self._frame_error(i)
        return i + n if i < 0 else i

    def _read_frames(self, frames: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Frames ``frames`` (sorted, unique), stacked on axis 0: one read per run
        of consecutive frames."""
        if not frames.size:
            return np.empty((0, *(d for d in self.field.shape if d is not None)), self.field.dtype)
        runs = np.split(frames, np.flatnonzero(np.diff(frames) != 1) + 1)
        parts = [self._read_range(int(r[0]), int(r[-1]) + 1) for r in runs]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        if self.field.ragged:
            raise SchemaError(f"field {self.name!r} is ragged: index it per frame")
        arr = self._read_range(0, self._length)
        out: np.ndarray[Any, Any] = arr if dtype is None else arr.astype(dtype)
        return out


class Trajectory:
    """A stored run, read lazily: what :func:`snapsink.open` returns.

    Attributes
    ----------
    steps, times
        int64 steps and float64 times (``None`` when frames carry no time) of the
        committed frames.
    fields
        ``{name: Field}`` of the stored schema.
    static, attrs
        Arrays written once and the user's JSON metadata.
    dropped_steps
        Steps a drop policy discarded, sorted.

    Notes
    -----
    ``steps``, ``times``, ``dropped_steps`` and the ``static`` arrays are
    read-only: the reader reads them once and every later read shares them
    (``.copy()`` one to change it). ``attrs`` is a new copy at each access.
    Field reads (``traj[name][...]``, :meth:`frame`, :meth:`iter_chunks`,
    :meth:`to_xarray`, :meth:`to_dask`) are new arrays, the caller's own.

    Parameters
    ----------
    source
        The format's reader (:func:`snapsink.open` picks it).
    """

    def __init__(self, source: Source):
        self._source = source

    # -- metadata ---------------------------------------------------------
    def __len__(self) -> int:
        return self._source.length

    def __repr__(self) -> str:
        names = ", ".join(self.fields)
        return f"<Trajectory frames={len(self)} fields=[{names}]>"

    @property
    def schema(self) -> Schema | None:
        """The stored schema (None for a store that never got a frame)."""
        return self._source.schema

    @property
    def fields(self) -> dict[str, Field]:
        """``{name: Field}`` of the stored schema, in order."""
        schema = self._source.schema
        return dict(schema.items()) if schema is not None else {}

    # Read-only views of what any Source gives, whether or not it froze its
    # cache: the Trajectory is where the contract is kept.
    @property
    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """int64 steps of the committed frames (read-only: ``.copy()`` to change)."""
        return read_only(self._source.steps())

    @property
    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        """float64 times of the committed frames (read-only), or None without times."""
        times = self._source.times()
        return None if times is None else read_only(times)

    @property
    def static(self) -> dict[str, np.ndarray[Any, Any]]:
        """Arrays written once (atomic numbers, masses, a grid), read-only."""
        return {name: read_only(arr) for name, arr in self._source.static().items()}

    @property
    def attrs(self) -> dict[str, Any]:
        """The user's JSON metadata: a new copy at each access (a nested list or
        dict changed in it changes nothing stored)."""
        return copy.deepcopy(dict(self._source.attrs()))

    @property
    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Steps a drop policy discarded, sorted (int64, read-only)."""
        return read_only(self._source.dropped_steps())

    @property
    def closed(self) -> bool | None:
        """Whether the writer closed the store cleanly; ``None`` where the format
        does not record it (False: a writer is running, or was killed)."""
        flag = getattr(self._source, "closed", None)
        return flag if isinstance(flag, bool) else None

    @property
    def groups(self) -> list[str]:
        """The store's groups holding snapsink data, sorted (``""``: the root), for
        Zarr and HDF5: ``[""]`` for a store written at the root, ``["snapsink"]``
        for an HDF5 file of the H5MD layout. ``[]`` for npy, memory and an H5MD
        file another program wrote."""
        return list(getattr(self._source, "groups", []))

    def refresh(self) -> Trajectory:
        """Re-read the store to see frames committed since it was opened."""
        self._source.refresh()
        return self

    # -- data ---------------------------------------------------------------
    def _no_field(self, name: str) -> KeyError:
        known = ", ".join(map(repr, self.fields)) or "none"
        return KeyError(f"no field {name!r} in this trajectory (fields: {known})")

    def __getitem__(self, name: str) -> FieldView:
        schema = self._source.schema
        if schema is None or name not in schema:
            raise self._no_field(name)
        return FieldView(self._source, name, schema[name], self._source.length)

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    @overload
    def frame(self, i: int, *, nested: bool = False, like: None = None) -> dict[str, Any]: ...
    @overload
    def frame(self, i: int, *, nested: bool = False, like: T) -> T: ...

    def frame(self, i: int, *, nested: bool = False, like: object = None) -> Any:
        """All fields of frame ``i`` (negative counts from the end).

        Parameters
        ----------
        i
            The frame's index.
        nested
            ``False`` (default): ``{name: array}`` with the stored names
            (``"params.w"``). ``True``: nested state as it was written, a tree
            of dicts split at ``.`` (``{"params": {"w": array}}``); keys are
            strings, list indices included (``"0"``).
        like
            A template of the state that was written (a dataclass, NamedTuple,
            JAX pytree, or a dict such as ``{"model": model.state_dict()}``):
            the frame comes back in its structure, types and keys, with numpy
            arrays as leaves. Only the fields it names are read.

        Returns
        -------
        dict or the type of ``like``
            The frame's values.

        Raises
        ------
        IndexError
            ``i`` is out of range.
        KeyError
            ``like`` names a field the trajectory does not hold.
        """
        idx = _normalize(i, len(self))
        assert isinstance(idx, int)
        if like is not None:
            return rebuild(like, lambda name: self[name][idx])
        flat = {name: self[name][idx] for name in self.fields}
        return unflatten(flat) if nested else flat

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_frames()

    def iter_frames(self, *, nested: bool = False, like: Any = None) -> Iterator[Any]:
        """Yield every frame in order, as :meth:`frame` returns it; ``iter(traj)``
        yields flat frames.

        Parameters
        ----------
        nested, like
            As for :meth:`frame`.

        Yields
        ------
        dict or the type of ``like``
            One frame at a time (read 1024 frames at a time).
        """
        names = list(self.fields)
        for chunk in self.iter_chunks():
            n = len(chunk["steps"])
            for i in range(n):
                if like is not None:
                    yield rebuild(like, functools.partial(self._take, chunk, i))
                    continue
                flat = {name: chunk[name][i] for name in names}
                yield unflatten(flat) if nested else flat

    def _take(self, chunk: Mapping[str, Any], i: int, name: str) -> Any:
        if name in ("steps", "times") or name not in chunk:
            raise self._no_field(name)
        return chunk[name][i]

    def iter_chunks(self, frames: int = 1024, *, nested: bool = False) -> Iterator[dict[str, Any]]:
        """Yield ``{"steps": ..., "times": ..., name: ...}`` for ``frames`` frames at a time.

        The chunks are the frames committed at the call: a :meth:`refresh`
        while iterating changes none of them (read them again to see more).

        Parameters
        ----------
        frames
            Frames per chunk.
        nested
            ``True``: the fields as a tree (``{"steps": ..., "params": {"w": ...}}``),
            as :meth:`frame` does.

        Yields
        ------
        dict
            ``steps``, ``times`` (None without times) and each field's frames.

        Raises
        ------
        TypeError
            ``frames`` is not an int (a bool is none).
        ValueError
            ``frames`` is not positive.
        """
        # checked here, at the call, not at the generator's first next()
        if isinstance(frames, bool) or not isinstance(frames, int | np.integer):
            raise TypeError(f"frames: expected a positive int (frames per chunk), got {frames!r}")
        if frames < 1:
            raise ValueError(f"frames: expected >= 1, got {frames}")
        return self._chunks(int(frames), nested)

    def _chunks(self, frames: int, nested: bool) -> Iterator[dict[str, Any]]:
        # one snapshot: the count, steps, times and views taken once, so that a
        # refresh() between chunks cannot pair old steps with new frames
        n, steps, times = len(self), self.steps, self.times
        views = {name: self[name] for name in self.fields}
        for start in range(0, n, frames):
            stop = min(start + frames, n)
            out: dict[str, Any] = {"steps": steps[start:stop]}
            out["times"] = None if times is None else times[start:stop]
            data = {name: view[start:stop] for name, view in views.items()}
            # a nested name's first part is never "steps" or "times" (reserved)
            out.update(unflatten(data) if nested else data)
            yield out

    def nested(self, prefix: str = "") -> dict[str, Any]:
        """The fields as a tree of lazy views: ``traj.nested()["params"]["w"][10:20]``.

        Parameters
        ----------
        prefix
            A node of the tree (``"params"``, ``"model.layers.0"``): only the
            fields under it, keyed relative to it. Default: every field.

        Returns
        -------
        dict
            Nested dicts whose leaves are :class:`FieldView`; nothing is read.

        Raises
        ------
        KeyError
            No field lies under ``prefix``, or ``prefix`` is a field itself.
        """
        tree: Any = unflatten({name: self[name] for name in self.fields})
        if not prefix:
            return dict(tree)
        for part in prefix.split(SEP):
            if not isinstance(tree, dict) or part not in tree:
                known = ", ".join(map(repr, self.fields)) or "none"
                raise KeyError(f"no fields under {prefix!r} in this trajectory (fields: {known})")
            tree = tree[part]
        if not isinstance(tree, dict):
            raise KeyError(
                f"{prefix!r} is a field, not a node of nested fields: use traj[{prefix!r}]"
            )
        return tree

    def to_dask(
        self, name: str | None = None, *, chunks: int | str | Mapping[str, int] = "store"
    ) -> Any:
        """Fields as Dask arrays, chunked as the store is; nothing is read until computed.

        Each task reads one chunk through the store's reader, reopening the
        store by path where it runs (a ``dask.distributed`` worker in another
        process, too), so an analysis runs unchanged on a cluster. The arrays
        hold the frames committed when they were built, never later ones.

        - A fixed-shape field: shape ``(frames, *shape)``.
        - A ragged field: its rows of all frames, shape ``(rows, *row_shape)``,
          and ``"<name>.offsets"``, ``frames + 1`` int64 values: frame ``i``
          holds rows ``offsets[i]:offsets[i + 1]`` (the layout of
          :meth:`to_xarray`).

        Chunks along the first axis are the store's: Zarr's chunks, HDF5's
        dataset chunks; an NpyDirectory or a HostMemory, which have none, in
        chunks of about 64 MiB. Other axes are one chunk.

        Parameters
        ----------
        name
            One field, or ``"<name>.offsets"`` of a ragged one. ``None``: every
            field (a ragged one as its rows and its offsets).
        chunks
            ``"store"`` (default) or ``{}``: the store's chunks. An int, or
            ``{"frame": n}``: ``n`` frames per chunk of frame-indexed arrays
            (a ragged field's rows keep the store's chunks).

        Returns
        -------
        dask.array.Array or dict of str to dask.array.Array
            One array for ``name``, else ``{name: array}`` in the schema's order.

        Raises
        ------
        KeyError
            No such field.
        TypeError
            ``name`` is neither a str nor None.
        ConfigError
            ``chunks`` is not one of the above.
        """
        from ._dask import dask_arrays

        fields = self.fields
        if name is None:
            return dask_arrays(self, list(fields), chunks)
        if not isinstance(name, str):
            raise TypeError(
                f"to_dask: name: expected a field name (str) or None, got {name!r}; "
                "chunks are set by keyword: to_dask(chunks=n)"
            )
        base = name.removesuffix(".offsets") if name.endswith(".offsets") else name
        if base not in fields or (base != name and not fields[base].ragged):
            raise self._no_field(name)
        return dask_arrays(self, [base], chunks)[name]

    def to_xarray(self, chunks: int | str | Mapping[str, int] | None = None) -> xarray.Dataset:
        """Every field as an ``xarray.Dataset``, laid out as the Zarr store is.

        - A fixed-shape field has dims ``("frame", *dims)``: the field's
          ``Field(dims=...)`` (fields naming a dimension share it, so grids
          align), else ``<name>_dim_<k>``.
        - A ragged field is its rows of all frames, dims ``("<name>_row", ...)``,
          and ``<name>.offsets`` (dim ``frame_edge``, ``len + 1`` values): frame
          ``i`` holds rows ``offsets[i]:offsets[i + 1]``.
        - ``steps`` and ``times`` are the coordinates ``step`` and ``time`` of
          ``frame``; static arrays are ``static_<name>`` (dims
          ``static_<name>_dim_<k>``); JSON attrs whose values are str, int,
          float or bool are the dataset's attrs.

        No variable is ever replaced by another: a name made twice (a field named
        ``static_z`` beside static array ``z``, a field named ``step`` or
        ``time``) or a variable named as a dimension (a field ``frame``, or
        ``x_dim_0`` beside a field ``x``) is refused with a
        :class:`~snapsink.SchemaError` naming both; read such a field with
        ``traj[name]`` or :meth:`to_dask`.

        Parameters
        ----------
        chunks
            ``None`` (default): loaded into memory as numpy arrays. Else the
            fields are Dask arrays, read lazily (:meth:`to_dask` takes the same
            values): ``"store"`` or ``{}`` for the store's chunks, an int or
            ``{"frame": n}`` for ``n`` frames per chunk. Coordinates and static
            arrays are loaded either way.

        Returns
        -------
        xarray.Dataset
            The same variables, dims and values whatever ``chunks`` is.

        Raises
        ------
        ConfigError
            ``chunks`` is not one of the above.
        SchemaError
            Two variables would have the same name, a variable would be named as
            a dimension (nothing is read), or a dimension would have two sizes.
        """
        import xarray as xr

        _check_xarray_names(self._xarray_names())

        lazy: dict[str, Any] = {}
        if chunks is not None:
            from ._dask import dask_arrays

            lazy = dask_arrays(self, list(self.fields), chunks)
        data_vars: dict[str, Any] = {}
        n = len(self)
        for name, f in self.fields.items():
            dims = f.dim_names(name)
            off = offsets_name(name)
            if not f.ragged:
                data = lazy[name] if lazy else np.asarray(self[name])
                data_vars[name] = (("frame", *dims), data)
                continue
            if lazy:
                rows, offsets = lazy[name], lazy[off]
            else:
                rows, offsets = self._source.read_ragged(name, 0, n)
                rows, offsets = np.asarray(rows), np.asarray(offsets, np.int64)
            data_vars[name] = (dims, rows)
            data_vars[off] = (("frame_edge",), offsets)
        # copies of the reader's cached arrays: the Dataset is the caller's to edit
        times = self.times
        coords: dict[str, Any] = {"step": ("frame", self.steps.copy())}
        if times is not None:
            coords["time"] = ("frame", times.copy())
        for name, arr in self.static.items():
            data_vars[f"static_{name}"] = (
                tuple(f"static_{name}_dim_{k}" for k in range(arr.ndim)),
                arr.copy(),
            )
        _check_dim_sizes({**data_vars, **coords})
        attrs = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    def _xarray_names(self) -> list[tuple[str, tuple[str, ...], str, str]]:
        """``(variable, dims, what it holds, how else to read it)`` of every
        variable :meth:`to_xarray` makes, before anything is read."""
        out: list[tuple[str, tuple[str, ...], str, str]] = [
            ("step", ("frame",), "the frames' steps", "traj.steps")
        ]
        if self._source.times() is not None:
            out.append(("time", ("frame",), "the frames' times", "traj.times"))
        for name, f in self.fields.items():
            dims = f.dim_names(name)
            field = (f"field {name!r}", f"traj[{name!r}]")
            if not f.ragged:
                out.append((name, ("frame", *dims), *field))
                continue
            out.append((name, dims, *field))
            off = offsets_name(name)
            out.append((off, ("frame_edge",), f"the offsets of {field[0]}", f"to_dask({off!r})"))
        for name, arr in self.static.items():
            dims = tuple(f"static_{name}_dim_{k}" for k in range(np.ndim(arr)))
            out.append((f"static_{name}", dims, f"static array {name!r}", f"traj.static[{name!r}]"))
        return out


def _check_xarray_names(names: Sequence[tuple[str, tuple[str, ...], str, str]]) -> None:
    """Refuse a variable name made twice, or one that names a dimension: xarray
    would replace one variable by the other, or refuse with its own message.

    Raises
    ------
    SchemaError
        Naming both holders of the name and how to read each.
    """
    holders: dict[str, tuple[str, str]] = {}
    dims: dict[str, tuple[str, str]] = {}
    for var, var_dims, what, how in names:
        if var in holders:
            other, other_how = holders[var]
            raise SchemaError(
                f"to_xarray: {other} and {what} would both be the variable {var!r}; "
                f"nothing is replaced silently: read them as {other_how} and {how}"
            )
        holders[var] = (what, how)
        for d in var_dims:
            dims.setdefault(d, (what, how))
    for var, _, what, how in names:
        if var in dims:
            other, other_how = dims[var]
            raise SchemaError(
                f"to_xarray: {what} would be the variable {var!r}, also the name of a "
                f"dimension of {other}; xarray cannot hold both: read them as {how} "
                f"and {other_how}"
            )


def _check_dim_sizes(variables: Mapping[str, tuple[str | tuple[str, ...], Any]]) -> None:
    """Refuse a dimension that two variables give different sizes (a field's
    ``dims`` named like a static array's), naming both.

    Raises
    ------
    SchemaError
        The dimension, its two sizes and the variables giving them.
    """
    sizes: dict[str, tuple[int, str]] = {}
    for var, (dims, data) in variables.items():
        for d, n in zip((dims,) if isinstance(dims, str) else dims, np.shape(data), strict=True):
            seen = sizes.setdefault(d, (int(n), var))
            if seen[0] != n:
                raise SchemaError(
                    f"to_xarray: dimension {d!r} has size {seen[0]} in variable "
                    f"{seen[1]!r} and {n} in variable {var!r}; read them with traj[name] "
                    "or traj.static[name]"
                )
