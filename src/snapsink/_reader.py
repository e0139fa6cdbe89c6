"""snapsink.open: read any store back as a Trajectory, detecting its format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._errors import ConfigError, FormatError, StoreNotFoundError
from ._trajectory import Trajectory

__all__ = ["open"]


def open(path_or_store: Any, group: str | None = None) -> Trajectory:
    """Open a stored run for reading.

    Parameters
    ----------
    path_or_store
        A directory written by :class:`~snapsink.NpyDirectory`, a Zarr store path
        or a zarr v3 ``Store`` written by :class:`~snapsink.ZarrStore`, or a
        :class:`~snapsink.HostMemory`.
    group
        For Zarr stores holding several groups: which one (``None``: the root,
        or the only group holding snapsink data).

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
    """
    from .writers.memory import HostMemory

    if isinstance(path_or_store, HostMemory):
        return path_or_store.trajectory()
    if isinstance(path_or_store, str | os.PathLike):
        path = Path(path_or_store)
        if not path.exists():
            raise StoreNotFoundError(f"no store at {str(path)!r}: the path does not exist")
        from .writers.npy import is_npy_store, open_npy

        if is_npy_store(path):
            if group is not None:
                raise ConfigError(f"group={group!r}: an NpyDirectory has no groups")
            return open_npy(path)
        from .writers.zarr import is_zarr_store, open_zarr

        if is_zarr_store(path):
            return open_zarr(path, group)
        raise FormatError(
            f"{str(path)!r} is not a snapsink store: expected an NpyDirectory "
            "(metadata.json) or a Zarr v3 store (zarr.json)"
        )
    from .writers.zarr import open_zarr

    return open_zarr(path_or_store, group)
