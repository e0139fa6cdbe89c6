"""The protocol between a sink's consumer and a store.

A store is where frames end up. The sink calls, in this order and never
concurrently (one call at a time per store)::

    resume = store.open()            # claim the location; honour mode="x"/"w"/"a"
    store.prepare(schema, times=...) # once, before the first append (or at close)
    store.append(batch)              # many times; Batch(frames, dropped_steps)
    store.commit()                   # at flush, at close, and when the store likes
    store.close()                    # after the last commit; also after a failure

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

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._schema import Batch, Schema

__all__ = ["Resume", "Store", "StoreSpec"]


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
    """A destination for frames; see the module docstring for the call order.

    Methods may be blocking functions or coroutine functions (awaited on the
    writer's own asyncio loop); the sink's writer calls them one at a time.

    Optional: ``check_schema(schema) -> None``, I/O-free, raising
    :class:`~snapsink.DTypeError` (or :class:`~snapsink.SchemaError`) for a
    schema the store cannot hold. The sink calls it in the producer where the
    schema is fixed (at open for a declared schema, at the first ``write`` for
    an inferred one), so the refusal reaches that call and changes nothing.
    """

    def open(self) -> Resume | Awaitable[Resume | None] | None:
        """Claim the destination. Return ``None`` for a new store, or a
        :class:`Resume` when appending to an existing one.

        Raises
        ------
        StoreExistsError
            When the store exists and the mode is ``"x"``.
        """
        ...

    def prepare(self, schema: Schema, *, times: bool) -> Awaitable[None] | None:
        """Lay out storage for ``schema``; ``times`` says whether frames carry times."""
        ...

    def append(self, batch: Batch) -> Awaitable[None] | None:
        """Store ``batch.frames`` after the frames already appended, and note
        ``batch.dropped_steps``. May commit when the store's own policy says so."""
        ...

    def commit(self) -> Awaitable[None] | None:
        """Make every appended frame durable and visible to readers (commit-last)."""
        ...

    def close(self) -> Awaitable[None] | None:
        """Release resources. Called once, after the final commit or a failure."""
        ...

