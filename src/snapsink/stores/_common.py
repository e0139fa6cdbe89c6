"""Checks shared by every store: attrs, static arrays, modes. No I/O here."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._dtypes import ALLOWED_KINDS, unmasked
from .._errors import ConfigError, DTypeError, SchemaError, StoreLockedError
from .._schema import Schema, check_name

__all__ = [
    "MODES",
    "OneSink",
    "check_attrs",
    "check_mode",
    "check_static",
    "check_stored_static",
    "merge_metadata",
    "same_array",
]


class OneSink:
    """The claim of an in-memory store (HostMemory, GPUBuffer) by the one sink
    that has it open, from its ``open()`` to its ``close()``: frames of two
    sinks would interleave, so it has one writer at a time, as a disk store's
    lock file gives. Called under the store's own lock."""

    __slots__ = ("held", "what")

    def __init__(self, what: str):
        self.what = what  # the store's class name, for the message
        self.held = False

    def claim(self) -> None:
        """Take it for the sink opening the store.

        Raises
        ------
        StoreLockedError
            Another sink has it open; it is free again once that sink closed.
        """
        if self.held:
            raise StoreLockedError(
                f"{self.what}: expected a store no other sink has open, got one that "
                "another sink is writing (one writer at a time); close that sink "
                f"first, or give this one its own {self.what}",
                pid=os.getpid(),
            )
        self.held = True

    def release(self) -> None:
        """The sink closed the store: another may open it."""
        self.held = False

MODES = ("x", "w", "a")


def check_mode(mode: object) -> str:
    """``mode`` if it is ``"x"`` (create), ``"w"`` (replace) or ``"a"`` (append)."""
    if mode not in MODES:
        raise ConfigError(
            f"mode: expected 'x' (create, fail if it exists), 'w' (replace) or "
            f"'a' (append/resume), got {mode!r}"
        )
    # the builtin str it equals: str() of a (str, Enum) member is "Mode.X", and
    # the mode goes to the writer process, which may not import the enum
    return MODES[MODES.index(mode)]


def check_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``attrs`` converted to JSON types; the one check of every store.

    ``str``, ``int``, ``float``, ``bool`` and ``None`` stay as they are; NumPy
    scalars become the Python value they hold (``np.int64`` an ``int``,
    ``np.float32`` the ``float`` it equals, ``np.bool_`` a ``bool``); NumPy
    arrays become nested lists (``ndarray.tolist()``); tuples become lists;
    mappings (with ``str`` keys) become dicts, at any depth.

    Raises
    ------
    ConfigError
        For a value JSON cannot hold exactly: a non-finite float (JSON has no
        NaN or infinity), a complex number, a key that is not a ``str``, any
        other type, a container holding itself, or containers nested more than
        100 deep. The message names the key path, e.g.
        ``attrs['grid']['axes'][1]``, and the type that came.
    """
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ConfigError(f"attrs: expected a mapping, got {type(attrs).__name__}")
    out: dict[str, Any] = _json_value(attrs, "attrs", ())
    return out


_JSON_TYPES = (
    "str, int, finite float, bool, None, or lists and str-keyed dicts of them "
    "(NumPy scalars and arrays are converted)"
)
#: how deep attrs may nest: far beyond any metadata, and far within the
#: recursion limit, which the walk below and JSON's encoders and decoders share
MAX_DEPTH = 100


def _path_str(where: str) -> str:
    """A key path short enough for a message: its two ends, when long."""
    return where if len(where) <= 160 else f"{where[:80]}...{where[-60:]}"


def _json_value(value: object, where: str, parents: tuple[int, ...]) -> Any:
    """``value`` as plain JSON types; ``where`` is its key path, for errors."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, for str subclasses too
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(
                f"{where}: expected a finite number (JSON has no NaN or infinity), got "
                f"{number} ({type(value).__name__}); store it as a string or None"
            )
        return number
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufUO":
        # tolist() gives Python scalars in nested lists; each is checked as usual
        return _json_value(value.tolist(), where, parents)
    if isinstance(value, Mapping | list | tuple):
        if id(value) in parents:
            raise ConfigError(f"{where}: expected JSON metadata, got a container holding itself")
        if len(parents) == MAX_DEPTH:
            raise ConfigError(
                f"{_path_str(where)}: expected JSON metadata nested at most {MAX_DEPTH} deep, "
                f"got a {type(value).__name__} deeper; flatten it, or store it as a string"
            )
        inner = (*parents, id(value))
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(
                        f"{where}: expected str keys (JSON object keys are strings), got "
                        f"{type(key).__name__} key {key!r}"
                    )
                key = str.__str__(key)
                out[key] = _json_value(item, f"{where}[{key!r}]", inner)
            return out
        return [_json_value(item, f"{where}[{i}]", inner) for i, item in enumerate(value)]
    what = type(value).__name__
    if isinstance(value, np.ndarray | np.generic):
        what = f"{what} of dtype {value.dtype}"
    raise ConfigError(f"{where}: expected {_JSON_TYPES}, got {what}")


def check_static(static: Mapping[str, Any] | None) -> dict[str, np.ndarray[Any, Any]]:
    """Copies of the static arrays, each checked for a storable dtype and a safe name.

    The rules of a frame's fields hold: a masked array with masked elements is
    refused (a store keeps no mask), and so is anything numpy makes no array of.

    Raises
    ------
    ConfigError
        Naming the static entry.
    """
    if static is None:
        return {}
    if not isinstance(static, Mapping):
        raise ConfigError(
            f"static: expected a mapping of name to array, got {type(static).__name__}"
        )
    out: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in static.items():
        name = check_name(key, "static")  # a plain str: it goes to the writer process
        try:
            value = unmasked(name, value)
        except DTypeError as exc:
            raise ConfigError(
                f"static {name!r}: expected values, got a masked array with masked "
                "elements; a store keeps no mask: pass .filled(fill_value) (or the mask "
                "as a static array of its own)"
            ) from exc
        try:
            arr = np.array(value, copy=True)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(
                f"static {name!r}: expected a bool, integer, float or complex array, got "
                f"{type(value).__name__} that numpy makes no array of: {exc}"
            ) from exc
        if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.fields is not None:
            raise ConfigError(
                f"static {name!r}: expected a bool, integer, float or complex array, "
                f"got {arr.dtype}"
            )
        if arr.dtype.byteorder not in "=|":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        out[name] = arr
    return out


def merge_metadata(
    attrs: Mapping[str, Any],
    static: Mapping[str, np.ndarray[Any, Any]],
    more_attrs: Mapping[str, Any] | None,
    more_static: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """``attrs`` and ``static`` with more of each added (a store's ``add_metadata``).

    The additions are checked as the constructor's arguments are; a key or
    name already present must hold an equal value.

    Raises
    ------
    ConfigError
        For a bad addition, or one that differs from what is already set.
    """
    new_attrs = check_attrs(more_attrs)
    new_static = check_static(more_static)
    for key, value in new_attrs.items():
        if key in attrs and attrs[key] != value:
            raise ConfigError(
                f"attrs[{key!r}]: already set to {attrs[key]!r}, got {value!r}; "
                "use another key, or set it in one place"
            )
    for name, arr in new_static.items():
        old = static.get(name)
        if old is not None and not same_array(old, arr):
            raise ConfigError(
                f"static {name!r}: already set to a different array ({old.dtype} "
                f"{old.shape}), got {arr.dtype} {arr.shape}; use another name"
            )
    return {**attrs, **new_attrs}, {**static, **new_static}


def check_stored_static(name: str, stored: np.ndarray[Any, Any], arr: np.ndarray[Any, Any]) -> None:
    """Refuse, on ``mode="a"``, a static array that differs from the one stored
    under its name (static arrays are written once; NaN equals NaN).

    Raises
    ------
    ConfigError
        The arrays differ in dtype, shape or values.
    """
    if same_array(stored, arr):
        return
    if stored.dtype == arr.dtype and stored.shape == arr.shape:
        given = "other values"
    else:
        given = f"{arr.dtype}, shape {arr.shape}"
    raise ConfigError(
        f"static {name!r}: the store holds {stored.dtype}, shape {stored.shape}, got "
        f"{given}; static arrays are written once: use another name, or mode='w'"
    )


def same_array(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Whether two arrays have the same dtype, shape and values (NaN equal to NaN)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    )


def check_same_layout(
    store: str,
    stored: Schema,
    stored_times: bool | None,
    count: int,
    schema: Schema,
    times: bool,
) -> None:
    """Refuse new frames whose schema or time setting differs from the frames held.

    Raises
    ------
    SchemaError
        When ``schema`` differs from ``stored``, or ``count`` frames are held and
        they disagree with ``times``.
    """
    if stored != schema:
        raise SchemaError(f"{store} holds frames of {stored!r}, got {schema!r}")
    if count and stored_times is not None and stored_times != times:
        raise SchemaError(f"{store}: stored frames and new frames disagree on times")
