"""HostMemory: frames kept in host RAM, read back as a Trajectory."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._arraysource import ArraySource
from .._errors import StoreStateError
from .._schema import Batch, Schema
from .._store import Resume
from .._trajectory import Trajectory
from ._common import OneSink, check_attrs, check_same_layout, check_static, merge_metadata
from ._format import StepRanges

__all__ = ["GrowableArray", "HostMemory"]


class GrowableArray:
    """A numpy array grown along axis 0 by capacity doubling (amortized O(1))."""

    __slots__ = ("_buf", "size")

    def __init__(self, dtype: np.dtype[Any], row_shape: tuple[int, ...], capacity: int = 16):
        self._buf = np.empty((max(capacity, 1), *row_shape), dtype=dtype)
        self.size = 0

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self._buf):
            new = np.empty((max(need, 2 * len(self._buf)), *self._buf.shape[1:]), self._buf.dtype)
            new[: self.size] = self._buf[: self.size]
            self._buf = new

    def extend(self, rows: np.ndarray[Any, Any]) -> None:
        self.reserve(len(rows))
        self._buf[self.size : self.size + len(rows)] = rows
        self.size += len(rows)

    def extend_frames(self, frames: list[np.ndarray[Any, Any]]) -> None:
        """Append one row per array of ``frames`` (each of the row shape)."""
        self.reserve(len(frames))
        if frames:
            np.stack(frames, out=self._buf[self.size : self.size + len(frames)])
        self.size += len(frames)

    def view(self) -> np.ndarray[Any, Any]:
        return self._buf[: self.size]


class HostMemory:
    """A store that keeps every frame in host RAM.

    Useful for tests, for short runs analysed in the same process, and as the
    cheapest store for measuring the sink itself. Read it back with
    :meth:`trajectory`, which has the same API as :func:`snapsink.open`.

    Parameters
    ----------
    attrs
        JSON metadata returned as ``trajectory().attrs``: str, int, float,
        bool, None, lists and str-keyed dicts; NumPy scalars and arrays are
        converted (``np.int64`` to ``int``, arrays with ``tolist()``), tuples
        become lists; NaN and infinity are refused, as by the disk stores.
    static
        Arrays written once (atomic numbers, masses, a grid).

    Notes
    -----
    A HostMemory already holding frames may be given to another sink once the
    first sink has closed: that sink appends after the stored frames (like
    ``mode="a"``), with the same schema. Like a disk store, it has one writer
    at a time: a sink opening it while another sink has it open raises
    :class:`~snapsink.StoreLockedError`.
    """

    def __init__(
        self,
        *,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
    ):
        self._attrs = check_attrs(attrs)
        self._static = check_static(static)
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._times: bool | None = None
        self._steps = GrowableArray(np.dtype(np.int64), ())
        self._time_buf = GrowableArray(np.dtype(np.float64), ())
        self._data: dict[str, GrowableArray] = {}
        self._offsets: dict[str, GrowableArray] = {}
        self._dropped = StepRanges()
        self._committed = 0
        self._claim = OneSink("HostMemory")

    # Deliberate parallel of NpyDirectory.add_metadata (stores/npy.py) and
    # ZarrStore.add_metadata (stores/zarr.py): each public store documents its own
    # method; the merge itself is shared (_common.merge_metadata).
    def add_metadata(
        self,
        *,
        attrs: Mapping[str, Any] | None = None,
        static: Mapping[str, Any] | None = None,
    ) -> None:
        """Add attrs and static arrays after the store was built.

        For code that learns them only when the run starts, such as the py-pde
        tracker (:mod:`snapsink.integrations.pde`), which sees the grid then.
        Unlike a disk store, a HostMemory takes them at any time.

        Parameters
        ----------
        attrs
            More metadata, converted as the constructor's ``attrs``.
        static
            More static arrays, as the constructor's ``static``.

        Raises
        ------
        ConfigError
            For a bad value, or a key or name already set to a different value;
            nothing is changed.
        """
        with self._lock:
            self._attrs, self._static = merge_metadata(self._attrs, self._static, attrs, static)

    # -- Store protocol -----------------------------------------------------
    # open() and prepare(): deliberate parallels of GPUBuffer.open/prepare
    # (stores/gpu.py): each store documents its own Store methods; the layout
    # check is shared (_common.check_same_layout), the storage differs.
    def open(self) -> Resume | None:
        """Return ``None`` for an empty store, or a Resume to append after its frames.

        Returns
        -------
        Resume or None
            The stored schema, count, last step and time when frames are held.

        Raises
        ------
        StoreLockedError
            Another sink has the store open (its frames would interleave with
            this one's); it is free again once that sink has closed.
        """
        with self._lock:
            self._claim.claim()
            if self._schema is None:
                return None
            n = self._steps.size
            return Resume(
                schema=self._schema,
                count=n,
                last_step=int(self._steps.view()[-1]) if n else None,
                last_time=float(self._time_buf.view()[-1]) if n and self._times else None,
                times=self._times if n else None,
            )

    def prepare(self, schema: Schema, *, times: bool) -> None:
        """Lay out storage for ``schema``.

        Parameters
        ----------
        schema
            The sink's schema.
        times
            Whether frames carry times.

        Raises
        ------
        SchemaError
            When the store already holds frames of another schema or time setting.
        """
        with self._lock:
            if self._schema is not None:
                check_same_layout(
                    "HostMemory", self._schema, self._times, self._steps.size, schema, times
                )
                self._times = times
                return
            self._schema = schema
            self._times = times
            for name, f in schema.items():
                if f.ragged:
                    self._data[name] = GrowableArray(f.dtype, f.row_shape)
                    off = GrowableArray(np.dtype(np.int64), ())
                    off.extend(np.zeros(1, np.int64))
                    self._offsets[name] = off
                else:
                    self._data[name] = GrowableArray(f.dtype, f.shape)  # type: ignore[arg-type]

    def append(self, batch: Batch) -> None:
        """Copy the batch's frames in and note its dropped steps.

        Parameters
        ----------
        batch
            Frames in write order and the steps dropped since the last batch.
        """
        frames = batch.frames
        with self._lock:
            self._dropped.add_all(batch.dropped_steps)
            if not frames:
                return
            if self._schema is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            self._steps.extend(np.fromiter((f.step for f in frames), np.int64, len(frames)))
            if self._times:
                self._time_buf.extend(
                    np.fromiter((f.time for f in frames), np.float64, len(frames))
                )
            for name, f in self._schema.items():
                arrays = [fr.fields[name] for fr in frames]
                if f.ragged:
                    off = self._offsets[name]
                    last = int(off.view()[-1])
                    counts = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
                    off.extend(last + np.cumsum(counts))
                    self._data[name].extend(np.concatenate(arrays) if arrays else arrays)  # type: ignore[arg-type]
                elif not f.shape:
                    self._data[name].extend(np.array(arrays, dtype=f.dtype))
                else:
                    self._data[name].extend_frames(arrays)
            self._committed = self._steps.size
            # frames of steps dropped before this store was resumed: no longer dropped
            self._dropped.discard_stored(f.step for f in frames)

    def commit(self) -> None:
        """Nothing to do: appended frames are readable at once."""
        return None

    def close(self) -> None:
        """Let another sink open the store; the frames stay readable through
        :meth:`trajectory`."""
        with self._lock:
            self._claim.release()

    # -- reading --------------------------------------------------------------
    def __len__(self) -> int:
        return self._committed

    def trajectory(self) -> Trajectory:
        """The stored frames as a :class:`~snapsink.Trajectory` (a snapshot of now).

        Returns
        -------
        Trajectory
            Steps, times, fields (fixed and ragged), static, attrs, dropped steps.
        """
        with self._lock:
            n = self._steps.size
            data = {name: g.view().copy() for name, g in self._data.items()}
            offsets = {name: g.view().copy() for name, g in self._offsets.items()}
            source = ArraySource(
                schema=self._schema,
                steps=self._steps.view()[:n].copy(),
                times=self._time_buf.view()[:n].copy() if self._times else None,
                data=data,
                offsets=offsets,
                static=self._static,
                attrs=self._attrs,
                dropped_steps=self._dropped.to_array().tolist(),
            )
        return Trajectory(source)
