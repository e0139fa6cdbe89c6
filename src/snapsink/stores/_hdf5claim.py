"""Claiming a group of an HDF5 file for HDF5Store.open: what the file and the
group hold, decided by mode; a new group made; an existing one read back.

Runs under the file's session lock, from :meth:`HDF5Store.open`. It tells
apart a file snapsink may write (an HDF5 file of the latest format), a file of
another program, an empty or missing group, a snapsink group and a group of
foreign objects (which no mode replaces), and for ``mode="a"`` reads the group
back (metadata, attrs, commit record, dropped steps, datasets). Split from
``hdf5.py`` so that it holds the store's life cycle only (as ``_zarrclaim``
does for ZarrStore).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import FormatError, StoreExistsError
from .._store import Resume
from ._common import check_stored_static
from ._format import StepRanges, parse_step_ranges
from ._hdf5columns import Column, load_columns
from ._hdf5file import HDF5_SIGNATURE, clear_open_flags, import_h5py
from ._hdf5md import H5MD_ROOTS
from ._hdf5plan import (
    ATTRS_ATTR,
    COMMIT,
    DROPPED,
    DROPPED_CHUNK,
    META_ATTR,
    STATIC_GROUP,
    CommitRecord,
    GroupMeta,
    parse_commit,
    parse_group_meta,
    parse_user_attrs,
)
from ._hdf5session import StoreFile

__all__ = ["Claimed", "claim_group"]


@dataclass(slots=True)
class Claimed:
    """What :func:`claim_group` found: a new group's defaults, or what a
    resumed group holds."""

    attrs: dict[str, Any]  # the user's attrs, as now stored
    meta: GroupMeta = field(default_factory=GroupMeta)
    dropped: StepRanges = field(default_factory=StepRanges)
    count: int = 0  # committed frames
    columns: dict[str, Column] = field(default_factory=dict)
    resume: Resume | None = None


def claim_group(
    sf: StoreFile,
    mode: str,
    *,
    attrs: dict[str, Any],
    static: dict[str, np.ndarray[Any, Any]],
    h5md: bool,
) -> Claimed:
    """Under the session lock: create, replace or reopen the store's group,
    by ``mode`` and what the file holds (``h5md``: the store writes an H5MD
    tree, of which a file holds one).

    Raises
    ------
    StoreExistsError
        ``"x"`` on an existing group; ``"x"`` or ``"w"`` on a file or group
        that is not snapsink's.
    FormatError
        ``"a"`` on a file or group that is not a snapsink store, or corrupt.
    ConfigError
        A static array differs from the stored one.
    """
    h5py = import_h5py()
    sf.remove_leftovers()
    if sf.size() == 0 or _replace_old_file(sf, mode, h5py):
        return _create_file(sf, attrs, static)
    clear_open_flags(sf.fd, sf.where)
    kind = sf.inspect(h5py)
    if h5md:
        _claim_h5md(sf, mode, kind)
    if kind == "missing":
        return _create_group(sf, attrs, static)
    if kind == "empty" and mode != "w":
        return _create_group(sf, attrs, static, adopt=True)
    _refuse(sf.where, mode, kind)
    if mode == "w":
        if not sf.group:
            return _create_file(sf, attrs, static)
        with sf.file(swmr=False, locked=True) as f:
            del f[sf.group]
        return _create_group(sf, attrs, static)
    return _resume(sf, h5py, attrs, static)


def _replace_old_file(sf: StoreFile, mode: str, h5py: Any) -> bool:
    """Whether a non-empty file is to be made again: only a snapsink root
    written in an old format, with ``"w"``; False for a file snapsink may
    write groups into.

    Raises
    ------
    StoreExistsError or FormatError
        The file is no HDF5 file, or another program's in a format without
        SWMR support.
    """
    where = sf.where
    if os.pread(sf.fd, 8, 0) != HDF5_SIGNATURE:
        if mode == "a":
            raise FormatError(f"{where}: the file exists and is not an HDF5 file")
        raise StoreExistsError(
            f"{where}: the file exists and is not an HDF5 file; refusing to overwrite "
            "it: remove it or choose another path"
        )
    if os.pread(sf.fd, 9, 0)[8] >= 2:
        return False
    # superblock 0/1: written without SWMR support (by another program)
    if mode == "w" and not sf.group and sf.root_is_ours(h5py):
        return True
    raise (FormatError if mode == "a" else StoreExistsError)(
        f"{where}: the file was written by another HDF5 program in a format "
        "without SWMR support (superblock version < 2); snapsink writes groups "
        "only into files it created: choose another file"
    )


def _refuse(where: str, mode: str, kind: str) -> None:
    """Refuse an existing group that ``mode`` may not take (``kind``: what
    :meth:`StoreFile.inspect` found)."""
    if mode == "x":
        raise StoreExistsError(
            f"{where}: the group already exists; pass mode='w' to replace it or "
            "mode='a' to append to it"
        )
    if kind == "foreign":
        raise (FormatError if mode == "a" else StoreExistsError)(
            f"{where}: the group holds HDF5 objects that are not a snapsink store; "
            "refusing to "
            + ("append to" if mode == "a" else "replace")
            + " it: choose another group or file"
        )


def _claim_h5md(sf: StoreFile, mode: str, kind: str) -> None:
    """An H5MD file holds one run: refuse a new group where an H5MD tree
    is; with ``"w"``, remove the replaced run's tree (``/h5md``,
    ``/particles``, ``/observables``)."""
    with sf.file(swmr=False, locked=True) as f:
        found = [p for p in H5MD_ROOTS if p in f]
        if kind in ("missing", "empty") and found and mode != "w":
            raise StoreExistsError(
                f"{sf.where}: the file already holds an H5MD run ({', '.join(found)}); an "
                "H5MD file holds one run: choose another file, or mode='w' to replace it"
            )
        if mode == "w" and kind in ("missing", "empty", "snapsink"):
            for p in found:
                del f[p]


def _create_file(
    sf: StoreFile, attrs: dict[str, Any], static: Mapping[str, np.ndarray[Any, Any]]
) -> Claimed:
    """A new file holding the new group, made whole before the path names it
    (:meth:`StoreFile.remake`): a kill leaves the empty file, or the old one
    that ``mode="w"`` replaces, never a torn one. Where another writer already
    holds the (empty) file, for a group of its own, it is made in place: a
    remade file would leave that writer holding a file no path names."""
    claimed = Claimed(attrs)
    if sf.shared_with_others():
        sf.new_file()
        with sf.file(swmr=False, locked=True) as f:
            _lay_out(f, sf.group, claimed, static)
    else:
        sf.remake(lambda f: _lay_out(f, sf.group, claimed, static))
    return claimed


def _create_group(
    sf: StoreFile,
    attrs: dict[str, Any],
    static: Mapping[str, np.ndarray[Any, Any]],
    *,
    adopt: bool = False,
) -> Claimed:
    """A new group in the file as it is (``adopt``: an existing empty one). A
    file of other groups is not remade (their writers hold it): a kill inside
    this session is HDF5's window (see ``docs/formats/hdf5.md``)."""
    claimed = Claimed(attrs)
    with sf.file(swmr=False, locked=True) as f:
        _lay_out(f, sf.group, claimed, static, adopt=adopt)
    return claimed


def _lay_out(
    f: Any,
    group: str,
    claimed: Claimed,
    static: Mapping[str, np.ndarray[Any, Any]],
    *,
    adopt: bool = False,
) -> None:
    """The group in file ``f``: metadata, attrs, the dropped-steps dataset,
    static arrays, then the commit record."""
    grp = (f.require_group(group) if adopt else f.create_group(group)) if group else f
    grp.attrs[META_ATTR] = claimed.meta.to_text()
    grp.attrs[ATTRS_ATTR] = attrs_text(claimed.attrs)
    grp.create_dataset(DROPPED, (0, 2), np.int64, maxshape=(None, 2), chunks=(DROPPED_CHUNK, 2))
    _write_static(grp, static)
    grp.create_dataset(COMMIT, data=CommitRecord().to_array())


def _write_static(grp: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
    if not arrays:
        return
    sg = grp.require_group(STATIC_GROUP)
    for name, arr in arrays.items():
        sg.create_dataset(name, data=arr)


def _resume(
    sf: StoreFile, h5py: Any, attrs: dict[str, Any], static: Mapping[str, np.ndarray[Any, Any]]
) -> Claimed:
    """``mode="a"`` on a snapsink group: read it back and reopen its columns."""
    where = sf.where
    with sf.file(swmr=False, locked=True) as f:
        grp = sf.group_of(f)
        meta = parse_group_meta(grp.attrs.get(META_ATTR), where)
        user = parse_user_attrs(grp.attrs.get(ATTRS_ATTR), where)
        record, ranges = _read_commit(grp, where)
        if record.count and meta.schema is None:
            raise FormatError(f"{where}: {record.count} frames but no schema")
        _write_static(grp, _new_static(grp, static))
        claimed = Claimed({**user, **attrs}, meta, StepRanges(ranges), record.count)
        grp.attrs[ATTRS_ATTR] = attrs_text(claimed.attrs)
        if record.closed:  # open again
            grp[COMMIT][...] = CommitRecord(record.count, record.runs, False).to_array()
        if meta.schema is None:
            return claimed
        claimed.columns = load_columns(
            h5py, grp, meta.schema, times=bool(meta.times), count=record.count, where=where
        )
        if not record.count:
            claimed.resume = Resume(schema=meta.schema, count=0)
            return claimed
        last = record.count - 1
        last_step = int(grp["steps"][last])
        last_time = float(grp["times"][last]) if meta.times else None
    claimed.resume = Resume(meta.schema, record.count, last_step, last_time, bool(meta.times))
    return claimed


def _read_commit(grp: Any, where: str) -> tuple[CommitRecord, list[list[int]]]:
    """The commit record and the dropped-step runs it names."""
    if COMMIT not in grp or DROPPED not in grp:
        raise FormatError(f"{where}: {COMMIT!r} or {DROPPED!r} is missing")
    record = parse_commit(grp[COMMIT][...], where)
    runs = np.asarray(grp[DROPPED][: record.runs], np.int64)
    if runs.shape != (record.runs, 2):
        raise FormatError(f"{where}: {DROPPED!r} holds fewer than {record.runs} runs")
    ranges = parse_step_ranges(runs.tolist(), lambda m: FormatError(f"{where}: {m}"))
    return record, ranges


def _new_static(
    grp: Any, static: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    """The static arrays the group lacks; those it holds must be equal.

    Raises
    ------
    ConfigError
        A static array differs from the stored one.
    """
    sg = grp.get(STATIC_GROUP)
    new = {}
    for name, arr in static.items():
        if sg is None or name not in sg:
            new[name] = arr
            continue
        check_stored_static(name, np.asarray(sg[name][...]), arr)
    return new


def attrs_text(obj: Mapping[str, Any]) -> str:
    """The user's attrs as the group's ``attrs`` attribute (JSON text)."""
    return json.dumps(dict(obj), allow_nan=False, separators=(",", ":"))
