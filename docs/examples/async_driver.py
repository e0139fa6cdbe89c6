"""An async simulation driver: a Sink for one stream, a Recorder for several.

Run: ``python docs/examples/async_driver.py [OUT_DIR]`` (default: a temporary
directory, removed at the end). ``await sink.write`` returns as soon as the
frame is captured, so the loop overlaps its next step with the store's I/O;
``sink.statistics()`` reports what happened.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import snapsink


def advance(u: np.ndarray[Any, Any]) -> None:
    """One explicit step of 2-D periodic diffusion, in place."""
    lap = np.roll(u, 1, 0) + np.roll(u, -1, 0) + np.roll(u, 1, 1) + np.roll(u, -1, 1) - 4.0 * u
    u += 0.2 * lap


async def main(out: Path) -> dict[str, Any]:
    u = np.random.default_rng(0).random((64, 64))

    # One stream: a Sink over a NpyDirectory (memmap-readable .npy files).
    async with snapsink.Sink(snapsink.NpyDirectory(out / "field"), capacity=4) as sink:
        for step in range(50):
            advance(u)
            await sink.write({"u": u, "mean": float(u.mean())}, step=step, time=0.1 * step)
    stats = sink.statistics()  # after the block: drained and committed

    # Several streams on schedules: a Recorder (static grid taken from the first state).
    async with snapsink.Recorder(
        fields=snapsink.Route(
            lambda static: snapsink.ZarrStore(out / "run.zarr", group="fields", static=static),
            fields=["u"],
            static=["x"],
            schedule=snapsink.every(10),
        ),
        stats=snapsink.Route(
            snapsink.ZarrStore(out / "run.zarr", group="stats"),
            fields=lambda s: {"max": float(s["u"].max())},
        ),
    ) as recorder:
        for step in range(50, 100):
            advance(u)
            await recorder.record({"u": u, "x": np.arange(64.0)}, step=step, time=0.1 * step)

    field = snapsink.open(out / "field")
    fields = snapsink.open(out / "run.zarr", group="fields")
    summary = {
        "sink_written": stats.written,
        "sink_peak_queued": stats.peak_queued,
        "field_frames": len(field),
        "recorded_steps": fields.steps.tolist(),
        "static": sorted(fields.static),
        "max_first_last": (
            float(snapsink.open(out / "run.zarr", group="stats")["max"][0]),
            float(snapsink.open(out / "run.zarr", group="stats")["max"][-1]),
        ),
    }
    print(summary)
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1:
        anyio.run(main, Path(sys.argv[1]))
    else:  # a temporary directory, removed at the end: pass OUT_DIR to keep the data
        with tempfile.TemporaryDirectory(prefix="snapsink-") as tmp:
            anyio.run(main, Path(tmp))
