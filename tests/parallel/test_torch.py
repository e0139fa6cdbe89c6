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

from _driver import (  # noqa: E402
    check_trajectory,
    run_torch,
    run_torch_free,
    run_torch_groups,
    run_torch_timeout,
)


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


def test_gloo_sub_groups_each_write_their_own_store(tmp_path: Path) -> None:
    """Two sub-groups of four processes, a store on each: the store made its
    group with new_group, which only the group's members called, so the two
    groups' rendezvous collided (a hang, a connection reset, or ranks of both
    groups in one store; found by a probe)."""
    torch_mp.spawn(run_torch_groups, args=(4, _free_port(), str(tmp_path)), nprocs=4, join=True)
    for sub in (0, 1):
        traj = snapsink.open(tmp_path / f"sub{sub}.zarr")
        assert traj.closed
        want = [np.repeat(10.0 * step + np.array([2 * sub, 2 * sub + 1]), 4) for step in range(3)]
        np.testing.assert_array_equal(traj["u"][:], np.array(want, np.float32))


def test_gloo_store_gives_up_after_the_group_timeout(tmp_path: Path) -> None:
    """The store's collectives take the user's group's timeout (3 s): rank 0
    used to wait for its stalled peer as long as the stall lasted (torch's
    default: 30 minutes)."""
    out = tmp_path / "flush"
    torch_mp.spawn(run_torch_timeout, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    result, seconds = (tmp_path / "flush.0").read_text().split()
    assert result != "ok"
    assert float(seconds) < 7.0  # the stall lasts 8 s
    assert (tmp_path / "flush.1").read_text().split()[0] != "ok"


def test_gloo_store_frees_its_group_closed_or_refused(tmp_path: Path) -> None:
    """Each store's gloo group (its connections) is freed when the store closes
    or, refused by its sink, is dropped: 16 stores used to leave 80 files open."""
    out = tmp_path / "fds"
    torch_mp.spawn(run_torch_free, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    for rank in (0, 1):
        before, after = map(int, (tmp_path / f"fds.{rank}").read_text().split())
        assert after - before < 4, (before, after)


def test_non_group_member_is_not_a_communicator(tmp_path: Path) -> None:
    import torch.distributed as dist

    with pytest.raises(snapsink.ConfigError, match="this process is not a member of the group"):
        snapsink.ZarrStore(tmp_path / "run.zarr", comm=dist.GroupMember.NON_GROUP_MEMBER)
