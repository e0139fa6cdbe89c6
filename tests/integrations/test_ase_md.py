"""ASE molecular dynamics (EMT, 256 Cu atoms) recorded through a SyncRecorder.

The reference is what ASE itself computed and stored: an ``ase.io.Trajectory``
written by the same dynamics, and the energies an ordinary observer collected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink

ase = pytest.importorskip("ase")
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.io import Trajectory  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

N_STEPS = 30
EVERY = 5
DT_FS = 2.0


def make_md() -> tuple[Any, VelocityVerlet]:
    atoms = bulk("Cu", cubic=True).repeat((4, 4, 4))  # 256 atoms
    atoms.calc = EMT()
    # Velocities set directly: the Maxwell-Boltzmann helpers changed names across
    # ASE releases (and the old one warns), and the test needs no thermostat.
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.02, size=(len(atoms), 3)))
    return atoms, VelocityVerlet(atoms, timestep=DT_FS * units.fs)


def thermo(atoms: Any) -> dict[str, Any]:
    return {
        "potential_energy": atoms.get_potential_energy(),
        "kinetic_energy": atoms.get_kinetic_energy(),
        "temperature": atoms.get_temperature(),
    }


def frame(atoms: Any) -> dict[str, Any]:
    return {
        "positions": atoms.get_positions(),
        "forces": atoms.get_forces(),
        "cell": atoms.cell.array,
        "energy": atoms.get_potential_energy(),
    }


def test_ase_md_round_trip(tmp_path: Path) -> None:
    atoms, dyn = make_md()
    store = tmp_path / "md.zarr"
    ref_traj = tmp_path / "ref.traj"
    reference: list[dict[str, Any]] = []

    recorder = snapsink.SyncRecorder(
        thermo=snapsink.Route(snapsink.ZarrStore(store, group="thermo"), fields=thermo),
        frames=snapsink.Route(
            snapsink.ZarrStore(
                store,
                group="frames",
                static={"numbers": atoms.numbers, "masses": atoms.get_masses()},
                attrs={"calculator": "EMT", "timestep_fs": DT_FS},
            ),
            fields=frame,
            schedule=snapsink.every(EVERY),
        ),
    )

    def record() -> None:
        recorder.record(atoms, step=dyn.nsteps, time=dyn.get_time() / units.fs)

    def observe() -> None:
        reference.append({"step": dyn.nsteps, **thermo(atoms)})

    with recorder, Trajectory(ref_traj, "w", atoms) as ref:
        dyn.attach(record, interval=1)
        dyn.attach(observe, interval=1)
        dyn.attach(ref.write, interval=EVERY)
        dyn.run(N_STEPS)

    th = snapsink.open(store, group="thermo")
    np.testing.assert_array_equal(th.steps, [r["step"] for r in reference])
    np.testing.assert_array_equal(th.steps, np.arange(N_STEPS + 1))
    np.testing.assert_allclose(th.times, DT_FS * np.arange(N_STEPS + 1), rtol=1e-12)
    for name in ("potential_energy", "kinetic_energy", "temperature"):
        np.testing.assert_array_equal(th[name][:], [r[name] for r in reference], err_msg=name)

    fr = snapsink.open(store, group="frames")
    np.testing.assert_array_equal(fr.steps, np.arange(0, N_STEPS + 1, EVERY))
    np.testing.assert_array_equal(fr.static["numbers"], atoms.numbers)
    np.testing.assert_array_equal(fr.static["masses"], atoms.get_masses())
    assert fr.attrs["calculator"] == "EMT"
    with Trajectory(ref_traj) as ase_frames:
        assert len(ase_frames) == len(fr)
        for k, a in enumerate(ase_frames):
            np.testing.assert_array_equal(fr["positions"][k], a.get_positions())
            np.testing.assert_array_equal(fr["forces"][k], a.get_forces())
            np.testing.assert_array_equal(fr["cell"][k], a.cell.array)
            assert fr["energy"][k] == a.get_potential_energy()
    assert fr["positions"].shape == (len(fr), 256, 3)
    assert fr["positions"].dtype == np.float64
