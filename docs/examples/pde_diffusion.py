"""A py-pde diffusion run recorded through a ``CallbackTracker``.

Run: ``python docs/examples/pde_diffusion.py [OUT_DIR]`` (needs
``pip install py-pde``). The field goes to a NpyDirectory at every tracker
interrupt; the grid's coordinates are static, taken from the first state.
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


def main(out: Path) -> dict[str, Any]:
    grid = pde.CartesianGrid([[0.0, 1.0], [0.0, 1.0]], [32, 32], periodic=True)
    state = pde.ScalarField.random_uniform(grid, rng=np.random.default_rng(0))
    eq = pde.DiffusionPDE(diffusivity=0.01)

    def coords(field: Any) -> dict[str, Any]:
        x, y = field.grid.axes_coords
        return {"x": x, "y": y}

    with snapsink.SyncRecorder(
        field=snapsink.Route(
            lambda static: snapsink.NpyDirectory(out / "diffusion", static=static),
            fields=lambda f: {"c": f.data},
            static=coords,
        ),
    ) as recorder:
        eq.solve(
            state,
            t_range=1.0,
            dt=0.01,
            backend="numpy",
            tracker=pde.CallbackTracker(lambda f, t: recorder.record(f, time=t), interrupts=0.1),
        )

    traj = snapsink.open(out / "diffusion")
    summary = {
        "frames": len(traj),
        "times": [round(t, 6) for t in traj.times.tolist()],
        "std_first_last": (float(traj["c"][0].std()), float(traj["c"][-1].std())),
        "static": sorted(traj.static),
    }
    print(summary)
    return summary
# --8<-- [end:program]


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="snapsink-")))
