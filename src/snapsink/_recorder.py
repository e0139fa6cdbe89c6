"""Recorder: one object a simulation loop calls once per step, routing to sinks.

The routing decisions (which routes are due at a step, which fields each one
takes, the static data of the first record, step bookkeeping) live in the
I/O-free :class:`Router`; :class:`Recorder` (async, over :class:`Sink`) and
:class:`SyncRecorder` (ordinary loops, over :class:`SyncSink`) only carry the
frames it plans to their sinks.

Each async sink runs in a task of the recorder's own task group, started with
``TaskGroup.start``: a sink opened lazily (at the first record) is then owned by
that task, not by whatever cancel scope surrounds the ``record`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import numpy as np
from anyio.abc import TaskGroup, TaskStatus

from ._channeltypes import SinkStatistics, check_capacity, check_policy
from ._checks import INT64_MAX, INT64_MIN
from ._errors import ClosedSinkError, ConfigError, DTypeError, SchemaError
from ._schema import Schema, check_name
from ._sink import Sink, _check_max_bytes, _check_schema
from ._spill import Spill
from ._store import Store
from ._sync import SyncSink
from ._systems import Systems, SystemsState
from .schedule import Schedule, as_schedule

__all__ = ["Recorder", "Route", "Router", "SyncRecorder"]

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
        If ``routes`` is empty, a name is not an identifier, or a value is not a
        :class:`Route`.
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
        self.received: dict[str, int] = dict.fromkeys(routes, 0)
        self.last_step: int | None = None
        self.started = False
        #: per-system selections (routes with ``select=``)
        self.systems: dict[str, SystemsState] = {
            name: SystemsState(r.select, name)
            for name, r in self.routes.items()
            if r.select is not None
        }

    def next_step(self, step: object) -> int:
        """The step of the next record: ``step``, or the previous one + 1 (0 first).

        Raises
        ------
        DTypeError
            ``step`` is not an int.
        SchemaError
            ``step`` does not increase strictly.
        """
        if step is None:
            s = 0 if self.last_step is None else self.last_step + 1
        else:
            if isinstance(step, bool) or not isinstance(step, int | np.integer):
                raise DTypeError(f"step: expected an int, got {type(step).__name__} {step!r}")
            s = int(step)
            if self.last_step is not None and s <= self.last_step:
                raise SchemaError(
                    f"step: expected a step greater than {self.last_step} (every sink needs "
                    f"strictly increasing steps; pass the simulation step), got {s}"
                )
        if not INT64_MIN <= s <= INT64_MAX:
            raise SchemaError(f"step: expected a value that fits int64, got {s}")
        return s

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
        those in ``opened``); no I/O (a route's store function is called)."""
        s = self.next_step(step)
        if self.started:
            return s, []
        return s, [
            (name, _make_store(name, self.routes[name], static), schema)
            for name, (static, schema) in self.first(state).items()
            if name not in opened
        ]

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


def _routes(routes: Mapping[str, Route] | None, more: Mapping[str, Route]) -> dict[str, Route]:
    out = dict(routes or {})
    for name in more:
        if name in out:
            raise ConfigError(f"route {name!r} given twice")
    out.update(more)
    return out


def _close_error(errors: list[BaseException], exc: BaseException | None) -> None:
    """Raise the first close error (noting the others), or note them on ``exc``."""
    if not errors:
        return
    if exc is not None:
        for err in errors:
            exc.add_note(f"snapsink: closing the recorder also failed: {err!r}")
        return
    first = errors[0]
    for err in errors[1:]:
        first.add_note(f"snapsink: closing another route also failed: {err!r}")
    raise first


class _Base:
    _router: Router
    _stores: dict[str, Any]

    @property
    def routes(self) -> Mapping[str, Route]:
        """The routes, by name."""
        return self._router.routes

    @property
    def last_step(self) -> int | None:
        """The step of the last record (``None`` before the first)."""
        return self._router.last_step

    def store(self, name: str) -> Any:
        """The store of route ``name`` (read a HostMemory back with ``.trajectory()``).

        Raises
        ------
        KeyError
            No route has that name.
        ConfigError
            The route makes its store at the first record, which has not come yet.
        """
        if name not in self._router.routes:
            raise KeyError(f"no route named {name!r}; routes: {', '.join(self._router.routes)}")
        if name not in self._stores:
            raise ConfigError(f"route {name!r} makes its store at the first record")
        return self._stores[name]


class Recorder(_Base):
    """Record a simulation step by step into several sinks, each on its schedule.

    An async context manager: ``async with`` opens every route's
    :class:`~snapsink.Sink` (routes with ``static=`` open at the first record);
    leaving the block drains, commits and closes them all.

    Parameters
    ----------
    routes
        ``{name: Route}``, positional; routes may also be given as keywords.
    **more_routes
        ``name=Route(...)``.

    Raises
    ------
    ConfigError
        No route, a bad route name, or a value that is not a :class:`Route`.

    Examples
    --------
    >>> rec = snapsink.Recorder(
    ...     thermo=snapsink.Route(snapsink.ZarrStore("md.zarr", group="thermo"),
    ...                           fields=["energy", "temperature"]),
    ...     frames=snapsink.Route(snapsink.ZarrStore("md.zarr", group="frames"),
    ...                           fields=["positions"], schedule=snapsink.every(50)),
    ... )
    >>> async with rec:  # doctest: +SKIP
    ...     for step in range(n_steps):
    ...         state = advance(state)
    ...         await rec.record(state, step=step, time=step * dt)
    """

    def __init__(self, routes: Mapping[str, Route] | None = None, /, **more_routes: Route):
        self._router = Router(_routes(routes, more_routes))
        self._stores = {}
        self._sinks: dict[str, tuple[Sink, anyio.Event]] = {}
        self._tg: TaskGroup | None = None
        self._state = "new"  # new -> open -> closed

    async def __aenter__(self) -> Recorder:
        if self._state != "new":
            raise ConfigError("this Recorder was already opened; create a new Recorder")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "open"
        try:
            for name, route in self._router.routes.items():
                if not route.lazy:
                    await self._open(name, route.store)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                errors = await self._close_sinks()
            self._state = "closed"
            # The route tasks have ended; the error is raised as is, not grouped.
            await tg.__aexit__(None, None, None)
            _close_error(errors, exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with anyio.CancelScope(shield=True):
            errors = await self._close_sinks()
        self._state = "closed"
        tg, self._tg = self._tg, None
        if tg is not None:
            # Every route task ends once its sink is closed. The body's exception
            # is not handed to the task group, which would wrap it in a group.
            await tg.__aexit__(None, None, None)
        _close_error(errors, exc)
        return False

    async def _open(self, name: str, store: Any, schema: Schema | None = None) -> None:
        route = self._router.routes[name]
        sink = Sink(
            store,
            route.capacity,
            route.policy,
            schema=route.schema if schema is None else schema,
            max_bytes=route.max_bytes,
        )
        done = anyio.Event()

        async def own(*, task_status: TaskStatus[None]) -> None:
            async with sink:
                task_status.started()
                await done.wait()

        assert self._tg is not None
        await self._tg.start(own, name=f"snapsink recorder route {name!r}")
        self._sinks[name] = (sink, done)
        self._stores[name] = store
        if sink.resumed is not None:
            self._router.resumed(name, sink.resumed.count)

    async def _close_sinks(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for sink, done in reversed(list(self._sinks.values())):
            try:
                await sink.aclose()
            except Exception as err:
                errors.append(err)
            finally:
                done.set()
        return errors

    async def record(
        self, state: Any, *, step: int | None = None, time: float | None = None
    ) -> tuple[str, ...]:
        """Hand one step of the simulation to every route that is due.

        Returns once each due route's sink has captured its frame: the caller
        may then overwrite its arrays.

        Parameters
        ----------
        state
            A mapping ``{name: array or scalar}``, or any object when every
            route selects with a function.
        step
            The simulation step, strictly increasing; default: previous + 1
            (0 first). Schedules count in these steps.
        time
            Optional finite, non-decreasing simulation time (on every record or
            on none).

        Returns
        -------
        tuple of str
            The names of the routes that received a frame.

        Raises
        ------
        SchemaError, DTypeError
            A bad step, a missing field, or a frame a sink refuses.
        WriterError
            A route's store failed earlier (chained to the cause).
        ClosedSinkError
            The recorder is not open (use ``async with``) or is closed.
        """
        if self._state != "open":
            raise ClosedSinkError(
                "the recorder is not open: use it as `async with Recorder(...) as rec:`"
                if self._state == "new"
                else "the recorder is closed; it takes no more steps"
            )
        router = self._router
        s, opening = router.begin(state, step, self._sinks)
        for name, store, schema in opening:
            await self._open(name, store, schema)
        plan = router.take(state, s)
        for name, fields in plan:
            await self._sinks[name][0].write(fields, step=s, time=time)
            router.received[name] += 1
        return tuple(name for name, _ in plan)

    async def flush(self) -> None:
        """Wait until every frame recorded so far is stored, durable and visible.

        Raises
        ------
        WriterError
            A route's store failed (chained to the cause).
        """
        for sink, _ in list(self._sinks.values()):
            await sink.flush()

    def statistics(self) -> dict[str, SinkStatistics]:
        """Each open route's :meth:`Sink.statistics`, by route name.

        Returns
        -------
        dict
            ``{route: SinkStatistics}``.
        """
        return {name: sink.statistics() for name, (sink, _) in self._sinks.items()}


class SyncRecorder(_Base):
    """A :class:`Recorder` for ordinary loops, over :class:`~snapsink.SyncSink`.

    The sinks open when the recorder is created (routes with ``static=`` at the
    first record) and close at the end of a ``with`` block or on :meth:`close`.

    Parameters
    ----------
    routes, **more_routes
        As for :class:`Recorder`.

    Raises
    ------
    ConfigError
        As for :class:`Recorder`, or a bad sink setting.
    StoreExistsError
        When a store exists and its mode is ``"x"``.

    Examples
    --------
    >>> with snapsink.SyncRecorder(
    ...     thermo=snapsink.Route(snapsink.HostMemory(), fields=["energy"]),
    ... ) as rec:  # doctest: +SKIP
    ...     for step in range(n_steps):
    ...         rec.record({"energy": e, "positions": x}, step=step)
    """

    def __init__(self, routes: Mapping[str, Route] | None = None, /, **more_routes: Route):
        self._router = Router(_routes(routes, more_routes))
        self._stores = {}
        self._sinks: dict[str, SyncSink] = {}
        self._closed = False
        try:
            for name, route in self._router.routes.items():
                if not route.lazy:
                    self._open(name, route.store)
        except BaseException as exc:
            _close_error(self._close_sinks(), exc)
            raise

    def _open(self, name: str, store: Any, schema: Schema | None = None) -> None:
        route = self._router.routes[name]
        sink = self._sinks[name] = SyncSink(
            store,
            route.capacity,
            route.policy,
            schema=route.schema if schema is None else schema,
            max_bytes=route.max_bytes,
        )
        self._stores[name] = store
        if sink.resumed is not None:
            self._router.resumed(name, sink.resumed.count)

    def _close_sinks(self) -> list[BaseException]:
        self._closed = True
        errors: list[BaseException] = []
        for sink in reversed(list(self._sinks.values())):
            try:
                sink.close()
            except Exception as err:
                errors.append(err)
        return errors

    def __enter__(self) -> SyncRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            _close_error(self._close_sinks(), exc)

    def close(self) -> None:
        """Drain, commit and close every route's sink. Idempotent.

        Raises
        ------
        WriterError
            A route's store failed during the run (the first such error; the
            others are attached as notes).
        """
        if not self._closed:
            _close_error(self._close_sinks(), None)

    def record(
        self, state: Any, *, step: int | None = None, time: float | None = None
    ) -> tuple[str, ...]:
        """Hand one step to every due route; see :meth:`Recorder.record`.

        Parameters
        ----------
        state, step, time
            As for :meth:`Recorder.record`.

        Returns
        -------
        tuple of str
            The names of the routes that received a frame.

        Raises
        ------
        SchemaError, DTypeError, WriterError
            As for :meth:`Recorder.record`.
        ClosedSinkError
            The recorder is closed.
        """
        if self._closed:
            raise ClosedSinkError("the recorder is closed; it takes no more steps")
        router = self._router
        s, opening = router.begin(state, step, self._sinks)
        for name, store, schema in opening:
            self._open(name, store, schema)
        plan = router.take(state, s)
        for name, fields in plan:
            self._sinks[name].write(fields, step=s, time=time)
            router.received[name] += 1
        return tuple(name for name, _ in plan)

    def flush(self) -> None:
        """Wait until every frame recorded so far is stored, durable and visible.

        Raises
        ------
        WriterError
            A route's store failed (chained to the cause).
        """
        for sink in list(self._sinks.values()):
            sink.flush()

    def statistics(self) -> dict[str, SinkStatistics]:
        """Each open route's :meth:`SyncSink.statistics`, by route name.

        Returns
        -------
        dict
            ``{route: SinkStatistics}``.
        """
        return {name: sink.statistics() for name, sink in self._sinks.items()}
