"""The dtype rule's integers into floating fields: exact values only (numpy
calls int64 into float64 safe, and rounds beyond 2**53)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import snapsink
from snapsink import DTypeError, Field, Schema

SCHEMA = Schema({"x": Field("f8", (2,)), "z": Field("c16", (2,)), "s": "f8", "h": "f2"})


def frame(**change: object) -> dict[str, object]:
    base: dict[str, object] = {"x": np.zeros(2), "z": np.zeros(2, "c16"), "s": 0.0, "h": 0.0}
    return base | change


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", np.array([1, 2**53 + 1])),  # rounds to 2**53
        ("x", np.array([2**63 - 1, 0])),  # rounds up past int64
        ("x", np.array([2**64 - 1, 1], dtype=np.uint64)),
        ("z", np.array([2**53 + 1, 0])),
        ("s", np.int64(-(2**53) - 1)),
        ("s", 2**53 + 1),  # a Python int: weak, but not rounded either
        ("h", 2049),  # float16 holds 2048 and 2050
    ],
)
def test_integers_a_floating_field_would_round_are_refused(name: str, value: object) -> None:
    with pytest.raises(DTypeError, match=f"field '{name}'.*at step 4"):
        SCHEMA.validate(frame(**{name: value}), 4)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x", [1, 2]),  # a list of Python ints is int64: exact
        ("x", np.array([2**53, -(2**53)])),
        ("x", np.array([2**60, -(2**63)])),  # beyond 2**53, exact
        ("x", np.array([2**63, 0], dtype=np.uint64)),
        ("x", np.array([7, 8], dtype=np.int32)),  # float64 holds every int32
        ("z", np.array([2**60, 3])),
        ("s", 2**60),
        ("s", np.uint64(2**53)),
        ("h", 2048),
    ],
)
def test_exact_integers_go_into_floating_fields(name: str, value: object) -> None:
    (item,) = [v for n, _, v in SCHEMA.validate(frame(**{name: value}), 0) if n == name]
    assert np.array_equal(np.asarray(item).astype(SCHEMA[name].dtype), np.asarray(value))


def test_a_refused_frame_writes_nothing_and_the_next_is_stored_exactly(tmp_path: Path) -> None:
    path = tmp_path / "run"
    with snapsink.SyncSink(snapsink.NpyDirectory(path), schema={"x": Field("f8", (2,))}) as sink:
        with pytest.raises(DTypeError, match="field 'x'"):
            sink.write({"x": np.array([2**53 + 1, 1])}, step=0)
        sink.write({"x": np.array([2**60, 3])}, step=1)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [1]
    assert traj["x"][0].tolist() == [float(2**60), 3.0]
