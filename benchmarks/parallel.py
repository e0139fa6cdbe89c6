"""Many ranks, one Zarr trajectory: aggregate write throughput at 1, 2 and 4 ranks
against raw writes of the same bytes by the same ranks, in one run.

Each case is an ``mpiexec -n N`` job of this script (``--rank``). Every rank
owns a block of ``--block-kib`` KiB (float32 rows of a 2-D field decomposed
along y: weak scaling, so the global field grows with the ranks) and writes
``--frames`` frames of it:

- ``snapsink``: a ``SyncSink`` over ``ZarrStore(path, comm=MPI.COMM_WORLD,
  region=...)`` (policy block, commit every ``--commit-every`` frames: each
  commit drains and fsyncs the rank's chunks, two allgathers and rank 0's
  metadata), closed at the end;
- ``raw``: each rank ``pwrite``s the same bytes, frame after frame, into a file
  of its own and ``fdatasync``s it every ``--commit-every`` frames and at the end:
  what the disk gives the same ranks with no format, no capture and no commit
  protocol.

Frame 0 is written and made durable before the clock starts (for snapsink: the
sink started, the store opened, its arrays made, a flush), so the figures are
the steady state; the time then runs from a barrier to a barrier after the
last rank is done with ``--frames`` more frames (the slowest rank, the sink
closed: everything committed); aggregate MiB/s is every rank's bytes over
that time. Cases are interleaved round by round, the best of
``--repeats`` kept; the last snapsink run of each rank count is read back with
``snapsink.open`` and checked bit-exact.

    python benchmarks/parallel.py [--quick] [--json PATH]

Needs ``pip install mpi4py mpich`` (the ``mpi`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

RANKS = (1, 2, 4)
NX = 512  # float32 columns of the field: a row is 2 KiB


def _frame(step: int, rows: int, rank: int) -> np.ndarray[Any, Any]:
    """Rank ``rank``'s block at ``step``: distinct values, cheap to make."""
    base = np.arange(rows * NX, dtype=np.float32).reshape(rows, NX)
    return base + np.float32(step * 7 + rank * 1_000_003)


def _rank_main(args: argparse.Namespace) -> None:
    """One rank of one case: time it between barriers; rank 0 prints the result."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rows = max(1, args.block_kib * 1024 // (NX * 4))
    frames = [_frame(i, rows, rank) for i in range(4)]  # made before the clock starts
    path = Path(args.path)
    if args.case == "raw":
        target = path / f"raw-{rank}.bin"
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        nbytes = frames[0].nbytes
        os.pwrite(fd, frames[0].data, 0)  # frame 0: the warm-up, as the sink's
        os.fdatasync(fd)
        comm.Barrier()
        t0 = time.perf_counter()
        for i in range(1, args.frames + 1):
            os.pwrite(fd, frames[i % 4].data, i * nbytes)
            if i % args.commit_every == 0:
                os.fdatasync(fd)
        os.fdatasync(fd)
        os.close(fd)
    else:
        import snapsink

        region = {"field": (slice(rank * rows, (rank + 1) * rows), slice(0, NX))}
        store = snapsink.ZarrStore(path, comm=comm, region=region, commit_every=args.commit_every)
        with snapsink.SyncSink(store, capacity=8, policy="block") as sink:
            # frame 0 and a flush: the sink started, the store opened and its
            # arrays made; the clock measures the steady state
            sink.write({"field": frames[0]}, step=0)
            sink.flush()
            comm.Barrier()
            t0 = time.perf_counter()
            for i in range(1, args.frames + 1):
                sink.write({"field": frames[i % 4]}, step=i)
    comm.Barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        total = size * args.frames * frames[0].nbytes
        print(json.dumps({"seconds": seconds, "bytes": total, "rows": rows}), flush=True)


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit("no mpiexec: pip install mpi4py mpich")
    return found


def _case(n: int, case: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [_mpiexec(), "-n", str(n), sys.executable, __file__, "--rank", case, str(path),
           "--frames", str(args.frames), "--block-kib", str(args.block_kib),
           "--commit-every", str(args.commit_every)]  # fmt: skip
    src = os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"{case} on {n} ranks failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _check(path: Path, n: int, rows: int, frames: int) -> None:
    import snapsink

    traj = snapsink.open(path)
    got = traj["field"]
    if len(traj) != frames + 1:
        raise SystemExit(f"{path}: {len(traj)} frames stored, expected {frames + 1}")
    for i in range(frames + 1):
        want = np.concatenate([_frame(i % 4, rows, r) for r in range(n)])
        if got[i].tobytes() != want.tobytes():
            raise SystemExit(f"{path}: frame {i} does not read back bit-exact")


def main() -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rank", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help="default 128; --quick 32")
    p.add_argument("--block-kib", type=int, default=None,
                   help="bytes per rank per frame (default 1024)")
    p.add_argument("--commit-every", type=int, default=None, help="default 16")
    p.add_argument("--repeats", type=int, default=None, help="default 3; --quick 2")
    p.add_argument("--quick", action="store_true", help="32 frames of 1 MiB, best of 2")
    p.add_argument(
        "--json",
        default=None,
        help="where the JSON results go (default: results/parallel-cpu.json; a --quick run "
        "writes none unless asked; '' for nowhere)",
    )
    args = p.parse_args()
    if args.rank:
        args.case, args.path = args.rank
        _rank_main(args)
        return {}
    if args.quick:
        _common.fill_unset(args, frames=32, repeats=2)
    _common.fill_unset(args, frames=128, block_kib=1024, commit_every=16, repeats=3)
    if args.json is None:
        args.json = "" if args.quick else str(HERE / "results" / "parallel-cpu.json")
    result = _report(_measure(args), args)
    # the table is printed above; finish makes the JSON's folder
    return _common.finish(result, lambda _: None, args.json or None)


def _measure(args: argparse.Namespace) -> dict[tuple[int, str], dict[str, Any]]:
    """The best run of each (ranks, case), rounds interleaved; the last round's
    snapsink runs read back and checked."""
    best: dict[tuple[int, str], dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="snapsink-bench-parallel-"))
    try:
        for k in range(args.repeats):
            for n in RANKS:
                for case in ("raw", "snapsink"):
                    path = tmp / f"{case}-{n}-{k}.zarr"
                    res = _case(n, case, path, args)
                    if case == "snapsink" and k == args.repeats - 1:
                        _check(path, n, res["rows"], args.frames)
                    shutil.rmtree(path, ignore_errors=True)
                    key = (n, case)
                    if key not in best or res["seconds"] < best[key]["seconds"]:
                        best[key] = res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return best


def _report(
    best: dict[tuple[int, str], dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Print the table of aggregate rates and ratios; the JSON result."""
    mib = 1 << 20
    print(
        f"{args.frames} frames of {args.block_kib} KiB per rank, commit every "
        f"{args.commit_every}; best of {args.repeats}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(f"{'ranks':>5} {'raw MiB/s':>10} {'snapsink MiB/s':>15} {'snapsink/raw':>13}")
    rows = []
    for n in RANKS:
        raw, ours = best[(n, "raw")], best[(n, "snapsink")]
        raw_rate = raw["bytes"] / raw["seconds"] / mib
        our_rate = ours["bytes"] / ours["seconds"] / mib
        print(f"{n:>5} {raw_rate:>10.1f} {our_rate:>15.1f} {our_rate / raw_rate:>13.2f}")
        rows.append(
            {
                "ranks": n,
                "raw_mib_s": raw_rate,
                "snapsink_mib_s": our_rate,
                "ratio": our_rate / raw_rate,
                "raw_seconds": raw["seconds"],
                "snapsink_seconds": ours["seconds"],
            }
        )
    print("(every snapsink run of the last round read back bit-exact)")
    return {
        "frames": args.frames,
        "block_kib": args.block_kib,
        "commit_every": args.commit_every,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "results": rows,
    }


if __name__ == "__main__":
    main()
