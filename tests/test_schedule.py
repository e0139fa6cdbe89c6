"""Schedules: which steps are due, composition, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import snapsink
from snapsink import ConfigError, Schedule, every, once, when
from snapsink.schedule import as_schedule


def due_steps(s: Schedule, steps: range, state: object = None) -> list[int]:
    """The steps a route with schedule ``s`` receives, counting what it received."""
    out: list[int] = []
    for k in steps:
        if s.due(k, state, received=len(out)):
            out.append(k)
    return out


def test_every_counts_from_start() -> None:
    assert due_steps(every(50), range(201)) == [0, 50, 100, 150, 200]
    assert due_steps(every(3, start=1), range(10)) == [1, 4, 7]
    assert due_steps(every(1), range(4)) == [0, 1, 2, 3]
    # a run resumed at step 1000 still follows the same grid
    assert due_steps(every(50), range(1001, 1200)) == [1050, 1100, 1150]
    # steps before start are never due, even negative ones
    assert due_steps(every(2, start=-4), range(-10, 1)) == [-4, -2, 0]


@given(
    n=st.integers(1, 40),
    start=st.integers(-50, 50),
    first=st.integers(-100, 100),
    count=st.integers(0, 200),
)
def test_every_matches_arithmetic_progression(n: int, start: int, first: int, count: int) -> None:
    steps = range(first, first + count)
    expected = [k for k in steps if k >= start and (k - start) % n == 0]
    assert due_steps(every(n, start=start), steps) == expected


def test_once_is_the_first_offered_step() -> None:
    assert due_steps(once(), range(5, 20)) == [5]
    s = once()
    assert s.due(7, None, received=0) and not s.due(8, None, received=1)


def test_when_tests_the_state() -> None:
    energies = {k: 10.0 - k for k in range(12)}
    s = when(lambda state: state < 3)
    assert [k for k in range(12) if s.due(k, energies[k], received=0)] == [8, 9, 10, 11]


def test_union_and_intersection() -> None:
    s = every(50) | once()
    assert due_steps(s, range(7, 160)) == [7, 50, 100, 150]
    converged = when(lambda k: k >= 13)
    got = [k for k in range(30) if (converged & once()).due(k, k, received=int(k > 13))]
    assert got == [13]
    # intersection of two grids: multiples of both
    assert due_steps(every(4) & every(6), range(40)) == [0, 12, 24, 36]


def test_intersection_stops_at_first_false() -> None:
    calls: list[int] = []

    def expensive(state: int) -> bool:
        calls.append(state)
        return True

    s = every(10) & when(expensive)
    assert due_steps(s, range(35), None) == [0, 10, 20, 30]
    assert len(calls) == 4


def test_composition_flattens_and_reprs() -> None:
    s = every(2) | every(3) | once()
    assert repr(s) == "every(2) | every(3) | once()"
    t = (every(2) | once()) & every(3, start=1)
    assert repr(t) == "(every(2) | once()) & every(3, start=1)"
    assert "when(" in repr(when(len))
    assert every(5) == every(5)  # value objects: one schedule may serve many routes


def test_or_with_non_schedule_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        every(2) | 3  # type: ignore[operator]
    with pytest.raises(TypeError):
        every(2) & (lambda s: True)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: every(0), "at least 1"),
        (lambda: every(-3), "at least 1"),
        (lambda: every(2.5), "expected an int"),  # type: ignore[arg-type]
        (lambda: every(True), "expected an int"),
        (lambda: every(2, start=1.0), r"every\(start\)"),  # type: ignore[arg-type]
        (lambda: when(3), "function of the state"),  # type: ignore[arg-type]
        (lambda: when(every(2)), "function of the state"),
    ],
)
def test_bad_arguments_raise_config_error(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        call()  # type: ignore[operator]
    assert isinstance(info.value, ValueError)


def test_as_schedule_shorthands() -> None:
    assert as_schedule(None) == every(1)
    assert as_schedule(25) == every(25)
    s = every(3) | once()
    assert as_schedule(s) is s
    assert as_schedule(lambda st: st > 2).due(0, 5, received=0)
    for bad in (True, "every 5", 2.0):
        with pytest.raises(ConfigError, match="schedule"):
            as_schedule(bad)
    with pytest.raises(ConfigError, match="at least 1"):
        as_schedule(0)


def test_custom_schedule_subclass() -> None:
    class Powers(Schedule):
        def due(self, step: int, state: object, *, received: int) -> bool:
            return step > 0 and step & (step - 1) == 0

    assert due_steps(Powers() | once(), range(20)) == [0, 1, 2, 4, 8, 16]
    assert isinstance(snapsink.every(2), snapsink.Schedule)


def test_numpy_integers_are_ints_and_numpy_bools_are_not() -> None:
    s = every(np.int64(5), start=np.int32(2))  # type: ignore[arg-type]
    assert s == every(5, start=2) and repr(s) == "every(5, start=2)"
    assert type(s.n) is int  # type: ignore[attr-defined]
    assert due_steps(s, range(13)) == [2, 7, 12]
    assert as_schedule(np.uint8(3)) == every(3)
    for bad in (np.bool_(True), np.float64(5.0)):
        with pytest.raises(ConfigError, match="expected an int"):
            every(bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="schedule"):
            as_schedule(bad)
