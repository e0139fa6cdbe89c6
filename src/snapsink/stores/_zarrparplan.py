"""I/O-free planning for many ranks writing one Zarr group (``ZarrStore(comm=...)``).

Each rank declares, per decomposed field, its block of the global per-frame
array (``region={"rho": (slice(0, 64), slice(64, 128))}``). From every rank's
declaration this module checks that the blocks tile the global array, picks
the spatial chunk (the largest that divides every rank boundary, so that no
chunk spans two ranks) or checks the one asked for, and lists the chunks each
rank writes. Fields without a region are either ragged (each rank's rows, in
arrays of its own, read as one trajectory: frame ``i`` is the concatenation
over ranks, in rank order) or written by rank 0 alone. The layout is specified
in ``docs/formats/zarr.md`` ("Many ranks").
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError, SchemaError
from .._schema import Field, Schema, offsets_name

__all__ = [
    "PARALLEL_KEY",
    "Extent",
    "FieldLayout",
    "check_chunks",
    "check_region",
    "global_schema",
    "local_schema",
    "plan_layout",
    "rank_array",
]

#: group attribute holding the many-rank layout (ranks, decomposed and ragged fields)
PARALLEL_KEY = "snapsink_parallel"

#: ``((start, stop), ...)``: one rank's block of a field, per dimension
Extent = tuple[tuple[int, int], ...]


def rank_array(name: str, rank: int, *, offsets: bool = False) -> str:
    """Array name of rank ``rank``'s rows of ragged field ``name`` (or their offsets)."""
    base = f"{name}.rank{rank}"
    return offsets_name(base) if offsets else base


def check_region(region: object) -> dict[str, Extent]:
    """``{field: ((start, stop), ...)}`` from ``{field: (slice, ...)}``.

    Raises
    ------
    ConfigError
        Not a mapping of field names to tuples of slices with explicit,
        non-negative, increasing bounds and no step.
    """
    if region is None:
        return {}
    if not isinstance(region, Mapping):
        raise ConfigError(
            "region: expected a dict {field: (slice, ...)} giving this rank's block "
            f"of each decomposed field, got {type(region).__name__}"
        )
    out: dict[str, Extent] = {}
    for name, block in region.items():
        if not isinstance(name, str):
            raise ConfigError(f"region: expected field names, got {name!r}")
        if isinstance(block, slice):
            block = (block,)
        if not isinstance(block, tuple) or not block:
            raise ConfigError(
                f"region[{name!r}]: expected a tuple of slices, one per dimension, got {block!r}"
            )
        out[name] = tuple(_bounds(f"region[{name!r}]", s) for s in block)
    return out


def _integer(value: object) -> int | None:
    """``value`` as a Python int when it is an integer of any kind (a NumPy
    integer from ``np.cumsum`` too; not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _bounds(where: str, s: object) -> tuple[int, int]:
    """``(start, stop)`` of one dimension's slice, or ConfigError saying what is wrong."""
    if not isinstance(s, slice):
        raise ConfigError(f"{where}: expected a slice per dimension, got {s!r}")
    start, stop = _integer(s.start), _integer(s.stop)
    if start is None or stop is None:
        raise ConfigError(f"{where}: expected integer bounds (start and stop given), got {s!r}")
    if s.step is not None and _integer(s.step) != 1:
        raise ConfigError(f"{where}: expected no step (or 1), got {s!r}")
    if not 0 <= start < stop:
        raise ConfigError(f"{where}: expected bounds 0 <= start < stop, got {s!r}")
    return start, stop


def check_chunks(chunks: object, region: Mapping[str, Extent]) -> dict[str, tuple[int, ...]]:
    """The spatial chunks asked for, per decomposed field (checked against the
    rank boundaries later, by :func:`plan_layout`).

    Raises
    ------
    ConfigError
        Not ``{field: (int, ...)}`` of positive ints, one per dimension of a
        field that has a region.
    """
    if chunks is None:
        return {}
    if not isinstance(chunks, Mapping):
        raise ConfigError(f"chunks: expected a dict {{field: (int, ...)}}, got {chunks!r}")
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in chunks.items():
        if name not in region:
            raise ConfigError(
                f"chunks[{name!r}]: only decomposed fields (those in region) take "
                f"spatial chunks; region has {sorted(region)}"
            )
        ndim = len(region[name])
        sizes = [_integer(n) for n in shape] if isinstance(shape, tuple) else []
        if len(sizes) != ndim or not all(n is not None and n > 0 for n in sizes):
            raise ConfigError(
                f"chunks[{name!r}]: expected {ndim} positive ints (one per dimension), "
                f"got {shape!r}"
            )
        out[name] = tuple(n for n in sizes if n is not None)
    return out


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """How one decomposed field is stored: global per-frame shape, spatial chunk,
    and every rank's block (``extents[rank]``)."""

    name: str
    shape: tuple[int, ...]
    chunk: tuple[int, ...]
    extents: tuple[Extent, ...]

    def chunks_of(self, rank: int) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
        """The chunks rank ``rank`` writes: ``(chunk grid coordinates, the chunk's
        slices in the rank's local block)``, in grid order."""
        extent = self.extents[rank]
        per_dim = []
        for (start, stop), c in zip(extent, self.chunk, strict=True):
            per_dim.append([(k, slice(k * c - start, (k + 1) * c - start))
                            for k in range(start // c, stop // c)])  # fmt: skip
        return [
            (tuple(k for k, _ in combo), tuple(s for _, s in combo))
            for combo in itertools.product(*per_dim)
        ]

    def local_shape(self, rank: int) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.extents[rank])

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "chunk": list(self.chunk),
                "extents": [[list(d) for d in e] for e in self.extents]}  # fmt: skip


def _check_tiling(name: str, extents: Sequence[Extent]) -> tuple[int, ...]:
    """The global shape the blocks tile, or ConfigError naming the field."""
    ndims = {len(e) for e in extents}
    if len(ndims) != 1:
        raise ConfigError(
            f"region[{name!r}]: every rank must give a block of the same number of "
            f"dimensions, got {[len(e) for e in extents]} by rank"
        )
    shape = tuple(max(e[d][1] for e in extents) for d in range(ndims.pop()))
    volume = sum(math.prod(b - a for a, b in e) for e in extents)
    for (i, a), (j, b) in itertools.combinations(enumerate(extents), 2):
        if all(max(x[0], y[0]) < min(x[1], y[1]) for x, y in zip(a, b, strict=True)):
            raise ConfigError(
                f"region[{name!r}]: the blocks of ranks {i} and {j} overlap "
                f"({a} and {b}); no two ranks may write the same elements"
            )
    if volume != math.prod(shape):
        raise ConfigError(
            f"region[{name!r}]: the ranks' blocks do not cover the global shape {shape} "
            f"(they hold {volume} of its {math.prod(shape)} elements)"
        )
    return shape


def plan_layout(
    regions: Sequence[Mapping[str, Extent]], chunks: Mapping[str, tuple[int, ...]]
) -> dict[str, FieldLayout]:
    """The layout of every decomposed field from every rank's region (in rank order).

    The spatial chunk along each dimension is the greatest common divisor of
    every rank boundary (so each chunk lies in one rank's block); an explicit
    chunk must divide it.

    Raises
    ------
    ConfigError
        Ranks naming different fields; blocks that overlap or leave a hole; a
        chunk that is not a divisor of every boundary (naming the field, the
        largest chunk that fits, and the one asked for).
    """
    names = [sorted(r) for r in regions]
    if any(n != names[0] for n in names):
        raise ConfigError(
            f"region: every rank must name the same decomposed fields, got {names} by rank"
        )
    out: dict[str, FieldLayout] = {}
    for name in names[0]:
        extents = tuple(r[name] for r in regions)
        shape = _check_tiling(name, extents)
        aligned = tuple(
            math.gcd(*(b for e in extents for b in e[d]))
            for d in range(len(shape))
        )  # fmt: skip
        chunk = chunks.get(name, aligned)
        if any(a % c for a, c in zip(aligned, chunk, strict=True)):
            raise ConfigError(
                f"chunks[{name!r}]: expected a divisor of every rank boundary along each "
                f"dimension (the largest is {aligned}), got {chunk}: a chunk across two "
                "ranks would be written by both"
            )
        out[name] = FieldLayout(name, shape, chunk, extents)
    return out


def global_schema(local: Schema, layouts: Mapping[str, FieldLayout], rank: int) -> Schema:
    """The stored schema: each decomposed field with its global shape.

    Raises
    ------
    SchemaError
        A decomposed field missing from the frames, ragged, or whose frames'
        shape is not this rank's block.
    """
    fields: dict[str, Field] = {}
    for name in layouts:
        if name not in local:
            raise SchemaError(
                f"region names field {name!r}, which the frames do not carry "
                f"(fields: {list(local)})"
            )
    for name, fld in local.items():
        lay = layouts.get(name)
        if lay is None:
            fields[name] = fld
            continue
        want = lay.local_shape(rank)
        if fld.ragged or fld.shape != want:
            raise SchemaError(
                f"field {name!r}: rank {rank}'s region expects frames of shape {want}, "
                f"got {fld.shape}"
            )
        fields[name] = Field(fld.dtype, lay.shape, dims=fld.dims)
    return Schema(fields)


def local_schema(stored: Schema, layouts: Mapping[str, FieldLayout], rank: int) -> Schema:
    """The schema of rank ``rank``'s frames for a stored (global) schema."""
    fields: dict[str, Field] = {}
    for name, fld in stored.items():
        lay = layouts.get(name)
        shape = fld.shape if lay is None else lay.local_shape(rank)
        fields[name] = fld if lay is None else Field(fld.dtype, shape, dims=fld.dims)
    # a block of a dimension another field holds whole: sizes differ here only
    return Schema._dims_unchecked(fields)
