"""The growing arrays of a ZarrStore, and how a batch of frames becomes writes.

A :class:`Column` is one zarr array of the group: its plan, its zarr handle,
its capacity, the trailing block buffered in host memory, and (on a local
directory) where the block writer puts its chunks. :func:`blocks_of` turns a
batch of frames into whole blocks to encode and write and into runs of rows
written in place (uncompressed arrays); no I/O happens here, so the store
decides *when* to write and the block writer *how*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype

from .._errors import SchemaError
from .._schema import Schema
from ._zarrio import BlockTarget, writes_in_place
from ._zarrplan import ArrayPlan, Block, DirectRows, RowBuffer, offsets_name

__all__ = ["STACK_BELOW", "Column", "Run", "blocks_of", "in_place"]

#: rows smaller than this, written in place, are stacked into one buffer per run
STACK_BELOW = 16 << 10
#: rows written in place: (column, chunk index, first row in the chunk, rows (each
#: one row, or a stack of rows), whether they end the chunk, whether owned)
Run = tuple["Column", int, int, list["np.ndarray[Any, Any]"], bool, bool]


class Column:
    """One growing array: its plan, zarr handle, capacity, trailing block, and
    (on a local directory) what the block writer needs to place its blocks.

    ``direct`` (a local directory, ``in_place`` asked for, and chunks that are
    the rows' own bytes, see :func:`._zarrio.writes_in_place`): rows go straight
    from the frames into their chunk files; ``buf`` then stays empty. ``grid``:
    the block's chunk coordinates along the other axes (a rank's chunk of a
    field decomposed over ranks); rows are then that chunk's part of each frame.
    ``empty``: a row holds no element (a dimension of length 0): the array only
    grows, no chunk is ever written (zarr writes and reads none either: its
    chunk grid has a length of 1 there, and a block of 0 elements cannot fill it).
    """

    __slots__ = ("array", "buf", "capacity", "direct", "empty", "encodes", "plan", "target")

    def __init__(
        self,
        plan: ArrayPlan,
        array: Any,
        buf: RowBuffer,
        root: Path | None,
        *,
        in_place: bool = False,
        length: int = 0,
        grid: tuple[int, ...] = (),
    ):
        self.plan = plan
        self.array = array
        self.buf = buf
        self.capacity = int(array.shape[0])
        self.target: BlockTarget | None = None
        self.direct: DirectRows | None = None
        self.empty = not math.prod(plan.row_shape)
        #: the codecs do real work (compression, sharding), not only a byte view
        pipeline = array.codec_pipeline
        self.encodes = bool(
            getattr(pipeline, "bytes_bytes_codecs", True)
            or type(getattr(pipeline, "array_bytes_codec", None)).__name__ != "BytesCodec"
        )
        if root is not None:
            meta = array.metadata
            ndim = len(meta.shape)
            spec = meta.get_chunk_spec((0,) * ndim, array.config, default_buffer_prototype())
            path = array.store_path.path
            raw = plan.shard is None and writes_in_place(pipeline, spec, plan.dtype)
            self.target = BlockTarget(
                root / path if path else root,
                array.codec_pipeline,
                spec,
                meta.encode_chunk_key,
                raw,
                grid,
            )
            if in_place and raw and not self.empty:
                self.direct = DirectRows(plan.chunk, length)

    @property
    def length(self) -> int:
        """Rows pushed in all (written or buffered)."""
        return self.direct.length if self.direct is not None else self.buf.length


def in_place(schema: Schema, name: str) -> bool:
    """Whether array ``name`` may take rows straight from the frames: one row per
    frame, a field's or the frames' ``steps`` and ``times`` (built for each batch,
    one stacked run); not the ragged data (concatenated) or its offsets."""
    if name in ("steps", "times"):
        return True
    fld = schema.get(name)
    return fld is not None and not fld.ragged


def blocks_of(
    cols: Mapping[str, Column], schema: Schema, frames: list[Any], *, times: bool, who: str
) -> tuple[list[tuple[Column, Block]], list[Run]]:
    """Push the frames' rows into every column's buffer; the full blocks to
    write, and the runs of rows written in place (direct columns).

    Raises
    ------
    SchemaError
        ``times`` and a frame without a time.
    """
    n = len(frames)
    out: list[tuple[Column, Block]] = []
    runs: list[Run] = []

    def push(col: Column, rows: np.ndarray[Any, Any], owned: bool) -> None:
        out.extend((col, b) for b in col.buf.push(rows, owned=owned))

    def built(col: Column, rows: np.ndarray[Any, Any]) -> None:
        """One row per frame, built here (so owned): in place when the column is."""
        if col.direct is None:
            push(col, rows, True)
            return
        for index, row, i, j, full in col.direct.runs(n):
            runs.append((col, index, row, [rows[i:j]], full, True))

    built(cols["steps"], np.fromiter((f.step for f in frames), np.int64, n))
    if times:
        if any(f.time is None for f in frames):
            raise SchemaError(f"{who}: expected a time on every frame")
        built(cols["times"], np.fromiter((f.time for f in frames), np.float64, n))
    for name, fld in schema.items():
        arrays = [f.fields[name] for f in frames]
        col = cols[name]
        if col.direct is not None:
            # Straight from the frames into the chunk files: no chunk buffer, no
            # copy but the one into the page cache (small rows: one stacked copy
            # rather than a tiny buffer per row).
            for index, row, i, j, full in col.direct.runs(n):
                part = [np.asarray(a) for a in arrays[i:j]]
                if len(part) > 1 and col.plan.row_nbytes < STACK_BELOW:
                    runs.append((col, index, row, [np.stack(part)], full, True))
                else:
                    runs.append((col, index, row, part, full, False))
        elif fld.ragged:
            data = cols[name]
            counts = np.fromiter((len(a) for a in arrays), np.int64, n)
            push(cols[offsets_name(name)], data.length + np.cumsum(counts), True)
            if n == 1:
                push(data, np.asarray(arrays[0]), False)
            else:
                push(data, np.concatenate(arrays), True)
        elif n == 1 and cols[name].plan.block == 1 and cols[name].encodes:
            # One frame a block, compressed, a batch of one: a copy (cheap beside
            # the codec) lets this append return while the frame is encoded, so
            # the blocks of the next frames are encoded at once, on every core.
            # A larger batch is encoded straight from the frames, in parallel.
            for a in arrays:
                push(cols[name], np.array(a)[np.newaxis], True)
        elif n == 1 or cols[name].plan.block == 1:
            # One frame a block (large frames): each block is written straight
            # from the frame, never copied first (the write is waited for).
            for a in arrays:
                push(cols[name], np.asarray(a)[np.newaxis], False)
        else:
            out.extend((cols[name], b) for b in cols[name].buf.push_frames(arrays))
    return out, runs
