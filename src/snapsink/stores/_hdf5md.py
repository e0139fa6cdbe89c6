"""The H5MD layout of the HDF5 store: the mapping and the H5MD tree (the
layout: ``docs/formats/hdf5.md``; reading H5MD files that other programs wrote:
:mod:`._h5mdread`).

Why hard links. An H5MD file written by snapsink *is* a snapsink group (the
datasets, the commit record, the metadata; every crash-safety rule of the
snapsink layout) plus the H5MD tree, whose ``value``, ``step`` and ``time``
datasets are hard links to the group's datasets: one dataset, two names, no
copy. A reader that knows snapsink trusts the commit record; an H5MD reader
(MDAnalysis) sees the datasets' shapes, which equal the committed count after
a clean close. H5MD allows elements to share ``step`` and ``time`` datasets
by links, and MDAnalysis's own writer does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, SchemaError
from .._schema import Field, Schema, check_name
from ._hdf5plan import STATIC_GROUP

__all__ = [
    "ELEMENTS",
    "H5MD_ROOTS",
    "H5MDMapping",
    "check_h5md",
    "check_h5md_schema",
    "check_stored_units",
    "h5md_links",
    "h5md_tree_is_current",
    "is_h5md_file",
    "write_h5md_tree",
]

#: the particle elements a mapping may name, in the order readers look for them
ELEMENTS = ("position", "velocity", "force")
H5MD_VERSION = (1, 1)
#: the top groups of an H5MD run that snapsink writes (``mode="w"`` removes them)
H5MD_ROOTS = ("h5md", "particles", "observables")
_KEYS = ("particles", *ELEMENTS, "box", "boundary", "observables", "author")
_BOUNDARIES = ("periodic", "none")


@dataclass(frozen=True, slots=True)
class H5MDMapping:
    """Which snapsink fields are which H5MD elements (checked, I/O-free)."""

    particles: str = "all"
    elements: dict[str, str] = field(default_factory=dict)  # element -> field
    box: str | None = None  # a field (time-dependent edges) or a static array
    boundary: tuple[str, ...] | None = None  # None: periodic with a box, else none
    observables: tuple[str, ...] = ()
    author: str = "unknown"
    units: dict[str, str] = field(default_factory=dict)  # field name or "time" -> unit


def _text_arg(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what}: expected a non-empty str, got {value!r}")
    return value


def check_h5md(mapping: object, units: object) -> H5MDMapping:
    """Check the store's ``h5md`` and ``units`` arguments.

    Parameters
    ----------
    mapping
        ``{"position": field, "velocity": field, "force": field, "box": field or
        static name, "boundary": "periodic" | "none" | three of them,
        "observables": [field, ...], "particles": group name, "author": name}``;
        every key optional, at least one element or observable.
    units
        ``{field name or "time": unit}`` (H5MD ``unit`` attributes), or None.

    Raises
    ------
    ConfigError
        An unknown key, a name that is no field name, a bad boundary, a box
        missing for periodic boundaries, or no element and no observable.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            "h5md: expected a mapping such as {'position': 'positions', 'box': 'cell', "
            f"'observables': ['energy']}}, got {type(mapping).__name__}"
        )
    unknown = sorted(str(k) for k in mapping if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"h5md: unknown key(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(map(repr, _KEYS))}"
        )
    elements = {
        e: _field_name(mapping[e], f"h5md[{e!r}]") for e in ELEMENTS if mapping.get(e) is not None
    }
    box = mapping.get("box")
    if box is not None:
        box = _field_name(box, "h5md['box']")
    observables = _check_observables(mapping.get("observables") or ())
    if not elements and not observables:
        raise ConfigError(
            "h5md: name at least one particle element ('position', 'velocity', 'force') "
            "or an observable; snapsink never guesses them from field names"
        )
    boundary = _check_boundary(mapping.get("boundary"), box)
    particles = _text_arg(mapping.get("particles", "all"), "h5md['particles']")
    check_name(particles, "h5md['particles']")
    author = _text_arg(mapping.get("author") or _user(), "h5md['author']")
    return H5MDMapping(particles, elements, box, boundary, observables, author, _check_units(units))


def _field_name(value: object, what: str) -> str:
    """``value`` if it is a field name, nested ones (``thermo.energy``) too: the
    H5MD element is a link to the field's dataset, named as the field is."""
    try:
        return check_name(_text_arg(value, what))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _check_observables(obs: object) -> tuple[str, ...]:
    if isinstance(obs, str) or not isinstance(obs, Sequence):
        raise ConfigError(f"h5md['observables']: expected a list of field names, got {obs!r}")
    observables = tuple(_field_name(o, "h5md['observables']") for o in obs)
    if len(set(observables)) != len(observables):
        raise ConfigError(f"h5md['observables']: a field is named twice in {list(observables)}")
    return observables


def _check_boundary(raw: object, box: str | None) -> tuple[str, ...] | None:
    """``h5md['boundary']`` as one value per dimension (or one for all)."""
    if raw is None:
        return None
    items = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, Sequence) else None
    if not items or any(b not in _BOUNDARIES for b in items):
        raise ConfigError(
            f"h5md['boundary']: expected 'periodic', 'none' or a sequence of them (one "
            f"per dimension), got {raw!r}"
        )
    if box is None and "periodic" in items:
        raise ConfigError(
            "h5md['boundary']: periodic boundaries need the box: name its field or "
            "static array as h5md['box']"
        )
    return tuple(items)


def _check_units(units: object) -> dict[str, str]:
    if units is None:
        return {}
    if not isinstance(units, Mapping):
        raise ConfigError(
            f"units: expected a mapping such as {{'positions': 'nm', 'time': 'ps'}}, "
            f"got {type(units).__name__}"
        )
    return {_text_arg(k, "units key"): _text_arg(v, f"units[{k!r}]") for k, v in units.items()}


def _user() -> str:
    try:
        import getpass

        return getpass.getuser() or "unknown"
    except (ImportError, KeyError, OSError):
        return "unknown"


def check_h5md_schema(
    m: H5MDMapping, schema: Schema, static: Mapping[str, np.ndarray[Any, Any]], where: str
) -> int:
    """Check that ``schema`` (and the static arrays) hold what ``m`` names.

    Returns
    -------
    int
        The spatial dimension (the last axis of the elements, else of the box; 3).

    Raises
    ------
    SchemaError
        A named field is missing, ragged, or of a shape H5MD does not allow:
        elements ``(N, D)`` with one ``N`` and ``D``; the box ``(D,)`` or ``(D, D)``.
    """
    known = ", ".join(map(repr, schema)) or "none"
    n_d: tuple[int, ...] | None = None
    for element, name in m.elements.items():
        f = _fixed_field(schema, name, f"h5md[{element!r}]", where)
        if len(f.shape) != 2 or (n_d is not None and f.shape != n_d):
            expected = "(N, D)" if n_d is None else str(n_d)
            raise SchemaError(
                f"{where}: h5md[{element!r}]: field {name!r}: expected shape {expected} "
                f"(particles, dimensions), got {f.shape}"
            )
        n_d = tuple(int(n) for n in f.shape if n is not None)
    dim = n_d[1] if n_d else None
    if m.box is not None:
        dim = _box_dimension(m.box, schema, static, dim, where)
    for name in m.observables:
        _fixed_field(schema, name, "h5md['observables']", where)
    dim = dim or 3
    if m.boundary is not None and len(m.boundary) not in (1, dim):
        raise SchemaError(
            f"{where}: h5md['boundary']: expected 1 or {dim} values, got {len(m.boundary)}"
        )
    for key in m.units:
        if key != "time" and key not in schema and key not in static:
            raise SchemaError(
                f"{where}: units names {key!r}, which is neither 'time', a field (fields: "
                f"{known}) nor a static array"
            )
    return dim


def _fixed_field(schema: Schema, name: str, what: str, where: str) -> Field:
    """The field ``name`` that ``what`` names: it must exist and not be ragged."""
    if name not in schema:
        known = ", ".join(map(repr, schema)) or "none"
        raise SchemaError(
            f"{where}: {what} names field {name!r}, which frames lack (fields: {known})"
        )
    f = schema[name]
    if f.ragged:
        raise SchemaError(
            f"{where}: {what}: field {name!r} is ragged (shape {f.shape}); H5MD elements "
            "need one particle count in every frame"
        )
    return f


def _box_dimension(
    box: str,
    schema: Schema,
    static: Mapping[str, np.ndarray[Any, Any]],
    dim: int | None,
    where: str,
) -> int:
    """The dimension of the box (a field or a static array): its edges are
    ``(D,)`` or ``(D, D)``, with ``D`` the elements' ``dim`` when known."""
    if box in schema:
        shape: tuple[int | None, ...] = _fixed_field(schema, box, "h5md['box']", where).shape
    elif box in static:
        shape = static[box].shape
    else:
        known = ", ".join(map(repr, schema)) or "none"
        raise SchemaError(
            f"{where}: h5md['box'] names {box!r}, which is neither a field (fields: "
            f"{known}) nor a static array"
        )
    d = shape[0] if shape else None
    if not (shape in ((d,), (d, d)) and d and (dim is None or d == dim)):
        raise SchemaError(
            f"{where}: h5md['box']: {box!r}: expected shape (D,) or (D, D) with D = "
            f"{dim or 'the dimension'}, got {shape}"
        )
    return int(d)


def h5md_links(m: H5MDMapping, *, times: bool, static_box: bool) -> dict[str, str]:
    """The H5MD tree as ``{path in the file: dataset path relative to the snapsink
    group}``: every entry a hard link. A static box is one fixed ``edges``
    dataset (a link to ``static/<box>``)."""
    links: dict[str, str] = {}

    def element(path: str, name: str) -> None:
        links[f"{path}/value"] = name
        links[f"{path}/step"] = "steps"
        if times:
            links[f"{path}/time"] = "times"

    base = f"particles/{m.particles}"
    for e, name in m.elements.items():
        element(f"{base}/{e}", name)
    if m.box is not None:
        if static_box:
            links[f"{base}/box/edges"] = f"{STATIC_GROUP}/{m.box}"
        else:
            element(f"{base}/box/edges", m.box)
    for name in m.observables:
        element(f"observables/{name}", name)
    return links


def write_h5md_tree(
    f: Any, grp: Any, m: H5MDMapping, dim: int, *, times: bool, static_box: bool, version: str
) -> None:
    """Create (or check, when resuming) the H5MD tree in file ``f`` whose
    snapsink group is ``grp``: ``/h5md``, the particle group with its box, the
    observables, all links to ``grp``'s datasets; ``unit`` attributes.

    Raises
    ------
    FormatError
        A path of the tree exists and is not the link this store makes (another
        run's H5MD tree).
    """
    for path in ("h5md/author", "h5md/creator", f"particles/{m.particles}/box"):
        f.require_group(path)
    f["h5md/creator"].attrs["version"] = version
    for path, target in h5md_links(m, times=times, static_box=static_box).items():
        ds = grp[target]
        node = f.get(path)
        if node is None:
            f[path] = ds
        elif node != ds:
            raise FormatError(
                f"{f.filename!r}: {path!r} exists and is not {grp.name}/{target} (the file "
                "holds another H5MD run; an H5MD file holds one run): choose another file"
            )
    for node, key, value in _tree_attributes(f, grp, m, dim, times=times):
        node.attrs[key] = value


def _tree_attributes(
    f: Any, grp: Any, m: H5MDMapping, dim: int, *, times: bool
) -> list[tuple[Any, str, Any]]:
    """The attributes of the H5MD tree (the creator's version aside), as
    ``(object, name, value)``: what :func:`write_h5md_tree` sets and
    :func:`h5md_tree_is_current` compares. The tree's groups exist (a missing
    one is ``None``); a ``unit`` goes where its field, static array or the
    times are."""
    boundary = m.boundary or (("periodic",) if m.box is not None else ("none",))
    if len(boundary) == 1:
        boundary = boundary * dim
    box = f.get(f"particles/{m.particles}/box")
    out: list[tuple[Any, str, Any]] = [
        (f.get("h5md"), "version", np.array(H5MD_VERSION, np.int32)),
        (f.get("h5md/author"), "name", m.author),
        (f.get("h5md/creator"), "name", "snapsink"),
        (box, "dimension", np.int32(dim)),
        (box, "boundary", np.array([b.encode() for b in boundary])),
    ]
    for key, unit in m.units.items():
        if key == "time":
            node = grp.get("times") if times else None
        else:
            node = grp.get(key)
            if node is None:
                node = grp.get(f"{STATIC_GROUP}/{key}")
        if node is not None:
            out.append((node, "unit", unit))
    return out


def check_stored_units(grp: Any, units: Mapping[str, str], where: str) -> None:
    """Refuse ``units`` that would relabel what a resumed group already holds:
    a unit other than the stored one, or a unit for a dataset that holds data
    stored without one (its frames were written in some unit nobody named).
    Units left out keep the stored ones; a field not stored yet may take any.

    Raises
    ------
    ConfigError
        Naming the field (or ``"time"``), the stored unit and the given one.
    """
    for key, unit in units.items():
        name = "times" if key == "time" else key
        node = grp.get(name)
        if node is None and key != "time":
            node = grp.get(f"{STATIC_GROUP}/{key}")
        if node is None or not hasattr(node, "shape"):
            continue
        stored = node.attrs.get("unit")
        if isinstance(stored, bytes):
            stored = stored.decode("utf-8", "replace")
        if stored is None and not (node.shape and node.shape[0]):
            continue  # nothing stored yet
        if stored != unit:
            had = f"unit {stored!r}" if stored is not None else "no unit"
            raise ConfigError(
                f"{where}: units[{key!r}]: the stored data carry {had}, got {unit!r}; "
                "a unit is a label of the frames already "
                "stored, so changing it would relabel them: pass the stored unit (or "
                "leave it out) and convert your values, or write a new store"
            )


def h5md_tree_is_current(
    f: Any, grp: Any, m: H5MDMapping, dim: int, *, times: bool, static_box: bool
) -> bool:
    """Whether :func:`write_h5md_tree` would change nothing of the tree in ``f``
    (the creator's version aside). Read only: a resumed store then writes
    nothing outside SWMR mode, where a kill could tear the file's structure."""

    def same(node: Any, key: str, value: Any) -> bool:
        got = None if node is None else node.attrs.get(key)
        return got is not None and np.array_equal(np.asarray(got), np.asarray(value))

    links = h5md_links(m, times=times, static_box=static_box)
    if any(f.get(path) != grp[target] for path, target in links.items()):
        return False
    return all(same(*a) for a in _tree_attributes(f, grp, m, dim, times=times))


def is_h5md_file(f: Any) -> bool:
    """Whether the open h5py file ``f`` has an H5MD ``/h5md`` group and particles
    or observables."""
    return "h5md" in f and ("particles" in f or "observables" in f)
