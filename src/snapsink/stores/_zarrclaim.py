"""Claiming a local directory for ZarrStore: what is there before zarr looks.

Runs in a worker thread from :meth:`ZarrStore.open`. It tells apart a zarr
group, the leftovers of an interrupted first commit, and files that are not
zarr's (which no mode ever deletes); it also removes a group's own entries for
``mode="w"``. Split from the writer so that ``zarr.py`` holds the store's life
cycle only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .._errors import FormatError, StoreExistsError
from ._zarrio import is_leftover, leftovers_only

__all__ = ["NODE_KEYS", "claim_local_dir", "names", "remove_tree_contents"]

#: files that make a directory a zarr node (v3, and v2's for recognition)
NODE_KEYS = ("zarr.json", ".zgroup", ".zarray")


def names(found: list[str]) -> str:
    """At most five names, quoted, for an error message."""
    return ", ".join(map(repr, found[:5])) + (", ..." if len(found) > 5 else "")


def is_zarr_dir(path: Path) -> bool:
    """A directory that is a zarr node (array or group): it has a ``zarr.json``."""
    return path.is_dir() and not path.is_symlink() and (path / "zarr.json").is_file()


def remove_tree_contents(target: Path) -> None:
    """Delete what is inside ``target`` (zarr's entries only, checked by the caller)."""
    if not target.is_dir():
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def claim_local_dir(gdir: Path, mode: str, who: str) -> None:
    """Look at the group's directory ``gdir`` before zarr does, and say what is there.

    - the leftovers (``*.<hex>.partial``) of a first commit that was
      interrupted, and nothing else: ``"w"``/``"a"`` remove them and start
      afresh, ``"x"`` names them;
    - files or directories that are not zarr's (no ``zarr.json`` in them):
      refused in every mode (``"w"`` never deletes them).

    Raises
    ------
    StoreExistsError
        ``gdir`` is not a directory; ``"x"`` on leftovers; ``"x"``/``"w"`` on a
        directory holding files that are not zarr's.
    FormatError
        ``"a"`` on a non-empty directory that holds no zarr group.
    """
    if os.path.lexists(gdir) and not gdir.is_dir():
        raise StoreExistsError(f"{who}: {str(gdir)!r} exists and is not a directory")
    if not gdir.is_dir():
        return
    entries = sorted(os.listdir(gdir))
    has_node = any(name in entries for name in NODE_KEYS)
    leftovers = leftovers_only(gdir) if entries and not has_node else None
    if leftovers is not None:
        if mode == "x":
            raise StoreExistsError(
                f"{who}: {str(gdir)!r} holds only the leftovers of a first commit that "
                f"was interrupted ({names(leftovers)}; temporary files, no zarr node and no "
                "frames committed); pass mode='w' or mode='a' to remove them and start afresh"
            )
        remove_tree_contents(gdir)
        return
    foreign = [
        e for e in entries
        if e not in NODE_KEYS and not is_leftover(e) and not is_zarr_dir(gdir / e)
    ]  # fmt: skip
    if not foreign:
        return
    shown = names(foreign)
    if not has_node:
        msg = (
            f"{who}: {str(gdir)!r} is not empty and holds no zarr group (it holds "
            f"{shown}); refusing to write into it: give an empty or new directory"
        )
        if mode == "a":
            raise FormatError(msg)
        raise StoreExistsError(msg)
    if mode == "w":
        raise StoreExistsError(
            f"{who}: mode='w': {str(gdir)!r} holds files that are not part of the zarr "
            f"store ({shown}); refusing to delete them: move them away or choose "
            "another directory or group"
        )
