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


# -- Python floats, NumPy scalars, masked arrays, huge ints (review probes) --------------
@pytest.mark.parametrize(
    ("dtype", "value"),
    [("float16", 65520.0), ("float16", -1e10), ("float32", 1e300), ("complex64", 1e39),
     ("complex64", complex(1.0, -1e39))],
)
def test_python_float_that_would_become_inf_is_a_dtype_error(dtype: str, value: object) -> None:
    """A Python float is weak (rounded to the field), never silently made ``inf``."""
    store = HostMemory()
    with SyncSink(store, schema={"v": dtype}, writer="thread") as sink:
        with pytest.raises(DTypeError, match=f"field 'v': expected a value that fits {dtype}"):
            sink.write({"v": value}, step=0)
        sink.write({"v": 1.5}, step=0)
    assert store.trajectory()["v"][:].tolist() == [1.5]


def test_python_floats_round_into_narrow_fields_up_to_their_largest_value() -> None:
    """Just under half an ulp above float16's largest value rounds down to it;
    nan and inf are values of their own and go as they are."""
    values = [65519.0, -65519.0, 0.1, math.inf, -math.inf]
    store = HostMemory()
    with SyncSink(store, schema={"h": "float16", "c": "complex64"}, writer="thread") as sink:
        for i, v in enumerate(values):
            sink.write({"h": v, "c": complex(v, 3.4e38)}, step=i)
        sink.write({"h": math.nan, "c": 1.0}, step=len(values))
    traj = store.trajectory()
    assert traj["h"][:-1].tolist() == [np.float16(v) for v in values]
    assert traj["h"][:-1].tolist()[:2] == [65504.0, -65504.0]
    assert math.isnan(traj["h"][-1])
    assert traj["c"][:-1].tolist() == [np.complex64(complex(v, 3.4e38)) for v in values]


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(np.float64(0.1), "float32"), (np.float64(1e300), "float16"),
     (np.complex128(1 + 0.1j), "complex64"), (np.array(0.1), "float32")],
)
def test_numpy_scalars_are_strong_even_when_they_subclass_python_float(
    value: object, dtype: str
) -> None:
    """np.float64 is also a Python float; it is still float64, as a 0-d array is."""
    store = HostMemory()
    with SyncSink(store, schema={"v": dtype}, writer="thread") as sink:
        with pytest.raises(DTypeError, match=f"field 'v': expected dtype {dtype}, got"):
            sink.write({"v": value}, step=0)
        sink.write({"v": np.dtype(dtype).type(0.25)}, step=0)
    assert store.trajectory()["v"][:].tolist() == [0.25]


def test_int_beyond_longdouble_is_a_dtype_error_and_a_big_one_is_stored() -> None:
    info = np.finfo(np.longdouble)
    too_big = int(info.max) * 2
    store = HostMemory()
    with SyncSink(store, schema={"q": "longdouble"}, writer="thread") as sink:
        with pytest.raises(DTypeError, match="field 'q': expected a value that fits"):
            sink.write({"q": too_big}, step=0)
        if info.maxexp > 15000:  # an 80- or 128-bit longdouble: beyond numpy's 4300 digits
            with pytest.raises(DTypeError, match="field 'q': expected"):
                sink.write({"q": 10**4400}, step=0)
        # within range but not exact (5**300 needs far more bits than the
        # significand has): refused, not rounded; 2**1000 + 2**950 is exact
        with pytest.raises(DTypeError, match=r"field 'q': expected an int that .* holds exactly"):
            sink.write({"q": 10**300}, step=0)
        sink.write({"q": 2**1000 + 2**950}, step=0)
    assert store.trajectory()["q"][:].tolist() == [np.longdouble(2**1000 + 2**950)]


def test_time_beyond_any_float_is_a_schema_error() -> None:
    store = HostMemory()
    with SyncSink(store, writer="thread") as sink:
        sink.write({"x": 1.0}, step=0, time=0.0)
        with pytest.raises(SchemaError, match="time at step 1: expected a finite number"):
            sink.write({"x": 2.0}, time=10**400)
        sink.write({"x": 3.0}, time=1.0)
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 1]
    assert traj["x"][:].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_masked_arrays_are_refused_when_masked_and_stored_as_data_when_not(
    tmp_path: object, writer: str
) -> None:
    """Both writers and the spill agree: a masked element is refused (no store keeps
    a mask), also in the first frame (no schema fixed); an unmasked one is data."""
    path = f"{tmp_path}/run"
    with SyncSink(snapsink.NpyDirectory(path), writer=writer) as sink:
        with pytest.raises(DTypeError, match="field 'v': expected values, got a masked"):
            sink.write({"v": np.ma.masked_array(5, mask=True, dtype=np.int32)}, step=0)
        with pytest.raises(DTypeError, match="field 'v'"):
            sink.write({"v": np.ma.masked}, step=0)
        sink.write({"v": np.ma.masked_array(7, mask=False, dtype=np.int32),
                    "a": np.ma.masked_array([1.0, 2.0], mask=[False, False])}, step=0)
        with pytest.raises(DTypeError, match=r"field 'a': .* 1 masked element\(s\) at step 1"):
            sink.write({"v": np.int32(8), "a": np.ma.masked_array([1.0, 2.0], mask=[0, 1])})
        sink.write({"v": np.int32(9), "a": np.array([3.0, 4.0])}, step=1)
    traj = snapsink.open(path)
    assert traj.fields["v"] == snapsink.Field("int32", ())
    assert traj["v"][:].tolist() == [7, 9]
    assert traj["a"][:].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_refusals_say_why_for_bool_fields_and_unreadable_objects() -> None:
    schema = Schema({"b": "bool", "t": "float32"})
    with pytest.raises(DTypeError, match=r"field 'b': expected a bool .*got the Python int 1"):
        schema.validate({"b": 1, "t": np.float32(0)}, 0)

    class Unreadable:
        def __array__(self, *a: object, **k: object) -> None:
            raise RuntimeError("detach it first")

    why = r"field 't': .*Unreadable.*\(RuntimeError: detach it first\)"
    with pytest.raises(DTypeError, match=why):
        schema.validate({"b": True, "t": Unreadable()}, 0)
