"""attrs: every store converts NumPy values to JSON types in one place, and
refuses what JSON cannot hold before anything is written.

Each store (NpyDirectory, ZarrStore, HostMemory) is written through a sink and
read back with ``snapsink.open`` (``trajectory()`` for HostMemory): values are
equal and of the plain Python type. ``add_metadata`` adds attrs and static
arrays to a store built earlier (the py-pde tracker's way in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import ConfigError, StoreStateError
from snapsink.stores._common import check_attrs

ATTRS: dict[str, Any] = {
    "n": np.int64(7),
    "u8": np.uint8(255),
    "big": np.uint64(2**64 - 1),
    "x32": np.float32(0.1),
    "x64": np.float64(1 / 3),
    "flag": np.bool_(True),
    "name": np.str_("diffusion"),
    "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
    "floats": np.array([0.125, -2.5e-300]),
    "bools": np.array([True, False]),
    "scalar": np.array(2.5),
    "strings": np.array(["x", "y"]),
    "empty": np.zeros((0, 3)),
    "grid": {
        "axes": ("x", np.str_("y")),
        "shape": (np.int64(24), np.int64(32)),
        "bounds": ((np.float64(0.0), np.float64(1.0)), [0, np.float32(2.0)]),
        "discretization": np.array([1 / 24, 1 / 16]),
        "periodic": [np.bool_(True), False],
    },
    "plain": {"s": "t", "i": 3, "f": 0.5, "b": False, "none": None, "list": [1, [2, [3]]]},
}

EXPECTED: dict[str, Any] = {
    "n": 7,
    "u8": 255,
    "big": 2**64 - 1,
    "x32": 0.10000000149011612,  # the double np.float32(0.1) equals
    "x64": 1 / 3,
    "flag": True,
    "name": "diffusion",
    "ints": [[0, 1, 2], [3, 4, 5]],
    "floats": [0.125, -2.5e-300],
    "bools": [True, False],
    "scalar": 2.5,
    "strings": ["x", "y"],
    "empty": [],
    "grid": {
        "axes": ["x", "y"],
        "shape": [24, 32],
        "bounds": [[0.0, 1.0], [0, 2.0]],
        "discretization": [1 / 24, 1 / 16],
        "periodic": [True, False],
    },
    "plain": {"s": "t", "i": 3, "f": 0.5, "b": False, "none": None, "list": [1, [2, [3]]]},
}


def typed(value: Any) -> Any:
    """``value`` with each leaf paired with its exact type: ``==`` then also
    compares types (so ``1 == 1.0 == True`` and ``np.int64(1) == 1`` differ)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value), value)


def write_one(store: Any, writer: str = "thread") -> None:
    with snapsink.SyncSink(store, writer=writer) as sink:
        sink.write({"e": np.float64(1.5)}, step=0, time=0.0)


Maker = Callable[[Path, dict[str, Any]], tuple[Any, Callable[[], Any]]]


def npy(path: Path, attrs: dict[str, Any], **kw: Any) -> tuple[Any, Callable[[], Any]]:
    store = snapsink.NpyDirectory(path / "run", attrs=attrs, **kw)
    return store, lambda: snapsink.open(path / "run")


def zarr(path: Path, attrs: dict[str, Any], **kw: Any) -> tuple[Any, Callable[[], Any]]:
    store = snapsink.ZarrStore(path / "run.zarr", attrs=attrs, **kw)
    return store, lambda: snapsink.open(path / "run.zarr")


def memory(path: Path, attrs: dict[str, Any], **kw: Any) -> tuple[Any, Callable[[], Any]]:
    store = snapsink.HostMemory(attrs=attrs, **kw)
    return store, store.trajectory


def hdf5(path: Path, attrs: dict[str, Any], **kw: Any) -> tuple[Any, Callable[[], Any]]:
    pytest.importorskip("h5py")
    store = snapsink.HDF5Store(path / "run.h5", attrs=attrs, **kw)
    return store, lambda: snapsink.open(path / "run.h5")


STORES = [
    pytest.param(npy, id="npy"),
    pytest.param(zarr, id="zarr"),
    pytest.param(memory, id="memory"),
]
#: the stores add_metadata is for (HDF5Store had none: the py-pde tracker refused it)
ADDING = [*STORES, pytest.param(hdf5, id="hdf5")]


@pytest.mark.parametrize("make", STORES)
def test_numpy_attrs_read_back_as_json_types(make: Maker, tmp_path: Path) -> None:
    store, read = make(tmp_path, ATTRS)
    write_one(store)
    traj = read()
    assert len(traj) == 1
    assert typed(dict(traj.attrs)) == typed(EXPECTED)


def test_numpy_attrs_through_the_writer_process(tmp_path: Path) -> None:
    """The writer process rebuilds the store from its description: same attrs."""
    store, read = npy(tmp_path, ATTRS)
    with snapsink.SyncSink(store, writer="process") as sink:
        assert sink.writer == "process"
        sink.write({"e": np.float64(1.5)}, step=0)
    assert typed(dict(read().attrs)) == typed(EXPECTED)


def test_append_updates_attrs_with_numpy_values(tmp_path: Path) -> None:
    store, read = npy(tmp_path, {"a": np.int64(1), "b": [np.float32(0.5)]})
    write_one(store)
    store, read = npy(tmp_path, {"b": np.array([2, 3]), "c": np.bool_(False)}, mode="a")
    with snapsink.SyncSink(store, writer="thread") as sink:
        sink.write({"e": np.float64(2.5)}, step=1, time=1.0)
    traj = read()
    assert traj.steps.tolist() == [0, 1]
    assert typed(dict(traj.attrs)) == typed({"a": 1, "b": [2, 3], "c": False})


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"grid": {"axes": ["x", {"y"}]}}, "attrs['grid']['axes'][1]", "got set"),
    ({"grid": {"d": [0.5, float("nan")]}}, "attrs['grid']['d'][1]", "finite number"),
    ({"t": np.float64("inf")}, "attrs['t']", "got inf (float64)"),
    ({"d": np.array([[1.0, 2.0], [np.nan, 3.0]])}, "attrs['d'][1][0]", "finite number"),
    ({"z": 1 + 2j}, "attrs['z']", "got complex"),
    ({"z": [np.complex64(1)]}, "attrs['z'][0]", "got complex64"),
    ({"z": np.ones(2, complex)}, "attrs['z']", "got ndarray of dtype complex128"),
    ({"when": np.datetime64("2020-01-01")}, "attrs['when']", "got datetime64"),
    ({"raw": b"bytes"}, "attrs['raw']", "got bytes"),
    ({"m": {1: "one"}}, "attrs['m']", "expected str keys"),
    ({"m": {"k": object()}}, "attrs['m']['k']", "got object"),
]


@pytest.mark.parametrize("make", STORES)
@pytest.mark.parametrize(("attrs", "where", "what"), BAD)
def test_bad_attrs_refused_before_anything_is_written(
    make: Maker, attrs: dict[str, Any], where: str, what: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=re.escape(where) + ": .*" + re.escape(what)):
        make(tmp_path, attrs)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_container_holding_itself_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ConfigError, match=re.escape("attrs['l'][1]: ") + ".*holding itself"):
        check_attrs({"l": loop})
    shared = [1, 2]  # the same list twice is no cycle
    assert check_attrs({"a": shared, "b": [shared]}) == {"a": [1, 2], "b": [[1, 2]]}


def test_attrs_are_copied() -> None:
    inner = {"k": [1, 2]}
    out = check_attrs({"inner": inner})
    inner["k"].append(3)
    assert out == {"inner": {"k": [1, 2]}}


# -- add_metadata ----------------------------------------------------------------------
@pytest.mark.parametrize("make", ADDING)
def test_add_metadata_before_open_is_stored(make: Maker, tmp_path: Path) -> None:
    store, read = make(tmp_path, {"user": 1})
    store.add_metadata(
        attrs={"grid": {"shape": (np.int64(4),)}, "user": 1},  # an equal value is fine
        static={"x": np.linspace(0, 1, 4)},
    )
    write_one(store)
    traj = read()
    assert typed(dict(traj.attrs)) == typed({"user": 1, "grid": {"shape": [4]}})
    np.testing.assert_array_equal(traj.static["x"], np.linspace(0, 1, 4))


@pytest.mark.parametrize("make", ADDING)
def test_add_metadata_conflict_changes_nothing(make: Maker, tmp_path: Path) -> None:
    store, read = make(tmp_path, {"user": 1}, static={"x": np.arange(3)})
    with pytest.raises(ConfigError, match=re.escape("attrs['user']: already set to 1, got 2")):
        store.add_metadata(attrs={"user": 2, "new": 3})
    with pytest.raises(ConfigError, match="static 'x': already set to a different array"):
        store.add_metadata(attrs={"new": 3}, static={"x": np.arange(4)})
    with pytest.raises(ConfigError, match=re.escape("attrs['bad']: ")):
        store.add_metadata(attrs={"new": 3, "bad": np.nan}, static={"y": np.ones(2)})
    assert list(tmp_path.iterdir()) == []
    write_one(store)  # still usable, and unchanged
    traj = read()
    assert dict(traj.attrs) == {"user": 1}
    assert set(traj.static) == {"x"}


@pytest.mark.parametrize("make", [STORES[0], STORES[1], ADDING[3]])
def test_add_metadata_after_open_is_refused(make: Maker, tmp_path: Path) -> None:
    store, read = make(tmp_path, {})
    write_one(store)  # the thread writer opens and closes this very object
    with pytest.raises(StoreStateError, match="add_metadata"):
        store.add_metadata(attrs={"late": 1})
    assert dict(read().attrs) == {}


def test_zarr_add_metadata_refuses_a_static_dtype_zarr_cannot_hold(tmp_path: Path) -> None:
    if not hasattr(np, "float128"):  # pragma: no cover - platforms without it
        pytest.skip("no float128 here")
    store, read = zarr(tmp_path, {})
    with pytest.raises(snapsink.DTypeError, match="static 'q'"):
        store.add_metadata(attrs={"a": 1}, static={"q": np.ones(2, np.float128)})
    write_one(store)
    assert dict(read().attrs) == {} and dict(read().static) == {}


@pytest.mark.parametrize("make", [STORES[0], STORES[1], pytest.param(hdf5, id="hdf5")])
def test_resume_checks_static_arrays_bit_for_bit_before_writing(
    make: Maker, tmp_path: Path
) -> None:
    """mode="a" keeps each static array: an equal one (NaN included) resumes, a
    different one is refused before anything is written, new names are added."""
    masses = np.array([1.0, np.nan, 3.0])
    store, read = make(tmp_path, {}, static={"m": masses})
    write_one(store)
    store, read = make(tmp_path, {}, mode="a", static={"m": masses.copy(), "q": np.ones(2)})
    with snapsink.SyncSink(store, writer="thread") as sink:
        sink.write({"e": np.float64(2.5)}, step=1, time=1.0)
    for wrong, what in [
        (np.array([1.0, np.nan, 4.0]), "got other values"),
        (np.array([1.0, np.nan]), "got float64, shape (2,)"),
        (masses.astype(np.float32), "got float32, shape (3,)"),
    ]:
        store, read = make(tmp_path, {}, mode="a", static={"new": np.zeros(1), "m": wrong})
        expected = f"static 'm': the store holds float64, shape (3,), {what}"
        with pytest.raises(ConfigError, match=re.escape(expected)):
            with snapsink.SyncSink(store, writer="thread") as sink:
                sink.write({"e": np.float64(9.0)}, step=2, time=2.0)
    traj = read()
    assert sorted(traj.static) == ["m", "q"]
    np.testing.assert_array_equal(traj.static["m"], masses)  # NaN where NaN
    np.testing.assert_array_equal(traj.static["q"], np.ones(2))
    assert traj.steps.tolist() == [0, 1]
    np.testing.assert_array_equal(traj["e"][:], [1.5, 2.5])


# -- deep nesting, masked static arrays (probe D) ---------------------------------------
def _nested(depth: int, leaf: Any = 1) -> Any:
    """``{"a": {"a": ... leaf}}``: ``depth`` dicts."""
    out = leaf
    for _ in range(depth):
        out = {"a": out}
    return out


@pytest.mark.parametrize("make", ADDING)
def test_deeply_nested_attrs_are_refused_naming_the_path(make: Maker, tmp_path: Path) -> None:
    """A ConfigError naming the key path, never a RecursionError; 100 levels
    (the top mapping counted) are stored and read back."""
    deep = {"top": _nested(2000)}
    with pytest.raises(ConfigError, match=re.escape("attrs['top']['a']['a']") + ".*100 deep"):
        make(tmp_path, deep)
    with pytest.raises(ConfigError, match=re.escape("attrs['top']['a']") + ".*100 deep"):
        make(tmp_path, {"top": _nested(100)})  # 101 with the top mapping
    assert list(tmp_path.iterdir()) == []
    store, read = make(tmp_path, {"top": _nested(98, leaf=[2.5])})  # 100 deep
    with pytest.raises(ConfigError, match="100 deep"):
        store.add_metadata(attrs={"more": _nested(1000)})
    write_one(store)
    node = read().attrs["top"]
    for _ in range(98):
        node = node["a"]
    assert node == [2.5]


@pytest.mark.parametrize("make", ADDING)
def test_masked_static_arrays_are_refused_on_every_path(make: Maker, tmp_path: Path) -> None:
    """static= keeps no mask, as a frame's field: a masked array with masked
    elements is refused naming the entry (the constructor and add_metadata),
    one without is stored as its values."""
    masked = np.ma.array([1.0, -999.0, 3.0], mask=[False, True, False])
    with pytest.raises(ConfigError, match="static 'charges': expected values, got a masked"):
        make(tmp_path, {}, static={"charges": masked})
    assert list(tmp_path.iterdir()) == []
    store, read = make(tmp_path, {}, static={"ok": np.ma.array([1.0, 2.0], mask=False)})
    with pytest.raises(ConfigError, match="static 'charges': expected values, got a masked"):
        store.add_metadata(static={"charges": masked})
    with pytest.raises(ConfigError, match="static 'ragged': expected a bool, integer"):
        store.add_metadata(static={"ragged": [[1.0], [2.0, 3.0]]})
    with pytest.raises(ConfigError, match="static 'deep': expected a bool, integer"):
        store.add_metadata(static={"deep": _nested_list(100)})
    write_one(store)
    traj = read()
    assert sorted(traj.static) == ["ok"]
    ok = np.asarray(traj.static["ok"])
    assert type(ok) is np.ndarray and ok.tolist() == [1.0, 2.0]


def _nested_list(depth: int) -> Any:
    out: Any = 1.0
    for _ in range(depth):
        out = [out]
    return out


def test_masked_static_from_a_recorder_route_is_refused(tmp_path: Path) -> None:
    """A route's static= function makes the store at the first record: the
    same refusal, naming the entry, and nothing written."""
    masked = np.ma.array([1.0, 2.0], mask=[True, False])
    route = snapsink.Route(
        lambda static: snapsink.NpyDirectory(tmp_path / "run", static=static),
        fields=["e"],
        static=lambda state: {"charges": state["charges"]},
    )
    with pytest.raises(ConfigError, match="static 'charges': expected values, got a masked"):
        with snapsink.SyncRecorder(run=route) as recorder:
            recorder.record({"e": 1.0, "charges": masked}, step=0)
    assert not (tmp_path / "run").exists()


# -- names that are str subclasses (probe E) ----------------------------------------------
def test_enum_keys_and_modes_become_plain_str() -> None:
    """What a store keeps goes to the writer process and into metadata: a
    (str, Enum) member there is its value (str() of it was "Mode.CREATE")."""
    import enum

    from snapsink.stores._common import check_mode, check_static

    class Name(str, enum.Enum):  # noqa: UP042 - str() of it is "Name.GRID"
        GRID = "grid"

    class Mode(str, enum.Enum):  # noqa: UP042
        CREATE = "x"

    static = check_static({Name.GRID: [1, 2]})
    assert [(type(k), k) for k in static] == [(str, "grid")]
    assert static["grid"].tolist() == [1, 2]
    attrs = check_attrs({Name.GRID: {Name.GRID: Name.GRID}})
    assert attrs == {"grid": {"grid": "grid"}}
    assert type(next(iter(attrs))) is str and type(next(iter(attrs["grid"]))) is str
    assert (type(check_mode(Mode.CREATE)), check_mode(Mode.CREATE)) == (str, "x")
    store = snapsink.NpyDirectory("unused", mode=Mode.CREATE)  # type: ignore[arg-type]
    assert store.describe().args[1] == "x"  # type: ignore[union-attr]

