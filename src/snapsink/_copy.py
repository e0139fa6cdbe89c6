"""``snapsink.copy``: a finished run into another store, in chunks, bit-exact.

The source (a :class:`~snapsink.Trajectory` from :func:`snapsink.open`, or a
:class:`~snapsink.HostMemory`) is read ``chunk_bytes`` at a time
(:meth:`Trajectory.iter_chunks`) and written through a :class:`~snapsink.SyncSink`
with policy ``"block"``, so nothing is dropped on the way. Memory stays bounded
by about two chunks (the one read, the one the sink still borrows) plus the
sink's channel, whatever the length of the run.

:class:`CarryingStore` is the small Store wrapper this needs: a sink records
only the steps *its own* policy drops, so the source's dropped steps are handed
to the destination by the wrapper. :meth:`GPUBuffer.drain_to
<snapsink.GPUBuffer.drain_to>` uses it too, for the steps the ring evicted.
``snapsink convert`` (the command line) calls :func:`copy`.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from ._checks import positive_int
from ._errors import ConfigError, SchemaError
from ._schema import Batch, Schema
from ._store import Resume, Store, StoreSpec
from ._trajectory import Trajectory

__all__ = ["CHUNK_BYTES", "CarryingStore", "copy", "format_of_path", "fresh_store"]

#: bytes of frames read from the source at a time
CHUNK_BYTES = 64 << 20


class CarryingStore:
    """Forwards the :class:`~snapsink.Store` protocol to ``inner`` and hands it
    ``dropped_steps``, steps lost before the frames reached this sink.

    The steps go in with the first batch that holds frames or, when no frame
    comes, at the commit after :meth:`finish`: a run refused before its first
    frame (a step or schema error) leaves the destination's dropped steps as
    they were. Every method is a coroutine function (the sink calls them on its
    writer's own event loop): an async ``inner`` method is awaited, a blocking
    one runs in a worker thread, as a sink would run it.

    Parameters
    ----------
    inner
        The destination store.
    dropped_steps
        Steps to record in ``inner``'s metadata.
    times
        Whether the source's frames carry times: the frames say so when there
        are any, and this when there are none (an empty run keeps its times).

    Attributes
    ----------
    resume
        What ``inner.open()`` returned (``None`` for an empty store), once opened.
    """

    def __init__(self, inner: Any, dropped_steps: Iterable[int] = (), *, times: bool = False):
        self.inner = inner
        self._times = times
        self.resume: Resume | None = None
        #: ``inner.open()`` succeeded: the destination is this copy's (mode "x")
        self.opened = False
        #: a GPUBuffer destination takes device frames
        self.wants_device = bool(getattr(inner, "wants_device", False))
        check = getattr(inner, "check_schema", None)
        #: the destination's I/O-free schema check, when it has one
        self.check_schema = check if callable(check) else None
        self._dropped = sorted({int(s) for s in dropped_steps})
        self._prepared = False
        self._finished = False

    def __repr__(self) -> str:
        return repr(self.inner)

    @property
    def undelivered(self) -> list[int]:
        """The dropped steps not yet handed to ``inner``."""
        return list(self._dropped)

    def finish(self) -> None:
        """Every frame was written: the final commit may hand the steps over
        even if no frame came. Call before the sink closes."""
        self._finished = True

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

    async def open(self) -> Resume | None:
        """Open ``inner``; remember and return its Resume."""
        self.resume = await self._call(self.inner.open)
        self.opened = True
        return self.resume

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        """Forward to ``inner``, with times when the source has them."""
        await self._call(self.inner.prepare, schema, times=times or self._times)
        self._prepared = True

    async def append(self, batch: Batch) -> None:
        """Forward to ``inner``; the first batch with frames carries the steps."""
        if self._dropped and batch.frames:
            batch = Batch(batch.frames, sorted({*batch.dropped_steps, *self._dropped}))
            self._dropped = []
        await self._call(self.inner.append, batch)

    async def commit(self) -> None:
        """Forward to ``inner``, after the steps when no frame carried them."""
        if self._dropped and self._finished and self._prepared:
            await self._call(self.inner.append, Batch([], self._dropped))
            self._dropped = []
        await self._call(self.inner.commit)

    async def close(self) -> None:
        """Forward to ``inner``."""
        await self._call(self.inner.close)


def fresh_store(store: Any) -> Any:
    """A new, unopened copy of ``store`` when it can describe itself, else ``store``.

    A sink never opens a describable store object itself (its writer process
    builds one from the description), so the same object can be handed to
    several sinks in turn (``mode="a"``); a store written in this process must
    behave the same way.
    """
    describe = getattr(store, "describe", None)
    spec = describe() if callable(describe) else None
    return spec.build() if isinstance(spec, StoreSpec) else store


def _as_trajectory(src: object) -> Trajectory:
    if isinstance(src, Trajectory):
        return src
    read = getattr(src, "trajectory", None)
    if callable(read):
        traj = read()
        if isinstance(traj, Trajectory):
            return traj
    hint = " (drain a GPUBuffer with its drain_to method)" if hasattr(src, "drain_to") else ""
    raise ConfigError(
        f"src: expected a snapsink.Trajectory (snapsink.open(path)) or a HostMemory, "
        f"got {type(src).__name__}{hint}"
    )


def _check_chunk_bytes(chunk_bytes: object) -> int:
    return positive_int(chunk_bytes, "chunk_bytes")


def format_of_path(path: str) -> str:
    """The store a path's name asks for: ``"zarr"`` (``*.zarr``), ``"hdf5"``
    (``*.h5``, ``*.hdf5``), else ``"npy"`` (a directory)."""
    name = path.rstrip("/\\").lower()
    if name.endswith(".zarr"):
        return "zarr"
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    return "npy"


def _destination(dst: object, format: str | None, group: str | None, traj: Trajectory) -> Any:
    """The store to write: ``dst`` itself, or a new one at the path ``dst``
    carrying the source's attrs and static arrays."""
    if isinstance(dst, str | os.PathLike):
        path = os.fspath(dst)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"dst: expected a non-empty path, got {dst!r}")
        if format is None:
            format = format_of_path(path)
        if format not in ("npy", "zarr", "hdf5"):
            raise ConfigError(
                f"format: expected 'npy', 'zarr', 'hdf5' or None, got {format!r}"
            )
        attrs = dict(traj.attrs)
        static = {name: np.asarray(arr) for name, arr in traj.static.items()}
        if format == "npy":
            if group is not None:
                raise ConfigError(
                    f"group={group!r}: an NpyDirectory has no groups; use format='zarr'"
                )
            from .stores.npy import NpyDirectory

            return NpyDirectory(path, mode="x", attrs=attrs, static=static)
        if format == "hdf5":
            from .stores.hdf5 import HDF5Store

            return HDF5Store(path, mode="x", group=group, attrs=attrs, static=static)
        from .stores.zarr import ZarrStore

        return ZarrStore(path, mode="x", group=group, attrs=attrs, static=static)
    if format is not None or group is not None:
        raise ConfigError(
            f"format={format!r}, group={group!r}: these choose the store copy makes at a "
            f"path; dst is a {type(dst).__name__}, which has its own"
        )
    if not isinstance(dst, Store):
        raise ConfigError(
            f"dst: expected a path or a store (snapsink.Store: NpyDirectory, ZarrStore, "
            f"HostMemory, ...), got {type(dst).__name__}"
        )
    return dst


def _group_dirs(dst: object, format: str | None, group: str | None) -> tuple[str, ...]:
    """The directories ``group`` adds under a path ``dst``: a Zarr group's, one
    per level; none for an HDF5 group (it lives inside the file) or a store
    object."""
    if not group or not isinstance(dst, str | os.PathLike):
        return ()
    path = os.fspath(dst)
    assert isinstance(path, str)  # (_destination refused bytes)
    if (format or format_of_path(path)) != "zarr":
        return ()
    return tuple(group.strip("/").split("/"))


def _target(dst: object, group_dirs: tuple[str, ...], store: object) -> str | None:
    """The local path of what ``copy`` writes: the store (or the Zarr group's
    directory) at a path ``dst``, or a store object's ``path`` (NpyDirectory,
    HDF5Store); None when there is none (in memory, a remote store)."""
    if isinstance(dst, str | os.PathLike):
        path = os.fspath(dst)
        assert isinstance(path, str)  # (_destination refused bytes)
        return os.path.join(path, *group_dirs)
    where = getattr(store, "path", None)
    return where if isinstance(where, str) else None


def _check_apart(traj: Trajectory, target: str | None) -> None:
    """Refuse a destination inside the source store, or holding it.

    Raises
    ------
    ConfigError
        Naming both paths.
    """
    source = getattr(traj._source, "location", None)
    if target is None or not isinstance(source, str):
        return
    src, dst = Path(os.path.realpath(source)), Path(os.path.realpath(target))
    if src == dst:
        how = "is the source store"
    elif src in dst.parents:
        how = "is inside the source store"
    elif dst in src.parents:
        how = "holds the source store"
    else:
        return
    raise ConfigError(
        f"dst {target!r} {how} {source!r}: copy would write into the store it reads; "
        "choose a destination outside it"
    )


def frames_per_chunk(traj: Trajectory, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many frames of ``traj`` make about ``chunk_bytes`` (at least 1).

    A ragged field's rows per frame are estimated from the largest of its
    first, middle and last frames.
    """
    n = len(traj)
    if not n:
        return 1
    per_frame = 0
    for name, f in traj.fields.items():
        if f.ragged:
            view = traj[name]
            rows = max(len(view[i]) for i in {0, n // 2, n - 1})
            per_frame += max(rows, 1) * math.prod(f.row_shape) * f.dtype.itemsize
        else:
            per_frame += f.frame_nbytes()
    return max(1, min(n, chunk_bytes // max(per_frame, 1)))


def copy(
    src: Any,
    dst: Any,
    *,
    format: str | None = None,
    group: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    capacity: int = 8,
) -> int:
    """Copy a finished run into a store: frames, steps, times, dropped steps, bit-exact.

    The source is read ``chunk_bytes`` at a time and written through a sink
    with policy ``"block"``: memory stays bounded by about two chunks and the
    sink's channel, whatever the length of the run.

    Parameters
    ----------
    src
        A :class:`~snapsink.Trajectory` (``snapsink.open(path)``) or a
        :class:`~snapsink.HostMemory` (read through its ``trajectory()``, which
        copies its frames once).
    dst
        A path: ``copy`` creates the store there (``mode="x"``: an existing
        store is never overwritten) with the source's ``attrs`` and ``static``
        arrays: an :class:`~snapsink.NpyDirectory`, or a
        :class:`~snapsink.ZarrStore` when ``format="zarr"`` or the path ends in
        ``.zarr``, or an :class:`~snapsink.HDF5Store` when ``format="hdf5"`` or
        the path ends in ``.h5`` or ``.hdf5``. Or a store object (anything implementing
        :class:`~snapsink.Store`), used as built: stores take ``attrs=`` and
        ``static=`` at construction, so give it ``attrs=dict(src.attrs),
        static=dict(src.static)`` to carry them; its ``mode`` says whether it
        may exist (``"a"`` appends after its frames). Never inside the source
        store, nor the source inside it.
    format
        ``"npy"``, ``"zarr"`` or ``"hdf5"`` for a path ``dst``; default: from
        the path.
    group
        The Zarr or HDF5 group to create under a path ``dst`` (default: the
        root).
    chunk_bytes
        About how many bytes of frames to read from the source at a time.
    capacity
        The sink's channel capacity in frames.

    Returns
    -------
    int
        The number of frames copied.

    Raises
    ------
    ConfigError
        For a bad ``src``, ``dst``, ``format``, ``group``, ``chunk_bytes`` or
        ``capacity``; for a ``dst`` inside the source store, or holding it.
    StoreExistsError
        When ``dst`` (a path, or a store of mode ``"x"``) already holds a store.
    SchemaError
        When ``dst`` already holds frames of another schema, or a step at or
        after the source's first stored or dropped step: nothing is written.
    WriterError
        When the destination store failed (chained to the cause).

    Notes
    -----
    A copy that fails part-way (a damaged source, a full disk, an interrupt)
    never leaves a destination that looks complete. When ``copy`` created the
    store at a path ``dst``, it removes what it created (never anything that was
    there before) and the exception's note says so: with a ``group``, a new
    HDF5 file, or the Zarr group with the groups it made on the way (the
    store's root included), each while it holds nothing else. An HDF5 group
    added to a file that was there stays (the note says so: delete it before
    copying again). A store object ``dst`` is never deleted
    from: the exception's note says how many frames, and which steps, were
    written to it before the failure.

    ``copy`` blocks until the destination is committed and closed. From async
    code, run it in a worker thread: ``await anyio.to_thread.run_sync(snapsink.copy,
    src, dst)``.

    Examples
    --------
    >>> mem = snapsink.HostMemory(static={"numbers": z})  # doctest: +SKIP
    >>> ...  # a run into mem
    >>> snapsink.copy(mem, "run")  # doctest: +SKIP
    >>> snapsink.copy(snapsink.open("run"), "run.zarr")  # doctest: +SKIP
    """
    from ._sync import SyncSink

    traj = _as_trajectory(src)
    chunk = frames_per_chunk(traj, _check_chunk_bytes(chunk_bytes))
    dropped = traj.dropped_steps.tolist()
    schema = traj.schema
    if schema is None and dropped:
        raise SchemaError(
            f"src: no frame was ever stored (no schema), so its {len(dropped)} dropped "
            "steps cannot be stored anywhere; nothing was copied"
        )
    store = _destination(dst, format, group, traj)
    group_dirs = _group_dirs(dst, format, group)
    target = _target(dst, group_dirs, store)
    _check_apart(traj, target)
    created = None
    if isinstance(dst, str | os.PathLike):
        created = _Created(os.fspath(dst), group_dirs, None if group_dirs else group)
    carrier = CarryingStore(fresh_store(store), dropped, times=traj.times is not None)
    names = list(traj.fields)
    written = _Written()
    try:
        with SyncSink(carrier, capacity, schema=schema) as sink:
            _check_after(traj, dropped, carrier.resume)
            for part in traj.iter_chunks(chunk):
                steps = part["steps"]
                times = part["times"]
                for i in range(len(steps)):
                    # The chunk's arrays are never modified: lend them (copy=False).
                    sink.write(
                        {name: part[name][i] for name in names},
                        step=int(steps[i]),
                        time=None if times is None else float(times[i]),
                        copy=False,
                    )
                    written.add(int(steps[i]))
            carrier.finish()
    except BaseException as exc:
        # Only a store this copy opened is its own to remove: one whose open
        # failed may be another writer's, made at the path meanwhile.
        _note_failure(exc, created if carrier.opened else None, written, len(traj))
        raise
    return sink.statistics().written


def _check_after(traj: Trajectory, dropped: list[int], resume: Resume | None) -> None:
    """Refuse a source that does not lie wholly after ``dst``'s last frame: its
    first stored step and its first dropped step (a step both stored and
    dropped in ``dst`` would read as both).

    Raises
    ------
    SchemaError
        Naming the step; nothing is written.
    """
    last = None if resume is None else resume.last_step
    if last is None:
        return
    first = int(traj.steps[0]) if len(traj) else None
    if first is not None and first <= last:
        what = f"the source starts at step {first}"
    elif dropped and dropped[0] <= last:
        what = f"the source records step {dropped[0]} as dropped"
    else:
        return
    raise SchemaError(
        f"dst already holds frames up to step {last}, and {what}: copy appends only "
        f"later steps; copy into a new store (or one made with mode='w'); nothing was written"
    )


class _Written:
    """How many frames a copy handed to the sink, and their first and last steps."""

    def __init__(self) -> None:
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None

    def add(self, step: int) -> None:
        self.count += 1
        self.last = step
        if self.first is None:
            self.first = step

    def __str__(self) -> str:
        if not self.count:
            return "no frame"
        steps = f"step {self.first}" if self.count == 1 else f"steps {self.first}..{self.last}"
        return f"{self.count} frame{'s' if self.count > 1 else ''} ({steps})"


class _Created:
    """What ``copy`` creates at a path: the store itself (a directory or file
    that did not exist before the call), or, for an empty directory that did,
    what is put in it. For a Zarr group (``group_dirs``, its directories below
    ``path``), the group's directory, and the groups on the way to it that the
    call made, the store's root included: each only while it holds nothing
    but its ``zarr.json`` (another copy may have added a group beside it by
    now). Never a parent directory of ``path`` the copy made on the way (another
    copy may be writing beside it by now), and nothing that existed before the
    call; only once the copy opened the store (see :func:`copy`), so the store
    is this copy's. An HDF5 group (``file_group``) lives inside its file: it
    goes with a file the call made; in a file that was there, it stays."""

    def __init__(self, path: str, group_dirs: tuple[str, ...] = (), file_group: str | None = None):
        root = os.path.abspath(path)
        #: the store's root, then each group on the way to the one written, last
        self.levels = [os.path.join(root, *group_dirs[:k]) for k in range(len(group_dirs) + 1)]
        self.target = self.levels[-1]
        self.new = [not os.path.lexists(p) for p in self.levels]
        self.was_empty = [
            not new and os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p)
            for p, new in zip(self.levels, self.new, strict=True)
        ]
        #: an HDF5 group the call adds to a file that exists (it cannot remove it)
        self.kept_group = file_group if file_group and not self.new[0] else None

    def remove(self) -> str | None:
        """Remove it; the outermost path removed, or None when nothing was made.

        Raises
        ------
        OSError
            A removal failed.
        """
        target = self.target
        if self.new[-1]:
            if not os.path.lexists(target):
                return None
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
        elif self.was_empty[-1] and os.path.isdir(target):
            for entry in os.scandir(target):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.remove(entry.path)
        else:
            return None
        removed = target
        for k in range(len(self.levels) - 2, -1, -1):  # the groups above it, inwards out
            level = self.levels[k]
            if not (self.new[k] or self.was_empty[k]) or os.listdir(level) != ["zarr.json"]:
                break
            os.remove(os.path.join(level, "zarr.json"))
            if self.new[k]:
                os.rmdir(level)
            removed = level
        return removed


def _note_failure(
    exc: BaseException, created: _Created | None, written: _Written, total: int
) -> None:
    """Say on ``exc`` what the failed copy left: the partial store it created
    at a path removed, or the frames already written to a store it was given."""
    if created is not None and created.kept_group is not None:
        exc.add_note(
            f"copy: {written} of {total} had been written to group "
            f"{created.kept_group!r} of {created.target!r} when it failed; the group "
            "stays (copy removes nothing from a file it did not create) and is not a "
            "complete copy: delete it before copying again"
        )
        return
    if created is not None:
        try:
            removed = created.remove()
        except OSError as err:
            exc.add_note(
                f"copy: {written} of {total} had been written to {created.target!r} when it "
                f"failed, and removing that partial store failed too ({err}): remove it "
                "by hand, it is not a complete copy"
            )
            return
        if removed is not None:
            exc.add_note(
                f"copy: removed {removed!r}, the partial store this call had created "
                f"({written} of {total} had been written to it)"
            )
        return
    if written.count:
        exc.add_note(
            f"copy: {written} of {total} had been written to dst when it failed; dst "
            "keeps what it committed of them (copy never deletes from a store it is "
            f"given): the source's frames after step {written.last} are not in dst"
        )
