"""A py-pde diffusion run recorded through snapsink's py-pde tracker.

Run: ``python docs/examples/pde_diffusion.py [OUT_DIR]`` (default: a temporary
directory, removed at the end; needs ``pip install py-pde``). The field goes to
a NpyDirectory at every tracker interrupt, at py-pde's time and the solver's
step count; the grid is stored with it (its description as attrs, the cell
coordinates as static arrays).
"""

from __future__ import annotations

import sys
import tempfile

# --8<-- [start:program]
from pathlib import Path
from typing import Any

import numpy as np
import pde

import snapsink
from snapsink.integrations.pde import SnapsinkTracker


def main(out: Path) -> dict[str, Any]:
    grid = pde.CartesianGrid([[0.0, 1.0], [0.0, 1.0]], [32, 32], periodic=True)
    state = pde.ScalarField.random_uniform(grid, label="c", rng=np.random.default_rng(0))
    eq = pde.DiffusionPDE(diffusivity=0.01)

    # `with`: should the simulation raise, the frames so far are still committed
    with SnapsinkTracker(snapsink.NpyDirectory(out / "diffusion"), interrupts=0.1) as tracker:
        eq.solve(state, t_range=1.0, dt=0.01, backend="numpy", tracker=tracker)

    traj = snapsink.open(out / "diffusion")
    summary = {
        "frames": len(traj),
        "steps": traj.steps.tolist(),  # the solver's step count: 0, 10, ..., 100
        "times": [round(t, 6) for t in traj.times.tolist()],
        "std_first_last": (float(traj["c"][0].std()), float(traj["c"][-1].std())),
        "grid": traj.attrs["grid"]["class"],
        "static": sorted(traj.static),
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
