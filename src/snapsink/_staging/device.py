"""Device staging: capture device (CUDA) arrays without stalling the simulation.

Interface used by the sink (``_channel.py``)::

    device_dtype_shape(name, value) -> (np.dtype, tuple)     # no copy, no sync
    stager = DeviceStager(capacity)                          # lazily, at the first device array
    fields, completion = stager.capture(slot, items, stream) # items: [(name, Field, value)]
    to_host_blocking(value, stream) -> np.ndarray            # for the spill path
    stager.close()

How one capture runs (``strategy="snapshot"``, the default)::

    caller stream : ... kernels ... [rec ready] ─────(wait snap)──► later kernels
                                        │                 ▲
    copy stream   :            (wait ready) D2D→device slot [rec snap] D2H→pinned slot [rec done]

The copy stream is a non-blocking stream owned by the stager. The caller's
stream waits (device-side) only for the short device-to-device snapshot; the
device-to-host copy overlaps the caller's next kernels. ``strategy="direct"``
copies device-to-host straight from the caller's array and makes the caller's
stream wait for the whole copy: no device slot, but the simulation's stream
idles for the full PCIe transfer. ``benchmarks/gpu_overlap.py`` measures both.

Nothing here synchronizes the host in :meth:`DeviceStager.capture`.

Completions are awaited by polling the copy-done event (``cudaEventQuery``)
with an adaptive backoff, see :class:`DeviceCompletion`.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import numpy as np

from .._errors import ConfigError, DeviceError
from .backend import CupyBackend, DeviceBackend
from .host import Slot

if TYPE_CHECKING:
    from .._schema import Field

__all__ = [
    "STRATEGIES",
    "DeviceCompletion",
    "DeviceStager",
    "backend_for",
    "device_dtype_shape",
    "to_host_blocking",
]

STRATEGIES = ("snapshot", "direct")

_backends: dict[str, DeviceBackend] = {}


def _emulated(value: object) -> bool:
    return bool(getattr(type(value), "__snapsink_emulated_device__", False))


def backend_for(value: object) -> DeviceBackend:
    """The backend of a device value: emulation for emulated arrays, else CuPy.

    Raises
    ------
    DeviceError
        When the value needs CuPy and CuPy (or a CUDA device) is missing.
    """
    return backend_named("emulation" if _emulated(value) else "cupy")


def backend_named(name: str) -> DeviceBackend:
    """The process's backend called ``name`` (``"cupy"`` or ``"emulation"``).

    Raises
    ------
    DeviceError
        For ``"cupy"`` when CuPy (or a CUDA device) is missing.
    """
    backend = _backends.get(name)
    if backend is None:
        if name == "emulation":
            from .emulation import EmulationBackend

            backend = EmulationBackend()
        else:
            backend = CupyBackend()
        _backends[name] = backend
    return backend


def device_dtype_shape(name: str, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """dtype and shape of a device array, without a copy or a sync.

    Raises
    ------
    DeviceError
        CuPy is not installed (the message names the ``gpu`` extra).
    """
    try:
        return backend_for(value).dtype_shape(value)
    except DeviceError as exc:
        raise DeviceError(f"field {name!r}: {exc}") from exc.__cause__


def to_host_blocking(value: Any, stream: Any = None) -> np.ndarray[Any, Any]:
    """A host copy of a device array, ordered after the work enqueued on ``stream``
    (the current stream when None) at the time of the call.

    Blocks the calling thread until the copy is done: call it from a worker
    thread. The copy runs on a private stream that waits on an event recorded
    on ``stream`` now, so kernels the caller enqueues afterwards do not delay it
    (but may overwrite the value before it is copied unless the caller's stream
    is made to wait; the sink's spill path captures through the stager instead
    when the capture contract matters).
    """
    be = backend_for(value)
    arr = be.as_array(value)
    with be.use_device(be.device_id(arr)):
        caller = be.resolve_stream(stream, value)
        side = be.new_stream()
        try:
            ready = be.new_event()
            be.record(ready, caller)
            be.wait_event(side, ready)
            src = arr
            if not be.is_contiguous(arr):
                src = be.empty(tuple(arr.shape), arr.dtype)
                be.copy_d2d_async(src, arr, side)
            out = np.empty(tuple(arr.shape), arr.dtype)
            if out.nbytes:
                be.copy_d2h_async(out.reshape(-1).view(np.uint8), src, side)
            be.stream_synchronize(side)
        finally:
            be.close_stream(side)
    return out


class DeviceCompletion:
    """Completion of one device capture: the frame's host views are valid once
    :meth:`done` is true.

    :meth:`wait` polls the copy-done event with an adaptive backoff: a few bare
    checkpoints (a copy that is nearly done costs no timer), then sleeps growing
    from 20 µs to 1 ms. Polling was chosen over a waiter thread per copy stream
    (blocking-sync events plus ``call_soon_threadsafe``): a ``cudaEventQuery`` costs
    about a microsecond, nothing outlives a cancelled ``wait``, no thread has to
    be owned and shut down per sink, and no CUDA host callback is involved
    (``cudaLaunchHostFunc`` calling into Python deadlocks against the GIL). The
    consumer awaits completions in write order, so in a steady stream the later
    frames are already done when awaited and the backoff latency (bounded by
    ~1 ms, the event loop's timer resolution) is paid at most once per burst.
    """

    __slots__ = ("_backend", "_event")

    #: bare checkpoints before the first timed sleep
    SPINS = 8
    #: first and largest sleep between two queries (seconds)
    MIN_DELAY = 20e-6
    MAX_DELAY = 1e-3

    def __init__(self, backend: DeviceBackend | None, event: Any):
        self._backend = backend
        self._event: Any = event

    def done(self) -> bool:
        """True once the captured data is in its destination buffers.

        Safe to call while another thread is in :meth:`synchronize` (the writer
        process's proxy thread waits on the copy the producer polls).
        """
        event = self._event
        if event is None or self._backend is None:
            return True
        if self._backend.event_done(event):
            self._event = None
            return True
        return False

    async def wait(self) -> None:
        """Wait without blocking the event loop until :meth:`done`; always checkpoints."""
        spins = 0
        delay = self.MIN_DELAY
        while not self.done():
            if spins < self.SPINS:
                spins += 1
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(delay)
                delay = min(delay * 2, self.MAX_DELAY)
        if spins == 0:
            await anyio.lowlevel.checkpoint()

    def synchronize(self) -> None:
        """Block the calling thread until done (worker threads only, never the loop)."""
        event = self._event
        if event is not None and self._backend is not None:
            self._backend.event_synchronize(event)
            self._event = None


class _SlotState:
    """The stager's buffers of one slot: a pinned host buffer and a device buffer
    per field (flat ``uint8``), grown for ragged fields, reused otherwise."""

    __slots__ = ("__weakref__", "device", "last_event", "pinned")

    def __init__(self) -> None:
        self.pinned: dict[str, np.ndarray[Any, Any]] = {}
        self.device: dict[str, Any] = {}
        #: the copy-stream event after the last work that used these buffers
        self.last_event: Any = None

    @property
    def pinned_nbytes(self) -> int:
        return sum(b.nbytes for b in self.pinned.values())

    @property
    def device_nbytes(self) -> int:
        return sum(int(b.nbytes) for b in self.device.values())


class DeviceStager:
    """Captures device arrays into per-slot pinned host buffers, asynchronously.

    One stager serves one sink. It owns one non-blocking copy stream; every
    copy of every capture is ordered on it, so a slot re-captured before its
    previous capture completed (``drop_oldest``) is overwritten only after the
    previous copy into it finished.

    Parameters
    ----------
    capacity
        The channel's slot count. Pinned (and, for ``"snapshot"``, device)
        memory is at most ``capacity`` x the largest frame's device fields.
    strategy
        ``"snapshot"`` (default): a device-to-device snapshot into a per-slot
        device buffer, which the caller's stream waits for, then the
        device-to-host copy overlapping the caller's work. ``"direct"``: the
        device-to-host copy reads the caller's array and the caller's stream
        waits for all of it (no device memory used, less overlap).
    backend
        A :class:`~snapsink._staging.backend.DeviceBackend`; by default chosen
        from the first captured value (emulated arrays use the emulation).

    Raises
    ------
    ConfigError
        For a capacity below 1 or an unknown strategy.
    """

    def __init__(
        self,
        capacity: int,
        *,
        strategy: str = "snapshot",
        backend: DeviceBackend | None = None,
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"capacity: expected an int >= 1, got {capacity!r}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
        self.capacity = capacity
        self.strategy = strategy
        self._backend = backend
        self._device: int | None = None
        self._copy_stream: Any = None
        # weak: a slot (and its buffers) lives as long as the channel's pool keeps it
        self._states: weakref.WeakSet[_SlotState] = weakref.WeakSet()
        # (event, refs): objects kept alive until the copy-stream event completes.
        # Events of one stream complete in order, so the deque retires from the left.
        self._inflight: collections.deque[tuple[Any, Any]] = collections.deque()
        # writer process: slot index -> its shared mapping, page-locked; and
        # (event, array) of mappings to unregister once the event completed
        self._registered: dict[int, Any] = {}
        self._unregister: collections.deque[tuple[Any, Any]] = collections.deque()
        self._closed = False

    # -- introspection ------------------------------------------------------
    @property
    def backend(self) -> DeviceBackend | None:
        """The backend in use (None before the first capture)."""
        return self._backend

    @property
    def copy_stream(self) -> Any:
        """The stager's copy stream (None before the first capture)."""
        return self._copy_stream

    @property
    def pinned_nbytes(self) -> int:
        """Pinned host bytes held by all slots."""
        return sum(s.pinned_nbytes for s in self._states)

    @property
    def device_nbytes(self) -> int:
        """Device bytes held by all slots (snapshot buffers)."""
        return sum(s.device_nbytes for s in self._states)

    @property
    def inflight(self) -> int:
        """Objects still referenced for copies not known to be complete."""
        return len(self._inflight)

    # -- capture ----------------------------------------------------------------
    def capture(
        self,
        slot: Slot,
        items: Sequence[tuple[str, Field, Any]],
        stream: Any = None,
        *,
        to_host: bool = True,
        borrow: bool = False,
    ) -> tuple[dict[str, Any], DeviceCompletion]:
        """Enqueue the capture of ``items`` into ``slot``; never waits for the device.

        Parameters
        ----------
        slot
            The channel's slot; ``slot.device`` holds this stager's buffers.
        items
            ``[(name, field, device_value), ...]`` as returned by ``Schema.validate``.
        stream
            The caller's stream: a CuPy stream, a ``torch.cuda.Stream``, anything
            with ``__cuda_stream__``, a raw ``int`` handle, or None for the
            current stream (PyTorch's current stream for a torch tensor).
        to_host
            True: return host (pinned) views. False: return device views of the
            slot's device snapshot (for a store that keeps frames on the device,
            such as :class:`~snapsink.GPUBuffer`); no pinned memory is used.
        borrow
            True (``write(..., copy=False)``): the caller promises not to modify
            the arrays (JAX arrays never are; a loop that allocates new arrays
            each step qualifies). The device-to-host copy reads them directly and
            the caller's stream never waits; they stay referenced until copied.

        Returns
        -------
        fields, completion
            ``{name: array of the field's dtype and the frame's shape}``, valid
            once ``completion.done()``; the caller's stream will not overwrite the
            captured arrays before they are copied.

        Raises
        ------
        DeviceError
            CuPy missing, arrays of another backend or device, a CUDA error.
        """
        if self._closed:
            raise DeviceError("the device stager is closed")
        if not items:
            return {}, DeviceCompletion(self._backend, None)
        be = self._select_backend(items)
        try:
            arrays = [(name, field, be.as_array(value)) for name, field, value in items]
            device = be.device_id(arrays[0][2])
            if self._device is None:
                self._device = device
            for name, _, arr in arrays:
                if be.device_id(arr) != self._device:
                    raise DeviceError(
                        f"field {name!r}: expected an array on device {self._device} (the "
                        f"sink's first device array), got one on device {be.device_id(arr)}"
                    )
            with be.use_device(self._device):
                return self._capture(be, slot, arrays, stream, items[0][2], to_host, borrow)
        except (DeviceError, ConfigError):
            raise
        except Exception as exc:
            raise DeviceError(f"device capture failed: {exc}") from exc

    def _capture(
        self,
        be: DeviceBackend,
        slot: Slot,
        arrays: list[tuple[str, Field, Any]],
        stream: Any,
        first_value: Any,
        to_host: bool,
        borrow: bool = False,
    ) -> tuple[dict[str, Any], DeviceCompletion]:
        caller = be.resolve_stream(stream, first_value)
        if self._copy_stream is None:
            self._copy_stream = be.new_stream()
        copy = self._copy_stream
        state = slot.device
        if not isinstance(state, _SlotState):
            state = slot.device = _SlotState()
            self._states.add(state)
        self._retire_done(be)

        ready = be.new_event()
        be.record(ready, caller)
        be.wait_event(copy, ready)

        snapshot = (self.strategy == "snapshot" or not to_host) and not borrow
        out, d2h = self._stage_fields(be, slot, state, arrays, copy, snapshot, to_host)

        if snapshot:
            snap = be.new_event()
            be.record(snap, copy)
            be.wait_event(caller, snap)
            # the caller's arrays are read by the snapshot only
            self._inflight.append((snap, [a for _, _, a in arrays]))
        for host, src in d2h:
            be.copy_d2h_async(host, src, copy)
        done = be.new_event()
        be.record(done, copy)
        if not snapshot:
            if not borrow:
                be.wait_event(caller, done)
            self._inflight.append((done, [a for _, _, a in arrays]))
        state.last_event = done
        return out, DeviceCompletion(be, done)

    def _stage_fields(
        self,
        be: DeviceBackend,
        slot: Slot,
        state: _SlotState,
        arrays: list[tuple[str, Field, Any]],
        copy: Any,
        snapshot: bool,
        to_host: bool,
    ) -> tuple[dict[str, Any], list[tuple[np.ndarray[Any, Any], Any]]]:
        """Each field's place: a snapshot on the device (its copy enqueued on
        ``copy``) when one is taken or needed, then, for ``to_host``, its host
        buffer. Returns the fields as the store will see them and the
        device-to-host copies still to enqueue."""
        out: dict[str, Any] = {}
        d2h: list[tuple[np.ndarray[Any, Any], Any]] = []
        for name, field, arr in arrays:
            rows = int(arr.shape[0]) if field.ragged else None
            nbytes = field.frame_nbytes(rows)
            fshape = (
                (rows, *field.row_shape)
                if rows is not None
                else tuple(int(n) for n in field.shape if n is not None)
            )
            src = arr
            if snapshot or arr.dtype != field.dtype or not be.is_contiguous(arr):
                flat = self._buffer(be, state, state.device, name, nbytes, pinned=False)
                src = be.view(flat, field.dtype, fshape)
                if nbytes:
                    be.copy_d2d_async(src, arr, copy)
            if to_host:
                if slot.host_views is not None:
                    # a writer process's shared slot, page-locked in place
                    self._register(be, slot)
                    host = slot.host_views[name]
                else:
                    host = self._buffer(be, state, state.pinned, name, nbytes, pinned=True)
                out[name] = host[:nbytes].view(field.dtype).reshape(fshape)
                if nbytes:
                    d2h.append((host[:nbytes], src))
            else:
                out[name] = src
        return out, d2h

    def _buffer(
        self,
        be: DeviceBackend,
        state: _SlotState,
        buffers: dict[str, Any],
        name: str,
        nbytes: int,
        *,
        pinned: bool,
    ) -> Any:
        """The slot's flat buffer for ``name``, grown to ``nbytes`` if needed."""
        buf = buffers.get(name)
        if buf is not None and int(buf.nbytes) >= nbytes:
            return buf
        if buf is not None and state.last_event is not None:
            # an earlier copy may still read or write the old buffer
            self._inflight.append((state.last_event, buf))
        size = max(nbytes, 1)
        buf = be.alloc_pinned(size) if pinned else be.empty((size,), np.dtype(np.uint8))
        buffers[name] = buf
        return buf

    def _retire_done(self, be: DeviceBackend) -> None:
        while self._inflight and be.event_done(self._inflight[0][0]):
            self._inflight.popleft()
        while self._unregister and be.event_done(self._unregister[0][0]):
            be.unregister_host(self._unregister.popleft()[1])

    def _register(self, be: DeviceBackend, slot: Slot) -> None:
        """Page-lock the slot's shared mapping the first time a copy targets it."""
        mem = slot.shared
        if self._registered.get(slot.index) is mem:
            return
        self.forget_host(slot.index)
        be.register_host(mem.array)
        self._registered[slot.index] = mem

    def forget_host(self, index: int) -> None:
        """Slot ``index`` got a new shared mapping: unregister the old one once
        the copies already enqueued (which may still write it) have completed."""
        old = self._registered.pop(index, None)
        be = self._backend
        if old is None or be is None:
            return
        if self._copy_stream is None:
            be.unregister_host(old.array)
            return
        event = be.new_event()
        be.record(event, self._copy_stream)
        self._unregister.append((event, old.array))

    def _select_backend(self, items: Sequence[tuple[str, Field, Any]]) -> DeviceBackend:
        be = self._backend
        if be is None:
            be = self._backend = backend_for(items[0][2])
        for name, _, value in items:
            if not be.owns(value):
                raise DeviceError(
                    f"field {name!r}: a {type(value).__name__} cannot be captured by the "
                    f"{be.name} backend this sink started with; use one kind of device array"
                )
        return be

    # -- shutdown ------------------------------------------------------------------
    def synchronize(self) -> None:
        """Block until every enqueued copy completed (worker threads only)."""
        if self._backend is not None and self._copy_stream is not None:
            self._backend.stream_synchronize(self._copy_stream)
            self._inflight.clear()

    def close(self) -> None:
        """Wait for in-flight copies, then release the copy stream and all buffers.

        Blocks only while copies are in flight: once every completion was
        awaited it returns at once. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.synchronize()
        finally:
            if self._backend is not None and self._copy_stream is not None:
                self._backend.close_stream(self._copy_stream)
            self._copy_stream = None
            if self._backend is not None:
                for mem in self._registered.values():
                    self._backend.unregister_host(mem.array)
                for _, arr in self._unregister:
                    self._backend.unregister_host(arr)
            self._registered.clear()
            self._unregister.clear()
            for state in self._states:
                state.pinned.clear()
                state.device.clear()
            self._states.clear()
