"""ZarrStore on object storage (S3): URLs to zarr stores, the conditional create,
and block writes kept in flight many at a time.

Why fsspec's ``FsspecStore`` with s3fs, not obstore: it is the store zarr-python
ships and tests (``FsspecStore.from_url``), ``storage_options`` are the
dictionary every fsspec user already passes (to xarray, Dask, pandas), and
s3fs exposes S3's conditional write (``If-None-Match: *``) as
``pipe_file(..., mode="create")``, which the commit protocol uses to refuse a
second creator. obstore is faster per request, but zarr's ``ObjectStore``
wrapper is marked experimental, and its options are not fsspec's. The
``s3`` extra installs s3fs.

Commit-last without rename or fsync: every PUT of an object store is atomic
(a reader sees the old object or the new one, whole) and durable once it
returns. So the writer PUTs every chunk of a commit, waits for all of them,
and only then PUTs the group's ``zarr.json`` that names the count: a reader
never sees a frame whose chunks are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import weakref
from collections.abc import Awaitable, Mapping
from typing import Any

from zarr.abc.store import Store as ZarrStoreLike

from .._errors import ConfigError, StoreExistsError
from ._zarrio import first_error

__all__ = [
    "Inflight",
    "close_session",
    "create_group_if_absent",
    "file_url_path",
    "is_plain",
    "is_url",
    "refused_options",
    "url_store",
]


def is_url(value: object) -> bool:
    """True for a string of the form ``scheme://...`` other than ``file://``."""
    if not isinstance(value, str) or "://" not in value:
        return False
    scheme = value.split("://", 1)[0]
    return scheme.isidentifier() and scheme != "file"


def file_url_path(value: str) -> str:
    """The local path a ``file://`` URL names (``file:///scratch/run.zarr``:
    ``/scratch/run.zarr``), as fsspec's local filesystem reads it; any other
    string as it is. zarr's LocalStore takes no URL: it made a directory
    ``file:`` in the working directory."""
    return value[len("file://") :] if value.startswith("file://") else value


def is_plain(value: object) -> bool:
    """True for plain data: str, int, float, bool, None, and lists, tuples and
    str-keyed dicts of them (storage options a writer process can be sent)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def url_store(
    url: str,
    storage_options: Mapping[str, Any] | None,
    *,
    read_only: bool,
    connections: int | None = None,
) -> ZarrStoreLike:
    """A zarr ``FsspecStore`` for ``url`` (``s3://bucket/run.zarr``).

    ``connections``: for S3, the HTTP connections of the client's pool
    (botocore's ``max_pool_connections``, 10 unless set), so that that many
    PUTs can be in flight; options that set it themselves win.

    Raises
    ------
    ConfigError
        ``storage_options`` is not a mapping, or fsspec has no filesystem for
        the URL's scheme (for ``s3://``: s3fs is missing, ``pip install
        'snapsink[s3]'``).
    """
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise ConfigError(
            f"storage_options: expected a dict of fsspec options, got "
            f"{type(storage_options).__name__}"
        )
    from zarr.storage import FsspecStore

    options = dict(storage_options or {})
    if connections is not None and url.split("://", 1)[0] in ("s3", "s3a"):
        config = options.get("config_kwargs")
        if config is None or isinstance(config, Mapping):
            options["config_kwargs"] = {"max_pool_connections": connections, **(config or {})}
    try:
        store = FsspecStore.from_url(url, storage_options=options, read_only=read_only)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        hint = (
            "pip install 'snapsink[s3]' (s3fs)"
            if scheme in ("s3", "s3a")
            else (f"install the fsspec implementation for {scheme!r}")
        )
        raise ConfigError(
            f"store {url!r}: no filesystem for the scheme {scheme!r} ({exc}); {hint}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"store {url!r}: fsspec refused the storage_options: {exc}") from exc
    if read_only:
        # A reader's store runs on zarr's own loop and nobody closes it: close the
        # HTTP session there when the store goes (s3fs does the same for its
        # synchronous filesystems). A writer closes its own (close_session).
        weakref.finalize(store, _close_on_zarr_loop, store.fs)
    return store


def refused_options(exc: BaseException, where: object) -> ConfigError | None:
    """A ConfigError for the ``TypeError`` a filesystem raises when it builds
    its session from ``storage_options`` it does not take (s3fs builds it at
    the first request, after ``url_store`` made the store: a misspelled
    option read as a corrupt group); None for any other error."""
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
        return ConfigError(
            f"store {where}: the filesystem refused the storage_options when it "
            f"connected ({exc}); check their names against the filesystem's (s3fs: "
            "key, secret, endpoint_url, client_kwargs, config_kwargs, ...)"
        )
    return None


def _close_on_zarr_loop(fs: Any) -> None:
    creator = getattr(fs, "_s3creator", None)
    close = getattr(type(fs), "close_session", None)
    if creator is None or close is None:
        return
    from zarr.core.sync import _get_loop

    with contextlib.suppress(Exception):
        close(_get_loop(), creator)


async def close_session(store: ZarrStoreLike) -> None:
    """Close the HTTP session of an s3fs filesystem made for a URL (writer side)."""
    fs = getattr(store, "fs", None)
    creator = getattr(fs, "_s3creator", None)
    if creator is None:
        return
    fs._s3creator = None  # type: ignore[union-attr]
    fs._s3 = None  # type: ignore[union-attr]
    if hasattr(creator, "__aexit__"):
        await creator.__aexit__(None, None, None)
    elif hasattr(creator, "clear"):  # s3fs's bucket-region cache of clients
        await creator.clear()


def _s3_fs(store: ZarrStoreLike) -> Any:
    """The s3fs filesystem under an ``FsspecStore``, or None."""
    fs = getattr(store, "fs", None)
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return fs if "s3" in protocols and hasattr(fs, "_pipe_file") else None


async def create_group_if_absent(
    store: ZarrStoreLike, path: str, attributes: Mapping[str, Any], who: str
) -> bool:
    """Create the group's ``zarr.json`` with a conditional PUT (S3 ``If-None-Match``).

    Returns
    -------
    bool
        True when it was created here; False when the store offers no
        conditional write (the caller creates the group through zarr).

    Raises
    ------
    StoreExistsError
        The object already exists: another writer created the group first.
    """
    fs = _s3_fs(store)
    if fs is None or "mode" not in inspect.signature(fs._pipe_file).parameters:
        return False  # no conditional write (s3fs before mode="create")
    root = str(getattr(store, "path", "")).rstrip("/")
    key = "/".join(p for p in (root, path, "zarr.json") if p)
    doc = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}
    try:
        await fs._pipe_file(key, json.dumps(doc, indent=2).encode(), mode="create")
    except FileExistsError as exc:
        raise StoreExistsError(
            f"{who}: a zarr node appeared at group {path or '/'!r} while this store was "
            "creating it (another writer?); the conditional PUT was refused"
        ) from exc
    return True


class Inflight:
    """Block writes through zarr's API, at most ``limit`` in flight at once.

    ``submit`` waits for a free slot, then starts the write and returns: the
    writes of one batch overlap those of the next, so an object store sees
    many PUTs at a time, not one batch's worth. ``drain`` waits for every one
    (a commit calls it before the metadata PUT) and raises the first failure.
    A failure also surfaces at the next ``submit``.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self.peak = 0  # most writes in flight at once, for benchmarks

    async def submit(self, aw: Awaitable[None]) -> None:
        """Start ``aw`` once fewer than ``limit`` writes are in flight.

        Raises
        ------
        Exception
            The first failure of an earlier write (``aw`` is then not started).
        """
        if self._sem is None:  # made on the loop that runs the writes
            self._sem = asyncio.Semaphore(self.limit)
        try:
            self._raise_failed()
            await self._sem.acquire()
        except BaseException:
            _close(aw)
            raise
        if self._errors:  # one failed while this one waited
            self._sem.release()
            _close(aw)
            self._raise_failed()
        task = asyncio.ensure_future(self._run(aw))
        self._tasks.add(task)
        self.peak = max(self.peak, len(self._tasks))

    async def _run(self, aw: Awaitable[None]) -> None:
        try:
            await aw
        except Exception as exc:
            self._errors.append(exc)
        finally:
            assert self._sem is not None
            self._sem.release()
            self._tasks.discard(asyncio.current_task())

    async def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for every write in flight; raise the first failure."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if raise_errors:
            self._raise_failed()

    def _raise_failed(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise first_error(errors)


def _close(aw: Awaitable[None]) -> None:
    close = getattr(aw, "close", None)
    if callable(close):
        close()  # a coroutine never started: no "never awaited" warning
