"""The demo's simulation: a 2-D scalar wave field (leapfrog) and particles
drifting down its gradient, on NumPy or CuPy (``xp``). Its own module: the
demo times it three ways, and tests and benchmarks step it alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WaveSim"]


@dataclass
class WaveSim:
    """2-D scalar wave equation (leapfrog) plus particles advected by the field."""

    n: int = 256
    particles: int = 1024
    c: float = 0.35
    damping: float = 1e-4
    xp: Any = np

    def __post_init__(self) -> None:
        xp = self.xp
        y, x = xp.meshgrid(xp.arange(self.n), xp.arange(self.n), indexing="ij")
        r2 = ((x - self.n / 3) ** 2 + (y - self.n / 2) ** 2) / (self.n / 16) ** 2
        self.u = xp.exp(-r2).astype(xp.float32)
        self.u_prev = self.u.copy()
        rng = np.random.default_rng(0)
        self.pos = xp.asarray(
            rng.uniform(0, self.n - 1, size=(self.particles, 2)).astype(np.float32)
        )
        self.vel = xp.zeros_like(self.pos)

    def step(self) -> None:
        xp = self.xp
        u = self.u
        lap = xp.roll(u, 1, 0) + xp.roll(u, -1, 0) + xp.roll(u, 1, 1) + xp.roll(u, -1, 1) - 4 * u
        u_next = (2 - self.damping) * u - (1 - self.damping) * self.u_prev + self.c**2 * lap
        self.u_prev, self.u = u, u_next.astype(xp.float32)
        gy, gx = xp.gradient(self.u)
        iy = xp.clip(self.pos[:, 0].astype(xp.int32), 0, self.n - 1)
        ix = xp.clip(self.pos[:, 1].astype(xp.int32), 0, self.n - 1)
        force = -xp.stack([gy[iy, ix], gx[iy, ix]], axis=1) * 50.0
        self.vel = (0.98 * self.vel + force).astype(xp.float32)
        self.pos = xp.mod(self.pos + self.vel, self.n - 1).astype(xp.float32)

    def energy(self) -> float:
        xp = self.xp
        du = self.u - self.u_prev
        return float(0.5 * xp.sum(du * du) + 0.5 * self.c**2 * xp.sum(xp.gradient(self.u)[0] ** 2))

    def advance(self, steps: int) -> float:
        """``steps`` steps, then the energy: a host sync on the GPU, as in real MD codes."""
        for _ in range(steps):
            self.step()
        return self.energy()
