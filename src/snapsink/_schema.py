"""Fields, schemas, frames and the validation every write goes through.

Everything here is free of I/O: the async core, the sync facade and the stores
call the same code. Which dtypes a field may take and which values cast into
them (the dtype rule) is :mod:`snapsink._dtypes`.

Nested state
------------
A frame may be nested (mappings, dataclasses, NamedTuples, lists of arrays, JAX
pytrees): it is flattened once, before validation, into fields named by their
path with ``.`` between the keys (``params.w``); see :mod:`snapsink._pytree`.
A flat frame whose names match the schema is never walked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._arrays import is_device_array
from ._dtypes import (
    as_dtype,
    as_host_array,
    becomes_inf,
    dtype_shape,
    holds_any_float,
    int_str,
    rounds_int,
    safe_cast,
    unmasked,
)
from ._errors import ConfigError, DTypeError, SchemaError
from ._pytree import SEP, flatten_frame, flatten_specs, tree_conflict

__all__ = [
    "Batch",
    "Field",
    "Frame",
    "Schema",
    "StepClock",
    "check_name",
    "is_device_array",
    "next_step",
    "offsets_name",
]

#: names a field may not take: they are files or arrays of the stores themselves.
RESERVED_NAMES = frozenset({"steps", "times", "metadata", "static"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: a nested field name: identifiers or indices joined by SEP ("0.weight" is
#: the first key of an nn.Sequential's state dict)
_NESTED_NAME = re.compile(r"(?:[A-Za-z_]\w*|[0-9]+)(?:\.(?:[A-Za-z_]\w*|[0-9]+))+", re.ASCII)
#: the last part of a nested name the stores keep for themselves: a ragged
#: field's row offsets are ``<name>.offsets``
_OFFSETS = f"{SEP}offsets"
#: the most dimensions a field may have: numpy's 64, less the frame axis the
#: stores put in front of every field's values
MAX_NDIM = 63
#: int64's range as Python ints (``np.iinfo(...).min`` is a property computed per call)
_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def check_name(name: object, what: str = "field") -> str:
    """Return ``name`` as a plain str if it is a safe field or group name, else
    raise ConfigError.

    A str subclass (a ``(str, Enum)`` member) gives its value, as a nested key
    does: names reach the writer process and the stores' metadata, where only
    builtins may go (the writer cannot import the enum of a script).

    A name is an identifier (letters, digits, underscore; not starting with a
    digit; at most 128 characters): it becomes a file or array name, so ``/``,
    ``..``, absolute paths and control characters can never reach the disk.

    A field name may also be nested: identifiers or indices joined by ``.``
    (``layers.0.weight``, ``0.bias``), at most 128 characters in all. Its first
    part may not be a reserved name, and its last part may not be ``offsets``
    (the stores name a ragged field's row offsets ``<name>.offsets``).
    """
    if not isinstance(name, str):
        raise ConfigError(f"{what} name: expected a str, got {type(name).__name__} {name!r}")
    name = str.__str__(name)  # the text itself, never a subclass's __str__
    if what != "field":
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{what} name {name!r}: expected an identifier (letters, digits and '_', "
                "not starting with a digit, at most 128 characters)"
            )
        return name
    if _NAME.fullmatch(name):
        head = name
    elif len(name) <= 128 and _NESTED_NAME.fullmatch(name):
        head = name[: name.index(SEP)]
        if name.endswith(_OFFSETS):
            raise ConfigError(
                f"field name {name!r}: a nested name may not end in {_OFFSETS!r}, which the "
                "stores use for a ragged field's row offsets; rename that key"
            )
    else:
        raise ConfigError(
            f"field name {name!r}: expected an identifier (letters, digits and '_', not "
            f"starting with a digit), or identifiers and indices joined by {SEP!r} "
            "(nested state: 'layers.0.weight'), at most 128 characters"
        )
    if head in RESERVED_NAMES:
        raise ConfigError(
            f"field name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))})"
        )
    return name


@dataclass(frozen=True, slots=True, init=False)
class Field:
    """One named quantity of a frame: its dtype and its per-frame shape.

    Parameters
    ----------
    dtype
        Anything ``numpy.dtype`` accepts: bool, integer, float or complex.
    shape
        The shape of one frame's value; ``()`` for a scalar. A first dimension of
        ``None`` makes the field *ragged*: its row count may change from frame to
        frame (e.g. ``(None, 3)`` for the positions of a varying number of atoms).
        At most 63 dimensions: stored, a field gains a frame axis, and numpy
        holds 64 (HDF5Store: at most 31, HDF5 holds 32).
    dims
        Optional names of the dimensions of ``shape``, one each, e.g.
        ``("y", "x")``: fields naming the same dimension share it in
        :meth:`~snapsink.Trajectory.to_xarray` and in the Zarr store's
        ``dimension_names`` (so grids align). Identifiers, not ``frame`` or
        ``frame_edge``. A ragged field's row dimension keeps the name
        ``<name>_row`` in the stores (its length is the rows of all frames);
        ``dims[0]`` only names it.

    Raises
    ------
    ConfigError
        For a dtype that cannot be stored, a malformed shape (more than 63
        dimensions too), or bad ``dims``.
    """

    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]
    ragged: bool = field(compare=False, repr=False)
    """True when the first dimension is ``None`` (row count varies per frame)."""
    row_nbytes: int = field(compare=False, repr=False)
    """Bytes of one row (ragged) or of one frame's value (fixed shape)."""
    dims: tuple[str, ...] | None
    """The dimensions' names, or None (``<name>_dim_<k>`` then)."""

    def __init__(
        self,
        dtype: object,
        shape: tuple[int | None, ...] | list[int | None] = (),
        dims: tuple[str, ...] | list[str] | None = None,
    ):
        dt = as_dtype(dtype, "Field dtype")
        try:
            shp = tuple(shape)
        except TypeError as exc:
            raise ConfigError(f"Field shape: expected a tuple, got {shape!r}") from exc
        if len(shp) > MAX_NDIM:
            raise ConfigError(
                f"Field shape: expected at most {MAX_NDIM} dimensions (numpy's 64, less "
                f"the frame axis the stores add), got {len(shp)}"
            )
        for i, n in enumerate(shp):
            if n is None:
                if i != 0:
                    raise ConfigError(
                        f"Field shape {shp}: only the first dimension may be None (ragged)"
                    )
            elif isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
                raise ConfigError(
                    f"Field shape {shp}: expected non-negative ints or a leading None"
                )
        object.__setattr__(self, "dtype", dt)
        object.__setattr__(self, "shape", tuple(None if n is None else int(n) for n in shp))
        ragged = bool(shp) and shp[0] is None
        object.__setattr__(self, "ragged", ragged)
        per_row = shp[1:] if ragged else shp
        sizes = [int(n) for n in per_row if n is not None]
        object.__setattr__(self, "row_nbytes", math.prod(sizes) * dt.itemsize)
        object.__setattr__(self, "dims", _check_dims(dims, shp))

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row of a ragged field (the shape without its first dimension)."""
        return tuple(n for n in self.shape[1:] if n is not None)

    def frame_nbytes(self, rows: int | None = None) -> int:
        """Bytes of one frame's value (``rows`` rows for a ragged field)."""
        if self.ragged:
            return int(rows or 0) * self.row_nbytes
        return self.row_nbytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description: ``{"dtype": "<f4", "shape": [null, 3]}``
        (and ``"dims": [...]`` when the dimensions are named)."""
        out: dict[str, Any] = {"dtype": self.dtype.str, "shape": list(self.shape)}
        if self.dims is not None:
            out["dims"] = list(self.dims)
        return out

    @classmethod
    def from_json(cls, obj: object) -> Field:
        """Inverse of :meth:`to_json`; raises ConfigError for anything malformed."""
        if not isinstance(obj, dict) or not {"dtype", "shape"} <= set(obj) <= {
            "dtype",
            "shape",
            "dims",
        }:
            raise ConfigError(
                f"field description: expected {{'dtype', 'shape'[, 'dims']}}, got {obj!r}"
            )
        if not isinstance(obj["dtype"], str) or not isinstance(obj["shape"], list):
            raise ConfigError(f"field description: malformed {obj!r}")
        dims = obj.get("dims")
        if dims is not None and not isinstance(dims, list):
            raise ConfigError(f"field description: malformed dims in {obj!r}")
        return cls(obj["dtype"], tuple(obj["shape"]), None if dims is None else tuple(dims))

    def dim_names(self, name: str) -> tuple[str, ...]:
        """The names of the per-frame dimensions of field ``name`` as the
        stores and :meth:`~snapsink.Trajectory.to_xarray` use them: ``dims``, or
        ``<name>_dim_<k>``; a ragged field's row dimension is ``<name>_row``."""
        n = len(self.shape)
        names = list(self.dims) if self.dims is not None else [
            f"{name}_dim_{k}" for k in range(n)
        ]
        if self.ragged:
            names[0] = f"{name}_row"
            if self.dims is None:
                names[1:] = [f"{name}_dim_{k}" for k in range(1, n)]
        return tuple(names)

    def __repr__(self) -> str:
        dims = "" if self.dims is None else f", dims={self.dims!r}"
        return f"Field({str(self.dtype)!r}, {self.shape!r}{dims})"


def offsets_name(name: str) -> str:
    """Array name of the offsets of ragged field ``name`` (``"<name>.offsets"``).

    No field name ends in ``.offsets`` (see :func:`check_name`), so the offsets
    array never collides with a field, ``steps`` or ``times``.
    """
    return f"{name}.offsets"


_RESERVED_DIMS = frozenset({"frame", "frame_edge"})


def _check_dims(dims: object, shape: tuple[Any, ...]) -> tuple[str, ...] | None:
    if dims is None:
        return None
    if isinstance(dims, str) or not isinstance(dims, tuple | list):
        raise ConfigError(
            f"Field dims: expected a tuple of names, one per dimension of {shape}, "
            f"got {dims!r}"
        )
    # a str subclass's value (a (str, Enum) member): names go to the writer process
    out = tuple(str.__str__(d) if isinstance(d, str) else d for d in dims)
    if len(out) != len(shape):
        raise ConfigError(
            f"Field dims {out!r}: expected {len(shape)} name(s), one per dimension of "
            f"shape {shape}, got {len(out)}"
        )
    for d in out:
        if not isinstance(d, str) or not d.isidentifier() or d in _RESERVED_DIMS:
            raise ConfigError(
                f"Field dims {out!r}: expected identifiers other than 'frame' and "
                f"'frame_edge', got {d!r}"
            )
    if len(set(out)) != len(out):
        raise ConfigError(f"Field dims {out!r}: a name repeats")
    return out


def _coerce_field(name: str, spec: object) -> Field:
    if isinstance(spec, Field):
        return spec
    try:
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], tuple | list):
            return Field(spec[0], spec[1])
        return Field(spec)
    except ConfigError as exc:
        raise ConfigError(f"schema field {name!r}: {exc}") from None


def _dim_conflict(fields: Mapping[str, Field]) -> str | None:
    """A message when two fields give one dimension two sizes, else None.

    Fields naming a dimension share it (``to_xarray``, Zarr's
    ``dimension_names``), so its size must agree, default names
    (``<name>_dim_<k>``) included. A ragged field's rows are the dimension
    ``<name>_row`` in the stores, as long as the rows of all frames: no
    dimension of a fixed size may take that name.
    """
    sizes: dict[str, tuple[int | None, str]] = {}
    for name, f in fields.items():
        for dim, n in zip(f.dim_names(name), f.shape, strict=True):
            seen = sizes.setdefault(dim, (n, name))
            if seen == (n, name) or (seen[0] == n and n is not None):
                continue
            if n is None or seen[0] is None:
                rows, other = (name, seen[1]) if n is None else (seen[1], name)
                return (
                    f"field {other!r} names dimension {dim!r}, the rows of ragged field "
                    f"{rows!r} (as many as all its frames' rows); name the dimension otherwise"
                )
            return (
                f"dimension {dim!r} has size {seen[0]} in field {seen[1]!r} and {n} in "
                f"field {name!r}; fields naming a dimension share it (to_xarray, Zarr's "
                "dimension_names): give them sizes that agree, or another dimension name"
            )
    return None


class Schema(Mapping[str, Field]):
    """The fields every frame of a sink carries, in order.

    Parameters
    ----------
    fields
        ``{name: Field}``; a value may also be a dtype (a scalar field) or a
        ``(dtype, shape)`` pair. Nested fields are named with ``.``
        (``"params.w"``), or given as nested mappings
        (``{"params": {"w": Field("f4", (3,))}}``): the two are the same schema.

    Raises
    ------
    ConfigError
        For an unsafe name, a reserved name, an invalid field, a name given
        twice, a field that is also the parent of another (``a``, ``a.b``), or
        fields giving one dimension two sizes (``dims=("n",)`` on fields of 3
        and 4 values; a ragged field's rows ``<name>_row`` named by another).
    """

    __slots__ = ("_fields", "_keys", "fixed_nbytes", "plan", "ragged")

    def __init__(self, fields: Mapping[str, object]):
        self._build(fields)
        conflict = _dim_conflict(self._fields)
        if conflict is not None:
            raise ConfigError(f"Schema: {conflict}")

    def _build(self, fields: Mapping[str, object]) -> None:
        if not isinstance(fields, Mapping):
            raise ConfigError(
                f"Schema: expected a mapping of name to Field, got {type(fields).__name__}"
            )
        if any(isinstance(spec, Mapping) for spec in fields.values()):
            fields = flatten_specs(fields)
        self._fields: dict[str, Field] = {}
        for name, spec in fields.items():
            plain = check_name(name)  # an enum member's value: names go to the writer
            self._fields[plain] = _coerce_field(plain, spec)
        if not self._fields:
            raise ConfigError("Schema: expected at least one field")
        conflict = tree_conflict(list(self._fields))
        if conflict is not None:
            raise ConfigError(f"Schema: {conflict}")
        self._keys = frozenset(self._fields)
        #: (name, field, dtype, shape, ragged, whether any Python float fits) per
        #: field: what validate() loops over
        self.plan = tuple(
            (n, f, f.dtype, f.shape, f.ragged, holds_any_float(f.dtype))
            for n, f in self._fields.items()
        )
        #: bytes of a frame's fixed-shape fields
        self.fixed_nbytes = sum(f.row_nbytes for f in self._fields.values() if not f.ragged)
        #: names of the ragged fields
        self.ragged: tuple[str, ...] = tuple(n for n, f in self._fields.items() if f.ragged)

    def __getitem__(self, name: str) -> Field:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return list(self._fields.items()) == list(other._fields.items())

    def __hash__(self) -> int:
        return hash(tuple(self._fields.items()))

    def __repr__(self) -> str:
        return f"Schema({self._fields!r})"

    def to_json(self) -> dict[str, Any]:
        """``{name: {"dtype": ..., "shape": [...]}}``, in field order."""
        return {n: f.to_json() for n, f in self._fields.items()}

    @classmethod
    def from_json(cls, obj: object) -> Schema:
        """Inverse of :meth:`to_json`."""
        if not isinstance(obj, dict):
            raise ConfigError(f"schema description: expected an object, got {type(obj).__name__}")
        # a store written before Schema refused a dimension of two sizes still
        # reads, field by field
        return cls._dims_unchecked({str(n): Field.from_json(f) for n, f in obj.items()})

    @classmethod
    def _dims_unchecked(cls, fields: Mapping[str, object]) -> Schema:
        """A schema whose dimension names are not checked across fields: a stored
        one, or one rank's part of a many-rank store's, whose decomposed fields
        hold a block of a dimension that another field may hold whole."""
        schema = cls.__new__(cls)
        schema._build(fields)
        return schema

    @classmethod
    def infer(cls, fields: object) -> Schema:
        """The schema of a first frame: each value's dtype and shape (never ragged).

        Python ``float``, ``int``, ``bool`` and ``complex`` become float64, int64,
        bool and complex128 scalars. Nested state is flattened first (fields
        ``params.w``, ...).

        Raises
        ------
        ConfigError
            An unsafe or reserved name.
        SchemaError
            A name given twice, a field that is also a parent (``a``, ``a.b``),
            or a value of more than 63 dimensions.
        DTypeError
            Not a mapping (nor nested state), or a value that cannot be stored.
        """
        flat = flatten_frame(fields)
        for name in flat:
            check_name(name)
        conflict = tree_conflict(list(flat))
        if conflict is not None:
            raise SchemaError(f"frame: {conflict}")
        out: dict[str, Field] = {}
        for name, value in flat.items():
            unmasked(name, value)  # a masked first frame fixes no schema
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and not (_INT64_MIN <= value <= _INT64_MAX)
            ):
                raise DTypeError(
                    f"field {name!r}: the Python int {int_str(value)} does not fit int64, "
                    "the dtype a Python int is inferred as; declare the field's dtype in the "
                    "schema (e.g. 'uint64' or 'float64')"
                )
            dtype, shape = dtype_shape(name, value)
            if len(shape) > MAX_NDIM:
                raise SchemaError(
                    f"field {name!r}: expected at most {MAX_NDIM} dimensions (numpy's 64, "
                    f"less the frame axis the stores add), got {len(shape)}"
                )
            try:
                out[name] = Field(dtype, shape)
            except ConfigError as exc:
                raise DTypeError(f"field {name!r}: {exc}") from None
        return cls(out)

    def _flatten(self, fields: object, step: int) -> Mapping[str, Any]:
        """``fields`` flattened (nested state), or a SchemaError naming the
        missing and unknown fields; off the hot path of flat frames."""
        flat = flatten_frame(fields, step)
        if flat.keys() != self._keys:
            missing = [n for n in self._fields if n not in flat]
            extra = [repr(n) for n in flat if n not in self._fields]
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unknown {', '.join(extra)}")
            raise SchemaError(
                f"frame at step {step}: {'; '.join(parts)} "
                f"(expected fields {', '.join(map(repr, self._fields))})"
            )
        return flat

    def validate(self, fields: object, step: int) -> list[tuple[str, Field, Any]]:
        """Check one frame against the schema, without copying anything.

        Returns ``[(name, field, value), ...]`` in schema order; ``value`` is the
        caller's object, converted to a numpy array only when it was an
        array-like that is neither a numpy array nor a device array.

        A flat mapping whose names are the schema's is taken as it is; anything
        else (nested state) is flattened first.

        Raises
        ------
        SchemaError
            A missing or unknown field, a field given twice, or a wrong shape.
        DTypeError
            Not a mapping (nor nested state), or a value whose dtype cannot be
            stored safely.
        """
        if (type(fields) is not dict and not isinstance(fields, Mapping)) or (
            fields.keys() != self._keys
        ):
            fields = self._flatten(fields, step)
        out: list[tuple[str, Field, Any]] = []
        append = out.append
        for name, spec, want, shape, ragged, any_float in self.plan:
            value = fields[name]
            kind = type(value)
            # Fast paths: the common cases cost a few attribute reads.
            if kind is np.ndarray:
                if value.dtype == want and not ragged and value.shape == shape:
                    append((name, spec, value))
                    continue
            elif kind is float:
                if any_float and not shape:
                    append((name, spec, value))
                    continue
            elif not isinstance(value, np.ndarray | np.generic | float | int | complex) and not (
                is_device_array(value)
            ):
                value = as_host_array(name, value, step)
            value = unmasked(name, value, step)
            dtype, got = dtype_shape(name, value, step)
            # A Python int is int64 by name only: its value must fit the field;
            # so must an int subclass's (IntEnum, IntFlag), which numpy takes as int.
            an_int = isinstance(value, int) and kind is not bool
            if (dtype != want or an_int) and not safe_cast(value, dtype, want):
                if an_int:
                    if want.kind == "b":
                        raise DTypeError(
                            f"field {name!r}: expected a bool (True, False or np.bool_), got "
                            f"the Python int {int_str(value)} at step {step}"
                        )
                    if rounds_int(value, want):
                        raise DTypeError(
                            f"field {name!r}: expected an int that {want} holds exactly, got "
                            f"the Python int {int_str(value)} at step {step}, which it would "
                            "round; convert it to the field's dtype first to store it rounded, "
                            "or declare an integer dtype in the schema"
                        )
                    raise DTypeError(
                        f"field {name!r}: expected a value that fits {want}, got the Python "
                        f"int {int_str(value)} at step {step}; declare a wider dtype in the "
                        "schema"
                    )
                if becomes_inf(value, want):
                    raise DTypeError(
                        f"field {name!r}: expected a value that fits {want}, got the Python "
                        f"{type(value).__name__} {value!r} at step {step}, which would be "
                        "stored as inf; declare a wider dtype in the schema"
                    )
                raise DTypeError(
                    f"field {name!r}: expected dtype {want}, got {dtype} at step {step}; "
                    f"the cast would lose information, convert with .astype({str(want)!r}) "
                    "or declare the field's dtype in the schema"
                )
            if ragged:
                if len(got) != len(shape) or got[1:] != shape[1:]:
                    raise SchemaError(
                        f"field {name!r}: expected shape {_shape_str(shape)}, "
                        f"got {got} at step {step}"
                    )
            elif got != shape:
                raise SchemaError(
                    f"field {name!r}: expected shape {shape}, got {got} at step {step}"
                )
            append((name, spec, value))
        return out


def _shape_str(shape: tuple[int | None, ...]) -> str:
    return (
        "("
        + ", ".join("rows" if n is None else str(n) for n in shape)
        + (",)" if len(shape) == 1 else ")")
    )


def next_step(last: int | None, step: object, why: str = "steps strictly increase") -> int:
    """The step of the next frame: ``step``, or ``last + 1`` (0 first), checked.

    One rule for a sink's :class:`StepClock` and a recorder's router; ``why``
    ends the message of a step that does not increase.

    Raises
    ------
    DTypeError
        ``step`` is not an int.
    SchemaError
        ``step`` does not fit int64 or is not greater than ``last``.
    """
    if type(step) is int and _INT64_MIN <= step <= _INT64_MAX and (last is None or step > last):
        return step  # the common case, each frame: a plain int that increases
    if step is None:
        s = 0 if last is None else last + 1
    else:
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise DTypeError(f"step: expected an int, got {type(step).__name__} {step!r}")
        s = int(step)
        if not _INT64_MIN <= s <= _INT64_MAX:
            raise SchemaError(f"step: expected a value that fits int64, got {s}")
        if last is not None and s <= last:
            raise SchemaError(f"step: expected a step greater than {last} ({why}), got {s}")
    if s > _INT64_MAX:
        raise SchemaError(f"step: the next step {s} does not fit int64")
    return s


@dataclass(slots=True)
class StepClock:
    """Step and time bookkeeping of one sink: strictly increasing steps, finite
    non-decreasing times, and times either on every frame or on none."""

    last_step: int | None = None
    last_time: float | None = None
    has_times: bool | None = None

    def check(self, step: object, time: object) -> tuple[int, float | None]:
        """Validate ``step`` and ``time`` for the next frame; does not advance."""
        s = next_step(self.last_step, step)
        if (
            type(time) is float
            and self.has_times is not False
            and -math.inf < time < math.inf
            and (self.last_time is None or time >= self.last_time)
        ):
            return s, time  # the common case, each frame: a finite float that does not go back
        if time is None:
            if self.has_times:
                raise SchemaError(
                    f"time at step {s}: expected a time (earlier frames had one), got None"
                )
            return s, None
        if isinstance(time, bool) or not isinstance(time, int | float | np.integer | np.floating):
            raise DTypeError(
                f"time at step {s}: expected a float, got {type(time).__name__} {time!r}"
            )
        try:
            t = float(time)
        except OverflowError:  # a Python int beyond any float
            raise SchemaError(
                f"time at step {s}: expected a finite number, got the int "
                f"{int_str(int(time))}, too large for a float"
            ) from None
        if not math.isfinite(t):
            raise SchemaError(f"time at step {s}: expected a finite number, got {t}")
        if self.has_times is False:
            raise SchemaError(
                f"time at step {s}: expected no time (earlier frames had none), got {t}"
            )
        if self.last_time is not None and t < self.last_time:
            raise SchemaError(
                f"time at step {s}: expected a time >= {self.last_time} (times never "
                f"decrease), got {t}"
            )
        return s, t

    def advance(self, step: int, time: float | None) -> None:
        """Record an accepted (stored, spilled or dropped) frame."""
        self.last_step = step
        if self.has_times is None:
            self.has_times = time is not None
        if time is not None:
            self.last_time = time


@dataclass(slots=True)
class Frame:
    """One captured frame as a store receives it.

    ``fields`` holds host numpy arrays in schema order, of the schema's dtypes
    (a scalar field's value may be a numpy scalar, e.g. ``np.float64``). Arrays
    may live in a reusable staging slot: a store must copy what it keeps and
    must not hold references to them after ``append`` returns.

    Attributes
    ----------
    step
        The frame's step (strictly increasing within a sink).
    time
        The frame's time, or ``None`` when the sink's frames carry none.
    fields
        ``{name: array}`` in schema order.
    """

    step: int
    time: float | None
    fields: dict[str, np.ndarray[Any, Any]]

    @property
    def nbytes(self) -> int:
        """Bytes of the field data."""
        return sum(a.nbytes for a in self.fields.values())


@dataclass(frozen=True, slots=True)
class Batch:
    """What the consumer hands a store in one ``append`` call.

    Attributes
    ----------
    frames
        Frames in write order (steps strictly increasing).
    dropped_steps
        Steps a drop policy discarded since the previous batch (sorted); the
        store records them in its metadata at its next commit.
    """

    frames: list[Frame]
    dropped_steps: list[int] = field(default_factory=list)
