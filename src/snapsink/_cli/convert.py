"""``snapsink convert SRC DST``: NpyDirectory <-> ZarrStore, to or from HDF5, bit-exact.

A thin layer over :func:`snapsink.copy`: the source is read in chunks of
frames (about 64 MiB at a time) and written through a sink (policy block, so
nothing is dropped); steps, times, static arrays, attrs and dropped steps are
carried over. Memory stays bounded by about two chunks plus the sink's channel.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .._copy import copy, format_of_path
from .._errors import ConfigError, SnapsinkError, StoreExistsError
from .._reader import group_path
from .info import detect, disk_usage, human, local_path, open_store

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="copy a store into another format (NpyDirectory, Zarr, HDF5), bit-exact",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("src", help="the store to read")
    p.add_argument(
        "dst",
        help="the store to create; must not exist, unless it is a Zarr store that "
        "takes a new group (--to-group)",
    )
    p.add_argument(
        "--format",
        choices=("npy", "zarr", "hdf5"),
        help="the destination's format (default: what DST's name says, .zarr or "
        ".h5/.hdf5, else the other one: npy from Zarr or HDF5)",
    )
    p.add_argument(
        "--group",
        help="the group to read (SRC is Zarr or HDF5) and to write (DST is Zarr); "
        "default: the root, or the store's only snapsink group",
    )
    p.add_argument(
        "--to-group",
        help="the Zarr group to write in DST, when it differs from --group; DST may "
        "then be an existing Zarr store without that group: the group is added, "
        "nothing else in DST is touched",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    src, dst = local_path(args.src, "SRC"), local_path(args.dst, "DST")
    src_fmt = detect(src)
    dst_fmt = args.format or _default_format(dst, src_fmt)
    group = group_path(args.group) or None
    src_group = group if src_fmt in ("zarr", "hdf5") else None
    to_group = getattr(args, "to_group", None)
    dst_group = (group_path(to_group) or group) if dst_fmt in ("zarr", "hdf5") else None
    if src_fmt == "npy" and dst_fmt == "npy" and group is not None:
        raise ConfigError(f"--group {args.group!r}: an NpyDirectory has no groups")
    if to_group is not None and dst_fmt != "zarr":
        raise ConfigError(f"--to-group {to_group!r}: the destination is not Zarr ({dst_fmt})")
    if dst.exists() or dst.is_symlink():
        _check_adds_a_group(dst, dst_fmt, to_group)
    traj = open_store(src, src_fmt, src_group)
    t0 = time.perf_counter()
    try:
        frames = copy(traj, dst, format=dst_fmt, group=dst_group)
    except (SnapsinkError, OSError) as exc:
        # what copy did about a partial destination (its notes): one line each
        print(f"snapsink convert: error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):
            print(f"snapsink convert: {note}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    back = open_store(dst, dst_fmt, dst_group)
    if len(back) != len(traj):  # pragma: no cover - a bug, not a user error
        raise AssertionError(f"converted {len(back)} frames of {len(traj)}")
    where = f"{str(dst)!r}" + (f", group={dst_group!r}" if dst_group else "")
    # a Zarr group is a directory of its own; an HDF5 group lives in the file
    used, apparent = disk_usage(dst / dst_group if dst_group and dst_fmt == "zarr" else dst)
    print(
        f"converted {frames} frames ({human(used)} on disk, {human(apparent)} apparent) "
        f"from {src} ({src_fmt}) to {dst} ({dst_fmt}) in {seconds:.2f} s; carried "
        f"{len(traj.static)} static arrays, {len(traj.attrs)} attrs, "
        f"{len(traj.dropped_steps)} dropped steps"
    )
    print(f"read it   : snapsink.open({where})")
    return 0


def _default_format(dst: Path, src_fmt: str) -> str:
    """The destination's format when ``--format`` is not given: what its name
    says (``*.zarr``; ``*.h5``, ``*.hdf5``), else the other one (npy from Zarr
    or HDF5)."""
    named = format_of_path(str(dst))
    if named != "npy":
        return named
    return "zarr" if src_fmt == "npy" else "npy"


def _check_adds_a_group(dst: Path, dst_fmt: str, to_group: str | None) -> None:
    """An existing destination is taken only as a Zarr store that gains a group
    (``--to-group``); StoreExistsError otherwise, saying what to do."""
    if to_group is None or dst_fmt != "zarr":
        raise StoreExistsError(
            f"destination {str(dst)!r} exists; convert never overwrites: pick a new "
            "path (or add a group to an existing Zarr store with --to-group NAME)"
        )
    from .._reader import groups

    try:
        found = detect(dst) == "zarr"
    except Exception:
        found = False
    if not found:
        raise StoreExistsError(
            f"destination {str(dst)!r} exists and is not a Zarr store; --to-group adds "
            "a group to a Zarr store only"
        )
    existing = groups(dst)
    if to_group in existing:
        raise StoreExistsError(
            f"destination {str(dst)!r} already has group {to_group!r}; convert never "
            f"overwrites: pick another (it has {', '.join(map(repr, existing))})"
        )
