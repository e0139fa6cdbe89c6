"""Nested state (pytrees): flattened into dotted field names, read back as a tree.

A frame may be nested mappings, dataclasses, NamedTuples, lists of arrays or a
JAX pytree; each leaf is stored as one field named by its path (``params.w``),
in every store, through Sink and SyncSink, and read back bit-exact: flat, as a
tree of dicts (``nested=True``) or in the structure of a template (``like=``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import numpy as np
import pytest

import snapsink
from snapsink import (
    ConfigError,
    DTypeError,
    Field,
    HostMemory,
    NpyDirectory,
    Route,
    Schema,
    SchemaError,
    Sink,
    SyncRecorder,
    SyncSink,
    Trajectory,
)
from snapsink._schema import check_name

pytestmark = pytest.mark.timeout(60)

STORES = ["memory", "npy", "zarr"]
APIS = ["sync", "async"]


# -- helpers ---------------------------------------------------------------------------
def make_store(kind: str, path: Path, mode: str = "x") -> Any:
    if kind == "memory":
        return HostMemory()
    if kind == "npy":
        return NpyDirectory(path, mode=mode)
    return snapsink.ZarrStore(path, mode=mode)


def read(kind: str, store: Any, path: Path) -> Trajectory:
    """The run as a reader sees it: a fresh open of the store on disk."""
    return store.trajectory() if kind == "memory" else snapsink.open(path)


def write(api: str, store: Any, frames: list[Any], first_step: int = 0, **kw: Any) -> None:
    """Write ``frames`` at steps ``first_step, first_step + 1, ...`` with times."""
    if api == "sync":
        with SyncSink(store, **kw) as sink:
            for i, frame in enumerate(frames, first_step):
                sink.write(frame, step=i, time=0.5 * i)
        return

    async def main() -> None:
        async with Sink(store, **kw) as sink:
            for i, frame in enumerate(frames, first_step):
                await sink.write(frame, step=i, time=0.5 * i)

    anyio.run(main)


def assert_same(got: Any, want: Any, where: str = "frame") -> None:
    """``got`` has ``want``'s structure (types and keys), and bit-exact leaves."""
    if isinstance(want, dict):
        assert type(got) is type(want), where
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
        return
    if dataclasses.is_dataclass(want) or (isinstance(want, tuple) and hasattr(want, "_fields")):
        assert type(got) is type(want), where
        names = (
            [f.name for f in dataclasses.fields(want)]
            if dataclasses.is_dataclass(want)
            else (
                list(want._fields)  # type: ignore[attr-defined]
            )
        )
        for n in names:
            assert_same(getattr(got, n), getattr(want, n), f"{where}.{n}")
        return
    if isinstance(want, list | tuple) and not all(isinstance(v, int | float) for v in want):
        assert type(got) is type(want) and len(got) == len(want), where
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{k}]")
        return
    assert_leaf(got, want, where)


def assert_leaf(got: Any, want: Any, where: str = "leaf") -> None:
    w = np.asarray(want)
    g = np.asarray(got)
    assert g.dtype == w.dtype, f"{where}: dtype {g.dtype}, expected {w.dtype}"
    assert g.shape == w.shape, f"{where}: shape {g.shape}, expected {w.shape}"
    assert g.tobytes() == w.tobytes(), f"{where}: values differ"


def rng_frame(i: int) -> dict[str, Any]:
    """A nested dict: mappings in mappings, a list of arrays, a list of numbers."""
    r = np.random.default_rng(i)
    return {
        "params": {
            "dense": {
                "kernel": r.standard_normal((2, 3)).astype(np.float32),
                "bias": r.standard_normal(3),
            },
            "scale": np.float32(r.standard_normal()),
        },
        "energy": float(r.standard_normal()),
        "layers": [r.integers(0, 100, 4), r.integers(-5, 5, (2, 2)).astype(np.int16)],
        "box": [10.0, 10.0, 10.0 + i],
    }


NESTED_NAMES = [
    "params.dense.kernel",
    "params.dense.bias",
    "params.scale",
    "energy",
    "layers.0",
    "layers.1",
    "box",
]


def as_tree(frame: dict[str, Any]) -> dict[str, Any]:
    """What ``frame(i, nested=True)`` returns for ``rng_frame``: dicts with str keys."""
    return {
        "params": {
            "dense": dict(frame["params"]["dense"]),
            "scale": frame["params"]["scale"],
        },
        "energy": frame["energy"],
        "layers": {"0": frame["layers"][0], "1": frame["layers"][1]},
        "box": np.asarray(frame["box"]),
    }


# -- round trips -----------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_nested_dict_round_trips(kind: str, api: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [rng_frame(i) for i in range(4)]
    write(api, store, frames)
    traj = read(kind, store, path)
    assert list(traj.fields) == NESTED_NAMES
    assert traj.fields["layers.1"] == Field("i2", (2, 2))
    assert traj.fields["box"] == Field("f8", (3,))  # a list of numbers is one field
    assert traj.steps.tolist() == [0, 1, 2, 3]
    for i, frame in enumerate(frames):
        flat = traj.frame(i)
        assert list(flat) == NESTED_NAMES  # flat reads are unchanged: the stored names
        assert_leaf(flat["params.dense.kernel"], frame["params"]["dense"]["kernel"])
        assert_same(traj.frame(i, nested=True), as_tree(frame))
        assert_same(traj.frame(i, like=frame), frame)  # the input's own structure
    assert_same(list(traj.iter_frames(nested=True)), [as_tree(f) for f in frames])


@dataclasses.dataclass(frozen=True)
class Thermo:
    energy: float
    temperature: np.float32


@dataclasses.dataclass
class MDState:
    positions: np.ndarray
    velocities: np.ndarray
    thermo: Thermo
    count: int = dataclasses.field(default=0, init=False)


class AdamState(NamedTuple):
    count: np.ndarray
    mu: dict[str, np.ndarray]
    nu: dict[str, np.ndarray]


def md_state(i: int) -> MDState:
    r = np.random.default_rng(100 + i)
    s = MDState(r.random((5, 3)), r.random((5, 3)), Thermo(float(r.random()), np.float32(300 + i)))
    s.count = i
    return s


def adam_state(i: int) -> AdamState:
    r = np.random.default_rng(200 + i)
    w = {"w": r.random((2, 2)).astype(np.float32), "b": r.random(2).astype(np.float32)}
    return AdamState(np.int32(i), w, {k: v * v for k, v in w.items()})


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_dataclass_round_trips(kind: str, api: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [md_state(i) for i in range(3)]
    write(api, store, frames)
    traj = read(kind, store, path)
    assert list(traj.fields) == [
        "positions",
        "velocities",
        "thermo.energy",
        "thermo.temperature",
        "count",
    ]
    for i, state in enumerate(frames):
        got = traj.frame(i, like=md_state(0))
        assert isinstance(got, MDState) and isinstance(got.thermo, Thermo)
        assert_same(got, state)
        assert got.count == i  # a field without init comes back too
        tree = traj.frame(i, nested=True)
        assert list(tree) == ["positions", "velocities", "thermo", "count"]
        assert_leaf(tree["thermo"]["temperature"], state.thermo.temperature)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_namedtuple_round_trips(kind: str, api: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [adam_state(i) for i in range(3)]
    write(api, store, frames)
    traj = read(kind, store, path)
    assert list(traj.fields) == ["count", "mu.w", "mu.b", "nu.w", "nu.b"]
    for i, state in enumerate(frames):
        got = traj.frame(i, like=frames[0])
        assert isinstance(got, AdamState)
        assert_same(got, state)
        assert_same(
            traj.frame(i, nested=True), {"count": state.count, "mu": state.mu, "nu": state.nu}
        )


def state_dict(i: int) -> OrderedDict[str, np.ndarray]:
    """What ``torch.nn.Sequential(Linear, ReLU, Linear, BatchNorm1d).state_dict()``
    holds: an OrderedDict with dotted keys (numpy arrays stand in for tensors)."""
    r = np.random.default_rng(300 + i)
    return OrderedDict(
        [
            ("0.weight", r.random((4, 3)).astype(np.float32)),
            ("0.bias", r.random(4).astype(np.float32)),
            ("2.weight", r.random((2, 4)).astype(np.float32)),
            ("2.bias", r.random(2).astype(np.float32)),
            ("3.running_mean", r.random(2).astype(np.float32)),
            ("3.num_batches_tracked", np.array(i, np.int64)),
        ]
    )


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_dotted_state_dict_round_trips(kind: str, api: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [{"model": state_dict(i), "loss": 1.0 / (i + 1)} for i in range(3)]
    write(api, store, frames)
    traj = read(kind, store, path)
    sd_keys = list(state_dict(0))
    assert list(traj.fields) == [f"model.{k}" for k in sd_keys] + ["loss"]
    for i, frame in enumerate(frames):
        # in the template's structure: an OrderedDict with PyTorch's own keys,
        # ready for model.load_state_dict
        got = traj.frame(i, like={"model": state_dict(0), "loss": 0.0})
        assert type(got["model"]) is OrderedDict and list(got["model"]) == sd_keys
        assert_same(got, frame)
        tree = traj.frame(i, nested=True)
        assert list(tree["model"]) == ["0", "2", "3"]
        assert_leaf(tree["model"]["3"]["num_batches_tracked"], np.array(i, np.int64))


@pytest.mark.parametrize("kind", STORES)
def test_a_flat_state_dict_is_flat_already(kind: str, tmp_path: Path) -> None:
    """``{"layer.0.weight": w}``: the dotted keys are the field names as they are."""
    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [state_dict(i) for i in range(3)]
    write("sync", store, frames)
    traj = read(kind, store, path)
    assert list(traj.fields) == list(frames[0])
    for i, sd in enumerate(frames):
        flat = traj.frame(i)
        assert_same(flat, dict(sd))
        assert_same(traj.frame(i, like=frames[0]), sd)
        assert_leaf(traj.frame(i, nested=True)["0"]["weight"], sd["0.weight"])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_jax_pytree_round_trips(kind: str, api: str, tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    tree_util = jax.tree_util

    @tree_util.register_pytree_with_keys_class
    class Box:  # a pytree node of JAX's only: not a mapping, list or dataclass
        def __init__(self, lo: Any, hi: Any):
            self.lo, self.hi = lo, hi

        def tree_flatten_with_keys(self) -> Any:
            return (
                (tree_util.GetAttrKey("lo"), self.lo),
                (tree_util.GetAttrKey("hi"), self.hi),
            ), None

        @classmethod
        def tree_unflatten(cls, aux: Any, children: Any) -> Box:
            return cls(*children)

    @dataclasses.dataclass
    class Train:  # as flax.struct: a static field JAX keeps out of the leaves
        step: Any
        ema: Any
        apply_fn: Callable[[Any], Any]

    tree_util.register_dataclass(Train, data_fields=["step", "ema"], meta_fields=["apply_fn"])

    def params(i: int) -> dict[str, Any]:
        key = jax.random.PRNGKey(i)
        return {
            "dense": {"kernel": jax.random.normal(key, (3, 2)), "bias": jnp.full(2, i, jnp.int32)},
            "box": Box(jnp.zeros(3) - i, jnp.ones(3) * i),
            "opt": AdamState(jnp.int32(i), {"w": jnp.ones(2)}, {"w": jnp.ones(2) * i}),
            "train": Train(jnp.int32(i), None, print),  # None: no leaves, as in JAX
        }

    path = tmp_path / "run"
    store = make_store(kind, path)
    frames = [params(i) for i in range(3)]
    write(api, store, frames)
    traj = read(kind, store, path)
    assert list(traj.fields) == [
        "dense.kernel",
        "dense.bias",
        "box.lo",
        "box.hi",
        "opt.count",
        "opt.mu.w",
        "opt.nu.w",
        "train.step",
    ]
    for i, p in enumerate(frames):
        got = traj.frame(i, like=frames[0])
        assert tree_util.tree_structure(got) == tree_util.tree_structure(p)
        assert got["train"].apply_fn is print and got["train"].ema is None
        for g, w in zip(tree_util.tree_leaves(got), tree_util.tree_leaves(p), strict=True):
            assert_leaf(g, np.asarray(w))
        tree = traj.frame(i, nested=True)
        assert_leaf(tree["box"]["hi"], np.asarray(p["box"].hi))


# -- declared schemas, the recorder, resume, ragged ------------------------------------
def test_declared_schema_nested_or_dotted_is_one_schema() -> None:
    nested = Schema({"params": {"w": Field("f4", (2,)), "b": "f4"}, "e": "f8"})
    dotted = Schema({"params.w": ("f4", (2,)), "params.b": "f4", "e": "f8"})
    assert nested == dotted
    assert list(nested) == ["params.w", "params.b", "e"]
    assert Schema.from_json(nested.to_json()) == dotted


@pytest.mark.parametrize("spelling", ["nested", "dotted"])
def test_declared_schema_takes_nested_and_dotted_frames(spelling: str) -> None:
    decl = (
        {"params": {"w": ("f4", (2,))}, "e": "f8"}
        if spelling == "nested"
        else {"params.w": ("f4", (2,)), "e": "f8"}
    )
    store = HostMemory()
    w = np.arange(2, dtype=np.float32)
    with SyncSink(store, schema=decl) as sink:
        sink.write({"params": {"w": w}, "e": 1.0})
        sink.write({"params.w": w + 1, "e": 2.0})
        sink.write({"e": 3.0, "params": {"w": w.astype(np.float16) + 2}})  # safe cast, any order
    traj = store.trajectory()
    assert traj["params.w"][:].tolist() == [[0, 1], [1, 2], [2, 3]]
    assert traj["params.w"].dtype == np.float32
    assert traj["e"][:].tolist() == [1.0, 2.0, 3.0]


def test_recorder_routes_select_nested_entries() -> None:
    params = {"w": np.zeros((2, 2)), "b": np.zeros(2)}
    with SyncRecorder(
        thermo=Route(HostMemory(), fields=["energy"]),
        model=Route(HostMemory(), fields=["params", "energy"], schedule=2),
    ) as rec:
        for step in range(4):
            params = {"w": params["w"] + 1, "b": params["b"] - 1}
            rec.record({"params": params, "energy": float(step)}, step=step)
    model = rec.store("model").trajectory()
    assert list(model.fields) == ["params.w", "params.b", "energy"]
    assert model.steps.tolist() == [0, 2]
    assert model["params.w"][:, 0, 0].tolist() == [1.0, 3.0]
    assert model.frame(1, nested=True)["params"]["b"].tolist() == [-3.0, -3.0]
    assert list(rec.store("thermo").trajectory().fields) == ["energy"]


@pytest.mark.parametrize("kind", ["npy", "zarr"])
def test_resume_appends_nested_frames(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    frames = [rng_frame(i) for i in range(5)]
    write("sync", make_store(kind, path), frames[:3])
    write("async", make_store(kind, path, mode="a"), frames[3:], first_step=3)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [0, 1, 2, 3, 4]
    for i, frame in enumerate(frames):
        assert_same(traj.frame(i, like=frame), frame)


@pytest.mark.parametrize("kind", STORES)
def test_nested_ragged_field(kind: str, tmp_path: Path) -> None:
    """A ragged field under a node: its offsets (``<name>.offsets``) never clash."""
    path = tmp_path / "run"
    store = make_store(kind, path)
    schema = {"system": {"positions": Field("f4", (None, 3)), "cell": ("f8", (3,))}}
    rows = [np.full((n, 3), n, np.float32) for n in (2, 0, 5)]
    frames = [{"system": {"positions": r, "cell": np.ones(3) * k}} for k, r in enumerate(rows)]
    write("sync", store, frames, schema=schema)
    traj = read(kind, store, path)
    assert traj.schema is not None and traj.schema.ragged == ("system.positions",)
    for i, frame in enumerate(frames):
        assert_same(traj.frame(i, nested=True), frame)


def test_to_xarray_names_variables_by_path() -> None:
    store = HostMemory()
    frames = [rng_frame(i) for i in range(3)]
    write("sync", store, frames)
    ds = store.trajectory().to_xarray()
    assert set(NESTED_NAMES) <= set(ds.data_vars)
    np.testing.assert_array_equal(
        ds["params.dense.kernel"].values, np.stack([f["params"]["dense"]["kernel"] for f in frames])
    )


# -- reading a tree back ---------------------------------------------------------------
def test_trajectory_tree_views_and_chunks() -> None:
    store = HostMemory()
    frames = [rng_frame(i) for i in range(5)]
    write("sync", store, frames)
    traj = store.trajectory()
    views = traj.nested()
    assert list(views) == ["params", "energy", "layers", "box"]
    kernel = views["params"]["dense"]["kernel"]
    assert isinstance(kernel, snapsink.FieldView) and kernel.name == "params.dense.kernel"
    assert_leaf(kernel[1:3], np.stack([f["params"]["dense"]["kernel"] for f in frames[1:3]]))
    assert list(traj.nested("params.dense")) == ["kernel", "bias"]
    assert list(traj.nested("layers")) == ["0", "1"]
    with pytest.raises(KeyError, match=r"no fields under 'params\.nope'"):
        traj.nested("params.nope")
    with pytest.raises(KeyError, match=r"'energy' is a field.*traj\['energy'\]"):
        traj.nested("energy")
    (chunk,) = traj.iter_chunks(frames=8, nested=True)
    assert chunk["steps"].tolist() == [0, 1, 2, 3, 4]
    assert_leaf(chunk["layers"]["1"], np.stack([f["layers"][1] for f in frames]))
    # iteration stays flat; iter_frames takes the same options as frame
    assert [list(f) for f in traj] == [NESTED_NAMES] * 5
    like = {"energy": 0.0, "params": {"scale": 0}}
    got = list(traj.iter_frames(like=like))
    assert [g["energy"] for g in got] == [f["energy"] for f in frames]
    assert_leaf(got[4]["params"]["scale"], frames[4]["params"]["scale"])
    with pytest.raises(KeyError, match=r"no field 'params\.missing'"):
        traj.frame(0, like={"params": {"missing": 0.0}})
    with pytest.raises(KeyError, match="no field 'steps'"):
        next(traj.iter_frames(like={"steps": 0}))


def test_stores_without_nested_names_read_the_same() -> None:
    store = HostMemory()
    write("sync", store, [{"x": np.arange(3), "e": 1.0}])
    traj = store.trajectory()
    assert traj.frame(0, nested=True).keys() == traj.frame(0).keys() == {"x", "e"}


# -- what is a leaf, what is a node ----------------------------------------------------
def test_lists_of_numbers_are_arrays_lists_of_arrays_are_nodes() -> None:
    s = Schema.infer(
        {
            "box": [1.0, 2.0, 3.0],
            "grid": [[1, 2], [3, 4]],
            "pair": (np.zeros(2), np.ones(3)),
            "mixed": [1.0, np.zeros(2)],
            "scalars": [np.float32(1), np.float32(2)],
        }
    )
    assert dict(s) == {
        "box": Field("f8", (3,)),
        "grid": Field("i8", (2, 2)),
        "pair.0": Field("f8", (2,)),
        "pair.1": Field("f8", (3,)),
        "mixed.0": Field("f8", ()),
        "mixed.1": Field("f8", (2,)),
        "scalars": Field("f4", (2,)),
    }


def test_a_flat_frame_is_never_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: a flat mapping whose names are the schema's skips flattening."""
    import snapsink._schema as schema_module

    schema = Schema({"x": ("f8", (3,)), "e": "f8"})
    real = schema_module.flatten_frame
    calls: list[object] = []

    def counting(frame: object, step: int | None = None) -> dict[str, Any]:
        calls.append(frame)
        return real(frame, step)

    monkeypatch.setattr(schema_module, "flatten_frame", counting)
    x = np.zeros(3)
    items = schema.validate({"x": x, "e": 1.0}, 0)
    assert items[0][2] is x and calls == []
    nested = Schema({"p": {"x": ("f8", (3,))}, "e": "f8"})
    items = nested.validate({"p": {"x": x}, "e": 1.0}, 0)
    assert items[0][0] == "p.x" and items[0][2] is x and len(calls) == 1


# -- names -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["a.b", "layer.0.weight", "0.bias", "_x.y_1.z", "model.encoder.layers.11.attn", "a.007"],
)
def test_nested_field_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("a..b", "identifiers and indices joined by '.'"),
        ("a.", "identifiers and indices"),
        (".a", "identifiers and indices"),
        ("0", "not starting with a digit"),
        ("1x.a", "identifiers and indices"),
        ("a.b-c", "identifiers and indices"),
        ("a.b/c", "identifiers and indices"),
        ("a.1x", "identifiers and indices"),
        ("steps.x", "reserved"),
        ("static.mass", "reserved"),
        ("grid.offsets", "offsets"),
        ("a." + "b" * 127, "at most 128"),
    ],
)
def test_bad_nested_field_names(name: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        check_name(name)
    with pytest.raises(ConfigError):
        Schema({name: "f4"})


def test_other_names_stay_identifiers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identifier"):
        check_name("a.b", "group")
    with pytest.raises(ConfigError):
        HostMemory(static={"a.b": np.zeros(2)})
    with pytest.raises(ConfigError):
        snapsink.ZarrStore(tmp_path / "z", group="a.b")
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize(
    ("decl", "pattern"),
    [
        ({"a": "f4", "a.b": "f4"}, "'a' is both a field and the parent of field 'a.b'"),
        ({"a": {"b": "f4"}, "a.b": "f8"}, "'a.b': given twice"),
        ({"a": {}}, "at least one field"),
    ],
)
def test_bad_declared_schemas(decl: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        Schema(decl)
    with pytest.raises(ConfigError, match=pattern):
        SyncSink(HostMemory(), schema=decl)


# -- bad input: a clear error, nothing written, the sink still usable --------------------
X = np.arange(3.0)

Error = tuple[type[Exception], str]
#: a frame refused as a first frame (inferring the schema), and as a later one
#: (validated against the schema of GOOD): (frame, first, later)
BAD_FRAMES: list[tuple[Any, Error, Error]] = [
    (
        {"p": {"x": X, "e": "text"}},
        (DTypeError, r"field 'p\.e': expected a bool, integer, float or complex array"),
    ),
    (
        {"p": {"x": X, "e": None}},
        (DTypeError, r"field 'p\.e': expected an array or a number, got None"),
    ),
    ({"p": {"x": X, "e": object()}}, (DTypeError, r"field 'p\.e': expected a bool, integer")),
    (
        {"p": {"x": X, "e": 1.0}, "p.x": X},
        (SchemaError, r"field 'p\.x'.*given twice, as \['p'\]\['x'\] and as \['p\.x'\]"),
    ),
    (
        {"p": {"x": X, "e": 1.0, "e.f": 2.0}},
        (SchemaError, r"'p\.e' is both a field and the parent of field 'p\.e\.f'"),
        (SchemaError, r"unknown 'p\.e\.f'"),
    ),
    (
        {"p": {"x": X, "e": 1.0, "bad key": 2.0}},
        (ConfigError, r"field name 'p\.bad key'"),
        (SchemaError, r"unknown 'p\.bad key'"),
    ),
    ({"p": {"x": X, "e": 1.0, (1, 2): 2.0}}, (ConfigError, r"tuple key \(1, 2\) under 'p'")),
    (
        {"p": {"x": X, "e": 1.0, "offsets": X}},
        (ConfigError, r"may not end in '\.offsets'"),
        (SchemaError, r"unknown 'p\.offsets'"),
    ),
    ([X, X], (DTypeError, "expected a mapping")),
]
GOOD = {"p": {"x": X, "e": 1.0}}


def bad_cases() -> list[Any]:
    out = []
    for k, (frame, first, *later) in enumerate(BAD_FRAMES):
        out.append(pytest.param(frame, "first", *first, id=f"{k}-first"))
        out.append(pytest.param(frame, "later", *(later[0] if later else first), id=f"{k}-later"))
    return out


@pytest.mark.parametrize(("frame", "when", "error", "pattern"), bad_cases())
def test_bad_nested_frames_write_nothing(
    frame: Any, when: str, error: type[Exception], pattern: str
) -> None:
    store = HostMemory()
    with SyncSink(store) as sink:
        if when == "later":
            sink.write(GOOD, step=0)
        with pytest.raises(error, match=pattern):
            sink.write(frame, step=1)
        sink.flush()
        assert sink.statistics().written == (1 if when == "later" else 0)
        sink.write({"p": {"x": X + 1, "e": 2.0}}, step=2)  # still usable
    traj = store.trajectory()
    assert list(traj.fields) == ["p.x", "p.e"]
    assert traj.steps.tolist() == ([0, 2] if when == "later" else [2])
    assert_leaf(traj.frame(-1, nested=True)["p"]["x"], X + 1)


@pytest.mark.parametrize(
    ("frame", "error", "pattern"),
    [
        ({"p": {"x": X}}, SchemaError, r"missing 'p\.e'"),
        ({"p": {"x": X, "e": 1.0, "f": 2.0}}, SchemaError, r"unknown 'p\.f'"),
        ({"p": {"x": X[:2], "e": 1.0}}, SchemaError, r"field 'p\.x': expected shape \(3,\)"),
        ({"p": {"x": X.astype(np.complex64), "e": 1.0}}, DTypeError, r"field 'p\.x'"),
        ({"p": X, "q": 1.0}, SchemaError, r"missing 'p\.x', 'p\.e'; unknown 'p', 'q'"),
    ],
)
def test_nested_frames_against_the_schema(frame: Any, error: type[Exception], pattern: str) -> None:
    store = HostMemory()
    with SyncSink(store) as sink:
        sink.write(GOOD, step=0)
        with pytest.raises(error, match=pattern):
            sink.write(frame, step=1)
        sink.write(GOOD, step=2)
    assert store.trajectory().steps.tolist() == [0, 2]


def test_a_nested_value_for_a_flat_field_is_refused() -> None:
    with SyncSink(HostMemory(), schema={"a": "f8"}) as sink:
        with pytest.raises(
            DTypeError, match=r"field 'a': expected an array or a number, got a nested dict"
        ):
            sink.write({"a": {"x": 1.0}})
        with pytest.raises(DTypeError, match="nested MDState"):
            sink.write({"a": md_state(0)})
        sink.write({"a": 1.0})
        sink.flush()
        assert sink.statistics().written == 1


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", STORES)
def test_bad_input_in_every_store_and_api(kind: str, api: str, tmp_path: Path) -> None:
    path = tmp_path / "run"
    store = make_store(kind, path)
    collision = {"p": {"x": X, "e": 1.0}, "p.e": 2.0}
    bad_leaf = {"p": {"x": X, "e": [X, "text"]}}

    if api == "sync":
        with SyncSink(store) as sink:
            for bad in (collision, bad_leaf):
                with pytest.raises(SchemaError):
                    sink.write(bad, step=0)
            sink.write(GOOD, step=1)
            with pytest.raises(SchemaError, match="given twice"):
                sink.write(collision, step=2)
            sink.write({"p": {"x": X * 2, "e": 3.0}}, step=3)
    else:

        async def main() -> None:
            async with Sink(store) as sink:
                for bad in (collision, bad_leaf):
                    with pytest.raises(SchemaError):
                        await sink.write(bad, step=0)
                    with pytest.raises(SchemaError):
                        sink.write_nowait(bad, step=0)
                await sink.write(GOOD, step=1)
                with pytest.raises(SchemaError, match="given twice"):
                    await sink.write(collision, step=2)
                await sink.write({"p": {"x": X * 2, "e": 3.0}}, step=3)

        anyio.run(main)
    traj = read(kind, store, path)
    assert list(traj.fields) == ["p.x", "p.e"]
    assert traj.steps.tolist() == [1, 3]
    assert_leaf(traj["p.x"][:], np.stack([X, X * 2]))
    assert_leaf(traj["p.e"][:], np.array([1.0, 3.0]))


# -- keys by value, templates by type --------------------------------------------------
class Species(str, enum.Enum):  # noqa: UP042  # the mixin idiom under test, not StrEnum
    H = "H"
    C = "C"


class Layer(int, enum.Enum):
    FIRST = 0
    SECOND = 1


def enum_state(i: int) -> dict[str, Any]:
    return {
        "charges": {Species.H: np.full(2, i, np.float32), Species.C: np.arange(i + 1.0)[-1:]},
        "layers": {Layer.FIRST: np.arange(3) + i, Layer.SECOND: np.ones((2, 2)) * i},
    }


@pytest.mark.parametrize("kind", STORES)
def test_mixin_enum_keys_are_named_by_their_value(kind: str, tmp_path: Path) -> None:
    """``Species.H == "H"`` is the key ``H``, not its str() ``Species.H`` (which
    the separator would also split into a path)."""
    path = tmp_path / "run"
    store = make_store(kind, path)
    write("sync", store, [enum_state(0), enum_state(1)])
    traj = read(kind, store, path)
    assert list(traj.fields) == ["charges.H", "charges.C", "layers.0", "layers.1"]
    assert all(type(name) is str for name in traj.fields)
    tree = traj.frame(1, nested=True)
    assert list(tree["charges"]) == ["H", "C"]
    assert list(tree["layers"]) == ["0", "1"]
    assert_leaf(tree["charges"]["H"], np.full(2, 1, np.float32))
    assert_leaf(tree["layers"]["0"], np.arange(3) + 1)
    # the template's own keys come back, enum members included
    back = traj.frame(1, like=enum_state(0))
    assert list(back["charges"]) == [Species.H, Species.C]
    assert all(type(k) is Species for k in back["charges"])
    assert_same(back, enum_state(1))
    # the plain keys name the same fields
    plain = traj.frame(0, like={"charges": {"H": None, "C": None}, "layers": [None, None]})
    assert_leaf(plain["charges"]["C"], np.array([0.0]))
    assert_leaf(plain["layers"][1], np.zeros((2, 2)))


def test_mixin_enum_keys_fit_the_plain_spelling() -> None:
    """An enum key and the str it equals are one field; a key that spells the
    enum's str() is another."""
    decl = Schema({"charges": {Species.H: ("f4", (2,))}, "layers": {Layer.FIRST: "f8"}})
    assert list(decl) == ["charges.H", "layers.0"]
    assert Schema({Species.H: {"w": "f4"}}) == Schema({"H.w": "f4"})
    store = HostMemory()
    with SyncSink(store, schema=decl) as sink:
        sink.write({"charges": {Species.H: np.ones(2, np.float32)}, "layers": {0: 1.0}}, step=0)
        sink.write({"charges.H": np.zeros(2, np.float32), "layers": {Layer.FIRST: 2.0}}, step=1)
    traj = store.trajectory()
    assert traj["charges.H"][:].tolist() == [[1, 1], [0, 0]]
    assert traj["layers.0"][:].tolist() == [1.0, 2.0]
    other = HostMemory()
    with SyncSink(other) as sink:  # no collision: "H" and "Species" -> "H"
        sink.write({Species.H: np.ones(1), "Species": {"H": np.zeros(1)}}, step=0)
    assert list(other.trajectory().fields) == ["H", "Species.H"]
    assert other.trajectory().frame(0)["Species.H"].tolist() == [0.0]


def zeros2() -> np.ndarray[Any, Any]:
    return np.zeros(2)


class Tagged(dict[str, Any]):
    """A dict whose constructor takes a tag first: ``Tagged(pairs)`` would be empty."""

    def __init__(self, tag: str, *args: Any):
        super().__init__(*args)
        self.tag = tag


class ReadOnly(Mapping[str, Any]):
    """A mapping that cannot be built from a dict (its constructor takes two)."""

    def __init__(self, data: dict[str, Any], tag: str):
        self._data, self.tag = dict(data), tag

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_like_keeps_mapping_types_their_constructors_do_not_build() -> None:
    """A defaultdict comes back with its default_factory, a dict subclass with
    its attributes; only a mapping that is neither buildable nor a dict is a
    plain dict (as documented)."""

    def state(i: float) -> dict[str, Any]:
        return {
            "per_species": defaultdict(zeros2, {"H": np.ones(2) * i, "C": np.zeros(2) + i}),
            "tagged": Tagged("t", {"a": np.arange(2.0) + i}),
            "ro": ReadOnly({"b": np.arange(3) + int(i)}, "r"),
        }

    store = HostMemory()
    with SyncSink(store) as sink:
        sink.write(state(0), step=0)
        sink.write(state(1), step=1)
    template = state(7)
    back = store.trajectory().frame(1, like=template)
    node = back["per_species"]
    assert type(node) is defaultdict and node.default_factory is zeros2
    assert list(node) == ["H", "C"]
    assert_leaf(node["H"], np.ones(2))
    assert_leaf(node["C"], np.ones(2))
    assert_leaf(node["N"], np.zeros(2))  # a missing key: the template's factory
    assert type(back["tagged"]) is Tagged and back["tagged"].tag == "t"
    assert_leaf(back["tagged"]["a"], np.arange(2.0) + 1)
    assert type(back["ro"]) is dict and list(back["ro"]) == ["b"]
    assert_leaf(back["ro"]["b"], np.arange(3) + 1)
    # the template itself is untouched
    assert list(template["per_species"]) == ["H", "C"]
    assert_leaf(template["per_species"]["H"], np.ones(2) * 7)
    assert_leaf(template["tagged"]["a"], np.arange(2.0) + 7)
