"""A PyTorch MD loop as an async driver (CPU tensors; CUDA tensors work the same).

Run: ``python docs/examples/torch_loop.py [OUT_DIR]`` (default: a temporary
directory, removed at the end; needs ``pip install torch``). Tensors are
updated in place right after ``record`` returns: the stored frames hold the
values at the call. With CUDA tensors (and ``snapsink[gpu]``) the sink copies
them on its own CUDA stream, ordered after the producing kernels.
"""

from __future__ import annotations

import sys
import tempfile

# --8<-- [start:program]
from pathlib import Path
from typing import Any

import anyio
import torch

import snapsink


async def main(out: Path, device: str = "cpu") -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 3, generator=gen).to(device)
    x = x0 + 0.1 * torch.randn(512, 3, generator=gen).to(device)
    v = torch.zeros_like(x)
    dt, k = 0.05, 4.0
    forces = -k * (x - x0)

    store = out / "torch.zarr"
    async with snapsink.Recorder(
        thermo=snapsink.Route(
            snapsink.ZarrStore(store, group="thermo"), fields=["potential", "kinetic"]
        ),
        frames=snapsink.Route(
            snapsink.ZarrStore(store, group="frames"),
            fields=["positions", "velocities"],
            schedule=snapsink.every(20),
        ),
    ) as recorder:
        for step in range(100):
            state = {
                "positions": x,
                "velocities": v,
                "potential": 0.5 * k * ((x - x0) ** 2).sum(),
                "kinetic": 0.5 * (v * v).sum(),
            }
            await recorder.record(state, step=step, time=step * dt)
            v.add_(forces, alpha=0.5 * dt)  # velocity Verlet, in place
            x.add_(v, alpha=dt)
            forces = -k * (x - x0)
            v.add_(forces, alpha=0.5 * dt)

    th = snapsink.open(store, group="thermo")
    fr = snapsink.open(store, group="frames")
    total = th["potential"][:] + th["kinetic"][:]
    summary = {
        "thermo_frames": len(th),
        "frame_steps": fr.steps.tolist(),
        "relative_energy_drift": float((total.max() - total.min()) / total.mean()),
    }
    print(summary)
    return summary
# --8<-- [end:program]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]), "cuda" if torch.cuda.is_available() else "cpu")
    else:  # a temporary directory, removed at the end: pass OUT_DIR to keep the data
        with tempfile.TemporaryDirectory(prefix="snapsink-") as tmp:
            anyio.run(main, Path(tmp), "cuda" if torch.cuda.is_available() else "cpu")
