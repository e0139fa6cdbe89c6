"""The small device interface the stager is written against, and its CuPy backend.

:class:`DeviceBackend` names every device operation the stager and
:class:`~snapsink.GPUBuffer` need: streams, events, pinned and device
allocation, and asynchronous copies. Two backends implement it:
:class:`CupyBackend` (CUDA, through CuPy) and
:class:`~snapsink._staging.emulation.EmulationBackend` (a CPU test double whose
streams run enqueued work in order on worker threads). The capture logic
(``device.py``) is written once against this interface.

CuPy is imported lazily, at the first device array: importing snapsink never
imports CuPy.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._arrays import is_device_array
from .._dtypes import exportable
from .._errors import ConfigError, DeviceError

__all__ = ["INSTALL_HINT", "CupyBackend", "DeviceBackend", "import_cupy"]

INSTALL_HINT = "install the GPU extra: pip install 'snapsink[gpu]' (CuPy for your CUDA version)"


def import_cupy() -> Any:
    """CuPy, or a :class:`DeviceError` that says how to install it."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            f"a device (CUDA) array was passed but CuPy is not installed; {INSTALL_HINT}"
        ) from exc
    return cupy


class DeviceBackend(ABC):
    """Streams, events, allocations and asynchronous copies of one device API.

    "Device arrays" are the backend's own array type (``cupy.ndarray`` or
    :class:`~snapsink._staging.emulation.EmulatedDeviceArray`); host buffers are
    numpy arrays. Nothing here synchronizes the host unless its name says so.
    """

    name: str

    # -- arrays -----------------------------------------------------------
    @abstractmethod
    def owns(self, value: object) -> bool:
        """True when ``value`` is a device array this backend can capture."""

    @abstractmethod
    def as_array(self, value: Any) -> Any:
        """``value`` as a backend device array, zero-copy, without a sync."""

    @abstractmethod
    def dtype_shape(self, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
        """dtype and shape of a device value; no copy, no sync."""

    @abstractmethod
    def device_id(self, arr: Any) -> int:
        """The ordinal of the device ``arr`` lives on."""

    def use_device(self, device: int) -> contextlib.AbstractContextManager[Any]:
        """Make ``device`` current for the calls in the ``with`` block."""
        return contextlib.nullcontext()

    @abstractmethod
    def is_contiguous(self, arr: Any) -> bool:
        """True for a C-contiguous device array."""

    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        """A new uninitialised device array."""

    @abstractmethod
    def view(self, flat: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        """The first bytes of a flat ``uint8`` device buffer as ``dtype`` and ``shape``."""

    @abstractmethod
    def alloc_pinned(self, nbytes: int) -> np.ndarray[Any, Any]:
        """A flat ``uint8`` page-locked host buffer of ``nbytes`` bytes."""

    def register_host(self, arr: np.ndarray[Any, Any]) -> None:
        """Page-lock existing host memory (a writer process's shared slot) so
        device-to-host copies land in it directly."""
        return None

    def unregister_host(self, arr: np.ndarray[Any, Any]) -> None:
        """Undo :meth:`register_host` (no copy may still use ``arr``)."""
        return None

    # -- streams and events --------------------------------------------------
    @abstractmethod
    def resolve_stream(self, stream: Any, value: Any = None) -> Any:
        """The caller's stream: ``stream``, or the current stream of ``value``'s
        framework when ``stream`` is None."""

    @abstractmethod
    def new_stream(self) -> Any:
        """A new non-blocking stream (does not synchronize with the default stream)."""

    @abstractmethod
    def new_event(self) -> Any:
        """A new event without timing (cheap to record and query)."""

    # Events and streams with CuPy's methods (CuPy's own, and the emulation's,
    # which mirror them): one implementation for both backends.
    def record(self, event: Any, stream: Any) -> None:
        """Record ``event`` on ``stream`` (it completes when the work before it does)."""
        event.record(stream)

    def wait_event(self, stream: Any, event: Any) -> None:
        """Make ``stream``'s later work wait, device-side, for ``event``."""
        stream.wait_event(event)

    def event_done(self, event: Any) -> bool:
        """Query ``event`` without blocking."""
        return bool(event.done)

    def event_synchronize(self, event: Any) -> None:
        """Block the calling thread until ``event`` completes (worker threads only)."""
        event.synchronize()

    def stream_synchronize(self, stream: Any) -> None:
        """Block the calling thread until ``stream``'s work completes."""
        stream.synchronize()

    def close_stream(self, stream: Any) -> None:
        """Release a stream made by :meth:`new_stream` (after synchronizing it)."""
        return None

    # -- copies (asynchronous, ordered on ``stream``) ----------------------------
    @abstractmethod
    def copy_d2d_async(self, dst: Any, src: Any, stream: Any) -> None:
        """``dst[...] = src`` on ``stream``; ``dst`` is contiguous; casts and strides allowed."""

    @abstractmethod
    def copy_d2h_async(self, dst: np.ndarray[Any, Any], src: Any, stream: Any) -> None:
        """Copy contiguous ``src`` into contiguous pinned ``dst`` (same bytes) on ``stream``."""

    @abstractmethod
    def copy_h2d_async(self, dst: Any, src: np.ndarray[Any, Any], stream: Any) -> None:
        """Copy contiguous host ``src`` into contiguous ``dst`` (same bytes) on ``stream``."""

    # -- whole-array helpers for reading a GPUBuffer (may launch kernels) -------
    @abstractmethod
    def take(self, arr: Any, index: np.ndarray[Any, Any], stream: Any) -> Any:
        """``arr[index]`` along axis 0, as a new device array, ordered on ``stream``."""

    @abstractmethod
    def concatenate(self, arrays: Sequence[Any], stream: Any) -> Any:
        """Concatenate device arrays along axis 0, ordered on ``stream``."""

    @abstractmethod
    def from_host(self, arr: np.ndarray[Any, Any], stream: Any) -> Any:
        """A device copy of host ``arr`` (the call returns once it is complete)."""


def _cai_extent(shape: tuple[int, ...], strides: tuple[int, ...] | None, itemsize: int) -> int:
    if any(n == 0 for n in shape):
        return 0
    if strides is None:
        return math.prod(shape) * itemsize
    return sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + itemsize


class _StreamHandle:
    """A raw stream handle dressed in the CUDA stream protocol."""

    __slots__ = ("handle",)

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


class CupyBackend(DeviceBackend):
    """CUDA through CuPy. Accepts CuPy arrays, anything with
    ``__cuda_array_interface__`` (PyTorch, Numba) and DLPack producers (JAX)."""

    name = "cupy"

    def __init__(self) -> None:
        self.cp = import_cupy()
        try:
            count = int(self.cp.cuda.runtime.getDeviceCount())
        except Exception as exc:  # any CUDA failure here means "no usable GPU"
            raise DeviceError(f"CuPy is installed but CUDA is not usable: {exc}") from exc
        if count == 0:
            raise DeviceError("a device array was passed but no CUDA device is visible")
        rt = self.cp.cuda.runtime
        self._d2h = rt.memcpyDeviceToHost
        self._h2d = rt.memcpyHostToDevice

    # -- arrays -----------------------------------------------------------
    def owns(self, value: object) -> bool:
        return is_device_array(value) and not getattr(
            type(value), "__snapsink_emulated_device__", False
        )

    def as_array(self, value: Any) -> Any:
        cp = self.cp
        if isinstance(value, cp.ndarray):
            return value
        # a torch tensor that requires grad exports nothing otherwise, and one
        # with its conjugate or negative bit set would export wrong values
        value = exportable(value)
        cai = getattr(value, "__cuda_array_interface__", None)
        if cai is not None:
            # Built from the interface ourselves rather than cupy.asarray: CuPy
            # synchronizes the producer's stream (a host sync) when the interface
            # names one; the stager orders the copy after the caller's stream itself.
            dtype = np.dtype(cai["typestr"])
            shape = tuple(int(n) for n in cai["shape"])
            strides = cai.get("strides")
            strides = None if strides is None else tuple(int(s) for s in strides)
            if strides is not None and any(s < 0 for s in strides):
                return cp.asarray(value)
            ptr = int(cai["data"][0])
            extent = _cai_extent(shape, strides, dtype.itemsize)
            if extent == 0:
                return cp.empty(shape, dtype)
            mem = cp.cuda.UnownedMemory(ptr, extent, value)
            return cp.ndarray(shape, dtype, cp.cuda.MemoryPointer(mem, 0), strides)
        if hasattr(value, "__dlpack__"):
            try:
                return cp.from_dlpack(value)
            except Exception as exc:
                raise DeviceError(
                    f"could not take {type(value).__name__} zero-copy through DLPack: {exc}"
                ) from exc
        raise DeviceError(f"{type(value).__name__} is not a CUDA array CuPy can take")

    def dtype_shape(self, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
        if isinstance(value, self.cp.ndarray):
            return value.dtype, tuple(value.shape)
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is not None and isinstance(dtype, np.dtype):
            return dtype, tuple(int(n) for n in shape)  # JAX arrays carry numpy dtypes
        arr = self.as_array(value)
        return arr.dtype, tuple(arr.shape)

    def device_id(self, arr: Any) -> int:
        return int(arr.device.id)

    def use_device(self, device: int) -> contextlib.AbstractContextManager[Any]:
        dev = self.cp.cuda.Device(device)
        return contextlib.nullcontext() if dev.id == self.cp.cuda.Device().id else dev

    def is_contiguous(self, arr: Any) -> bool:
        return bool(arr.flags.c_contiguous)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        return self.cp.empty(shape, dtype)

    def view(self, flat: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        nbytes = math.prod(shape) * dtype.itemsize
        return flat[:nbytes].view(dtype).reshape(shape)

    def alloc_pinned(self, nbytes: int) -> np.ndarray[Any, Any]:
        mem = self.cp.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, np.uint8, max(nbytes, 1))

    def register_host(self, arr: np.ndarray[Any, Any]) -> None:
        # cudaHostRegisterDefault (0): the pages stay where they are (shared
        # with the writer process) and become page-locked for async copies.
        self.cp.cuda.runtime.hostRegister(arr.ctypes.data, arr.nbytes, 0)

    def unregister_host(self, arr: np.ndarray[Any, Any]) -> None:
        self.cp.cuda.runtime.hostUnregister(arr.ctypes.data)

    # -- streams and events --------------------------------------------------
    def _external(self, handle: int) -> Any:
        cuda = self.cp.cuda
        from_external = getattr(cuda.Stream, "from_external", None)
        if from_external is not None:  # CuPy >= 14; ExternalStream is deprecated there
            try:
                return from_external(_StreamHandle(handle))
            except TypeError:
                pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cuda.ExternalStream(handle)

    def resolve_stream(self, stream: Any, value: Any = None) -> Any:
        cuda = self.cp.cuda
        if stream is None:
            # (a torch another thread is still importing, with no Tensor yet,
            # has no tensor either)
            torch = sys.modules.get("torch")
            tensor = getattr(torch, "Tensor", None)
            if torch is not None and tensor is not None and isinstance(value, tensor):
                return self._external(int(torch.cuda.current_stream(value.device).cuda_stream))
            return cuda.get_current_stream()
        if isinstance(stream, cuda.Stream) or type(stream).__name__ == "ExternalStream":
            return stream
        proto = getattr(stream, "__cuda_stream__", None)
        if proto is not None:
            handle = proto()
            return self._external(int(handle[1] if isinstance(handle, tuple) else handle))
        if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
            return self._external(int(stream.cuda_stream))
        if isinstance(stream, int | np.integer) and not isinstance(stream, bool):
            return self._external(int(stream))
        raise ConfigError(
            f"stream: expected a CuPy or PyTorch stream, an object with __cuda_stream__, "
            f"a raw int handle, or None, got {type(stream).__name__}"
        )

    def new_stream(self) -> Any:
        return self.cp.cuda.Stream(non_blocking=True)

    def new_event(self) -> Any:
        return self.cp.cuda.Event(block=False, disable_timing=True)

    # -- copies -------------------------------------------------------------------
    def copy_d2d_async(self, dst: Any, src: Any, stream: Any) -> None:
        if src.dtype == dst.dtype and src.flags.c_contiguous and src.size == dst.size:
            dst.data.copy_from_device_async(src.data, src.nbytes, stream)
            return
        with stream:
            self.cp.copyto(dst, src.reshape(dst.shape), casting="unsafe")

    def copy_d2h_async(self, dst: np.ndarray[Any, Any], src: Any, stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(
            dst.ctypes.data, src.data.ptr, dst.nbytes, self._d2h, stream.ptr
        )

    def copy_h2d_async(self, dst: Any, src: np.ndarray[Any, Any], stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(
            dst.data.ptr, src.ctypes.data, src.nbytes, self._h2d, stream.ptr
        )

    # -- helpers for GPUBuffer ------------------------------------------------------
    def take(self, arr: Any, index: np.ndarray[Any, Any], stream: Any) -> Any:
        with stream:
            return arr[self.cp.asarray(index)]

    def concatenate(self, arrays: Sequence[Any], stream: Any) -> Any:
        with stream:
            return self.cp.concatenate(list(arrays), axis=0)

    def from_host(self, arr: np.ndarray[Any, Any], stream: Any) -> Any:
        with stream:
            out = self.cp.asarray(arr)
        stream.synchronize()
        return out
