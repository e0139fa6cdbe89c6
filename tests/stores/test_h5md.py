"""HDF5Store(layout="h5md"): the H5MD tree, MDAnalysis reading it, and
snapsink reading H5MD files MDAnalysis wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import snapsink  # noqa: E402
from snapsink._errors import (  # noqa: E402
    ConfigError,
    SchemaError,
    StoreExistsError,
)
from snapsink._schema import Batch, Field, Frame, Schema  # noqa: E402
from snapsink.stores import hdf5 as hdf5_module  # noqa: E402
from snapsink.stores.hdf5 import HDF5Store  # noqa: E402

MAPPING = {
    "position": "positions",
    "velocity": "velocities",
    "force": "forces",
    "box": "cell",
    "observables": ["potential_energy"],
}
#: what MDAnalysis converts nothing from (its base units)
MDA_UNITS = {
    "positions": "Angstrom",
    "velocities": "Angstrom ps-1",
    "forces": "kJ mol-1 Angstrom-1",
    "cell": "Angstrom",
    "time": "ps",
}


def _frames(n: int, atoms: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "positions": rng.random((atoms, 3)) * 10,
            "velocities": rng.standard_normal((atoms, 3)),
            "forces": rng.standard_normal((atoms, 3)).astype(np.float32),
            "cell": np.diag([10.0, 11.0, 12.0]) + i * 0.01,
            "potential_energy": float(rng.standard_normal()),
        }
        for i in range(n)
    ]


def _fields(frame: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    return {k: np.asarray(v) for k, v in frame.items()}


def _write(path: Path, frames: list[dict[str, Any]], mode: str = "x", **kw: Any) -> None:
    store = HDF5Store(path, mode, layout="h5md", h5md=kw.pop("h5md", MAPPING), **kw)
    store.open()
    schema = Schema.infer(frames[0])
    store.prepare(schema, times=True)
    count = store._count
    store.append(
        Batch(
            [Frame(5 * (count + i), 0.5 * (count + i), _fields(fr)) for i, fr in enumerate(frames)]
        )
    )
    store.close()


# -- the H5MD tree ---------------------------------------------------------------------
def test_tree_follows_h5md_and_links_the_snapsink_datasets(tmp_path: Path) -> None:
    path = tmp_path / "run.h5md"
    frames = _frames(4, 7)
    _write(path, frames, units={"positions": "nm", "time": "ps"})
    with h5py.File(path, "r") as f:
        assert f["h5md"].attrs["version"].tolist() == [1, 1]
        assert f["h5md/creator"].attrs["name"] == "snapsink"
        assert f["h5md/creator"].attrs["version"] == snapsink.__version__
        assert isinstance(f["h5md/author"].attrs["name"], str)
        box = f["particles/all/box"]
        assert int(box.attrs["dimension"]) == 3
        assert [b.decode() for b in box.attrs["boundary"]] == ["periodic"] * 3
        for element, name in [
            ("position", "positions"),
            ("velocity", "velocities"),
            ("force", "forces"),
            ("box/edges", "cell"),
        ]:
            el = f[f"particles/all/{element}"]
            assert el["value"] == f[f"snapsink/{name}"]  # one dataset, two names
            assert el["step"] == f["snapsink/steps"]
            assert el["time"] == f["snapsink/times"]
            np.testing.assert_array_equal(el["value"][...], np.stack([fr[name] for fr in frames]))
        assert f["particles/all/position/value"].shape == (4, 7, 3)
        assert f["particles/all/force/value"].dtype == np.float32
        np.testing.assert_array_equal(f["particles/all/position/step"][...], [0, 5, 10, 15])
        np.testing.assert_array_equal(f["particles/all/position/time"][...], [0, 0.5, 1, 1.5])
        assert f["particles/all/position/value"].attrs["unit"] == "nm"
        assert f["particles/all/position/time"].attrs["unit"] == "ps"
        assert "unit" not in f["particles/all/velocity/value"].attrs
        obs = f["observables/potential_energy"]
        np.testing.assert_array_equal(obs["value"][...], [fr["potential_energy"] for fr in frames])
        assert obs["step"] == f["snapsink/steps"]
    # and snapsink reads its own H5MD file, bit-exact, by the snapsink group
    traj = snapsink.open(path)
    assert len(traj) == 4
    np.testing.assert_array_equal(traj.steps, [0, 5, 10, 15])
    for name in frames[0]:
        got = traj[name][:]
        want = np.stack([np.asarray(fr[name]) for fr in frames])
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()


def test_static_box_is_fixed_edges_and_no_box_is_boundary_none(tmp_path: Path) -> None:
    cell = np.array([3.0, 4.0, 5.0])
    frames = [{"positions": np.full((2, 3), float(i))} for i in range(3)]
    _write(
        tmp_path / "a.h5md",
        frames,
        h5md={"position": "positions", "box": "cell", "particles": "atoms"},
        static={"cell": cell},
        units={"cell": "nm"},
    )
    with h5py.File(tmp_path / "a.h5md", "r") as f:
        edges = f["particles/atoms/box/edges"]
        assert isinstance(edges, h5py.Dataset)
        np.testing.assert_array_equal(edges[...], cell)
        assert edges.attrs["unit"] == "nm"
    _write(tmp_path / "b.h5md", frames, h5md={"position": "positions"})
    with h5py.File(tmp_path / "b.h5md", "r") as f:
        box = f["particles/all/box"]
        assert [b.decode() for b in box.attrs["boundary"]] == ["none"] * 3
        assert "edges" not in box
        assert "observables" not in f


# -- the mapping and bad input ----------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs h5md"),
        ({"h5md": {"positions": "positions"}}, "unknown key"),
        ({"h5md": {}}, "at least one particle element"),
        ({"h5md": {"position": "positions", "boundary": "periodic"}}, "need the box"),
        ({"h5md": {"position": "x", "box": "c", "boundary": "open"}}, "boundary"),
        ({"h5md": {"position": "x", "observables": "energy"}}, "list of field names"),
        ({"h5md": {"position": 3}}, "non-empty str"),
        ({"h5md": {"position": "x"}, "units": ["nm"]}, "units: expected a mapping"),
    ],
)
def test_bad_mapping_is_refused(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HDF5Store(tmp_path / "x.h5md", layout="h5md", **kwargs)
    assert not (tmp_path / "x.h5md").exists()


def test_mapping_only_with_the_h5md_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only with layout='h5md'"):
        HDF5Store(tmp_path / "x.h5", h5md={"position": "positions"})
    with pytest.raises(ConfigError, match="only with layout='h5md'"):
        HDF5Store(tmp_path / "x.h5", units={"positions": "nm"})


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"velocities": Field("f8", (5, 3))}, "names field 'positions', which frames lack"),
        ({"positions": Field("f8", (None, 3))}, "ragged"),
        ({"positions": Field("f8", (5,))}, r"expected shape \(N, D\)"),
        ({"positions": Field("f8", (5, 3)), "cell": Field("f8", (2, 2))}, "h5md\\['box'\\]"),
    ],
)
def test_schema_the_mapping_cannot_use_is_refused(
    tmp_path: Path, fields: dict[str, Field], match: str
) -> None:
    store = HDF5Store(
        tmp_path / "x.h5md", layout="h5md", h5md={"position": "positions", "box": "cell"}
    )
    with pytest.raises(SchemaError, match=match):
        store.check_schema(Schema(fields))


def test_bad_first_frame_writes_nothing_and_the_sink_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "run.h5md"
    store = HDF5Store(path, layout="h5md", h5md={"position": "positions"})
    with snapsink.SyncSink(store, writer="thread") as sink:
        with pytest.raises(SchemaError, match="'positions'"):
            sink.write({"pos": np.zeros((4, 3))}, step=0)
        sink.write({"positions": np.ones((4, 3))}, step=1, time=0.5)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [1]
    assert list(traj.fields) == ["positions"]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["particles/all/position/value"][...], np.ones((1, 4, 3)))


def test_units_must_name_a_field_or_time(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "x.h5md", layout="h5md", h5md={"position": "p"}, units={"q": "nm"})
    with pytest.raises(SchemaError, match="units names 'q'"):
        store.check_schema(Schema({"p": Field("f8", (2, 3))}))


# -- modes ---------------------------------------------------------------------------
def test_modes_x_w_a(tmp_path: Path) -> None:
    path = tmp_path / "run.h5md"
    first, more = _frames(3, 5, seed=1), _frames(2, 5, seed=2)
    _write(path, first)
    with pytest.raises(StoreExistsError):
        HDF5Store(path, layout="h5md", h5md=MAPPING).open()
    # another group of the same file may not hold a second H5MD run
    with pytest.raises(StoreExistsError, match="holds one run"):
        HDF5Store(path, layout="h5md", h5md=MAPPING, group="other").open()
    _write(path, more, mode="a")
    with h5py.File(path, "r") as f:
        value = f["particles/all/position/value"]
        assert value.shape == (5, 5, 3)
        want = np.stack([fr["positions"] for fr in first + more])
        np.testing.assert_array_equal(value[...], want)
        np.testing.assert_array_equal(f["particles/all/position/step"][...], [0, 5, 10, 15, 20])
    _write(path, more, mode="w", h5md={"position": "positions"})
    with h5py.File(path, "r") as f:
        assert f["particles/all/position/value"].shape == (2, 5, 3)
        assert "velocity" not in f["particles/all"]
        assert "observables" not in f or "potential_energy" not in f["observables"]
        assert f["particles/all/position/value"] == f["snapsink/positions"]
    assert len(snapsink.open(path)) == 2


def test_a_resumed_store_writes_its_current_tree_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the tree is a structure session outside SWMR mode (a kill there
    can tear the file): mode="a" with the same mapping and units must not open
    one; a changed tree (another author) must still reach the file. Another
    unit for stored frames would relabel them: refused before anything is
    written (it used to relabel them)."""
    path = tmp_path / "run.h5md"
    _write(path, _frames(2, 4, seed=1), units={"positions": "nm"})
    calls: list[str] = []
    real = hdf5_module.write_h5md_tree

    def counting(*args: Any, **kw: Any) -> None:
        calls.append("tree")
        real(*args, **kw)

    monkeypatch.setattr(hdf5_module, "write_h5md_tree", counting)
    _write(path, _frames(1, 4, seed=2), mode="a", units={"positions": "nm"})
    assert calls == []  # the tree was current: nothing rewritten
    for units in ({"positions": "Angstrom"}, {"positions": "nm", "time": "fs"}):
        with pytest.raises(ConfigError, match=r"units\['(positions|time)'\].*(nm|no unit).*got"):
            HDF5Store(path, "a", layout="h5md", h5md=MAPPING, units=units).open()
    assert calls == []
    _write(path, _frames(1, 4, seed=3), mode="a", h5md={**MAPPING, "author": "B. Other"})
    assert calls == ["tree"]
    with h5py.File(path, "r") as f:
        assert f["particles/all/position/value"].attrs["unit"] == "nm"  # left out: kept
        assert f["h5md/author"].attrs["name"] == "B. Other"
        assert f["particles/all/position/value"].shape[0] == 4
        assert "unit" not in f["particles/all/position/time"].attrs
    assert len(snapsink.open(path)) == 4


def test_uncommitted_rows_and_recovery_by_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an H5MD reader that ignores the commit record sees: rows written
    ahead of the commit; a mode="a" open and close trims them away."""
    monkeypatch.setattr(hdf5_module, "_SESSION_BYTES", 1)  # write every full chunk
    path = tmp_path / "run.h5md"
    frames = _frames(8, 3)
    schema = Schema.infer(frames[0])
    store = HDF5Store(
        path, layout="h5md", h5md=MAPPING, chunk_frames=2, commit_every=100, commit_seconds=None
    )
    store.open()
    store.prepare(schema, times=True)
    store.append(Batch([Frame(i, 0.5 * i, _fields(fr)) for i, fr in enumerate(frames[:4])]))
    store.commit()
    store.append(
        Batch([Frame(4 + i, 0.5 * (4 + i), _fields(fr)) for i, fr in enumerate(frames[4:])])
    )
    with h5py.File(path, "r", swmr=True) as f:
        assert f["particles/all/position/value"].shape[0] == 8  # ahead of the commit
    assert len(snapsink.open(path)) == 4  # snapsink trusts the commit record
    store._release()  # the writer dies: no close
    recovered = HDF5Store(path, "a", layout="h5md", h5md=MAPPING)
    recovered.open()
    recovered.close()
    with h5py.File(path, "r") as f:
        for name in ("position/value", "position/step", "box/edges/value"):
            assert f[f"particles/all/{name}"].shape[0] == 4
        np.testing.assert_array_equal(
            f["particles/all/position/value"][...], np.stack([fr["positions"] for fr in frames[:4]])
        )


def test_describe_rebuilds_the_store(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "x.h5md", layout="h5md", h5md=MAPPING, units={"time": "ps"})
    spec = store.describe()
    assert spec is not None
    assert spec.kwargs["h5md"] == MAPPING and spec.kwargs["units"] == {"time": "ps"}
    again = spec.build()
    assert again.describe() == spec


# -- MDAnalysis ----------------------------------------------------------------------
def _ase_md(n_steps: int, every: int) -> tuple[Any, list[dict[str, Any]]]:
    """An EMT Cu run; frames in MDAnalysis's base units (A, ps, A/ps, kJ/(mol A))."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("Cu", cubic=True).repeat((4, 4, 4))  # 256 atoms
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    rng = np.random.default_rng(4)
    atoms.set_velocities(rng.standard_normal((len(atoms), 3)) * 0.01)
    dt = 2 * units.fs
    dyn = VelocityVerlet(atoms, timestep=dt)
    ps = 1000 * units.fs
    kj_mol = units.kJ / units.mol
    frames = []
    for i in range(n_steps // every):
        frames.append(
            {
                "step": i * every,
                "time": i * every * dt / ps,
                "positions": atoms.get_positions(),
                "velocities": atoms.get_velocities() * ps,
                "forces": atoms.get_forces() / kj_mol,
                "cell": np.asarray(atoms.cell[:]),
                "potential_energy": atoms.get_potential_energy() / kj_mol,
            }
        )
        dyn.run(every)
    return atoms, frames


def test_ase_md_run_opens_in_mdanalysis(tmp_path: Path) -> None:
    mda = pytest.importorskip("MDAnalysis")
    pytest.importorskip("ase")
    import ase.io

    atoms, frames = _ase_md(n_steps=40, every=2)  # 20 frames
    path = tmp_path / "run.h5md"
    store = HDF5Store(path, layout="h5md", h5md=MAPPING, units=MDA_UNITS)
    with snapsink.SyncSink(store) as sink:  # the writer process
        for fr in frames:
            fields = {k: v for k, v in fr.items() if k not in ("step", "time")}
            sink.write(fields, step=fr["step"], time=fr["time"])
    topology = tmp_path / "cu.pdb"
    ase.io.write(topology, atoms)
    u = mda.Universe(str(topology), str(path))  # its H5MD reader, units converted
    assert u.trajectory.format == "H5MD" or "H5MD" in type(u.trajectory).__name__
    assert u.trajectory.n_frames == len(frames) == 20
    assert len(u.atoms) == 256
    for ts, fr in zip(u.trajectory, frames, strict=True):
        np.testing.assert_array_equal(ts.positions, fr["positions"].astype(np.float32))
        np.testing.assert_array_equal(ts.velocities, fr["velocities"].astype(np.float32))
        np.testing.assert_array_equal(ts.forces, fr["forces"].astype(np.float32))
        assert ts.data["step"] == fr["step"]
        assert ts.time == pytest.approx(fr["time"], rel=1e-12)
        np.testing.assert_allclose(ts.dimensions, atoms.cell.new(fr["cell"]).cellpar(), rtol=1e-6)
        assert ts.data["potential_energy"] == fr["potential_energy"]
    # snapsink reads the file MDAnalysis holds open (plainly, not in SWMR mode)
    traj = snapsink.open(path)
    np.testing.assert_array_equal(traj.steps, [fr["step"] for fr in frames])
    assert traj["forces"][7].tobytes() == frames[7]["forces"].tobytes()
    # frames actually move: the run is no constant fixture
    assert not np.array_equal(frames[0]["positions"], frames[-1]["positions"])


def test_mdanalysis_h5md_file_opens_in_snapsink(tmp_path: Path) -> None:
    mda = pytest.importorskip("MDAnalysis")
    from MDAnalysis.coordinates.H5MD import H5MDWriter

    n, rng = 12, np.random.default_rng(5)
    u = mda.Universe.empty(n, trajectory=True)
    u.trajectory.units = {
        "time": "ps",
        "length": "Angstrom",
        "velocity": "Angstrom/ps",
        "force": "kJ/(mol*Angstrom)",
    }
    pos = [(rng.random((n, 3)) * 10).astype(np.float32) for _ in range(6)]
    vel = [rng.standard_normal((n, 3)).astype(np.float32) for _ in range(6)]
    frc = [rng.standard_normal((n, 3)).astype(np.float32) for _ in range(6)]
    path = tmp_path / "mda.h5md"
    with H5MDWriter(str(path), n_atoms=n, velocities=True, forces=True) as w:
        for i in range(6):
            ts = u.trajectory.ts
            ts.positions, ts.velocities, ts.forces = pos[i], vel[i], frc[i]
            ts.dimensions = [10.0, 11.0, 12.0 + i, 90.0, 90.0, 90.0]
            ts.time = 0.25 * i
            ts.data["step"] = 100 + 10 * i
            w.write(u.atoms)
    traj = snapsink.open(path)
    assert len(traj) == 6
    assert list(traj.fields) == ["position", "velocity", "force", "box"]
    np.testing.assert_array_equal(traj.steps, 100 + 10 * np.arange(6))
    np.testing.assert_array_equal(traj.times, (0.25 * np.arange(6)).astype(np.float32))
    np.testing.assert_array_equal(traj["position"][:], np.stack(pos))
    np.testing.assert_array_equal(traj["velocity"][2:4], np.stack(vel[2:4]))
    np.testing.assert_array_equal(traj["force"][5], frc[5])
    np.testing.assert_array_equal(np.diagonal(traj["box"][3]), [10.0, 11.0, 15.0])
    meta = traj.attrs["h5md"]
    assert meta["creator"]["name"] == "MDAnalysis"
    assert meta["units"]["position"] == "Angstrom"
    assert meta["units"]["time"] == "ps"
    assert traj.frame(1)["position"].tobytes() == pos[1].tobytes()
    assert traj.dropped_steps.size == 0
    with pytest.raises(snapsink.StoreNotFoundError, match="'trajectory'"):
        snapsink.open(path, group="nope")
    assert len(snapsink.open(path, group="trajectory")) == 6
    # snapsink info describes it too
    from snapsink.cli import main

    assert main(["info", str(path)]) == 0


def test_h5md_other_programs_elements_on_other_steps_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "hand.h5md"
    with h5py.File(path, "w") as f:
        f.create_group("h5md").attrs["version"] = [1, 1]
        pg = f.create_group("particles/all")
        pg.create_group("box").attrs["dimension"] = 3
        pos = pg.create_group("position")
        pos["value"] = np.arange(24.0).reshape(4, 2, 3)
        pos["step"] = np.int32(10)  # fixed sampling: step interval and offset
        pos["step"].attrs["offset"] = 5
        vel = pg.create_group("velocity")
        vel["value"] = np.zeros((2, 2, 3))
        vel["step"] = [5, 25]  # sampled elsewhere
        pg["mass"] = np.array([1.0, 2.0])  # time-independent
    traj = snapsink.open(path)
    assert list(traj.fields) == ["position"]
    np.testing.assert_array_equal(traj.steps, [5, 15, 25, 35])
    assert traj.times is None
    np.testing.assert_array_equal(traj.static["mass"], [1.0, 2.0])
    assert traj.attrs["h5md"]["left_out"] == ["/particles/all/velocity"]
    np.testing.assert_array_equal(traj["position"][3], np.arange(18.0, 24.0).reshape(2, 3))


def test_frames_without_times_have_no_time_datasets(tmp_path: Path) -> None:
    path = tmp_path / "run.h5md"
    store = HDF5Store(path, layout="h5md", h5md={"force": "f", "observables": ["e"]})
    with snapsink.SyncSink(store, writer="thread") as sink:
        for i in range(3):
            sink.write({"f": np.full((2, 3), i, np.float32), "e": np.int32(-i)}, step=2 * i)
    with h5py.File(path, "r") as f:
        for element in ("particles/all/force", "observables/e"):
            assert sorted(f[element]) == ["step", "value"]
            np.testing.assert_array_equal(f[f"{element}/step"][...], [0, 2, 4])
        np.testing.assert_array_equal(f["observables/e/value"][...], [0, -1, -2])
    traj = snapsink.open(path)
    assert traj.times is None
    np.testing.assert_array_equal(traj["f"][2], np.full((2, 3), 2, np.float32))


# -- nested field names (probe D) -------------------------------------------------------
def test_nested_fields_as_observables_and_elements(tmp_path: Path) -> None:
    """Nested fields map as flat ones: an observable is one group named as the
    field (``/observables/thermo.energy``), read back by snapsink (its group
    and its H5MD reader) and by MDAnalysis."""
    path = tmp_path / "run.h5md"
    h5md = {"position": "state.pos", "observables": ["thermo.energy", "thermo.virial"]}
    store = HDF5Store(path, layout="h5md", h5md=h5md, units={"thermo.energy": "kJ mol-1"})
    rng = np.random.default_rng(3)
    frames = [
        {
            "state": {"pos": rng.random((4, 3))},
            "thermo": {"energy": float(-i), "virial": np.full((3, 3), float(i))},
        }
        for i in range(3)
    ]
    with snapsink.SyncSink(store, writer="thread") as sink:
        for i, fr in enumerate(frames):
            sink.write(fr, step=10 * i, time=0.5 * i)
    with h5py.File(path, "r") as f:
        assert sorted(f["observables"]) == ["thermo.energy", "thermo.virial"]
        np.testing.assert_array_equal(f["observables/thermo.energy/value"][...], [0, -1, -2])
        np.testing.assert_array_equal(f["observables/thermo.energy/step"][...], [0, 10, 20])
        assert f["observables/thermo.energy/value"].attrs["unit"] == "kJ mol-1"
        np.testing.assert_array_equal(
            f["particles/all/position/value"][2], frames[2]["state"]["pos"]
        )
    traj = snapsink.open(path)  # the snapsink group
    np.testing.assert_array_equal(traj["thermo.energy"][:], [0.0, -1.0, -2.0])
    np.testing.assert_array_equal(traj["thermo.virial"][1], np.ones((3, 3)))
    from snapsink.stores._h5mdread import H5MDSource

    source = H5MDSource(path)  # the H5MD tree alone, as another program's file
    assert list(source.schema or {}) == ["position", "thermo.energy", "thermo.virial"]
    np.testing.assert_array_equal(source.read("thermo.energy", 0, 3), [0.0, -1.0, -2.0])
    np.testing.assert_array_equal(source.steps(), [0, 10, 20])
    mda = pytest.importorskip("MDAnalysis")
    reader = mda.coordinates.H5MD.H5MDReader(str(path), convert_units=False)
    try:
        for i, ts in enumerate(reader):
            assert ts.data["thermo.energy"] == -i
            np.testing.assert_array_equal(ts.data["thermo.virial"], np.full((3, 3), float(i)))
            np.testing.assert_array_equal(ts.positions, frames[i]["state"]["pos"].astype("f4"))
    finally:
        reader.close()


def test_bad_nested_names_in_the_mapping_are_refused(tmp_path: Path) -> None:
    for h5md, match in [
        ({"observables": ["thermo..energy"]}, r"h5md\['observables'\]: field name"),
        ({"observables": ["x.offsets"]}, "may not end in '.offsets'"),
        ({"position": "steps.x"}, r"h5md\['position'\]: field name 'steps.x' is reserved"),
        ({"position": "a/b"}, r"h5md\['position'\]: field name 'a/b'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            HDF5Store(tmp_path / "x.h5md", layout="h5md", h5md=h5md)
    assert list(tmp_path.iterdir()) == []


def test_h5md_observable_that_is_a_node_of_another_is_left_out(tmp_path: Path) -> None:
    """Another program's observables ``thermo`` and ``thermo.energy`` cannot
    both be fields (a node of a tree is no leaf): the first found is kept."""
    path = tmp_path / "hand.h5md"
    with h5py.File(path, "w") as f:
        f.create_group("h5md").attrs["version"] = [1, 1]
        for name, values in [("thermo", [1.0, 2.0]), ("thermo.energy", [3.0, 4.0])]:
            f[f"observables/{name}/value"] = values
            f[f"observables/{name}/step"] = [0, 1]
    traj = snapsink.open(path)
    assert list(traj.fields) == ["thermo"]
    np.testing.assert_array_equal(traj["thermo"][:], [1.0, 2.0])
    assert traj.attrs["h5md"]["left_out"] == ["/observables/thermo.energy"]
