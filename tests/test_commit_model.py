"""The commit-protocol model (benchmarks/commit_model.py) keeps its invariants.

The model backs the numbers of docs/guides/scaling.md; these checks fail when
its recurrences or its request arithmetic break.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "commit_model.py"
_spec = importlib.util.spec_from_file_location("commit_model", _PATH)
assert _spec is not None and _spec.loader is not None
cm = importlib.util.module_from_spec(_spec)
sys.modules["commit_model"] = cm  # dataclasses look their module up
_spec.loader.exec_module(cm)

MIB = 1 << 20

#: a noisy cluster: jitter, hiccups, a collective that grows with the ranks
NOISY = cm.Params(
    frame_bytes=MIB, compute_s=0.01, jitter_sigma=0.1, hiccup_p=0.01, hiccup_s=0.05,
    capacity=4, commit_every=16, chunk_frames=8, bandwidth=5e8, sync_s=2e-3,
    meta_s=5e-3, alpha=2e-5, beta=1e-9, gamma=1e-6, ragged_fields=1,
)  # fmt: skip


@pytest.mark.parametrize("collective", ["allgather", "allreduce"])
def test_more_ranks_never_commit_faster(collective: str) -> None:
    rates = [
        cm.simulate(NOISY.replace(ranks=n, collective=collective), commits=6)["commits_per_s"]
        for n in (1, 2, 4, 8, 16, 64, 256)
    ]
    assert all(b <= a for a, b in itertools.pairwise(rates)), rates
    assert rates[-1] < rates[0]  # the noise does cost something


def test_free_io_commits_at_the_frame_rate() -> None:
    """Zero latency, infinite bandwidth: commits/s is the frame rate / commit_every
    at any rank count, nobody stalls and nobody waits."""
    for n in (1, 3, 1000):
        p = cm.Params(ranks=n, compute_s=0.004, commit_every=32, capacity=2)
        out = cm.simulate(p, commits=5)
        assert out["commits_per_s"] == pytest.approx(250 / 32, rel=1e-12)
        assert out["frames_per_s"] == pytest.approx(250, rel=1e-12)
        assert out["producer_stall_fraction"] == 0
        assert out["wait_for_slowest_fraction"] == 0


def test_slowest_rank_sets_the_pace() -> None:
    """One rank's hiccup delays every rank's commit: with a hiccup certain on
    every frame, commits/s is that of the slowed producer."""
    p = cm.Params(ranks=8, compute_s=0.01, hiccup_p=1.0, hiccup_s=0.01, commit_every=8)
    assert cm.simulate(p, commits=4)["commits_per_s"] == pytest.approx(1 / (8 * 0.02))


def test_a_commit_hides_behind_the_buffer_until_it_cannot() -> None:
    base = cm.Params(ranks=4, compute_s=0.01, commit_every=16, capacity=8, meta_s=1e-3)
    hidden = cm.simulate(base, commits=6)  # 4 ms of commit behind 80 ms of slack
    assert hidden["producer_stall_fraction"] == 0
    # the run's average: 6 intervals of 160 ms, then the last commit's 4 ms
    assert hidden["commits_per_s"] == pytest.approx(6 / (6 * 0.16 + 0.004))
    slow = cm.simulate(base.replace(meta_s=0.1), commits=6)  # 300 ms: it cannot
    assert slow["producer_stall_fraction"] > 0.1
    assert slow["commits_per_s"] < 100 / 16


@pytest.mark.parametrize(
    ("chunk_frames", "commit_every", "per_frame", "amplification"),
    [
        (8, 32, 1 / 8, 1.0),  # chunks fill between commits: one write per chunk
        (32, 8, 1 / 8, (8 + 16 + 24 + 32) / 32),  # each commit rewrites the partial chunk
        (1, 1, 1.0, 1.0),
        (6, 4, 4 / 12, None),  # 12 frames: written at 4 (commit), 6 (full), 8 (commit), 12
    ],
)
def test_requests_match_the_chunk_arithmetic(
    chunk_frames: int, commit_every: int, per_frame: float, amplification: float | None
) -> None:
    p = cm.Params(ranks=10, chunk_frames=chunk_frames, commit_every=commit_every,
                  chunks_per_frame=3, ragged_fields=2, rank0_arrays=3)  # fmt: skip
    frames = math.lcm(chunk_frames, commit_every) * 4
    req = cm.requests(p, frames)
    assert req["data_puts_per_frame"] == pytest.approx(10 * 3 * per_frame)
    assert req["metadata_puts_per_commit"] == 1 + 3 + 2 * 2 * 10
    assert req["requests_per_frame"] == pytest.approx(
        req["data_puts_per_frame"] + req["metadata_puts_per_commit"] / commit_every
    )
    if amplification is not None:
        assert req["write_amplification"] == pytest.approx(amplification)


def test_collective_costs() -> None:
    p = cm.Params(alpha=1e-6, beta=1e-9, gamma=1e-6, message_bytes=20)
    one, big = p.replace(ranks=1), p.replace(ranks=1024)
    assert cm.collective_s(one.replace(collective="allreduce")) == 0
    assert cm.collective_s(big.replace(collective="allreduce")) == pytest.approx(
        10 * (1e-6 + 20e-9)
    )
    # the gathered list grows with the ranks, the reduction does not
    assert cm.collective_s(big) == pytest.approx(10e-6 + 1023 * 20e-9 + 1024e-6)
    assert cm.collective_s(big) > 10 * cm.collective_s(big.replace(collective="allreduce"))


def test_counts_after_a_million_frames() -> None:
    p = cm.Params(ranks=1000, chunk_frames=8, ragged_fields=1, rank0_arrays=3)
    meta = {"group_json_base": 800.0, "group_json_per_rank": 170.0}
    out = cm.after_frames(p, 10**6, meta)
    data = 1000 * 125_000  # 1,000 ranks' chunks of 8 frames
    ragged = 1000 * (16 + 2930)  # offsets: 65,536 rows a chunk; rows: 24 KiB a frame, 8 MiB chunks
    assert out["objects"] == data + ragged + 2 * 16 + (1 + 3 + 2000)
    assert out["list_requests"] == math.ceil(out["objects"] / 1000)
    assert out["group_json_bytes"] == 800 + 170 * 1000


def test_calibration_reproduces_the_one_rank_measurement() -> None:
    """The model's one fitted figure (the writer's CPU per frame) makes the
    1-rank run match its measurement; the others are predictions."""
    cal = cm.calibrate()  # reads benchmarks/results/commit_probe-cpu.json
    rows = cm.validate(cal)
    ones = [r for r in rows if r["ranks"] == 1]
    assert ones and all(r["model_over_measured"] == pytest.approx(1.0) for r in ones)
    assert {r["ranks"] for r in rows} == {1, 2, 4}
    assert all(r["fitted_write_cpu_s"] > 0 for r in rows)
