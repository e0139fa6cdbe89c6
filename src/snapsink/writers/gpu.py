"""GPUBuffer: the last ``capacity`` frames kept in device memory (CuPy).

Where the frames come from
--------------------------
A sink hands stores *host* frames (numpy arrays in staging slots). Sending a
device array to the host and back to the device costs two PCIe crossings, so
:class:`GPUBuffer` says ``wants_device = True``: a sink that honours it captures
device fields with ``DeviceStager.capture(..., to_host=False)``, a device-to-device
snapshot on the copy stream, and hands the store device arrays; ``append`` then
copies them device-to-device into the ring. Host fields of the same frame (and
frames replayed from a spill directory) arrive as numpy arrays and are copied
host-to-device. Either way ``append`` accepts any mix, so a sink that ignores
the flag still works, only slower.

When the ring is full
---------------------
The channel applies the sink's policy (block, drop, spill) between the producer
and the store; the store itself is a ring: it holds the *last* ``capacity``
frames appended and overwrites the oldest, counting them in :attr:`evicted`.
A ring that refused frames would turn a bounded buffer into a stalled
simulation, and "the most recent N snapshots" is what a device-side buffer is
for (inspection, restarts, a later :meth:`GPUBuffer.drain_to`).
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, SchemaError, StoreStateError
from .._schema import Batch, Schema
from .._staging.backend import DeviceBackend
from .._store import Resume
from ._common import check_same_layout

__all__ = ["DeviceFrames", "GPUBuffer"]


@dataclass(frozen=True)
class DeviceFrames:
    """Frames read from a :class:`GPUBuffer`, oldest first.

    Attributes
    ----------
    fields
        ``{name: device array}``: fixed fields stacked ``(frames, *shape)``;
        ragged fields as all rows concatenated ``(rows, *row_shape)``.
    offsets
        ``{name: device int64 array}`` of ``frames + 1`` row offsets per ragged field.
    steps, times
        Host arrays (``times`` is None when the frames carry no time).
    evicted
        Frames overwritten because the ring was full.
    dropped_steps
        Steps a drop policy discarded before they reached the store.
    """

    fields: dict[str, Any]
    offsets: dict[str, Any]
    steps: np.ndarray[Any, np.dtype[np.int64]]
    times: np.ndarray[Any, np.dtype[np.float64]] | None
    evicted: int = 0
    dropped_steps: list[int] = field(default_factory=list)


def _backend(name: str | DeviceBackend | None) -> DeviceBackend:
    if isinstance(name, DeviceBackend):
        return name
    if name is None or name in ("cupy", "emulation"):
        from .._staging.device import backend_named

        return backend_named(name or "cupy")
    raise ConfigError(f"backend: expected 'cupy' or 'emulation', got {name!r}")


class GPUBuffer:
    """A store that keeps the last ``capacity`` frames in a preallocated device ring.

    Parameters
    ----------
    capacity
        Frames the ring holds; device memory is ``capacity`` x frame bytes
        (ragged fields grow per ring slot to the largest frame seen there).
    backend
        ``"cupy"`` (default) or ``"emulation"`` (the CPU test double).

    Raises
    ------
    ConfigError
        For a capacity below 1.
    DeviceError
        When CuPy or a CUDA device is missing (at :meth:`prepare`).

    Notes
    -----
    ``append`` returns after its copies completed (it synchronizes its own
    stream, in the sink's worker thread): the staging slot it read from may be
    reused at once. Reading (:meth:`read`) and :meth:`drain_to` must not run
    while a sink is appending.
    """

    #: a sink may hand this store device arrays (captured with ``to_host=False``)
    wants_device: ClassVar[bool] = True

    def __init__(self, capacity: int, *, backend: str | DeviceBackend | None = None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"GPUBuffer capacity: expected an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self._backend_arg = backend
        self._be: DeviceBackend | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._times: bool | None = None
        self._ring: dict[str, Any] = {}
        self._ragged: dict[str, list[Any]] = {}
        self._rows: dict[str, np.ndarray[Any, Any]] = {}
        self._steps = np.zeros(capacity, np.int64)
        self._time_buf = np.zeros(capacity, np.float64)
        self._count = 0
        self._dropped: list[int] = []

    # -- introspection ------------------------------------------------------
    def __len__(self) -> int:
        """Frames held (at most ``capacity``)."""
        return min(self._count, self.capacity)

    @property
    def total(self) -> int:
        """Frames appended since creation."""
        return self._count

    @property
    def evicted(self) -> int:
        """Frames overwritten because the ring was full."""
        return max(0, self._count - self.capacity)

    @property
    def stream(self) -> Any:
        """The store's own stream (None before :meth:`prepare`)."""
        return self._stream

    # -- Store protocol -----------------------------------------------------------
    def open(self) -> Resume | None:
        """Return ``None`` for an empty store, or a Resume to append after its frames.

        Returns
        -------
        Resume or None
            The stored schema, count, last step and time when frames are held.
        """
        with self._lock:
            if self._schema is None:
                return None
            n = self._count
            last = (n - 1) % self.capacity
            return Resume(
                schema=self._schema,
                count=n,
                last_step=int(self._steps[last]) if n else None,
                last_time=float(self._time_buf[last]) if n and self._times else None,
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
                    "GPUBuffer", self._schema, self._times, self._count, schema, times
                )
                self._times = times
                return
            be = self._be = _backend(self._backend_arg)
            self._stream = be.new_stream()
            for name, f in schema.items():
                if f.ragged:
                    self._ragged[name] = [be.empty((0, *f.row_shape), f.dtype)] * self.capacity
                    self._rows[name] = np.zeros(self.capacity, np.int64)
                else:
                    shape: tuple[int, ...] = f.shape  # type: ignore[assignment]
                    self._ring[name] = be.empty((self.capacity, *shape), f.dtype)
            self._schema = schema
            self._times = times

    def append(self, batch: Batch) -> None:
        """Copy the batch's frames in and note its dropped steps.

        Parameters
        ----------
        batch
            Frames in write order and the steps dropped since the last batch.
        """
        with self._lock:
            self._dropped.extend(batch.dropped_steps)
            if not batch.frames:
                return
            if self._schema is None or self._be is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            be, stream = self._be, self._stream
            keep: list[np.ndarray[Any, Any]] = []  # host sources, alive until the sync below
            for frame in batch.frames:
                i = self._count % self.capacity
                for name, f in self._schema.items():
                    value = frame.fields[name]
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
                        dst = self._ring[name][i : i + 1]
                    if isinstance(value, np.ndarray | np.generic | int | float | complex):
                        host = np.ascontiguousarray(value, dtype=f.dtype)
                        keep.append(host)
                        be.copy_h2d_async(dst, host, stream)
                    else:
                        be.copy_d2d_async(dst, be.as_array(value), stream)
                self._steps[i] = frame.step
                self._time_buf[i] = np.nan if frame.time is None else frame.time
                self._count += 1
            be.stream_synchronize(stream)

    def commit(self) -> None:
        """Nothing to do: appended frames are readable at once."""
        return None

    def close(self) -> None:
        """Nothing to release: the frames stay readable after the sink closed."""
        return None

    # -- reading --------------------------------------------------------------
    def _order(self) -> np.ndarray[Any, Any]:
        n = len(self)
        start = self._count % self.capacity if self._count > self.capacity else 0
        return (start + np.arange(n)) % self.capacity

    def read(self) -> DeviceFrames:
        """The frames held, oldest first, as new device arrays (a snapshot of now).

        Returns
        -------
        DeviceFrames
            Fixed fields stacked, ragged fields as data plus offsets, host steps and times.
        """
        with self._lock:
            if self._schema is None or self._be is None:
                raise SchemaError("GPUBuffer: nothing was written yet (no schema)")
            be, stream = self._be, self._stream
            order = self._order()
            fields: dict[str, Any] = {}
            offsets: dict[str, Any] = {}
            for name, f in self._schema.items():
                if f.ragged:
                    rows = self._rows[name][order]
                    parts = [
                        self._ragged[name][i][: int(r)] for i, r in zip(order, rows, strict=True)
                    ]
                    parts = [p for p in parts if len(p)]
                    fields[name] = (
                        be.concatenate(parts, stream)
                        if parts
                        else be.empty((0, *f.row_shape), f.dtype)
                    )
                    off = np.zeros(len(order) + 1, np.int64)
                    np.cumsum(rows, out=off[1:])
                    offsets[name] = be.from_host(off, stream)
                else:
                    fields[name] = be.take(self._ring[name], order, stream)
            be.stream_synchronize(stream)
            return DeviceFrames(
                fields=fields,
                offsets=offsets,
                steps=self._steps[order].copy(),
                times=self._time_buf[order].copy() if self._times else None,
                evicted=self.evicted,
                dropped_steps=list(self._dropped),
            )

    async def drain_to(self, sink: Any) -> int:
        """Write the frames held, oldest first, into another sink.

        ``sink.write`` may be a coroutine function (``Sink``) or a plain one
        (``SyncSink``). Each frame is passed as device views of the ring with
        ``stream=`` this store's stream, so the target sink captures them like
        any device frame.

        Returns
        -------
        int
            The number of frames written.
        """
        with self._lock:
            if self._schema is None:
                return 0
            order = self._order()
            steps = self._steps[order].copy()
            times = self._time_buf[order].copy() if self._times else None
            schema = self._schema
        for k, i in enumerate(order):
            frame: dict[str, Any] = {}
            for name, f in schema.items():
                if f.ragged:
                    frame[name] = self._ragged[name][i][: int(self._rows[name][i])]
                else:
                    frame[name] = self._ring[name][i]
            result = sink.write(
                frame,
                step=int(steps[k]),
                time=None if times is None else float(times[k]),
                stream=self._stream,
            )
            if inspect.isawaitable(result):
                await result
        return len(order)
