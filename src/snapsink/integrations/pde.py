"""py-pde adapter: a tracker that streams a simulation's fields into a store.

``pde.solve(..., tracker=[SnapsinkTracker(store, interrupts=0.1)])`` stores the
state at each interrupt with py-pde's own time and the solver's step count,
and stores the grid with it: its description as attrs, the cell coordinates
of each axis as static arrays. Importing this module imports py-pde;
``import snapsink`` never does.

The step of a frame is the number of time steps the solver has taken since
the start of the run (py-pde's ``info["solver"]["steps"]``, 0 for the initial
state): with a fixed ``dt`` it is ``round((t - t_start) / dt)``, with adaptive
stepping the number of steps actually taken, so the step says how much work
lies behind a frame, as ``dyn.nsteps`` does for ASE. py-pde has no step of its
own to give: the interrupts are times, and a counter of interrupts (what a
``CallbackTracker`` feeding a Recorder stores) says nothing about the run.
``step="interrupt"`` stores that counter (0, 1, 2, ...) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import numpy as np
from pde.fields.base import FieldBase
from pde.fields.collection import FieldCollection
from pde.fields.datafield_base import DataFieldBase
from pde.grids.base import GridBase
from pde.trackers.base import InfoDict, TransformationType, TransformedTrackerBase
from pde.trackers.interrupts import InterruptData

from .._channeltypes import check_capacity, check_policy
from .._errors import ClosesOnExit, ConfigError, SchemaError, StoreStateError
from .._schema import check_name
from .._sink import Sink, _check_max_bytes
from .._spill import Spill
from .._sync import SyncSink
from .._writer.process import choose_writer

__all__ = ["SnapsinkTracker", "grid_attrs", "grid_static"]

STEPS = ("solver", "interrupt")


# Deliberate parallel of grid_static: each public function documents its own
# parameter.
def grid_attrs(grid: GridBase) -> dict[str, Any]:
    """The description of a py-pde grid, as a store's ``attrs`` take it.

    Parameters
    ----------
    grid
        A py-pde grid (``field.grid``).

    Returns
    -------
    dict
        ``class`` (``"CartesianGrid"``, ...), ``dim``, ``shape``, ``axes``,
        ``axes_symmetric``, ``periodic``, ``bounds`` (``[lower, upper]`` per
        axis), ``discretization`` (the cell size per axis) and ``state``, from
        which ``pde.grids.base.GridBase.from_state(state)`` builds the grid
        again. Values may be NumPy scalars and arrays: the stores convert them.
    """
    return {
        "class": type(grid).__name__,
        "dim": grid.dim,
        "shape": list(grid.shape),
        "axes": list(grid.axes),
        "axes_symmetric": list(grid.axes_symmetric),
        "periodic": list(grid.periodic),
        "bounds": grid.axes_bounds,
        "discretization": grid.discretization,
        "state": {**grid.state, "class": type(grid).__name__},
    }


# Deliberate parallel of grid_attrs: each public function documents its own
# parameter.
def grid_static(grid: GridBase) -> dict[str, np.ndarray[Any, Any]]:
    """The cell coordinates of each axis of a py-pde grid, as static arrays.

    Parameters
    ----------
    grid
        A py-pde grid (``field.grid``).

    Returns
    -------
    dict
        ``{axis: coordinates}``, named by the axis (``"x"``, ``"y"``, ``"r"``,
        ...; ``"axis_<i>"`` for an axis whose name is not an identifier): the
        coordinates of the cell centres along that axis (``grid.axes_coords``).
    """
    return {
        _axis_name(axis, i): np.asarray(coords)
        for i, (axis, coords) in enumerate(zip(grid.axes, grid.axes_coords, strict=True))
    }


def _axis_name(axis: str, index: int) -> str:
    try:
        return check_name(axis, "static")
    except ConfigError:
        return f"axis_{index}"


# py-pde's TrackerBase.__init_subclass__ (it registers subclasses) is unannotated
class SnapsinkTracker(ClosesOnExit, TransformedTrackerBase):  # type: ignore[no-untyped-call]
    """A py-pde tracker writing the state at each interrupt to a snapsink store.

    Pass it to ``solve`` with py-pde's other trackers. Each interrupt writes
    one frame: one field per member of a ``FieldCollection`` (one field for a
    single field), each of its own shape (``grid.shape`` for a scalar field,
    ``(dim, *grid.shape)`` for a vector field, ``(dim, dim, *grid.shape)`` for
    a tensor field), at py-pde's time ``t`` and the step chosen by ``step``.

    Parameters
    ----------
    target
        A store (``NpyDirectory``, ``ZarrStore``, ``HostMemory``, or one of
        your own with an ``add_metadata`` method): the tracker opens a
        :class:`~snapsink.SyncSink` on it when the run starts, after adding the
        grid's attrs and static arrays to it, and closes it when the run ends.
        Or an open :class:`~snapsink.SyncSink`, which the tracker writes to and
        flushes at the end of the run but does not close; its store was built
        before the grid was known, so give it :func:`grid_attrs` and
        :func:`grid_static` yourself.
    interrupts
        When to write, as for every py-pde tracker: a time interval (``0.1``),
        a sequence of times, or an interrupt object.
    names
        The stored field names: a str for a single field, a sequence (one per
        member) for a ``FieldCollection``. ``None``: each field's ``label``,
        or ``"field"`` (``"field_<i>"`` for the i-th member) when it has none.
    step
        ``"solver"`` (default): the solver's step count, py-pde's
        ``info["solver"]["steps"]`` (time steps taken since the run started;
        ``ScipySolver`` counts right-hand-side evaluations). ``"interrupt"``:
        the index of the interrupt, 0, 1, 2, ...
    transformation
        As for py-pde's trackers: a function of the state (and, optionally,
        the time) returning the field to store instead.
    capacity, policy, max_bytes, writer
        For the sink the tracker opens on a store; see :class:`~snapsink.Sink`.

    Raises
    ------
    ConfigError
        For a target that is neither a store nor a SyncSink, a store that cannot
        take the grid's metadata, or a bad ``names``, ``step`` or sink option.

    Notes
    -----
    Attrs added to the store: ``grid`` (:func:`grid_attrs`), ``fields``
    (``{name: {"class", "rank", "label", "dtype"}}``) and ``pde`` (py-pde's
    version, the solver and PDE classes, and which ``step`` was stored);
    static arrays: :func:`grid_static`. A key or name the store already holds
    with another value is refused.

    py-pde calls ``finalize`` only when ``solve`` returns (also when a tracker
    stops it); when the simulation raises, close the tracker yourself, e.g.
    ``with SnapsinkTracker(store, 0.1) as tracker: eq.solve(..., tracker=tracker)``,
    so the frames written so far are committed and the store's lock released.

    A run that continues a stored one (a store opened with ``mode="a"``, or a
    sink given again for another ``solve``) continues its steps: the solver's
    count (or the interrupt counter) starts again at 0 in each ``solve``, and
    is stored after the sink's last step (step = that step + 1 + the count).

    Examples
    --------
    >>> tracker = SnapsinkTracker(snapsink.NpyDirectory("run"), interrupts=0.1)  # doctest: +SKIP
    >>> eq.solve(state, t_range=10, dt=1e-3, tracker=["progress", tracker])  # doctest: +SKIP
    """

    _closing = "the tracker's sink"

    def __init__(
        self,
        target: Any,
        interrupts: InterruptData = 1,
        *,
        names: str | Sequence[str] | None = None,
        step: str = "solver",
        transformation: TransformationType = None,
        capacity: int = 8,
        policy: str | Spill = "block",
        max_bytes: int | None = None,
        writer: str = "auto",
    ):
        super().__init__(interrupts=interrupts, transformation=transformation)
        if step not in STEPS:
            raise ConfigError(
                f"step: expected 'solver' (the solver's step count) or 'interrupt' "
                f"(0, 1, 2, ... per interrupt), got {step!r}"
            )
        self._step_kind = step
        self._names = _check_names(names)
        if isinstance(target, Sink):
            raise ConfigError(
                "target: an async snapsink.Sink cannot be written from py-pde's loop; "
                "give a store, or a snapsink.SyncSink"
            )
        self._store: Any = None
        self._sink: SyncSink | None = None
        if isinstance(target, SyncSink):
            self._sink = target
        else:
            if not callable(getattr(target, "open", None)):
                raise ConfigError(
                    "target: expected a store (NpyDirectory, ZarrStore, HDF5Store, "
                    "HostMemory, ...) "
                    f"or an open snapsink.SyncSink, got {type(target).__name__}"
                )
            if not callable(getattr(target, "add_metadata", None)):
                raise ConfigError(
                    f"target: {type(target).__name__} has no add_metadata(), so the grid "
                    "cannot be stored with it; build the store with "
                    "attrs={'grid': grid_attrs(grid)} and static=grid_static(grid), open a "
                    "snapsink.SyncSink on it and pass that"
                )
            choose_writer(target, writer)  # a bad writer= is refused now, not mid-run
            self._store = target
        self._options: dict[str, Any] = {
            "capacity": check_capacity(capacity),
            "policy": check_policy(policy),
            "max_bytes": _check_max_bytes(max_bytes),
            "writer": writer,
        }
        self._info: Mapping[str, Any] = {}
        self._fields: list[str] = []
        self._index = 0
        self._offset = 0  # added to this solve's step counts (see initialize)
        self._last_step: int | None = None
        self._finished = False

    def __repr__(self) -> str:
        target = self._store if self._store is not None else self._sink
        return f"SnapsinkTracker({target!r}, step={self._step_kind!r})"

    @property
    def sink(self) -> SyncSink | None:
        """The sink written to: the one given, or the one opened on the store
        when the run started (``None`` before that)."""
        return self._sink

    # -- py-pde's tracker protocol ------------------------------------------------
    def initialize(self, field: FieldBase, info: InfoDict | None = None) -> float:
        """Take the field layout and the grid from the initial state; open the sink.

        Parameters
        ----------
        field
            The initial state.
        info
            py-pde's diagnostics: the solver's ``info`` is read for its step count.

        Returns
        -------
        float
            The first time at which to handle the state.

        Raises
        ------
        ConfigError
            For field names that do not fit the state, or grid metadata the
            store already holds with other values.
        StoreStateError
            When the tracker's own store was closed by an earlier run.
        """
        if self._finished and self._store is not None:
            raise StoreStateError(
                f"{self!r}: its store was closed when the previous run ended; make a new "
                "tracker with a new store (mode='a' appends to the stored run)"
            )
        self._info = info or {}
        t_start = float((self._info.get("controller") or {}).get("t_start", 0))
        example = self._transform(field, t_start)
        members = _members(example)
        collection = isinstance(example, FieldCollection)
        self._fields = _field_names(self._names, members, collection)
        if self._store is not None:
            solver = self._info.get("solver") or {}
            attrs = {
                "grid": grid_attrs(example.grid),
                "fields": {
                    name: {
                        "class": type(f).__name__,
                        "rank": f.rank,
                        "label": f.label,
                        "dtype": str(f.data.dtype),
                    }
                    for name, f in zip(self._fields, members, strict=True)
                },
                "pde": {
                    "version": version("py-pde"),
                    "solver": solver.get("class"),
                    "pde_class": solver.get("pde_class"),
                    "step": self._step_kind,
                },
            }
            self._store.add_metadata(attrs=attrs, static=grid_static(example.grid))
            self._sink = SyncSink(self._store, **self._options)
        self._index = 0
        self._last_step = None
        # steps continue after those already stored (a resumed store, or a
        # sink given again): the solver counts from 0 in each solve
        assert self._sink is not None
        last = self._sink.last_step
        self._offset = 0 if last is None else last + 1
        t_first: float = super().initialize(field, info)
        return t_first

    def handle(self, field: FieldBase, t: float) -> None:
        """Write the state as one frame, at time ``t``.

        Parameters
        ----------
        field
            The current state.
        t
            Its time.

        Raises
        ------
        ConfigError
            When ``step="solver"`` and the solver reports no step count.
        StoreStateError
            When called before :meth:`initialize`.
        SchemaError
            When the step did not advance since the last frame, or the state
            no longer has the fields of the first frame.
        """
        if self._sink is None or not self._fields:
            raise StoreStateError(f"{self!r}: handle() before initialize()")
        state = self._transform(field, t)
        members = _members(state)
        if len(members) != len(self._fields):
            raise SchemaError(
                f"py-pde state at t={t}: expected {len(self._fields)} fields "
                f"({', '.join(self._fields)}), got {len(members)}"
            )
        step = self._step(t)
        frame = {name: f.data for name, f in zip(self._fields, members, strict=True)}
        self._sink.write(frame, step=step, time=t)
        self._last_step = step
        self._index += 1

    def finalize(self, info: InfoDict | None = None) -> None:
        """Close the sink the tracker opened (or flush the sink it was given).

        Parameters
        ----------
        info
            py-pde's diagnostics (not used).
        """
        super().finalize(info)
        if self._store is not None:
            self.close()
        elif self._sink is not None:
            self._sink.flush()

    # -- closing ----------------------------------------------------------------
    def close(self) -> None:
        """Drain, commit and close the sink the tracker opened; idempotent.

        A sink given to the tracker is left open (its owner closes it).
        """
        if self._store is None or self._sink is None:
            return
        self._finished = True
        self._sink.close()


    # -- helpers ------------------------------------------------------------------
    def _step(self, t: float) -> int:
        if self._step_kind == "interrupt":
            return self._offset + self._index
        steps = (self._info.get("solver") or {}).get("steps")
        if steps is None:
            raise ConfigError(
                "step='solver': py-pde's solver reported no step count "
                "(info['solver']['steps']); pass step='interrupt' to number the frames"
            )
        step = self._offset + int(steps)
        if self._last_step is not None and step <= self._last_step:
            raise SchemaError(
                f"step at t={t}: the solver's step count ({step}) did not advance since "
                f"the last frame (step {self._last_step}); pass step='interrupt'"
            )
        return step


def _check_names(names: object) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        return (check_name(names),)
    if not isinstance(names, Sequence):
        raise ConfigError(
            f"names: expected a str, a sequence of str or None, got {type(names).__name__}"
        )
    out = tuple(check_name(n) for n in names)
    if len(set(out)) != len(out):
        raise ConfigError(f"names: expected distinct names, got {list(out)}")
    return out


def _members(field: FieldBase) -> list[DataFieldBase]:
    """The fields of a state: the members of a collection, or the field itself."""
    if isinstance(field, FieldCollection):
        return list(field)
    if isinstance(field, DataFieldBase):
        return [field]
    raise SchemaError(
        f"py-pde state: expected a field or a FieldCollection, got {type(field).__name__}"
    )


def _field_names(
    names: tuple[str, ...] | None, members: list[DataFieldBase], collection: bool
) -> list[str]:
    if names is not None:
        if len(names) != len(members):
            raise ConfigError(
                f"names: expected {len(members)} name(s), one per field of the state, "
                f"got {list(names)}"
            )
        return list(names)
    out = []
    for i, f in enumerate(members):
        default = f"field_{i}" if collection else "field"
        label = f.label if f.label is not None else default
        try:
            out.append(check_name(label))
        except ConfigError as exc:
            raise ConfigError(f"{exc}; pass names=[...] to name the stored fields") from exc
    if len(set(out)) != len(out):
        raise ConfigError(f"field labels repeat ({out}); pass names=[...] to name them")
    return out
