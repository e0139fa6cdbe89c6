"""The read side of snapsink-npy: :class:`NpySource`, :func:`open_npy`,
:func:`is_npy_store` (the writer is :mod:`.npy`; the format is
``docs/formats/npy.md``).

Readers trust only the committed count in ``metadata.json``, take no lock, and
open every file through :func:`._npyfile.open_in_store` (regular files inside
the store only).

A reader never reads a store that replaced the one it opened (``mode="w"``,
or a directory deleted and written again): it would read the new run's bytes
as the old run's fields. The store's identity is the ``created`` stamp of its
metadata and the inode of ``steps.npy``, held open by the reader (a
:class:`PinnedPath`, so that the inode cannot be reused); a refresh compares
both, and every read compares the inode after reading (one ``stat``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._errors import FormatError, SchemaError
from .._schema import Field, Schema
from .._trajectory import Trajectory, check_same_store, read_only, replaced_error
from ._format import StepRanges
from ._npyfile import (
    check_path,
    data_size,
    load_static,
    open_in_store,
    read_at,
    read_exactly,
    read_metadata,
)
from ._npyformat import (
    FORMAT_NAME,
    MAX_METADATA_BYTES,
    METADATA,
    Metadata,
    check_header,
    committed_rows,
    data_files,
    row_layout,
)

__all__ = ["NpySource", "PinnedPath", "is_npy_store", "open_npy"]


def _pin_budget() -> int:
    """How many descriptors pins may hold in all: a quarter of the process's
    limit of open files, so that a process holding many readers at once
    (thousands of runs) still opens files."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - no such limit
        return 256
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 4096
    return max(16, soft // 4)


class _Pins:
    """The descriptors pins hold, in all (see :func:`_pin_budget`)."""

    lock = threading.Lock()
    held = 0
    budget: int | None = None

    @classmethod
    def take(cls) -> bool:
        with cls.lock:
            if cls.budget is None:
                cls.budget = _pin_budget()
            if cls.held >= cls.budget:
                return False
            cls.held += 1
            return True

    @classmethod
    def give_back(cls, fd: int) -> None:
        os.close(fd)
        with cls.lock:
            cls.held -= 1


class PinnedPath:
    """One path of a store (a file or a directory the store's writer never
    replaces while the store lives), held open: :meth:`moved` says whether the
    path names another inode now, that is, whether the store was replaced.

    Holding the descriptor keeps the inode from being reused by the new store's
    file, so the comparison cannot be fooled; it is closed when the pin is
    garbage collected. Pins hold at most a quarter of the process's limit of
    open files in all: beyond it, a pin compares the inode without holding it
    (a replacement that reuses the inode number is then seen at the next
    refresh, by the store's own record, where it keeps one: npy's ``created``).

    Parameters
    ----------
    path
        What the inode was opened as.
    fd
        Its descriptor (owned by the pin from now on).
    """

    def __init__(self, path: str, fd: int):
        self.path = path
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        if _Pins.take():
            weakref.finalize(self, _Pins.give_back, fd)
        else:
            os.close(fd)

    @property
    def inode(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the inode pinned."""
        return self._inode

    def moved(self) -> bool:
        """Whether ``path`` names another inode now, or nothing."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._inode


def _committed_files(
    meta: Metadata,
) -> list[tuple[str, np.dtype[Any], tuple[int, ...], int]]:
    """``(key, dtype, row_shape, rows)`` of every data file of ``meta``'s layout,
    with the rows its committed frames need."""
    if meta.schema is None:
        return []
    return [
        (key, dtype, row_shape, committed_rows(meta, key))
        for key, dtype, row_shape in data_files(meta.schema, meta.times)
    ]


class NpySource:
    """Lazy reader of a snapsink-npy store: the :class:`~snapsink.Source` of
    :func:`open_npy`.

    Only committed frames (the count in ``metadata.json``) are visible; data is
    read with positioned reads of exactly the frames asked for.

    Parameters
    ----------
    path
        The store's directory.

    Raises
    ------
    StoreNotFoundError
        No directory or no ``metadata.json``.
    FormatError
        A corrupt, truncated, foreign or hostile ``metadata.json``.
    """

    schema: Schema | None
    length: int

    def __init__(self, path: str | os.PathLike[str], created: str | None = None):
        self._path = check_path(path)
        #: the identity of the store opened: its creation stamp, its steps.npy
        self._created = created
        self._pin: PinnedPath | None = None
        self._replaced: FormatError | None = None
        self.schema = None
        self.length = 0
        self._meta_times: bool | None = None
        self.refresh()

    def __repr__(self) -> str:
        return f"NpySource({self._path!r}, frames={self.length})"

    def _same_store(self) -> None:
        """Raise if the store was replaced since it was opened (sticky)."""
        if self._replaced is None and self._pin is not None and self._pin.moved():
            self._replaced = replaced_error(repr(self._path), "steps.npy is another file, or gone")
        if self._replaced is not None:
            raise self._replaced

    def _identify(self, meta: Metadata) -> None:
        """Check ``meta`` (just read) against the store opened; pin steps.npy
        once it exists (before the metadata is compared: see refresh)."""
        if self._created is None:
            self._created = meta.created
        elif meta.created != self._created:
            self._replaced = replaced_error(
                repr(self._path), f"it was created at {meta.created}, not {self._created}"
            )
        else:
            before = (self.schema, self._meta_times, self.length)
            try:
                check_same_store(repr(self._path), before, (meta.schema, meta.times, meta.count))
            except FormatError as exc:
                self._replaced = exc
        self._same_store()

    def refresh(self) -> None:
        """Re-read ``metadata.json`` to see frames committed since.

        Every data file the committed frames need is checked against its real
        size (and every ragged field's last offset against its row count)
        before anything is read or allocated: a tampered count or shape is a
        :class:`~snapsink.FormatError` here, never a huge allocation later.

        Raises
        ------
        FormatError
            Also when the store was replaced since it was opened.
        """
        self._same_store()
        if self._pin is None:
            # Pinned before the metadata is read: a steps.npy of a newer store
            # comes with a newer metadata.json, which _identify then refuses.
            try:
                fd = open_in_store(self._path, "steps.npy")
            except (OSError, FormatError):
                pass
            else:
                self._pin = PinnedPath(os.path.join(self._path, "steps.npy"), fd)
        meta = read_metadata(self._path)
        self._identify(meta)
        headers: dict[str, int] = {}
        if meta.schema is not None and meta.count:
            for key, dtype, row_shape, rows in _committed_files(meta):
                headers[key] = self._check_file(key, dtype, row_shape, rows)
            for name in meta.schema.ragged:
                self._check_offsets(name, meta, headers[f"{name}.offsets"])
        self._same_store()  # (the files checked were the store's)
        self._meta = meta
        self.schema = meta.schema
        self._meta_times = meta.times
        self.length = meta.count
        self._headers = headers
        self._steps: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self._times: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self._static: dict[str, np.ndarray[Any, Any]] | None = None
        self._dropped: np.ndarray[Any, np.dtype[np.int64]] | None = None

    @property
    def closed(self) -> bool:
        """Whether the writer closed the store cleanly (as of the last refresh)."""
        return self._meta.closed

    @property
    def location(self) -> str:
        """The store's directory."""
        return self._path

    def _check_file(
        self, key: str, dtype: np.dtype[Any], row_shape: tuple[int, ...], rows: int
    ) -> int:
        """The data offset of ``<key>.npy`` after checking that its header describes
        rows of ``row_shape`` and ``dtype`` and that the file holds ``rows`` rows."""
        rel = f"{key}.npy"
        where = os.path.join(self._path, rel)
        raw_header, size = data_size(self._path, rel)
        header = check_header(raw_header, dtype, row_shape, where)
        need = header.offset + rows * math.prod(row_shape) * dtype.itemsize
        if size < need:
            raise FormatError(
                f"{where}: {METADATA} names {rows} rows of shape {row_shape} ({dtype}), "
                f"{need} bytes with the header; the file holds {size} bytes (a truncated "
                "file or a corrupt count or shape)"
            )
        return header.offset

    def _check_offsets(self, name: str, meta: Metadata, offset: int) -> None:
        """``offsets[0] == 0`` and ``offsets[count] == rows[name]``, as the format says."""
        rel = f"{name}.offsets.npy"
        ends = np.empty(2, np.int64)
        read_exactly(self._path, rel, offset, ends[:1], "the first offset")
        read_exactly(self._path, rel, offset + 8 * meta.count, ends[1:], "the last offset")
        if int(ends[0]) != 0 or int(ends[1]) != meta.rows[name]:
            raise FormatError(
                f"{os.path.join(self._path, rel)}: offsets run from {int(ends[0])} to "
                f"{int(ends[1])}; {METADATA} names {meta.rows[name]} rows of {name!r} in "
                f"{meta.count} frames (expected offsets from 0 to {meta.rows[name]})"
            )

    def _offset(self, key: str, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> None:
        if key not in self._headers:
            # A file needing no rows at the last refresh: check its header only.
            self._headers[key] = self._check_file(key, dtype, row_shape, 0)

    def _rows(
        self, key: str, dtype: np.dtype[Any], row_shape: tuple[int, ...], start: int, stop: int
    ) -> np.ndarray[Any, Any]:
        if stop <= start:
            return np.empty((0, *row_shape), dtype)
        # Checked against the file's size (refresh) before the allocation below.
        self._offset(key, dtype, row_shape)
        out = np.empty((stop - start, *row_shape), dtype)
        if not out.nbytes:
            return out
        row_bytes = math.prod(row_shape) * dtype.itemsize
        pos = self._headers[key] + start * row_bytes
        try:
            read_exactly(self._path, f"{key}.npy", pos, out, f"rows {start}..{stop}")
        except FormatError:
            self._same_store()  # a file of a new store: say so, not "truncated"
            raise
        # After the read: a file opened before the store was replaced holds the
        # old run's rows; one opened after is caught here.
        self._same_store()
        return out

    def _field(self, name: str, ragged: bool) -> Field:
        schema = self.schema
        if schema is None or name not in schema:
            raise KeyError(f"no field {name!r} in {self._path!r}")
        f = schema[name]
        if f.ragged != ragged:
            raise SchemaError(f"field {name!r} is {'' if f.ragged else 'not '}ragged")
        return f

    def _range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"frames [{start}, {stop}) out of range for {self.length} frames")

    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """int64 steps of the committed frames."""
        if self._steps is None:
            # cached read-only: every later read shares it (as times, static, dropped)
            self._steps = read_only(self._rows("steps", np.dtype(np.int64), (), 0, self.length))
        return self._steps

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        """float64 times of the committed frames, or ``None`` when frames carry none."""
        if not self._meta.times:
            return None
        if self._times is None:
            self._times = read_only(self._rows("times", np.dtype(np.float64), (), 0, self.length))
        return self._times

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        """The static arrays, loaded on first use."""
        if self._static is None:
            static = {n: read_only(load_static(self._path, n)) for n in self._meta.static}
            self._same_store()
            self._static = static
        return self._static

    def attrs(self) -> Mapping[str, Any]:
        """The user's JSON metadata."""
        return self._meta.attrs

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Sorted steps a drop policy discarded."""
        if self._dropped is None:
            self._dropped = read_only(
                StepRanges(self._meta.dropped).to_array(os.path.join(self._path, METADATA))
            )
        return self._dropped

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Frames ``[start, stop)`` of a fixed-shape field, stacked on axis 0."""
        f = self._field(name, ragged=False)
        self._range(start, stop)
        dtype, row_shape = row_layout(f)
        return self._rows(name, dtype, row_shape, start, stop)

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        """Rows of frames ``[start, stop)`` of a ragged field and their offsets,
        relative to the first returned row."""
        f = self._field(name, ragged=True)
        self._range(start, stop)
        if start == stop:
            return np.empty((0, *f.row_shape), f.dtype), np.zeros(1, np.int64)
        off = self._rows(f"{name}.offsets", np.dtype(np.int64), (), start, stop + 1)
        total = self._meta.rows[name]
        if (
            off[0] < 0
            or off[-1] > total
            or bool(np.any(off[1:] < off[:-1]))
            or (start == 0 and off[0] != 0)
            or (stop == self.length and off[-1] != total)
        ):
            raise FormatError(
                f"{os.path.join(self._path, name)}.offsets.npy: offsets of frames "
                f"[{start}, {stop}] are not non-decreasing within [0, {total}] (the first "
                f"offset must be 0, the last {total})"
            )
        data = self._rows(name, f.dtype, f.row_shape, int(off[0]), int(off[-1]))
        return data, off - off[0]

    # -- chunk reads (snapsink._dask.ChunkedSource) ------------------------------
    def _layout(self, key: str) -> tuple[np.dtype[Any], tuple[int, ...], int]:
        """dtype, row shape and committed rows of data file ``<key>.npy``."""
        schema = self.schema
        base = key.removesuffix(".offsets")
        if schema is not None and base != key and base in schema and schema[base].ragged:
            return np.dtype(np.int64), (), self.length + 1
        if schema is None or key not in schema:
            raise KeyError(f"no stored array {key!r} in {self._path!r}")
        f = schema[key]
        dtype, row_shape = row_layout(f)
        return dtype, row_shape, (self._meta.rows[key] if f.ragged else self.length)

    def array_rows(self, key: str) -> int:
        """Committed rows of ``<key>.npy`` (a field, or a ragged field's offsets)."""
        return self._layout(key)[2]

    def array_chunk(self, key: str) -> None:
        """None: an npy file has no chunks."""
        return None

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Rows ``[start, stop)`` of ``<key>.npy``, within its committed rows."""
        dtype, row_shape, rows = self._layout(key)
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for {rows} rows of {key!r}")
        return self._rows(key, dtype, row_shape, start, stop)

    def opener(self) -> Callable[[], NpySource]:
        """Reopens the store by path (in a Dask worker's process), refusing
        another store at the path (one created at another time)."""
        return functools.partial(NpySource, self._path, self._created)


def is_npy_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a snapsink-npy store.

    True when ``path/metadata.json`` exists and names the format
    ``"snapsink-npy"``, or cannot be parsed at all (so that :func:`open_npy`
    reports the corruption instead of another format's reader).

    Parameters
    ----------
    path
        A directory.

    Returns
    -------
    bool
    """
    root = os.fspath(path)
    try:
        st = os.lstat(os.path.join(root, METADATA))
    except (OSError, ValueError):
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    if not stat.S_ISREG(st.st_mode):
        return True  # a symlink, a FIFO: open_npy refuses it with a FormatError
    try:
        fd = open_in_store(root, METADATA)
        try:
            raw = read_at(fd, min(os.fstat(fd).st_size, MAX_METADATA_BYTES), 0)
        finally:
            os.close(fd)
        obj = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return True
    return not isinstance(obj, dict) or obj.get("format") == FORMAT_NAME


def open_npy(path: str | os.PathLike[str]) -> Trajectory:
    """Open a snapsink-npy store for reading, lazily.

    Parameters
    ----------
    path
        The store's directory.

    Returns
    -------
    Trajectory
        Its committed frames; ``refresh()`` sees frames committed later.

    Raises
    ------
    StoreNotFoundError
        No store at ``path``.
    FormatError
        A corrupt or foreign store.
    """
    return Trajectory(NpySource(path))
