"""The format kernel: decisions every store format shares, without any I/O.

- :class:`StepRanges`: dropped steps as sorted, disjoint ``[start, stop)``
  runs, how both the npy and the zarr metadata record them;
- :func:`parse_step_ranges`: the one reader of such runs (the same rules for
  every format);
- :func:`check_format_version`: the one rule for a store's format version;
- :func:`check_dropped_total`: the cap on what a reader materializes.

The formats' own modules (``_npyformat``, ``_zarrplan``, ``_hdf5plan``) keep what differs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeGuard

import numpy as np

from .._checks import INT64_MAX as INT64_MAX
from .._checks import INT64_MIN as INT64_MIN
from .._errors import FormatError

__all__ = [
    "MAX_DROPPED_STEPS",
    "StepRanges",
    "check_dropped_total",
    "check_format_version",
    "is_int",
    "parse_step_ranges",
]


def is_int(x: object) -> TypeGuard[int]:
    """A Python int that is not a bool (JSON numbers as read back)."""
    return isinstance(x, int) and not isinstance(x, bool)


class StepRanges:
    """A set of int steps as sorted, disjoint, non-adjacent ``[start, stop)`` runs.

    Adding steps in increasing order (what a drop policy produces) is O(1) per
    step; an out-of-order step falls back to a bisect and merge.
    """

    __slots__ = ("_runs", "count")

    def __init__(self, runs: Sequence[Sequence[int]] = ()):
        self._runs: list[list[int]] = [[int(a), int(b)] for a, b in runs]
        self.count = sum(b - a for a, b in self._runs)

    def add_all(self, steps: Sequence[int]) -> None:
        """Add every step of ``steps`` (any order)."""
        for step in steps:
            self.add(int(step))

    def add(self, step: int) -> None:
        runs = self._runs
        if runs and step >= runs[-1][0]:
            last = runs[-1]
            if step < last[1]:
                return
            if step == last[1]:
                last[1] += 1
                self.count += 1
                return
        if not runs or step > runs[-1][1]:
            runs.append([step, step + 1])
            self.count += 1
            return
        i = bisect.bisect_right(runs, step, key=lambda r: r[0])
        if i and step < runs[i - 1][1]:
            return
        self.count += 1
        left = bool(i) and runs[i - 1][1] == step
        right = i < len(runs) and runs[i][0] == step + 1
        if left and right:
            runs[i - 1][1] = runs[i][1]
            del runs[i]
        elif left:
            runs[i - 1][1] += 1
        elif right:
            runs[i][0] -= 1
        else:
            runs.insert(i, [step, step + 1])

    def discard_stored(self, steps: Iterable[int]) -> bool:
        """Forget the steps of ``steps`` (increasing) that are here: frames stored
        after all, by a run resumed before steps it had dropped (a step is never
        both stored and dropped). Whether any was here."""
        runs = self._runs
        changed = False
        for step in steps:
            if not runs or step >= runs[-1][1]:
                break  # beyond every dropped step, and so are the rest
            i = bisect.bisect_right(runs, step, key=lambda r: r[0]) - 1
            if i < 0 or step >= runs[i][1]:
                continue
            start, stop = runs[i]
            if stop - start == 1:
                del runs[i]
            elif step == start:
                runs[i][0] += 1
            elif step == stop - 1:
                runs[i][1] -= 1
            else:
                runs[i : i + 1] = [[start, step], [step + 1, stop]]
            self.count -= 1
            changed = True
        return changed

    def to_json(self) -> list[list[int]]:
        """The runs, copied: a commit in the background holds what it names
        while later drops (and stored steps) change these."""
        return [[a, b] for a, b in self._runs]

    def to_array(self, where: str = "dropped steps") -> np.ndarray[Any, np.dtype[np.int64]]:
        """Every step, sorted.

        Raises
        ------
        FormatError
            More than :data:`MAX_DROPPED_STEPS` steps (corrupt runs: no reader
            allocates that much).
        """
        if not self._runs:
            return np.zeros(0, np.int64)
        check_dropped_total(self.count, where)
        return np.concatenate([np.arange(b - a, dtype=np.int64) + a for a, b in self._runs])


#: The most dropped steps a reader turns into an array (2 GiB of int64); runs
#: naming more are taken for corrupt metadata, not allocated.
MAX_DROPPED_STEPS = 1 << 28


def check_dropped_total(total: int, where: str) -> None:
    """FormatError when ``total`` dropped steps are more than a reader materializes."""
    if total > MAX_DROPPED_STEPS:
        raise FormatError(
            f"{where}: the dropped-step runs name {total} steps, more than the "
            f"{MAX_DROPPED_STEPS} a reader materializes; the metadata is corrupt"
        )


def parse_step_ranges(obj: object, bad: Callable[[str], FormatError]) -> list[list[int]]:
    """Dropped-step runs as stored: a list of ``[start, stop)`` int64 runs,
    sorted and disjoint (adjacent runs are allowed on read; writers merge
    them). ``bad(message)`` makes the error, naming the file.
    """
    if not isinstance(obj, list):
        raise bad(f"'dropped': expected a list of [start, stop] runs, got {type(obj).__name__}")
    runs: list[list[int]] = []
    prev: int | None = None
    for run in obj:
        if (
            not isinstance(run, list)
            or len(run) != 2
            or not all(is_int(x) for x in run)
            or run[0] >= run[1]
            or not INT64_MIN <= run[0] < run[1] <= INT64_MAX + 1
            or (prev is not None and run[0] < prev)
        ):
            raise bad(
                f"'dropped': expected sorted disjoint [start, stop) runs of int64 steps, "
                f"got {run!r}"
            )
        prev = run[1]
        runs.append([int(run[0]), int(run[1])])
    return runs


def check_format_version(
    version: object, current: int, bad: Callable[[str], FormatError]
) -> None:
    """A store's format version: an int from 1 up to ``current`` (this snapsink's)."""
    if not is_int(version) or version < 1:
        raise bad(f"malformed format version {version!r} (expected an int >= 1)")
    if version > current:
        raise bad(
            f"written by a newer snapsink (format version {version}, this one reads up "
            f"to {current}); upgrade snapsink"
        )

