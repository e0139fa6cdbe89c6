"""The protocol between a sink's consumer and a store.

A store is where frames end up. The sink calls, in this order and never
concurrently (one call at a time per store)::

    resume = store.open()            # claim the location; honour mode="x"/"w"/"a"
    store.prepare(schema, times=...) # once, before the first append (or at close)
    store.append(batch)              # many times; Batch(frames, dropped_steps)
    store.commit()                   # at flush, at close, and when the store likes
    store.close()                    # after the last commit; also after a failure

(A store with ``commits_on_close = True`` is not committed before its close:
its close commits what was appended, see :class:`Store`.)

A store that also has ``describe() -> StoreSpec`` can be written by a writer
process (the default for such stores); the sink's own store object is then
never opened: the writer builds its own from the description.

Each method may be a plain (blocking) function or an ``async def`` coroutine
function (for stores built on async libraries such as zarr-python's async
API). The sink's writer (a thread of its own, or a writer process) calls them
one at a time; coroutines run on the writer's own asyncio loop, the same one
for every call, never on the caller's. ``append`` receives frames whose arrays
may live in reusable staging slots: copy what you keep before returning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._schema import Batch, Schema

__all__ = ["AsyncStore", "Resume", "Store", "StoreSpec"]


@dataclass(frozen=True, slots=True)
class Resume:
    """What an existing store tells a sink that appends to it (``mode="a"``).

    Attributes
    ----------
    schema
        The stored schema; the sink's declared schema must equal it.
    count
        Committed frames already stored.
    last_step, last_time
        Of the last committed frame (``None`` when ``count == 0``); new steps must
        be greater and new times not smaller.
    times
        Whether the stored frames carry times (``None`` when no frame is stored).
    """

    schema: Schema | None
    count: int = 0
    last_step: int | None = None
    last_time: float | None = None
    times: bool | None = None


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """How to build a store again in a writer process: a picklable callable
    (the store's class) and its arguments, never frame data.

    A store that can be written from another process returns one from a
    ``describe()`` method; the sink's writer process calls :meth:`build` and
    then drives the rebuilt store through the :class:`Store` protocol. Paths
    in the arguments should be absolute (the writer may not share a later
    working directory).

    Attributes
    ----------
    factory
        The callable that makes the store (a class importable by module path).
    args, kwargs
        Its positional and keyword arguments.
    """

    factory: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """A new, unopened store."""
        return self.factory(*self.args, **dict(self.kwargs))


@runtime_checkable
class Store(Protocol):
    """A destination for frames, with blocking methods; see the module docstring
    for the call order. (:class:`AsyncStore` is the same with coroutines.)

    The sink also reads these optional members when a store has them:

    - ``describe() -> StoreSpec``: how a writer process rebuilds the store (the
      default writer for stores that have it; see :class:`StoreSpec`);
    - ``check_schema(schema) -> None``: I/O-free, raising
      :class:`~snapsink.DTypeError` (or :class:`~snapsink.SchemaError`) for a
      schema the store cannot hold. The sink calls it in the producer where the
      schema is fixed (at open for a declared schema, at the first ``write``
      for an inferred one), so the refusal reaches that call and changes nothing;
    - ``wants_device: bool``: True when the store keeps frames on the device
      (:class:`~snapsink.GPUBuffer`): the sink then hands it device arrays, and
      writes it from a thread of its own process;
    - ``needs_every_frame: bool``: True when a dropped frame would break the
      store (a many-rank ZarrStore: every rank stores the same steps, and its
      commits are collectives at the same counts): the sink then refuses the
      ``drop_newest`` and ``drop_oldest`` policies when it is built;
    - ``background: bool`` and ``settle(budget)``: a store that leaves work
      running between calls (ZarrStore's commit started in ``append``, which
      runs on the writer's event loop, and that loop runs only during store
      calls) says so with ``background``; while it is true and the writer has
      nothing to store, the writer calls ``settle(budget)`` in slices of a
      millisecond (it takes new frames in between), which lets that work go
      on and end, and raises what it raised;
    - ``commit_due_in() -> float | None``: when the store's own time-based
      commit (``commit_seconds``) falls due, in seconds from now (0 or less:
      due now, also for frames due by count whose commit the store put off);
      None when no frame or dropped step waits for a commit, or the store
      commits on frame counts only and none is due. A plain method (also on an
      :class:`AsyncStore`), I/O-free and cheap: the writer calls it whenever
      it has nothing to store, waits at most that long for new frames, and
      calls ``commit()`` when it is due, so that what was appended becomes
      durable and visible within ``commit_seconds`` even when no more frames
      come (a store checks its timer only in ``append``);
    - ``commits_on_close: bool``: True when ``close()`` (on an open store)
      commits every frame appended, as a commit would, before it releases
      anything. The sink then calls ``close()`` without the final ``commit()``
      before it, so that a store can commit and finalize in one pass (every
      store in snapsink does).
    """

    def open(self) -> Resume | None:
        """Claim the destination. Return ``None`` for a new store, or a
        :class:`Resume` when appending to an existing one.

        Raises
        ------
        StoreExistsError
            When the store exists and the mode is ``"x"``.
        """
        ...

    def prepare(self, schema: Schema, *, times: bool) -> None:
        """Lay out storage for ``schema``; ``times`` says whether frames carry times."""
        ...

    def append(self, batch: Batch) -> None:
        """Store ``batch.frames`` after the frames already appended, and note
        ``batch.dropped_steps``. May commit when the store's own policy says so."""
        ...

    def commit(self) -> None:
        """Make every appended frame durable and visible to readers (commit-last)."""
        ...

    def close(self) -> None:
        """Release resources. Called once, after the final commit (or instead of
        it, with ``commits_on_close``) or after a failure."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """:class:`Store` with coroutine methods (a store built on an async library,
    such as :class:`~snapsink.ZarrStore` on zarr-python's async API). The sink's
    writer awaits them on its own asyncio loop, one at a time, never on the
    caller's loop. The same optional members as :class:`Store`.

    (At run time ``isinstance`` sees only the method names, which the two
    protocols share; the difference is for type checkers and readers.)
    """

    async def open(self) -> Resume | None:
        """See :meth:`Store.open`."""
        ...

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        """See :meth:`Store.prepare`."""
        ...

    async def append(self, batch: Batch) -> None:
        """See :meth:`Store.append`."""
        ...

    async def commit(self) -> None:
        """See :meth:`Store.commit`."""
        ...

    async def close(self) -> None:
        """See :meth:`Store.close`."""
        ...
