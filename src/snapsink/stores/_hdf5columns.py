"""The growing datasets of an HDF5Store, and how frames become rows in them.

A :class:`Column` is one frame-indexed dataset of the group: its plan, the
buffer of its last chunk, and how far the dataset on disk extends. Here the
datasets are created (:func:`create_columns`), reopened for ``mode="a"``
(:func:`load_columns`), fed (:func:`plan_rows` checks a batch and says what
each dataset gets) and written (:func:`write_rows`, inside a session the store
opened). Split from ``hdf5.py`` so that it holds the store's life cycle and
its sessions, and this the datasets (as ``_zarrcolumns`` does for ZarrStore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import FormatError, SchemaError
from .._schema import Field, Frame, Schema
from ._hdf5file import import_h5py
from ._hdf5plan import Compression, maxshape
from ._zarrplan import ArrayPlan, RowBuffer, plan_arrays

__all__ = [
    "Column",
    "Pending",
    "check_free",
    "create_columns",
    "field_arrays",
    "load_columns",
    "plan_rows",
    "session_bytes",
    "write_rows",
]

#: full chunks buffered for a dataset: (dataset name, first row, rows)
Pending = tuple[str, int, np.ndarray[Any, Any]]


@dataclass(slots=True)
class Column:
    """One growing dataset: its plan, the buffer of its last chunk, and how
    far the dataset on disk extends."""

    plan: ArrayPlan
    buf: RowBuffer
    extent: int  # rows the dataset holds on disk (may exceed the committed ones)
    direct: bool  # whole chunks go straight to the file (no filter)


def create_columns(
    grp: Any,
    schema: Schema,
    *,
    times: bool,
    chunk_frames: int | None,
    compression: Compression | None,
    only: str | None = None,
    where: str = "",
) -> dict[str, Column]:
    """Create the datasets of ``schema`` in ``grp`` (only dataset ``only``,
    when given), each empty (an offsets dataset: one 0), and their columns.

    Raises
    ------
    SchemaError
        Before anything is made: a dataset's name is taken by a group (another
        run nested in this one, a user's group) or a link (:func:`check_free`).
    """
    kw: dict[str, Any] = {}
    if compression is not None:
        kind, opts = compression
        if isinstance(kind, int):
            _load_filter_plugins()
        kw = {"compression": kind, "compression_opts": opts}
    columns: dict[str, Column] = {}
    plans = [
        p
        for p in plan_arrays(schema, times=times, chunk_frames=chunk_frames)
        if only is None or p.name == only
    ]
    check_free(grp, [p.name for p in plans], where)
    for plan in plans:
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
        columns[plan.name] = Column(plan, buf, length, _direct(ds))
    return columns


def check_free(grp: Any, names: list[str], where: str) -> None:
    """Refuse names of ``grp`` that something other than a dataset holds (a
    dataset there is one an interrupted ``prepare`` left: made again).

    Raises
    ------
    SchemaError
        Naming the field's dataset and what holds its name.
    """
    h5py = import_h5py()
    for name in names:
        link = grp.get(name, getlink=True)
        if link is None:
            continue
        if isinstance(link, h5py.HardLink) and isinstance(grp[name], h5py.Dataset):
            continue
        what = "a group" if isinstance(link, h5py.HardLink) else "a link"
        raise SchemaError(
            f"{where}: dataset {name!r} cannot be made: {what} of that name is in the "
            f"group ({grp.name}/{name}; another run nested in this one, or a user's "
            "object); nothing was written: rename the field or move that object away"
        )


def load_columns(
    h5py: Any, grp: Any, schema: Schema, *, times: bool, count: int, where: str
) -> dict[str, Column]:
    """The columns of a group reopened with ``count`` committed frames: each
    dataset checked against the plan, its last partial chunk read back into
    its buffer (the datasets keep their own chunking and compression).

    Raises
    ------
    FormatError
        A dataset is missing, of another dtype or row shape, not chunked, or
        shorter than the committed frames (or offsets) say.
    """
    lengths: dict[str, int] = {}  # a ragged field's rows, from its offsets
    columns: dict[str, Column] = {}
    for plan in plan_arrays(schema, times=times):
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
            lengths[plan.name[: -len(".offsets")]] = _last_offset(ds, plan.name, count, where)
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
        columns[plan.name] = Column(actual, buf, int(ds.shape[0]), _direct(ds))
    return columns


def _last_offset(ds: Any, name: str, count: int, where: str) -> int:
    """The committed rows of a ragged field: offset ``count`` of its offsets
    dataset ``ds`` (whose first offset must be 0)."""
    if ds.shape[0] < count + 1:
        raise FormatError(f"{where}: {name!r} is shorter than {count + 1}")
    ends = np.asarray(ds[[0, count]] if count else ds[0:1], np.int64)
    if int(ends[0]) != 0:
        raise FormatError(f"{where}: {name!r} does not start at 0")
    return int(ends[-1])


def plan_rows(
    schema: Schema, frames: list[Frame], columns: dict[str, Column], *, times: bool, where: str
) -> list[tuple[str, Any]]:
    """What each dataset gets from ``frames``, after checking every frame
    (nothing is buffered when a frame is refused): an array of rows, or (a
    fixed field) the list of its frames' arrays.

    Raises
    ------
    SchemaError
        A frame lacks a time the store has, or a field's shape is wrong.
    """
    n = len(frames)
    steps = np.fromiter((fr.step for fr in frames), np.int64, n)
    out: list[tuple[str, Any]] = [("steps", steps)]
    if times:
        if any(fr.time is None for fr in frames):
            raise SchemaError(f"{where}: every frame must carry a time (the store has times)")
        out.append(("times", np.fromiter((fr.time for fr in frames), np.float64, n)))
    for name, f in schema.items():
        arrays = field_arrays(name, f, frames)
        if not f.ragged:
            out.append((name, arrays))
            continue
        counts = np.fromiter((len(a) for a in arrays), np.int64, n)
        offsets = columns[name].buf.length + np.cumsum(counts)
        rows = np.concatenate(arrays) if arrays else np.empty((0, *f.row_shape), f.dtype)
        out.append((name, rows))
        out.append((f"{name}.offsets", offsets))
    return out


def field_arrays(name: str, f: Field, frames: list[Frame]) -> list[np.ndarray[Any, Any]]:
    """Field ``name``'s array in each frame, of the field's dtype (converted
    when needed), its shape checked (a ragged field: its row shape).

    Raises
    ------
    SchemaError
        An array of another shape, naming the field and the step.
    """
    # NpyDirectory._plan_field (npy.py) makes the same check, written again.
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
    return arrays


def write_rows(
    grp: Any, columns: dict[str, Column], pending: list[Pending], *, commit: bool
) -> None:
    """Write the ``pending`` full chunks into ``grp``'s datasets (growing
    them first); with ``commit``, also every column's partly filled chunk.
    The caller clears ``pending`` after."""
    parts: list[Pending] = []
    if commit:
        for name, col in columns.items():
            part = col.buf.partial()
            if part is not None:
                parts.append((name, *part))
    ends: dict[str, int] = {}
    for name, start, rows in (*pending, *parts):
        ends[name] = max(ends.get(name, 0), start + len(rows))
    datasets = {name: grp[name] for name in ends}
    for name, end in ends.items():
        col = columns[name]
        if end > col.extent:
            datasets[name].resize(end, axis=0)
            col.extent = end
    for name, start, rows in pending:
        if not rows.size:
            continue  # rows of no bytes (a dimension of size 0): nothing to write
        col = columns[name]
        _write_chunks(datasets[name], col, start, rows)
    for name, start, rows in parts:
        if rows.size:
            datasets[name][start : start + len(rows)] = rows
    if datasets:
        # Flushed here, while the datasets are open: HDF5 writes a chunk held
        # in its cache when its dataset closes, and h5py ignores an error
        # there (a write that failed lost its frames, and the commit went on)
        grp.file.flush()
    for name, _, _ in parts:
        columns[name].buf.mark_written()


def session_bytes(columns: dict[str, Column], pending: list[Pending], *, commit: bool) -> int:
    """The most bytes of chunks :func:`write_rows` may add to the file for
    ``pending`` (and, with ``commit``, the partly filled chunks). HDF5
    allocates a chunk whole: a dataset without a filter adds each chunk it
    starts (one it wrote before is written again in place). A filtered
    (compressed) chunk takes what its filter makes of it: its rows' bytes at
    most, 1/64 and 4 KiB more (a compressor's growth on what it cannot
    compress; the empty rest of a partly filled chunk compresses to almost
    nothing)."""
    spans: list[tuple[Column, int, int]] = [
        (columns[name], start, len(rows)) for name, start, rows in pending
    ]
    if commit:
        for col in columns.values():
            part = col.buf.partial()
            if part is not None:
                spans.append((col, part[0], len(part[1])))
    total = 0
    for col, start, n in spans:
        if n:
            chunk = col.plan.chunk
            first, last = start // chunk, (start + n - 1) // chunk
            if col.direct:  # the chunks below the extent on disk are written
                first = max(first, -(-col.extent // chunk))
                total += max(0, last - first + 1) * chunk * col.plan.row_nbytes
            else:
                rows = n * col.plan.row_nbytes
                total += rows + rows // 64 + (last - first + 1) * 4096
    return total


def _write_chunks(ds: Any, col: Column, start: int, rows: np.ndarray[Any, Any]) -> None:
    """Whole chunks of rows from row ``start``: raw (no filter) or through h5py."""
    if col.direct:
        chunk = col.plan.chunk
        rest = (0,) * (rows.ndim - 1)
        for k in range(0, len(rows), chunk):
            block = np.ascontiguousarray(rows[k : k + chunk])
            ds.id.write_direct_chunk((start + k, *rest), block)
    else:
        ds[start : start + len(rows)] = rows


def _direct(ds: Any) -> bool:
    """Whole chunks of ``ds`` may be written as raw bytes (no filter)."""
    return ds.compression is None and not ds.id.get_create_plist().get_nfilters()


def _load_filter_plugins() -> None:
    """Register hdf5plugin's filters (Blosc, Zstd, ...) when it is installed."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
