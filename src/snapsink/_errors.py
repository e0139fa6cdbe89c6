"""Exceptions raised by snapsink.

Every exception derives from :class:`SnapsinkError`; bad input also derives from
the idiomatic standard-library class so ``except ValueError`` keeps working::

    SnapsinkError
    ├── SchemaError (ValueError)          bad frame: names, shapes, steps, times
    │   └── DTypeError (TypeError)        a dtype that cannot be stored safely
    ├── ConfigError (ValueError)          bad argument: capacity, policy, mode, names
    ├── WouldBlock (anyio.WouldBlock)     ``write_nowait`` found no room
    ├── ClosedSinkError (anyio.ClosedResourceError)   write after close
    ├── WriterError                       the store failed; ``__cause__`` holds why
    ├── SpillError (OSError)              a spill write failed; that frame was not taken
    ├── StoreStateError (RuntimeError)    a store's methods called out of order
    ├── StoreExistsError (FileExistsError)            ``mode="x"`` on an existing store
    │   └── StoreLockedError              another writer holds the store (one writer per store)
    ├── StoreNotFoundError (FileNotFoundError)        reading or appending a missing store
    ├── FormatError (ValueError)          a store on disk that is corrupt or foreign
    ├── DeviceError (RuntimeError)        CuPy/CUDA missing or misused
    └── WrongThreadError (RuntimeError)   the sync facade called from its own loop thread
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Self

import anyio

__all__ = [
    "ClosedSinkError",
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "FormatError",
    "SchemaError",
    "SnapsinkError",
    "SpillError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreStateError",
    "WouldBlock",
    "WriterError",
    "WrongThreadError",
]


class SnapsinkError(Exception):
    """Base class of every exception snapsink raises."""


class SchemaError(SnapsinkError, ValueError):
    """A frame does not match the schema (names, shapes, step order, time)."""


class DTypeError(SchemaError, TypeError):
    """A field's dtype cannot be stored without loss in the declared dtype."""


class ConfigError(SnapsinkError, ValueError):
    """An argument is invalid: capacity, policy, mode, a field or group name."""


class WouldBlock(SnapsinkError, anyio.WouldBlock):
    """``write_nowait`` would have to wait for room in the channel."""


class ClosedSinkError(SnapsinkError, anyio.ClosedResourceError):
    """The sink was closed (by its owner) and takes no more frames."""


class WriterError(SnapsinkError):
    """The store failed while writing; the original exception is ``__cause__``.

    Raised at the producer's next ``write``, at ``flush`` and at close, until the
    sink is closed.
    """


class SpillError(SnapsinkError, OSError):
    """Writing a frame to the spill directory failed (a full or read-only disk).

    The frame was not taken: nothing of it is on disk, it is not counted, and its
    step can be written again (unless another thread's frame was accepted after
    it; the message says which). The sink stays usable. ``errno`` and
    ``__cause__`` hold the operating system's error.
    """


class StoreStateError(SnapsinkError, RuntimeError):
    """A store's methods were called out of order: ``open`` twice, ``append``
    before ``prepare``, anything after ``close`` or after a failed write.

    The sink never does this; a program driving a store by hand may.
    """


class StoreExistsError(SnapsinkError, FileExistsError):
    """A store already exists where ``mode="x"`` asked to create one."""


class StoreLockedError(StoreExistsError):
    """Another writer holds the store: a store has one writer at a time.

    Raised where a second writer opens a store, in any mode and in any process,
    while the first still writes it. The holder is named by its pid where the
    lock file records it. The lock is the operating system's (``flock``): it is
    released when its holder closes the store or dies, so a crash never leaves
    a store locked.

    Attributes
    ----------
    store
        The store that is held (its path), or ``None``.
    pid
        The pid of the writer holding it, or ``None`` when unknown.
    """

    def __init__(self, message: str, *, store: str | None = None, pid: int | None = None):
        super().__init__(message)
        self.store = store
        self.pid = pid


class StoreNotFoundError(SnapsinkError, FileNotFoundError):
    """No store exists at the path given for reading or appending."""


class FormatError(SnapsinkError, ValueError):
    """A store on disk is corrupt, foreign, or written by an unknown version."""


class DeviceError(SnapsinkError, RuntimeError):
    """CuPy or a CUDA device is needed and missing, or was misused."""


class WrongThreadError(SnapsinkError, RuntimeError):
    """The sync facade was called from its own event-loop thread, or an async
    sink was made to wait on an event loop other than the one that opened it
    (either would never return)."""


def close_noting(close: Callable[[], object], exc: BaseException | None, what: str) -> None:
    """Call ``close`` as a ``with`` block ends: its error is raised when the
    block raised none, else noted on the block's exception, which it never hides.

    ``what`` names the thing closed in the note (``"the sink"``).
    """
    try:
        close()
    except BaseException as err:
        if exc is None:
            raise
        exc.add_note(f"snapsink: closing {what} also failed: {err!r}")


class ClosesOnExit:
    """Gives ``__enter__``/``__exit__`` to a class with a ``close()``: leaving
    the ``with`` block closes it through :func:`close_noting`.

    One copy of the idiom for :class:`~snapsink.SyncSink`, the ASE
    ``Recording``, the py-pde ``SnapsinkTracker`` and
    :class:`~snapsink.SyncRecorder`. A subclass names what it closes in
    ``_closing`` (``"the sink"``), for the note on the block's exception.
    """

    __slots__ = ()

    _closing: ClassVar[str]

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_on_exit(exc)

    def _close_on_exit(self, exc: BaseException | None) -> None:
        """Close as the block ends; ``exc`` is the block's exception, if any."""
        close_noting(self.close, exc, self._closing)
