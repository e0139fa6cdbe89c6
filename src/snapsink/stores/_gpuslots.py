"""The device memory of a :class:`~snapsink.stores.gpu.GPUBuffer`: one slot per frame.

:class:`DeviceSlots` allocates, for a schema, ``capacity`` slots of every
field on the device, copies a frame into a slot, and reads slots back as views
or as new stacked arrays. It knows nothing of the ring's order, its overflow
policy, its counters or its lock: ``gpu.py`` keeps those and calls this with
its lock held. Split so that the device buffers have one owner, behind
methods, apart from the ring's bookkeeping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._schema import Schema
from .._staging.backend import DeviceBackend

__all__ = ["DeviceSlots"]


class DeviceSlots:
    """``capacity`` device slots for the frames of ``schema``.

    A fixed field is one device array ``(capacity, *shape)``; a ragged field
    has a device array per slot, grown to the largest frame seen in that slot,
    and the row count of the frame each slot holds.
    """

    __slots__ = ("_be", "_fixed", "_ragged", "_rows", "_schema")

    def __init__(self, be: DeviceBackend, schema: Schema, capacity: int):
        self._be = be
        self._schema = schema
        self._fixed: dict[str, Any] = {}
        self._ragged: dict[str, list[Any]] = {}
        self._rows: dict[str, np.ndarray[Any, Any]] = {}
        for name, f in schema.items():
            if f.ragged:
                self._ragged[name] = [be.empty((0, *f.row_shape), f.dtype)] * capacity
                self._rows[name] = np.zeros(capacity, np.int64)
            else:
                shape: tuple[int, ...] = f.shape  # type: ignore[assignment]
                self._fixed[name] = be.empty((capacity, *shape), f.dtype)

    def copy_in(self, i: int, fields: Any, stream: Any, keep: list[np.ndarray[Any, Any]]) -> None:
        """Enqueue on ``stream`` the copies of one frame's fields into slot ``i``.

        Host sources are appended to ``keep``: the caller holds them until it
        synchronized ``stream``.
        """
        be = self._be
        for name, f in self._schema.items():
            value = fields[name]
            if f.ragged:
                rows = len(value)
                buf = self._ragged[name][i]
                if len(buf) < rows:
                    buf = self._ragged[name][i] = be.empty((rows, *f.row_shape), f.dtype)
                self._rows[name][i] = rows
                if rows == 0:
                    continue
                dst = buf[:rows]
            else:
                dst = self._fixed[name][i : i + 1]
            if isinstance(value, np.ndarray | np.generic | int | float | complex):
                host = np.ascontiguousarray(value, dtype=f.dtype)
                keep.append(host)
                be.copy_h2d_async(dst, host, stream)
            else:
                be.copy_d2d_async(dst, be.as_array(value), stream)

    def views(self, i: int) -> dict[str, Any]:
        """The frame in slot ``i`` as device views (no copy)."""
        frame: dict[str, Any] = {}
        for name, f in self._schema.items():
            if f.ragged:
                frame[name] = self._ragged[name][i][: int(self._rows[name][i])]
            else:
                frame[name] = self._fixed[name][i]
        return frame

    def gather(
        self, order: np.ndarray[Any, Any], stream: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The frames of slots ``order`` as new device arrays, enqueued on ``stream``.

        Returns
        -------
        tuple
            ``(fields, offsets)``: fixed fields stacked ``(frames, *shape)``,
            ragged fields as their rows concatenated, and each ragged field's
            ``frames + 1`` row offsets (device int64).
        """
        be = self._be
        fields: dict[str, Any] = {}
        offsets: dict[str, Any] = {}
        for name, f in self._schema.items():
            if not f.ragged:
                fields[name] = be.take(self._fixed[name], order, stream)
                continue
            rows = self._rows[name][order]
            parts = [self._ragged[name][i][: int(r)] for i, r in zip(order, rows, strict=True)]
            parts = [p for p in parts if len(p)]
            fields[name] = (
                be.concatenate(parts, stream) if parts else be.empty((0, *f.row_shape), f.dtype)
            )
            off = np.zeros(len(order) + 1, np.int64)
            np.cumsum(rows, out=off[1:])
            offsets[name] = be.from_host(off, stream)
        return fields, offsets
