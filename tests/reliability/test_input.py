"""Bad input at write (issue 11, items 16 and 17): a clear error, nothing changed.

Item 16: a Python int beyond a field's range is a DTypeError, never a raw
OverflowError; a Python ``True`` and an ``np.bool_`` are treated alike.
Item 17: a refused first frame does not fix the inferred schema.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import snapsink
from snapsink import DTypeError, HostMemory, SchemaError, SyncSink
from snapsink._schema import Schema

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [("int64", 2**63), ("int64", -(2**63) - 1), ("int64", 2**200), ("int8", 128),
     ("uint64", 2**64), ("uint8", -1), ("float16", 70000), ("float64", 10**400),
     ("complex64", -(10**39))],
)
def test_python_int_out_of_range_is_a_dtype_error(dtype: str, value: int) -> None:
    store = HostMemory()
    with SyncSink(store, schema={"n": dtype}, writer="thread") as sink:
        sink.write({"n": 1}, step=0)
        with pytest.raises(DTypeError, match=f"field 'n': expected a value that fits {dtype}"):
            sink.write({"n": value}, step=1)
        sink.write({"n": 2}, step=1)  # refused, nothing consumed: step 1 is still free
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 1]
    assert traj["n"][:].tolist() == [1, 2]


def test_python_int_at_the_edges_of_int64_is_stored_exactly() -> None:
    store = HostMemory()
    edges = [2**63 - 1, -(2**63)]
    with SyncSink(store, writer="thread") as sink:  # inferred: int64
        for i, v in enumerate(edges):
            sink.write({"n": v}, step=i)
    assert store.trajectory()["n"][:].tolist() == edges


def test_inferring_from_an_int_beyond_int64_is_a_dtype_error() -> None:
    store = HostMemory()
    with SyncSink(store, writer="thread") as sink:
        with pytest.raises(DTypeError, match="does not fit int64"):
            sink.write({"n": 2**64}, step=0)
        sink.write({"n": np.uint64(2**64 - 1)}, step=0)
    traj = store.trajectory()
    assert traj.fields["n"].dtype == np.uint64
    assert traj["n"][:].tolist() == [2**64 - 1]


@pytest.mark.parametrize("dtype", ["int8", "int64", "uint16", "float32", "complex128", "bool"])
def test_python_bool_and_numpy_bool_are_treated_alike(dtype: str) -> None:
    """numpy casts bool safely into every numeric kind: both spellings of True
    are accepted, and both store 1."""
    store = HostMemory()
    with SyncSink(store, schema={"b": dtype}, writer="thread") as sink:
        sink.write({"b": True}, step=0)
        sink.write({"b": np.bool_(True)}, step=1)
        sink.write({"b": False}, step=2)
    got = store.trajectory()["b"][:]
    assert got.dtype == np.dtype(dtype)
    assert got.tolist() == [1, 1, 0]


def test_schema_validate_agrees_for_both_bools() -> None:
    schema = Schema({"n": "int32"})
    for v in (True, np.bool_(True)):
        ((name, _, value),) = schema.validate({"n": v}, 0)
        assert name == "n" and bool(value) is True
    schema = Schema({"n": "int32"})
    with pytest.raises(DTypeError):
        schema.validate({"n": 1.0}, 0)  # a float is still refused in an int field


@pytest.mark.parametrize(
    ("step", "time"), [(0, math.nan), (2**63, None), (0, math.inf), (-(2**63) - 1, None)]
)
def test_refused_first_frame_does_not_fix_the_schema(step: int, time: float | None) -> None:
    store = HostMemory()
    with SyncSink(store, writer="thread") as sink:
        with pytest.raises(SchemaError):
            sink.write({"a": np.zeros(3, np.float32)}, step=step, time=time)
        # A refused frame changed nothing: the next first frame sets the schema.
        sink.write({"b": np.arange(2, dtype=np.int16)}, step=0, time=0.0)
    traj = store.trajectory()
    assert set(traj.fields) == {"b"}
    assert traj.fields["b"] == snapsink.Field("int16", (2,))
    assert traj["b"][:].tolist() == [[0, 1]]
