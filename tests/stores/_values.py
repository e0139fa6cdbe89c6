"""Values the stores' round-trip tests write (not collected by pytest): every
dtype a store holds, samples over each dtype's whole range, and bit-exact
comparison. Shared by the NpyDirectory and HDF5Store tests."""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
]  # fmt: skip


def sample(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """Values over the whole range of ``dtype`` (extremes, NaN, inf, -0.0)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype.kind == "b":
        flat = rng.integers(0, 2, n).astype(bool)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        flat[:2] = [info.min, info.max][: min(n, 2)]
    else:
        flat = rng.standard_normal(n).astype(dtype)
        if dtype.kind == "c":
            flat = flat + 1j * rng.standard_normal(n).astype(dtype)
        special = np.array([np.nan, np.inf, -np.inf, -0.0]).astype(dtype)
        flat[: min(n, 4)] = special[: min(n, 4)]
    return np.asarray(flat, dtype=dtype).reshape(shape)


def assert_bits(got: Any, want: Any) -> None:
    """Same dtype, same shape, same bytes (NaN payloads and -0.0 included)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()
