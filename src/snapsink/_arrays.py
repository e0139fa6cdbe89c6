"""Where an array lives: device-array detection (a leaf module: numpy only).

Used by the schema (validation), the channel (capture) and the device
backends alike, so it imports nothing of snapsink's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["is_device_array"]

_DEVICE_DLPACK_TYPES = frozenset({2, 3, 13})  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def is_device_array(value: object) -> bool:
    """True for an array that lives on a CUDA device (CuPy, PyTorch, JAX, ...)."""
    if isinstance(value, np.ndarray | np.generic | float | int | complex):
        return False
    if getattr(type(value), "__snapsink_emulated_device__", False):
        return True  # the CPU emulation of the device path (snapsink._staging.emulation)
    try:
        if hasattr(value, "__cuda_array_interface__"):
            return True
    except Exception:
        return bool(getattr(value, "is_cuda", False))
    dl = getattr(value, "__dlpack_device__", None)
    if dl is None:
        return False
    try:
        device_type = int(dl()[0])
    except Exception:
        return False
    return device_type in _DEVICE_DLPACK_TYPES and device_type != 3
