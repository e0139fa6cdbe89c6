"""snapsink.integrations.ase: one call records an ASE dynamics object.

The reference is what ASE itself computed and stored in the same run: an
``ase.io.Trajectory`` attached to the same dynamics, read back frame by frame.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink

ase = pytest.importorskip("ase")
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.io import Trajectory  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

from snapsink.integrations import ase as ss_ase  # noqa: E402

DT_FS = 2.0
EVERY = 5
N_STEPS = 20


def make_md(repeat: int = 3) -> tuple[Any, VelocityVerlet]:
    atoms = bulk("Cu", cubic=True).repeat((repeat,) * 3)  # 108 atoms
    atoms.calc = EMT()
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.02, size=(len(atoms), 3)))
    return atoms, VelocityVerlet(atoms, timestep=DT_FS * units.fs)


def read(kind: str, rec: ss_ase.Recording, path: Path) -> snapsink.Trajectory:
    return rec.store.trajectory() if kind == "memory" else snapsink.open(path)


TARGETS = {
    "npy": ("md", lambda p: p),
    "zarr": ("md.zarr", lambda p: p),
    "memory": ("unused", lambda p: snapsink.HostMemory),
    # an HDF5 name is an HDF5 file (it was an NpyDirectory named md.h5)
    "hdf5": ("md.h5", lambda p: p),
}


@pytest.mark.parametrize("kind", list(TARGETS))
def test_bit_exact_against_ase_trajectory(kind: str, tmp_path: Path) -> None:
    if kind == "hdf5":
        pytest.importorskip("h5py")
    atoms, dyn = make_md()
    name, target = TARGETS[kind]
    path = tmp_path / name
    props = list(ss_ase.PROPERTIES)  # every property, stress included
    rec = ss_ase.attach(dyn, target(path), every=EVERY, properties=props)
    # ASE's own writer after the adapter: it stores the stress the adapter asked for
    with rec, Trajectory(tmp_path / "ref.traj", "w", atoms) as ref:
        dyn.attach(ref.write, interval=EVERY)
        dyn.run(N_STEPS)
    assert rec.closed and rec.frames == N_STEPS // EVERY + 1
    assert kind != "hdf5" or (type(rec.store) is snapsink.HDF5Store and path.is_file())

    traj = read(kind, rec, path)
    assert list(traj.fields) == props
    np.testing.assert_array_equal(traj.steps, np.arange(0, N_STEPS + 1, EVERY))
    np.testing.assert_allclose(traj.times, DT_FS * traj.steps, rtol=1e-12)
    with Trajectory(tmp_path / "ref.traj") as frames:
        assert len(frames) == len(traj) == N_STEPS // EVERY + 1
        for k, a in enumerate(frames):
            expected = {
                "positions": a.get_positions(),
                "velocities": a.get_velocities(),
                "momenta": a.get_momenta(),
                "forces": a.get_forces(),
                "potential_energy": a.get_potential_energy(),
                "kinetic_energy": a.get_kinetic_energy(),
                "temperature": a.get_temperature(),
                "stress": a.get_stress(),
                "cell": a.cell.array,
                "pbc": a.pbc,
            }
            for field, value in expected.items():
                got = traj[field][k]
                np.testing.assert_array_equal(got, value, err_msg=f"{field} at frame {k}")
                assert got.dtype == np.asarray(value).dtype, field
            np.testing.assert_array_equal(traj.static["numbers"], a.numbers)
            np.testing.assert_array_equal(traj.static["masses"], a.get_masses())
    assert traj["positions"].shape == (len(traj), len(atoms), 3)
    attrs = traj.attrs
    assert attrs["time_unit"] == "fs" and attrs["timestep_fs"] == pytest.approx(DT_FS)
    assert attrs["calculator"] == "EMT" and attrs["dynamics"] == "VelocityVerlet"
    assert attrs["units"]["forces"] == "eV/Angstrom" and attrs["units"]["masses"] == "amu"
    assert dyn.observers[-1][0] == ref.write and len(dyn.observers) == 1  # ours detached


def test_default_properties_and_a_subset(tmp_path: Path) -> None:
    atoms, dyn = make_md(2)
    seen: list[tuple[int, float, Any]] = []
    with (
        ss_ase.attach(dyn, tmp_path / "all", every=2) as full,
        ss_ase.attach(dyn, snapsink.HostMemory, every=2, properties=["potential_energy"]) as e,
    ):
        dyn.attach(
            lambda: seen.append((dyn.nsteps, atoms.get_potential_energy(), atoms.get_momenta()))
        )
        dyn.run(6)
    traj = snapsink.open(tmp_path / "all")
    assert list(traj.fields) == list(ss_ase.DEFAULT_PROPERTIES)
    assert "momenta" not in traj.fields and "stress" not in traj.fields
    sub = e.store.trajectory()
    assert list(sub.fields) == ["potential_energy"]
    assert sub.static.keys() == {"numbers", "masses"}
    due = [s for s in seen if s[0] % 2 == 0]
    np.testing.assert_array_equal(sub.steps, [s[0] for s in due])
    np.testing.assert_array_equal(sub["potential_energy"][:], [s[1] for s in due])
    masses = atoms.get_masses()[:, None]
    np.testing.assert_array_equal(traj["velocities"][:], [s[2] / masses for s in due])
    assert full.frames == e.frames == 4


@pytest.mark.parametrize("every", [1, 3, 7])
def test_every_n_steps(every: int) -> None:
    _, dyn = make_md(2)
    with ss_ase.attach(dyn, snapsink.HostMemory, every=every, properties=["positions"]) as rec:
        dyn.run(10)
    traj = rec.store.trajectory()
    np.testing.assert_array_equal(traj.steps, np.arange(0, 11, every))
    np.testing.assert_allclose(traj.times, DT_FS * traj.steps, rtol=1e-12)


def test_two_runs_record_each_step_once_in_order(tmp_path: Path) -> None:
    atoms, dyn = make_md(2)
    reference: dict[int, Any] = {}

    def observe() -> None:
        reference.setdefault(dyn.nsteps, atoms.get_positions())

    with ss_ase.attach(dyn, tmp_path / "md", every=1, properties=["positions"]) as rec:
        dyn.attach(observe)
        dyn.run(7)
        # observers called again for the step just recorded (as ASE versions that
        # call them at the start of every run() do): not stored twice
        dyn.call_observers()
        dyn.run(8)
        assert rec.last_step == 15
    traj = snapsink.open(tmp_path / "md")
    np.testing.assert_array_equal(traj.steps, np.arange(16))
    np.testing.assert_array_equal(traj["positions"][:], [reference[s] for s in range(16)])
    np.testing.assert_allclose(traj.times, DT_FS * np.arange(16), rtol=1e-12)


def test_unknown_property_names_the_valid_ones(tmp_path: Path) -> None:
    _, dyn = make_md(2)
    with pytest.raises(snapsink.ConfigError, match="positons") as info:
        ss_ase.attach(dyn, tmp_path / "md", properties=["positions", "positons"])
    for name in ss_ase.PROPERTIES:
        assert name in str(info.value)
    for bad in ("positions", [], ["forces", "forces"], 3, [["positions"]]):
        with pytest.raises(snapsink.ConfigError, match="properties"):
            ss_ase.attach(dyn, tmp_path / "md", properties=bad)
    for every in (0, -5, 2.0, True, None):
        with pytest.raises(snapsink.ConfigError, match="every"):
            ss_ase.attach(dyn, tmp_path / "md", every=every)  # type: ignore[arg-type]
    assert not (tmp_path / "md").exists() and dyn.observers == []


def test_no_calculator_is_refused_for_calculated_properties(tmp_path: Path) -> None:
    atoms, dyn = make_md(2)
    atoms.calc = None
    with pytest.raises(snapsink.ConfigError, match="no calculator") as info:
        ss_ase.attach(dyn, tmp_path / "md")
    assert "'forces'" in str(info.value) and "'potential_energy'" in str(info.value)
    assert not (tmp_path / "md").exists() and dyn.observers == []
    # what needs no calculator records without one
    with ss_ase.attach(dyn, snapsink.HostMemory, every=1, properties=["positions", "pbc"]) as r:
        dyn.call_observers()
    traj = r.store.trajectory()
    np.testing.assert_array_equal(traj["positions"][0], atoms.positions)
    np.testing.assert_array_equal(traj["pbc"][0], [True, True, True])


class NoStress(EMT):  # type: ignore[misc]
    implemented_properties = ["energy", "forces"]  # noqa: RUF012  (ASE's own form)


def test_a_property_the_calculator_cannot_give_is_refused(tmp_path: Path) -> None:
    atoms, dyn = make_md(2)
    atoms.calc = NoStress()
    with pytest.raises(snapsink.ConfigError, match=r"NoStress does not compute 'stress'"):
        ss_ase.attach(dyn, tmp_path / "md", properties=["positions", "stress"])
    assert not (tmp_path / "md").exists() and dyn.observers == []


def test_target_forms(tmp_path: Path) -> None:
    atoms, dyn = make_md(2)
    # a store built by the caller, with the adapter's static arrays and attrs
    built = snapsink.NpyDirectory(
        tmp_path / "built", **ss_ase.store_kwargs(dyn, attrs={"run": "a"})
    )
    # a store function: any store setting
    zarr = functools.partial(snapsink.ZarrStore, tmp_path / "md.zarr", group="md", mode="w")
    mine = snapsink.HostMemory()
    with snapsink.SyncSink(mine) as own:
        with (
            ss_ase.attach(dyn, built, every=2) as a,
            ss_ase.attach(dyn, zarr, every=2, attrs={"run": "b"}) as b,
            ss_ase.attach(dyn, own, every=2, properties=["positions"]) as c,
        ):
            dyn.run(4)
        assert a.store is built and c.store is None and c.sink is own
        own.flush()  # the recording left the caller's sink open
        own.write({"positions": atoms.positions}, step=5, time=10.0)
    first = snapsink.open(tmp_path / "built")
    second = snapsink.open(tmp_path / "md.zarr", group="md")
    assert first.attrs["run"] == "a" and second.attrs["run"] == "b"
    for t in (first, second):
        np.testing.assert_array_equal(t.steps, [0, 2, 4])
        np.testing.assert_array_equal(t.static["masses"], atoms.get_masses())
        np.testing.assert_array_equal(t["positions"][2], atoms.positions)
    assert b.store.__class__ is snapsink.ZarrStore and dyn.observers == []
    np.testing.assert_array_equal(mine.trajectory().steps, [0, 2, 4, 5])


def test_bad_targets_are_refused_and_nothing_is_attached(tmp_path: Path) -> None:
    _, dyn = make_md(2)
    with pytest.raises(snapsink.ConfigError, match="target: expected a path"):
        ss_ase.attach(dyn, 42)
    with pytest.raises(snapsink.ConfigError, match="returned dict"):
        ss_ase.attach(dyn, lambda **kw: dict(kw))
    with pytest.raises(snapsink.ConfigError, match="attrs"):
        ss_ase.attach(dyn, snapsink.HostMemory(), attrs={"a": 1})
    with pytest.raises(snapsink.ConfigError, match="policy"):
        ss_ase.attach(dyn, tmp_path / "md", policy="sometimes")
    with snapsink.SyncSink(snapsink.HostMemory()) as sink:
        with pytest.raises(snapsink.ConfigError, match="capacity: target is a SyncSink"):
            ss_ase.attach(dyn, sink, capacity=4)
    with pytest.raises(snapsink.ConfigError, match="ASE dynamics object"):
        ss_ase.attach(object(), tmp_path / "md")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "data.txt").write_text("mine")
    with pytest.raises(snapsink.StoreExistsError):
        ss_ase.attach(dyn, tmp_path / "taken")
    assert (tmp_path / "taken" / "data.txt").read_text() == "mine"
    assert not (tmp_path / "md").exists() and dyn.observers == []


def test_close_detaches_and_a_step_going_back_is_refused(tmp_path: Path) -> None:
    _, dyn = make_md(2)
    mem = snapsink.HostMemory()
    with snapsink.SyncSink(mem) as sink:
        rec = ss_ase.attach(dyn, sink, every=1, properties=["positions"])
        dyn.run(3)
        dyn.nsteps = 1  # a reset counter: the store refuses, the run stops
        with pytest.raises(snapsink.SchemaError, match="greater than 3"):
            dyn.run(1)
        dyn.nsteps = 4  # and the sink is still usable
        dyn.run(2)
        rec.close()
        rec.close()  # idempotent
        dyn.run(2)  # detached: not recorded
        sink.flush()
        assert rec.frames == 6 and sink.statistics().written == 6
    traj = mem.trajectory()
    np.testing.assert_array_equal(traj.steps, [0, 1, 2, 3, 5, 6])
    assert dyn.observers == [] and "closed" in repr(rec)


def test_an_optimizer_on_a_filter_records_the_atoms(tmp_path: Path) -> None:
    atoms = bulk("Cu", cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    opt = BFGS(FrechetCellFilter(atoms), logfile=os.devnull)
    with ss_ase.attach(opt, tmp_path / "relax", every=1, properties=["positions", "cell"]):
        opt.run(fmax=0.05, steps=5)
    traj = snapsink.open(tmp_path / "relax")
    assert traj.times is None  # an optimizer has no time
    np.testing.assert_array_equal(traj.steps, np.arange(opt.nsteps + 1))
    assert traj["positions"].shape == (len(traj), len(atoms), 3)
    np.testing.assert_array_equal(traj["positions"][-1], atoms.positions)
    np.testing.assert_array_equal(traj["cell"][-1], atoms.cell.array)
    assert traj.attrs["dynamics"] == "BFGS" and "timestep_fs" not in traj.attrs


class DoubledForces(EMT):  # type: ignore[misc]
    def get_forces(self, atoms: Any = None) -> Any:
        return 2.0 * super().get_forces(atoms)


@pytest.mark.parametrize("case", ["state changed", "constraint", "own getter"])
def test_forces_and_energy_are_what_the_atoms_getters_return(case: str) -> None:
    """Read once from the calculator's results, they still equal the getters' values:
    after a change of state, with constraints, with a calculator's own getters."""
    from ase.constraints import FixAtoms

    atoms, dyn = make_md(2)
    if case == "state changed":  # an observer before ours moves the atoms
        dyn.attach(lambda: atoms.positions.__iadd__(1e-3))
    elif case == "constraint":
        atoms.set_constraint(FixAtoms(indices=[0, 1]))
    else:
        atoms.calc = DoubledForces()
    seen: list[tuple[Any, Any]] = []
    with ss_ase.attach(dyn, snapsink.HostMemory, every=1) as rec:
        dyn.attach(lambda: seen.append((atoms.get_forces(), atoms.get_potential_energy())))
        dyn.run(3)
    traj = rec.store.trajectory()
    assert len(traj) == len(seen) == 4
    np.testing.assert_array_equal(traj["forces"][:], [f for f, _ in seen])
    np.testing.assert_array_equal(traj["potential_energy"][:], [e for _, e in seen])
    if case == "constraint":
        assert not traj["forces"][:, :2].any()
    if case == "own getter":
        np.testing.assert_array_equal(traj["forces"][-1], 2.0 * atoms.calc.results["forces"])


def test_a_reset_to_the_step_last_recorded_is_refused() -> None:
    atoms, dyn = make_md(2)
    start = atoms.get_positions()
    with ss_ase.attach(dyn, snapsink.HostMemory, every=10, properties=["positions"]) as rec:
        dyn.run(5)  # step 0 recorded; steps 1 to 5 taken
        dyn.nsteps = 0  # a reset: the state at "step 0" is a new one
        with pytest.raises(snapsink.SchemaError, match="greater than 0"):
            dyn.run(20)
        assert rec.frames == 1
        assert len(dyn.observers) == 2  # ours: the recording and its step counter
    assert dyn.observers == []
    traj = rec.store.trajectory()
    np.testing.assert_array_equal(traj.steps, [0])
    np.testing.assert_array_equal(traj["positions"][0], start)
