"""Claiming a directory for NpyDirectory: what is there before the store writes.

Runs from :meth:`NpyDirectory.open` (and before each commit). It tells apart
an empty directory, a snapsink-npy store and files that are not the store's
(which no mode ever deletes); it removes a store's own files for
``mode="w"``, finds the static arrays ``mode="a"`` adds, and checks that the
path still names the directory the writer opened. Split from the writer, as
``_zarrclaim`` is from the Zarr store, so that ``npy.py`` holds the store's
life cycle.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, StoreExistsError
from .._schema import check_name
from ._common import check_stored_static
from ._lock import LOCK_NAME
from ._npyfile import GrowableNpyFile, fsync_dir, load_static, read_metadata
from ._npyformat import METADATA, METADATA_TMP, STATIC_DIR, Metadata, data_files

__all__ = [
    "check_same_dir",
    "refuse_foreign",
    "remove_store",
    "scan_store_dir",
    "static_to_add",
    "store_entries",
]


def _names(found: list[str]) -> str:
    """At most five names, quoted, for an error message."""
    return ", ".join(map(repr, found[:5])) + (", ..." if len(found) > 5 else "")


def store_entries(path: str) -> list[str]:
    """The directory's entries that a writer must account for: not the lock
    file, not the temp file a writer killed in its very first commit leaves
    (no store was ever committed then, and the file is the store's own)."""
    entries = sorted(e for e in os.listdir(path) if e != LOCK_NAME)
    return [] if entries == [METADATA_TMP] else entries


def refuse_foreign(path: str, entries: list[str], mode: str) -> None:
    """Refuse a non-empty directory with no ``metadata.json``: not a store.

    Raises
    ------
    FormatError
        With ``mode="a"``.
    StoreExistsError
        With ``"x"`` or ``"w"``.
    """
    if entries and METADATA not in entries:
        if mode == "a":
            raise FormatError(
                f"{path!r} holds files but no {METADATA}: not a snapsink-npy store; "
                "give an empty or new directory"
            )
        raise StoreExistsError(
            f"{path!r} is not empty and is not a snapsink store (it holds "
            f"{_names(entries)}); refusing to write into it: give an empty or new directory"
        )


def remove_store(path: str, entries: list[str]) -> None:
    """Delete an existing store's files for ``mode="w"``, refusing foreign files.

    Raises
    ------
    FormatError
        The store's metadata cannot be read (nothing is deleted).
    StoreExistsError
        The directory holds files that are not the store's (nothing is deleted).
    """
    try:
        meta = read_metadata(path)
    except FormatError as exc:
        raise FormatError(
            f"mode='w': {exc}; refusing to replace a store that cannot be read: remove it by hand"
        ) from exc
    foreign, static_files = scan_store_dir(path, entries, meta)
    if foreign:
        raise StoreExistsError(
            f"mode='w': {path!r} holds files that are not part of the store "
            f"({_names(foreign)}); "
            "refusing to delete them: move them away or choose another directory"
        )
    # metadata.json last: a crash midway still leaves a store "w" can replace.
    for e in entries:
        if e not in (METADATA, STATIC_DIR):
            os.remove(os.path.join(path, e))
    for e in static_files:
        os.remove(os.path.join(path, STATIC_DIR, e))
    if os.path.isdir(sdir := os.path.join(path, STATIC_DIR)):
        os.rmdir(sdir)
    os.remove(os.path.join(path, METADATA))
    fsync_dir(path)


def scan_store_dir(path: str, entries: list[str], meta: Metadata) -> tuple[list[str], list[str]]:
    """Sort the entries of a store directory for ``mode="w"``.

    Returns
    -------
    tuple
        ``(foreign, static_files)``: the entries the layout of ``meta`` does not
        own (never to be deleted), and the ``static/<name>.npy`` files it does.
    """
    owned = {METADATA, METADATA_TMP, LOCK_NAME, "steps.npy", "times.npy", STATIC_DIR}
    if meta.schema is not None:
        owned.update(f"{key}.npy" for key, _, _ in data_files(meta.schema, times=True))
    foreign = [e for e in entries if e not in owned]
    foreign += [
        e
        for e in entries
        if e != STATIC_DIR and e in owned and not os.path.isfile(os.path.join(path, e))
    ]
    sdir = os.path.join(path, STATIC_DIR)
    static_files: list[str] = []
    if os.path.lexists(sdir):
        if os.path.islink(sdir) or not os.path.isdir(sdir):
            foreign.append(STATIC_DIR)
            return foreign, static_files
        for e in sorted(os.listdir(sdir)):
            stem, ext = os.path.splitext(e)
            try:
                check_name(stem, "static")
                ok = ext == ".npy" and os.path.isfile(os.path.join(sdir, e))
            except ConfigError:
                ok = False
            if ok:
                static_files.append(e)
            else:
                foreign.append(f"{STATIC_DIR}/{e}")
    return foreign, static_files


def static_to_add(
    path: str, meta: Metadata, static: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of ``static`` that the store at ``path`` does not hold yet
    (``mode="a"``); one it holds must be equal.

    Raises
    ------
    ConfigError
        The store holds a different array under one of the names.
    """
    new = {}
    for name, arr in static.items():
        if name in meta.static:
            check_stored_static(name, load_static(path, name), arr)
        else:
            new[name] = arr
    return new


def check_same_dir(path: str, dir_fd: int) -> None:
    """Fail unless ``path`` still names the directory opened as ``dir_fd``.

    Someone may delete and recreate the directory while the writer runs; a
    commit then would name frames that are not on disk. The writer holds
    ``dir_fd`` since ``open()``, so the directory's inode cannot be reused.

    Raises
    ------
    FileNotFoundError
        The directory was deleted (or moved away).
    FormatError
        The directory was replaced.
    """
    st = os.fstat(dir_fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        now = None
    if now is None:
        raise FileNotFoundError(
            errno.ENOENT,
            f"the store directory {path!r} was deleted (or moved) while the store was "
            "writing it; refusing to commit frames that are not there",
            path,
        )
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FormatError(
            f"the store directory {path!r} was replaced by another directory while the "
            "store was writing it; refusing to commit frames that are not there (the "
            "new directory is left as it is)"
        )


def check_ragged_ends(files: Mapping[str, GrowableNpyFile], meta: Metadata) -> None:
    """On resume: each ragged field's offsets end where the metadata says its
    committed rows end.

    Raises
    ------
    FormatError
        They disagree (a file changed behind the store's back).
    """
    assert meta.schema is not None
    for name in meta.schema.ragged:
        off = files[f"{name}.offsets"]
        end = int(off.read_row(meta.count)[()])
        if end != meta.rows[name]:
            raise FormatError(
                f"{off.path}: offsets end at row {end}, {METADATA} says {meta.rows[name]}"
            )
