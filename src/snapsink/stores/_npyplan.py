"""What one append of NpyDirectory writes, decided without I/O.

:func:`plan_append` checks a batch of frames against the store (step order,
times, each field's shape) and turns it into the rows each growable file
``<key>.npy`` receives: steps, times, the fields' data and the ragged fields'
offsets. The writer (:mod:`.npy`) then reserves room, writes the buffers and
moves its counts only once every byte went out. Split from the writer so that
the decisions are plain functions, as the Zarr store keeps its plan in
``_zarrplan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import SchemaError
from .._schema import Field, Frame, Schema, offsets_name
from ._npyformat import bytes_of, row_layout

__all__ = ["Write", "plan_append"]

#: ``(key, rows, buffers)``: ``rows`` rows of ``<key>.npy``, in ``buffers`` back to back
Write = tuple[str, int, list[memoryview]]


def plan_append(
    schema: Schema,
    times: bool,
    frames: Sequence[Frame],
    last_step: int | None,
    ragged_rows: Mapping[str, int],
) -> tuple[list[Write], int]:
    """The writes that append ``frames``, and the batch's last step.

    Parameters
    ----------
    schema, times
        The store's schema, and whether its frames carry a time.
    frames
        The batch (not empty).
    last_step
        The store's last step (None: no frame yet).
    ragged_rows
        ``{name: rows}`` of each ragged field's data file before the batch
        (the first of the batch's offsets counts from there).

    Raises
    ------
    SchemaError
        Steps that do not strictly increase after ``last_step``, a frame without
        a time in a store that has times, or a field of the wrong shape.
    """
    n = len(frames)
    steps = np.fromiter((fr.step for fr in frames), np.int64, n)
    if (last_step is not None and steps[0] <= last_step) or (
        n > 1 and not bool(np.all(steps[1:] > steps[:-1]))
    ):
        raise SchemaError(
            f"steps must strictly increase after {last_step}, got {steps[:8].tolist()}"
        )
    writes: list[Write] = [("steps", n, [bytes_of(steps)])]
    if times:
        if any(fr.time is None for fr in frames):
            raise SchemaError("every frame must carry a time (the store has times)")
        tms = np.fromiter((fr.time for fr in frames), np.float64, n)
        writes.append(("times", n, [bytes_of(tms)]))
    for name, f in schema.items():
        writes.extend(_field_writes(name, f, frames, ragged_rows.get(name, 0)))
    return writes, int(steps[-1])


def _field_writes(name: str, f: Field, frames: Sequence[Frame], used: int) -> list[Write]:
    """The rows of field ``name`` (and of its offsets when ragged) for ``frames``."""
    _, row_shape = row_layout(f)
    arrays = []
    for fr in frames:
        a = fr.fields[name]
        if not isinstance(a, np.ndarray) or a.dtype != f.dtype:
            a = np.asarray(a, dtype=f.dtype)
        _check_shape(name, f, a, row_shape, fr.step)
        arrays.append(a)
    bufs = [bytes_of(a) for a in arrays]
    if not f.ragged:
        return [(name, len(arrays), bufs)]
    counts = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
    offsets = used + np.cumsum(counts)
    return [
        (name, int(counts.sum()), bufs),
        (offsets_name(name), len(arrays), [bytes_of(offsets)]),
    ]


def _check_shape(
    name: str, f: Field, a: np.ndarray[Any, Any], row_shape: tuple[int, ...], step: int
) -> None:
    if f.ragged:
        if a.ndim != len(f.shape) or a.shape[1:] != row_shape:
            raise SchemaError(
                f"field {name!r}: expected rows of shape {row_shape}, got an "
                f"array of shape {a.shape} at step {step}"
            )
    elif a.shape != row_shape:
        raise SchemaError(
            f"field {name!r}: expected shape {row_shape}, got {a.shape} at step {step}"
        )
