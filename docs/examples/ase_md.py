"""ASE molecular dynamics (EMT copper) recorded with ``dyn.attach``.

Run: ``python docs/examples/ase_md.py [OUT_DIR]`` (default: a temporary
directory, removed at the end; needs ``pip install ase``). Thermodynamics go to
the ``thermo`` group every step, positions, forces and the cell to ``frames``
every 10 steps, both in one Zarr store; atomic numbers and masses are static.
"""

from __future__ import annotations

import sys
import tempfile

# --8<-- [start:program]
from pathlib import Path
from typing import Any

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

import snapsink


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
    }


def main(out: Path, n_steps: int = 50) -> dict[str, Any]:
    atoms = bulk("Cu", cubic=True).repeat((4, 4, 4))  # 256 atoms
    atoms.calc = EMT()
    atoms.set_velocities(np.random.default_rng(0).normal(scale=0.02, size=(len(atoms), 3)))
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    store = out / "md.zarr"

    with snapsink.SyncRecorder(
        thermo=snapsink.Route(snapsink.ZarrStore(store, group="thermo"), fields=thermo),
        frames=snapsink.Route(
            snapsink.ZarrStore(
                store,
                group="frames",
                static={"numbers": atoms.numbers, "masses": atoms.get_masses()},
                attrs={"calculator": "EMT", "timestep_fs": 2.0},
            ),
            fields=frame,
            schedule=snapsink.every(10),
        ),
    ) as recorder:
        # ASE calls the observer before the first step and after each step.
        dyn.attach(
            lambda: recorder.record(atoms, step=dyn.nsteps, time=dyn.get_time() / units.fs),
            interval=1,
        )
        dyn.run(n_steps)

    th = snapsink.open(store, group="thermo")
    fr = snapsink.open(store, group="frames")
    total = th["potential_energy"][:] + th["kinetic_energy"][:]
    summary = {
        "thermo_frames": len(th),
        "frame_steps": fr.steps.tolist(),
        "atoms": int(fr["positions"].shape[1]),
        "energy_drift_eV": float(total.max() - total.min()),
    }
    print(summary)
    return summary
# --8<-- [end:program]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:  # a temporary directory, removed at the end: pass OUT_DIR to keep the data
        with tempfile.TemporaryDirectory(prefix="snapsink-") as tmp:
            main(Path(tmp))
