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
import json
import os
import re
import shutil
from pathlib import Path

from zarr.abc.store import Store as ZarrStoreLike
from zarr.storage import LocalStore

from .._checks import absolute_path
from .._errors import FormatError, StoreExistsError, StoreLockedError
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
    "zarr_tree",
]

#: files that make a directory a zarr node (v3, and v2's for recognition)
NODE_KEYS = ("zarr.json", ".zgroup", ".zarray")


def local_store(store: ZarrStoreLike) -> tuple[ZarrStoreLike, Path | None]:
    """A LocalStore becomes a :class:`DurableLocalStore` on the same root (fsync
    before rename), made absolute now as a path is (a relative root would
    follow a later ``os.chdir`` into another store); the root, or None for any
    other store."""
    if isinstance(store, LocalStore):
        root = absolute_path(os.fspath(store.root))
        if not isinstance(store, DurableLocalStore) or root != os.fspath(store.root):
            store = DurableLocalStore(root, read_only=store.read_only)
        return store, Path(root)
    return store, None


def names(found: list[str]) -> str:
    """At most five names, quoted, for an error message."""
    return ", ".join(map(repr, found[:5])) + (", ..." if len(found) > 5 else "")


def is_zarr_dir(path: Path) -> bool:
    """A directory that is a zarr node (array or group): it has a ``zarr.json``."""
    return path.is_dir() and not path.is_symlink() and (path / "zarr.json").is_file()


#: a chunk key's name in an array's directory: zarr v3's default encoding
#: (``c``, ``c.0.1``, or the directory ``c`` of ``c/0/1``) and v2's (``0.1``, ``0/1``)
_CHUNK_TOP = re.compile(r"c(\.\d+)*|\d+(\.\d+)*")
#: a name below a chunk key's first part (``c/0/1``: ``0``, ``1``)
_CHUNK_PART = re.compile(r"\d+(\.\d+)*")


def _is_array(node: Path) -> bool:
    """Whether the zarr node ``node`` (a directory with a ``zarr.json``) is an array
    (a node that cannot be read is taken for a group: only nodes may be below it)."""
    try:
        with open(node / "zarr.json", "rb") as fh:
            meta = json.loads(fh.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("node_type") == "array"


def zarr_tree(gdir: Path) -> tuple[list[str], list[Path]]:
    """What ``mode="w"`` would delete below the node ``gdir``, checked whole
    before anything is: the paths (relative to ``gdir``) of entries that are
    not zarr's, and the directories of the groups nested in it.

    zarr's entries are a node's ``zarr.json`` (and v2's node files at the top),
    the temporary files of an interrupted write, an array's chunk keys, and a
    group's member nodes (directories with a ``zarr.json``), recursively.
    Anything else (a file, a directory without ``zarr.json``, a symbolic link)
    is foreign, and names its path.
    """
    foreign: list[str] = []
    groups: list[Path] = []

    def chunks(d: Path, rel: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            here = f"{rel}/{entry.name}"
            if is_leftover(entry.name):
                continue
            if entry.is_symlink() or not _CHUNK_PART.fullmatch(entry.name):
                foreign.append(here)
            elif entry.is_dir():
                chunks(Path(entry.path), here)

    def node(d: Path, rel: str, top: bool) -> None:
        array = _is_array(d)
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            here = f"{rel}/{entry.name}" if rel else entry.name
            if entry.name == "zarr.json" or is_leftover(entry.name):
                continue
            if top and entry.name in NODE_KEYS:
                continue
            if entry.is_symlink():
                foreign.append(here)
            elif array and _CHUNK_TOP.fullmatch(entry.name):
                if entry.is_dir():
                    chunks(Path(entry.path), here)
            elif not array and is_zarr_dir(Path(entry.path)):
                groups.append(Path(entry.path))  # an array's directory is locked by no one
                node(Path(entry.path), here, False)
            else:
                foreign.append(here)

    node(gdir, "", True)
    return foreign, [g for g in groups if not _is_array(g)]


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
    if has_node and mode == "w":
        foreign = zarr_tree(gdir)[0]  # "w" deletes the whole tree: every level checked
    else:
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
    say what its directory holds before zarr looks (worker thread); for
    ``mode="w"`` on a zarr node, delete the node's entries (all zarr's, checked
    first).

    The lock is the directory itself (``flock``), not a file in it: zarr's
    readers warn about any file of the group that is not a node.

    Raises
    ------
    StoreLockedError
        Another writer holds the group, or (``"w"``) a group nested in it.
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
        if mode == "w" and any((gdir / name).is_file() for name in NODE_KEYS):
            _replace_node(root, gdir, who)
    except BaseException:
        lock.release()
        raise
    return lock


def _replace_node(root: Path, gdir: Path, who: str) -> None:
    """``mode="w"``: delete the entries of the node ``gdir`` (the caller holds its
    lock, and :func:`claim_local_dir` found only zarr's), while holding the lock
    of every group nested in it: a group another writer holds is refused, and
    nothing is deleted.

    Raises
    ------
    StoreLockedError
        Another writer holds a nested group (named, from ``root``).
    """
    held: list[StoreLock] = []
    try:
        for sub in zarr_tree(gdir)[1]:
            name = sub.relative_to(root).as_posix()
            try:
                held.append(acquire_dir_lock(str(sub), who, warn=False))
            except StoreLockedError as exc:
                holder = f"pid {exc.pid}" if exc.pid is not None else "another writer"
                raise StoreLockedError(
                    f"{who}: mode='w' would delete group {name!r}, which {holder} is "
                    f"writing (it holds a lock on {sub}); nothing was deleted: wait for "
                    "that writer to finish, stop it, or choose another group",
                    store=str(sub),
                    pid=exc.pid,
                ) from None
        remove_tree_contents(gdir)
    finally:
        for taken in held:
            taken.release()


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
