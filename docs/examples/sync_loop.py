"""An ordinary ``for`` loop recorded with the sync facade.

Run: ``python docs/examples/sync_loop.py [OUT_DIR]`` (default: a temporary
directory, removed at the end). A toy particle system relaxes; ``thermo`` gets
every step, ``frames`` every 25th, ``relaxed`` the first step whose largest
force is small. Everything is read back at the end.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import snapsink


def main(out: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    anchor = np.zeros((100, 3))

    def relaxed(state: dict[str, Any]) -> bool:
        return bool(np.abs(state["forces"]).max() < 0.5)

    store = out / "run.zarr"
    final = snapsink.HostMemory()
    with snapsink.SyncRecorder(
        thermo=snapsink.Route(snapsink.ZarrStore(store, group="thermo"), fields=["energy"]),
        frames=snapsink.Route(
            snapsink.ZarrStore(store, group="frames"),
            fields=["positions", "forces"],
            schedule=snapsink.every(25),
        ),
        relaxed=snapsink.Route(
            final, fields=["positions"], schedule=snapsink.when(relaxed) & snapsink.once()
        ),
    ) as recorder:
        for step in range(200):
            forces = anchor - x
            energy = 0.5 * float((forces**2).sum())
            recorder.record(
                {"positions": x, "forces": forces, "energy": energy}, step=step, time=0.01 * step
            )
            x += 0.02 * forces  # in place: safe, the frame was captured

    thermo = snapsink.open(store, group="thermo")
    frames = snapsink.open(store, group="frames")
    summary = {
        "thermo_frames": len(thermo),
        "frames": len(frames),
        "frame_steps": frames.steps.tolist(),
        "relaxed_at": final.trajectory().steps.tolist(),
        "energy_first_last": (float(thermo["energy"][0]), float(thermo["energy"][-1])),
    }
    print(summary)
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:  # a temporary directory, removed at the end: pass OUT_DIR to keep the data
        with tempfile.TemporaryDirectory(prefix="snapsink-") as tmp:
            main(Path(tmp))
