"""Small argument checks shared by the sinks, the recorder and the stores.

A leaf module (numpy and the error types only), so that every setting means
the same everywhere: ``capacity``, ``max_bytes``, ``commit_every``,
``chunk_frames`` ... are positive ints (or None where optional), and
``commit_seconds`` is a positive finite number or None, with one wording of
the error.
"""

from __future__ import annotations

import math
import os
from typing import overload

import numpy as np

from ._errors import ConfigError

__all__ = ["INT64_MAX", "INT64_MIN", "absolute_path", "commit_seconds", "positive_int"]

#: the range of a step (and of any int64 the stores keep)
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


@overload
def positive_int(value: object, what: str) -> int: ...
@overload
def positive_int(value: object, what: str, *, optional: bool) -> int | None: ...


def positive_int(value: object, what: str, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (``None`` too when ``optional``), else ConfigError.

    Raises
    ------
    ConfigError
        ``{what}: expected a positive int[ or None], got {value!r}``; a bool is
        refused (``True`` is no count).
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        expected = "a positive int or None" if optional else "a positive int"
        raise ConfigError(f"{what}: expected {expected}, got {value!r}")
    return int(value)


def commit_seconds(value: object) -> float | None:
    """``None`` or a positive finite number of seconds (every store's ``commit_seconds``).

    Raises
    ------
    ConfigError
        For anything else, naming ``commit_seconds``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"commit_seconds: expected a positive number or None, got {value!r}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"commit_seconds: expected a positive finite number or None, got {seconds}"
        )
    return seconds


def absolute_path(path: str, what: str = "path") -> str:
    """``path`` made absolute against the working directory of now
    (``os.path.abspath``).

    A store, a spill directory and a reader keep the directory their path
    named when they were made: kept relative, every later open, write and
    check would follow an ``os.chdir`` of the simulation, away from the files
    and the lock already made, into another store of that name (and a writer
    process would take it against its own working directory). Symbolic links
    are kept, not resolved: the stores follow or refuse them where they look.

    Raises
    ------
    ConfigError
        A relative path, and the working directory no longer exists.
    """
    try:
        return os.path.abspath(path)
    except FileNotFoundError as exc:  # from os.getcwd()
        raise ConfigError(
            f"{what} {path!r} is relative, and the working directory was removed: "
            "give an absolute path"
        ) from exc
