"""Spill: overflow frames to a local directory instead of dropping or blocking.

With ``policy=snapsink.Spill(dir)``, a frame that finds the channel full is
written to a file in a private subdirectory of ``dir`` (one raw file per frame:
the fields' bytes, C order, back to back; the layout lives in memory). The
consumer replays spilled frames in write order, bit-exact, and removes each
file once the store has appended it. Past ``max_bytes`` of spilled data the
producer blocks until the consumer catches up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ConfigError
from ._schema import Field

__all__ = ["Spill", "SpillDir", "SpillRecord"]


@dataclass(frozen=True, slots=True)
class Spill:
    """Backpressure policy: overflow to a spill directory on local disk.

    Parameters
    ----------
    dir
        A directory on a fast local disk; created if missing. snapsink works in a
        fresh subdirectory of it and removes only the files it wrote.
    max_bytes
        At most this many bytes spilled at once (``None``: no limit). When the
        next frame would exceed it, ``write`` blocks (``write_nowait`` raises
        :class:`~snapsink.WouldBlock`) until replayed frames free room.

    Raises
    ------
    ConfigError
        For a ``max_bytes`` that is not a positive int.
    """

    dir: str | os.PathLike[str]
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool)
            or not isinstance(self.max_bytes, int)
            or self.max_bytes <= 0
        ):
            raise ConfigError(
                f"Spill max_bytes: expected a positive int or None, got {self.max_bytes!r}"
            )
        if not isinstance(self.dir, str | os.PathLike):
            raise ConfigError(f"Spill dir: expected a path, got {type(self.dir).__name__}")


@dataclass(frozen=True, slots=True)
class SpillRecord:
    """Where one spilled frame lives and how to read it back."""

    path: Path
    layout: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, dtype.str, shape)
    nbytes: int


class SpillDir:
    """The runtime side of :class:`Spill`: a private directory of frame files."""

    def __init__(self, config: Spill):
        self.config = config
        base = Path(config.dir)
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="snapsink-spill-", dir=base))
        self._counter = 0

    def write(self, items: Sequence[tuple[str, Field, Any]], to_host: Any = None) -> SpillRecord:
        """Write one frame (blocking); ``to_host(value)`` turns device values into
        host arrays when given."""
        arrays = []
        layout = []
        for name, field, value in items:
            arr = to_host(value) if to_host is not None else np.asarray(value)
            # Not np.ascontiguousarray: it turns a 0-d array (a scalar field) into shape (1,).
            arr = np.asarray(arr, dtype=field.dtype)
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            arrays.append(arr)
            layout.append((name, field.dtype.str, tuple(arr.shape)))
        self._counter += 1
        path = self.frame_path(self.path, self._counter)
        with open(path, "xb") as f:
            for arr in arrays:
                f.write(arr.data if arr.size else b"")  # contiguous: no copy
        return SpillRecord(path, tuple(layout), sum(a.nbytes for a in arrays))

    @staticmethod
    def frame_path(directory: Path, counter: int) -> Path:
        """The file of the ``counter``-th spilled frame (its stem is the counter)."""
        return directory / f"{counter:012d}.frame"

    @staticmethod
    def read(record: SpillRecord) -> dict[str, np.ndarray[Any, Any]]:
        """Read one spilled frame back (blocking), bit-exact."""
        raw = record.path.read_bytes()
        out: dict[str, np.ndarray[Any, Any]] = {}
        pos = 0
        for name, dtype, shape in record.layout:
            dt = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            arr = np.frombuffer(raw, dt, count=n // dt.itemsize, offset=pos).reshape(shape)
            # a scalar field is a numpy scalar, as when captured in memory
            out[name] = arr[()] if not shape else arr
            pos += n
        return out

    @staticmethod
    def remove(record: SpillRecord) -> None:
        record.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the private subdirectory if it is empty (never user files)."""
        try:
            self.path.rmdir()
        except OSError:
            pass
