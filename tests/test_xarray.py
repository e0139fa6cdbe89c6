"""Trajectory.to_xarray: every field (ragged ones as rows + offsets), named
dimensions shared between fields, steps and times as coordinates, static arrays;
the same layout as xarray.open_zarr on the Zarr store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import ConfigError, Field, HostMemory, NpyDirectory

xr = pytest.importorskip("xarray", reason="needs xarray: pip install -e '.[test]'")

SCHEMA = {
    "u": Field("float32", (4, 5), dims=("y", "x")),
    "v": Field("float32", (4, 5), dims=("y", "x")),
    "pos": Field("float64", (None, 3), dims=("atom", "xyz")),
    "e": Field("float64", ()),
}
N = 6


def _frame(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "u": rng.random((4, 5), dtype=np.float32),
        "v": rng.random((4, 5), dtype=np.float32),
        "pos": rng.random((i % 3 + 1, 3)),
        "e": float(i) / 3,
    }


def _write(store: Any) -> None:
    with snapsink.SyncSink(store, schema=SCHEMA) as sink:
        for i in range(N):
            sink.write(_frame(i), step=10 * i, time=0.5 * i)


def _check(ds: Any) -> None:
    frames = [_frame(i) for i in range(N)]
    # named dimensions are shared: u and v align on (y, x)
    assert ds["u"].dims == ("frame", "y", "x") and ds["v"].dims == ("frame", "y", "x")
    assert ds.sizes["y"] == 4 and ds.sizes["x"] == 5
    np.testing.assert_array_equal(ds["u"].values, np.stack([f["u"] for f in frames]))
    np.testing.assert_array_equal(
        (ds["u"] - ds["v"]).values, np.stack([f["u"] - f["v"] for f in frames])
    )
    # the ragged field: every frame's rows, and the offsets that split them
    assert ds["pos"].dims == ("pos_row", "xyz")
    offsets = ds["pos.offsets"].values
    assert ds["pos.offsets"].dims == ("frame_edge",) and len(offsets) == N + 1
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(ds["pos"].values[offsets[i] : offsets[i + 1]], f["pos"])
    np.testing.assert_array_equal(ds["e"].values, [f["e"] for f in frames])


@pytest.mark.parametrize("kind", ["memory", "npy", "zarr"])
def test_to_xarray_holds_every_field(kind: str, tmp_path: Path) -> None:
    store: Any
    if kind == "memory":
        store = HostMemory(static={"grid_y": np.arange(4.0)})
    elif kind == "npy":
        store = NpyDirectory(tmp_path / "run", static={"grid_y": np.arange(4.0)})
    else:
        store = snapsink.ZarrStore(tmp_path / "run.zarr", static={"grid_y": np.arange(4.0)})
    _write(store)
    traj = (
        store.trajectory()
        if kind == "memory"
        else snapsink.open(tmp_path / ("run" if kind == "npy" else "run.zarr"))
    )
    assert traj.fields["u"].dims == ("y", "x")  # the dims read back from the store
    ds = traj.to_xarray()
    _check(ds)
    # steps and times are coordinates of frame; static arrays are there
    assert ds.coords["step"].dims == ("frame",) and ds["step"].values.tolist() == [
        10 * i for i in range(N)
    ]
    np.testing.assert_array_equal(ds["time"].values, 0.5 * np.arange(N))
    np.testing.assert_array_equal(ds["static_grid_y"].values, np.arange(4.0))


def test_xarray_open_zarr_agrees_with_to_xarray(tmp_path: Path) -> None:
    """The fields agree; the rest differs as docs/guides/sinks.md says."""
    path = tmp_path / "run.zarr"
    _write(snapsink.ZarrStore(path, static={"grid_y": np.arange(4.0)}, attrs={"T": 300}))
    plain = xr.open_zarr(path, consolidated=False)
    _check(plain)  # xarray alone, the same names and dims
    ours = snapsink.open(path).to_xarray()
    for name in ("u", "v", "pos", "pos.offsets", "e"):
        assert plain[name].dims == ours[name].dims
        np.testing.assert_array_equal(plain[name].values, ours[name].values)
    # steps and times: data variables there, coordinates step and time here
    assert set(plain.data_vars) == {"u", "v", "pos", "pos.offsets", "e", "steps", "times"}
    assert not plain.coords and set(ours.coords) == {"step", "time"}
    np.testing.assert_array_equal(plain["steps"].values, ours["step"].values)
    np.testing.assert_array_equal(plain["times"].values, ours["time"].values)
    # static arrays: in the static group there, static_<name> here
    static = xr.open_zarr(path, group="static", consolidated=False)
    assert static["grid_y"].dims == ours["static_grid_y"].dims == ("static_grid_y_dim_0",)
    np.testing.assert_array_equal(static["grid_y"].values, ours["static_grid_y"].values)
    assert plain.attrs["attrs"] == {"T": 300} and ours.attrs == {"T": 300}


@pytest.mark.parametrize("kind", ["memory", "npy"])
def test_the_dataset_is_the_callers_own(kind: str, tmp_path: Path) -> None:
    """Editing the Dataset (its step and time coordinates, static arrays and
    fields) changes nothing the trajectory reads later."""
    static = {"grid_y": np.arange(4.0)}
    store: Any
    if kind == "memory":
        store = HostMemory(static=static)
    else:
        store = NpyDirectory(tmp_path / "run", static=static)
    _write(store)
    traj = store.trajectory() if kind == "memory" else snapsink.open(tmp_path / "run")
    for chunks in (None, "store"):
        ds = traj.to_xarray(chunks=chunks)
        ds["step"].values[0] = 42
        ds["time"].values[:] = -1.0
        ds["static_grid_y"].values[:] = 0.0
        if chunks is None:
            ds["u"].values[:] = 0.0
            ds["pos"].values[:] = 0.0
    assert traj.steps.tolist() == [10 * i for i in range(N)]
    assert traj.times is not None and traj.times.tolist() == [0.5 * i for i in range(N)]
    assert traj.static["grid_y"].tolist() == [0.0, 1.0, 2.0, 3.0]
    _check(traj.to_xarray())


def test_dims_must_match_the_shape() -> None:
    with pytest.raises(ConfigError, match=r"expected 2 name\(s\)"):
        Field("f4", (4, 5), dims=("y",))
    with pytest.raises(ConfigError, match="other than 'frame'"):
        Field("f4", (4,), dims=("frame",))
    with pytest.raises(ConfigError, match="a name repeats"):
        Field("f4", (4, 4), dims=("y", "y"))
    f = Field("f4", (4, 5), dims=["y", "x"])
    assert Field.from_json(f.to_json()) == f
    assert f != Field("f4", (4, 5))  # the names are part of the schema


@pytest.mark.parametrize(
    ("fields", "static", "match"),
    [
        ({"static_z": np.arange(3.0)}, {"z": np.array([7, 8, 9])},
         r"field 'static_z' and static array 'z' would both be the variable 'static_z'"),
        ({"time": 1.0}, {}, r"the frames' times and field 'time' would both be"),
        ({"step": 1.0}, {}, r"the frames' steps and field 'step' would both be"),
        ({"frame": 1.0}, {}, r"field 'frame' would be the variable 'frame', also the name"),
        ({"x": np.zeros(2), "x_dim_0": np.zeros(3)}, {},
         r"field 'x_dim_0' would be the variable 'x_dim_0', also the name of a dimension "
         r"of field 'x'"),
        ({"y": np.zeros(4)}, {"s": np.zeros(2)}, None),
    ],
)  # fmt: skip
def test_variable_names_never_collide(
    fields: dict[str, Any], static: dict[str, Any], match: str | None
) -> None:
    """No variable replaces another; a name xarray cannot hold is refused,
    naming both holders and how to read each (nothing is lost: both read back)."""
    store = HostMemory(static=static)
    with snapsink.SyncSink(store) as sink:
        for i in range(3):
            sink.write({k: np.asarray(v) + i for k, v in fields.items()}, step=i, time=0.5 * i)
    traj = store.trajectory()
    if match is None:  # no collision: every variable is there
        ds = traj.to_xarray()
        assert sorted(ds.variables) == ["static_s", "step", "time", "y"]
        np.testing.assert_array_equal(ds["y"].values, np.arange(3)[:, None] + np.zeros(4))
        return
    for chunks in (None, "store"):
        with pytest.raises(snapsink.SchemaError, match=match):
            traj.to_xarray(chunks=chunks)
    for k, v in fields.items():
        np.testing.assert_array_equal(traj[k][:], np.stack([np.asarray(v) + i for i in range(3)]))
    for k, v in static.items():
        np.testing.assert_array_equal(traj.static[k], v)
