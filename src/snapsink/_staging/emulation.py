"""A CPU emulation of the CUDA device path: the device stager's test double.

Without CuPy or a GPU, tests (and CI) run the *same* capture, event and
completion code as on a GPU, through :class:`EmulationBackend`:

- :class:`EmulatedDeviceArray` wraps a numpy array that plays device memory.
  ``is_device_array`` recognises it, and it deliberately has no ``__array__``:
  like a CuPy array it is not silently converted to a host array.
- :class:`EmulatedStream` runs enqueued operations (kernels as Python callables,
  copies, event records and waits) in order on its own worker thread. Its queue
  is bounded like a CUDA launch queue (enqueueing blocks when it is full).
- :class:`EmulatedEvent` has CUDA's semantics: ``record`` marks the work enqueued
  so far; ``done`` queries; ``synchronize`` blocks; ``stream.wait_event(e)``
  makes the stream's later work wait for the record current at the call.

A kernel that overwrites an array runs only when its stream reaches it, so a
test can enqueue "overwrite" right after a capture and check that the stored
frame holds the values from before; a gate kernel (``stream.launch(gate.wait)``)
stalls a stream to prove that ``capture`` never waits for the device.

This is a test double, not a second implementation: the stager's logic lives in
``device.py`` only.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, DeviceError
from .backend import DeviceBackend

__all__ = [
    "EmulatedDeviceArray",
    "EmulatedEvent",
    "EmulatedStream",
    "EmulationBackend",
    "current_stream",
    "null_stream",
]

#: operations a stream may hold before ``launch`` blocks (CUDA's launch queue is ~1024)
QUEUE_DEPTH = 1024


class EmulatedDeviceArray:
    """A "device" array backed by a numpy array (``.host``).

    Touch ``.host`` only from operations enqueued on a stream (``stream.launch``),
    as a kernel would, or after synchronizing; :meth:`get` does that for you.
    """

    __snapsink_emulated_device__: ClassVar[bool] = True
    __slots__ = ("host",)

    def __init__(self, host: np.ndarray[Any, Any]):
        self.host = host

    @classmethod
    def empty(cls, shape: tuple[int, ...] | int, dtype: Any = np.float64) -> EmulatedDeviceArray:
        return cls(np.empty(shape, dtype))

    @classmethod
    def from_host(cls, arr: Any, dtype: Any = None) -> EmulatedDeviceArray:
        """A device copy of a host array (an immediate copy; no stream involved)."""
        return cls(np.array(arr, dtype=dtype, copy=True))

    @property
    def dtype(self) -> np.dtype[Any]:
        dt: np.dtype[Any] = self.host.dtype
        return dt

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.host.shape)

    @property
    def ndim(self) -> int:
        return self.host.ndim

    @property
    def size(self) -> int:
        return int(self.host.size)

    @property
    def nbytes(self) -> int:
        return int(self.host.nbytes)

    def __len__(self) -> int:
        return len(self.host)

    def __getitem__(self, index: Any) -> EmulatedDeviceArray:
        return EmulatedDeviceArray(self.host[index])

    def get(self, stream: EmulatedStream | None = None) -> np.ndarray[Any, Any]:
        """A host copy, ordered after ``stream`` (the current stream by default); blocks."""
        s = current_stream() if stream is None else stream
        out = np.empty_like(self.host)
        s.launch(np.copyto, out, self.host)
        s.synchronize()
        return out

    def __repr__(self) -> str:
        return f"EmulatedDeviceArray(shape={self.shape}, dtype={self.dtype})"


class EmulatedEvent:
    """A CUDA-like event. Never recorded, it counts as complete.

    As with CUDA, where an asynchronous error is sticky and ``cudaEventQuery``
    returns it, an event recorded after an operation on its stream failed
    raises that failure (a DeviceError) from :attr:`done` and
    :meth:`synchronize` once it completes, instead of reporting success.
    """

    __slots__ = ("_error", "_flag")

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._flag.set()
        self._error: BaseException | None = None

    def record(self, stream: EmulatedStream | None = None) -> None:
        flag = threading.Event()
        self._flag = flag
        self._error = None
        s = current_stream() if stream is None else stream

        def complete() -> None:
            self._error = s.error
            flag.set()

        s.launch(complete)

    def _raise_failure(self) -> None:
        error = self._error
        if error is not None:
            raise DeviceError(f"an operation before this event failed: {error}") from error

    @property
    def done(self) -> bool:
        if not self._flag.is_set():
            return False
        self._raise_failure()
        return True

    def synchronize(self) -> None:
        self._flag.wait()
        self._raise_failure()


class EmulatedStream:
    """A stream: operations run in enqueue order on one worker thread.

    Use it as a context manager to make it the calling thread's current stream.
    An operation that raises is recorded; :meth:`synchronize` re-raises it.
    """

    def __init__(self, name: str = "stream"):
        self.name = name
        self._ops: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"EmulatedStream({self.name!r})"

    # -- enqueueing -------------------------------------------------------
    def launch(self, fn: Callable[..., Any], *args: Any) -> None:
        """Enqueue ``fn(*args)`` (a "kernel" or a copy); returns at once."""
        with self._cond:
            if self._closed:
                raise DeviceError(f"{self!r} is closed")
            while len(self._ops) >= QUEUE_DEPTH:
                self._cond.wait()
            self._ops.append((fn, args))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"snapsink-emulated-{self.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def record(self, event: EmulatedEvent | None = None) -> EmulatedEvent:
        ev = EmulatedEvent() if event is None else event
        ev.record(self)
        return ev

    def wait_event(self, event: EmulatedEvent) -> None:
        """Later work on this stream waits for ``event``'s current record."""
        flag = event._flag
        if not flag.is_set():
            self.launch(flag.wait)

    def synchronize(self) -> None:
        """Block until every enqueued operation ran; re-raise the first failure."""
        with self._cond:
            while self._ops or self._busy:
                self._cond.wait()
            error, self.error = self.error, None
        if error is not None:
            raise DeviceError(f"an operation on {self!r} failed: {error}") from error

    def close(self) -> None:
        """Finish the enqueued work and stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the worker ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._cond.wait()
                if not self._ops:
                    return
                fn, args = self._ops.popleft()
                self._busy = True
                self._cond.notify_all()
            try:
                fn(*args)
            except BaseException as exc:  # a failing kernel is reported at sync
                if self.error is None:
                    self.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # -- current stream --------------------------------------------------------
    def __enter__(self) -> EmulatedStream:
        _stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack().pop()


_local = threading.local()
_null_lock = threading.Lock()
_null: list[EmulatedStream] = []


def _stack() -> list[EmulatedStream]:
    stack: list[EmulatedStream] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def null_stream() -> EmulatedStream:
    """The process-wide default stream (like CUDA's stream 0)."""
    with _null_lock:
        if not _null:
            _null.append(EmulatedStream("null"))
        return _null[0]


def current_stream() -> EmulatedStream:
    """The calling thread's current stream (``with stream:``), else the null stream."""
    stack = _stack()
    return stack[-1] if stack else null_stream()


class EmulationBackend(DeviceBackend):
    """:class:`DeviceBackend` over emulated streams, events and arrays."""

    name = "emulation"

    def owns(self, value: object) -> bool:
        return isinstance(value, EmulatedDeviceArray)

    def as_array(self, value: Any) -> EmulatedDeviceArray:
        if not isinstance(value, EmulatedDeviceArray):
            raise DeviceError(
                f"the emulation backend takes EmulatedDeviceArray, got {type(value).__name__}"
            )
        return value

    def dtype_shape(self, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
        arr = self.as_array(value)
        return arr.dtype, arr.shape

    def device_id(self, arr: Any) -> int:
        return 0

    def is_contiguous(self, arr: Any) -> bool:
        return bool(arr.host.flags.c_contiguous)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> EmulatedDeviceArray:
        return EmulatedDeviceArray(np.empty(shape, dtype))

    def view(self, flat: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> EmulatedDeviceArray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return EmulatedDeviceArray(flat.host[:nbytes].view(dtype).reshape(shape))

    def alloc_pinned(self, nbytes: int) -> np.ndarray[Any, Any]:
        return np.empty(max(nbytes, 1), np.uint8)

    #: addresses registered with :meth:`register_host` and not yet unregistered
    #: (what cudaHostRegister would have page-locked), for tests to check
    registered: ClassVar[set[int]] = set()

    def register_host(self, arr: np.ndarray[Any, Any]) -> None:
        if arr.ctypes.data in self.registered:
            raise RuntimeError("emulation: host memory registered twice")
        self.registered.add(arr.ctypes.data)

    def unregister_host(self, arr: np.ndarray[Any, Any]) -> None:
        self.registered.remove(arr.ctypes.data)

    def resolve_stream(self, stream: Any, value: Any = None) -> EmulatedStream:
        if stream is None:
            return current_stream()
        if isinstance(stream, EmulatedStream):
            return stream
        raise ConfigError(
            f"stream: expected an EmulatedStream or None for emulated device arrays, "
            f"got {type(stream).__name__}"
        )

    def new_stream(self) -> EmulatedStream:
        return EmulatedStream("copy")

    def new_event(self) -> EmulatedEvent:
        return EmulatedEvent()

    def close_stream(self, stream: Any) -> None:
        stream.close()

    def copy_d2d_async(self, dst: Any, src: Any, stream: Any) -> None:
        stream.launch(_copy, dst.host, src.host)

    def copy_d2h_async(self, dst: np.ndarray[Any, Any], src: Any, stream: Any) -> None:
        stream.launch(_copy_bytes, dst, src.host)

    def copy_h2d_async(self, dst: Any, src: np.ndarray[Any, Any], stream: Any) -> None:
        stream.launch(_copy_bytes, dst.host, src)

    def take(self, arr: Any, index: np.ndarray[Any, Any], stream: Any) -> EmulatedDeviceArray:
        out = EmulatedDeviceArray(np.empty((len(index), *arr.shape[1:]), arr.dtype))
        stream.launch(np.take, arr.host, index, 0, out.host)
        return out

    def concatenate(self, arrays: Sequence[Any], stream: Any) -> EmulatedDeviceArray:
        first = arrays[0]
        rows = sum(a.shape[0] for a in arrays)
        out = EmulatedDeviceArray(np.empty((rows, *first.shape[1:]), first.dtype))
        stream.launch(_concatenate, out.host, [a.host for a in arrays])
        return out

    def from_host(self, arr: np.ndarray[Any, Any], stream: Any) -> EmulatedDeviceArray:
        return EmulatedDeviceArray.from_host(arr)


def _copy(dst: np.ndarray[Any, Any], src: np.ndarray[Any, Any]) -> None:
    np.copyto(dst, src.reshape(dst.shape), casting="unsafe")


def _copy_bytes(dst: np.ndarray[Any, Any], src: np.ndarray[Any, Any]) -> None:
    dst.reshape(-1).view(np.uint8)[:] = src.reshape(-1).view(np.uint8)


def _concatenate(out: np.ndarray[Any, Any], arrays: list[np.ndarray[Any, Any]]) -> None:
    np.concatenate(arrays, axis=0, out=out)
