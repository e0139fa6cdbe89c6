"""Read-back checks shared by the reliability tests (not collected by pytest)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _writer import frame_for, step_of, time_of

import snapsink


def assert_prefix(path: str | os.PathLike[str], at_least: int = 0) -> int:
    """Open the store at ``path`` and check that it holds frames ``0..n-1`` of the
    deterministic run, bit-exact, in order, with ``n >= at_least``; return ``n``.

    Any visible frame must be whole: a torn frame or a frame out of order fails.
    """
    traj = snapsink.open(path)
    n = len(traj)
    assert n >= at_least, f"{path}: {n} frames visible, {at_least} were flushed"
    steps = [step_of(i) for i in range(n)]
    assert traj.steps.tolist() == steps
    if n:
        assert traj.times is not None
        np.testing.assert_array_equal(traj.times, [time_of(s) for s in steps])
        want = [frame_for(s) for s in steps]
        xs = traj["x"][:]
        rs = traj["r"][:]
        es = traj["e"][:]
        for i, w in enumerate(want):
            assert_bits(xs[i], w["x"], f"x of frame {i}")
            assert_bits(rs[i], w["r"], f"r of frame {i}")
            assert_bits(es[i], np.float64(w["e"]), f"e of frame {i}")
    return n


def assert_bits(got: Any, want: Any, what: str) -> None:
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
    assert got.tobytes() == want.tobytes(), f"{what}: bits differ"
