"""Checks shared by every store: attrs, static arrays, modes. No I/O here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import ConfigError, SchemaError
from .._schema import _ALLOWED_KINDS, Schema, check_name

__all__ = ["MODES", "check_attrs", "check_mode", "check_static"]

MODES = ("x", "w", "a")


def check_mode(mode: object) -> str:
    """``mode`` if it is ``"x"`` (create), ``"w"`` (replace) or ``"a"`` (append)."""
    if mode not in MODES:
        raise ConfigError(
            f"mode: expected 'x' (create, fail if it exists), 'w' (replace) or "
            f"'a' (append/resume), got {mode!r}"
        )
    return str(mode)


def check_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``attrs`` after checking it round-trips through strict JSON."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping):
        raise ConfigError(f"attrs: expected a mapping, got {type(attrs).__name__}")
    try:
        text = json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attrs: expected JSON-serializable values (no NaN): {exc}") from exc
    out: dict[str, Any] = json.loads(text)
    return out


def check_static(static: Mapping[str, Any] | None) -> dict[str, np.ndarray[Any, Any]]:
    """Copies of the static arrays, each checked for a storable dtype and a safe name."""
    if static is None:
        return {}
    if not isinstance(static, Mapping):
        raise ConfigError(
            f"static: expected a mapping of name to array, got {type(static).__name__}"
        )
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in static.items():
        check_name(name, "static")
        arr = np.array(value, copy=True)
        if arr.dtype.kind not in _ALLOWED_KINDS or arr.dtype.fields is not None:
            raise ConfigError(
                f"static {name!r}: expected a bool, integer, float or complex array, "
                f"got {arr.dtype}"
            )
        if arr.dtype.byteorder not in "=|":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        out[name] = arr
    return out


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

