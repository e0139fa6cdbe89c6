"""The dtype rule: which dtypes a field may take, and which values cast into them.

Free of I/O, like :mod:`snapsink._schema`, which calls it on every write; kept
apart because it is about one value (its dtype and shape, host or device, and
whether numpy casts it without loss), not about fields, frames or steps.

Dtype rule
----------
A value is accepted for a field when numpy says the cast to the field's dtype is
*safe* (``np.can_cast(value.dtype, field.dtype, "safe")``): ``int32`` into an
``int64`` field, ``float32`` into ``float64``, a big-endian ``>f8`` into ``<f8``.
A lossy cast (``float64`` into ``float32``, a float into an int, complex into
real) is a :class:`~snapsink.DTypeError`: snapsink never rounds a value silently.
NumPy also calls ``int64`` and ``uint64`` into ``float64`` (and ``complex128``)
safe, though integers beyond ``2**53`` round there: such a value is taken only
when each of its integers is exact in the field (a device array's, which would
have to be read to tell, never: convert it on the device).
Python scalars are *weak* as in NumPy 2 (NEP 50): a Python ``float`` fits any
floating field whose range holds its value (it is rounded to the field's
precision, but ``1e300`` into a ``float32`` field, which would become ``inf``,
is a :class:`~snapsink.DTypeError`), a Python ``complex`` any complex field on
the same terms, a Python ``int`` any integer or floating field that holds it
exactly (``2**70`` into an ``int64`` field, or ``2**53 + 1`` into a ``float64``
one, is a :class:`~snapsink.DTypeError`, never an ``OverflowError``), and a
Python ``bool``, like ``np.bool_``, any bool, integer, floating or complex
field (numpy's safe cast from bool). NumPy
scalars are not weak, although ``np.float64`` and ``np.complex128`` are also
Python ``float`` and ``complex``: ``np.float64(0.1)`` into a ``float32`` field
is refused, as ``np.array(0.1)`` is.
Object, string, structured and datetime dtypes are refused, and so is a masked
array with masked elements (a store keeps no mask; one with none is stored as
its data).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np

from ._arrays import is_device_array
from ._errors import ConfigError, DTypeError
from ._pytree import SEP

__all__ = [
    "ALLOWED_KINDS",
    "as_dtype",
    "as_host_array",
    "becomes_inf",
    "dtype_shape",
    "exportable",
    "holds_any_float",
    "int_str",
    "rounds_int",
    "safe_cast",
    "unmasked",
]

#: dtype kinds a field may have: bool, signed, unsigned, float, complex.
ALLOWED_KINDS = frozenset("biufc")


def as_dtype(dtype: object, what: str) -> np.dtype[Any]:
    """The native-order numpy dtype a field declared as ``dtype`` stores."""
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise ConfigError(f"{what}: {dtype!r} is not a numpy dtype") from exc
    if dt.kind not in ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise ConfigError(
            f"{what}: dtype {dt} is not storable; expected bool, integer, float or complex"
        )
    # Stored data is always native (little-endian on every supported machine).
    native: np.dtype[Any] = dt.newbyteorder("=") if dt.byteorder not in "=|" else dt
    return native


def as_host_array(name: str, value: object, step: int | None = None) -> np.ndarray[Any, Any]:
    """``value`` as a numpy array of a storable dtype (through DLPack when that is
    all numpy can read of it), or a DTypeError naming ``name``."""
    at = "" if step is None else f" at step {step}"
    if value is None:
        raise DTypeError(f"field {name!r}: expected an array or a number, got None{at}")
    if isinstance(value, Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        raise DTypeError(
            f"field {name!r}: expected an array or a number, got a nested "
            f"{type(value).__name__}{at}; the schema holds {name!r} as one field (nested "
            f"state is stored as fields named {name + SEP}<key>: declare those)"
        )
    value = exportable(value)
    try:
        arr = np.asarray(value)
    except Exception as exc:
        if _is_tensor(value):
            refused = _torch_dtype_error(name, value.dtype, at)
            if refused is not None:
                raise refused from exc
        if hasattr(type(value), "__dlpack__") and not hasattr(type(value), "__array__"):
            return _from_dlpack(name, value, at)  # its own message, naming the device
        raise DTypeError(
            f"field {name!r}: expected an array or a number, got {type(value).__name__}"
            f"{at}, which numpy cannot read ({type(exc).__name__}: {exc})"
        ) from exc
    if arr.dtype.kind == "O" and hasattr(type(value), "__dlpack__"):
        # np.asarray ignores __dlpack__: an array that exports only DLPack
        # became a 0-d object array
        return _from_dlpack(name, value, at)
    if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.fields is not None:
        raise DTypeError(
            f"field {name!r}: expected a bool, integer, float or complex array, "
            f"got dtype {arr.dtype} ({type(value).__name__}){at}"
        )
    return arr


#: DLPack device types (``__dlpack_device__()[0]``) by name, for messages
_DLPACK_DEVICES = {
    1: "CPU",
    2: "CUDA",
    3: "CUDA host",
    4: "OpenCL",
    7: "Vulkan",
    8: "Metal",
    9: "VPI",
    10: "ROCm",
    11: "ROCm host",
    12: "ext_dev",
    13: "CUDA managed",
    14: "oneAPI",
    15: "WebGPU",
    16: "Hexagon",
    17: "MAIA",
}
#: DLPack device types whose memory the CPU reads, as np.from_dlpack takes them
_DLPACK_HOST = frozenset({1, 3, 11, 13})


def _from_dlpack(name: str, value: Any, at: str) -> np.ndarray[Any, Any]:
    """A host array of a value numpy reads only through DLPack (``np.from_dlpack``),
    else a DTypeError naming ``name`` and the value's device."""
    try:
        kind, index = (int(v) for v in value.__dlpack_device__())
    except Exception:
        kind, index = 1, 0  # no device given: DLPack says the CPU
    device = f"{_DLPACK_DEVICES.get(kind, 'unknown')}:{index} (DLPack device type {kind})"
    if kind not in _DLPACK_HOST:
        raise DTypeError(
            f"field {name!r}: expected a host or CUDA array, got a {type(value).__name__} "
            f"on device {device}{at}; copy it to the host first (snapsink reads CUDA "
            "arrays through CuPy, and no other device)"
        )
    try:
        arr: np.ndarray[Any, Any] = np.from_dlpack(value)
    except Exception as exc:
        raise DTypeError(
            f"field {name!r}: got a {type(value).__name__} that exports only DLPack, on "
            f"device {device}{at}, which numpy cannot read ({type(exc).__name__}: {exc})"
        ) from exc
    if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.fields is not None:
        raise DTypeError(  # pragma: no cover - DLPack has no other dtypes numpy reads
            f"field {name!r}: expected a bool, integer, float or complex array, "
            f"got dtype {arr.dtype} ({type(value).__name__}){at}"
        )
    return arr


def _is_tensor(value: object) -> TypeGuard[Any]:
    """Whether ``value`` is a torch tensor; False while torch is not imported, or
    is being imported by another thread and has no ``Tensor`` yet (no tensor
    exists before its class does)."""
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor is not None and isinstance(value, tensor)


def exportable(value: Any) -> Any:
    """``value`` as numpy and the CUDA array interface read it: a torch tensor
    that requires grad detached, one with its conjugate or negative bit set (a
    lazy ``.conj()`` or negation view) resolved, which copies it (only then);
    anything else as it is.

    A CPU tensor with a bit set exports nothing otherwise; a CUDA one would
    export its memory without the bit, wrong values."""
    if getattr(value, "requires_grad", False) and hasattr(value, "detach"):
        # a torch tensor that requires grad (a Parameter) exports nothing
        # otherwise; its values are what is recorded
        value = value.detach()
    if _is_tensor(value):
        if value.is_conj():
            value = value.resolve_conj()
        if value.is_neg():
            value = value.resolve_neg()
    return value


#: torch dtypes that numpy has (their names); torch exports no other
_TORCH_NUMPY_DTYPES = frozenset(
    f"torch.{n}"
    for n in (
        "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 "
        "float16 float32 float64 complex64 complex128"
    ).split()
)

#: torch dtype -> whether numpy has it (filled as dtypes are met)
_TORCH_DTYPE_OK: dict[Any, bool] = {}


def _torch_dtype_error(name: str, dtype: Any, at: str) -> DTypeError | None:
    """The DTypeError for a tensor of the torch ``dtype`` that numpy has no dtype
    for (bfloat16, float8, complex32, quantized, bit and sub-byte types), saying
    what to do; None for a dtype numpy has."""
    ok = _TORCH_DTYPE_OK.get(dtype)
    if ok is None:
        ok = _TORCH_DTYPE_OK[dtype] = str(dtype) in _TORCH_NUMPY_DTYPES
    if ok:
        return None
    spelled = str(dtype)
    hints = []
    if "qint" in spelled or "quint" in spelled:  # quantized
        hints.append("dequantize it to store its values (.dequantize())")
        hints.append("or store its integers (.int_repr())")
    else:
        if "_x" not in spelled.rpartition(".")[2]:  # not packed (float4_e2m1fn_x2)
            if dtype.is_complex:
                hints.append("cast it to store its values (.to(torch.complex64))")
            elif dtype.is_floating_point:
                hints.append("cast it to store its values (.float())")
        bits = 8 * int(dtype.itemsize)
        view = f"view its bits as integers to store them exactly (.view(torch.int{bits}))"
        hints.append(f"or {view}" if hints else view)
    return DTypeError(
        f"field {name!r}: expected a bool, integer, float or complex array, got a "
        f"Tensor of dtype {spelled}{at}, which NumPy has no dtype for; {', '.join(hints)}"
    )


def dtype_shape(
    name: str, value: object, step: int | None = None
) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """dtype and shape of a host array, Python scalar, or device array."""
    if isinstance(value, bool):
        return np.dtype(bool), ()
    if isinstance(value, int):
        return np.dtype(np.int64), ()
    if isinstance(value, float):
        return np.dtype(np.float64), ()
    if isinstance(value, complex):
        return np.dtype(np.complex128), ()
    if isinstance(value, np.ndarray | np.generic):
        if value.dtype.kind not in ALLOWED_KINDS or value.dtype.fields is not None:
            at = "" if step is None else f" at step {step}"
            raise DTypeError(
                f"field {name!r}: expected a bool, integer, float or complex array, "
                f"got dtype {value.dtype}{at}"
            )
        return value.dtype, tuple(value.shape)
    if is_device_array(value):
        from ._staging.device import device_dtype_shape

        if _is_tensor(value):
            at = "" if step is None else f" at step {step}"
            refused = _torch_dtype_error(name, value.dtype, at)
            if refused is not None:
                raise refused
        return device_dtype_shape(name, value)
    arr = as_host_array(name, value, step)
    return arr.dtype, arr.shape


def int_str(value: int) -> str:
    """An int for a message: digits, or its size when it has too many."""
    return str(value) if value.bit_length() <= 128 else f"of {value.bit_length()} bits"


def unmasked(name: str, value: Any, step: int | None = None) -> Any:
    """A numpy masked array's data when none of it is masked (else a DTypeError
    naming ``name``); any other value as it is."""
    # no masked array exists before numpy.ma is imported, nor while another
    # thread imports it and it has no MaskedArray yet (``()``: no class at all)
    ma = sys.modules.get("numpy.ma")
    if ma is None or not isinstance(value, getattr(ma, "MaskedArray", ())):
        return value
    masked = int(np.count_nonzero(ma.getmaskarray(value)))
    if masked:
        at = "" if step is None else f" at step {step}"
        raise DTypeError(
            f"field {name!r}: expected values, got a masked array with {masked} masked "
            f"element(s){at}; a store keeps no mask: pass .filled(fill_value) (or the "
            "mask as a field of its own)"
        )
    return ma.getdata(value)


@functools.cache
def _int_limit(dst: np.dtype[Any]) -> int:
    """The largest magnitude of an int a floating or complex ``dst`` holds, exactly."""
    return int(np.finfo(dst).max)


@functools.cache
def _exact_int(dst: np.dtype[Any]) -> int:
    """Every integer of at most this magnitude is exact in a floating or complex
    ``dst`` (``2**53`` for float64): its significand's bits."""
    return 1 << (int(np.finfo(dst).nmant) + 1)


def _ints_exact(value: object, src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Whether the integers of ``value`` (of integer dtype ``src``) are all exact
    in the floating or complex ``dst``: always where ``dst``'s significand holds
    every ``src`` (``int32`` into ``float64``), else by their values (``int64``
    into ``float64``, which numpy calls safe). A device array's values would have
    to be read, waiting for the device: not taken."""
    limit = _exact_int(dst)
    if np.iinfo(src).max < limit:
        return True
    if is_device_array(value):
        return False
    arr = np.asarray(value)
    if src.kind == "u":
        within = (arr <= limit).all()
    else:
        within = ((arr >= -limit) & (arr <= limit)).all()
    if within:
        return True
    # beyond it, exact only where the low bits are zero (2**60): read them back
    # (one that rounds up past src's range comes back as another integer)
    with np.errstate(invalid="ignore"):
        back = arr.astype(dst).real.astype(src)
    return bool((back == arr).all())


@functools.cache
def _float_limit(dst: np.dtype[Any]) -> float:
    """Finite Python floats of a smaller magnitude stay finite in ``dst`` (floating or
    complex: its parts); those at or above it round to ``inf``. ``inf`` when every
    finite float does (float64 and wider)."""
    info = np.finfo(dst)
    if info.dtype.itemsize >= 8:
        return math.inf
    # round to nearest: a value at least half an ulp (of the largest finite
    # value, 2**(maxexp - 1 - nmant)) above that value rounds to inf; exact in
    # float64 for float16 and float32
    return float(info.max) + math.ldexp(1.0, info.maxexp - 2 - info.nmant)


def holds_any_float(dst: np.dtype[Any]) -> bool:
    """Whether every Python float fits ``dst`` (float64, longdouble and their complex)."""
    return dst.kind in "fc" and _float_limit(dst) == math.inf


def safe_cast(value: object, src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Whether ``value`` (of dtype ``src``) goes into ``dst`` without loss."""
    if isinstance(value, np.generic):
        # NumPy scalars are strong, np.float64 and np.complex128 too (they also
        # subclass Python's float and complex)
        return _safe_dtypes(value, src, dst)
    if isinstance(value, bool):
        # As np.bool_: numpy casts bool safely to every numeric kind.
        return bool(np.can_cast(np.bool_, dst, "safe"))
    if isinstance(value, int):
        if dst.kind in "fc":
            if abs(value) > _int_limit(dst):
                return False
            if abs(value) <= _exact_int(dst):
                return True
            try:  # numpy converts a long int through its decimal string
                stored = dst.type(value)
                return int(stored.real) == value  # not rounded (2**53 + 1)
            except (ValueError, OverflowError):
                return False
        if dst.kind in "iu":
            info = np.iinfo(dst)
            return bool(info.min <= value <= info.max)
        return False
    if isinstance(value, float):
        return dst.kind in "fc" and _fits_float(value, dst)
    if isinstance(value, complex):
        return dst.kind == "c" and _fits_float(value.real, dst) and _fits_float(value.imag, dst)
    return _safe_dtypes(value, src, dst)


def _safe_dtypes(value: object, src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """NumPy's safe cast, less the integers it rounds (see the module docstring)."""
    if not np.can_cast(src, dst, "safe"):
        return False
    return src.kind not in "iu" or dst.kind not in "fc" or _ints_exact(value, src, dst)


def rounds_int(value: object, dst: np.dtype[Any]) -> bool:
    """Whether ``value`` is a Python int that a floating or complex ``dst`` holds
    in range but not exactly, refused by :func:`safe_cast` for that alone."""
    if not isinstance(value, int) or isinstance(value, bool) or dst.kind not in "fc":
        return False
    return abs(value) <= _int_limit(dst) and not safe_cast(value, np.dtype(np.int64), dst)


def becomes_inf(value: object, dst: np.dtype[Any]) -> bool:
    """Whether ``value`` is a Python float (or complex) of a kind ``dst`` takes,
    refused by :func:`safe_cast` only because it would be stored as ``inf``."""
    if isinstance(value, np.generic):
        return False
    if isinstance(value, float):
        return dst.kind in "fc" and not _fits_float(value, dst)
    if isinstance(value, complex):
        return dst.kind == "c" and not (
            _fits_float(value.real, dst) and _fits_float(value.imag, dst)
        )
    return False


def _fits_float(value: float, dst: np.dtype[Any]) -> bool:
    """A finite Python float stays finite in ``dst``; nan and inf go as they are."""
    return not math.isfinite(value) or abs(value) < _float_limit(dst)
