"""Recorder: one object a simulation loop calls once per step, routing to sinks.

The routing decisions (which routes are due at a step, which fields each one
takes, the static data of the first record, step bookkeeping) live in the
I/O-free :class:`~snapsink._routes.Router`; :class:`Recorder` (async, over :class:`Sink`) and
:class:`SyncRecorder` (ordinary loops, over :class:`SyncSink`) only carry the
frames it plans to their sinks.

Each async sink runs in a task of the recorder's own task group, started with
``TaskGroup.start``: a sink opened lazily (at the first record) is then owned by
that task, not by whatever cancel scope surrounds the ``record`` call, and its
opening is shielded from that scope: a ``record`` cancelled while a route opens
leaves the route open (its store made and opened once), and raises the
cancellation before the step is planned.

An error of a route's sink (at open, record, flush or close), or of its
planning (a schedule's predicate, a selection), keeps its type and gets a note
naming the route; ``flush`` and ``close`` go through every route before raising
the first error, noting the others on it.

A record is committed route by route, as each sink captures its frame (a
``Sink.write`` cancelled or refused captures nothing): the router takes the
step as recorded and counts the frame only for the routes that captured it,
marks a selection's systems stored only where the sink queued it (not where
its policy dropped it), and leaves the step open to a retry for the others
(see :class:`~snapsink._routes.Router`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from ._channeltypes import SinkStatistics
from ._errors import ClosedSinkError, ClosesOnExit, ConfigError
from ._routes import Route, Router, merge_routes
from ._routes import in_route as _in_route
from ._schema import Schema
from ._sink import Sink
from ._store import Resume
from ._sync import SyncSink

__all__ = ["Recorder", "SyncRecorder"]


Errors = list[tuple[str, Exception]]


def _raise_first(errors: Errors, exc: BaseException | None, doing: str = "closing") -> None:
    """Raise the first route error (noting the others on it), or note them all on
    ``exc``, the exception already on its way; ``doing`` names the operation."""
    if not errors:
        return
    if exc is not None:
        for name, err in errors:
            exc.add_note(f"snapsink: {doing} the recorder also failed in route {name!r}: {err!r}")
        return
    first = errors[0][1]
    for name, err in errors[1:]:
        first.add_note(f"snapsink: {doing} route {name!r} also failed: {err!r}")
    raise first


def _note_left(exc: BaseException, opened: list[tuple[str, Any, Resume | None]]) -> None:
    """Note on ``exc``, an error opening the recorder, the new disk stores that
    routes opened before it: closed with no frames, they stay (a store removes
    nothing it made, as a sink does not), and a retry with ``mode="x"`` finds them."""
    for name, store, resumed in opened:
        if resumed is None and hasattr(store, "describe"):
            exc.add_note(
                f"snapsink: route {name!r} had opened {store!r}, a new store, before "
                "this error; it was closed with no frames and stays there: to retry, "
                "open it with mode='w' or mode='a', or remove it"
            )


class _Base:
    _router: Router
    _stores: dict[str, Any]

    @property
    def routes(self) -> Mapping[str, Route]:
        """The routes, by name."""
        return self._router.routes

    @property
    def last_step(self) -> int | None:
        """The step of the last record (``None`` before the first); opening a
        store to append (``mode="a"``), the largest last step of such routes."""
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
        No route, a bad route name, a value that is not a :class:`Route`, or
        a route with ``converged(once=True)`` under ``policy="drop_oldest"``
        (which may drop a frame after its record returned).

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
        self._router = Router(merge_routes(routes, more_routes))
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
                    with _in_route(name):
                        await self._open(name, route.store)
        except BaseException as exc:
            _note_left(
                exc, [(n, self._stores[n], sink.resumed) for n, (sink, _) in self._sinks.items()]
            )
            with anyio.CancelScope(shield=True):
                errors = await self._close_sinks()
            self._state = "closed"
            # The route tasks have ended; the error is raised as is, not grouped.
            await tg.__aexit__(None, None, None)
            _raise_first(errors, exc)
            raise
        return self

    # Deliberate parallel of Sink.__aexit__ (_sink.py): the signature every
    # async context manager has.
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
        _raise_first(errors, exc)
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
            self._router.resumed(name, sink.resumed)

    async def _close_sinks(self) -> Errors:
        errors: Errors = []
        for name, (sink, done) in reversed(list(self._sinks.items())):
            try:
                with _in_route(name):
                    await sink.aclose()
            except Exception as err:
                errors.append((name, err))
            finally:
                done.set()
        return errors

    # Deliberate parallel of SyncRecorder.record: each recorder documents its own
    # method, and the body takes the same steps (awaited here); every decision
    # in it is the Router's.
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
            (0 first; after a resumed store's last step, the largest of the
            resumed routes'). Schedules count in these steps.
        time
            Optional finite, non-decreasing simulation time (on every record or
            on none). Checked with the step, before anything is written, at
            every record (whether a route is due or not).

        Returns
        -------
        tuple of str
            The names of the routes that received a frame.

        Raises
        ------
        SchemaError, DTypeError
            A bad step or time, a missing field, or a frame a sink refuses.
        WriterError
            A route's store failed earlier (chained to the cause).
        ClosedSinkError
            The recorder is not open (use ``async with``) or is closed.

        An error of a route (its sink's, its schedule's predicate's, its
        selection's) carries a note naming the route. Cancelled while a route
        opens (at the first record), the route still opens, once: the
        cancellation is raised before the step is planned, so the same step
        may be recorded again.

        A record that stops before every due route captured its frame (a
        cancellation, a sink's error) takes effect only for the routes that
        captured it: none, and nothing changed (record the step again); some,
        and the step counts as recorded (the next default step is after it)
        while recording the same ``step=`` again, with the same time, goes to
        the other routes only. Nothing of the frame is dropped unannounced.
        """
        if self._state != "open":
            raise ClosedSinkError(
                "the recorder is not open: use it as `async with Recorder(...) as rec:`"
                if self._state == "new"
                else "the recorder is closed; it takes no more steps"
            )
        router = self._router
        s, t, opening = router.begin(state, step, time, self._sinks)
        if opening:
            # Shielded: a cancellation here would close a store just made and
            # opened (an NpyDirectory's mode="x" directory stays behind), so a
            # retry could not open that route again.
            with anyio.CancelScope(shield=True):
                for name, store, schema in opening:
                    with _in_route(name):
                        await self._open(name, store, schema)
            await anyio.lowlevel.checkpoint_if_cancelled()
            s, t = router.check(step, time)  # a route may have resumed a store
        # Deliberate parallel of SyncRecorder.record's loop: the same writes,
        # awaited here, blocking there.
        plan = router.plan(state, s)
        sinks = self._sinks
        done = 0
        try:
            for name, fields in plan:
                sink = sinks[name][0]
                if sink.last_step != s:  # (taken already: see SyncRecorder.record)
                    with _in_route(name):
                        await sink.write(fields, step=s, time=t)
                done += 1
        finally:
            # every write returned, or cancelled or refused: the step is the
            # routes' that captured it (in a finally, with the writes: an
            # interrupt between the last write and the bookkeeping loses none)
            router.stopped(
                s,
                t,
                plan,
                done,
                lambda name: sinks[name][0].last_step,
                lambda name: sinks[name][0]._queued_step,
            )
        return tuple(name for name, _ in plan)

    async def flush(self) -> None:
        """Wait until every frame recorded so far is stored, durable and visible.

        Every route is flushed, even after one fails.

        Raises
        ------
        WriterError
            A route's store failed (chained to the cause; the first such error,
            with a note naming its route and notes for the others).
        """
        errors: Errors = []
        for name, (sink, _) in list(self._sinks.items()):
            try:
                with _in_route(name):
                    await sink.flush()
            except Exception as err:
                errors.append((name, err))
        _raise_first(errors, None, "flushing")

    def statistics(self) -> dict[str, SinkStatistics]:
        """Each open route's :meth:`Sink.statistics`, by route name.

        Returns
        -------
        dict
            ``{route: SinkStatistics}``.
        """
        return {name: sink.statistics() for name, (sink, _) in self._sinks.items()}


class SyncRecorder(ClosesOnExit, _Base):
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
        self._router = Router(merge_routes(routes, more_routes))
        self._stores = {}
        self._sinks: dict[str, SyncSink] = {}
        self._closed = False
        try:
            for name, route in self._router.routes.items():
                if not route.lazy:
                    with _in_route(name):
                        self._open(name, route.store)
        except BaseException as exc:
            _note_left(exc, [(n, self._stores[n], sink.resumed) for n, sink in self._sinks.items()])
            _raise_first(self._close_sinks(), exc)
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
            self._router.resumed(name, sink.resumed)

    def _close_sinks(self) -> Errors:
        self._closed = True
        errors: Errors = []
        for name, sink in reversed(list(self._sinks.items())):
            try:
                with _in_route(name):
                    sink.close()
            except Exception as err:
                errors.append((name, err))
        return errors

    def _close_on_exit(self, exc: BaseException | None) -> None:
        # Not ClosesOnExit's close_noting: every route's close error is noted
        # on the block's exception, not only the first.
        if not self._closed:
            _raise_first(self._close_sinks(), exc)

    def close(self) -> None:
        """Drain, commit and close every route's sink. Idempotent.

        Raises
        ------
        WriterError
            A route's store failed during the run (the first such error; the
            others are attached as notes).
        """
        if not self._closed:
            _raise_first(self._close_sinks(), None)

    # Deliberate parallel of Recorder.record: each recorder documents its own
    # method, and the body takes the same steps (not awaited here); every
    # decision in it is the Router's.
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

        Interrupted (``KeyboardInterrupt`` while a sink waits for room) or
        refused before every due route captured the frame, it takes effect for
        the routes that captured it, as :meth:`Recorder.record` says.
        """
        if self._closed:
            raise ClosedSinkError("the recorder is closed; it takes no more steps")
        router = self._router
        s, t, opening = router.begin(state, step, time, self._sinks)
        if opening:
            for name, store, schema in opening:
                with _in_route(name):
                    self._open(name, store, schema)
            s, t = router.check(step, time)  # a route may have resumed a store
        # Deliberate parallel of Recorder.record's loop (see there).
        plan = router.plan(state, s)
        sinks = self._sinks
        done = 0
        try:
            for name, fields in plan:
                sink = sinks[name]
                # A sink that has this step already took it in a record whose
                # bookkeeping an interrupt cut short: the sinks say what was
                # captured, so a retry of the step completes it
                if sink.last_step != s:
                    with _in_route(name):
                        sink.write(fields, step=s, time=t)
                done += 1
        finally:
            # as in Recorder.record: refused or interrupted (KeyboardInterrupt)
            # too, the step is the routes' that captured it
            router.stopped(
                s,
                t,
                plan,
                done,
                lambda name: sinks[name].last_step,
                lambda name: sinks[name]._sink._queued_step,
            )
        return tuple(name for name, _ in plan)

    def flush(self) -> None:
        """Wait until every frame recorded so far is stored, durable and visible.

        Every route is flushed, even after one fails.

        Raises
        ------
        WriterError
            As for :meth:`Recorder.flush`.
        """
        errors: Errors = []
        for name, sink in list(self._sinks.items()):
            try:
                with _in_route(name):
                    sink.flush()
            except Exception as err:
                errors.append((name, err))
        _raise_first(errors, None, "flushing")

    def statistics(self) -> dict[str, SinkStatistics]:
        """Each open route's :meth:`SyncSink.statistics`, by route name.

        Returns
        -------
        dict
            ``{route: SinkStatistics}``.
        """
        return {name: sink.statistics() for name, sink in self._sinks.items()}
