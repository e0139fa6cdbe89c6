"""Schema, fields, step/time rules: every bad input gives a clear error."""

from __future__ import annotations

import enum
import importlib.util
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

import snapsink
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


# -- field ranks, dims across fields, int subclasses (probe D) --------------------------
def test_a_field_has_at_most_63_dimensions() -> None:
    """numpy holds 64 dimensions and the stores add the frame axis."""
    assert Field("f8", (1,) * 63).shape == (1,) * 63
    assert Field("f8", (None,) + (1,) * 62).ragged
    with pytest.raises(ConfigError, match=r"at most 63 dimensions .*got 64"):
        Field("f8", (1,) * 64)
    with pytest.raises(ConfigError, match=r"schema field 'x': .*at most 63 dimensions"):
        Schema({"x": ("f8", (1,) * 64)})  # a (dtype, shape) pair: the field is named
    with pytest.raises(SchemaError, match=r"field 'x': expected at most 63 dimensions .*got 64"):
        Schema.infer({"x": np.zeros((1,) * 64), "e": 1.0})
    assert Schema.infer({"x": np.zeros((1,) * 63)})["x"].shape == (1,) * 63


@pytest.mark.parametrize("kind", ["memory", "npy", "zarr", "zarr-sharded"])
def test_too_many_dimensions_refused_at_the_first_write(kind: str, tmp_path: Path) -> None:
    """Refused before any frame is accepted; the sink stays usable; the largest
    rank allowed is stored and read back (sharded Zarr: one less, for zarr's
    shard index)."""
    most = 62 if kind == "zarr-sharded" else 63
    path = tmp_path / "run"
    store = {
        "memory": lambda: snapsink.HostMemory(),
        "npy": lambda: snapsink.NpyDirectory(path),
        "zarr": lambda: snapsink.ZarrStore(path),
        "zarr-sharded": lambda: snapsink.ZarrStore(path, chunk_frames=1, shard_frames=2),
    }[kind]()
    ok = np.arange(2.0).reshape((2,) + (1,) * (most - 1))
    with snapsink.SyncSink(store, writer="thread") as sink:
        with pytest.raises(SchemaError, match=f"field 'x': expected at most {most} dimensions"):
            sink.write({"x": np.zeros((1,) * (most + 1)), "e": 0.0}, step=0)
        sink.write({"x": ok, "e": 1.0}, step=1)
        sink.write({"x": ok + 1, "e": 2.0}, step=2)
    traj = store.trajectory() if kind == "memory" else snapsink.open(path)
    assert traj.steps.tolist() == [1, 2]
    assert traj["x"][1].shape == ok.shape
    np.testing.assert_array_equal(traj["x"][:], np.stack([ok, ok + 1]))


def test_fields_naming_a_dimension_give_it_one_size() -> None:
    n3, n4 = Field("f8", (3,), dims=("n",)), Field("f8", (4, 2), dims=("n", "m"))
    with pytest.raises(
        ConfigError,
        match=r"dimension 'n' has size 3 in field 'a' and 4 in field 'b'",
    ):
        Schema({"a": n3, "b": n4})
    # a default name collides as an explicit one does
    with pytest.raises(ConfigError, match=r"'a_dim_0' has size 3 in field 'a' and 4 in field 'b'"):
        Schema({"a": ("f8", (3,)), "b": Field("f8", (4,), dims=("a_dim_0",))})
    # the same size is shared
    shared = Schema({"a": n3, "b": Field("f8", (2, 3), dims=("m", "n"))})
    assert shared["b"].dim_names("b") == ("m", "n")


def test_a_ragged_fields_rows_are_no_dimension_of_another() -> None:
    """A ragged field's rows are ``<name>_row`` in the stores (the rows of all
    frames): no other dimension may take that name; its ``dims[0]`` names
    nothing stored, so another field may use it."""
    with pytest.raises(ConfigError, match=r"field 'q' names dimension 'pos_row', the rows of"):
        Schema({"pos": Field("f8", (None, 3)), "q": Field("f8", (5,), dims=("pos_row",))})
    with pytest.raises(ConfigError, match=r"field 'pos' names dimension 'pos_row'"):
        Schema({"pos": Field("f8", (None, 3), dims=("atom", "pos_row"))})
    schema = Schema(
        {
            "pos": Field("f8", (None, 3), dims=("atom", "xyz")),
            "charge": Field("f8", (5,), dims=("atom",)),
            "box": Field("f8", (3,), dims=("xyz",)),
        }
    )
    pytest.importorskip("xarray")
    store = snapsink.HostMemory()
    with snapsink.SyncSink(store, schema=schema) as sink:
        for i in range(2):
            sink.write(
                {"pos": np.ones((i + 1, 3)), "charge": np.full(5, i), "box": np.ones(3)},
                step=i,
            )
    ds = store.trajectory().to_xarray()
    assert ds.sizes["pos_row"] == 3 and ds.sizes["atom"] == 5 and ds.sizes["xyz"] == 3
    assert ds["charge"].values[1].tolist() == [1.0] * 5


def test_a_stored_schema_with_a_dimension_of_two_sizes_still_reads() -> None:
    """Stores written before Schema refused it read back, field by field."""
    stored = {
        "a": {"dtype": "<f8", "shape": [3], "dims": ["n"]},
        "b": {"dtype": "<f8", "shape": [4], "dims": ["n"]},
    }
    schema = Schema.from_json(stored)
    assert schema["a"].shape == (3,) and schema["b"].shape == (4,)
    assert schema.to_json() == stored


class _Flags(enum.IntEnum):
    HUGE = 2**70
    SMALL = 5


class _MyInt(int):
    pass


@pytest.mark.parametrize("value", [_Flags.HUGE, _MyInt(2**70), _MyInt(-(2**63) - 1)])
def test_an_int_subclass_that_does_not_fit_is_a_dtype_error(value: int) -> None:
    """An int subclass is an int: its value must fit the field, as a plain int's."""
    schema = Schema({"n": Field("int64", ())})
    with pytest.raises(DTypeError, match=r"field 'n': expected a value that fits int64"):
        schema.validate({"n": value}, 0)
    store = snapsink.HostMemory()
    with snapsink.SyncSink(store, schema=schema) as sink:
        with pytest.raises(DTypeError, match="field 'n'"):
            sink.write({"n": value}, step=0)
        sink.write({"n": _Flags.SMALL}, step=1)
        sink.write({"n": _MyInt(-7)}, step=2)
    assert store.trajectory()["n"][:].tolist() == [5, -7]


def test_int_subclasses_in_narrow_and_bool_fields() -> None:
    schema = Schema({"u": Field("uint8", ()), "b": Field("bool", ())})
    with pytest.raises(DTypeError, match="field 'u': expected a value that fits uint8"):
        schema.validate({"u": _MyInt(256), "b": True}, 0)
    with pytest.raises(DTypeError, match="field 'b': expected a bool"):
        schema.validate({"u": _MyInt(1), "b": _MyInt(1)}, 0)
    # a list of huge int subclasses makes no int array: refused as object data
    with pytest.raises(DTypeError, match="field 'u'"):
        schema.validate({"u": [_Flags.HUGE], "b": True}, 0)
    out = schema.validate({"u": _Flags.SMALL, "b": True}, 0)
    assert out[0][2] == 5


class _DLPackOnly:
    """An array that exports only DLPack (as some libraries' tensors do), on the
    DLPack device type ``device`` (1: the CPU)."""

    def __init__(self, host: np.ndarray, device: int = 1):
        self.host, self.device = host, device

    def __dlpack__(self, **kw: object) -> object:
        return self.host.__dlpack__(**kw)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (self.device, 0)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.host.shape

    @property
    def dtype(self) -> np.dtype:
        return self.host.dtype


@pytest.mark.parametrize("device", [1, 3])  # the CPU, and CUDA host memory (pinned)
def test_a_host_array_that_exports_only_dlpack_is_stored(device: int) -> None:
    """numpy reads it through np.from_dlpack (np.asarray makes an object array of it)."""
    src = np.arange(6.0).reshape(2, 3)
    assert Schema.infer({"x": _DLPackOnly(src, device)})["x"] == Field("f8", (2, 3))
    store = snapsink.HostMemory()
    with snapsink.SyncSink(store) as sink:
        sink.write({"x": _DLPackOnly(src, device)}, step=0)
        src[...] = -1  # captured at the write: the stored frame keeps the old values
        sink.write({"x": _DLPackOnly(src.astype(np.float32), device)}, step=1)  # safe cast
    traj = store.trajectory()
    assert traj["x"].dtype == np.float64
    assert traj["x"][:].tolist() == [np.arange(6.0).reshape(2, 3).tolist(), [[-1.0] * 3] * 2]


@pytest.mark.parametrize(("device", "name"), [(10, "ROCm:0"), (8, "Metal:0"), (14, "oneAPI:0")])
def test_a_dlpack_array_on_another_device_is_refused_naming_it(device: int, name: str) -> None:
    value = _DLPackOnly(np.arange(3.0), device)
    pattern = (
        rf"field 'x': expected a host or CUDA array, got a _DLPackOnly on device {name} "
        rf"\(DLPack device type {device}\)"
    )
    with pytest.raises(DTypeError, match=pattern + "; copy it to the host"):
        Schema.infer({"x": value})
    store = snapsink.HostMemory()
    with snapsink.SyncSink(store, schema=Schema({"x": Field("f8", (3,))})) as sink:
        with pytest.raises(DTypeError, match=pattern + " at step 0"):
            sink.write({"x": value}, step=0)
        sink.write({"x": np.ones(3)}, step=1)  # nothing written, the sink still usable
    assert store.trajectory().steps.tolist() == [1]


def test_a_dlpack_cuda_array_without_cupy_names_the_gpu_extra() -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed: a CUDA array is read through it")
    with pytest.raises(snapsink.DeviceError, match=r"field 'x'.*CUDA.*snapsink\[gpu\]"):
        Schema({"x": Field("f8", (3,))}).validate({"x": _DLPackOnly(np.arange(3.0), 2)}, 0)


# -- names that are str subclasses (probe E) ---------------------------------------------
# A (str, Enum) member's str() is "_Species.HYDROGEN" (a StrEnum's is its value,
# hence no StrEnum here); what crosses to the writer process or into metadata
# is the plain value.
class _Species(str, enum.Enum):  # noqa: UP042
    HYDROGEN = "H"
    ATOMS = "atoms"


def _plain(names: Iterable[str]) -> list[tuple[type, str]]:
    return [(type(n), n) for n in names]


def test_enum_names_of_a_declared_schema_are_plain_str() -> None:
    schema = Schema({_Species.HYDROGEN: Field("f8", (2,), dims=(_Species.ATOMS,))})
    assert _plain(schema) == [(str, "H")]
    assert _plain(schema["H"].dims) == [(str, "atoms")]
    assert schema == Schema({"H": Field("f8", (2,), dims=("atoms",))})
    assert schema.to_json() == {"H": {"dtype": "<f8", "shape": [2], "dims": ["atoms"]}}
    # a frame keyed by the member is validated, under the plain name
    [(name, _, value)] = schema.validate({_Species.HYDROGEN: np.ones(2)}, 0)
    assert (type(name), name, value.tolist()) == (str, "H", [1.0, 1.0])
    nested = Schema({"atoms": {_Species.HYDROGEN: "f4"}})
    assert _plain(nested) == [(str, "atoms.H")]


def test_check_name_returns_a_plain_str() -> None:
    for what in ("field", "static", "group"):
        got = check_name(_Species.HYDROGEN, what)
        assert (type(got), got) == (str, "H")
