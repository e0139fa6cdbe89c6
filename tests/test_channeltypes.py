"""DroppedSteps: dropped steps waiting to be handed on, as runs."""

from __future__ import annotations

from snapsink._channeltypes import DroppedSteps, expand_runs


def test_consecutive_drops_are_one_run_and_come_out_sorted_in_slices() -> None:
    d = DroppedSteps()
    for step in [*range(10, 20), 5, 6, *range(30, 35)]:  # drop_oldest may go back
        d.add(step)
    d.add_run(35, 40)
    d.add_run(50, 50)  # empty: nothing
    assert len(d) == 3 and d.runs == [[10, 20], [5, 7], [30, 40]]
    first = d.pop_runs(limit=8)
    assert first == [(5, 7), (10, 16)] and expand_runs(first) == [5, 6, *range(10, 16)]
    assert d.pop_runs(limit=4) == [(16, 20)]
    assert d and d.runs == [[30, 40]]
    assert d.pop_runs() == [(30, 40)] and not d and len(d) == 0
    assert d.pop_runs(limit=5) == []
