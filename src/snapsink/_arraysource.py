"""A :class:`~snapsink._trajectory.Source` over arrays in memory: what
HostMemory hands to :class:`~snapsink.Trajectory` (and what tests build one
from). Beside the stores' readers (``stores/_*read.py``), not in
:mod:`._trajectory`, which holds the read API every source shares."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._schema import Schema
from ._trajectory import read_only

__all__ = ["ArraySource"]


class ArraySource:
    """A :class:`Source` over in-memory arrays (HostMemory and tests).

    The arrays given are its snapshot: field reads return copies of them (the
    caller's own, as a disk store's reads are), and steps, times, static arrays
    and dropped steps are read-only views; static arrays and attrs are copied
    here, so that nothing the store keeps is handed out.
    """

    def __init__(
        self,
        schema: Schema | None,
        steps: np.ndarray[Any, np.dtype[np.int64]],
        times: np.ndarray[Any, np.dtype[np.float64]] | None,
        data: Mapping[str, np.ndarray[Any, Any]],
        offsets: Mapping[str, np.ndarray[Any, np.dtype[np.int64]]],
        static: Mapping[str, np.ndarray[Any, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        dropped_steps: Sequence[int] = (),
    ):
        self.schema = schema
        self.length = len(steps)
        self._steps = read_only(steps)
        self._times = None if times is None else read_only(times)
        self._data = data
        self._offsets = offsets
        self._static = {k: read_only(np.array(v)) for k, v in (static or {}).items()}
        self._attrs = copy.deepcopy(dict(attrs or {}))
        self._dropped = read_only(np.asarray(sorted(dropped_steps), dtype=np.int64))

    # Deliberate parallel of H5MDSource's accessors (stores/_h5mdread.py): each
    # Source answers the protocol from the fields it holds.
    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self._steps

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        return self._times

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        return self._static

    def attrs(self) -> Mapping[str, Any]:
        return self._attrs

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self._dropped

    # Reads copy (one copy, of the rows asked for): a view would let an edit of
    # a result change every later read of the snapshot.
    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        return self._data[name][start:stop].copy()

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        off = self._offsets[name][start : stop + 1]
        return self._data[name][off[0] : off[-1]].copy(), off - off[0]

    def refresh(self) -> None:
        return None

    # -- chunk reads (snapsink._dask.ChunkedSource) ------------------------------
    def _stored(self, key: str) -> np.ndarray[Any, Any]:
        if key.endswith(".offsets") and key.removesuffix(".offsets") in self._offsets:
            return self._offsets[key.removesuffix(".offsets")][: self.length + 1]
        schema = self.schema
        if schema is None or key not in schema:
            raise KeyError(f"no stored array {key!r}")
        if schema[key].ragged:
            return self._data[key][: int(self._offsets[key][self.length])]
        return self._data[key][: self.length]

    def array_rows(self, key: str) -> int:
        return len(self._stored(key))

    def array_chunk(self, key: str) -> int | None:
        return None

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        arr = self._stored(key)
        if not 0 <= start <= stop <= len(arr):
            raise IndexError(f"rows [{start}, {stop}) out of range for {len(arr)} rows of {key!r}")
        return arr[start:stop].copy()

    def opener(self) -> None:
        return None  # in-memory arrays travel with the graph
