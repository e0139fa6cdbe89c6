"""A discrete-event model of the many-rank commit protocol, from 1 to 100,000 ranks.

What it models (``ZarrStore(path, comm=..., region=...)``, see
``docs/guides/many-ranks.md``): every rank runs a producer (the simulation,
``compute_s`` per frame, jittered) and a writer (its sink's writer thread)
joined by a bounded channel of ``capacity`` frames (policy ``block``: the
producer waits for a free slot). The writer buffers each chunk's frames and
writes a chunk when it fills; every ``commit_every`` frames it commits:

1. drain: write its partial chunks (rewritten whole: the growing chunk is
   written again at every commit until it fills), wait for its writes (local
   disk: fsync; object store: the last PUTs in flight);
2. collective 1 (an allgather of ``(frames, last step, error)`` in the store;
   the model can use an allreduce-min instead), every rank waiting for the
   slowest;
3. each rank resizes its own arrays (metadata writes: rank 0's shared arrays,
   every rank's ragged ones); collective 2;
4. rank 0 writes the group metadata (the committed count); collective 3.

A collective on P ranks costs, after the last rank arrives (Hockney's
alpha-beta model with the recursive-doubling algorithms of MPICH: R. Thakur,
R. Rabenseifner, W. Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 19(1), 2005, section 2 and tables):

    allreduce(P) = ceil(log2 P) * (alpha + m*beta)
    allgather(P) = ceil(log2 P) * alpha + (P - 1) * m * beta + gamma * P

``m`` is one rank's message (bytes), ``gamma`` the Python cost per rank of
unpickling and checking the gathered list (mpi4py's lowercase allgather;
measured here by ``commit_probe.py``).

The simulation is event-driven but vectorised over ranks: for every frame the
model advances each rank's two clocks (producer submits, writer finishes) with
the max-plus recurrences

    submit[i] = max(submit[i-1] + compute[i], written[i - capacity])
    written[i] = max(written[i-1], submit[i]) + write[i]

and at a commit frame every rank's writer clock becomes the commit's end:
``max_r(drain_r) + C(P) + max_r(resize_r) + C(P) + meta_0 + C(P)``. Per-rank
randomness (lognormal compute jitter, rare hiccups, lognormal PUT latency) is
drawn per frame from one generator per (seed, frame, purpose), so rank r's
draws are the same whatever P: adding ranks can only delay a commit. Rates
are averages over the simulated run, the last commit's latency included.

Request counts are exact chunk arithmetic (``requests``), and the counts after
10^6 frames (objects, metadata size, LIST requests) are arithmetic too.

Calibration (``calibrate``) reads ``results/commit_probe-cpu.json`` (measured
by ``commit_probe.py``: allgather latency at 1, 2, 4 ranks, fsync and
metadata-replace costs, CPU time of the 1-rank write, the group metadata size
at 1, 2, 4 ranks, the per-rank Python cost of a gather) and
``results/parallel-cpu.json``; validation runs the model at 1, 2 and 4 ranks
on this machine's parameters and prints it next to the measured figures.

    python benchmarks/commit_model.py [--quick] [--json PATH]

Writes ``benchmarks/results/commit_model.json`` (a ``--quick`` run writes none
unless ``--json`` says where). Plain Python and NumPy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MIB = 1 << 20
KIB = 1 << 10
S3_LIST_PAGE = 1000  # keys per ListObjectsV2 response (AWS documentation)


@dataclass(frozen=True)
class Params:
    """One configuration: the workload, the storage and the network.

    Times in seconds, sizes in bytes, rates per second; one rank's figures
    unless said otherwise.
    """

    ranks: int = 1
    frame_bytes: int = 1 * MIB  # this rank's block of every decomposed field, per frame
    compute_s: float = 0.01  # producer: the simulation's time per frame
    jitter_sigma: float = 0.0  # lognormal sigma of compute_s, per rank and frame
    hiccup_p: float = 0.0  # chance per rank and frame of a hiccup (OS noise, GC, page fault)
    hiccup_s: float = 0.0  # its length
    capacity: int = 8  # frames the channel holds (the sink's capacity)
    commit_every: int = 64
    chunk_frames: int = 8  # frames per chunk
    chunks_per_frame: int = 1  # spatial chunks of this rank's block (1: the whole block)
    write_cpu_s: float = 0.0  # writer CPU per frame (capture, encode, bookkeeping)
    bandwidth: float = math.inf  # bytes/s one rank's writes get
    request_s: float = 0.0  # median latency of one chunk write (PUT); 0 for a local disk
    request_sigma: float = 0.0  # lognormal sigma of that latency
    in_flight: int = 32  # chunk writes in flight per rank
    sync_s: float = 0.0  # the drain's fsync (local or parallel filesystem)
    meta_s: float = 0.0  # one metadata write (replace a zarr.json, or PUT it)
    ragged_fields: int = 0  # each adds 2 arrays per rank, resized by their rank
    rank0_arrays: int = 3  # arrays rank 0 resizes at a commit (steps, times, the field)
    alpha: float = 0.0  # collective latency per round (s)
    beta: float = 0.0  # s per byte on the network
    gamma: float = 0.0  # Python cost per rank of a gathered list (s)
    message_bytes: int = 23  # one rank's pickled (error, (frames, step)): measured
    collective: str = "allgather"  # or "allreduce"
    exchanges: int = 3  # collectives per commit
    cores: float = math.inf  # CPU cores all ranks share (oversubscription on this VM)
    cpu_per_rank: float = 1.0  # cores a rank keeps busy when alone (measured)
    measured_collective_s: float | None = None  # use this instead of the formula

    def replace(self, **kw: Any) -> Params:
        return dataclasses.replace(self, **kw)


def collective_s(p: Params) -> float:
    """Seconds one collective of the commit takes after the last rank arrives."""
    if p.measured_collective_s is not None:
        return p.measured_collective_s
    rounds = math.ceil(math.log2(p.ranks)) if p.ranks > 1 else 0
    if p.collective == "allreduce":
        return rounds * (p.alpha + p.message_bytes * p.beta)
    return rounds * p.alpha + (p.ranks - 1) * p.message_bytes * p.beta + p.gamma * p.ranks


def slowdown(p: Params) -> float:
    """Processor sharing: ranks that want more cores than there are run slower."""
    return max(1.0, p.ranks * p.cpu_per_rank / p.cores)


def chunk_writes(p: Params, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """For each frame of one rank: (chunk writes issued after it, frames those
    chunks hold). A chunk is written when it fills, and at every commit while
    it is partial (the whole partial chunk, again)."""
    i = np.arange(frames)
    fills = (i + 1) % p.chunk_frames == 0
    commits = (i + 1) % p.commit_every == 0
    held = i % p.chunk_frames + 1  # frames of the current chunk so far
    puts = (fills | commits).astype(np.int64) * p.chunks_per_frame
    return puts, np.where(puts > 0, held, 0)


def requests(p: Params, frames: int) -> dict[str, float]:
    """Exact request arithmetic over ``frames`` frames (whole commits)."""
    puts, held = chunk_writes(p, frames)
    commits = frames // p.commit_every
    data = float(puts.sum()) * p.ranks
    meta_per_commit = 1 + p.rank0_arrays + 2 * p.ragged_fields * p.ranks
    written = float((held * p.chunks_per_frame).sum())  # frames' worth of chunk bytes written
    return {
        "data_puts_per_frame": data / frames,
        "metadata_puts_per_commit": meta_per_commit,
        "metadata_puts_per_frame": meta_per_commit * commits / frames,
        "requests_per_frame": (data + meta_per_commit * commits) / frames,
        "write_amplification": written / (frames * p.chunks_per_frame),
    }


def simulate(p: Params, commits: int = 8, seed: int = 0) -> dict[str, float]:
    """Run ``commits`` commit intervals on every rank; rates averaged over the run."""
    P, K, B = p.ranks, p.commit_every, p.capacity
    frames = commits * K
    s = slowdown(p)
    coll = collective_s(p)
    puts, held = chunk_writes(p, frames)
    chunk_bytes = p.frame_bytes / p.chunks_per_frame
    submit = np.zeros(P)
    writer = np.zeros(P)
    ring: list[np.ndarray] = []  # when each of the last B frames left the channel
    stall = np.zeros(P)  # producer waiting for a slot
    waiting = np.zeros(P)  # writer waiting for the slowest rank
    in_commit = np.zeros(P)  # writer from its arrival to the commit's end
    ends: list[float] = []
    for i in range(frames):

        def rng(purpose: int, i: int = i) -> np.random.Generator:
            # one stream per (frame, purpose): rank r's draw is the r-th of it,
            # the same whatever the number of ranks
            return np.random.Generator(np.random.PCG64([seed, i, purpose]))

        compute = np.full(P, p.compute_s)
        if p.jitter_sigma:
            compute = compute * rng(0).lognormal(0.0, p.jitter_sigma, P)
        if p.hiccup_p:
            compute = compute + (rng(1).random(P) < p.hiccup_p) * p.hiccup_s
        ready = submit + compute
        slot = ring[-B] if len(ring) >= B else 0.0
        submit = np.maximum(ready, slot)
        stall += submit - ready
        work = p.write_cpu_s * s
        if puts[i]:
            work += held[i] * chunk_bytes * puts[i] / p.bandwidth * s
            if p.request_s:
                lat = p.request_s * rng(2).lognormal(0.0, p.request_sigma, P)
                work = work + lat * puts[i] / p.in_flight
        writer = np.maximum(writer, submit) + work
        ring.append(writer)
        if len(ring) > B:
            ring.pop(0)
        if (i + 1) % K:
            continue
        drain = writer + p.sync_s * s
        if p.request_s:  # the last PUTs in flight, and each metadata PUT, take a latency
            drain = drain + p.request_s * rng(3).lognormal(0.0, p.request_sigma, P)
        last = float(drain.max())
        waiting += last - drain
        t = last + coll
        # each rank's metadata writes: its ragged arrays, and rank 0's arrays;
        # PUTs go out together (about one latency), a filesystem's one by one
        resize = np.zeros(P)
        if p.ragged_fields:
            resize += p.meta_s if p.request_s else p.meta_s * 2 * p.ragged_fields
        resize[0] += p.meta_s if p.request_s else p.meta_s * p.rank0_arrays
        if p.request_s:
            resize = resize * rng(4).lognormal(0.0, p.request_sigma, P)
        t = float((t + resize * s).max()) + coll
        t += p.meta_s * s + coll  # rank 0's group metadata, the last exchange
        in_commit += t - drain
        ends.append(t)
        writer = np.full(P, t)
    total = ends[-1]
    commit_s = total / commits
    return {
        "commits_per_s": commits / total,
        "frames_per_s": frames / total,
        "frame_rate_asked": 1.0 / p.compute_s if p.compute_s else math.inf,
        "producer_stall_fraction": float(stall.mean()) / total,
        "collective_fraction": float(in_commit.mean()) / total,
        "wait_for_slowest_fraction": float(waiting.mean()) / total,
        "commit_protocol_s": float(in_commit.mean()) / commits,
        "collective_s": coll,
        "seconds_per_commit": commit_s,
        "aggregate_mib_s": P * p.frame_bytes * frames / total / MIB,
    }


def after_frames(
    p: Params, n: int, meta: dict[str, float], ragged_bytes: int = 24 * KIB
) -> dict[str, float]:
    """Object and metadata counts after ``n`` frames (arithmetic).

    Chunks as the store picks them: ``chunk_frames`` frames of each rank's
    block; 8-byte columns (steps, times, a ragged field's offsets) in chunks
    of 65,536 rows; a ragged field's rows (``ragged_bytes`` per frame and
    rank: 1,000 particles of 3 float64) in chunks of 8 MiB.
    """
    small = math.ceil((n + 1) / 65536)
    data_objects = p.ranks * p.chunks_per_frame * math.ceil(n / p.chunk_frames)
    ragged_objects = p.ragged_fields * p.ranks * (small + math.ceil(n * ragged_bytes / (8 * MIB)))
    steps_objects = 2 * small  # steps and times
    arrays = 1 + p.rank0_arrays + 2 * p.ragged_fields * p.ranks
    objects = data_objects + ragged_objects + steps_objects + arrays
    group = meta["group_json_base"] + meta["group_json_per_rank"] * p.ranks
    return {
        "frames": n,
        "objects": objects,
        "list_requests": math.ceil(objects / S3_LIST_PAGE),
        "metadata_objects": arrays,
        "group_json_bytes": group,
        "commits": n // p.commit_every,
        "group_json_bytes_written": group * (n // p.commit_every),
        "data_tib": p.ranks * p.frame_bytes * n / (1 << 40),
    }


# -- calibration and validation (this machine) ---------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def calibrate() -> dict[str, Any]:
    """This machine's parameters from the measurements (commit_probe.py)."""
    probe = _load("commit_probe-cpu.json")
    if probe is None:
        raise SystemExit("no results/commit_probe-cpu.json: run benchmarks/commit_probe.py")
    rows = {r["ranks"]: r for r in probe["ranks"]}
    one = rows[1]
    sizes = [(r["ranks"], r["layout"]["group_json_bytes"]) for r in probe["ranks"]]
    (p0, b0), (p1, b1) = sizes[0], sizes[-1]
    per_rank = (b1 - b0) / (p1 - p0)
    return {
        "machine": probe["machine"],
        "workload": probe["workload"],
        "cores": int(probe["machine"].split(",")[1].split()[0]),
        "cpu_per_rank": one["cpu_s"] / one["wall_s"],
        "collective_s": {r: rows[r]["allgather_s"] for r in rows},
        "allreduce_s": {r: rows[r]["allreduce_s"] for r in rows},
        "sync_s": probe["fsync"]["chunk_fsync_s"],
        "meta_s": probe["fsync"]["metadata_replace_s"],
        "gamma": probe["gather_python"]["per_rank_s"],
        "message_bytes": one["message_bytes"],
        "group_json_base": b0 - per_rank * p0,
        "group_json_per_rank": per_rank,
        "probe_wall_s": {r: rows[r]["wall_s"] for r in rows},
        "probe_cpu_s": {r: rows[r]["cpu_s"] for r in rows},
        "load_average": probe.get("load_average"),
    }


def _machine_params(cal: dict[str, Any], ranks: int, wall_1: float, raw_mib_s: float) -> Params:
    """The probe's workload on this machine; the writer's CPU per frame is the
    one fitted figure: what the 1-rank wall time leaves after everything else."""
    w = cal["workload"]
    block = w["block_kib"] * KIB
    chunk_frames = max(1, min(1 << 16, (8 << 20) // block))  # the store's default chunking
    base = Params(
        ranks=1,
        frame_bytes=block,
        compute_s=0.0,
        capacity=8,
        commit_every=w["commit_every"],
        chunk_frames=chunk_frames,
        bandwidth=raw_mib_s * MIB,
        sync_s=cal["sync_s"],
        meta_s=cal["meta_s"],
        rank0_arrays=2,
        cores=cal["cores"],
        cpu_per_rank=cal["cpu_per_rank"],
        measured_collective_s=cal["collective_s"][1],
    )
    frames = w["frames"]
    probe = base.replace(write_cpu_s=0.0)
    rest = simulate(probe, commits=frames // w["commit_every"])["seconds_per_commit"]
    fitted = max(0.0, (wall_1 - rest * frames / w["commit_every"]) / frames)
    return base.replace(
        ranks=ranks, write_cpu_s=fitted, measured_collective_s=cal["collective_s"][ranks]
    )


def validate(cal: dict[str, Any]) -> list[dict[str, Any]]:
    """Model and measurement side by side at 1, 2 and 4 ranks, against the
    probe's own run and against benchmarks/parallel.py's figures."""
    out = []
    w = cal["workload"]
    bytes_per_rank = w["frames"] * w["block_kib"] * KIB
    par = _load("parallel-cpu.json")
    par_rows = {r["ranks"]: r for r in par["results"]} if par else {}
    raw = par_rows[1]["raw_mib_s"] if par_rows else 2000.0
    commits = w["frames"] // w["commit_every"]
    for source, walls in (
        ("commit_probe", cal["probe_wall_s"]),
        ("parallel.py", {n: r["snapsink_seconds"] for n, r in par_rows.items()}),
    ):
        if 1 not in walls:
            continue
        for n in sorted(walls):
            p = _machine_params(cal, n, walls[1], raw)
            sim = simulate(p, commits=commits)
            measured = n * bytes_per_rank / walls[n] / MIB
            out.append(
                {
                    "measured_by": source,
                    "ranks": n,
                    "measured_mib_s": measured,
                    "model_mib_s": sim["aggregate_mib_s"],
                    "model_over_measured": sim["aggregate_mib_s"] / measured,
                    "fitted_write_cpu_s": p.write_cpu_s,
                    "slowdown": slowdown(p),
                    "collective_s": p.measured_collective_s,
                    "model_collective_fraction": sim["collective_fraction"],
                }
            )
            if source == "commit_probe":  # the CPU the ranks used, on this machine's cores
                floor = cal["probe_cpu_s"][n] / min(n, cal["cores"])
                out[-1]["cpu_s"] = cal["probe_cpu_s"][n]
                out[-1]["cpu_bound_mib_s"] = n * bytes_per_rank / floor / MIB
                # the model cannot beat the CPU the ranks were measured to burn
                bounded = min(sim["aggregate_mib_s"], out[-1]["cpu_bound_mib_s"])
                out[-1]["model_cpu_bounded_mib_s"] = bounded
    return out


# -- scenarios past this machine (modelled) --------------------------------------


def profiles(cal: dict[str, Any]) -> dict[str, Params]:
    """Two machines this project has not got; every figure an assumption
    except gamma and the message size (measured here)."""
    common = {"gamma": cal["gamma"], "message_bytes": cal["message_bytes"]}
    return {
        # InfiniBand cluster, parallel filesystem: MPI small-message latency
        # ~2 us a round, 10 GB/s links; 1 GB/s per rank to the filesystem,
        # fsync 5 ms, metadata replace 10 ms (a metadata server round trip);
        # 2% jitter and a 50 ms hiccup once in 10,000 frames per rank
        "hpc": Params(
            alpha=2e-6,
            beta=1e-10,
            bandwidth=1e9,
            sync_s=5e-3,
            meta_s=1e-2,
            jitter_sigma=0.02,
            hiccup_p=1e-4,
            hiccup_s=0.05,
            **common,
        ),
        # cloud VMs writing to S3: MPI over TCP ~30 us a round, 10 Gbit/s;
        # 200 MB/s per rank to S3, PUT latency median 20 ms with a lognormal
        # tail (sigma 0.7: p99 ~100 ms), 32 PUTs in flight (snapsink's default)
        "s3": Params(
            alpha=3e-5,
            beta=8e-10,
            bandwidth=2e8,
            request_s=0.02,
            request_sigma=0.7,
            in_flight=32,
            meta_s=0.02,
            jitter_sigma=0.02,
            hiccup_p=1e-4,
            hiccup_s=0.05,
            **common,
        ),
    }


def sweep(cal: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    ranks = [1, 4, 16, 100, 1000] if quick else [1, 4, 16, 100, 1000, 10_000, 100_000]
    sizes = [1 * MIB] if quick else [64 * KIB, 1 * MIB, 16 * MIB]
    everies = [16, 256] if quick else [16, 64, 256]
    rows = []
    for name, prof in profiles(cal).items():
        for size in sizes:
            chunk_frames = max(1, min(256, (8 << 20) // size))
            for k in everies:
                for n in ranks:
                    for coll in ("allgather", "allreduce"):
                        if coll == "allreduce" and n < 100:
                            continue
                        p = prof.replace(
                            ranks=n,
                            frame_bytes=size,
                            commit_every=k,
                            chunk_frames=chunk_frames,
                            compute_s=0.01,
                            collective=coll,
                        )
                        commits = max(2, min(8, 512 // k))  # the same at every rank count
                        sim = simulate(p, commits=commits)
                        req = requests(p, commits * k)
                        rows.append(
                            {
                                "profile": name,
                                "ranks": n,
                                "frame_kib": size // KIB,
                                "commit_every": k,
                                "chunk_frames": chunk_frames,
                                "collective": coll,
                                **sim,
                                **req,
                                "requests_per_s": req["requests_per_frame"] * sim["frames_per_s"],
                                "metadata_puts_per_s": req["metadata_puts_per_commit"]
                                * sim["commits_per_s"],
                                "group_puts_per_s": sim["commits_per_s"],
                                "collectives_per_s": p.exchanges * sim["commits_per_s"],
                            }
                        )
    return rows


def ragged(cal: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """One ragged field: every rank resizes its two arrays at every commit
    (1 MiB frames, commit every 64, 10 ms per frame)."""
    ranks = [1, 1000] if quick else [1, 1000, 100_000]
    rows = []
    for name, prof in profiles(cal).items():
        for fields in (0, 1):
            for n in ranks:
                p = prof.replace(
                    ranks=n,
                    frame_bytes=MIB,
                    commit_every=64,
                    chunk_frames=8,
                    compute_s=0.01,
                    ragged_fields=fields,
                )
                sim = simulate(p, commits=8)
                req = requests(p, 8 * 64)
                rows.append(
                    {
                        "profile": name,
                        "ragged_fields": fields,
                        "ranks": n,
                        **sim,
                        **req,
                        "metadata_puts_per_s": req["metadata_puts_per_commit"]
                        * sim["commits_per_s"],
                    }
                )
    return rows


def stragglers(cal: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """The commit waits for the slowest rank: hiccups of 50 ms or 0.5 s, once in
    10,000 frames per rank, behind a channel of 8 or 64 frames (hpc profile,
    1 MiB frames, commit every 64, 10 ms per frame)."""
    ranks = [1, 100, 1000] if quick else [1, 100, 1000, 10_000, 100_000]
    rows = []
    for hiccup in (0.05, 0.5):
        for capacity in (8, 64):
            for n in ranks:
                p = profiles(cal)["hpc"].replace(
                    ranks=n,
                    frame_bytes=MIB,
                    commit_every=64,
                    chunk_frames=8,
                    compute_s=0.01,
                    hiccup_s=hiccup,
                    capacity=capacity,
                )
                sim = simulate(p, commits=8)
                rows.append({"hiccup_s": hiccup, "capacity": capacity, "ranks": n, **sim})
    return rows


def counts(cal: dict[str, Any]) -> list[dict[str, Any]]:
    meta = {k: cal[k] for k in ("group_json_base", "group_json_per_rank")}
    rows = []
    for n in (1, 1000, 100_000):
        for size, cf in ((64 * KIB, 128), (1 * MIB, 8), (16 * MIB, 1)):
            p = Params(ranks=n, frame_bytes=size, chunk_frames=cf, ragged_fields=1)
            rows.append(
                {
                    "ranks": n,
                    "frame_kib": size // KIB,
                    "chunk_frames": cf,
                    **after_frames(p, 10**6, meta),
                }
            )
    return rows


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="up to 1,000 ranks, fewer cases")
    ap.add_argument(
        "--json",
        default=None,
        help="where the result goes (default: results/commit_model.json; a --quick run "
        "writes none unless asked; '' for nowhere)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    cal = calibrate()
    print(
        f"calibration ({cal['machine']}): collective s {cal['collective_s']}, "
        f"fsync {cal['sync_s'] * 1e3:.2f} ms, metadata replace {cal['meta_s'] * 1e3:.2f} ms, "
        f"cores per rank {cal['cpu_per_rank']:.2f}, gamma {cal['gamma'] * 1e6:.2f} us/rank"
    )
    val = validate(cal)
    print("\nvalidation: aggregate MiB/s, measured vs modelled")
    print(
        f"{'measured by':<14}{'ranks':>6}{'measured':>10}{'model':>10}{'model/meas':>11}"
        f"{'CPU s':>8}{'CPU-bound':>10}{'min(model, CPU-bound)':>22}"
    )
    for r in val:
        cpu = (
            f"{r['cpu_s']:>8.3f}{r['cpu_bound_mib_s']:>10.1f}{r['model_cpu_bounded_mib_s']:>22.1f}"
            if "cpu_s" in r
            else ""
        )
        print(
            f"{r['measured_by']:<14}{r['ranks']:>6}{r['measured_mib_s']:>10.1f}"
            f"{r['model_mib_s']:>10.1f}{r['model_over_measured']:>11.2f}{cpu}"
        )
    rows = sweep(cal, args.quick)
    print("\nmodelled (compute 10 ms/frame per rank: 100 frames/s asked)")
    print(
        f"{'profile':<8}{'ranks':>8}{'KiB':>7}{'K':>5}{'coll':>10}{'commits/s':>10}"
        f"{'frames/s':>9}{'stall':>7}{'in commit':>10}{'agg GiB/s':>10}{'req/s':>10}"
        f"{'meta PUT/s':>11}"
    )
    for r in rows:
        print(
            f"{r['profile']:<8}{r['ranks']:>8}{r['frame_kib']:>7}{r['commit_every']:>5}"
            f"{r['collective']:>10}{r['commits_per_s']:>10.3f}{r['frames_per_s']:>9.1f}"
            f"{r['producer_stall_fraction']:>7.2f}{r['collective_fraction']:>10.2f}"
            f"{r['aggregate_mib_s'] / 1024:>10.2f}{r['requests_per_s']:>10.0f}"
            f"{r['metadata_puts_per_s']:>11.1f}"
        )
    strag = stragglers(cal, args.quick)
    print("\nstragglers (hpc, 1 MiB frames, commit every 64; a hiccup once in 10^4 frames a rank)")
    print(
        f"{'hiccup s':>9}{'capacity':>9}{'ranks':>8}{'commits/s':>10}{'frames/s':>9}"
        f"{'stall':>7}{'waiting':>8}"
    )
    for r in strag:
        print(
            f"{r['hiccup_s']:>9}{r['capacity']:>9}{r['ranks']:>8}{r['commits_per_s']:>10.3f}"
            f"{r['frames_per_s']:>9.1f}{r['producer_stall_fraction']:>7.2f}"
            f"{r['wait_for_slowest_fraction']:>8.2f}"
        )
    rag = ragged(cal, args.quick)
    print("\nragged fields (1 MiB frames, commit every 64)")
    print(
        f"{'profile':<8}{'ragged':>7}{'ranks':>8}{'commits/s':>10}{'frames/s':>9}"
        f"{'stall':>7}{'meta writes/commit':>19}{'meta writes/s':>14}"
    )
    for r in rag:
        print(
            f"{r['profile']:<8}{r['ragged_fields']:>7}{r['ranks']:>8}"
            f"{r['commits_per_s']:>10.3f}{r['frames_per_s']:>9.1f}"
            f"{r['producer_stall_fraction']:>7.2f}{r['metadata_puts_per_commit']:>19,}"
            f"{r['metadata_puts_per_s']:>14,.0f}"
        )
    cnt = counts(cal)
    print("\nafter 10^6 frames (one decomposed field, one ragged field)")
    for r in cnt:
        print(
            f"  {r['ranks']:>7} ranks, {r['frame_kib']:>6} KiB/frame/rank: {r['objects']:>14,} "
            f"objects, {r['list_requests']:>10,} LISTs, group zarr.json "
            f"{r['group_json_bytes'] / 1024:,.0f} KiB"
        )
    result = {
        "measured": dict(cal),
        "validation": val,
        "modelled": rows,
        "stragglers": strag,
        "ragged": rag,
        "after_1e6_frames": cnt,
        "quick": args.quick,
        "seconds": time.perf_counter() - t0,
    }
    print(f"\n{result['seconds']:.1f} s")
    path = args.json
    if path is None:  # the recorded results, unless this is a quick look
        path = None if args.quick else RESULTS / "commit_model.json"
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
