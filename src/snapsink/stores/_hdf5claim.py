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

from .._errors import FormatError, StoreExistsError, StoreLockedError
from .._store import Resume
from ._common import check_stored_static
from ._format import StepRanges, parse_step_ranges
from ._hdf5columns import Column, load_columns
from ._hdf5file import HDF5_SIGNATURE, FileLocks, clear_open_flags, import_h5py
from ._hdf5md import H5MD_ROOTS, check_stored_units
from ._hdf5plan import (
    ATTRS_ATTR,
    COMMIT,
    DROPPED,
    DROPPED_CHUNK,
    META_ATTR,
    STATIC_GROUP,
    CommitRecord,
    GroupMeta,
    is_snapsink_attr,
    parse_commit,
    parse_group_meta,
    parse_user_attrs,
)
from ._hdf5session import METADATA_ROOM, StoreFile
from ._zarrplan import plan_arrays

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
    units: Mapping[str, str] | None = None,
) -> Claimed:
    """Under the session lock: create, replace or reopen the store's group,
    by ``mode`` and what the file holds (``h5md``: the store writes an H5MD
    tree, of which a file holds one).

    Raises
    ------
    StoreExistsError
        ``"x"`` on an existing group; ``"x"`` or ``"w"`` on a file or group
        that is not snapsink's (``"w"``: anything below it); a group path
        through a dataset or inside a run at a name it holds.
    StoreLockedError
        ``"w"``: another writer holds a run nested in the group.
    FormatError
        ``"a"`` on a file or group that is not a snapsink store, or corrupt.
    ConfigError
        A static array differs from the stored one; ``units`` that differ
        from the stored ones (``"a"``).
    """
    h5py = import_h5py()
    sf.remove_leftovers()
    if sf.size() == 0 or _replace_old_file(sf, mode, h5py):
        return _create_file(sf, attrs, static)
    clear_open_flags(sf.fd, sf.where)
    # Everything is checked before anything is deleted or made.
    with sf.file(swmr=False, locked=True) as f:
        kind = _inspect(f, h5py, sf.group, sf.where)
        if kind not in ("missing", "empty") or mode == "w":
            _refuse(sf.where, mode, kind)
        plan = _plan_replace(f, h5py, sf.group, sf.where, kind) if mode == "w" else _Replace()
        if h5md or plan.tree:
            _claim_h5md(f, sf.where, mode, kind, plan, h5md=h5md)
        if mode == "a" and kind == "snapsink" and units:
            check_stored_units(sf.group_of(f), units, sf.where)
    if kind == "missing":
        return _create_group(sf, attrs, static)
    if kind == "empty" and mode != "w":
        return _create_group(sf, attrs, static, adopt=True)
    if mode != "w":
        return _resume(sf, h5py, attrs, static)
    locks = sf.locks
    _hold_nested(locks, plan.nested, sf.where)
    try:
        if not sf.group:
            return _create_file(sf, attrs, static)
        with sf.file(swmr=False, locked=True) as f:
            for p in plan.tree if plan.tree_owned else ():
                del f[p]
            del f[sf.group]
        return _create_group(sf, attrs, static)
    finally:
        for g in plan.nested:
            locks.unhold(g)


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
    if mode == "x" and kind != "foreign":
        raise StoreExistsError(
            f"{where}: the group already exists; pass mode='w' to replace it or "
            "mode='a' to append to it"
        )
    if kind == "foreign":
        raise (FormatError if mode == "a" else StoreExistsError)(
            f"{where}: the group's path holds HDF5 objects that are not a snapsink "
            "store (a dataset, or a group of another program's); refusing to "
            + {"a": "append to", "w": "replace", "x": "write into"}[mode]
            + " it: choose another group or file"
        )


@dataclass(slots=True)
class _Replace:
    """What ``mode="w"`` on a snapsink group deletes besides its own datasets."""

    nested: list[str] = field(default_factory=list)  # snapsink groups inside it
    tree: list[str] = field(default_factory=list)  # the file's H5MD roots
    tree_owned: bool = False  # every dataset of the tree is one of the group's


def _inspect(f: Any, h5py: Any, group: str, where: str) -> str:
    """``"missing"``, ``"empty"``, ``"snapsink"`` or ``"foreign"``: what is at
    ``group`` in the open file ``f``.

    Raises
    ------
    StoreExistsError
        A group on the way is a dataset (no group can be made inside it), or
        the group would be made inside a snapsink run at a name that run holds
        or may hold (its ``steps``, ``times``, ``static``, a field).
    """
    parts = group.split("/") if group else []
    node = f
    for i, part in enumerate(parts):
        here = "/".join(parts[:i]) or "/"
        if is_snapsink_attr(node.attrs.get(META_ATTR)):
            taken = _run_names(node)
            if part in (taken or ()) or (taken is None and part not in node):
                raise StoreExistsError(
                    f"{where}: group {group!r} would be made inside the snapsink run at "
                    f"{here!r}, at {part!r}, a name that run holds or may hold (its steps, "
                    "times, static arrays and fields): choose a group outside that run"
                )
        child = node.get(part)
        if child is None:
            return "missing"
        if not isinstance(child, h5py.Group):
            at = "/".join(parts[: i + 1])
            if at == group:
                return "foreign"
            raise StoreExistsError(
                f"{where}: {at!r} is a dataset, not a group: group {group!r} cannot be made "
                "inside it; choose another group"
            )
        node = child
    if is_snapsink_attr(node.attrs.get(META_ATTR)):
        return "snapsink"
    return "empty" if not len(node) and not len(node.attrs) else "foreign"


_RUN_NAMES = frozenset({COMMIT, DROPPED, "steps", "times", STATIC_GROUP})


def _run_names(grp: Any) -> frozenset[str] | None:
    """The names a snapsink run holds or will hold in its group: the commit
    record, dropped steps, steps, times, static, its fields and offsets
    (None when its metadata is unreadable, a corrupt group: any name)."""
    try:
        meta = parse_group_meta(grp.attrs.get(META_ATTR), "")
    except FormatError:
        return None
    if meta.schema is None:
        return _RUN_NAMES
    names = {p.name for p in plan_arrays(meta.schema, times=True)}
    return _RUN_NAMES | names


def _plan_replace(f: Any, h5py: Any, group: str, where: str, kind: str) -> _Replace:
    """``mode="w"`` on the snapsink group ``group``: what would be deleted,
    checked whole first (every level below the group). A run's own datasets,
    the snapsink groups nested in it (another run each: their claims are
    taken before anything is deleted) and the plain groups holding them go;
    anything else (a user's dataset or group, a link) is refused, and nothing
    is deleted.

    Raises
    ------
    StoreExistsError
        Objects below the group that are no snapsink store's (named).
    """
    plan = _Replace()
    foreign: list[str] = []
    owned: set[int] = set()
    if kind != "snapsink":  # nothing below it: only the file's H5MD tree to look at
        plan.tree = [p for p in H5MD_ROOTS if p in f]
        plan.tree_owned = _tree_within(f, h5py, plan.tree, owned)
        return plan
    top = f[group] if group else f

    def run(grp: Any, rel: str) -> None:
        taken = _run_names(grp)
        for name in grp:
            here = f"{rel}/{name}" if rel else name
            if not rel and not group and name in H5MD_ROOTS:
                plan.tree.append(name)  # the file's H5MD tree: checked below
                continue
            if not isinstance(grp.get(name, getlink=True), h5py.HardLink):
                foreign.append(here)
                continue
            obj = grp[name]
            if isinstance(obj, h5py.Dataset):
                if taken is None or name in taken:
                    owned.add(_addr(h5py, obj))
                else:
                    foreign.append(here)
            elif name == STATIC_GROUP:
                for sub in obj:
                    if isinstance(obj.get(sub, getlink=True), h5py.HardLink) and isinstance(
                        obj[sub], h5py.Dataset
                    ):
                        owned.add(_addr(h5py, obj[sub]))
                    else:
                        foreign.append(f"{here}/{sub}")
            else:
                plain(obj, here)

    def plain(grp: Any, rel: str) -> None:
        if is_snapsink_attr(grp.attrs.get(META_ATTR)):
            plan.nested.append(f"{group}/{rel}" if group else rel)
            run(grp, rel)
            return
        if len(grp.attrs):
            foreign.append(rel)
            return
        for name in grp:
            here = f"{rel}/{name}"
            obj = grp.get(name) if isinstance(grp.get(name, getlink=True), h5py.HardLink) else None
            if isinstance(obj, h5py.Group):
                plain(obj, here)
            else:
                foreign.append(here)

    run(top, "")
    if group:
        plan.tree = [p for p in H5MD_ROOTS if p in f]
    if plan.tree:
        plan.tree_owned = _tree_within(f, h5py, plan.tree, owned)
        if not group and not plan.tree_owned:
            foreign.extend(plan.tree)
    if foreign:
        shown = ", ".join(repr(p) for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise StoreExistsError(
            f"{where}: mode='w': the group holds objects that are not part of a snapsink "
            f"store ({shown}, below the group); refusing to delete them: nothing was "
            "deleted; move them away or choose another group or file"
        )
    return plan


def _addr(h5py: Any, obj: Any) -> int:
    return int(h5py.h5o.get_info(obj.id).addr)


def _tree_within(f: Any, h5py: Any, roots: list[str], owned: set[int]) -> bool:
    """Whether every dataset of the H5MD tree ``roots`` is one of ``owned``
    (links to the replaced run's datasets: the tree is that run's), and the
    tree holds no link of another kind."""
    for root in roots:
        node = f.get(root) if isinstance(f.get(root, getlink=True), h5py.HardLink) else None
        if not isinstance(node, h5py.Group):
            return False
        bad: list[str] = []

        def check(name: str, link: Any, node: Any = node, bad: list[str] = bad) -> None:
            if not isinstance(link, h5py.HardLink):
                bad.append(name)
                return
            obj = node[name]
            if isinstance(obj, h5py.Dataset) and _addr(h5py, obj) not in owned:
                bad.append(name)

        node.visititems_links(check)
        if bad:
            return False
    return True


def _hold_nested(locks: FileLocks, nested: list[str], where: str) -> None:
    """Take the claim of every nested run ``mode="w"`` deletes (released by
    the caller); a run another writer holds is refused, nothing deleted.

    Raises
    ------
    StoreLockedError
        Another writer holds a nested group (named).
    """
    held: list[str] = []
    try:
        for g in nested:
            if not locks.hold(g):
                raise StoreLockedError(
                    f"{where}: mode='w' would delete group {g!r}, a snapsink run that another "
                    "writer is writing; nothing was deleted: wait for that writer to finish, "
                    "stop it, or choose another group",
                    store=where,
                )
            held.append(g)
    except BaseException:
        for g in held:
            locks.unhold(g)
        raise


def _claim_h5md(f: Any, where: str, mode: str, kind: str, plan: _Replace, *, h5md: bool) -> None:
    """An H5MD file holds one run: refuse a new H5MD group where an H5MD tree
    is; ``mode="w"`` removes the replaced run's tree (``/h5md``, ``/particles``,
    ``/observables``) only when every dataset in it is the run's (and a
    snapsink-layout ``"w"`` so too; another run's tree it leaves alone)."""
    found = [p for p in H5MD_ROOTS if p in f]
    if not h5md or not found:
        return
    if mode != "w" and kind in ("missing", "empty"):
        raise StoreExistsError(
            f"{where}: the file already holds an H5MD run ({', '.join(found)}); an "
            "H5MD file holds one run: choose another file, or mode='w' to replace it"
        )
    if mode == "w" and not plan.tree_owned:
        raise StoreExistsError(
            f"{where}: mode='w': the file's H5MD tree ({', '.join(found)}) is not this "
            "group's (its datasets belong to another run, or to no snapsink group); an "
            "H5MD file holds one run: nothing was deleted; choose another file"
        )


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
        with sf.file(swmr=False, locked=True, room=_room(static)) as f:
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
    with sf.file(swmr=False, locked=True, room=_room(static)) as f:
        _lay_out(f, sf.group, claimed, static, adopt=adopt)
    return claimed


def _room(static: Mapping[str, np.ndarray[Any, Any]]) -> int:
    """The room a new group takes in the file: its metadata and static arrays
    (allocated before HDF5 writes them: see StoreFile.reserve)."""
    return METADATA_ROOM + sum(int(a.nbytes) for a in static.values())


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
