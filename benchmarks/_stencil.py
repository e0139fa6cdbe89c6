"""The stencil simulation and its snapshot loops, used by baselines.py.

A 5-point Jacobi stencil on a 2048 x 2048 float32 grid (its NumPy ufuncs release
the GIL) writes a snapshot (the 16 MiB grid and a float64 diagnostic) every
``k`` steps, through ``Sink`` or ``SyncSink``. (overlap.py used it before it
measured four kinds of compute; baselines.py still compares writers on it.)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np

import snapsink

GRID = 2048


# -- the simulation -------------------------------------------------------------------
class Stencil:
    """Jacobi relaxation (5-point) of a float32 grid with a fixed source term.

    Each step is five NumPy ufunc calls on ~4 M elements, which release the GIL:
    a writer thread can run on the other core while the simulation computes.
    """

    label = "numpy stencil"

    def __init__(self, n: int = GRID):
        rng = np.random.default_rng(0)
        self.u = rng.random((n, n), dtype=np.float32)
        self.v = self.u.copy()
        self.source = (rng.random((n - 2, n - 2), dtype=np.float32) - 0.5) * np.float32(0.01)

    def step(self) -> None:
        u, v = self.u, self.v
        inner = v[1:-1, 1:-1]
        np.add(u[:-2, 1:-1], u[2:, 1:-1], out=inner)
        inner += u[1:-1, :-2]
        inner += u[1:-1, 2:]
        inner *= np.float32(0.25)
        inner += self.source
        self.u, self.v = v, u

    def frame(self) -> dict[str, Any]:
        # A diagnostic, as simulations log one with each snapshot (a host reduction).
        # A 1-element array, not a scalar: a spilled 0-d field comes back with
        # shape (1,) (np.ascontiguousarray in _spill.py), which NpyDirectory rejects.
        return {"u": self.u, "residual": np.array([np.abs(self.u[::64, ::64]).mean()])}


def time_step(kernel: Stencil, n: int = 20) -> float:
    """Median seconds of one ``kernel.step()``."""
    for _ in range(3):
        kernel.step()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        kernel.step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# -- the loops ---------------------------------------------------------------------------
@dataclass
class LoopResult:
    t_total: float
    step_times: list[float]
    stats: snapsink.SinkStatistics | None = None
    t_write: float = 0.0  # inside write() calls (capture, waiting for room)
    t_close: float = 0.0  # after the last write: draining, final commit, close
    writer: str = ""  # the sink's writer: "process" or "thread"


def loop_sync(
    kernel: Stencil, store: Any, policy: Any, frames: int, every: int, capacity: int
) -> LoopResult:
    steps: list[float] = []
    t_write = 0.0
    t0 = time.perf_counter()
    with snapsink.SyncSink(store, capacity=capacity, policy=policy) as sink:
        for i in range(frames):
            for _ in range(every):
                s0 = time.perf_counter()
                kernel.step()
                steps.append(time.perf_counter() - s0)
            step = (i + 1) * every
            fields = kernel.frame()
            w0 = time.perf_counter()
            sink.write(fields, step=step, time=step * 0.01)
            t_last = time.perf_counter()
            t_write += t_last - w0
    t_end = time.perf_counter()
    return LoopResult(
        t_end - t0, steps, sink.statistics(), t_write, t_end - t_last, sink.writer
    )


def loop_async(
    kernel: Stencil, store: Any, policy: Any, frames: int, every: int, capacity: int
) -> LoopResult:
    async def body() -> LoopResult:
        steps: list[float] = []
        t_write = 0.0
        t0 = t_last = time.perf_counter()
        async with snapsink.Sink(store, capacity=capacity, policy=policy) as sink:
            for i in range(frames):
                for _ in range(every):
                    s0 = time.perf_counter()
                    kernel.step()
                    steps.append(time.perf_counter() - s0)
                step = (i + 1) * every
                fields = kernel.frame()
                w0 = time.perf_counter()
                await sink.write(fields, step=step, time=step * 0.01)
                t_last = time.perf_counter()
                t_write += t_last - w0
        t_end = time.perf_counter()
        return LoopResult(
            t_end - t0, steps, sink.statistics(), t_write, t_end - t_last, sink.writer
        )

    out: LoopResult = anyio.run(body)
    return out


LOOPS = {"async": loop_async, "sync": loop_sync}
