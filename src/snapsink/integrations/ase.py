"""ASE: record a dynamics object (MD or an optimizer) in one call.

>>> from snapsink.integrations import ase as ss_ase
>>> with ss_ase.attach(dyn, "md.zarr", every=10):  # doctest: +SKIP
...     dyn.run(1000)

:func:`attach` adds an observer to the dynamics (``dyn.attach``); ASE calls it
before the first step and after every ``every``-th step, and it writes one frame
per call through a :class:`~snapsink.SyncSink`: the arrays are captured when
the observer returns, and the store is written by the sink's writer (a writer
process for disk stores), so the dynamics waits for no I/O.

What is stored, and in which units
----------------------------------
Arrays keep ASE's own values and units, bit for bit (what ``atoms.get_*()``
returns, what an ``ase.io.Trajectory`` stores), so nothing is lost in a
conversion: positions and cell in Å, velocities in Å per ASE time unit
(``velocities * ase.units.fs`` is Å/fs), momenta in amu·Å per ASE time unit,
forces in eV/Å, energies in eV, stress in eV/Å³ (Voigt order), temperature in
K, masses in amu. The one value that is not ASE's is the frame **time**, which
is in **femtoseconds** (``dyn.get_time() / ase.units.fs``), the unit MD codes
report time in; the step is ``dyn.nsteps``. The store's attrs say all of this
(``time_unit``, ``units``), with the dynamics, calculator and timestep.

Atomic numbers and masses are static arrays (``traj.static["numbers"]``,
``traj.static["masses"]``), written once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .._channeltypes import SinkStatistics
from .._copy import format_of_path
from .._errors import ClosesOnExit, ConfigError
from .._spill import Spill
from .._store import Store
from .._sync import SyncSink

__all__ = ["DEFAULT_PROPERTIES", "PROPERTIES", "Recording", "attach", "store_kwargs"]


def _ase() -> Any:
    """The ``ase`` package, imported on first use (``import snapsink`` never loads it)."""
    # the type-check environment may lack ASE: its types are then Any
    import ase  # type: ignore[import-not-found, unused-ignore]
    import ase.calculators.calculator  # type: ignore[import-not-found, unused-ignore]
    import ase.units  # type: ignore[import-not-found, unused-ignore]

    return ase


def _positions(atoms: Any) -> Any:
    return atoms.arrays["positions"]  # the sink copies it at capture


def _cell(atoms: Any) -> Any:
    return atoms.cell.array


def _pbc(atoms: Any) -> Any:
    return atoms.pbc


#: name -> (how to read it from the Atoms, its unit, what the calculator must give)
_PROPERTIES: dict[str, tuple[Callable[[Any], Any], str, str | None]] = {
    "positions": (_positions, "Angstrom", None),
    "velocities": (
        lambda a: a.get_velocities(),
        "Angstrom / ASE time unit (times ase.units.fs: Angstrom/fs)",
        None,
    ),
    "momenta": (lambda a: a.get_momenta(), "amu * Angstrom / ASE time unit", None),
    "forces": (lambda a: a.get_forces(), "eV/Angstrom", "forces"),
    "potential_energy": (lambda a: a.get_potential_energy(), "eV", "energy"),
    "kinetic_energy": (lambda a: a.get_kinetic_energy(), "eV", None),
    "temperature": (lambda a: a.get_temperature(), "K", None),
    "stress": (
        lambda a: a.get_stress(),
        "eV/Angstrom^3, Voigt order (xx, yy, zz, yz, xz, xy)",
        "stress",
    ),
    "cell": (_cell, "Angstrom", None),
    "pbc": (_pbc, "bool per cell vector", None),
}

#: Every property :func:`attach` can record.
PROPERTIES: tuple[str, ...] = tuple(_PROPERTIES)

#: What :func:`attach` records when ``properties`` is not given.
DEFAULT_PROPERTIES: tuple[str, ...] = (
    "positions",
    "velocities",
    "forces",
    "potential_energy",
    "kinetic_energy",
    "cell",
    "pbc",
)

_STATIC_UNITS = {"numbers": "atomic number", "masses": "amu"}


def _check_properties(properties: Iterable[str] | None) -> tuple[str, ...]:
    if properties is None:
        return DEFAULT_PROPERTIES
    if isinstance(properties, str | bytes) or not isinstance(properties, Iterable):
        raise ConfigError(
            "properties: expected a list of names, e.g. ['positions', 'forces'], got "
            f"{type(properties).__name__} {properties!r}"
        )
    names = list(properties)
    unknown = [n for n in names if not isinstance(n, str) or n not in _PROPERTIES]
    if unknown:
        raise ConfigError(
            f"properties: unknown {', '.join(map(repr, unknown))}; expected names among "
            f"{', '.join(PROPERTIES)}"
        )
    if not names:
        raise ConfigError(f"properties: expected at least one of {', '.join(PROPERTIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"properties: names repeat in {names!r}")
    return tuple(names)


def _check_every(every: object) -> int:
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ConfigError(
            f"every: expected a positive int (record every n-th step), got "
            f"{type(every).__name__} {every!r}"
        )
    return int(every)


def _atoms_of(dyn: Any) -> Any:
    """The ``ase.Atoms`` a dynamics object moves (under a filter, the filtered atoms)."""
    if not (hasattr(dyn, "attach") and hasattr(dyn, "nsteps") and hasattr(dyn, "atoms")):
        raise ConfigError(
            "dyn: expected an ASE dynamics object (MolecularDynamics or Optimizer, with "
            f".atoms, .nsteps and .attach), got {type(dyn).__name__}"
        )
    atoms_type = _ase().Atoms
    atoms = dyn.atoms
    if not isinstance(atoms, atoms_type):  # an optimizer on a filter (FrechetCellFilter, ...)
        atoms = getattr(atoms, "atoms", atoms)
    if not isinstance(atoms, atoms_type):
        raise ConfigError(
            f"dyn.atoms: expected ase.Atoms (or a filter over one), got {type(atoms).__name__}"
        )
    return atoms


def _check_calculator(atoms: Any, properties: tuple[str, ...]) -> None:
    """Refuse, before anything is written, what the calculator cannot give."""
    needs = [(n, _PROPERTIES[n][2]) for n in properties if _PROPERTIES[n][2] is not None]
    if not needs:
        return
    calc = atoms.calc
    if calc is None:
        raise ConfigError(
            f"properties {', '.join(repr(n) for n, _ in needs)}: the atoms have no "
            "calculator (atoms.calc is None); set one before attaching (atoms.calc = EMT()), "
            "or leave these out of properties="
        )
    implemented = getattr(calc, "implemented_properties", None)
    if implemented is None:  # a calculator that does not say: found out at the first step
        return
    missing = [(n, p) for n, p in needs if p not in implemented]
    if missing:
        raise ConfigError(
            f"properties {', '.join(repr(n) for n, _ in missing)}: the calculator "
            f"{type(calc).__name__} does not compute "
            f"{', '.join(repr(p) for _, p in missing)} (it implements "
            f"{', '.join(map(repr, implemented))}); leave these out of properties="
        )


#: properties read from the calculator's results after one state check (see _results)
_RESULT_KEYS = {"forces": "forces", "potential_energy": "energy"}
_CALCULATOR_METHODS = ("check_state", "get_property", "get_forces", "get_potential_energy")


@functools.cache
def _answers_from_results(calc_type: object) -> bool:
    """Whether ``calc_type`` answers forces and energy from ``.results`` as ASE's
    ``Calculator`` does: a subclass overriding none of the methods involved."""
    calculator = _ase().calculators.calculator.Calculator
    return (
        isinstance(calc_type, type)
        and issubclass(calc_type, calculator)
        and all(getattr(calc_type, m) is getattr(calculator, m) for m in _CALCULATOR_METHODS)
    )


def store_kwargs(
    dyn: Any,
    properties: Iterable[str] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``static=`` and ``attrs=`` a store of this dynamics is built with.

    :func:`attach` passes them to a store it builds; give them to a store you
    build yourself: ``snapsink.ZarrStore(path, group="md", **store_kwargs(dyn))``.

    Parameters
    ----------
    dyn
        An ASE dynamics object.
    properties
        The recorded properties (default: those :func:`attach` records), for
        the units listed in the attrs.
    attrs
        Your own metadata, added to (and overriding) the adapter's.

    Returns
    -------
    dict
        ``{"static": {"numbers", "masses"}, "attrs": {...}}``: the attrs hold
        ``source``, ``ase_version``, ``dynamics``, ``calculator``,
        ``timestep_fs`` (MD only), ``time_unit`` (``"fs"``) and ``units``.

    Raises
    ------
    ConfigError
        ``dyn`` is not an ASE dynamics object, or ``properties`` is invalid.
    """
    ase = _ase()
    atoms = _atoms_of(dyn)
    names = _check_properties(properties)
    meta: dict[str, Any] = {
        "source": "ase",
        "ase_version": ase.__version__,
        "dynamics": type(dyn).__name__,
        "calculator": None if atoms.calc is None else type(atoms.calc).__name__,
    }
    dt = getattr(dyn, "dt", None)
    if isinstance(dt, int | float):
        meta["timestep_fs"] = float(dt) / ase.units.fs
    meta["time_unit"] = "fs"
    meta["units"] = {n: _PROPERTIES[n][1] for n in names} | _STATIC_UNITS
    return {
        "static": {"numbers": atoms.get_atomic_numbers(), "masses": atoms.get_masses()},
        "attrs": meta | dict(attrs or {}),
    }


class Recording(ClosesOnExit):
    """What :func:`attach` returns: the observer recording a dynamics, and its sink.

    A context manager: leaving the ``with`` block (or :meth:`close`) detaches
    the observer from the dynamics and, when :func:`attach` made the sink,
    drains, commits and closes it. A recording nobody closes is still drained
    and committed at interpreter exit (as every :class:`~snapsink.SyncSink`).

    Built by :func:`attach`, not directly.

    Attributes
    ----------
    properties
        The recorded fields, in order.
    every
        ASE's observer interval: steps ``0, every, 2 * every, ...`` are recorded.
    """

    _closing = "the recording"

    def __init__(
        self,
        dyn: Any,
        atoms: Any,
        sink: SyncSink,
        store: Any,
        properties: tuple[str, ...],
        every: int,
        *,
        owns_sink: bool,
    ):
        self.properties = properties
        self.every = every
        self._dyn = dyn
        self._atoms = atoms
        self._sink = sink
        self._store = store
        self._owns_sink = owns_sink
        self._getters = tuple((n, _PROPERTIES[n][0], _RESULT_KEYS.get(n)) for n in properties)
        self._result_keys = tuple(k for _, _, k in self._getters if k is not None)
        # the shortcut below reads forces as Atoms.get_forces returns them: only
        # for plain Atoms (no subclass overriding the getters)
        self._plain_atoms = type(atoms) is _ase().Atoms
        get_time = getattr(dyn, "get_time", None)
        self._get_time: Callable[[], float] | None = get_time if callable(get_time) else None
        self._fs = float(_ase().units.fs)
        self._last_step: int | None = None
        #: the dynamics was seen at another step since the last frame
        self._moved = False
        self._frames = 0
        self._closed = False
        # bound methods kept, so that close() finds them among dyn.observers by identity
        self._observer: Callable[[], None] = self._observe
        self._ticker: Callable[[], None] = self._tick
        dyn.attach(self._observer, interval=every)
        dyn.attach(self._ticker, interval=1)

    def _tick(self) -> None:
        # after every step: a call for the step just recorded with no step
        # between is a repeat; one after steps were taken (nsteps reset) is not
        if self._dyn.nsteps != self._last_step:
            self._moved = True

    def _observe(self) -> None:
        step = self._dyn.nsteps
        if step == self._last_step and not self._moved:
            # Observers called again for the step just recorded, no step taken
            # since: by ASE versions that call them at the start of every
            # run(), or by the caller (dyn.call_observers()). The same state:
            # recorded once. After steps were taken (dyn.nsteps reset to the
            # last recorded step), it is a new state: written, so the sink
            # refuses the step that does not increase.
            return
        atoms = self._atoms
        results = self._results(atoms)
        if results is None:
            fields = {name: get(atoms) for name, get, _ in self._getters}
        else:
            fields = {
                name: get(atoms) if key is None else results[key]
                for name, get, key in self._getters
            }
        time = None if self._get_time is None else self._get_time() / self._fs
        self._sink.write(fields, step=step, time=time)
        self._last_step = step
        self._moved = False
        self._frames += 1

    def _results(self, atoms: Any) -> Mapping[str, Any] | None:
        """The calculator's results, when one state check vouches for all of them.

        ``atoms.get_forces()`` and ``atoms.get_potential_energy()`` each compare
        the atoms with the calculator's copy (``check_state``: ~0.05 ms for 500
        atoms); one comparison per frame serves both. The values are the same
        objects the getters copy, read only when they would return them as is:
        an unchanged state, a plain ``Calculator``, and no constraint to apply.
        Otherwise ``None``, and the getters run (and calculate when needed).
        """
        if not self._result_keys or not self._plain_atoms or atoms.constraints:
            return None
        calc = atoms.calc
        if calc is None or not _answers_from_results(calc.__class__) or calc.check_state(atoms):
            return None
        results: Mapping[str, Any] = calc.results
        if all(k in results for k in self._result_keys):
            return results
        return None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._frames} frames"
        dyn = type(self._dyn).__name__
        return f"<Recording of {dyn} every {self.every} into {self._sink!r}, {state}>"

    @property
    def sink(self) -> SyncSink:
        """The sink the frames go through (made by :func:`attach`, or the one given)."""
        return self._sink

    @property
    def store(self) -> Any:
        """The store written (``None`` when :func:`attach` was given a SyncSink).

        Read a :class:`~snapsink.HostMemory` back with ``recording.store.trajectory()``.
        """
        return self._store

    @property
    def frames(self) -> int:
        """How many frames this recording has written."""
        return self._frames

    @property
    def last_step(self) -> int | None:
        """The step of the last frame written (``None`` before the first)."""
        return self._last_step

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    # Deliberate parallel of Sink.flush (_sink.py): each public class documents
    # its own flush.
    def flush(self) -> None:
        """Wait until every frame recorded so far is stored, durable and readable.

        Raises
        ------
        WriterError
            The store failed (chained to the cause).
        ClosedSinkError
            The sink is closed.
        """
        self._sink.flush()

    def statistics(self) -> SinkStatistics:
        """The sink's statistics (written, dropped, queued, bytes ...).

        Returns
        -------
        SinkStatistics
            See :meth:`snapsink.Sink.statistics`.
        """
        return self._sink.statistics()

    def close(self) -> None:
        """Detach from the dynamics; drain, commit and close a sink made by :func:`attach`.

        Idempotent. A SyncSink given to :func:`attach` is left open: its owner
        closes it.

        Raises
        ------
        WriterError
            The store failed during the run (chained to the cause).
        """
        if self._closed:
            return
        self._closed = True
        observers = getattr(self._dyn, "observers", None)
        if isinstance(observers, list):
            ours = (self._observer, self._ticker)
            observers[:] = [o for o in observers if all(o[0] is not f for f in ours)]
        if self._owns_sink:
            self._sink.close()



def _build_store(target: Any, kwargs: dict[str, Any]) -> Any:
    """The store of a path or a store function, with ``static=`` and ``attrs=``."""
    if isinstance(target, str | os.PathLike):
        kind = format_of_path(os.fsdecode(target))
        if kind == "zarr":
            from ..stores.zarr import ZarrStore

            return ZarrStore(target, **kwargs)
        if kind == "hdf5":  # it made a directory named md.h5
            from ..stores.hdf5 import HDF5Store

            return HDF5Store(target, **kwargs)
        from ..stores.npy import NpyDirectory

        return NpyDirectory(target, **kwargs)
    try:
        store = target(**kwargs)
    except TypeError as exc:
        exc.add_note(
            "snapsink: attach() calls a store function as target(static=..., attrs=...), "
            "e.g. functools.partial(snapsink.ZarrStore, path, mode='w')"
        )
        raise
    if not isinstance(store, Store):
        raise ConfigError(
            f"target: the store function returned {type(store).__name__}, expected a "
            "snapsink store (NpyDirectory, ZarrStore, HostMemory, ...)"
        )
    return store


def attach(
    dyn: Any,
    target: Any,
    every: int = 10,
    properties: Iterable[str] | None = None,
    *,
    attrs: Mapping[str, Any] | None = None,
    capacity: int | None = None,
    policy: str | Spill | None = None,
    writer: str | None = None,
) -> Recording:
    """Record an ASE dynamics object every ``every`` steps, in one call.

    Parameters
    ----------
    dyn
        An ASE dynamics object: molecular dynamics (``VelocityVerlet``,
        ``Langevin``, ...) or an optimizer (``BFGS``, ...; its frames have no
        time). Its ``atoms`` (under a filter, the filtered atoms) are recorded.
    target
        Where the frames go, one of:

        - a **path**: a :class:`~snapsink.ZarrStore` when it ends in ``.zarr``,
          an :class:`~snapsink.HDF5Store` when it ends in ``.h5`` or ``.hdf5``,
          else a :class:`~snapsink.NpyDirectory`, created (``mode="x"``: an
          existing store is refused) with atomic numbers and masses as static
          arrays and the units in its attrs. The shortest form.
        - a **store function** called as ``target(static=..., attrs=...)``:
          a store class (``snapsink.HostMemory``) or
          ``functools.partial(snapsink.ZarrStore, path, group="md", mode="w")``,
          for any other store setting. Stores take their static arrays when
          they are built, and the atoms are known here, so :func:`attach`
          builds the store itself rather than asking you to repeat them.
        - a **store** (``snapsink.NpyDirectory(path)``): written as it was
          built; give it ``**store_kwargs(dyn)`` for the numbers, masses and
          units, which :func:`attach` cannot add to a store already built.
        - a :class:`~snapsink.SyncSink`: frames are written into it, and it is
          left open (you close it); for several recordings into one sink, or
          a sink you also write other frames to.

        For the first three, :func:`attach` makes a :class:`~snapsink.SyncSink`
        over the store, which the returned :class:`Recording` owns and closes.
    every
        Record steps ``0, every, 2 * every, ...`` (``dyn.nsteps``), a positive
        int; ASE calls the observer at those steps only (its ``interval``).
    properties
        Which fields to record, from :data:`PROPERTIES`: ``positions``,
        ``velocities``, ``momenta``, ``forces``, ``potential_energy``,
        ``kinetic_energy``, ``temperature``, ``stress``, ``cell``, ``pbc``.
        Default: positions, velocities, forces, potential and kinetic energy,
        cell and pbc. Units: see the module docstring (ASE's own; time in fs).
    attrs
        Your own metadata, added to the adapter's, for a store :func:`attach`
        builds (a path or a store function).
    capacity, policy, writer
        The settings of the :class:`~snapsink.SyncSink` made for the store;
        ``None``: the SyncSink's defaults (8, ``"block"``, ``"auto"``).

    Returns
    -------
    Recording
        The handle: a context manager; :meth:`Recording.close` detaches the
        observer and closes the sink it made. ``recording.store`` is the store.

    Raises
    ------
    ConfigError
        ``dyn`` is not an ASE dynamics object, a property name is unknown,
        the atoms have no calculator for ``forces``, ``potential_energy`` or
        ``stress`` (or it does not compute them), ``every`` is not a positive
        int, ``target`` is none of the above, a sink setting is invalid, or
        ``attrs`` (or a sink setting) comes with a target that would ignore it.
        Nothing is created then.
    StoreExistsError
        The store exists and its mode is ``"x"`` (the path form's).

    Notes
    -----
    Each step is recorded once, in increasing order: ASE calls observers
    before the first step (at ``nsteps == 0``) and after each due step; a call
    for the step just recorded (ASE versions that call the observers at the
    start of every ``run()``, or ``dyn.call_observers()``, with no step taken
    since) writes nothing. A recording attached after some steps starts at the
    next due step. A step that goes back (``dyn.nsteps`` reset, even to the
    step last recorded) is refused by the sink (:class:`~snapsink.SchemaError`),
    stopping the run. (A second observer, called after every step, does
    nothing but tell a repeated call from one after a reset.)

    Examples
    --------
    >>> with attach(dyn, "md.zarr", every=10) as rec:  # doctest: +SKIP
    ...     dyn.run(1000)
    >>> traj = snapsink.open("md.zarr")  # doctest: +SKIP
    >>> traj["positions"][-1], traj.static["masses"], traj.times  # doctest: +SKIP
    """
    atoms = _atoms_of(dyn)
    names = _check_properties(properties)
    every = _check_every(every)
    _check_calculator(atoms, names)
    settings: dict[str, Any] = {"capacity": capacity, "policy": policy, "writer": writer}
    given = [k for k, v in settings.items() if v is not None]
    if isinstance(target, SyncSink):
        if given or attrs is not None:
            raise ConfigError(
                f"{', '.join([*given, *(['attrs'] if attrs is not None else [])])}: "
                "target is a SyncSink, already built with its settings and store; give "
                "them to the SyncSink and its store, or pass attach() the store instead"
            )
        return Recording(dyn, atoms, target, None, names, every, owns_sink=False)
    if isinstance(target, str | os.PathLike | type) or (
        callable(target) and not isinstance(target, Store)
    ):
        store = _build_store(target, store_kwargs(dyn, names, attrs=attrs))
    elif isinstance(target, Store):
        if attrs is not None:
            raise ConfigError(
                "attrs: target is a store, already built with its attrs; give them to the "
                "store (snapsink.NpyDirectory(path, **store_kwargs(dyn, attrs=...)))"
            )
        store = target
    else:
        raise ConfigError(
            "target: expected a path, a store function target(static=, attrs=) such as "
            "snapsink.HostMemory, a snapsink store, or a snapsink.SyncSink; got "
            f"{type(target).__name__}"
        )
    sink = SyncSink(store, **{k: v for k, v in settings.items() if v is not None})
    try:
        return Recording(dyn, atoms, sink, store, names, every, owns_sink=True)
    except BaseException:
        sink.close()
        raise
