"""Routes and their router: where a recorder's frames go, and when.

A :class:`Route` holds one stream's settings (store, fields, schedule, static
data, per-system selection, sink settings), checked when it is made; the
:class:`Router` makes every decision of a record without I/O (the step, the
routes due, the fields each takes, the static data and schema of the first
record). Both recorders in :mod:`snapsink._recorder` carry out its plans over
their sinks; keeping the plan here keeps that module to the sinks' lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ._channeltypes import check_capacity, check_policy
from ._errors import ConfigError, SchemaError
from ._schema import Schema, StepClock, check_name, next_step
from ._sink import _check_max_bytes, _check_schema
from ._spill import Spill
from ._store import Resume, Store
from ._systems import Systems, SystemsState
from .schedule import Schedule, as_schedule

__all__ = ["Route", "Router", "in_route", "merge_routes", "note_route"]

Selection = Sequence[str] | Callable[[Any], Mapping[str, Any]]
Plan = list[tuple[str, Mapping[str, Any]]]


def note_route(err: BaseException, name: str) -> None:
    """Note on ``err`` that it came from route ``name`` (once).

    A note, not a new exception: callers catch the sink's own types
    (``SchemaError``, ``WriterError``, ``StoreExistsError``) and the user's
    (a predicate's ``KeyError``), whose constructors differ.
    """
    note = f"snapsink: raised by route {name!r}"
    if note not in getattr(err, "__notes__", ()):
        err.add_note(note)


@contextmanager
def in_route(name: str) -> Iterator[None]:
    """Note on an error raised in the block that it came from route ``name``."""
    try:
        yield
    except Exception as err:
        note_route(err, name)
        raise


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
        first record, with a schema taken from that state. A system whose frame
        ``drop_newest`` dropped is stored at a later step; ``once=True`` does
        not go with ``drop_oldest`` (the recorder refuses it).
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

    A record of step ``s`` counts as recorded once any route's sink has
    captured its frame (or when no route is due): later records need a greater
    step. A record interrupted before every due route captured the frame (a
    sink's error, a cancellation) leaves ``s`` open to a retry: a record of
    ``s`` again, with the same time, goes to the routes that have not captured
    it; the others are skipped.

    Parameters
    ----------
    routes
        ``{name: Route}``; names are identifiers.

    Raises
    ------
    ConfigError
        If ``routes`` is empty, a name is not an identifier, a value is not a
        :class:`Route`, two routes are given the same store object, or a route
        selects ``converged(once=True)`` under ``policy="drop_oldest"``.
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
            _check_once_kept(name, route)
        self.routes: dict[str, Route] = dict(routes)
        #: the store of each route with ``static=``, once its store function made it
        self.made: dict[str, Any] = {}
        for name, route in self.routes.items():
            if route.static is None:
                self._check_own_store(name, route.store)
        self.received: dict[str, int] = dict.fromkeys(routes, 0)
        #: the recorder's steps and times, checked before anything is written
        self.clock = StepClock()
        self.started = False
        #: ``(step, time, routes that captured it)`` of a record not every due
        #: route captured: that step may be recorded again, for the others
        self.retry: tuple[int, float | None, frozenset[str]] | None = None
        #: per route, the names ``fields=None`` leaves out (the static names;
        #: those of a ``static=`` function once it has run, at the first record)
        self.skip: dict[str, tuple[str, ...]] = {
            name: r.static for name, r in self.routes.items() if isinstance(r.static, tuple)
        }
        #: per-system selections (routes with ``select=``)
        self.systems: dict[str, SystemsState] = {
            name: SystemsState(r.select, name)
            for name, r in self.routes.items()
            if r.select is not None
        }

    @property
    def last_step(self) -> int | None:
        """The step of the last record (or the last step of a resumed store)."""
        return self.clock.last_step

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

    def check(self, step: object, time: object) -> tuple[int, float | None]:
        """The step and time of the next record, checked; nothing changes.

        ``step``: the previous one + 1 by default (0 first), else greater than
        the previous one, or equal to a step whose record is incomplete (see
        the class); ``time``: finite and non-decreasing, on every record or on
        none (a retry: the time the step was first recorded with).

        Raises
        ------
        DTypeError
            ``step`` is not an int, or ``time`` not a number.
        SchemaError
            ``step`` does not increase strictly, or ``time`` is not finite,
            decreases, or comes on some records only.
        """
        retry = self.retry
        if (
            retry is not None
            and isinstance(step, int | np.integer)
            and not isinstance(step, bool)
            and int(step) == retry[0]
        ):
            return retry[0], _retry_time(retry[0], retry[1], time)
        last = self.clock.last_step
        if (
            last is not None
            and isinstance(step, int | np.integer)
            and not isinstance(step, bool)
            and int(step) == last
        ):
            raise SchemaError(
                f"step: {last} was recorded already (every route due at it captured its "
                "frame, an interrupted record included: see last_step); a step is "
                f"recorded once: pass a step greater than {last}"
            )
        s = next_step(
            self.clock.last_step,
            step,
            "every sink needs strictly increasing steps; pass the simulation step",
        )
        return self.clock.check(s, time)

    def first(self, state: object) -> dict[str, tuple[Mapping[str, Any] | None, Schema | None]]:
        """``{route: (static, schema)}`` of the routes that open at the first
        record: the static arrays taken from the first state (None without
        ``static=``), and the schema (the route's, or one taken from the state
        for a per-system selection).

        Raises
        ------
        SchemaError
            A selection finds no such field, or the state is not a mapping
            (noted with the route's name, as is any error of a selection function).
        """
        out: dict[str, tuple[Mapping[str, Any] | None, Schema | None]] = {}
        name = ""
        try:
            for name, r in self.routes.items():
                if not r.lazy:
                    continue
                static = None
                skip: Sequence[str] = ()
                if r.static is not None:
                    static = _select(r.static, state, f"route {name!r} static", ())
                    skip = tuple(static)
                schema = r.schema
                if schema is None and name in self.systems:
                    fields = _select(r.fields, state, f"route {name!r}", skip)
                    schema = self.systems[name].schema(fields, state)
                out[name] = (static, schema)
        except Exception as err:
            note_route(err, name)
            raise
        return out

    def resumed(self, name: str, resume: Resume) -> None:
        """Route ``name`` appends to a store holding ``resume.count`` frames:
        schedules count them as received (``once()`` does not fire again), and
        the recorder's steps (its default step too) and times go on after the
        store's last ones."""
        self.received[name] = resume.count
        clock = self.clock
        last_step, last_time = clock.last_step, clock.last_time
        if resume.last_step is not None and (last_step is None or resume.last_step > last_step):
            last_step = resume.last_step
        if resume.last_time is not None and (last_time is None or resume.last_time > last_time):
            last_time = resume.last_time
        has_times = resume.times if clock.has_times is None else clock.has_times
        self.clock = StepClock(last_step, last_time, has_times)

    def plan(self, state: object, step: int) -> Plan:
        """``[(route, fields)]`` due at ``step``, in route order; nothing changes.

        On a retry of an incomplete record, the routes that captured it are left out.

        Raises
        ------
        SchemaError
            A selection finds no such field, or the state is not a mapping.
            Any error, a predicate's or a selection function's too, is noted
            with the route's name.
        """
        retry = self.retry
        done = retry[2] if retry is not None and retry[0] == step else ()
        out = []
        name = ""
        # one try for the loop, not a context manager a route: this runs every step
        try:
            for name, r in self.routes.items():
                if name in done or not r.schedule.due(step, state, received=self.received[name]):
                    continue
                fields = _select(r.fields, state, f"route {name!r}", self.skip.get(name, ()))
                systems = self.systems.get(name)
                if systems is not None:
                    fields = systems.select(state, fields)
                    if fields is None:
                        continue  # no system is due
                out.append((name, fields))
        except Exception as err:
            note_route(err, name)
            raise
        return out

    def recorded(
        self,
        step: int,
        time: float | None,
        captured: Plan,
        *,
        complete: bool,
        dropped: Container[str] = (),
    ) -> None:
        """The record at ``step`` is over: the routes in ``captured`` took their
        frame (of the plan); ``complete`` when every due route did. Of those,
        the routes in ``dropped`` took it by dropping it (a drop policy, or
        not known to be queued): their selected systems are not stored.

        A record none of whose routes captured its frame changes nothing (it
        may be recorded again); one that some routes captured counts as
        recorded, and stays open to a retry for the others (see the class).
        """
        for name, fields in captured:
            self.received[name] += 1
            systems = self.systems.get(name)
            if systems is not None and name not in dropped:
                systems.stored_now(fields)
        if not (captured or complete):
            return
        if self.clock.last_step != step:
            self.clock.advance(step, time)
        self.started = True
        if complete:
            self.retry = None
        else:
            retry = self.retry
            done = retry[2] if retry is not None and retry[0] == step else frozenset()
            self.retry = (step, time, done | {name for name, _ in captured})

    def stopped(
        self,
        step: int,
        time: float | None,
        plan: Plan,
        done: int,
        last_step: Callable[[str], int | None],
        queued_step: Callable[[str], int | None],
    ) -> None:
        """A record is over after ``done`` of ``plan``'s writes returned (all of
        them, or it was cancelled, refused, interrupted): it takes effect for
        the routes that captured its frame, those and any later one whose sink
        took it all the same (an interrupt that came as its write returned;
        ``last_step(route)`` says). A selection's systems count as stored only
        where the sink queued the frame (``queued_step(route)``, the step of the
        last frame it queued or spilled), not where its policy dropped it: they
        are stored at a later step where their mask still holds."""
        captured = plan[:done] + [(n, f) for n, f in plan[done:] if last_step(n) == step]
        dropped = [n for n, _ in captured if n in self.systems and queued_step(n) != step]
        self.recorded(step, time, captured, complete=len(captured) == len(plan), dropped=dropped)

    # -- the two recorders' record(): begin, open what it says, plan, write, recorded ----
    def begin(
        self, state: object, step: object, time: object, opened: Container[str]
    ) -> tuple[int, float | None, list[tuple[str, Any, Schema | None]]]:
        """The (checked) step and time of a record, and ``[(route, store,
        schema)]`` to open before it is planned: at the first record, the
        routes that open then (less those in ``opened``); no I/O (a route's
        store function is called, once per route: a record retried after a
        failure or a cancellation gets the store made the first time).

        A route opened then may resume a store: check the step and time again
        (:meth:`check`) once they are open.

        Raises
        ------
        DTypeError, SchemaError
            A bad step or time (see :meth:`check`).
        ConfigError
            A store function returned no store, or the store of another route.
        """
        s, t = self.check(step, time)
        if self.started:
            return s, t, []
        out = []
        for name, (static, schema) in self.first(state).items():
            if name in opened:
                continue
            store = self.made.get(name)
            if store is None:
                with in_route(name):
                    store = _make_store(name, self.routes[name], static)
                    if static is not None:
                        self._check_own_store(name, store)
                        self.made[name] = store
                        self.skip[name] = tuple(static)
            out.append((name, store, schema))
        return s, t, out


def _check_once_kept(name: str, route: Route) -> None:
    """Refuse ``converged(once=True)`` under ``drop_oldest``: that policy drops
    a queued frame after its write returned, when its systems were taken as
    stored already; they would never be stored."""
    if route.select is not None and route.select.once and route.policy == "drop_oldest":
        raise ConfigError(
            f"route {name!r}: select=converged(once=True) stores each system once, "
            "but policy 'drop_oldest' may drop its frame after the record returned, "
            "and the system would never be stored; use policy 'block', "
            "snapsink.Spill(dir) or 'drop_newest' (whose drops are known at once: "
            "the system is stored at a later step), or converged(..., once=False)"
        )


def _retry_time(step: int, first: float | None, time: object) -> float | None:
    """``time`` if it is ``first``, the time step ``step`` was first recorded with."""
    if first is None:
        same = time is None
    else:
        try:
            same = (
                not isinstance(time, bool)
                and isinstance(time, int | float | np.integer | np.floating)
                and float(time) == first
            )
        except OverflowError:  # a Python int beyond any float
            same = False
    if not same:
        raise SchemaError(
            f"time at step {step}: expected {first} (some routes recorded the step with "
            f"that time; recording it again for the others takes the same), got {time!r}"
        )
    return first


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
