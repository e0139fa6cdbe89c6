"""snapsink.open: read any store back as a Trajectory, detecting its format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._checks import absolute_path
from ._errors import ConfigError, FormatError, StoreNotFoundError
from ._trajectory import Trajectory

__all__ = ["group_path", "groups", "open"]


def open(
    path_or_store: Any,
    group: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> Trajectory:
    """Open a stored run for reading.

    Parameters
    ----------
    path_or_store
        A directory written by :class:`~snapsink.NpyDirectory`, a Zarr store path,
        object-store URL (``"s3://bucket/run.zarr"``) or zarr v3 ``Store``
        written by :class:`~snapsink.ZarrStore`, an HDF5 file written by
        :class:`~snapsink.HDF5Store`, or a :class:`~snapsink.HostMemory`.
    group
        For Zarr stores and HDF5 files holding several groups: which one
        (``None``: the root, or the only group holding snapsink data). Leading
        and trailing slashes are ignored, as ``snapsink info --group`` does:
        ``"/b/c/"`` is ``"b/c"``, and ``"/"`` is the root.
    storage_options
        For a URL: fsspec's options for its filesystem (for S3, s3fs's:
        ``key``, ``secret``, ``endpoint_url``, ...).

    Returns
    -------
    Trajectory
        Lazy: only the frames you index are read. ``refresh()`` sees frames
        committed since by a writer that is still running.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at the path.
    FormatError
        The path exists but holds no snapsink store, or a corrupt one.
    ConfigError
        ``storage_options`` without a URL, no filesystem for the URL's scheme,
        or ``group`` is not a str of ``/``-separated names.
    """
    from .stores.memory import HostMemory

    group = group_path(group)
    path_or_store = _url_store(path_or_store, storage_options)
    if isinstance(path_or_store, HostMemory):
        return path_or_store.trajectory()
    if isinstance(path_or_store, str | os.PathLike):
        path = _local_path(path_or_store)
        from .stores.npy import is_npy_store, open_npy

        if is_npy_store(path):
            if group:  # ("" or "/": the root, its only group, as groups() says)
                raise ConfigError(f"group={group!r}: an NpyDirectory has no groups")
            return open_npy(path)
        from .stores._hdf5file import is_hdf5_file

        if path.is_file() and is_hdf5_file(path):
            from .stores._hdf5read import open_hdf5

            return open_hdf5(path, group)
        from .stores.zarr import is_zarr_store

        if is_zarr_store(path):
            return _open_zarr_group(path, group)
        raise FormatError(
            f"{str(path)!r} is not a snapsink store: expected an NpyDirectory "
            "(metadata.json), a Zarr v3 store (zarr.json) or an HDF5 file"
        )
    return _open_zarr_group(path_or_store, group)


def group_path(group: object) -> str | None:
    """``group`` without leading and trailing slashes (``"/"``: ``""``, the
    root), as ``snapsink info --group`` takes it; ``None`` stays ``None``.

    Raises
    ------
    ConfigError
        ``group`` is not a str or None.
    """
    if group is None:
        return None
    if not isinstance(group, str):
        raise ConfigError(f"group: expected a str or None, got {type(group).__name__} {group!r}")
    return group.strip("/")


def _local_path(path: str | os.PathLike[str]) -> Path:
    """A local store's path (or ``file://`` URL), absolute now, as a store's
    path is: the Trajectory reads this store after any os.chdir, and so do the
    tasks it sends elsewhere.

    Raises
    ------
    StoreNotFoundError
        Nothing exists there.
    """
    from .stores._zarrobject import file_url_path

    where = Path(absolute_path(file_url_path(os.fspath(path))))
    if not where.exists():
        raise StoreNotFoundError(f"no store at {str(where)!r}: the path does not exist")
    return where


def _url_store(path_or_store: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """An object-store URL as a read-only zarr store; anything else as it is."""
    from .stores._zarrobject import is_url, url_store

    if is_url(path_or_store):
        return url_store(path_or_store, storage_options, read_only=True)
    if storage_options is not None:
        raise ConfigError(
            f"storage_options: only for a URL such as 's3://bucket/run.zarr', got {path_or_store!r}"
        )
    return path_or_store


def _open_zarr_group(where: Any, group: str | None) -> Trajectory:
    """Open ``group``; without one, the only group holding snapsink data. A group
    that is not there is an error that lists the ones that are."""
    from .stores.zarr import list_groups, open_zarr

    try:
        return open_zarr(where, group)
    except (FormatError, StoreNotFoundError) as exc:
        try:
            found = list_groups(where)
        except Exception:
            raise exc from None
        if group is None and len(found) == 1:
            return open_zarr(where, found[0])
        if not found or (group is not None and group in found):
            raise
        names = ", ".join(repr(g or "/") for g in found)
        raise type(exc)(f"{exc}; the store's snapsink groups are {names}: pass group=...") from exc


def groups(path_or_store: Any, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The groups of a store that hold snapsink data, sorted (``""`` is the root).

    Parameters
    ----------
    path_or_store
        What :func:`open` takes: a store's path (a directory or an HDF5 file),
        an object-store URL, a zarr v3 ``Store``, or a :class:`~snapsink.HostMemory`.
    storage_options
        For a URL: fsspec's options for its filesystem.

    Returns
    -------
    list of str
        The group paths to pass as ``open(..., group=)``; an NpyDirectory or
        a HostMemory is one group: ``[""]``.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at the path.
    FormatError
        The path holds no snapsink store.
    """
    from .stores.memory import HostMemory

    path_or_store = _url_store(path_or_store, storage_options)
    if isinstance(path_or_store, HostMemory):
        return [""]
    if isinstance(path_or_store, str | os.PathLike):
        path = _local_path(path_or_store)
        from .stores.npy import is_npy_store

        if is_npy_store(path):
            return [""]
        from .stores._hdf5file import is_hdf5_file

        if path.is_file() and is_hdf5_file(path):
            from .stores._hdf5read import list_hdf5_groups

            return list_hdf5_groups(path)
        from .stores.zarr import is_zarr_store

        if not is_zarr_store(path):
            raise FormatError(f"{str(path)!r} is not a snapsink store")
    from .stores.zarr import list_groups

    return list_groups(path_or_store)
