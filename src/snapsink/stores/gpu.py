"""GPUBuffer: the most recent frames kept in device memory (CuPy), drained like a buffer.

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
and the store; the ring then applies its own, ``overflow``, chosen at
construction:

- ``"evict_oldest"`` (default): the oldest frame held is overwritten; the ring
  keeps the *last* ``capacity`` frames, which is what a device-side buffer is
  for (inspection, restarts, a later :meth:`GPUBuffer.drain_to`), and the
  simulation never stalls on it;
- ``"refuse"``: the new frame is not stored; the ring keeps the *first*
  ``capacity`` frames since it was last drained;
- ``"raise"``: ``append`` raises :class:`~snapsink.StoreStateError` (through a
  sink, a :class:`~snapsink.WriterError` at the producer's next call).

A store cannot change its sink's counters, so the ring counts what it loses
itself: :meth:`GPUBuffer.statistics` (``evicted``, ``refused``), and the steps
lost join the steps a sink's drop policy discarded on the way in. They are
listed by :meth:`GPUBuffer.read` (``DeviceFrames.dropped_steps``) and handed to
the store :meth:`GPUBuffer.drain_to` writes, so the drained trajectory's
``dropped_steps`` names every step the ring did not keep.

Draining
--------
:meth:`GPUBuffer.drain_to` *moves* frames out: each frame leaves the ring once
the target took it, so no frame is drained twice, and the steps of a ring only
increase (a sink resuming a drained ring continues after its last step). While
a drain runs, a sink may keep appending: new frames go to free slots; a frame
that would evict one being drained waits for the drain (``"evict_oldest"``),
or is refused or raises as its policy says.
"""

from __future__ import annotations

import array
import inspect
import threading
import weakref
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, DeviceError, SchemaError, StoreStateError
from .._schema import Batch, Schema
from .._staging.backend import INSTALL_HINT, DeviceBackend
from .._store import Resume, Store
from ._common import OneSink, check_same_layout
from ._gpuslots import DeviceSlots
from ._gpuvalues import DeviceFrames, GPUBufferStatistics

__all__ = ["OVERFLOW", "DeviceFrames", "GPUBuffer", "GPUBufferStatistics"]

#: what a full ring does with a new frame
OVERFLOW = ("evict_oldest", "refuse", "raise")


def _backend(name: str | DeviceBackend | None) -> DeviceBackend:
    if isinstance(name, DeviceBackend):
        return name
    if name is not None and name not in ("cupy", "emulation"):
        raise ConfigError(f"backend: expected 'cupy' or 'emulation', got {name!r}")
    from .._staging.device import backend_named

    if name == "emulation":
        return backend_named("emulation")
    try:
        return backend_named("cupy")
    except DeviceError as exc:
        if isinstance(exc.__cause__, ImportError):
            raise DeviceError(
                f"GPUBuffer needs CuPy, which is not installed: {INSTALL_HINT}; "
                "without a GPU, keep frames in snapsink.HostMemory"
            ) from exc.__cause__
        raise DeviceError(f"GPUBuffer needs a usable CUDA device: {exc}") from exc


def _sink_last_step(sink: Any) -> int | None:
    """The last step a snapsink Sink or SyncSink accepted (None: none yet, or
    another kind of sink)."""
    last = getattr(sink, "last_step", None)
    return last if isinstance(last, int) else None


class GPUBuffer:
    """A store that keeps recent frames in a preallocated device ring.

    Parameters
    ----------
    capacity
        Frames the ring holds; device memory is ``capacity`` x frame bytes
        (ragged fields grow per ring slot to the largest frame seen there).
    backend
        ``"cupy"`` (default) or ``"emulation"`` (the CPU test double).
    overflow
        What a full ring does with a new frame: ``"evict_oldest"`` (default:
        overwrite the oldest, keep the last ``capacity`` frames), ``"refuse"``
        (do not store the new frame), or ``"raise"`` (``append`` raises
        :class:`~snapsink.StoreStateError`; through a sink, the producer gets a
        :class:`~snapsink.WriterError`). Evicted and refused frames are counted
        (:meth:`statistics`) and their steps recorded as dropped (:meth:`read`,
        and the store a :meth:`drain_to` writes).

    Raises
    ------
    ConfigError
        For a capacity below 1, an unknown backend or overflow policy.
    DeviceError
        For ``backend="cupy"`` when CuPy is not installed (the message says how
        to install the ``gpu`` extra) or no CUDA device is usable.

    Notes
    -----
    ``append`` returns after its copies completed (it synchronizes its own
    stream, in the sink's worker thread): the staging slot it read from may be
    reused at once. :meth:`drain_to` may run while a sink appends (see the
    module's notes); :meth:`clear` may not run during a drain.

    Examples
    --------
    >>> buf = snapsink.GPUBuffer(100)  # doctest: +SKIP
    >>> async with snapsink.Sink(buf) as sink:  # doctest: +SKIP
    ...     for i in range(n):
    ...         await sink.write({"x": x}, step=i)
    ...         if i % 100 == 99:
    ...             await sink.flush()
    ...             await buf.drain_to(snapsink.NpyDirectory("run", mode="a"))
    """

    #: a sink may hand this store device arrays (captured with ``to_host=False``)
    wants_device: ClassVar[bool] = True

    def __init__(
        self,
        capacity: int,
        *,
        backend: str | DeviceBackend | None = None,
        overflow: str = "evict_oldest",
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"GPUBuffer capacity: expected an int >= 1, got {capacity!r}")
        if overflow not in OVERFLOW:
            raise ConfigError(
                f"overflow: expected 'evict_oldest', 'refuse' or 'raise', got {overflow!r}"
            )
        self.capacity = capacity
        self.overflow = overflow
        self._be: DeviceBackend = _backend(backend)
        self._stream: Any = None
        self._lock = threading.Lock()
        self._claim = OneSink("GPUBuffer")
        self._cond = threading.Condition(self._lock)  # a drain finished, or freed a slot
        self._schema: Schema | None = None
        self._times: bool | None = None
        self._slots: DeviceSlots | None = None  # the device memory, from prepare()
        self._steps = np.zeros(capacity, np.int64)
        self._time_buf = np.zeros(capacity, np.float64)
        self._head = 0  # ring index of the oldest frame held
        self._held = 0
        # the last step (and time) that reached the ring, kept or not: new steps follow it
        self._last_step: int | None = None
        self._last_time: float | None = None
        # lost steps not yet handed to a store: 8 bytes a step
        self._lost = array.array("q")
        self._draining = False
        self._stored = self._evicted = self._refused = 0
        self._drained = self._skipped = self._cleared = 0

    def __repr__(self) -> str:
        return f"GPUBuffer({self.capacity}, backend={self._be.name!r}, overflow={self.overflow!r})"

    # -- introspection ------------------------------------------------------
    def __len__(self) -> int:
        """Frames held (at most ``capacity``)."""
        return self._held

    @property
    def total(self) -> int:
        """Frames stored since creation (held, drained, evicted or cleared since)."""
        return self._stored

    @property
    def evicted(self) -> int:
        """Frames overwritten because the ring was full, since creation."""
        return self._evicted

    @property
    def stream(self) -> Any:
        """The store's own stream (None before :meth:`prepare`)."""
        return self._stream

    def statistics(self) -> GPUBufferStatistics:
        """The ring's counters: held, stored, evicted, refused, drained, skipped, cleared.

        Returns
        -------
        GPUBufferStatistics
            A snapshot; ``stored == held + drained + skipped + evicted + cleared``.
        """
        with self._lock:
            return GPUBufferStatistics(
                held=self._held,
                capacity=self.capacity,
                overflow=self.overflow,
                stored=self._stored,
                evicted=self._evicted,
                refused=self._refused,
                drained=self._drained,
                skipped=self._skipped,
                cleared=self._cleared,
                pending_dropped=len(self._lost),
            )

    # -- Store protocol -----------------------------------------------------------
    # open() and prepare(): deliberate parallels of HostMemory.open/prepare
    # (stores/memory.py): each store documents its own Store methods; the layout
    # check is shared (_common.check_same_layout), the storage differs.
    def open(self) -> Resume | None:
        """Return ``None`` for an empty store, or a Resume to append after its frames.

        Returns
        -------
        Resume or None
            The stored schema, the frames stored since creation, and the last
            step and time that reached the ring (held, drained or lost; the
            step also counts the channel's drops): a sink resuming a drained
            ring continues after them.

        Raises
        ------
        StoreLockedError
            Another sink has the buffer open (its frames would interleave with
            this one's); it is free again once that sink has closed.
        """
        with self._lock:
            self._claim.claim()
            if self._schema is None:
                return None
            seen = self._last_step is not None
            return Resume(
                schema=self._schema,
                count=self._stored,
                last_step=self._last_step,
                last_time=self._last_time,
                times=self._times if seen else None,
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
                seen = 0 if self._last_step is None else 1
                check_same_layout("GPUBuffer", self._schema, self._times, seen, schema, times)
                self._times = times
                return
            self._stream = self._be.new_stream()
            # read() and drain_to() use the stream after a sink closed: it goes
            # with the buffer (an emulated stream's worker thread stops then);
            # not at exit, where a stream still busy would hold the exit up
            weakref.finalize(self, self._be.close_stream, self._stream).atexit = False
            self._slots = DeviceSlots(self._be, schema, self.capacity)
            self._schema = schema
            self._times = times

    def append(self, batch: Batch) -> None:
        """Copy the batch's frames in (a full ring applies ``overflow``) and note
        its dropped steps.

        Parameters
        ----------
        batch
            Frames in write order and the steps dropped since the last batch.

        Raises
        ------
        StoreStateError
            Before :meth:`prepare`; and with ``overflow="raise"``, at the first
            frame that finds the ring full (the frames before it are stored, it
            and those after it are not; the message names their steps).
        """
        with self._cond:
            if batch.dropped_steps:
                self._lost.extend(int(s) for s in batch.dropped_steps)
                # a dropped step is taken, as a lost one: a sink given this
                # buffer later continues after it (never stores it as well)
                last = max(batch.dropped_steps)
                if self._last_step is None or last > self._last_step:
                    self._last_step = last
            if not batch.frames:
                return
            slots, stream = self._slots, self._stream
            if slots is None or stream is None:
                raise StoreStateError(f"{self!r}: prepare() must come before append()")
            keep: list[np.ndarray[Any, Any]] = []  # host sources, alive until the sync below
            try:
                for k, frame in enumerate(batch.frames):
                    if self._held == self.capacity and not self._make_room(batch, k):
                        continue
                    i = (self._head + self._held) % self.capacity
                    slots.copy_in(i, frame.fields, stream, keep)
                    self._steps[i] = frame.step
                    self._time_buf[i] = np.nan if frame.time is None else frame.time
                    self._held += 1
                    self._stored += 1
                    self._last_step, self._last_time = frame.step, frame.time
            finally:
                self._be.stream_synchronize(stream)

    def _make_room(self, batch: Batch, k: int) -> bool:
        """The ring is full and frame ``k`` of ``batch`` comes: evict the oldest
        (True), refuse the new frame (False), or raise. Lock held."""
        frame = batch.frames[k]
        if self.overflow == "refuse":
            self._lost.append(frame.step)
            self._refused += 1
            self._last_step, self._last_time = frame.step, frame.time
            return False
        if self.overflow == "raise":
            lost = [f.step for f in batch.frames[k:]]
            raise StoreStateError(
                f"{self!r} is full ({self.capacity} frames): step(s) {lost} not stored; "
                "drain_to() or clear() it first, or choose overflow='evict_oldest' or 'refuse'"
            )
        # evict_oldest: the oldest frame may be the one a drain is sending; wait for it
        while self._draining and self._held == self.capacity:
            self._cond.wait()
        if self._held == self.capacity:
            self._lost.append(int(self._steps[self._head]))
            self._pop_oldest()
            self._evicted += 1
        return True

    def _pop_oldest(self) -> None:
        """Forget the oldest frame held (its slot becomes free). Lock held."""
        self._head = (self._head + 1) % self.capacity
        self._held -= 1
        self._cond.notify_all()

    def commit(self) -> None:
        """Nothing to do: appended frames are readable at once."""
        return None

    def close(self) -> None:
        """Let another sink open the buffer; the frames stay readable after the
        sink closed."""
        with self._lock:
            self._claim.release()

    # -- reading --------------------------------------------------------------
    def _order(self) -> np.ndarray[Any, Any]:
        return (self._head + np.arange(self._held)) % self.capacity

    def _lost_steps(self) -> list[int]:
        return sorted(set(self._lost))

    def _views(self, i: int) -> dict[str, Any]:
        """The frame in ring slot ``i`` as device views (no copy). Lock held."""
        assert self._slots is not None
        return self._slots.views(i)

    def read(self) -> DeviceFrames:
        """The frames held, oldest first, as new device arrays (a snapshot of now).

        Returns
        -------
        DeviceFrames
            Fixed fields stacked, ragged fields as data plus offsets, host steps
            and times, and the steps lost since the last drain into a store.

        Raises
        ------
        SchemaError
            When nothing was ever written (no schema yet).
        """
        with self._lock:
            slots, stream = self._slots, self._stream
            if slots is None or stream is None:
                raise SchemaError("GPUBuffer: nothing was written yet (no schema)")
            order = self._order()
            fields, offsets = slots.gather(order, stream)
            self._be.stream_synchronize(stream)
            return DeviceFrames(
                fields=fields,
                offsets=offsets,
                steps=self._steps[order].copy(),
                times=self._time_buf[order].copy() if self._times else None,
                evicted=self._evicted,
                dropped_steps=self._lost_steps(),
                refused=self._refused,
            )

    def clear(self) -> int:
        """Discard the frames held and the lost steps not yet drained.

        The device memory stays allocated for the next frames, the counters
        keep counting (``cleared``), and new steps still follow the last one.

        Returns
        -------
        int
            The number of frames discarded.

        Raises
        ------
        StoreStateError
            While :meth:`drain_to` runs.
        """
        with self._cond:
            if self._draining:
                raise StoreStateError(f"{self!r}: clear() while drain_to() runs")
            n = self._held
            self._held = 0
            self._cleared += n
            del self._lost[:]
            self._cond.notify_all()
            return n

    # -- draining -------------------------------------------------------------
    async def drain_to(self, target: Any) -> int:
        """Move the frames held, oldest first, into a sink or a store.

        Each frame leaves the ring once the target took it: a frame is drained
        once, and a second drain into the same target sends only the frames
        that came since. Frames whose step is not after the target's last step
        are not sent (counted as ``skipped``).

        Parameters
        ----------
        target
            A :class:`~snapsink.Sink` or :class:`~snapsink.SyncSink` (``write``
            may be a coroutine function or a plain one): each frame is written
            as device views with ``stream=`` this store's stream, so the sink
            captures it like any device frame. Or a store (anything
            implementing :class:`~snapsink.Store`: ``NpyDirectory``,
            ``ZarrStore``, ``HostMemory``, another ``GPUBuffer``): the drain
            writes it through a sink of its own and also records the ring's
            lost steps (dropped before the ring, evicted, refused) in its
            dropped steps; the frames leave the ring once that sink closed. A
            store that can describe itself is rebuilt for each drain (as a
            writer process would), so give a disk store ``mode="a"`` to drain
            into it more than once. A Sink records only the steps its own
            policy drops, so lost steps stay pending (:meth:`read`,
            :meth:`statistics`) until a drain into a store takes them.

        Returns
        -------
        int
            The number of frames written into the target.

        Raises
        ------
        ConfigError
            For a target that is neither a sink nor a store, or the buffer itself.
        StoreStateError
            When another drain of this buffer is running.
        SchemaError, WriterError, StoreExistsError
            As the target raises them (schema or time mismatch, a failed store,
            a store of mode ``"x"`` that exists): the frames not taken stay in
            the ring.
        """
        is_sink = callable(getattr(target, "write", None))
        if target is self or not (is_sink or isinstance(target, Store)):
            what = "the buffer itself" if target is self else type(target).__name__
            raise ConfigError(
                f"drain_to: expected a Sink, a SyncSink or a store (snapsink.Store), got {what}"
            )
        with self._lock:
            if self._draining:
                raise StoreStateError(f"{self!r}: drain_to() is already running")
            if self._schema is None or not (self._held or (self._lost and not is_sink)):
                return 0
            self._draining = True
        try:
            if is_sink:
                return await self._drain_into_sink(target)
            return await self._drain_into_store(target)
        finally:
            with self._cond:
                self._draining = False
                self._cond.notify_all()

    def _oldest(self) -> tuple[int, float | None, dict[str, Any]]:
        """Step, time and device views of the oldest frame held. Lock held."""
        i = self._head
        time = float(self._time_buf[i]) if self._times else None
        return int(self._steps[i]), time, self._views(i)

    async def _drain_into_sink(self, sink: Any) -> int:
        last = _sink_last_step(sink)
        with self._lock:
            n = self._held
        sent = 0
        for _ in range(n):
            with self._lock:
                step, time, frame = self._oldest()
            if last is not None and step <= last:
                with self._lock:
                    self._pop_oldest()
                    self._skipped += 1
                continue
            result = sink.write(frame, step=step, time=time, stream=self._stream)
            if inspect.isawaitable(result):
                await result
            # captured (ordered on our stream): the slot may take a new frame
            with self._lock:
                self._pop_oldest()
                self._drained += 1
            sent += 1
        return sent

    async def _drain_into_store(self, store: Any) -> int:
        from .._copy import CarryingStore, fresh_store
        from .._sink import Sink

        with self._lock:
            n = self._held
            frames = []
            order = self._order()
            for i in order:
                time = float(self._time_buf[i]) if self._times else None
                frames.append((int(self._steps[i]), time, self._views(int(i))))
            lost = self._lost_steps()
            n_lost = len(self._lost)
            schema = self._schema
        carrier = CarryingStore(fresh_store(store), lost)
        sent = skipped = 0
        async with Sink(carrier, schema=schema) as sink:
            last = None if carrier.resume is None else carrier.resume.last_step
            for step, time, frame in frames:
                if last is not None and step <= last:
                    skipped += 1
                    continue
                # The slots stay untouched until the sink closed (an eviction
                # waits for this drain): the sink may read them in place.
                await sink.write(frame, step=step, time=time, copy=False, stream=self._stream)
                sent += 1
            carrier.finish()
        with self._cond:
            for _ in range(n):
                self._pop_oldest()
            self._drained += sent
            self._skipped += skipped
            if not carrier.undelivered:
                del self._lost[:n_lost]
        return sent
