"""py-pde: a diffusion PDE recorded through a CallbackTracker.

The reference is py-pde's own ``MemoryStorage``, fed by its tracker at the same
interrupts: every stored field snapshot and time must read back equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink

pde = pytest.importorskip("pde")

INTERVAL = 0.1


def test_diffusion_snapshots_equal_py_pde_storage(tmp_path: Path) -> None:
    grid = pde.CartesianGrid([[0.0, 1.0], [0.0, 2.0]], [24, 32], periodic=True)
    state = pde.ScalarField.random_uniform(grid, rng=np.random.default_rng(1))
    eq = pde.DiffusionPDE(diffusivity=0.01)
    storage = pde.MemoryStorage()
    path = tmp_path / "diffusion"

    def coords(field: Any) -> dict[str, Any]:
        x, y = field.grid.axes_coords
        return {"x": x, "y": y}

    with snapsink.SyncRecorder(
        field=snapsink.Route(
            lambda static: snapsink.NpyDirectory(path, static=static, attrs={"pde": "diffusion"}),
            fields=lambda f: {"c": f.data},
            static=coords,  # the grid, from the first state
        ),
        stats=snapsink.Route(
            snapsink.HostMemory(),
            fields=lambda f: {"mean": f.average, "max": float(f.data.max())},
            schedule=snapsink.every(2),
        ),
    ) as recorder:

        def record(field: Any, t: float) -> None:
            recorder.record(field, time=t)  # steps 0, 1, 2, ... per interrupt

        eq.solve(
            state,
            t_range=1.0,
            dt=0.01,
            backend="numpy",  # no numba compilation: keeps the test fast
            tracker=[storage.tracker(INTERVAL), pde.CallbackTracker(record, interrupts=INTERVAL)],
        )
        stats = recorder.store("stats")

    traj = snapsink.open(path)
    assert len(storage) == 11
    assert len(traj) == len(storage)
    np.testing.assert_array_equal(traj.times, storage.times)
    np.testing.assert_array_equal(traj["c"][:], np.stack(storage.data))
    np.testing.assert_array_equal(traj.static["x"], grid.axes_coords[0])
    np.testing.assert_array_equal(traj.static["y"], grid.axes_coords[1])
    assert traj.attrs == {"pde": "diffusion"}
    # diffusion smooths the field: the last snapshot differs from the first
    assert not np.array_equal(traj["c"][0], traj["c"][-1])

    s = stats.trajectory()
    np.testing.assert_array_equal(s.steps, np.arange(0, 11, 2))
    np.testing.assert_array_equal(s["max"][:], [storage.data[k].max() for k in range(0, 11, 2)])
    np.testing.assert_allclose(s["mean"][:], [storage.data[k].mean() for k in range(0, 11, 2)])
