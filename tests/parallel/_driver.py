"""One rank of a parallel write, launched by tests/parallel/test_*.py.

Run under ``mpiexec -n N python _driver.py ...`` (``--backend mpi``) or started
by ``torch.multiprocessing.spawn`` (``run_torch``). Every rank writes its
quarter (or half) of a 2-D field ``rho`` and its ragged ``particles`` every
step, through its own SyncSink on a ZarrStore given the communicator.

The values are a pure function of (step, global position) and (step, rank), so
the test recomputes the expected trajectory without talking to the ranks
(:func:`expected_rho`, :func:`expected_particles`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

NY, NX = 16, 24


def grid(size: int) -> tuple[int, int]:
    """Ranks along (y, x): 4 -> 2 x 2, 2 -> 1 x 2, 1 -> 1 x 1."""
    return {1: (1, 1), 2: (1, 2), 4: (2, 2)}[size]


def block(rank: int, size: int) -> tuple[slice, slice]:
    gy, gx = grid(size)
    by, bx = NY // gy, NX // gx
    y, x = divmod(rank, gx)
    return slice(y * by, (y + 1) * by), slice(x * bx, (x + 1) * bx)


def expected_rho(step: int) -> np.ndarray[Any, Any]:
    y, x = np.mgrid[0:NY, 0:NX]
    return (step * 1000.0 + y * NX + x).astype(np.float32)


def expected_particles(step: int, rank: int) -> np.ndarray[Any, Any]:
    n = (step + rank) % 4 + 1  # 1..4 rows, changing every step
    base = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    return base + step * 100.0 + rank * 10.0


def record_writes(path: str) -> None:
    """Append the path of every file this rank's store writes to ``path``: chunk
    files (whole, or rows in place) and zarr's own metadata (``zarr.json``)."""
    from snapsink.stores import _zarrio

    def log(target: object) -> None:
        with open(path, "a") as f:
            f.write(f"{target}\n")

    write_file = _zarrio.write_file

    def recording_write_file(target: Any, *args: Any, **kwargs: Any) -> None:
        log(target)
        write_file(target, *args, **kwargs)

    durable_set = _zarrio.DurableLocalStore._durable_set

    async def recording_set(self: Any, key: str, value: Any, *, exclusive: bool) -> None:
        log(self.root / key)
        await durable_set(self, key, value, exclusive=exclusive)

    chunk_fd = _zarrio.BlockWriter._chunk_fd

    def recording_chunk_fd(self: Any, target: Any, chunk: Any) -> int:
        log(chunk)  # rows written in place
        return chunk_fd(self, target, chunk)

    _zarrio.write_file = recording_write_file  # type: ignore[assignment]
    _zarrio.BlockWriter._chunk_fd = recording_chunk_fd  # type: ignore[method-assign]
    _zarrio.DurableLocalStore._durable_set = recording_set  # type: ignore[method-assign]


def check_trajectory(path: Any, ranks: int, frames: int | None = None) -> Any:
    """Every committed frame of ``path`` equals the driver's values, bit for bit
    (for the tests)."""
    import snapsink

    traj = snapsink.open(path)
    n = len(traj)
    if frames is not None:
        assert n == frames
    np.testing.assert_array_equal(traj.steps, np.arange(n))
    np.testing.assert_array_equal(traj.times, np.arange(n) * 0.1)
    rho = traj["rho"][:]
    assert rho.shape == (n, NY, NX)
    for i in range(n):
        assert np.array_equal(rho[i], expected_rho(i))
        want = np.concatenate([expected_particles(i, r) for r in range(ranks)])
        assert np.array_equal(traj["particles"][i], want)
    np.testing.assert_array_equal(traj["energy"][:], np.arange(n) * 0.5)
    return traj


def fail_writes_after(calls: int) -> None:
    """This rank's block writes fail (EIO) after ``calls`` of them: a disk error."""
    import errno

    from snapsink.stores import _zarrblocks

    write = _zarrblocks.BlockIO.write
    count = [0]

    async def failing_write(self: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.EIO, "injected I/O error")
        await write(self, *args, **kwargs)

    _zarrblocks.BlockIO.write = failing_write  # type: ignore[method-assign]


def write(comm: Any, rank: int, size: int, args: argparse.Namespace) -> None:
    import snapsink

    if args.fail_rank == rank:
        fail_writes_after(args.fail_after)
    if args.record:
        record_writes(f"{args.record}.{rank}")
    mine = block(rank, size)
    path = args.path
    if args.other_path and int(args.other_path.split(":", 1)[0]) == rank:
        path = args.other_path.split(":", 1)[1]  # --other-path R:PATH: rank R errs
    options = {"commit_every": args.commit_every, "chunks": json.loads(args.chunks or "{}")}
    if args.rank_options and int(args.rank_options.split(":", 1)[0]) == rank:
        options.update(json.loads(args.rank_options.split(":", 1)[1]))  # R:JSON: rank R's own
    chunks = options.pop("chunks")
    store = snapsink.ZarrStore(
        path,
        mode=args.mode,
        comm=comm,
        region={"rho": mine},
        chunks={k: tuple(v) for k, v in chunks.items()} if chunks else None,
        attrs={"run": "parallel"},
        compressors=args.compressors or None,
        **options,
    )
    assert store.describe() is None  # writer="auto" picks the thread
    schema = snapsink.Schema(
        {
            "rho": snapsink.Field("float32", (mine[0].stop - mine[0].start,
                                              mine[1].stop - mine[1].start)),
            "energy": snapsink.Field("float64", ()),
            "particles": snapsink.Field("float64", (None, 3)),
        }
    )  # fmt: skip
    extra = {}
    if args.empty_field:  # a field with a dimension of length 0 (rank 0 writes it)
        schema = snapsink.Schema({**schema, "none": snapsink.Field("float64", (0, 2))})
        extra["none"] = np.zeros((0, 2))
    # --nan-first-rank: the schema is inferred, and that rank's first write is
    # refused (a NaN time) before it could prepare the store
    declared = schema if args.nan_first_rank < 0 else None
    with snapsink.SyncSink(store, schema=declared, capacity=4, policy="block") as sink:
        first = args.start + (rank if args.skew else 0)  # --skew: misaligned steps
        steps = list(range(first, first + args.steps))
        if args.other_middle >= 0:  # the same count and last step, another middle
            gap = first + 1 if rank == args.other_middle else first + 2
            steps = [s for s in range(first, first + args.steps + 1) if s != gap]
        for step in steps:
            nan = rank == args.nan_first_rank and step == first
            if declared is None:  # an inferred shape is fixed: no ragged field
                extra = {**extra, "particles": expected_particles(step, rank)[:1]}
            sink.write(
                {
                    "rho": expected_rho(step)[mine],
                    "energy": float(step) * 0.5,
                    "particles": expected_particles(step, rank),
                    **extra,
                },
                step=step,
                time=float("nan") if nan else step * 0.1,
            )
            if args.flush_every and (step + 1) % args.flush_every == 0:
                sink.flush()
                if args.progress:
                    with open(f"{args.progress}.{rank}", "w") as f:
                        f.write(f"{step} {os.getpid()}\n")
            if args.sleep:
                time.sleep(args.sleep)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--mode", default="x")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--commit-every", type=int, default=5)
    p.add_argument("--flush-every", type=int, default=0)
    p.add_argument("--chunks", default="")
    p.add_argument("--progress", default="")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--record", default="")
    p.add_argument("--skew", action="store_true")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-after", type=int, default=0)
    p.add_argument("--nan-first-rank", type=int, default=-1)
    p.add_argument("--empty-field", action="store_true")
    p.add_argument("--compressors", default="")
    p.add_argument("--other-path", default="")
    p.add_argument("--other-middle", type=int, default=-1)
    p.add_argument("--rank-options", default="")
    return p.parse_args(argv)


def run_torch(rank: int, size: int, port: int, argv: list[str]) -> None:
    """torch.multiprocessing.spawn's target: a gloo group of ``size`` processes."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        write(dist.group.WORLD, rank, size, parse(argv))
    finally:
        dist.destroy_process_group()


def _gloo(rank: int, size: int, port: int, seconds: float = 1800) -> None:
    import datetime

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    timeout = datetime.timedelta(seconds=seconds)
    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=timeout)


def _small_store(path: Any, comm: Any, rank: int, **kwargs: Any) -> Any:
    """A store of a 1-D ``u`` of 4 elements a rank, and its sink's schema."""
    import snapsink

    store = snapsink.ZarrStore(path, comm=comm, region={"u": (slice(4 * rank, 4 * rank + 4),)},
                               **kwargs)  # fmt: skip
    return store, snapsink.Schema({"u": snapsink.Field("float32", (4,))})


def run_torch_groups(rank: int, size: int, port: int, out: str) -> None:
    """Four processes, two sub-groups ([0, 1] and [2, 3]), a store on each."""
    import torch.distributed as dist

    import snapsink

    _gloo(rank, size, port, seconds=60)
    try:
        groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every process, as torch asks
        store, schema = _small_store(f"{out}/sub{rank // 2}.zarr", groups[rank // 2], rank % 2)
        with snapsink.SyncSink(store, schema=schema) as sink:
            for step in range(3):
                sink.write({"u": np.full(4, 10.0 * step + rank, np.float32)}, step=step)
    finally:
        dist.destroy_process_group()


def run_torch_timeout(rank: int, size: int, port: int, out: str) -> None:
    """The user's group (not the default one: its long timeout keeps the start
    safe) gives up after 3 s; rank 1 stalls 8 s before a flush. Each rank
    records how its flush ended, and after how long: ``<out>.<rank>``."""
    import datetime

    import torch.distributed as dist

    import snapsink

    _gloo(rank, size, port, seconds=60)
    try:
        group = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=3))
        dist.barrier()  # the ranks start the store together
        store, schema = _small_store(f"{out}.zarr", group, rank)
        began = time.monotonic()
        try:
            with snapsink.SyncSink(store, schema=schema) as sink:
                sink.write({"u": np.zeros(4, np.float32)}, step=0)
                if rank == 1:
                    time.sleep(8)
                began = time.monotonic()
                sink.flush()
            result = "ok"
        except Exception as exc:
            result = type(exc).__name__
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{result} {time.monotonic() - began:.1f}\n")
        # rank 0 holds torch's store: it waits for rank 1 to be done with it
        deadline = time.monotonic() + 60
        while rank == 0 and not os.path.exists(f"{out}.1") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dist.destroy_process_group()


def run_torch_free(rank: int, size: int, port: int, out: str) -> None:
    """Stores built and closed, and stores whose sink is refused, in a row:
    ``<out>.<rank>`` records this process's open files before and after."""
    import gc

    import torch.distributed as dist

    import snapsink

    _gloo(rank, size, port, seconds=60)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for i in range(8):
            store, schema = _small_store(f"{out}{i}.zarr", dist.group.WORLD, rank)
            with snapsink.SyncSink(store, schema=schema) as sink:
                sink.write({"u": np.zeros(4, np.float32)}, step=0)
            refused, _ = _small_store(f"{out}-refused{i}.zarr", dist.group.WORLD, rank)
            try:
                snapsink.SyncSink(refused, policy="drop_newest")
            except snapsink.ConfigError:
                pass
            del refused
        gc.collect()
        after = len(os.listdir("/proc/self/fd"))
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{before} {after}\n")
    finally:
        dist.destroy_process_group()


def main() -> None:
    args = parse(sys.argv[1:])
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        write(comm, comm.Get_rank(), comm.Get_size(), args)
    except Exception as exc:
        while exc.__cause__ is not None and not isinstance(exc, snapsink_errors()):
            exc = exc.__cause__  # type: ignore[assignment]
        print(f"rank {comm.Get_rank()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)


def snapsink_errors() -> tuple[type[BaseException], ...]:
    """The store's own errors (a sink wraps them in WriterError)."""
    import snapsink

    return (snapsink.ConfigError, snapsink.SchemaError, snapsink.StoreStateError)


if __name__ == "__main__":
    main()
