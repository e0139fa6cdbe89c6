"""Routes and their router: where a recorder's frames go, and when.

A :class:`Route` holds one stream's settings (store, fields, schedule, static
data, per-system selection, sink settings), checked when it is made; the
:class:`Router` makes every decision of a record without I/O (the step, the
routes due, the fields each takes, the static data and schema of the first
record). Both recorders in :mod:`snapsink._recorder` carry out its plans over
their sinks; keeping the plan here keeps that module to the sinks' lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from ._channeltypes import check_capacity, check_policy
from ._errors import ConfigError, SchemaError
from ._schema import Schema, check_name, next_step
from ._sink import _check_max_bytes, _check_schema
from ._spill import Spill
from ._store import Store
from ._systems import Systems, SystemsState
from .schedule import Schedule, as_schedule

__all__ = ["Route", "Router", "merge_routes"]

Selection = Sequence[str] | Callable[[Any], Mapping[str, Any]]


def _check_selection(value: object, what: str) -> Selection | None:
    if value is None or callable(value):
        return value
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(
            f"{what}: expected a list of names or a function of the state returning "
            f"{{name: array}}, got {type(value).__name__} {value!r}"
        )
    names = [check_name(n) for n in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what}: names repeat in {names!r}")
    return tuple(names)


class Route:
    """Where one stream of frames goes, which steps and which fields.

    Parameters
    ----------
    store
        A store (:class:`~snapsink.HostMemory`, :class:`~snapsink.NpyDirectory`,
        :class:`~snapsink.ZarrStore`, ...). With ``static=``, a function
        ``store(static) -> store`` instead, called at the first record with the
        static arrays taken from the state (stores take ``static=`` when built).
    fields
        Which fields of the state the route stores: a list of names (the state
        is then a mapping), a function ``fields(state) -> {name: array}``, or
        ``None`` for every entry of a mapping state (less the static names).
    schedule
        Which steps go to the route: a :class:`~snapsink.Schedule`
        (:func:`~snapsink.every`, :func:`~snapsink.once`, :func:`~snapsink.when`,
        combined with ``|`` and ``&``), an int ``n`` for ``every(n)``, a
        function of the state for ``when(function)``, or ``None`` (every step).
    static
        Arrays taken from the *first* recorded state and written once: a list of
        names or a function ``static(state) -> {name: array}``. Needs ``store``
        to be a function, as above.
    select
        Per-system capture in a batch: :func:`~snapsink.converged` stores each
        system once, at the step where its mask turns true, with its rows of
        the per-atom and per-system fields (see :mod:`snapsink` guides,
        "Batched systems"). Without ``schema=``, the route's sink opens at the
        first record, with a schema taken from that state.
    capacity, policy, schema, max_bytes
        The route's :class:`~snapsink.Sink` settings.

    Raises
    ------
    ConfigError
        For an invalid store, selection, schedule or sink setting.

    Examples
    --------
    >>> snapsink.Route(
    ...     lambda static: snapsink.ZarrStore("md.zarr", group="frames", static=static),
    ...     fields=["positions", "velocities"], schedule=snapsink.every(50),
    ...     static=["numbers", "masses"])  # doctest: +SKIP
    """

    __slots__ = (
        "capacity",
        "fields",
        "max_bytes",
        "policy",
        "schedule",
        "schema",
        "select",
        "static",
        "store",
    )

    def __init__(
        self,
        store: Any,
        *,
        fields: Selection | None = None,
        schedule: Schedule | int | Callable[[Any], object] | None = None,
        static: Selection | None = None,
        select: Systems | None = None,
        capacity: int = 8,
        policy: str | Spill = "block",
        schema: Schema | Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
    ):
        self.fields = _check_selection(fields, "fields")
        self.static = _check_selection(static, "static")
        self.schedule = as_schedule(schedule)
        if select is not None and not isinstance(select, Systems):
            raise ConfigError(
                "select: expected snapsink.converged(mask, sizes=...) or None, "
                f"got {type(select).__name__} {select!r}"
            )
        self.select = select
        is_store = isinstance(store, Store)
        if self.static is not None:
            if is_store or not callable(store):
                raise ConfigError(
                    "store: a route with static= takes a function static -> store, "
                    "called at the first record, e.g. "
                    "`lambda static: snapsink.ZarrStore(path, static=static)`; "
                    f"got {type(store).__name__} (or pass static= to the store itself)"
                )
        elif not is_store:
            raise ConfigError(
                "store: expected an object with the snapsink.Store methods "
                f"(open, prepare, append, commit, close), got {type(store).__name__}"
            )
        self.store = store
        self.capacity = check_capacity(capacity)
        self.policy: str | Spill = policy
        check_policy(policy)
        self.schema = _check_schema(schema)
        self.max_bytes = _check_max_bytes(max_bytes)

    @property
    def lazy(self) -> bool:
        """Whether the sink opens at the first record: the store is made then
        (``static=`` given), or the schema is taken from that state (``select=``
        without ``schema=``)."""
        return self.static is not None or (self.select is not None and self.schema is None)

    def __repr__(self) -> str:
        select = "" if self.select is None else f", select={self.select!r}"
        return (
            f"Route({type(self.store).__name__}, fields={self.fields!r}, "
            f"schedule={self.schedule!r}, static={self.static!r}{select})"
        )


def _select(selection: Selection | None, state: object, what: str, skip: Sequence[str]) -> Any:
    """``{name: value}`` that ``selection`` picks from ``state``."""
    if callable(selection):
        out = selection(state)
        if not isinstance(out, Mapping):
            raise SchemaError(
                f"{what}: the selection function returned {type(out).__name__}; "
                "expected a mapping {name: array}"
            )
        return out
    if not isinstance(state, Mapping):
        raise SchemaError(
            f"{what}: the state is a {type(state).__name__}; selecting by name needs a "
            "mapping {name: array} (or give the route a function of the state)"
        )
    if selection is None:
        return {k: v for k, v in state.items() if k not in skip}
    missing = [n for n in selection if n not in state]
    if missing:
        raise SchemaError(
            f"{what}: expected field(s) {', '.join(map(repr, missing))} in the state, "
            f"which has {', '.join(map(repr, state)) or 'nothing'}"
        )
    return {n: state[n] for n in selection}


class Router:
    """The decisions of a recorder, without I/O: steps, due routes, selections.

    Parameters
    ----------
    routes
        ``{name: Route}``; names are identifiers.

    Raises
    ------
    ConfigError
        If ``routes`` is empty, a name is not an identifier, a value is not a
        :class:`Route`, or two routes are given the same store object.
    """

    def __init__(self, routes: Mapping[str, Route]):
        if not routes:
            raise ConfigError("routes: expected at least one route, e.g. frames=Route(store)")
        for name, route in routes.items():
            check_name(name, "route")
            if not isinstance(route, Route):
                raise ConfigError(
                    f"route {name!r}: expected a snapsink.Route, got {type(route).__name__}"
                )
        self.routes: dict[str, Route] = dict(routes)
        #: the store of each route with ``static=``, once its store function made it
        self.made: dict[str, Any] = {}
        for name, route in self.routes.items():
            if route.static is None:
                self._check_own_store(name, route.store)
        self.received: dict[str, int] = dict.fromkeys(routes, 0)
        self.last_step: int | None = None
        self.started = False
        #: per-system selections (routes with ``select=``)
        self.systems: dict[str, SystemsState] = {
            name: SystemsState(r.select, name)
            for name, r in self.routes.items()
            if r.select is not None
        }

    def _check_own_store(self, name: str, store: object) -> None:
        """Refuse ``store`` for route ``name`` if another route has that object."""
        names = list(self.routes)
        for other, route in self.routes.items():
            theirs = self.made.get(other) if route.static is not None else route.store
            if other != name and theirs is store:
                a, b = sorted((name, other), key=names.index)
                raise ConfigError(
                    f"routes {a!r} and {b!r}: both are given the same "
                    f"{type(store).__name__} object, whose frames would interleave; "
                    "give each route its own store (another group or path)"
                )

    def next_step(self, step: object) -> int:
        """The step of the next record: ``step``, or the previous one + 1 (0 first).

        Raises
        ------
        DTypeError
            ``step`` is not an int.
        SchemaError
            ``step`` does not increase strictly.
        """
        return next_step(
            self.last_step,
            step,
            "every sink needs strictly increasing steps; pass the simulation step",
        )

    def first(self, state: object) -> dict[str, tuple[Mapping[str, Any] | None, Schema | None]]:
        """``{route: (static, schema)}`` of the routes that open at the first
        record: the static arrays taken from the first state (None without
        ``static=``), and the schema (the route's, or one taken from the state
        for a per-system selection)."""
        out: dict[str, tuple[Mapping[str, Any] | None, Schema | None]] = {}
        for name, r in self.routes.items():
            if not r.lazy:
                continue
            static = None
            skip: Sequence[str] = ()
            if r.static is not None:
                static = _select(r.static, state, f"route {name!r} static", ())
                skip = r.static if isinstance(r.static, tuple) else ()
            schema = r.schema
            if schema is None and name in self.systems:
                fields = _select(r.fields, state, f"route {name!r}", skip)
                schema = self.systems[name].schema(fields, state)
            out[name] = (static, schema)
        return out

    def resumed(self, name: str, count: int) -> None:
        """Route ``name`` appends to a store holding ``count`` frames: schedules
        count them as received (``once()`` does not fire again)."""
        self.received[name] = count

    def plan(self, state: object, step: int) -> list[tuple[str, Mapping[str, Any]]]:
        """``[(route, fields)]`` due at ``step``, in route order; no I/O.

        Raises
        ------
        SchemaError
            A selection finds no such field, or the state is not a mapping.
        """
        out = []
        for name, r in self.routes.items():
            if r.schedule.due(step, state, received=self.received[name]):
                skip = r.static if isinstance(r.static, tuple) else ()
                fields = _select(r.fields, state, f"route {name!r}", skip)
                systems = self.systems.get(name)
                if systems is not None:
                    fields = systems.select(state, fields)
                    if fields is None:
                        continue  # no system is due
                out.append((name, fields))
        return out

    def advance(self, step: int) -> None:
        """Take ``step`` as recorded (later steps must be greater)."""
        self.last_step = step
        self.started = True

    # -- the two recorders' record(): begin, open what it says, take, write ----------
    def begin(
        self, state: object, step: object, opened: Container[str]
    ) -> tuple[int, list[tuple[str, Any, Schema | None]]]:
        """The step of a record, and ``[(route, store, schema)]`` to open before
        it is planned: at the first record, the routes that open then (less
        those in ``opened``); no I/O (a route's store function is called, once
        per route: a record retried after a failure or a cancellation gets the
        store made the first time).

        Raises
        ------
        ConfigError
            A store function returned no store, or the store of another route.
        """
        s = self.next_step(step)
        if self.started:
            return s, []
        out = []
        for name, (static, schema) in self.first(state).items():
            if name in opened:
                continue
            store = self.made.get(name)
            if store is None:
                store = _make_store(name, self.routes[name], static)
                if static is not None:
                    self._check_own_store(name, store)
                    self.made[name] = store
            out.append((name, store, schema))
        return s, out

    def take(self, state: object, step: int) -> list[tuple[str, Mapping[str, Any]]]:
        """:meth:`plan` the record at ``step``, then :meth:`advance` to it."""
        plan = self.plan(state, step)
        self.advance(step)
        return plan


def _make_store(name: str, route: Route, static: Mapping[str, Any] | None) -> Any:
    if static is None:
        return route.store
    store = route.store(dict(static))
    if not isinstance(store, Store):
        raise ConfigError(
            f"route {name!r}: the store function returned {type(store).__name__}, "
            "expected a snapsink store"
        )
    return store


def merge_routes(routes: Mapping[str, Route] | None, more: Mapping[str, Route]) -> dict[str, Route]:
    """The routes given positionally and as keywords, in one mapping; a name
    given in both is a :class:`ConfigError`."""
    out = dict(routes or {})
    for name in more:
        if name in out:
            raise ConfigError(f"route {name!r} given twice")
    out.update(more)
    return out
