"""Kinds of simulation compute, each scaled to a chosen length per step.

- ``python``: a pure-Python loop of float arithmetic: holds the GIL throughout
  (it lets go only when another thread asks, every switch interval);
- ``numpy-small``: many small NumPy ops on 256 x 256 float64 arrays, each making
  512 KiB temporaries (a stencil or an MD force loop written in NumPy): the GIL
  is taken and released around every op, and the temporaries' cost depends on
  the allocator's state (see ``_common.MMAP_THRESHOLD``);
- ``numpy-large``: one large NumPy op per step that releases the GIL for its
  whole length: ``np.exp`` over a big float64 array (single-threaded), or with
  ``large_op="matmul"`` a float64 matmul (BLAS, threaded as the environment says);
- ``sleep``: ``time.sleep`` (no CPU, no memory traffic: the ideal case).

Each kind has one knob (``units``: iterations, ops, elements or matrix side,
seconds), and ``calibrate`` finds the units of a step of a given length.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

KINDS = ("python", "numpy-small", "numpy-large", "sleep")


class Compute:
    """One simulation step of a given kind: ``step()`` returns a float diagnostic."""

    kind = ""
    #: how the step's time grows with ``units`` (1: linear; 3: a matmul's side)
    power = 1.0
    min_units = 1.0

    def __init__(self, units: float):
        self.units = max(self.min_units, float(units))

    def step(self) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class PythonLoop(Compute):
    kind = "python"
    min_units = 100.0

    def __init__(self, units: float):
        super().__init__(units)
        self.n = int(self.units)
        self.x = 0.0

    def step(self) -> float:
        x = self.x
        for _ in range(self.n):
            x = x * 0.999999 + 0.5
        self.x = x
        return x

    def describe(self) -> str:
        return f"{self.n:,} iterations of a Python float loop"


class NumpySmall(Compute):
    kind = "numpy-small"

    def __init__(self, units: float):
        super().__init__(units)
        self.n = int(self.units)
        rng = np.random.default_rng(1)
        self.a = rng.random((256, 256))
        self.b = rng.random((256, 256))

    def step(self) -> float:
        a, b = self.a, self.b
        for _ in range(self.n):
            a = a * 0.999 + b  # two ops, two fresh 512 KiB temporaries
        self.a = a
        return float(a[0, 0])

    def describe(self) -> str:
        return f"{2 * self.n} NumPy ops on 256x256 float64 (with temporaries)"


class NumpyLarge(Compute):
    kind = "numpy-large"
    min_units = 1024.0

    def __init__(self, units: float):
        super().__init__(units)
        self.n = int(self.units)
        self.x = np.random.default_rng(2).random(self.n)
        self.y = np.empty_like(self.x)

    def step(self) -> float:
        np.exp(self.x, out=self.y)  # one op; releases the GIL for its whole length
        return float(self.y[0])

    def describe(self) -> str:
        return f"np.exp over {self.n:,} float64 (one op, out=)"


class NumpyMatmul(Compute):
    kind = "numpy-large"
    power = 3.0
    min_units = 16.0

    def __init__(self, units: float):
        super().__init__(units)
        self.n = round(self.units)
        rng = np.random.default_rng(2)
        self.a = rng.random((self.n, self.n)) / self.n
        self.c = np.empty_like(self.a)

    def step(self) -> float:
        np.matmul(self.a, self.a, out=self.c)  # BLAS; releases the GIL
        return float(self.c[0, 0])

    def describe(self) -> str:
        return f"np.matmul of {self.n}x{self.n} float64 (BLAS)"


class Sleep(Compute):
    kind = "sleep"
    min_units = 1e-5

    def step(self) -> float:
        time.sleep(self.units)
        return self.units

    def describe(self) -> str:
        return f"time.sleep({self.units * 1e3:.2f} ms)"


#: a first guess of units per second of step, refined by ``calibrate``
_GUESS = {"python": 2e7, "numpy-small": 5e4, "numpy-large": 3e8, "sleep": 1.0}


def kind_class(kind: str, large_op: str = "exp") -> type[Compute]:
    """The class of a ``kind`` step (``large_op``: ``exp`` or ``matmul`` for numpy-large)."""
    if kind == "numpy-large" and large_op == "matmul":
        return NumpyMatmul
    classes: dict[str, type[Compute]] = {
        "python": PythonLoop,
        "numpy-small": NumpySmall,
        "numpy-large": NumpyLarge,
        "sleep": Sleep,
    }
    if kind not in classes:
        raise ValueError(f"unknown compute kind {kind!r}; expected one of {', '.join(KINDS)}")
    return classes[kind]


def make(kind: str, units: float, large_op: str = "exp") -> Compute:
    """A compute step of ``kind`` with ``units``."""
    return kind_class(kind, large_op)(units)


def time_steps(c: Compute, n: int = 9) -> float:
    """Seconds of one step: the least of ``n`` (interference only slows a step down)."""
    for _ in range(2):
        c.step()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.step()
        samples.append(time.perf_counter() - t0)
    return min(samples)


def calibrate(kind: str, seconds: float, large_op: str = "exp") -> tuple[float, float]:
    """Units of a ``kind`` step that takes about ``seconds``, and the measured step time.

    Three rounds of measure-and-rescale from a first guess (a step's time is
    close to linear in its units, or to their cube for a matmul).
    """
    if kind == "sleep":
        return seconds, time_steps(Sleep(seconds), 3)
    if kind == "numpy-large" and large_op == "matmul":
        units = (seconds * 5e9) ** (1 / 3)
    else:
        units = seconds * _GUESS[kind]
    cls = kind_class(kind, large_op)
    measured = seconds
    for _ in range(3):
        c = make(kind, units, large_op)
        measured = time_steps(c)
        scale = (seconds / max(measured, 1e-9)) ** (1 / cls.power)
        units = max(cls.min_units, units * min(max(scale, 0.05), 20.0))
    c = make(kind, units, large_op)
    return units, time_steps(c)


def units_info(c: Compute) -> dict[str, Any]:
    return {"kind": c.kind, "units": c.units, "what": c.describe()}
