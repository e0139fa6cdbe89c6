"""The read side that the Zarr and HDF5 readers share: frames and ragged rows
over arrays that hold one row per frame (or per ragged row).

A reader keeps ``length`` (committed frames), ``schema``, ``_where`` (how to
name the store in messages), ``_meta`` (whose ``times`` says whether frames
have times), ``_user`` (the user's attrs), ``_steps``, ``_times`` and
``_ragged_rows`` (caches), and
provides three hooks: ``_get(name, start, stop)`` reads rows of a stored
array, checking what the store can check; ``_holds(key)`` and
``_stored_rows(key)`` say whether an array is stored and how many rows it
holds. Everything else (range checks, offset validation, the Dask chunk
reads) is written once here, with the check of a stored array against its
plan (:func:`check_row_array`, also run by the Zarr writer when it resumes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from .._errors import FormatError
from .._schema import Schema, offsets_name
from ._zarrplan import ArrayPlan

__all__ = ["RowArraysSource", "check_row_array", "committed_rows"]


def committed_rows(plan: ArrayPlan, schema: Schema, count: int) -> int:
    """The rows array ``plan`` must hold for ``count`` committed frames: one per
    frame, one more for a ragged field's offsets, and none known for a ragged
    field's rows (checked against its offsets when read)."""
    if plan.name.endswith(".offsets"):
        return count + 1
    if plan.name in schema and schema[plan.name].ragged:
        return 0
    return count


def check_row_array(
    where: str, kind: str, plan: ArrayPlan, dtype: object, shape: tuple[int, ...], need: int
) -> None:
    """Refuse a stored array (a zarr array, an HDF5 dataset: its ``kind``) whose
    dtype or row shape is not the plan's, or that holds fewer than ``need`` rows.

    Raises
    ------
    FormatError
        Naming the array, what it holds and what the plan expects.
    """
    if dtype != plan.dtype or tuple(shape[1:]) != plan.row_shape:
        raise FormatError(
            f"{where}: {kind} {plan.name!r} has dtype {dtype} and shape {shape}; "
            f"expected {plan.dtype} and rows of shape {plan.row_shape}"
        )
    if shape[0] < need or need < 0:
        raise FormatError(
            f"{where}: {kind} {plan.name!r} holds {shape[0]} rows, fewer than "
            f"the {need} committed"
        )


class _TimesFlag(Protocol):
    """A format's group metadata, as far as the shared reads need it."""

    times: bool | None


def check_offsets(
    off: np.ndarray[Any, Any], start: int, stop: int, stored: int, what: str
) -> None:
    """Offsets ``off`` of frames ``[start, stop]`` of a ragged field are sane:
    non-decreasing, from 0 at frame 0, within the ``stored`` rows. Every reader
    of offsets (the Zarr and HDF5 readers, the many-rank reader) checks here.

    Raises
    ------
    FormatError
        ``what`` (naming the store and the field) are corrupt.
    """
    if off.size and (
        off[0] < 0
        or off[-1] > stored
        or bool(np.any(np.diff(off) < 0))
        or (start == 0 and off[0] != 0)
    ):
        raise FormatError(
            f"{what} are corrupt (frames [{start}, {stop}]: expected non-decreasing "
            f"offsets from 0 within [0, {stored}])"
        )


class RowArraysSource:
    """Mixin: :class:`~snapsink._trajectory.Source` reads over row arrays."""

    #: what the store calls an array, in messages ("array", "dataset")
    ARRAY_KIND: ClassVar[str] = "array"

    length: int
    schema: Schema | None
    _where: str
    _meta: _TimesFlag
    _user: dict[str, Any]
    _steps: np.ndarray[Any, np.dtype[np.int64]] | None
    _times: np.ndarray[Any, np.dtype[np.float64]] | None
    _ragged_rows: dict[str, int]

    # -- the hooks --------------------------------------------------------------------
    def _get(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        raise NotImplementedError

    def _holds(self, key: str) -> bool:
        raise NotImplementedError

    def _stored_rows(self, key: str) -> int:
        raise NotImplementedError

    # -- frames ---------------------------------------------------------------------
    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        if self._steps is None:
            if not self.length:
                steps = np.zeros(0, np.int64)
            else:
                steps = np.asarray(self._get("steps", 0, self.length), dtype=np.int64)
            if steps.size > 1 and not bool(np.all(np.diff(steps) > 0)):
                raise FormatError(f"{self._where}: stored steps do not strictly increase")
            self._steps = steps
        return self._steps

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        if not self._meta.times:
            return None
        if self._times is None:
            self._times = np.asarray(self._get("times", 0, self.length), dtype=np.float64)
        return self._times

    def attrs(self) -> Mapping[str, Any]:
        return self._user

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"frames [{start}, {stop}) out of range for {self.length} frames")

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Frames ``[start, stop)`` of fixed-shape field ``name``."""
        self._check_range(start, stop)
        return self._get(name, start, stop)

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` of ragged field ``name`` and their offsets."""
        self._check_range(start, stop)
        off = np.asarray(self._get(offsets_name(name), start, stop + 1), dtype=np.int64)
        check_offsets(
            off, start, stop, self._stored_rows(name), f"{self._where}: offsets of ragged "
            f"field {name!r}"
        )  # fmt: skip
        rows = self._get(name, int(off[0]), int(off[-1]))
        return rows, off - off[0]

    # -- chunk reads (snapsink._dask.ChunkedSource) ------------------------------------
    def array_rows(self, key: str) -> int:
        """Committed rows of array ``key`` (a field, or a ragged field's offsets);
        a ragged field's is its last committed offset, read once."""
        kind = self.ARRAY_KIND
        if not self._holds(key) or key in ("steps", "times"):
            raise KeyError(f"no stored {kind} {key!r} in {self._where}")
        schema = self.schema
        if key.endswith(".offsets"):
            return self.length + 1
        if schema is not None and schema[key].ragged:
            if key not in self._ragged_rows:
                if not self.length:
                    return 0
                rows = int(self._get(offsets_name(key), self.length, self.length + 1)[0])
                stored = self._stored_rows(key)
                if not 0 <= rows <= stored:
                    raise FormatError(
                        f"{self._where}: the last offset of ragged field {key!r} is {rows}; "
                        f"its {kind} holds {stored} rows"
                    )
                self._ragged_rows[key] = rows
            return self._ragged_rows[key]
        return self.length

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rows ``[start, stop)`` of array ``key``, within its committed rows."""
        rows = self.array_rows(key)
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for {rows} rows of {key!r}")
        return self._get(key, start, stop)
