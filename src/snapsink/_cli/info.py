"""``snapsink info PATH``: describe a stored run."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, StoreNotFoundError
from .._reader import group_path
from .._trajectory import Trajectory

__all__ = ["add_parser", "describe", "detect", "run", "store_closed"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="describe a stored run (NpyDirectory, Zarr or HDF5)")
    p.add_argument("path", help="the store's directory (or HDF5 file)")
    p.add_argument(
        "--group", help="Zarr, HDF5: the group to describe (default: every snapsink group)"
    )
    p.set_defaults(handler=run)


def local_path(text: str, what: str) -> Path:
    """The path the command line was given; a URL is refused, whole (a Path
    made of ``s3://bkt/run.zarr`` reads ``s3:/bkt/run.zarr``)."""
    if "://" in text:
        raise ConfigError(
            f"{what} {text!r}: the command line reads stores on local paths; open a URL "
            "in Python: snapsink.open(url, storage_options={...})"
        )
    return Path(text)


def detect(path: str | os.PathLike[str]) -> str:
    """``"npy"``, ``"zarr"`` or ``"hdf5"``; one-line errors for anything else."""
    from ..stores._hdf5file import is_hdf5_file
    from ..stores.npy import is_npy_store

    p = Path(path)
    if not p.exists():
        raise StoreNotFoundError(f"{str(p)!r}: no such file or directory")
    if is_npy_store(p):
        return "npy"
    if p.is_file() and is_hdf5_file(p):
        return "hdf5"
    from ..stores.zarr import is_zarr_store

    if is_zarr_store(p):
        return "zarr"
    raise FormatError(
        f"{str(p)!r} is not a snapsink store: expected an NpyDirectory (metadata.json), "
        "a Zarr v3 store (zarr.json) or an HDF5 file"
    )


def open_store(path: str | os.PathLike[str], fmt: str, group: str | None) -> Trajectory:
    """The trajectory of ``group`` (slashes around it ignored); without one, the
    root, or the store's only snapsink group, as :func:`snapsink.open` picks it.

    Raises
    ------
    FormatError
        No group given, and several snapsink groups and none at the root: the
        message lists them.
    """
    group = group_path(group)
    if fmt == "npy":
        if group:
            raise ConfigError(f"--group {group!r}: an NpyDirectory has no groups")
        from ..stores.npy import open_npy

        return open_npy(path)
    if fmt == "hdf5":
        from ..stores._hdf5read import list_hdf5_groups, open_hdf5

        return open_hdf5(path, _only_group(path, list_hdf5_groups(path), group))
    from ..stores.zarr import list_groups, open_zarr

    return open_zarr(path, _only_group(path, list_groups(path), group))


def _only_group(path: str | os.PathLike[str], found: list[str], group: str | None) -> str | None:
    """``group``, or for ``None`` the only snapsink group ``found`` (the root when
    it is one of them)."""
    if group is not None or "" in found or not found:
        return group or None
    if len(found) > 1:
        names = ", ".join(map(repr, found))
        raise FormatError(
            f"{os.fspath(path)!r} holds several snapsink groups ({names}) and none at "
            "its root: pass --group NAME"
        )
    return found[0]


def store_closed(traj: Trajectory) -> bool | None:
    """The writer's closed flag, or ``None`` if the format does not record it."""
    return traj.closed


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent bytes) of every file under ``path``."""
    used = apparent = 0
    if path.is_file():
        st = path.stat()
        return st.st_blocks * 512, st.st_size
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            used += st.st_blocks * 512
            apparent += st.st_size
    return used, apparent


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ranges(steps: np.ndarray[Any, Any], limit: int = 6) -> str:
    """``1-4, 9, 12-15`` for sorted steps, cut after ``limit`` runs."""
    if not steps.size:
        return ""
    breaks = np.flatnonzero(np.diff(steps) != 1) + 1
    runs = []
    for chunk in np.split(steps, breaks)[:limit]:
        a, b = int(chunk[0]), int(chunk[-1])
        runs.append(str(a) if a == b else f"{a}-{b}")
    more = len(breaks) + 1 - limit
    return ", ".join(runs) + (f", ... ({more} more runs)" if more > 0 else "")


def describe(traj: Trajectory) -> list[str]:
    """Lines describing one trajectory (schema, frames, steps, times, ...)."""
    lines = []
    closed = store_closed(traj)
    state = {
        True: "closed cleanly",
        False: "NOT closed cleanly (still being written, or the writer died): "
        "the committed frames read back",
        None: "closed flag unknown",
    }[closed]
    n = len(traj)
    lines.append(f"frames     : {n}")
    lines.append(f"state      : {state}")
    if traj.fields:
        lines.append("schema     :")
        width = max(len(name) for name in traj.fields)
        for name, f in traj.fields.items():
            shape = "(" + ", ".join("rows" if d is None else str(d) for d in f.shape)
            shape += ",)" if len(f.shape) == 1 else ")"
            kind = "ragged" if f.ragged else ("scalar" if not f.shape else "")
            lines.append(f"  {name:<{width}}  {f.dtype!s:<9} {shape:<16} {kind}".rstrip())
    else:
        lines.append("schema     : none yet (no frame was written)")
    if n:
        steps = traj.steps
        lines.append(f"steps      : {int(steps[0])} .. {int(steps[-1])}")
        times = traj.times
        lines.append(
            "times      : none"
            if times is None
            else f"times      : {float(times[0]):g} .. {float(times[-1]):g}"
        )
    dropped = traj.dropped_steps
    lines.append(
        f"dropped    : {len(dropped)} steps"
        + (f" ({_ranges(np.asarray(dropped))})" if len(dropped) else "")
    )
    static = traj.static
    if static:
        parts = [f"{k} {v.dtype}{list(v.shape)}" for k, v in static.items()]
        lines.append(f"static     : {', '.join(parts)}")
    else:
        lines.append("static     : none")
    attrs = traj.attrs
    lines.append(f"attrs      : {', '.join(attrs) if attrs else 'none'}")
    return lines


def run(args: argparse.Namespace) -> int:
    path = local_path(args.path, "PATH")
    fmt = detect(path)
    # every check that can fail comes before the first line is printed
    groups: list[str] = []
    if fmt == "npy":
        if args.group is not None:
            raise ConfigError(f"--group {args.group!r}: an NpyDirectory has no groups")
    elif fmt == "hdf5":
        from ..stores._hdf5read import list_hdf5_groups

        groups = list_hdf5_groups(path)
    else:
        from ..stores._zarrread import list_groups

        groups = list_groups(path)
    if fmt != "npy" and args.group is not None:
        target = args.group.strip("/")
        if target not in groups:
            known = ", ".join(repr(g or "/") for g in groups) or "none"
            raise StoreNotFoundError(
                f"--group {args.group!r}: no snapsink group there (groups: {known})"
            )
        groups = [target]
    foreign = None
    if fmt == "hdf5" and not groups and args.group is None:
        # an H5MD file another program wrote (MDAnalysis, ...): snapsink reads it
        with contextlib.suppress(FormatError, StoreNotFoundError):
            foreign = open_store(path, fmt, None)
    if fmt != "npy" and not groups and foreign is None:
        kind = "an HDF5 file" if fmt == "hdf5" else "a Zarr store"
        raise FormatError(f"{str(path)!r}: {kind} with no snapsink group")
    # every run read and described (a damaged one fails here) before the first line
    runs: list[tuple[str, list[str]]]
    if fmt == "npy":
        runs = [("", describe(open_store(path, fmt, None)))]
    elif foreign is not None:
        runs = [("", describe(foreign))]
    else:
        runs = [(g, describe(open_store(path, fmt, g or None))) for g in groups]
    used, apparent = disk_usage(path)
    title = {"npy": "NpyDirectory (snapsink-npy)", "zarr": "Zarr v3 store", "hdf5": "HDF5 file"}
    print(f"{path}: {title[fmt]}")
    print(f"size       : {human(used)} on disk ({human(apparent)} apparent)")
    if fmt == "npy":
        for line in runs[0][1]:
            print(line)
        return 0
    if args.group is None:
        print(f"groups     : {', '.join(g or '/' for g in groups) or 'none'}")
    if foreign is not None:
        print("layout     : H5MD written by another program (no snapsink group)")
        for line in runs[0][1]:
            print(line)
        return 0
    for g, lines in runs:
        if len(groups) > 1 or args.group is not None:
            if fmt == "hdf5":  # groups share the file: no size of their own
                print(f"[group {g or '/'}]")
            else:
                gused, _ = disk_usage(path / g) if g else (used, apparent)
                print(f"[group {g or '/'}] ({human(gused)} on disk)")
        for line in lines:
            print(("  " if len(groups) > 1 else "") + line)
    return 0
