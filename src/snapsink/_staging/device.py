"""Device staging (CUDA via CuPy, with a CPU emulation). See ``DeviceStager``.

Interface used by the sink (``_channel.py``)::

    device_dtype_shape(name, value) -> (np.dtype, tuple)     # no copy, no sync
    stager = DeviceStager(capacity)                          # lazily, at the first device array
    fields, completion = stager.capture(slot, items, stream) # items: [(name, Field, value)]
        # enqueue device-to-host copies of each device value into ``slot``'s
        # pinned buffers (``slot.device`` is the stager's per-slot state);
        # return {name: host ndarray view (valid once completion.done())} and a
        # Completion (``done()``, ``async wait()``); the caller's stream must not
        # be able to overwrite the arrays before the capture (capture contract)
    to_host_blocking(value, stream) -> np.ndarray            # for the spill path
    stager.close()
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import DeviceError

__all__ = ["DeviceStager", "device_dtype_shape", "to_host_blocking"]

_INSTALL = "install the GPU extra: pip install 'snapsink[gpu]' (CuPy for CUDA 12)"


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(f"a device (CUDA) array was passed but CuPy is not installed; {_INSTALL}") from exc
    return cupy


def device_dtype_shape(name: str, value: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
    cp = _cupy()
    arr = cp.asarray(value)
    return arr.dtype, tuple(arr.shape)


def to_host_blocking(value: Any, stream: Any = None) -> np.ndarray[Any, Any]:
    cp = _cupy()
    return cp.asnumpy(cp.asarray(value))


class DeviceStager:
    def __init__(self, capacity: int):
        raise DeviceError("device staging is being implemented")
