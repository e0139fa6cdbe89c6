"""Reading the ragged fields of a group written by many ranks, as one trajectory.

A ragged field written with ``comm`` is stored as one pair of arrays per rank
(``<name>.rank<r>`` and ``<name>.rank<r>.offsets``, see :mod:`._zarrparplan`):
plain zarr arrays any tool reads. :class:`RankedRagged` reads them as the single
ragged field of the trajectory: frame ``i`` holds rank 0's rows of frame ``i``,
then rank 1's, and so on. Its global offsets are the sums of the ranks'
offsets, and :meth:`RankedRagged.index` gives the global index (which rank owns
which rows of each frame).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._errors import FormatError
from .._trajectory import read_only
from ._rows import check_offsets
from ._zarrparplan import PARALLEL_KEY, rank_array

__all__ = ["RankedRagged", "parallel_ranks"]

#: reads rows [start, stop) of a stored array (the source's checked read)
Getter = Callable[[str, int, int], "np.ndarray[Any, Any]"]


def parallel_ranks(attrs: Mapping[str, Any], where: str) -> int | None:
    """The number of ranks that wrote the group, or None for a single writer.

    Raises
    ------
    FormatError
        A malformed many-rank attribute.
    """
    par = attrs.get(PARALLEL_KEY)
    if par is None:
        return None
    ranks = par.get("ranks") if isinstance(par, dict) else None
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise FormatError(f"{where}: malformed {PARALLEL_KEY!r} attribute {par!r}")
    return ranks


class RankedRagged:
    """One ragged field of a many-rank group, read over its per-rank arrays.

    Parameters
    ----------
    name
        The field.
    ranks
        Ranks that wrote the group.
    count
        Committed frames.
    get, stored_rows
        The source's read of rows of an array, and the rows an array holds.
    where
        The group, for messages.
    """

    def __init__(
        self,
        name: str,
        ranks: int,
        count: int,
        get: Getter,
        stored_rows: Callable[[str], int],
        where: str,
    ):
        self.name = name
        self.ranks = ranks
        self.count = count
        self._get = get
        self._stored_rows = stored_rows
        self._where = where
        self._offsets: np.ndarray[Any, np.dtype[np.int64]] | None = None

    def _rank_offsets(self, rank: int, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rank ``rank``'s offsets of frames ``[start, stop]``, checked."""
        off = np.asarray(self._get(rank_array(self.name, rank, offsets=True), start, stop + 1))
        off = off.astype(np.int64, copy=False)
        stored = self._stored_rows(rank_array(self.name, rank))
        what = f"{self._where}: offsets of rank {rank}'s rows of ragged field {self.name!r}"
        check_offsets(off, start, stop, stored, what)
        return off

    def index(self, start: int = 0, stop: int | None = None) -> np.ndarray[Any, Any]:
        """Rows of each rank in frames ``[start, stop)``: shape ``(frames, ranks)``
        (the global index: frame ``i``'s rows from rank ``r`` start after the
        rows of ranks ``< r``)."""
        stop = self.count if stop is None else stop
        cols = [np.diff(self._rank_offsets(r, start, stop)) for r in range(self.ranks)]
        return np.stack(cols, axis=1) if cols else np.zeros((stop - start, 0), np.int64)

    def read(
        self, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` (each frame: rank 0's rows, then rank
        1's, ...) and their ``stop - start + 1`` offsets from 0."""
        pieces: list[np.ndarray[Any, Any]] = []
        per_rank = []
        for r in range(self.ranks):
            off = self._rank_offsets(r, start, stop)
            rows = self._get(rank_array(self.name, r), int(off[0]), int(off[-1]))
            per_rank.append((rows, off - off[0]))
        for i in range(stop - start):
            pieces.extend(rows[off[i] : off[i + 1]] for rows, off in per_rank)
        counts = sum(np.diff(off) for _, off in per_rank)
        offsets = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        data = np.concatenate(pieces) if pieces else per_rank[0][0][:0]
        return data, offsets

    def offsets(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The global offsets of every committed frame (``count + 1``), read once."""
        if self._offsets is None:
            total = sum(self._rank_offsets(r, 0, self.count) for r in range(self.ranks))
            # read-only: every later read shares it
            self._offsets = read_only(np.asarray(total, dtype=np.int64))
        return self._offsets

    def rows(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Global rows ``[start, stop)`` (for Dask chunk reads)."""
        off = self.offsets()
        first = int(np.searchsorted(off, start, side="right")) - 1
        last = int(np.searchsorted(off, stop, side="left"))
        first = max(0, min(first, self.count))
        last = max(first, min(last, self.count))
        data, _ = self.read(first, last)
        base = int(off[first])
        return data[start - base : stop - base]
