"""I/O-free planning for the Zarr v3 store: names, chunking, buffering, metadata.

Everything here is plain Python and numpy, so the async writer
(:class:`~snapsink.stores.zarr.ZarrStore`), the sync reader and the tests share
one set of decisions. The on-disk layout is specified in ``docs/formats/zarr.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from .._checks import positive_int
from .._errors import ConfigError, FormatError
from .._schema import Schema, check_name, offsets_name
from ._format import StepRanges, check_format_version, parse_step_ranges

__all__ = [
    "ATTRS_KEY",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_KEY",
    "ArrayPlan",
    "Block",
    "DirectRows",
    "Meta",
    "RowBuffer",
    "check_compressors",
    "check_group",
    "check_rows",
    "default_chunk_rows",
    "grow_capacity",
    "offsets_name",
    "parse_meta",
    "plan_arrays",
]

FORMAT_NAME = "snapsink-zarr"
FORMAT_VERSION = 1
#: group attribute holding snapsink's bookkeeping (count, schema, ...).
META_KEY = "snapsink"
#: group attribute holding the user's ``attrs``.
ATTRS_KEY = "attrs"
#: name of the subgroup that holds the static arrays.
STATIC_GROUP = "static"

#: a default chunk aims at this many bytes (within 4-16 MiB for any frame size
#: between 4 KiB and 8 MiB; smaller frames hit the frame cap below). The same
#: rule serves object storage: on a local S3 server (``benchmarks/s3.py
#: --sweep``, 32 PUTs in flight) 8 MiB chunks of 64 KiB frames wrote faster than
#: 1 MiB chunks (1.4-1.9x) and 64 KiB chunks (8-14x), and than 64 KiB or 1 MiB
#: chunks in 8 MiB shards (1.1-2.1x); at 8 MiB a chunk stays one PUT (s3fs
#: goes multipart from 100 MiB).
TARGET_CHUNK_BYTES = 8 << 20
#: frames per chunk never exceed this by default (tiny frames: scalars, energies).
MAX_CHUNK_FRAMES = 1 << 16
#: rows per chunk of a ragged field's data array never exceed this by default.
MAX_CHUNK_ROWS = 1 << 20


# -- names ---------------------------------------------------------------------
def check_group(group: object) -> str:
    """The store path of ``group``: ``""`` for ``None``, else ``/``-joined identifiers.

    Raises
    ------
    ConfigError
        For anything but ``None`` or a ``/``-separated path of identifiers
        (so ``..``, absolute paths, empty components never reach the store).
    """
    if group is None:
        return ""
    if not isinstance(group, str):
        raise ConfigError(f"group: expected a str or None, got {type(group).__name__} {group!r}")
    parts = group.split("/")
    for part in parts:
        try:
            check_name(part, "group")
        except ConfigError as exc:
            raise ConfigError(
                f"group {group!r}: expected identifiers separated by '/' "
                f"(like 'thermo' or 'run1/frames'); {exc}"
            ) from None
    if parts[-1] == STATIC_GROUP:
        raise ConfigError(f"group {group!r}: 'static' is reserved for a store's static arrays")
    return group


def check_compressors(value: Any) -> Any:
    """``value`` if zarr takes it as ``compressors`` of a v3 array: None, ``"auto"``,
    a bytes-to-bytes codec (``zarr.codecs.ZstdCodec()``, ``BloscCodec()``,
    ``GzipCodec()``, ``Crc32cCodec()``, ...) or its dict form (``{"name": "zstd",
    "configuration": {...}}``), or a list or tuple of them.

    Raises
    ------
    ConfigError
        Anything else (checked when the store is made, not when the first
        array is created in the writer).
    """
    import zarr.registry
    from zarr.abc.codec import BytesBytesCodec

    # zarr's own parser of a codec's dict form (private: it may move, and zarr
    # then checks the dict itself when the array is made)
    parse: Callable[[Any], Any] = getattr(
        zarr.registry, "_parse_bytes_bytes_codec", lambda item: item
    )

    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        why = ""
        if isinstance(item, dict):
            try:
                parse(item)
            except Exception as exc:  # zarr raises KeyError, TypeError, ValueError...
                why = f" ({type(exc).__name__}: {exc})"
            else:
                continue
        elif isinstance(item, BytesBytesCodec):
            continue
        hint = ""
        if isinstance(item, str):
            hint = "; for a codec by name, pass its object (e.g. zarr.codecs.ZstdCodec())"
        raise ConfigError(
            "compressors: expected None, 'auto', a bytes-to-bytes zarr codec (such as "
            "zarr.codecs.ZstdCodec() or BloscCodec()), its dict form, or a list of them; "
            f"got {item!r}{' in ' + repr(value) if item is not value else ''}{why}{hint}"
        )
    return value


def check_rows(value: object, what: str) -> int | None:
    """``value`` if it is ``None`` or a positive int, else ConfigError."""
    return positive_int(value, what, optional=True)


# -- chunking ------------------------------------------------------------------
def default_chunk_rows(row_nbytes: int, cap: int = MAX_CHUNK_FRAMES) -> int:
    """Rows per chunk so that one chunk holds about :data:`TARGET_CHUNK_BYTES`.

    At least 1 row (a frame larger than the target is one chunk), at most ``cap``.
    """
    return max(1, min(cap, TARGET_CHUNK_BYTES // max(1, row_nbytes)))


def _divisor_at_most(n: int, target: int) -> int:
    """The largest divisor of ``n`` that is ``<= target`` (at least 1)."""
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for c in (d, n // d):
                if best < c <= target:
                    best = c
    return best


@dataclass(frozen=True, slots=True)
class ArrayPlan:
    """How one zarr array of a snapsink group is laid out.

    ``rows`` is the growing axis 0 (frames, or rows of a ragged field);
    ``row_shape`` the rest. ``chunk`` rows per chunk, ``shard`` rows per shard
    (``None``: no sharding). Writes go in whole *blocks*: a shard when
    sharding, else a chunk.
    """

    name: str
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]
    chunk: int
    shard: int | None
    dims: tuple[str, ...]

    @property
    def block(self) -> int:
        """Rows of one storage object (shard or chunk): the unit of a write."""
        return self.shard if self.shard is not None else self.chunk

    @property
    def chunks(self) -> tuple[int, ...]:
        """zarr ``chunks=``: ``chunk`` rows by whole rows (dims of 0 get 1)."""
        return (self.chunk, *(max(1, n) for n in self.row_shape))

    @property
    def shards(self) -> tuple[int, ...] | None:
        """zarr ``shards=``, or ``None``."""
        if self.shard is None:
            return None
        return (self.shard, *(max(1, n) for n in self.row_shape))

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize




def plan_arrays(
    schema: Schema,
    *,
    times: bool,
    chunk_frames: int | None = None,
    shard_frames: int | None = None,
) -> list[ArrayPlan]:
    """The arrays of a group holding ``schema``: steps, times, fields, offsets.

    Parameters
    ----------
    schema
        The fields.
    times
        Whether a ``times`` array is laid out.
    chunk_frames
        Frames per chunk of every frame-indexed array; ``None`` picks, per array,
        about :data:`TARGET_CHUNK_BYTES` (at most :data:`MAX_CHUNK_FRAMES` frames).
    shard_frames
        Frames per shard (a multiple of ``chunk_frames``), or ``None`` for no sharding.
        With ``chunk_frames=None`` each array's chunk is the largest divisor of
        ``shard_frames`` not above its default.

    Raises
    ------
    ConfigError
        ``shard_frames`` not a multiple of ``chunk_frames``.
    """
    chunk_frames = check_rows(chunk_frames, "chunk_frames")
    shard_frames = check_rows(shard_frames, "shard_frames")
    if chunk_frames is not None and shard_frames is not None and shard_frames % chunk_frames:
        raise ConfigError(
            f"shard_frames: expected a multiple of chunk_frames={chunk_frames}, got {shard_frames}"
        )

    def frame_chunk(row_nbytes: int) -> int:
        if chunk_frames is not None:
            return chunk_frames
        default = default_chunk_rows(row_nbytes)
        return default if shard_frames is None else _divisor_at_most(shard_frames, default)

    plans: list[ArrayPlan] = []

    def add(
        name: str, dtype: np.dtype[Any], row_shape: tuple[int, ...], dims: tuple[str, ...]
    ) -> None:
        nbytes = math.prod(row_shape) * dtype.itemsize
        plans.append(ArrayPlan(name, dtype, row_shape, frame_chunk(nbytes), shard_frames, dims))

    add("steps", np.dtype(np.int64), (), ("frame",))
    if times:
        add("times", np.dtype(np.float64), (), ("frame",))
    for name, f in schema.items():
        if not f.ragged:
            fixed = tuple(n for n in f.shape if n is not None)
            # the names of Trajectory.to_xarray, so xarray.open_zarr on the group
            # and traj.to_xarray() agree (and fields naming a dimension share it)
            add(name, f.dtype, fixed, ("frame", *f.dim_names(name)))
            continue
        row_shape = f.row_shape
        add(offsets_name(name), np.dtype(np.int64), (), ("frame_edge",))
        # A ragged field's rows are chunked by bytes, not by frames.
        row_nbytes = math.prod(row_shape) * f.dtype.itemsize
        rchunk = default_chunk_rows(row_nbytes, MAX_CHUNK_ROWS)
        rshard = None
        if shard_frames is not None:
            per_chunk = frame_chunk(row_nbytes)
            rshard = rchunk * max(1, shard_frames // per_chunk)
        dims = f.dim_names(name)
        plans.append(ArrayPlan(name, f.dtype, row_shape, rchunk, rshard, dims))
    return plans


def grow_capacity(capacity: int, needed: int, block: int) -> int:
    """A new row capacity ``>= needed``: at least double, in whole blocks."""
    if needed <= capacity:
        return capacity
    target = max(needed, 2 * capacity, block)
    return -(-target // block) * block


# -- buffering -----------------------------------------------------------------
#: ``(start, rows, owned)``: rows ``[start, start + len(rows))`` of an array, to be
#: written; ``owned`` when nobody else holds the rows (the writer may keep them
#: until the write is done), else they are a view of the caller's data.
Block = tuple[int, "np.ndarray[Any, Any]", bool]


class RowBuffer:
    """Host buffer of the trailing, not yet full block of one growing array.

    Rows ``[start, start + count)`` are buffered; ``start`` is a multiple of the
    block size. :meth:`push` and :meth:`push_frames` return a :data:`Block` for
    each block-aligned run of full blocks. A full buffer is handed over (owned)
    and replaced by a spare (:meth:`recycle` gives one back), so the writer may
    keep writing it while more rows arrive. :meth:`partial` returns the
    buffered rows for a commit; they are written again, whole, when the block
    fills. Memory: one block, plus the blocks handed over and not yet recycled.
    """

    __slots__ = ("_buf", "_spare", "block", "count", "dirty", "dtype", "row_shape", "start")

    def __init__(
        self,
        dtype: np.dtype[Any],
        row_shape: tuple[int, ...],
        block: int,
        length: int = 0,
        tail: np.ndarray[Any, Any] | None = None,
    ):
        self.block = block
        self.dtype = dtype
        self.row_shape = row_shape
        self.start = length - length % block
        self.count = length - self.start
        self._buf: np.ndarray[Any, Any] = np.empty((block, *row_shape), dtype)
        self._spare: list[np.ndarray[Any, Any]] = []
        if self.count:
            if tail is None or len(tail) != self.count:
                raise ValueError(f"RowBuffer: expected {self.count} tail rows to resume")
            self._buf[: self.count] = tail
        #: buffered rows not yet written by a partial write
        self.dirty = False

    @property
    def length(self) -> int:
        """Rows pushed in all (written or buffered)."""
        return self.start + self.count

    def _hand_over(self, out: list[Block]) -> None:
        out.append((self.start, self._buf, True))
        shape = (self.block, *self.row_shape)
        self._buf = self._spare.pop() if self._spare else np.empty(shape, self.dtype)
        self.start += self.block
        self.count = 0
        self.dirty = False

    def recycle(self, buf: np.ndarray[Any, Any]) -> None:
        """Take back a buffer handed over by a push, once it is written (keeps one)."""
        if not self._spare and buf.shape == self._buf.shape and buf.dtype == self.dtype:
            self._spare.append(buf)

    def push(self, rows: np.ndarray[Any, Any], *, owned: bool = False) -> list[Block]:
        """Append ``rows`` (shape ``(k, *row_shape)``); return the full blocks to write.

        Whole blocks are taken straight from ``rows`` (no copy): owned when
        ``owned`` says nobody else holds ``rows``.
        """

        def copy(c: int, i: int, take: int) -> None:
            self._buf[c : c + take] = rows[i : i + take]

        return self._append(len(rows), lambda i, k: (rows[i : i + k], owned), copy)

    def push_frames(self, frames: Sequence[Any]) -> list[Block]:
        """Append one row per frame (each of shape ``row_shape``), copying each
        frame once: into the buffer, or into one stacked array of whole blocks."""

        def copy(c: int, i: int, take: int) -> None:
            buf = self._buf
            for j in range(take):
                buf[c + j] = frames[i + j]

        return self._append(len(frames), lambda i, k: (np.stack(frames[i : i + k]), True), copy)

    def _append(
        self,
        n: int,
        whole: Callable[[int, int], tuple[np.ndarray[Any, Any], bool]],
        copy: Callable[[int, int, int], None],
    ) -> list[Block]:
        """The walk :meth:`push` and :meth:`push_frames` share over ``n`` new rows:
        ``whole(i, k)`` gives rows ``[i, i + k)`` as whole blocks (and whether they
        are owned) when the buffer is empty; ``copy(c, i, take)`` copies rows
        ``[i, i + take)`` into the buffer from its row ``c``."""
        out: list[Block] = []
        i, block = 0, self.block
        while i < n:
            if self.count == 0 and n - i >= block:
                k = (n - i) // block * block
                rows, owned = whole(i, k)
                out.append((self.start, rows, owned))
                self.start += k
                i += k
                continue
            take = min(block - self.count, n - i)
            copy(self.count, i, take)
            self.count += take
            i += take
            self.dirty = True
            if self.count == block:
                self._hand_over(out)
        return out

    def partial(self) -> tuple[int, np.ndarray[Any, Any]] | None:
        """``(start, rows)`` of the buffered rows if they changed since last written."""
        if not self.dirty or not self.count:
            return None
        return self.start, self._buf[: self.count]

    def mark_written(self) -> None:
        """The rows :meth:`partial` returned are stored."""
        self.dirty = False

    def last(self) -> np.ndarray[Any, Any] | None:
        """The last buffered row, if any."""
        return self._buf[self.count - 1] if self.count else None


class DirectRows:
    """The row count of an array whose rows are written in place, straight from
    the frames into their chunk files (nothing is buffered).

    :meth:`runs` splits the next rows at chunk boundaries: ``(chunk index, first
    row in that chunk, first, stop)`` with ``[first, stop)`` indexing the rows
    pushed, and whether the run ends its chunk.
    """

    __slots__ = ("chunk", "length")

    def __init__(self, chunk: int, length: int = 0):
        self.chunk = chunk
        self.length = length

    def runs(self, n: int) -> list[tuple[int, int, int, int, bool]]:
        out = []
        i, at, chunk = 0, self.length, self.chunk
        while i < n:
            index, row = divmod(at, chunk)
            take = min(chunk - row, n - i)
            out.append((index, row, i, i + take, row + take == chunk))
            i += take
            at += take
        self.length = at
        return out


# -- dropped steps -------------------------------------------------------------
# -- metadata ------------------------------------------------------------------
@dataclass(slots=True)
class Meta:
    """snapsink's bookkeeping in a group's attributes (under :data:`META_KEY`)."""

    count: int = 0
    schema: Schema | None = None
    times: bool | None = None
    dropped: StepRanges = field(default_factory=StepRanges)
    closed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "count": self.count,
            "schema": None if self.schema is None else self.schema.to_json(),
            "times": self.times,
            "dropped": self.dropped.to_json(),
            "closed": self.closed,
        }




def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def is_snapsink_attrs(attrs: Mapping[str, Any]) -> bool:
    """True when a group's attributes claim to be a snapsink store (maybe corrupt)."""
    meta = attrs.get(META_KEY)
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def parse_meta(attrs: Mapping[str, Any], where: str = "group") -> tuple[Meta, dict[str, Any]]:
    """Read and check the bookkeeping and user attrs of a group's attributes.

    Never trusts the input: every key is type-checked.

    Returns
    -------
    (Meta, dict)
        The bookkeeping and the user's attrs.

    Raises
    ------
    FormatError
        Missing, foreign, newer or malformed metadata.
    """
    meta = attrs.get(META_KEY)
    if not isinstance(meta, dict):
        raise FormatError(f"{where}: not a snapsink store (no {META_KEY!r} attribute object)")
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: expected format {FORMAT_NAME!r}, got {meta.get('format')!r}")

    def bad(msg: str) -> FormatError:
        return FormatError(f"{where}: {msg}")

    check_format_version(meta.get("version"), FORMAT_VERSION, bad)
    count = meta.get("count")
    if not _is_int(count) or count < 0:
        raise FormatError(f"{where}: malformed frame count {count!r}")
    schema_obj = meta.get("schema")
    schema: Schema | None = None
    if schema_obj is not None:
        try:
            schema = Schema.from_json(schema_obj)
        except (ConfigError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: malformed schema: {exc}") from exc
    elif count:
        raise FormatError(f"{where}: {count} frames but no schema")
    times = meta.get("times")
    if times is not None and not isinstance(times, bool):
        raise FormatError(f"{where}: malformed times flag {times!r}")
    if count and times is None:
        raise FormatError(f"{where}: {count} frames but no times flag")
    closed = meta.get("closed", False)
    if not isinstance(closed, bool):
        raise FormatError(f"{where}: malformed closed flag {closed!r}")
    ranges = parse_step_ranges(meta.get("dropped", []), bad)
    user = attrs.get(ATTRS_KEY, {})
    if not isinstance(user, dict):
        raise FormatError(f"{where}: malformed {ATTRS_KEY!r} (expected an object)")
    return (
        Meta(count=count, schema=schema, times=times, dropped=StepRanges(ranges), closed=closed),
        dict(user),
    )
