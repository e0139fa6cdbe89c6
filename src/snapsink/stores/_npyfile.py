"""Building blocks of the ``snapsink-npy`` format (see ``docs/formats/npy.md``).

- the fixed-size ``.npy`` header (4096 bytes, so data is page aligned and a
  header rewrite never moves data) and its parser;
- :class:`GrowableNpyFile`: one ``.npy`` file grown along axis 0 by capacity
  doubling, written with ``os.pwritev``;
- :func:`parse_metadata`: the defensive parser of ``metadata.json``.

Everything except :class:`GrowableNpyFile` and the fsync helpers is free of I/O.
"""

from __future__ import annotations

import ast
import errno
import functools
import gc
import json
import math
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as _importlib_metadata
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, StoreNotFoundError
from .._schema import Field, Schema, check_name
from ._format import (
    MAX_DROPPED_STEPS,
    StepRanges,
    check_dropped_total,
    check_format_version,
    parse_step_ranges,
)
from ._lock import LOCK_NAME

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAX_DROPPED_STEPS",
    "GrowableNpyFile",
    "Metadata",
    "StepRanges",
    "build_header",
    "check_dropped_total",
    "fsync_dir",
    "parse_header",
    "parse_metadata",
]

FORMAT_NAME = "snapsink-npy"
FORMAT_VERSION = 1
#: Bytes before the data of every growable file: magic, version, length, padded dict.
HEADER_SIZE = 4096
_MAGIC = b"\x93NUMPY\x01\x00"
_PREAMBLE = len(_MAGIC) + 2  # magic + version + uint16 header length
#: First capacity of a file: this many bytes' worth of rows, and at least 16 rows.
_INITIAL_BYTES = 1 << 20
#: Linux IOV_MAX; a pwritev call takes at most this many buffers.
_IOV_MAX = 1024


# -- header ---------------------------------------------------------------------
def build_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`HEADER_SIZE` bytes.

    The dict is padded with spaces and ends with ``\\n``, as the ``.npy`` format
    allows, so ``np.load`` finds the data at offset 4096.
    """
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = text.encode("latin1")
    room = HEADER_SIZE - _PREAMBLE
    if len(body) + 1 > room:  # pragma: no cover - needs a shape of ~200 dimensions
        raise ConfigError(f"array header too long for {HEADER_SIZE} bytes: {text}")
    body = body + b" " * (room - len(body) - 1) + b"\n"
    return _MAGIC + struct.pack("<H", room) + body


@dataclass(frozen=True, slots=True)
class Header:
    """What an ``.npy`` header says: dtype, shape and where the data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int


#: the header dict as numpy (and snapsink) write it
_HEADER_DICT = re.compile(
    r"\{\s*'descr':\s*'([^'\\]*)',\s*'fortran_order':\s*(True|False),\s*"
    r"'shape':\s*\(\s*((?:\d+\s*,\s*)*\d*)\s*\),?\s*\}\s*"
)


def _header_dict(text: str) -> Any:
    """The header's dict, parsed without ``ast`` in the usual case.

    Why: under CPython 3.11 a garbage collection that runs finalizers while
    ``compile`` builds an AST can fail it with "SystemError: AST constructor
    recursion depth mismatch" (CPython gh-106905), a failure that has nothing
    to do with the file. Headers in another layout still go through
    ``ast.literal_eval``, with the collector paused and a retry.
    """
    m = _HEADER_DICT.fullmatch(text)
    if m is not None:
        dims = [p.strip() for p in m.group(3).split(",") if p.strip()]
        return {
            "descr": m.group(1),
            "fortran_order": m.group(2) == "True",
            "shape": tuple(int(x) for x in dims),
        }
    for attempt in range(3):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return ast.literal_eval(text)
        except SystemError:
            if attempt == 2:
                raise
        finally:
            if enabled:
                gc.enable()
    raise AssertionError("unreachable")  # pragma: no cover


def parse_header(raw: bytes, what: str, *, allow_fortran: bool = False) -> Header:
    """Parse a ``.npy`` header (version 1, 2 or 3) from the file's first bytes.

    Never unpickles and never evaluates anything but Python literals.

    Raises
    ------
    FormatError
        Not a ``.npy`` header, a Fortran-ordered (unless ``allow_fortran``: static
        arrays may be) or object array, or truncated.
    """
    if len(raw) < 10 or raw[:6] != b"\x93NUMPY":
        raise FormatError(f"{what}: not a .npy file (bad magic)")
    major = raw[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", raw[8:10]), 10
    elif major in (2, 3) and len(raw) >= 12:
        (hlen,), start = struct.unpack("<I", raw[8:12]), 12
    else:
        raise FormatError(f"{what}: unsupported .npy version {major}")
    if len(raw) < start + hlen:
        raise FormatError(f"{what}: truncated .npy header")
    try:
        text = raw[start : start + hlen].decode("utf-8" if major == 3 else "latin1")
        d = _header_dict(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise FormatError(f"{what}: unreadable .npy header") from exc
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise FormatError(f"{what}: malformed .npy header {text.strip()!r}")
    shape = d["shape"]
    if (
        not (d["fortran_order"] is False or (allow_fortran and d["fortran_order"] is True))
        or not isinstance(shape, tuple)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise FormatError(f"{what}: unsupported .npy header {text.strip()!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{what}: bad dtype in .npy header {d['descr']!r}") from exc
    if dtype.hasobject:
        raise FormatError(f"{what}: object arrays are not part of the format")
    return Header(dtype, shape, start + hlen)


def check_header(header: Header, dtype: np.dtype[Any], row_shape: tuple[int, ...],
                 where: str) -> Header:
    """``header`` if it describes rows of ``row_shape`` and ``dtype``, else FormatError."""
    if header.dtype != dtype or header.shape[1:] != row_shape or not header.shape:
        raise FormatError(
            f"{where}: expected dtype {dtype} and rows of shape {row_shape}, the header "
            f"says {header.dtype} and shape {header.shape}"
        )
    return header


# -- a growable file --------------------------------------------------------------
def _pwrite_all(fd: int, buffers: Sequence[memoryview], offset: int) -> None:
    """Write every buffer back to back at ``offset``, retrying short writes."""
    pending = [b for b in buffers if b.nbytes]
    while pending:
        chunk = pending[:_IOV_MAX]
        written = os.pwritev(fd, chunk, offset)
        offset += written
        total = sum(b.nbytes for b in chunk)
        if written == total:
            pending = pending[_IOV_MAX:]
            continue
        # Short write (rare on regular files): drop what went out, resume.
        rest: list[memoryview] = []
        for b in chunk:
            if written >= b.nbytes:
                written -= b.nbytes
            else:
                rest.append(b[written:])
                written = 0
        pending = rest + pending[_IOV_MAX:]


def fsync_dir(path: str) -> None:
    """fsync a directory so the entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_datasync = getattr(os, "fdatasync", os.fsync)
#: Data files are never opened through a symlink: a hostile store could point
#: one at a file outside it, which appends would then overwrite.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Opening a FIFO blocks until a writer opens it too; non-blocking, the open
#: returns at once and fstat tells it is no regular file.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def open_in_store(root: str, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open the regular file ``rel`` (``"x.npy"``, ``"static/m.npy"``) of the store
    at ``root`` and return its descriptor.

    Every component below ``root`` is opened relative to its parent without
    following symbolic links, so nothing outside the store is ever reached;
    the file is opened non-blocking and must be a regular file, so a FIFO or a
    device in the store never hangs the caller.

    Raises
    ------
    FileNotFoundError
        ``root`` or the file is missing.
    FormatError
        A symbolic link, or something other than a regular file (a directory
        for a file, a FIFO, a socket, a device).
    """
    where = os.path.join(root, rel)
    *dirs, name = rel.split("/")
    dfd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in dirs:
            try:
                nfd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                # Linux says ENOTDIR for a symlink opened with O_DIRECTORY|O_NOFOLLOW.
                if exc.errno == errno.ELOOP or (
                    exc.errno == errno.ENOTDIR and _is_link(part, dfd)
                ):
                    raise FormatError(
                        f"{where}: {part!r} is a symbolic link; a store holds only regular "
                        "files and its own directories (refusing to reach outside it)"
                    ) from exc
                raise  # missing (FileNotFoundError) or a file (NotADirectoryError)
            os.close(dfd)
            dfd = nfd
        try:
            fd = os.open(name, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FormatError(
                    f"{where}: is a symbolic link; a store's files must be regular files "
                    "(refusing to open a file outside the store)"
                ) from exc
            if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
                raise FormatError(
                    f"{where}: not a regular file ({exc.strerror}); a store's files must be "
                    "regular files"
                ) from exc
            raise
    finally:
        os.close(dfd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FormatError(
                f"{where}: not a regular file (a {file_kind(mode)}); a store's files must "
                "be regular files"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return kind
    return "special file"


def read_at(fd: int, n: int, pos: int) -> bytes:
    """Up to ``n`` bytes at ``pos`` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    while n > 0:
        chunk = os.pread(fd, n, pos)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        pos += len(chunk)
    return b"".join(parts)


class GrowableNpyFile:
    """One ``.npy`` file grown along axis 0: header at 0, rows from offset 4096.

    ``used`` rows are written; ``committed`` rows are durable and named by the
    header. Capacity grows geometrically with ``ftruncate`` (a sparse extent on
    most file systems), so data already written is never copied.

    Rows go out with ``os.pwritev`` rather than through a memory map: on a
    64 MiB run (1024 frames of 64 KiB, 200k frames of 12 B, 2800 of 12 KB,
    batches of 1 and 16, ext4 on a VM) pwritev was as fast or faster in every
    case (e.g. 100 vs 116 ms, 40 vs 176 ms, 54 vs 83 ms for batches of 16),
    needs no remap on growth, and reports a full disk as an ``OSError`` where a
    memory map would raise SIGBUS.
    """

    __slots__ = ("capacity", "committed", "dirty", "dtype", "fd", "path", "row_bytes",
                 "row_shape", "used", "written_back")

    def __init__(self, path: str, fd: int, dtype: np.dtype[Any], row_shape: tuple[int, ...],
                 committed: int, capacity: int):
        self.path = path
        self.fd = fd
        self.dtype = dtype
        self.row_shape = row_shape
        self.row_bytes = math.prod(row_shape) * dtype.itemsize
        self.committed = committed
        self.used = committed
        self.capacity = capacity
        self.dirty = False
        #: rows whose writeback was started early (NpyDirectory._start_writeback)
        self.written_back = committed

    @classmethod
    def create(cls, path: str, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> GrowableNpyFile:
        """Create (or truncate) ``path`` with zero rows and a first capacity."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644)
        try:
            f = cls(path, fd, dtype, row_shape, 0, 0)
            os.pwrite(fd, build_header(dtype, (0, *row_shape)), 0)
            f.reserve(max(16, _INITIAL_BYTES // max(f.row_bytes, 1)))
        except BaseException:
            os.close(fd)
            raise
        f.dirty = True
        return f

    @classmethod
    def reopen(cls, path: str, dtype: np.dtype[Any], row_shape: tuple[int, ...],
               committed: int) -> GrowableNpyFile:
        """Open an existing file to append after its first ``committed`` rows.

        Rows past ``committed`` (an uncommitted tail) are overwritten by later
        appends and cut off at close.

        Raises
        ------
        FormatError
            The header does not match ``dtype``/``row_shape``, or the file holds
            fewer than ``committed`` rows.
        """
        # Never through a symlink (appends would overwrite a file outside the
        # store), never blocking on a FIFO: only a regular file.
        fd = open_in_store(os.path.dirname(path) or ".", os.path.basename(path), os.O_RDWR)
        try:
            header = check_header(parse_header(os.pread(fd, HEADER_SIZE, 0), path), dtype,
                                  row_shape, path)
            if header.offset != HEADER_SIZE:
                raise FormatError(f"{path}: data offset {header.offset}, expected {HEADER_SIZE}")
            size = os.fstat(fd).st_size
            f = cls(path, fd, dtype, row_shape, committed, 0)
            have = (size - HEADER_SIZE) // f.row_bytes if f.row_bytes else committed
            if size < HEADER_SIZE or have < committed:
                raise FormatError(
                    f"{path}: expected at least {committed} committed rows, the file holds {have}"
                )
            f.capacity = have
        except BaseException:
            os.close(fd)
            raise
        return f

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows after ``used`` (capacity doubling)."""
        need = self.used + rows
        if need > self.capacity:
            if self.capacity:  # growing would hide a truncation: look first
                self._check_size(os.fstat(self.fd).st_size)
            cap = max(need, 2 * self.capacity)
            os.ftruncate(self.fd, HEADER_SIZE + cap * self.row_bytes)
            self.capacity = cap

    def write_at(self, row: int, buffers: Sequence[memoryview]) -> None:
        """Write contiguous row data at row index ``row`` (room must be reserved)."""
        _pwrite_all(self.fd, buffers, HEADER_SIZE + row * self.row_bytes)
        self.dirty = True

    def read_row(self, row: int) -> np.ndarray[Any, Any]:
        """Read one row back (resume needs the last step and time)."""
        raw = os.pread(self.fd, self.row_bytes, HEADER_SIZE + row * self.row_bytes)
        if len(raw) != self.row_bytes:
            raise FormatError(f"{self.path}: short read at row {row}")
        return np.frombuffer(raw, self.dtype).reshape(self.row_shape)

    def sync(self) -> None:
        """Name the ``used`` rows in the header and make everything durable."""
        os.pwrite(self.fd, build_header(self.dtype, (self.used, *self.row_shape)), 0)
        _datasync(self.fd)
        self.committed = self.used
        self.dirty = False

    def finalize(self, rows: int) -> None:
        """Header naming ``rows`` rows, file cut to exactly those rows, durable."""
        os.pwrite(self.fd, build_header(self.dtype, (rows, *self.row_shape)), 0)
        os.ftruncate(self.fd, HEADER_SIZE + rows * self.row_bytes)
        os.fsync(self.fd)
        self.capacity = self.used = self.committed = rows
        self.dirty = False

    def check_unchanged(self) -> None:
        """Fail unless ``path`` still names the file this object writes and that
        file still holds every row written.

        Raises
        ------
        FileNotFoundError
            The file was deleted (or its directory removed).
        FormatError
            The file was replaced (another inode at ``path``) or truncated below
            the rows written, by someone other than this writer.
        """
        st = os.fstat(self.fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                f"{self.path}: deleted while the store was writing it (or its directory "
                "was removed or moved); refusing to commit frames that are not there",
                self.path,
            ) from None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise FormatError(
                f"{self.path}: replaced by another file while the store was writing it "
                f"(device/inode {st.st_dev}/{st.st_ino} opened, {now.st_dev}/{now.st_ino} "
                "now at the path)"
            )
        self._check_size(st.st_size)

    def _check_size(self, size: int) -> None:
        # Against the capacity, not the rows used: the file is never shorter
        # than its capacity, and appends after a truncation that stay within
        # the capacity (refilling the cut part with a hole) do not hide it.
        need = HEADER_SIZE + self.capacity * self.row_bytes
        if size < need:
            raise FormatError(
                f"{self.path}: truncated to {size} bytes while the store was writing it "
                f"(it held {need}: its {self.used} rows written and room for more)"
            )

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# -- metadata ---------------------------------------------------------------------
@dataclass(slots=True)
class Metadata:
    """The content of ``metadata.json``, validated."""

    schema: Schema | None
    count: int
    rows: dict[str, int]
    times: bool
    dropped: list[list[int]]
    attrs: dict[str, Any]
    static: list[str]
    versions: dict[str, str]
    created: str
    updated: str
    closed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "schema": None if self.schema is None else self.schema.to_json(),
            "count": self.count,
            "rows": self.rows,
            "times": self.times,
            "dropped": self.dropped,
            "attrs": self.attrs,
            "static": self.static,
            "versions": self.versions,
            "created": self.created,
            "updated": self.updated,
            "closed": self.closed,
        }


_KEYS = frozenset(Metadata.__slots__) | {"format", "version"}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_metadata(obj: object, where: str) -> Metadata:
    """Validate decoded ``metadata.json`` content; every key is type checked.

    Raises
    ------
    FormatError
        A foreign or newer format, a missing or mistyped key, an unsafe field or
        static name, or inconsistent counts.
    """

    def bad(msg: str) -> FormatError:
        return FormatError(f"{where}: {msg}")

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT_NAME:
        raise bad(f"expected format {FORMAT_NAME!r}, got {obj.get('format')!r}")
    check_format_version(obj.get("version"), FORMAT_VERSION, bad)
    missing = sorted(_KEYS - set(obj))
    if missing:
        raise bad(f"missing keys {missing}")
    raw_schema = obj["schema"]
    schema: Schema | None = None
    if raw_schema is not None:
        if not isinstance(raw_schema, dict):
            raise bad(f"'schema': expected an object or null, got {type(raw_schema).__name__}")
        try:
            schema = Schema.from_json(raw_schema)
        except ConfigError as exc:
            raise bad(f"'schema': {exc}") from exc
    count = obj["count"]
    if not _is_int(count) or count < 0:
        raise bad(f"'count': expected a non-negative int, got {count!r}")
    if count and schema is None:
        raise bad(f"'count' is {count} but there is no schema")
    rows = obj["rows"]
    ragged = set(schema.ragged) if schema is not None else set()
    if not isinstance(rows, dict) or set(rows) != ragged:
        raise bad(f"'rows': expected an object with keys {sorted(ragged)}, got {rows!r}")
    for name, n in rows.items():
        if not _is_int(n) or n < 0:
            raise bad(f"'rows'[{name!r}]: expected a non-negative int, got {n!r}")
    for key in ("times", "closed"):
        if not isinstance(obj[key], bool):
            raise bad(f"{key!r}: expected true or false, got {obj[key]!r}")
    dropped = parse_step_ranges(obj["dropped"], bad)
    if not isinstance(obj["attrs"], dict):
        raise bad(f"'attrs': expected an object, got {type(obj['attrs']).__name__}")
    static = obj["static"]
    if not isinstance(static, list):
        raise bad(f"'static': expected a list of names, got {type(static).__name__}")
    try:
        for name in static:
            check_name(name, "static")
    except ConfigError as exc:
        raise bad(f"'static': {exc}") from exc
    if len(set(static)) != len(static):
        raise bad("'static': duplicate names")
    versions = obj["versions"]
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in versions.items()
    ):
        raise bad(f"'versions': expected an object of strings, got {versions!r}")
    for key in ("created", "updated"):
        if not isinstance(obj[key], str):
            raise bad(f"{key!r}: expected an ISO time string, got {obj[key]!r}")
    return Metadata(
        schema=schema,
        count=count,
        rows=dict(rows),
        times=obj["times"],
        dropped=[list(r) for r in dropped],
        attrs=obj["attrs"],
        static=list(static),
        versions=dict(versions),
        created=obj["created"],
        updated=obj["updated"],
        closed=obj["closed"],
    )


# -- store paths and files ------------------------------------------------------------
METADATA = "metadata.json"
METADATA_TMP = ".metadata.json.tmp"
STATIC_DIR = "static"
#: Upper bound on the size of metadata.json a reader accepts (hostile files).
MAX_METADATA_BYTES = 1 << 30


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@functools.cache
def versions() -> dict[str, str]:
    try:
        own = _importlib_metadata.version("snapsink")
    except _importlib_metadata.PackageNotFoundError:
        own = "unknown"
    return {"snapsink": own, "numpy": np.__version__}


def check_path(path: object) -> str:
    if isinstance(path, str | os.PathLike):
        p = os.fspath(path)
        if isinstance(p, str) and p:
            return p
    raise ConfigError(
        f"path: expected a non-empty str or os.PathLike, got {type(path).__name__} {path!r}"
    )


def bytes_of(arr: np.ndarray[Any, Any]) -> memoryview:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def field_file_names(schema: Schema) -> list[str]:
    """The per-field files a schema owns, in schema order."""
    out: list[str] = []
    for name, f in schema.items():
        out.append(f"{name}.npy")
        if f.ragged:
            out.append(f"{name}.offsets.npy")
    return out


def row_layout(f: Field) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """dtype and row shape of a field's data file (a frame is a row when fixed)."""
    if f.ragged:
        return f.dtype, f.row_shape
    return f.dtype, tuple(n for n in f.shape if n is not None)


def read_metadata(path: str) -> Metadata:
    """Load and validate ``<path>/metadata.json``.

    Raises
    ------
    StoreNotFoundError
        No directory or no metadata.json.
    FormatError
        Unreadable, truncated, foreign or malformed metadata.
    """
    if not os.path.isdir(path):
        raise StoreNotFoundError(f"no snapsink-npy store at {path!r}: not a directory")
    where = os.path.join(path, METADATA)
    try:
        fd = open_in_store(path, METADATA)
    except FileNotFoundError:
        raise StoreNotFoundError(
            f"no snapsink-npy store at {path!r}: the directory has no {METADATA}"
        ) from None
    except OSError as exc:
        raise FormatError(f"{where}: cannot read: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        if size > MAX_METADATA_BYTES:
            raise FormatError(f"{where}: larger than {MAX_METADATA_BYTES} bytes")
        raw = read_at(fd, size, 0)
    except OSError as exc:
        raise FormatError(f"{where}: cannot read: {exc}") from exc
    finally:
        os.close(fd)

    def _no_constant(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON (truncated or corrupt?): {exc}") from exc
    return parse_metadata(obj, where)


#: the most header bytes a static ``.npy`` file may have (numpy's reader refuses
#: headers over 10000 bytes unless told otherwise)
_MAX_STATIC_HEADER = 1 << 16


def load_static(path: str, name: str) -> np.ndarray[Any, Any]:
    """Read ``static/<name>.npy`` of the store at ``path``.

    The header's claim (dtype and shape) is checked against the file's real size
    before anything is allocated; the file must be a regular file inside the store.

    Raises
    ------
    FormatError
        Missing, a symbolic link or a special file, a header that claims more data
        than the file holds, or not a plain numeric ``.npy`` file.
    """
    rel = f"{STATIC_DIR}/{name}.npy"
    where = os.path.join(path, rel)
    try:
        fd = open_in_store(path, rel)
    except FileNotFoundError:
        raise FormatError(f"{where}: missing, but {METADATA} lists static {name!r}") from None
    except OSError as exc:
        raise FormatError(f"{where}: cannot read: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        try:
            size = os.fstat(fd).st_size
            header = parse_header(
                read_at(fd, min(size, _MAX_STATIC_HEADER), 0), where, allow_fortran=True
            )
            need = header.offset + math.prod(header.shape) * header.dtype.itemsize
            if size < need:
                raise FormatError(
                    f"{where}: the header claims {math.prod(header.shape)} elements of "
                    f"{header.dtype} (shape {header.shape}, {need} bytes with the header); "
                    f"the file holds {size} bytes"
                )
            arr = np.lib.format.read_array(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{where}: not a readable .npy file: {exc}") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise FormatError(f"{where}: not a plain numeric array")
    return arr


def scan_store_dir(path: str, entries: list[str], meta: Metadata) -> tuple[list[str], list[str]]:
    """Sort the entries of a store directory for ``mode="w"``.

    Returns
    -------
    tuple
        ``(foreign, static_files)``: the entries the layout of ``meta`` does not
        own (never to be deleted), and the ``static/<name>.npy`` files it does.
    """
    owned = {METADATA, METADATA_TMP, LOCK_NAME, "steps.npy", "times.npy", STATIC_DIR}
    if meta.schema is not None:
        owned.update(field_file_names(meta.schema))
    foreign = [e for e in entries if e not in owned]
    foreign += [
        e
        for e in entries
        if e != STATIC_DIR and e in owned and not os.path.isfile(os.path.join(path, e))
    ]
    sdir = os.path.join(path, STATIC_DIR)
    static_files: list[str] = []
    if os.path.lexists(sdir):
        if os.path.islink(sdir) or not os.path.isdir(sdir):
            foreign.append(STATIC_DIR)
            return foreign, static_files
        for e in sorted(os.listdir(sdir)):
            stem, ext = os.path.splitext(e)
            try:
                check_name(stem, "static")
                ok = ext == ".npy" and os.path.isfile(os.path.join(sdir, e))
            except ConfigError:
                ok = False
            if ok:
                static_files.append(e)
            else:
                foreign.append(f"{STATIC_DIR}/{e}")
    return foreign, static_files


def replace_atomically(directory: str, tmp_name: str, name: str, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it, rename it onto ``name``, fsync the directory."""
    tmp = os.path.join(directory, tmp_name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))
    fsync_dir(directory)


def read_exactly(root: str, rel: str, pos: int, out: np.ndarray[Any, Any], what: str) -> None:
    """Fill ``out`` with the bytes of the store file ``root/rel`` from offset ``pos``.

    Raises
    ------
    FormatError
        The file is unreadable, not a regular file inside the store, or ends
        early (fewer rows than metadata names).
    """
    where = os.path.join(root, rel)
    buf = out.reshape(-1).view(np.uint8).data
    got = 0
    try:
        fd = open_in_store(root, rel)
        try:
            while got < len(buf):
                n = os.preadv(fd, [buf[got:]], pos + got)
                if not n:
                    break
                got += n
        finally:
            os.close(fd)
    except OSError as exc:
        raise FormatError(f"{where}: cannot read: {exc}") from exc
    if got != len(buf):
        raise FormatError(
            f"{where}: holds fewer rows than {METADATA} names ({what} asked for); "
            "the store is truncated"
        )


def data_size(root: str, rel: str) -> tuple[Header, int]:
    """The header and the size in bytes of the growable file ``root/rel``.

    Raises
    ------
    FormatError
        Missing, unreadable, not a regular file inside the store, or no ``.npy``.
    """
    where = os.path.join(root, rel)
    try:
        fd = open_in_store(root, rel)
        try:
            size = os.fstat(fd).st_size
            raw = read_at(fd, HEADER_SIZE, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FormatError(f"{where}: cannot read a file the store names: {exc}") from exc
    return parse_header(raw, where), size
