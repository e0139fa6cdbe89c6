"""``snapsink convert SRC DST``: NpyDirectory <-> ZarrStore, streaming, bit-exact.

The source is read in chunks of frames (:meth:`Trajectory.iter_chunks`, about
64 MiB at a time) and written through a :class:`~snapsink.Sink` (policy block,
so nothing is dropped); steps, times, static arrays, attrs and dropped steps
are carried over. Memory stays bounded by one chunk plus the sink's channel.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, StoreExistsError
from .._trajectory import Trajectory
from ._proxy import TimedStore
from .info import detect, human, open_store

__all__ = ["add_parser", "convert", "run"]

CHUNK_BYTES = 64 << 20


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="copy a store into the other format (NpyDirectory <-> Zarr), bit-exact",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("src", help="the store to read")
    p.add_argument("dst", help="the store to create; must not exist")
    p.add_argument(
        "--format",
        choices=("npy", "zarr"),
        help="the destination's format (default: the other one)",
    )
    p.add_argument(
        "--group",
        help="Zarr group to read (SRC is Zarr) and to write (DST is Zarr); default: the root",
    )
    p.set_defaults(handler=run)


def _frames_per_chunk(traj: Trajectory) -> int:
    n = len(traj)
    if not n:
        return 1
    per_frame = 0
    for name, f in traj.fields.items():
        if f.ragged:
            # the first frame's rows as an estimate of the average
            rows = len(traj[name][0])
            per_frame += max(rows, 1) * math.prod(f.row_shape) * f.dtype.itemsize
        else:
            per_frame += f.frame_nbytes()
    return max(1, min(n, CHUNK_BYTES // max(per_frame, 1)))


def _make_store(fmt: str, dst: Path, group: str | None, traj: Trajectory) -> Any:
    attrs = dict(traj.attrs)
    static = {k: np.asarray(v) for k, v in traj.static.items()}
    if fmt == "npy":
        if group is not None:
            raise ConfigError(f"--group {group!r}: an NpyDirectory destination has no groups")
        from ..writers.npy import NpyDirectory

        return NpyDirectory(dst, mode="x", attrs=attrs, static=static)
    from ..writers.zarr import ZarrStore

    return ZarrStore(dst, mode="x", group=group, attrs=attrs, static=static)


async def convert(traj: Trajectory, store: Any, capacity: int = 8) -> dict[str, Any]:
    """Write every frame of ``traj`` into ``store`` through a Sink.

    ``store`` gets the trajectory's dropped steps with its first batch (or at
    its commit when there is no frame). Returns counts and timings.
    """
    from .._sink import Sink

    timed = TimedStore(store, traj.dropped_steps.tolist())
    chunk = _frames_per_chunk(traj)
    names = list(traj.fields)
    t0 = time.perf_counter()
    async with Sink(timed, capacity=capacity, schema=traj.schema) as sink:
        for part in traj.iter_chunks(chunk):
            steps = part["steps"]
            times = part["times"]
            for i in range(len(steps)):
                # The chunk's arrays are never modified: lend them (copy=False).
                await sink.write(
                    {name: part[name][i] for name in names},
                    step=int(steps[i]),
                    time=None if times is None else float(times[i]),
                    copy=False,
                )
    stats = sink.statistics()
    return {
        "frames": stats.written,
        "bytes": stats.bytes_written,
        "seconds": time.perf_counter() - t0,
        "chunk_frames": chunk,
    }


def run(args: argparse.Namespace) -> int:
    import anyio

    src, dst = Path(args.src), Path(args.dst)
    src_fmt = detect(src)
    if dst.exists() or dst.is_symlink():
        raise StoreExistsError(
            f"destination {str(dst)!r} exists; convert never overwrites: pick a new path"
        )
    dst_fmt = args.format or ("zarr" if src_fmt == "npy" else "npy")
    src_group = args.group if src_fmt == "zarr" else None
    dst_group = args.group if dst_fmt == "zarr" else None
    if src_fmt == "npy" and dst_fmt == "npy" and args.group is not None:
        raise ConfigError(f"--group {args.group!r}: neither store is Zarr")
    traj = open_store(src, src_fmt, src_group)
    store = _make_store(dst_fmt, dst, dst_group, traj)
    result = anyio.run(convert, traj, store)
    back = open_store(dst, dst_fmt, dst_group)
    if len(back) != len(traj):  # pragma: no cover - a bug, not a user error
        raise AssertionError(f"converted {len(back)} frames of {len(traj)}")
    where = f"{str(dst)!r}" + (f", group={dst_group!r}" if dst_group else "")
    print(
        f"converted {result['frames']} frames ({human(result['bytes'])}) from {src} ({src_fmt}) "
        f"to {dst} ({dst_fmt}) in {result['seconds']:.2f} s; carried {len(traj.static)} static "
        f"arrays, {len(traj.attrs)} attrs, {len(traj.dropped_steps)} dropped steps"
    )
    print(f"read it   : snapsink.open({where})")
    return 0
