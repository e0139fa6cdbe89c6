"""Schema, fields, step/time rules: every bad input gives a clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from snapsink import ConfigError, DTypeError, Field, Schema, SchemaError
from snapsink._schema import StepClock, check_name

STORABLE = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]


@pytest.mark.parametrize("dtype", STORABLE)
def test_field_json_round_trip(dtype: str) -> None:
    f = Field(dtype, (None, 3))
    assert f.ragged and f.row_shape == (3,)
    assert Field.from_json(f.to_json()) == f
    assert f.frame_nbytes(5) == 15 * np.dtype(dtype).itemsize


@pytest.mark.parametrize("bad", ["O", "U5", "S3", "M8[s]", [("a", "f4")]])
def test_unstorable_dtypes_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="dtype"):
        Field(bad)


@pytest.mark.parametrize("shape", [(3, None), (-1,), (1.5,), ("a",)])
def test_bad_shapes_are_refused(shape: tuple) -> None:
    with pytest.raises(ConfigError, match="shape"):
        Field("f4", shape)


@pytest.mark.parametrize(
    "name", ["a/b", "..", "/abs", "", "1x", "x y", "ok\x00", "é", "steps", "times", "a" * 200, 3]
)
def test_unsafe_or_reserved_names_are_refused(name: object) -> None:
    with pytest.raises(ConfigError, match="name"):
        check_name(name)
    with pytest.raises(ConfigError):
        Schema({name: "f4"})  # type: ignore[dict-item]


def test_schema_forms_and_json() -> None:
    s = Schema({"x": Field("f4", (4, 3)), "e": "f8", "r": ("i4", (None,))})
    assert list(s) == ["x", "e", "r"]
    assert s["e"] == Field("f8")
    assert s.ragged == ("r",)
    assert Schema.from_json(s.to_json()) == s
    assert s.fixed_nbytes == 4 * 3 * 4 + 8


def test_infer_from_first_frame() -> None:
    s = Schema.infer({"x": np.zeros((2, 3), "f4"), "e": 1.0, "n": 3, "b": True, "z": 1j})
    assert s["x"] == Field("f4", (2, 3))
    assert s["e"] == Field("f8") and s["n"] == Field("i8")
    assert s["b"] == Field("?") and s["z"] == Field("c16")


def test_infer_refuses_objects() -> None:
    with pytest.raises(DTypeError, match="'x'"):
        Schema.infer({"x": np.array([object()])})
    with pytest.raises(DTypeError, match="mapping"):
        Schema.infer([1, 2])  # type: ignore[arg-type]


SCHEMA = Schema({"x": Field("f4", (4, 3)), "e": "f8", "r": Field("i4", (None, 2))})


def good() -> dict:
    return {"x": np.zeros((4, 3), "f4"), "e": 1.5, "r": np.zeros((7, 2), "i4")}


def test_validate_accepts_good_frames_and_safe_casts() -> None:
    items = SCHEMA.validate(good(), 0)
    assert [n for n, _, _ in items] == ["x", "e", "r"]
    frame = good()
    frame["x"] = np.zeros((4, 3), "f2")  # float16 -> float32 is safe
    frame["r"] = np.zeros((0, 2), "i2")  # a ragged frame may have no rows
    frame["e"] = np.float32(2.0)
    SCHEMA.validate(frame, 1)
    frame["x"] = np.zeros((4, 3), ">f4")  # non-native byte order, same values
    SCHEMA.validate(frame, 2)


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        (
            {"x": np.zeros((4, 3), "f8")},
            DTypeError,
            r"field 'x': expected dtype float32, got float64 at step 7",
        ),
        (
            {"x": np.zeros((3, 3), "f4")},
            SchemaError,
            r"field 'x': expected shape \(4, 3\), got \(3, 3\) at step 7",
        ),
        ({"r": np.zeros((5, 3), "i4")}, SchemaError, r"field 'r': expected shape \(rows, 2\)"),
        ({"r": np.zeros((5,), "i4")}, SchemaError, r"field 'r'"),
        ({"r": np.zeros((5, 2), "u8")}, DTypeError, r"field 'r': expected dtype int32, got uint64"),
        ({"e": 1j}, DTypeError, "field 'e'"),
        ({"e": np.zeros(2)}, SchemaError, r"field 'e': expected shape \(\)"),
        ({"e": "text"}, DTypeError, "field 'e'"),
        ({"e": np.array([object()])}, DTypeError, "field 'e'"),
        ({"x": [[1, 2, 3]] * 4}, DTypeError, "field 'x'"),  # a list of ints is int64: lossy into f4
    ],
)
def test_validate_rejects_with_clear_messages(change: dict, error: type, pattern: str) -> None:
    frame = good() | change
    with pytest.raises(error, match=pattern):
        SCHEMA.validate(frame, 7)


def test_missing_and_unknown_fields_are_named() -> None:
    frame = good()
    del frame["e"]
    frame["extra"] = 1.0
    with pytest.raises(SchemaError, match=r"missing 'e'; unknown 'extra'") as info:
        SCHEMA.validate(frame, 3)
    assert "step 3" in str(info.value)
    with pytest.raises(DTypeError, match="mapping"):
        SCHEMA.validate([1, 2, 3], 3)


def test_python_int_must_fit_integer_field() -> None:
    s = Schema({"n": "i1"})
    s.validate({"n": 100}, 0)
    with pytest.raises(DTypeError):
        s.validate({"n": 1000}, 0)


def test_step_clock_rules() -> None:
    c = StepClock()
    assert c.check(None, None) == (0, None)
    c.advance(0, None)
    assert c.check(None, None) == (1, None)
    with pytest.raises(SchemaError, match="greater than 0"):
        c.check(0, None)
    with pytest.raises(DTypeError, match="step: expected an int"):
        c.check(1.5, None)
    with pytest.raises(DTypeError, match="step: expected an int"):
        c.check(True, None)
    with pytest.raises(SchemaError, match="int64"):
        c.check(2**63, None)
    with pytest.raises(SchemaError, match="expected no time"):
        c.check(5, 1.0)  # earlier frames had no time


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_time_must_be_finite(bad: float) -> None:
    with pytest.raises(SchemaError, match="finite"):
        StepClock().check(0, bad)


def test_time_non_decreasing_and_consistent() -> None:
    c = StepClock()
    c.advance(*c.check(None, 1.0))
    assert c.check(None, 1.0) == (1, 1.0)  # equal times are fine
    with pytest.raises(SchemaError, match=r"expected a time >= 1.0"):
        c.check(None, 0.5)
    with pytest.raises(SchemaError, match="expected a time"):
        c.check(None, None)
    with pytest.raises(DTypeError, match="time"):
        c.check(None, "soon")
