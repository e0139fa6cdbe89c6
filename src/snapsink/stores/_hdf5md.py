"""The H5MD layout of the HDF5 store: the mapping, the H5MD tree, and a reader
of H5MD files written by other programs (the layout: ``docs/formats/hdf5.md``).

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

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, SchemaError, StoreNotFoundError
from .._schema import Field, Schema, check_name
from ._hdf5plan import STATIC_GROUP

__all__ = [
    "ELEMENTS",
    "H5MD_ROOTS",
    "H5MDMapping",
    "H5MDSource",
    "check_h5md",
    "check_h5md_schema",
    "h5md_links",
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
        e: check_name(_text_arg(mapping[e], f"h5md[{e!r}]"), f"h5md[{e!r}]")
        for e in ELEMENTS
        if mapping.get(e) is not None
    }
    box = mapping.get("box")
    if box is not None:
        box = check_name(_text_arg(box, "h5md['box']"), "h5md['box']")
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


def _check_observables(obs: object) -> tuple[str, ...]:
    if isinstance(obs, str) or not isinstance(obs, Sequence):
        raise ConfigError(f"h5md['observables']: expected a list of field names, got {obs!r}")
    observables = tuple(check_name(_text_arg(o, "h5md['observables']"), "observable") for o in obs)
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
    h5 = f.require_group("h5md")
    h5.attrs["version"] = np.array(H5MD_VERSION, np.int32)
    h5.require_group("author").attrs["name"] = m.author
    creator = h5.require_group("creator")
    creator.attrs["name"] = "snapsink"
    creator.attrs["version"] = version
    box = f.require_group(f"particles/{m.particles}/box")
    box.attrs["dimension"] = np.int32(dim)
    boundary = m.boundary or (("periodic",) if m.box is not None else ("none",))
    if len(boundary) == 1:
        boundary = boundary * dim
    box.attrs["boundary"] = np.array([b.encode() for b in boundary])
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
    for key, unit in m.units.items():
        if key == "time":
            node = grp.get("times") if times else None
        else:
            node = grp.get(key)
            if node is None:
                node = grp.get(f"{STATIC_GROUP}/{key}")
        if node is not None:
            node.attrs["unit"] = unit


def is_h5md_file(f: Any) -> bool:
    """Whether the open h5py file ``f`` has an H5MD ``/h5md`` group and particles
    or observables."""
    return "h5md" in f and ("particles" in f or "observables" in f)


# -- reading H5MD files other programs wrote -------------------------------------
@dataclass(slots=True)
class _Element:
    value: Any  # the h5py dataset
    step: Any
    time: Any | None


def _series(ds: Any, n: int, dtype: type, where: str) -> np.ndarray[Any, Any]:
    """An element's ``step`` or ``time``: a dataset of ``n`` values, or a scalar
    interval with an optional ``offset`` attribute (H5MD's fixed sampling)."""
    if ds.shape == ():
        offset = ds.attrs.get("offset", 0)
        return np.asarray(offset + np.arange(n) * ds[()], dtype)
    if ds.ndim != 1:
        raise FormatError(f"{where}: {ds.name!r}: expected 1-d or scalar, got shape {ds.shape}")
    return np.asarray(ds[:n], dtype)


def _text(value: object) -> str:
    """An attribute as text (h5py gives bytes or str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _particle_group(h5py: Any, f: Any, chosen: str | None, where: str) -> Any | None:
    """The particle group ``chosen`` (None: the only one; none may be there).

    Raises
    ------
    FormatError
        Several particle groups and none chosen.
    StoreNotFoundError
        No particle group ``chosen``.
    """
    groups = f.get("particles")
    names = sorted(groups) if isinstance(groups, h5py.Group) else []
    if chosen is None and len(names) > 1:
        raise FormatError(
            f"{where}: several particle groups ({', '.join(map(repr, names))}): pass group=..."
        )
    if chosen is not None and chosen not in names:
        raise StoreNotFoundError(
            f"{where}: no particle group {chosen!r} (its particle groups: "
            f"{', '.join(map(repr, names)) or 'none'})"
        )
    return groups[chosen or names[0]] if names else None


class _Found:
    """What an H5MD file holds: its time-dependent elements (in the order
    readers look for them), its time-independent ones (static arrays), what is
    left out, and the elements' units."""

    def __init__(self, h5py: Any):
        self._h5py = h5py
        self.elements: dict[str, _Element] = {}
        self.static: dict[str, np.ndarray[Any, Any]] = {}
        self.left_out: list[str] = []
        self.units: dict[str, str] = {}

    def take(self, name: str, node: Any) -> None:
        h5py = self._h5py
        if isinstance(node, h5py.Dataset):
            self.static[name] = np.asarray(node[()])
            return
        value, step = node.get("value"), node.get("step")
        if not isinstance(value, h5py.Dataset) or not isinstance(step, h5py.Dataset):
            self.left_out.append(node.name)
            return
        time = node.get("time")
        self.elements[name] = _Element(
            value, step, time if isinstance(time, h5py.Dataset) else None
        )
        unit = value.attrs.get("unit")
        if unit is not None:
            self.units[name] = _text(unit)

    def take_particles(self, pg: Any) -> None:
        """The particle group's elements, position, velocity and force first,
        then the box's edges."""
        order = [e for e in ELEMENTS if e in pg] + sorted(
            k for k in pg if k not in ELEMENTS and k != "box"
        )
        for name in order:
            self.take(name, pg[name])
        edges = pg.get("box/edges")
        if edges is not None:
            self.take("box", edges)

    def take_observables(self, obs: Any) -> None:
        for name in sorted(obs):
            if name in self.elements or name in self.static:
                self.left_out.append(obs[name].name)
            else:
                self.take(name, obs[name])

    def aligned(
        self, ref: _Element, where: str
    ) -> tuple[dict[str, _Element], np.ndarray[Any, np.dtype[np.int64]]]:
        """The elements sampled at the steps of ``ref`` (others left out), and
        the steps every one of them holds.

        Raises
        ------
        FormatError
            The steps do not increase.
        """
        n = min(len(ref.value), ref.step.shape[0] if ref.step.shape else len(ref.value))
        steps = _series(ref.step, n, np.int64, where)
        kept: dict[str, _Element] = {}
        for name, el in self.elements.items():
            ok = el.value.ndim >= 1 and el.value.dtype.kind in "biufc"
            try:
                check_name(name)
            except ConfigError:
                ok = False
            if ok and el.step != ref.step:
                m = min(n, len(el.value))
                ok = bool(np.array_equal(_series(el.step, m, np.int64, where), steps[:m]))
            if not ok:
                self.left_out.append(el.value.parent.name)
                continue
            n = min(n, len(el.value))
            kept[name] = el
        steps = steps[:n]
        if steps.size > 1 and not bool(np.all(np.diff(steps) > 0)):
            raise FormatError(f"{where}: the steps of {ref.value.parent.name!r} do not increase")
        return kept, steps

    def meta(self, h5: Any, kept: Mapping[str, _Element]) -> dict[str, Any]:
        """``attrs["h5md"]``: the version, author and creator of group ``h5``,
        the units of the fields kept (and of time), what is left out."""
        meta: dict[str, Any] = {"version": np.asarray(h5.attrs.get("version", [])).tolist()}
        for sub in ("author", "creator"):
            if sub in h5:
                meta[sub] = {k: _text(v) for k, v in h5[sub].attrs.items()}
        meta["units"] = {k: v for k, v in self.units.items() if k in kept or k == "time"}
        meta["left_out"] = self.left_out
        return meta


class H5MDSource:
    """The time-dependent elements of an H5MD file another program wrote, read
    lazily as snapsink fields (a :class:`~snapsink.Trajectory` source).

    Fields: the particle group's elements by their H5MD names (``position``,
    ``velocity``, ``force``, ...), ``box`` (time-dependent edges), and the
    observables by name. The frames are those of the first element found
    (``position``, ``velocity``, ``force``, then the others); an element
    sampled at other steps is left out (named in ``attrs["h5md"]["left_out"]``),
    as are nested observable groups. Time-independent elements and fixed box
    edges are static arrays. There is no commit record: frames are those every
    included dataset holds.

    Parameters
    ----------
    path
        The H5MD file.
    particles
        The particle group (under ``/particles``); ``None``: the only one.

    Raises
    ------
    StoreNotFoundError
        No such particle group (the message lists those there are).
    FormatError
        Not an H5MD file, or no time-dependent element.
    """

    schema: Schema | None
    length: int

    def __init__(self, path: str | os.PathLike[str], particles: str | None = None):
        self._path = os.fspath(path)
        self._particles = particles
        self.schema = None
        self.length = 0
        self.refresh()

    def __repr__(self) -> str:
        return f"<H5MDSource {self._path!r} frames={self.length}>"

    def refresh(self) -> None:
        """Open the file again and re-read its elements."""
        from ._hdf5file import import_h5py
        from ._hdf5read import HANDLES

        h5py = import_h5py()
        f = HANDLES.get(self._path, fresh=True)
        where = f"H5MD file {self._path!r}"
        if not is_h5md_file(f):
            raise FormatError(f"{where}: no /h5md group with particles or observables")
        found = _Found(h5py)
        pg = _particle_group(h5py, f, self._particles, where)
        if pg is not None:
            found.take_particles(pg)
        obs = f.get("observables")
        if isinstance(obs, h5py.Group):
            found.take_observables(obs)
        if not found.elements:
            raise FormatError(f"{where}: no time-dependent element (with value and step)")
        ref = next(iter(found.elements.values()))
        kept, steps = found.aligned(ref, where)
        n = len(steps)
        times = None
        if ref.time is not None:
            times = _series(ref.time, n, np.float64, where)
            unit = ref.time.attrs.get("unit")
            if unit is not None:
                found.units["time"] = _text(unit)
        self._where = where
        self._elements = kept
        self._steps = steps
        self._times = times
        self._static = found.static
        self._attrs = {"h5md": found.meta(f["h5md"], kept)}
        self.schema = Schema(
            {name: Field(el.value.dtype, el.value.shape[1:]) for name, el in kept.items()}
        )
        self.length = n

    # Deliberate parallel of ArraySource.steps ... attrs (_trajectory.py): the
    # Source protocol's getters of what refresh computed. Not a subclass of
    # ArraySource: its chunk reads (opener None, "in-memory arrays travel with
    # the graph") must not apply to h5py datasets.
    def steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return self._steps

    def times(self) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        return self._times

    def static(self) -> Mapping[str, np.ndarray[Any, Any]]:
        return self._static

    def attrs(self) -> Mapping[str, Any]:
        return self._attrs

    def dropped_steps(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return np.zeros(0, np.int64)

    def read(self, name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Frames ``[start, stop)`` of element ``name``."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"frames [{start}, {stop}) out of range for {self.length} frames")
        ds = self._elements[name].value
        try:
            return np.asarray(ds[start:stop])
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise FormatError(
                f"{self._where}: {ds.name!r}, frames [{start}, {stop}): {exc}"
            ) from exc

    def read_ragged(
        self, name: str, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, np.dtype[np.int64]]]:
        raise FormatError(f"{self._where}: H5MD elements are never ragged ({name!r})")
