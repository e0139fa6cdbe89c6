"""Read-back checks shared by the reliability tests (not collected by pytest)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from _writer import big_for, frame_for, step_of, time_of

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
        rs = traj["r"][:] if "r" in traj.fields else None  # (zarr-inplace: no r)
        es = traj["e"][:]
        bigs = traj["big"][:] if "big" in traj.fields else None  # (zarr-zstd only)
        for i, w in enumerate(want):
            if bigs is not None:
                assert_bits(bigs[i], big_for(steps[i]), f"big of frame {i}")
            assert_bits(xs[i], w["x"], f"x of frame {i}")
            if rs is not None:
                assert_bits(rs[i], w["r"], f"r of frame {i}")
            assert_bits(es[i], np.float64(w["e"]), f"e of frame {i}")
    return n


def assert_h5md_prefix(path: str | os.PathLike[str], n: int) -> None:
    """The H5MD elements of a file written with ``layout="h5md"`` (mapping
    ``_writer.H5MD``) hold frames ``0..n-1`` bit-exact, read with plain h5py.

    Past ``n`` a plain H5MD reader may see more rows (a dataset is extended
    before the commit record names its rows; ``mode="a"`` or a clean close trims
    it): only the committed rows are checked, and they must be the run's."""
    import h5py

    steps = [step_of(i) for i in range(n)]
    want = [frame_for(s) for s in steps]
    # h5py's default locking and SWMR read mode, as snapsink's reader: a killed
    # writer's file is still marked open for writing (docs/formats/hdf5.md)
    with h5py.File(path, "r", swmr=True) as f:
        assert f["h5md"].attrs["version"].tolist() == [1, 1]
        pos = f["particles/all/position"]
        assert pos["value"].shape[0] >= n and pos["step"].shape[0] >= n
        assert pos["step"][:n].tolist() == steps
        np.testing.assert_array_equal(pos["time"][:n], [time_of(s) for s in steps])
        xs = pos["value"][:n]
        es = f["observables/e/value"][:n]
        for i, w in enumerate(want):
            assert_bits(xs[i], w["x"], f"H5MD position of frame {i}")
            assert_bits(es[i], np.float64(w["e"]), f"H5MD observable e of frame {i}")


def assert_bits(got: Any, want: Any, what: str) -> None:
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
    assert got.tobytes() == want.tobytes(), f"{what}: bits differ"
