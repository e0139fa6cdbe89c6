"""Draw docs/figures/backpressure.png: one producer, one slow store, four policies.

A model, not a measurement: the simulation produces a frame every ``STEP``
time units; the store needs ``WRITE`` units per frame; the channel holds
``CAPACITY`` frames (queued or being written). Run
``python docs/figures/backpressure.py`` to redraw (needs matplotlib).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

STEP = 1.0  # compute time of one simulation step
WRITE = 2.2  # store time of one frame
SPILL_WRITE = 0.25  # the producer's cost of writing one frame to the spill dir
CAPACITY = 3
FRAMES = 12


@dataclass
class Timeline:
    compute: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, frame
    stalls: list[tuple[float, float]] = field(default_factory=list)
    writes: list[tuple[float, float, int, bool]] = field(default_factory=list)  # ..., spilled
    dropped: list[tuple[float, int]] = field(default_factory=list)
    spilled: list[tuple[float, int]] = field(default_factory=list)


def simulate(policy: str) -> Timeline:
    tl = Timeline()
    t = 0.0
    queue: list[tuple[int, bool]] = []  # (frame, spilled) waiting for the writer
    writer_free = 0.0
    writing: list[tuple[float, int]] = []  # (end, frame) of the write in progress

    def advance_writer(until: float) -> None:
        nonlocal writer_free
        while True:
            writing[:] = [(e, f) for e, f in writing if e > until]
            if writing or not queue:
                return
            start = max(writer_free, min(until, writer_free))
            frame, spilled = queue.pop(0)
            end = start + WRITE
            tl.writes.append((start, end, frame, spilled))
            writer_free = end
            writing.append((end, frame))

    def held() -> int:
        return len(writing) + sum(1 for _, s in queue if not s)

    for i in range(FRAMES):
        tl.compute.append((t, t + STEP, i))
        t += STEP
        advance_writer(t)
        if held() >= CAPACITY:
            if policy == "block":
                stall_end = writing[0][0]
                tl.stalls.append((t, stall_end))
                t = stall_end
                advance_writer(t)
            elif policy == "drop_newest":
                tl.dropped.append((t, i))
                continue
            elif policy == "drop_oldest":
                victim = next(k for k, (_, s) in enumerate(queue) if not s)
                tl.dropped.append((t, queue.pop(victim)[0]))
            elif policy == "spill":
                tl.spilled.append((t, i))
                tl.stalls.append((t, t + SPILL_WRITE))
                t += SPILL_WRITE
                queue.append((i, True))
                advance_writer(t)
                continue
        queue.append((i, False))
        if not writing:
            writer_free = max(writer_free, t)
        advance_writer(t)
    advance_writer(float("inf"))
    return tl


def draw(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    policies = ["block", "drop_newest", "drop_oldest", "spill"]
    fig, axes = plt.subplots(len(policies), 1, figsize=(10, 7.2), sharex=True)
    colors = {"compute": "#4C72B0", "stall": "#C44E52", "write": "#55A868", "spill": "#DD8452"}
    for ax, policy in zip(axes, policies, strict=True):
        tl = simulate(policy)
        for s, e, i in tl.compute:
            ax.broken_barh([(s, e - s)], (1.1, 0.7), color=colors["compute"], ec="white")
            ax.text((s + e) / 2, 1.45, str(i), ha="center", va="center", color="white", fontsize=8)
        for s, e in tl.stalls:
            ax.broken_barh([(s, e - s)], (1.1, 0.7), color=colors["stall"], ec="white")
        for s, e, i, sp in tl.writes:
            c = colors["spill"] if sp else colors["write"]
            ax.broken_barh([(s, e - s)], (0.1, 0.7), color=c, ec="white")
            ax.text((s + e) / 2, 0.45, str(i), ha="center", va="center", color="white", fontsize=8)
        for t, i in tl.dropped:
            ax.plot(t, 2.05, marker="x", color="black", ms=7, mew=2)
            ax.text(t, 2.3, f"{i} dropped", ha="center", fontsize=7)
        for t, _ in tl.spilled:
            ax.plot(t, 2.05, marker="v", color=colors["spill"], ms=7)
        ax.set_yticks([0.45, 1.45], ["store", "simulation"])
        ax.set_ylim(0, 2.6)
        stalled = sum(e - s for s, e in tl.stalls)
        ax.set_title(
            f"policy={policy!r}: {len(tl.writes)} stored, {len(tl.dropped)} dropped, "
            f"simulation stalled {stalled:.1f}",
            fontsize=10,
            loc="left",
        )
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel(
        f"time (one step = {STEP:g}, one store write = {WRITE:g}, capacity = {CAPACITY} frames)"
    )
    fig.legend(
        handles=[
            Patch(color=colors["compute"], label="simulation step (frame n)"),
            Patch(color=colors["stall"], label="simulation waits"),
            Patch(color=colors["write"], label="store writes frame n"),
            Patch(color=colors["spill"], label="spilled frame, replayed in order"),
        ],
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    draw(Path(__file__).with_name("backpressure.png"))
