"""I/O-free decisions of the HDF5 store: names, metadata, commit record, dtypes,
compression (the layout is specified in ``docs/formats/hdf5.md``).

The array plan (names, chunking) and the row buffering are the Zarr store's
(:func:`._zarrplan.plan_arrays`, :class:`._zarrplan.RowBuffer`): both are
format-neutral, and one plan keeps the two formats' arrays alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ConfigError, DTypeError, FormatError, SchemaError
from .._schema import Schema
from ._format import check_format_version, is_int

__all__ = [
    "ATTRS_ATTR",
    "COMMIT",
    "DROPPED",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_ATTR",
    "STATIC_GROUP",
    "CommitRecord",
    "Compression",
    "GroupMeta",
    "check_compression",
    "check_hdf5_dtype",
    "check_hdf5_dtypes",
    "check_hdf5_names",
    "check_hdf5_ranks",
    "check_hdf5_static",
    "maxshape",
    "parse_commit",
    "parse_group_meta",
]

FORMAT_NAME = "snapsink-hdf5"
FORMAT_VERSION = 1
#: group attribute: JSON text of the format, version, schema and times flag
META_ATTR = "snapsink"
#: group attribute: JSON text of the user's attrs
ATTRS_ATTR = "attrs"
#: int64 dataset ``[count, dropped runs, closed]``: the commit record, written last
COMMIT = "snapsink.commit"
#: int64 dataset of ``[start, stop)`` dropped-step runs (the first ``runs`` count)
DROPPED = "snapsink.dropped"
#: subgroup of the static arrays
STATIC_GROUP = "static"
#: rows per chunk of the dropped-runs dataset
DROPPED_CHUNK = 256


# -- dtypes ------------------------------------------------------------------------
def check_hdf5_dtype(dtype: np.dtype[Any], what: str) -> None:
    """Refuse dtypes the HDF5 store does not hold bit-exact (float128, complex256).

    Raises
    ------
    DTypeError
        Naming the field and what the store holds instead.
    """
    if (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16):
        raise DTypeError(
            f"{what}: dtype {dtype} is not stored by the HDF5 store (it holds bool, "
            "int8-int64, uint8-uint64, float16/32/64 and complex64/128: HDF5's long "
            "double does not keep every bit); cast the field, e.g. to float64, or use "
            "NpyDirectory"
        )


def check_hdf5_dtypes(schema: Schema, where: str) -> None:
    """:func:`check_hdf5_dtype` for every field of ``schema``."""
    for name, f in schema.items():
        check_hdf5_dtype(f.dtype, f"{where}: field {name!r}")


# -- ranks -------------------------------------------------------------------------
#: the most dimensions of an HDF5 dataset (``H5S_MAX_RANK``); numpy holds 64
MAX_RANK = 32


def check_hdf5_ranks(schema: Schema, where: str) -> None:
    """Refuse fields of more than ``MAX_RANK - 1`` dimensions: a field's
    dataset has one more, the frames (HDF5 would refuse it at the first append,
    after the frames were accepted).

    Raises
    ------
    SchemaError
        Naming the field and its dimensions.
    """
    for name, f in schema.items():
        if len(f.shape) >= MAX_RANK:
            raise SchemaError(
                f"{where}: field {name!r}: expected at most {MAX_RANK - 1} dimensions (an "
                f"HDF5 dataset holds {MAX_RANK}, one of them the frames), got "
                f"{len(f.shape)}; nothing was written: reshape the field, or use "
                "ZarrStore or NpyDirectory"
            )


def check_hdf5_static(name: str, arr: np.ndarray[Any, Any]) -> None:
    """Refuse a static array the HDF5 store does not hold: its dtype
    (:func:`check_hdf5_dtype`), or more than ``MAX_RANK`` dimensions.

    Raises
    ------
    DTypeError
        For the dtype.
    ConfigError
        For the dimensions.
    """
    check_hdf5_dtype(arr.dtype, f"static {name!r}")
    if arr.ndim > MAX_RANK:
        raise ConfigError(
            f"static {name!r}: expected at most {MAX_RANK} dimensions (HDF5's limit), got "
            f"{arr.ndim}; reshape it, or use ZarrStore or NpyDirectory"
        )


#: the first part of the group's own dataset names (the commit record, the
#: dropped steps): no field's name may start with it
OWN_PREFIX = "snapsink."


def check_hdf5_names(schema: Schema, where: str, taken: tuple[str, ...] = ()) -> None:
    """Refuse field names whose datasets would take the place of the store's
    own: ``snapsink.*`` (a nested field ``{"snapsink": {"commit": ...}}`` is
    ``snapsink.commit``, the commit record), and the names in ``taken`` (the
    H5MD tree's top groups, when the group is the root). ``steps``, ``times``,
    ``static`` and ``metadata`` no field name may take (:func:`check_name`).

    Raises
    ------
    SchemaError
        Naming the field and the dataset or group it would take over.
    """
    for name in schema:
        if name.startswith(OWN_PREFIX) or name in taken:
            what = (
                f"the store's own {OWN_PREFIX}* datasets ({COMMIT!r}, {DROPPED!r})"
                if name.startswith(OWN_PREFIX)
                else f"the H5MD tree's group /{name} (the store's group is the root)"
            )
            raise SchemaError(
                f"{where}: field {name!r} would take the place of {what}; nothing was "
                "written: rename the field (or its top key, for nested state)"
                + ("" if name.startswith(OWN_PREFIX) else ", or write into a group")
            )


def maxshape(row_shape: tuple[int, ...]) -> tuple[int | None, ...]:
    """A growable dataset's ``maxshape``: unlimited frames; a dimension of size 0
    unlimited too (HDF5 wants chunk dimensions of at least 1 within the maximum)."""
    return (None, *(None if n == 0 else n for n in row_shape))


# -- compression -------------------------------------------------------------------
#: ``(filter, options)`` as h5py's ``create_dataset`` takes them: ``"gzip"``,
#: ``"lzf"`` or a registered filter id (Blosc, Zstd through hdf5plugin).
Compression = tuple[str | int, Any]


def check_compression(value: object) -> Compression | None:
    """The store's ``compression`` argument as a picklable ``(filter, options)``.

    Accepts ``None``, ``"gzip"``, ``("gzip", level)``, ``"lzf"``, a filter id,
    or a mapping with ``"compression"`` (and ``"compression_opts"``): what
    hdf5plugin's filters (``hdf5plugin.Zstd()``, ``hdf5plugin.Blosc()``) are.

    Raises
    ------
    ConfigError
        Anything else, or a gzip level outside 0-9.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = (value, None)
    elif isinstance(value, Mapping):
        value = (value.get("compression"), value.get("compression_opts"))
    elif is_int(value):
        value = (value, None)
    if not isinstance(value, tuple) or len(value) != 2:
        raise ConfigError(
            "compression: expected None, 'gzip', ('gzip', level), 'lzf', a filter id or "
            f"an hdf5plugin filter (hdf5plugin.Zstd(), hdf5plugin.Blosc()), got {value!r}"
        )
    kind, opts = value
    if kind == "gzip":
        if opts is None:
            opts = 4
        if not is_int(opts) or not 0 <= opts <= 9:
            raise ConfigError(f"compression: expected a gzip level from 0 to 9, got {opts!r}")
        return ("gzip", int(opts))
    if kind == "lzf":
        if opts is not None:
            raise ConfigError(f"compression: 'lzf' takes no options, got {opts!r}")
        return ("lzf", None)
    if is_int(kind) and 256 <= kind <= 65535:
        if opts is not None:
            try:
                opts = tuple(int(x) for x in opts)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"compression: filter {kind}: expected int options, got {opts!r}"
                ) from exc
        return (int(kind), opts)
    raise ConfigError(
        f"compression: expected 'gzip', 'lzf' or a registered filter id (256-65535), got {kind!r}"
    )


# -- metadata ----------------------------------------------------------------------
@dataclass(slots=True)
class GroupMeta:
    """What a group's ``snapsink`` attribute holds."""

    schema: Schema | None = None
    times: bool | None = None

    def to_text(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "schema": None if self.schema is None else self.schema.to_json(),
                "times": self.times,
            },
            separators=(",", ":"),
        )


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def is_snapsink_attr(value: object) -> bool:
    """Whether a ``snapsink`` attribute claims the format (maybe corrupt)."""
    text = _text(value)
    if text is None:
        return False
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return True  # corrupt: the reader reports it
    return not isinstance(obj, dict) or obj.get("format") == FORMAT_NAME


def parse_group_meta(value: object, where: str) -> GroupMeta:
    """Parse and check a group's ``snapsink`` attribute.

    Raises
    ------
    FormatError
        Missing, foreign, newer or malformed.
    """
    text = _text(value)
    if text is None:
        raise FormatError(f"{where}: not a snapsink group (no {META_ATTR!r} text attribute)")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: the {META_ATTR!r} attribute is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        got = obj.get("format") if isinstance(obj, dict) else obj
        raise FormatError(f"{where}: expected format {FORMAT_NAME!r}, got {got!r}")

    def bad(msg: str) -> FormatError:
        return FormatError(f"{where}: {msg}")

    check_format_version(obj.get("version"), FORMAT_VERSION, bad)
    schema: Schema | None = None
    if obj.get("schema") is not None:
        try:
            schema = Schema.from_json(obj["schema"])
        except (ConfigError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: malformed schema: {exc}") from exc
    times = obj.get("times")
    if times is not None and not isinstance(times, bool):
        raise FormatError(f"{where}: malformed times flag {times!r}")
    return GroupMeta(schema, times)


def parse_user_attrs(value: object, where: str) -> dict[str, Any]:
    """The user's attrs from a group's ``attrs`` attribute (``{}`` when absent)."""
    if value is None:
        return {}
    text = _text(value)
    try:
        obj = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: malformed {ATTRS_ATTR!r} attribute (expected JSON object)")
    return obj


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """The commit record: what readers and a resume trust."""

    count: int = 0
    runs: int = 0
    closed: bool = False

    def to_array(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return np.array([self.count, self.runs, int(self.closed)], np.int64)


def parse_commit(raw: object, where: str) -> CommitRecord:
    """Check the commit record read from the file.

    Raises
    ------
    FormatError
        Not three int64 values ``[count >= 0, runs >= 0, closed in {0, 1}]``.
    """
    arr = np.asarray(raw)
    if arr.shape != (3,) or arr.dtype != np.int64:
        raise FormatError(
            f"{where}: {COMMIT!r}: expected 3 int64 values, got {arr.dtype} {arr.shape}"
        )
    count, runs, closed = (int(x) for x in arr)
    if count < 0 or runs < 0 or closed not in (0, 1):
        raise FormatError(f"{where}: {COMMIT!r}: malformed commit record {arr.tolist()}")
    return CommitRecord(count, runs, bool(closed))
