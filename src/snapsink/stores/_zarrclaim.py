"""Claiming a local directory for ZarrStore: what is there before zarr looks.

Runs in a worker thread from :meth:`ZarrStore.open`. It takes the group's
single-writer lock and tells apart a zarr group, the leftovers of an
interrupted first commit, and files that are not zarr's (which no mode ever
deletes); it also removes a group's own entries for ``mode="w"``, and checks
at each commit that the group is still there. Split from the writer so that
``zarr.py`` holds the store's life cycle only.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from zarr.abc.store import Store as ZarrStoreLike
from zarr.storage import LocalStore

from .._errors import FormatError, StoreExistsError
from ._lock import StoreLock, acquire_dir_lock
from ._zarrio import DurableLocalStore, is_leftover

__all__ = [
    "NODE_KEYS",
    "check_not_removed",
    "claim_group_dir",
    "claim_local_dir",
    "leftovers_only",
    "local_store",
    "names",
    "remove_tree_contents",
]

#: files that make a directory a zarr node (v3, and v2's for recognition)
NODE_KEYS = ("zarr.json", ".zgroup", ".zarray")


def local_store(store: ZarrStoreLike) -> tuple[ZarrStoreLike, Path | None]:
    """A LocalStore becomes a :class:`DurableLocalStore` on the same root (fsync
    before rename); the root, or None for any other store."""
    if isinstance(store, LocalStore):
        if not isinstance(store, DurableLocalStore):
            store = DurableLocalStore(store.root, read_only=store.read_only)
        return store, Path(store.root)
    return store, None


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


def leftovers_only(directory: Path) -> list[str] | None:
    """The relative paths of the temporary files under ``directory`` when it holds
    nothing else (empty directories aside); None if it holds anything else."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in filenames:
            if not is_leftover(name):
                return None
            found.append(os.path.relpath(os.path.join(dirpath, name), directory))
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                return None
    return sorted(found)


def claim_group_dir(root: Path, path: str, mode: str, who: str) -> StoreLock:
    """Take the single-writer lock of the group at ``path`` below ``root``, then
    say what its directory holds before zarr looks (worker thread).

    The lock is the directory itself (``flock``), not a file in it: zarr's
    readers warn about any file of the group that is not a node.

    Raises
    ------
    StoreLockedError
        Another writer holds the group.
    StoreExistsError, FormatError
        As :func:`claim_local_dir`; the lock is then released.
    """
    gdir = root / path if path else root
    if os.path.lexists(gdir) and not gdir.is_dir():
        claim_local_dir(gdir, mode, who)  # says what is there
    gdir.mkdir(parents=True, exist_ok=True)
    lock = acquire_dir_lock(str(gdir), who)
    try:
        claim_local_dir(gdir, mode, who)
    except BaseException:
        lock.release()
        raise
    return lock


def check_not_removed(root: Path, path: str, who: str) -> None:
    """Fail if the group at ``path`` below ``root`` vanished under the writer.

    Chunk writes recreate missing directories, so after someone removes the
    store the writer would carry on and rebuild a store whose earlier chunks
    are gone (read back as fill values): refuse to commit onto it instead.

    Raises
    ------
    FileNotFoundError
        The group's ``zarr.json`` is gone.
    """
    meta = (root / path if path else root) / "zarr.json"
    if not meta.is_file():
        raise FileNotFoundError(
            errno.ENOENT,
            f"{who}: the group's zarr.json vanished while writing (the store was "
            "removed or moved); refusing to commit onto a partial store",
            str(meta),
        )
