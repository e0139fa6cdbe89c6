"""Many ranks, one Zarr trajectory, over a ``torch.distributed`` gloo group:
the same driver as the MPI tests, started by ``torch.multiprocessing.spawn``.
Skipped without torch."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

import snapsink

torch_mp = pytest.importorskip("torch.multiprocessing")
pytest.importorskip("torch.distributed")

from _driver import check_trajectory, run_torch  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(n: int, *argv: str) -> None:
    torch_mp.spawn(run_torch, args=(n, _free_port(), list(argv)), nprocs=n, join=True)


def test_gloo_group_writes_reads_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    spawn(2, str(path), "--steps", "6", "--commit-every", "4")
    traj = check_trajectory(path, 2, frames=6)
    assert traj.closed
    spawn(2, str(path), "--mode", "a", "--start", "6", "--steps", "3")
    check_trajectory(path, 2, frames=9)
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(path, consolidated=False)
    assert np.array_equal(ds["rho"].values, snapsink.open(path)["rho"][:])


def test_gloo_resume_on_another_rank_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    spawn(4, str(path), "--steps", "3")
    check_trajectory(path, 4, frames=3)
    with pytest.raises(Exception, match="written by 4 ranks"):
        spawn(2, str(path), "--mode", "a", "--start", "3")
    check_trajectory(path, 4, frames=3)
