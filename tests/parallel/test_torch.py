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


def test_gloo_rank_killed_leaves_committed_frames_and_resume(tmp_path: Path) -> None:
    """A rank SIGKILLed mid-run, then the rest of the job taken down (as torchrun's
    agent or a batch scheduler does): only globally committed frames are visible,
    each bit-exact, and mode="a" resumes on the same ranks."""
    import os
    import signal
    import time

    path = tmp_path / "run.zarr"
    prog = tmp_path / "progress"
    argv = [str(path), "--steps", "2000", "--sleep", "0.01", "--flush-every", "4",
            "--commit-every", "3", "--progress", str(prog)]  # fmt: skip
    ctx = torch_mp.spawn(run_torch, args=(2, _free_port(), argv), nprocs=2, join=False)
    try:
        deadline = time.monotonic() + 90
        while True:  # rank 1 has flushed a few times
            try:
                step, pid = (tmp_path / "progress.1").read_text().split()
            except (FileNotFoundError, ValueError):
                step, pid = "-1", "0"
            if int(step) >= 15:
                break
            assert all(p.is_alive() for p in ctx.processes), "a rank died early"
            assert time.monotonic() < deadline, "the ranks never flushed"
            time.sleep(0.02)
        flushed = int(step) + 1
        os.kill(int(pid), signal.SIGKILL)
    finally:
        for p in ctx.processes:  # the job goes down with its rank
            if p.is_alive():
                p.kill()
            p.join(30)
    traj = check_trajectory(path, 2)  # every committed frame bit-exact
    n = len(traj)
    assert flushed <= n < 2000
    assert not traj.closed
    spawn(2, str(path), "--mode", "a", "--start", str(n), "--steps", "4")
    check_trajectory(path, 2, frames=n + 4)
