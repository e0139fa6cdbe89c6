"""The read side of the snapsink Zarr format: a lazy Source over a committed group.

Runs in user code, usually outside any event loop, so it uses zarr's sync API.
Every attribute is type-checked (:func:`._zarrplan.parse_meta`): a corrupt or
hostile store raises :class:`~snapsink.FormatError`, never anything worse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store as ZarrStoreLike
from zarr.errors import ContainsArrayError, GroupNotFoundError, NodeTypeValidationError
from zarr.storage import LocalStore

from .._errors import ConfigError, FormatError, StoreNotFoundError
from .._schema import Schema
from .._trajectory import Trajectory
from ._zarrplan import (
    STATIC_GROUP,
    check_group,
    is_snapsink_attrs,
    offsets_name,
    parse_meta,
    plan_arrays,
)

__all__ = ["ZarrSource", "as_zarr_store", "is_zarr_store", "list_groups", "open_zarr"]


def as_zarr_store(store: object, *, read_only: bool) -> ZarrStoreLike:
    """A zarr Store for a path (a LocalStore) or a Store instance."""
    if isinstance(store, ZarrStoreLike):
        return store
    if isinstance(store, str | os.PathLike):
        return LocalStore(os.fspath(store), read_only=read_only)
    raise ConfigError(
        f"store: expected a path or a zarr v3 Store (LocalStore, MemoryStore, FsspecStore), "
        f"got {type(store).__name__}"
    )


# -- reading -------------------------------------------------------------------
def _open_read_store(path_or_store: object) -> ZarrStoreLike:
    if isinstance(path_or_store, str | os.PathLike) and not os.path.isdir(path_or_store):
        raise StoreNotFoundError(f"no zarr store at {os.fspath(path_or_store)!r}")
    return as_zarr_store(path_or_store, read_only=True)


def _open_group_sync(store: ZarrStoreLike, path: str) -> Any:
    try:
        return zarr.open_group(store, path=path, mode="r", zarr_format=3)
    except (GroupNotFoundError, FileNotFoundError, KeyError) as exc:
        raise StoreNotFoundError(f"no zarr group {path or '/'!r} in {store}") from exc
    except (ContainsArrayError, NodeTypeValidationError, ValueError) as exc:
        raise FormatError(f"{path or '/'!r} in {store} is not a zarr v3 group: {exc}") from exc


class ZarrSource:
    """The committed frames of a snapsink Zarr group, read lazily (a Source).

    Parameters
    ----------
    store
        A path or a zarr v3 ``Store``.
    group
        The group's path; ``None`` for the root.

    Raises
    ------
    StoreNotFoundError
        No group there.
    FormatError
        The group is not a snapsink store, or its metadata or arrays are corrupt.
    """

    schema: Schema | None
    length: int

    def __init__(self, store: str | os.PathLike[str] | ZarrStoreLike, group: str | None = None):
        self._store = _open_read_store(store)
        self._path = check_group(group) if group != "" else ""
        self.schema = None
        self.length = 0
        self.refresh()

    def __repr__(self) -> str:
        return f"<ZarrSource {self._store} group={self._path or '/'!r} frames={self.length}>"

    @property
    def closed(self) -> bool:
        """Whether the writer closed the group cleanly (at the last refresh)."""
        return bool(self._meta.closed)

    @property
    def groups(self) -> list[str]:
        """Paths of the groups of this store that hold snapsink data (``""``: the root)."""
        return list_groups(self._store)

    def refresh(self) -> None:
        """Re-read the group's attributes (committed count, dropped steps, attrs)."""
        grp = _open_group_sync(self._store, self._path)
        where = f"zarr group {self._path or '/'!r} in {self._store}"
        meta, user = parse_meta(dict(grp.attrs), where)
        arrays: dict[str, Any] = {}
        if meta.schema is not None:
            for plan in plan_arrays(meta.schema, times=bool(meta.times)):
                try:
                    arr = grp[plan.name]
                except KeyError as exc:
                    raise FormatError(f"{where}: array {plan.name!r} is missing") from exc
                if not isinstance(arr, zarr.Array):
                    raise FormatError(f"{where}: {plan.name!r} is not an array")
                if arr.dtype != plan.dtype or tuple(arr.shape[1:]) != plan.row_shape:
                    raise FormatError(
                        f"{where}: array {plan.name!r} has dtype {arr.dtype} and shape "
                        f"{arr.shape}; expected {plan.dtype} and rows of shape {plan.row_shape}"
                    )
                need = meta.count + 1 if plan.name.endswith(".offsets") else meta.count
                if plan.name in meta.schema and meta.schema[plan.name].ragged:
                    need = 0
                if arr.shape[0] < need:
                    raise FormatError(
                        f"{where}: array {plan.name!r} holds {arr.shape[0]} rows, fewer than "
                        f"the {need} committed"
                    )
                arrays[plan.name] = arr
        self._where = where
        self._group = grp
        self._meta = meta
        self._user = user
        self._arrays = arrays
        self._steps: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._times: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._static: dict[str, np.ndarray[Any, Any]] | None = None
        self.schema = meta.schema
        self.length = meta.count

    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        if self._steps is None:
            if not self.length:
                self._steps = np.zeros(0, np.int64)
            else:
                steps = np.asarray(self._arrays["steps"][: self.length], dtype=np.int64)
                if steps.size > 1 and not bool(np.all(np.diff(steps) > 0)):
                    raise FormatError(f"{self._where}: stored steps do not strictly increase")
                self._steps = steps
        return self._steps

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        if not self._meta.times:
            return None
        if self._times is None:
            self._times = np.asarray(self._arrays["times"][: self.length], dtype=np.float64)
        return self._times

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        if self._static is None:
            out: dict[str, np.ndarray[Any, Any]] = {}
            try:
                sg = self._group[STATIC_GROUP]
            except KeyError:
                sg = None
            if isinstance(sg, zarr.Group):
                for name, arr in sg.arrays():
                    out[name] = np.asarray(arr[...])
            self._static = out
        return self._static

    def attrs(self) -> Mapping[str, Any]:
        return self._user

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self._meta.dropped.steps()

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"frames [{start}, {stop}) out of range for {self.length} frames")

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Frames ``[start, stop)`` of fixed-shape field ``name``."""
        self._check_range(start, stop)
        out: np.ndarray[Any, Any] = np.asarray(self._arrays[name][start:stop])
        return out

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` of ragged field ``name`` and their offsets."""
        self._check_range(start, stop)
        off = np.asarray(self._arrays[offsets_name(name)][start : stop + 1], dtype=np.int64)
        data = self._arrays[name]
        if off.size and (off[0] < 0 or off[-1] > data.shape[0] or bool(np.any(np.diff(off) < 0))):
            raise FormatError(f"{self._where}: offsets of ragged field {name!r} are corrupt")
        rows: np.ndarray[Any, Any] = np.asarray(data[int(off[0]) : int(off[-1])])
        return rows, off - off[0]


def is_zarr_store(path_or_store: object) -> bool:
    """True when ``path_or_store`` is the root of a Zarr v3 hierarchy.

    Never creates anything. A path is checked for a root ``zarr.json``; a store
    instance by opening its root group read-only.
    """
    if isinstance(path_or_store, str | os.PathLike):
        return os.path.isfile(os.path.join(os.fspath(path_or_store), "zarr.json"))
    if not isinstance(path_or_store, ZarrStoreLike):
        return False
    try:
        zarr.open_group(path_or_store, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return True


def list_groups(path_or_store: str | os.PathLike[str] | ZarrStoreLike) -> list[str]:
    """Paths of the groups that hold snapsink data, sorted; ``""`` is the root.

    Raises
    ------
    StoreNotFoundError
        No zarr hierarchy there.
    """
    store = _open_read_store(path_or_store)
    root = _open_group_sync(store, "")
    found = [""] if is_snapsink_attrs(dict(root.attrs)) else []
    for path, node in root.members(max_depth=None):
        if isinstance(node, zarr.Group) and is_snapsink_attrs(dict(node.attrs)):
            found.append(str(path))
    return sorted(found)


def open_zarr(
    path_or_store: str | os.PathLike[str] | ZarrStoreLike, group: str | None = None
) -> Trajectory:
    """Open the committed frames of a snapsink Zarr group, lazily.

    Parameters
    ----------
    path_or_store
        A path or a zarr v3 ``Store``.
    group
        The group's path (see :func:`list_groups`); ``None`` for the root.

    Returns
    -------
    Trajectory

    Raises
    ------
    StoreNotFoundError
        No such store or group.
    FormatError
        Not a snapsink group, or corrupt.
    """
    return Trajectory(ZarrSource(path_or_store, group))
