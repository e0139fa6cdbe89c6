"""Reading H5MD files that other programs wrote (MDAnalysis's writer, say):
their particle elements as a snapsink :class:`~snapsink.Trajectory`.

Split from :mod:`._hdf5md` (the H5MD layout snapsink writes): a reader of
foreign files meets H5MD's full range (fixed-interval ``step``/``time``,
several particle groups, elements of differing lengths), the writer only its
own tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ConfigError, FormatError, StoreNotFoundError
from .._pytree import SEP
from .._schema import Field, Schema, check_name
from .._trajectory import read_only
from ._hdf5md import ELEMENTS, is_h5md_file

__all__ = ["H5MDSource"]


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


def _parent_of(head: str, name: str) -> bool:
    """Whether field ``head`` is a node of nested field ``name`` (``a``, ``a.b``)."""
    return name.startswith(f"{head}{SEP}")


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
            # a field read back as a tree cannot also be a node of another
            # (observables ``thermo`` and ``thermo.energy``): the first kept wins
            if ok and any(_parent_of(a, b) for k in kept for a, b in ((k, name), (name, k))):
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
    as are nested observable groups and an element whose name makes it a
    node of another field (observables ``thermo`` and ``thermo.energy``: the
    first found is kept). Time-independent elements and fixed box
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
        # held by this source: the handle stays open while it lives
        f = HANDLES.get(self._path, fresh=True, reader=self)
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
        # read-only: every read until the next refresh shares them
        self._steps = read_only(steps)
        self._times = None if times is None else read_only(times)
        self._static = {name: read_only(arr) for name, arr in found.static.items()}
        self._attrs = {"h5md": found.meta(f["h5md"], kept)}
        self.schema = Schema(
            {name: Field(el.value.dtype, el.value.shape[1:]) for name, el in kept.items()}
        )
        self.length = n

    # Deliberate parallel of ArraySource.steps ... attrs (_arraysource.py): the
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
