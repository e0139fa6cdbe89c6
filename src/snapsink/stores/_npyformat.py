"""The ``snapsink-npy`` format itself, free of I/O (see ``docs/formats/npy.md``).

- the fixed-size ``.npy`` header (4096 bytes, so data is page aligned and a
  header rewrite never moves data): :func:`build_header`, :func:`parse_header`,
  :func:`check_header`;
- :class:`Metadata`, the content of ``metadata.json``, and its defensive parser
  :func:`parse_metadata` (:func:`decode_metadata` from the file's bytes);
- the store's names and layout: which ``.npy`` files a schema owns, with
  which dtype and row shape, and how many rows committed frames need.

Separate from :mod:`._npyfile`, which opens, writes and syncs the files: what
the bytes mean is decided here, in plain functions the writer, the reader and
the tests share, as the Zarr store keeps its decisions in ``_zarrplan``.
"""

from __future__ import annotations

import ast
import functools
import gc
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as _importlib_metadata
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError
from .._schema import Field, Schema, check_name, offsets_name
from ._format import check_format_version, parse_step_ranges

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAX_METADATA_BYTES",
    "METADATA",
    "METADATA_TMP",
    "STATIC_DIR",
    "Header",
    "Metadata",
    "build_header",
    "bytes_of",
    "check_header",
    "committed_rows",
    "data_files",
    "decode_metadata",
    "now_iso",
    "parse_header",
    "parse_metadata",
    "row_layout",
    "versions",
]

FORMAT_NAME = "snapsink-npy"
FORMAT_VERSION = 1
#: Bytes before the data of every growable file: magic, version, length, padded dict.
HEADER_SIZE = 4096
_MAGIC = b"\x93NUMPY\x01\x00"
_PREAMBLE = len(_MAGIC) + 2  # magic + version + uint16 header length


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


def check_header(
    header: Header, dtype: np.dtype[Any], row_shape: tuple[int, ...], where: str
) -> Header:
    """``header`` if it describes rows of ``row_shape`` and ``dtype``, else FormatError."""
    if header.dtype != dtype or header.shape[1:] != row_shape or not header.shape:
        raise FormatError(
            f"{where}: expected dtype {dtype} and rows of shape {row_shape}, the header "
            f"says {header.dtype} and shape {header.shape}"
        )
    return header


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


#: how a step of the parser reports a bad key: ``bad(msg)`` is the error to raise
_Bad = Callable[[str], FormatError]


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
    schema = _parse_schema(obj["schema"], bad)
    count, rows = _parse_counts(obj, schema, bad)
    for key in ("times", "closed"):
        if not isinstance(obj[key], bool):
            raise bad(f"{key!r}: expected true or false, got {obj[key]!r}")
    dropped = parse_step_ranges(obj["dropped"], bad)
    if not isinstance(obj["attrs"], dict):
        raise bad(f"'attrs': expected an object, got {type(obj['attrs']).__name__}")
    static = _parse_static(obj["static"], bad)
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
        rows=rows,
        times=obj["times"],
        dropped=[list(r) for r in dropped],
        attrs=obj["attrs"],
        static=static,
        versions=dict(versions),
        created=obj["created"],
        updated=obj["updated"],
        closed=obj["closed"],
    )


def _parse_schema(raw: object, bad: _Bad) -> Schema | None:
    """The ``schema`` key: null (no frame prepared yet) or a schema."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad(f"'schema': expected an object or null, got {type(raw).__name__}")
    try:
        return Schema.from_json(raw)
    except ConfigError as exc:
        raise bad(f"'schema': {exc}") from exc


def _parse_counts(
    obj: dict[str, Any], schema: Schema | None, bad: _Bad
) -> tuple[int, dict[str, int]]:
    """The ``count`` of committed frames and the ``rows`` of each ragged field."""
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
    return count, dict(rows)


def _parse_static(static: object, bad: _Bad) -> list[str]:
    """The ``static`` key: distinct names that are safe as file names."""
    if not isinstance(static, list):
        raise bad(f"'static': expected a list of names, got {type(static).__name__}")
    try:
        for name in static:
            check_name(name, "static")
    except ConfigError as exc:
        raise bad(f"'static': {exc}") from exc
    if len(set(static)) != len(static):
        raise bad("'static': duplicate names")
    return list(static)


def decode_metadata(raw: bytes, where: str) -> Metadata:
    """Parse and validate the bytes of a ``metadata.json`` (standard JSON only).

    Raises
    ------
    FormatError
        Not UTF-8, not valid JSON (truncated or corrupt) or, as
        :func:`parse_metadata` says, not valid metadata.
    """

    def _no_constant(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON (truncated or corrupt?): {exc}") from exc
    return parse_metadata(obj, where)


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


def bytes_of(arr: np.ndarray[Any, Any]) -> memoryview:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def row_layout(f: Field) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """dtype and row shape of a field's data file (a frame is a row when fixed)."""
    if f.ragged:
        return f.dtype, f.row_shape
    return f.dtype, tuple(n for n in f.shape if n is not None)


#: ``(key, dtype, row_shape)`` of one growable file ``<key>.npy``
DataFile = tuple[str, np.dtype[Any], tuple[int, ...]]


def data_files(schema: Schema, times: bool) -> list[DataFile]:
    """Every growable file of the layout of ``schema``, in the order a writer
    makes them: ``steps``, ``times`` (when frames carry one), then each field's
    data and, for a ragged field, its offsets."""
    out: list[DataFile] = [("steps", np.dtype(np.int64), ())]
    if times:
        out.append(("times", np.dtype(np.float64), ()))
    for name, f in schema.items():
        dtype, row_shape = row_layout(f)
        out.append((name, dtype, row_shape))
        if f.ragged:
            out.append((offsets_name(name), np.dtype(np.int64), ()))
    return out


def committed_rows(meta: Metadata, key: str) -> int:
    """Rows of ``<key>.npy`` that the committed frames of ``meta`` need: one per
    frame, a ragged field's rows, or its offsets (one more than the frames)."""
    if key in meta.rows:
        return meta.rows[key]
    schema = meta.schema
    base = key.removesuffix(".offsets")
    if base != key and schema is not None and base in schema and schema[base].ragged:
        return meta.count + 1
    return meta.count
