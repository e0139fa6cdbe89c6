"""The format kernel: one set of rules for what every store format shares."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from snapsink import FormatError
from snapsink.stores._format import (
    MAX_DROPPED_STEPS,
    StepRanges,
    check_format_version,
    parse_step_ranges,
)
from snapsink.stores._npyformat import FORMAT_VERSION as NPY_VERSION
from snapsink.stores._zarrplan import FORMAT_VERSION as ZARR_VERSION


def _bad(msg: str) -> FormatError:
    return FormatError(f"where: {msg}")


def test_step_ranges_merge_in_any_order() -> None:
    r = StepRanges()
    r.add_all([3, 4, 5])
    r.add_all([7])
    r.add_all([10, 8])
    r.add_all([9, 6])  # joins all three runs
    assert r.to_json() == [[3, 11]]
    assert r.count == 8
    np.testing.assert_array_equal(r.to_array(), np.arange(3, 11))
    r.add(1)
    r.add(4)  # already there: nothing changes
    assert r.to_json() == [[1, 2], [3, 11]] and r.count == 9


@pytest.mark.parametrize(
    ("runs", "ok"),
    [
        ([], True),
        ([[0, 3], [5, 6]], True),
        ([[0, 3], [3, 6]], True),  # adjacent: the same steps as [[0, 6]]; accepted
        ([[0, 3], [2, 6]], False),  # overlapping
        ([[5, 6], [0, 3]], False),  # unsorted
        ([[3, 3]], False),  # empty
        ([[0, 2**63 + 1]], False),  # past int64
        ([[0, True]], False),
        ([[0]], False),
        ("[[0, 1]]", False),
    ],
)
def test_one_parser_for_dropped_runs(runs: Any, ok: bool) -> None:
    if ok:
        assert parse_step_ranges(runs, _bad) == runs
    else:
        with pytest.raises(FormatError, match="where: 'dropped'"):
            parse_step_ranges(runs, _bad)


@pytest.mark.parametrize("version", [0, -1, 1.0, "1", None, True])
def test_a_malformed_version_is_refused_alike(version: object) -> None:
    with pytest.raises(FormatError, match="malformed format version"):
        check_format_version(version, 1, _bad)


def test_a_newer_version_says_upgrade() -> None:
    check_format_version(1, 1, _bad)
    with pytest.raises(FormatError, match=r"newer snapsink.*upgrade"):
        check_format_version(2, 1, _bad)
    assert NPY_VERSION == ZARR_VERSION == 1


def test_more_dropped_steps_than_a_reader_materializes_is_corrupt() -> None:
    r = StepRanges([[0, MAX_DROPPED_STEPS + 1]])
    with pytest.raises(FormatError, match="metadata is corrupt"):
        r.to_array("x.json")


def test_step_ranges_forget_stored_steps_as_a_set_would() -> None:
    """discard_stored against a plain set, over random drops and increasing
    stored steps (splits, trims at either end, whole runs, steps not there)."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        dropped = {int(s) for s in rng.integers(0, 60, rng.integers(0, 40))}
        r = StepRanges()
        r.add_all(sorted(dropped))
        stored = sorted({int(s) for s in rng.integers(0, 70, rng.integers(0, 30))})
        changed = r.discard_stored(stored)
        assert changed == bool(dropped & set(stored))
        assert r.to_array().tolist() == sorted(dropped - set(stored))
        assert r.count == len(dropped - set(stored))
        runs = r.to_json()
        assert all(a < b for a, b in runs)
        assert all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1))  # non-adjacent
