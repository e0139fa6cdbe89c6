"""Many ranks, one Zarr trajectory: the store behind ``ZarrStore(path, comm=...)``.

Every rank of a parallel run drives its own sink with its own store object;
together they write one group. Who writes what (see :mod:`._zarrparplan`):

- a decomposed field (one in ``region``): each rank writes only the chunks of
  its block; the array has the global shape;
- a ragged field: each rank writes arrays of its own, ``<name>.rank<r>`` and
  ``<name>.rank<r>.offsets``; the reader concatenates frame ``i`` over ranks;
- every other field, ``steps`` and ``times``: rank 0 alone.

Why this commit protocol: a reader trusts only the group's committed count, so
the count must never name a frame that some rank has not made durable. Each
rank drains and fsyncs its chunks (the block writer's machinery), then the
ranks exchange ``(frames, last step, error)`` over the store's duplicate of the
communicator; the committed count is the minimum, and a rank that disagrees
(another count or step: the collectives are misaligned) or failed makes every
rank fail alike. Each rank then gives its own arrays the committed shape, and
only after a second exchange does rank 0 write the group's metadata: a rank
that dies before that leaves the previous count in place. The collectives run
in the writer thread (blocking calls in worker threads of the writer's loop).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread
import numpy as np

from .._comm import (
    COMMIT,
    PREPARE,
    PUBLISH,
    SHOW,
    Communicator,
    Misaligned,
    agree,
    as_communicator,
    together,
)
from .._errors import ConfigError, FormatError, SchemaError, StoreStateError
from .._schema import Batch, Frame, Schema
from .._store import Resume
from ._zarrclaim import check_not_removed
from ._zarrcolumns import Column, Run
from ._zarrgroup import ARRAY_CONFIG, open_group
from ._zarrobject import is_url
from ._zarrparplan import (
    PARALLEL_KEY,
    FieldLayout,
    check_chunks,
    check_region,
    global_schema,
    local_schema,
    plan_layout,
    rank_array,
)
from ._zarrplan import (
    META_KEY,
    ArrayPlan,
    Block,
    RowBuffer,
    default_chunk_rows,
    parse_meta,
    plan_arrays,
)
from .zarr import ZarrStore

__all__ = ["ParallelZarrStore"]


def _schema_key(schema: Schema) -> int:
    """A 56-bit digest of ``schema``: equal on every rank (min == max over ranks)
    only when the ranks' schemas are (hash() of a str differs between processes)."""
    text = json.dumps(schema.to_json()).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "little")


@dataclass(slots=True)
class _Pick:
    """Where a column's rows come from: ``kind`` is ``steps``, ``times``,
    ``field`` (``sel``: the chunk's part of the frame, None for all of it) or
    ``ragged`` (``offsets``: the column of its offsets)."""

    kind: str
    name: str = ""
    sel: tuple[slice, ...] | None = None
    offsets: Column | None = None


@dataclass(frozen=True, slots=True)
class _Array:
    """One array of a many-rank group: its plan and chunk shape, what it holds
    (``steps``, ``times``, ``field``, ``decomposed``, ``ragged``, ``offsets``), its
    field, and the rank that writes it (None: every rank, its own chunks)."""

    plan: ArrayPlan
    chunks: tuple[int, ...]
    kind: str
    field: str
    owner: int | None


class ParallelZarrStore(ZarrStore):
    """:class:`~snapsink.ZarrStore` for one rank of many (``comm`` given).

    Built by ``ZarrStore(path, comm=comm, region=..., chunks=...)``; see the
    ZarrStore docstring and ``docs/guides/many-ranks.md``.
    """

    #: a dropped frame would leave the ranks storing different steps: the sink
    #: refuses the drop policies for this store (see the Store protocol)
    needs_every_frame = True

    def __init__(
        self,
        store: str | os.PathLike[str],
        mode: str = "x",
        *,
        comm: object,
        region: Mapping[str, Any] | None = None,
        chunks: Mapping[str, tuple[int, ...]] | None = None,
        commit_seconds: float | None = None,
        shard_frames: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        if is_url(store) or storage_options is not None:
            raise ConfigError(
                f"comm: many ranks write to a local (or shared) filesystem path only; "
                f"object storage ({store!r}) stays single-writer: drop comm, or write a path"
            )
        if commit_seconds is not None:
            raise ConfigError(
                "commit_seconds: with comm, ranks commit together on frame counts only "
                f"(commit_every) and at flush/close; got {commit_seconds!r}, expected None"
            )
        if shard_frames is not None:
            raise ConfigError(f"shard_frames: not supported with comm, got {shard_frames!r}")
        self._region = check_region(region)
        self._chunk_request = check_chunks(chunks, self._region)
        super().__init__(store, mode, commit_seconds=None, **kwargs)
        if self._root is None:
            raise ConfigError(f"comm: expected a path (a local directory), got {store!r}")
        self._comm: Communicator = as_communicator(comm)  # collective: Dup
        self._rank = self._comm.rank
        self._layouts: dict[str, FieldLayout] = {}
        self._picks: dict[str, _Pick] = {}
        #: arrays whose shape this rank sets at a commit: (array, row shape, column)
        self._owned: list[tuple[Any, tuple[int, ...], Column]] = []
        self._loaded = False
        self._last_step: int | None = None
        #: every step (and time) this rank appended since its open, in order,
        #: as one number the ranks compare at each commit (see _fingerprint)
        self._steps_seen = 0
        self._failure = ""  # why this rank's writes failed, for the other ranks

    #: every rank commits at the same counts, together: never in the background
    _commits_in_background = False

    def describe(self) -> None:
        """None: a store holding a communicator is written from a thread of its
        own process (``writer="auto"`` picks the thread)."""
        return None

    def __repr__(self) -> str:
        return f"<ZarrStore {self._root} rank {self._rank}/{self._comm.size} mode={self._mode!r}>"

    # -- collectives ------------------------------------------------------------
    async def _together(self, step: Callable[..., Awaitable[Any]] | None, *args: Any) -> list[Any]:
        """Every rank runs ``step``; see :func:`snapsink._comm.together`."""
        return await together(self._comm, step, *args)

    async def _agree(
        self,
        phase: str,
        step: Callable[..., Awaitable[tuple[int, int | None] | None]],
        *args: Any,
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """An exchange after the open (prepare's, a commit's); see
        :func:`snapsink._comm.agree`."""
        return await agree(self._comm, step, *args, phase=phase)

    # -- Store protocol -----------------------------------------------------------
    async def open(self) -> Resume | None:
        """Collective: agree on the layout, rank 0 claims the group (the single-writer
        lock, mode, static arrays), every rank then loads its columns to resume.

        Raises
        ------
        ConfigError
            Blocks that do not tile a field, a misaligned chunk, or resuming a
            group written by another number of ranks or other regions.
        """
        if self._state != "new":
            raise StoreStateError(f"{self!r}: open() called twice")
        try:
            shared = await self._together(self._plan)
            self._layouts = shared[0]
            attrs = (await self._together(self._claim))[0]
            resume: Resume | None = (await self._together(self._join, attrs))[self._rank]
            return resume
        except BaseException:
            self._state = "closed"
            await self._io.stop()
            self._release_lock()
            self._comm.free()
            raise

    async def _plan(self) -> dict[str, FieldLayout]:
        # One store for every rank: a rank given another path (a relative one
        # in another directory), group or mode wrote its blocks into that
        # store, and rank 0 committed the trajectory without them (fill values)
        assert self._root is not None
        real = await anyio.to_thread.run_sync(os.path.realpath, self._root)
        mine = (real, self._path, self._mode)
        # one allgather for the store, the options and the regions
        every = await anyio.to_thread.run_sync(
            self._comm.allgather, (mine, self._same_options(), self._region)
        )
        stores = [store for store, _, _ in every]
        if any(other != stores[0] for other in stores):
            shown = "; ".join(
                f"rank {r}: {path!r}, group {group or '/'!r}, mode {mode!r}"
                for r, (path, group, mode) in enumerate(stores)
            )
            raise ConfigError(
                f"{self!r}: the ranks open different stores ({shown}); every rank must "
                "give the same path, group and mode: nothing was written"
            )
        for name in self._same_options():
            values = [options[name] for _, options, _ in every]
            if any(v != values[0] for v in values):
                shown = "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                raise ConfigError(
                    f"{self!r}: {name}: the ranks give different values ({shown}); every "
                    f"rank must give the same {name}: nothing was written"
                )
        regions = [region for _, _, region in every]
        return plan_layout(regions, self._chunk_request)

    def _same_options(self) -> dict[str, Any]:
        """The options every rank must give alike: ``commit_every`` decides when
        a rank commits (ranks at other counts disagree at their first commit,
        losing every frame), ``chunks`` which chunks each rank writes. The
        others are rank 0's: it creates the arrays (``chunk_frames``,
        ``compressors``) and writes ``attrs`` and ``static``."""
        return {"commit_every": self._commit_every, "chunks": self._chunk_request}

    async def _claim(self) -> dict[str, Any] | None:
        """Rank 0: ZarrStore's open (lock, mode, group, static, metadata); its attrs."""
        if self._rank != 0:
            return None
        await super().open()
        return dict(self._group.attrs)

    async def _open_existing(self) -> Resume | None:
        """Rank 0, ``mode="a"``: the group's metadata, checked against this run's
        ranks and regions (columns are loaded by every rank in :meth:`_join`)."""
        self._group = await open_group(self._store, self._path, repr(self))
        attrs = dict(self._group.attrs)
        if META_KEY not in attrs:
            raise FormatError(f"{self!r}: the group is not a snapsink store; use mode='w'")
        par = attrs.get(PARALLEL_KEY)
        if not isinstance(par, dict):
            raise ConfigError(
                f"{self!r}: mode='a': the group was written by one writer, not by ranks; "
                "resume it without comm, or use mode='w'"
            )
        if par.get("ranks") != self._comm.size:
            raise ConfigError(
                f"{self!r}: mode='a': the group was written by {par.get('ranks')} ranks; "
                f"expected the same number to resume, got {self._comm.size}"
            )
        if par.get("fields") != self._layout_json():
            raise ConfigError(
                f"{self!r}: mode='a': the ranks' regions differ from the stored ones "
                f"(stored {par.get('fields')}, got {self._layout_json()})"
            )
        self._meta, user = parse_meta(attrs, repr(self))
        self._attrs = {**user, **self._attrs}
        return None

    async def _join(self, attrs: dict[str, Any]) -> Resume | None:
        """Every rank: the group and the stored metadata; the columns to resume."""
        if self._rank != 0:
            self._group = await open_group(self._store, self._path, repr(self))
            self._meta, user = parse_meta(attrs, repr(self))
            self._attrs = {**user, **self._attrs}
            self._state = "open"
        self._meta.closed = False
        meta = self._meta
        self._frames = meta.count
        if meta.schema is None:
            return None
        times = bool(meta.times)
        await self._load(meta.schema, times, meta.count, fresh=False)
        self._loaded = True
        schema = local_schema(meta.schema, self._layouts, self._rank)
        if not meta.count:
            return Resume(schema=schema, count=0)
        last_step = int(await self._last("steps", meta.count))
        self._last_step = last_step
        last_time = float(await self._last("times", meta.count)) if times else None
        return Resume(schema, meta.count, last_step, last_time, times)

    async def _last(self, name: str, count: int) -> Any:
        arr = await self._group.getitem(name)
        return np.asarray(await arr.getitem(slice(count - 1, count)))[0]

    async def prepare(self, schema: Schema, *, times: bool) -> None:
        """Collective: check every rank's frames against its region and the stored
        schema; rank 0 creates the arrays; every rank opens its columns; commit."""
        self._check_usable()
        checked: list[Schema] = []

        async def check() -> tuple[int, int]:
            checked.append(await self._check_frames(schema, times))
            return int(times), _schema_key(checked[0])

        # An allreduce, as every exchange after the open: a rank whose first
        # write was refused meets the others here from its close (a commit),
        # and every rank fails alike instead of waiting in another collective.
        try:
            lo, hi = await self._agree(PREPARE, check)
        except Misaligned:
            self._state = "broken"
            raise
        glob = checked[0]
        if lo[0] != hi[0]:
            raise SchemaError(
                f"{self!r}: the ranks' first frames disagree on times (some carry a "
                "time, some do not); every rank must write the same steps and times"
            )
        if lo[1] != hi[1]:
            shown = await anyio.to_thread.run_sync(self._comm.allgather, repr(glob))
            raise SchemaError(
                f"{self!r}: the ranks' first frames make different schemas: "
                + "; ".join(f"rank {r}: {g}" for r, g in enumerate(shown))
            )
        if self._loaded and self._meta.times == times:
            return
        await self._together(self._create, glob, times)
        await self._together(self._load, glob, times, 0, True)
        self._meta.schema = glob
        self._meta.times = times
        await self.commit()

    async def _check_frames(self, schema: Schema, times: bool) -> Schema:
        self.check_schema(schema)
        glob = global_schema(schema, self._layouts, self._rank)
        stored = self._meta.schema
        if stored is not None and stored != glob:
            raise SchemaError(
                f"{self!r}: the group holds frames of {stored!r}; rank {self._rank}'s frames "
                f"make {glob!r} (append with the same schema, or use mode='w')"
            )
        if stored is not None and self._meta.count and self._meta.times != times:
            raise SchemaError(f"{self!r}: the stored frames and the new ones disagree on times")
        return glob

    def _plans(self, schema: Schema, times: bool) -> list[_Array]:
        """Every array of the group: rank 0's as a single writer lays them out,
        decomposed fields chunked along the rank boundaries, and each rank's own
        arrays of each ragged field."""
        out: list[_Array] = []
        for plan in plan_arrays(schema, times=times, chunk_frames=self._chunk_frames):
            base = plan.name.removesuffix(".offsets")
            if base in schema and schema[base].ragged:
                kind = "offsets" if plan.name != base else "ragged"
                for r in range(self._comm.size):
                    name = rank_array(base, r, offsets=kind == "offsets")
                    dims = plan.dims if kind == "offsets" else (f"{base}_rank{r}_row",
                                                                  *plan.dims[1:])  # fmt: skip
                    out.append(_Array(replace(plan, name=name, dims=dims), plan.chunks,
                                      kind, base, r))  # fmt: skip
            elif plan.name in self._layouts:
                spatial = self._layouts[plan.name].chunk
                nbytes = math.prod(spatial) * plan.dtype.itemsize
                frames = self._chunk_frames or default_chunk_rows(nbytes)
                plan = replace(plan, chunk=frames)
                out.append(_Array(plan, (frames, *spatial), "decomposed", plan.name, None))
            else:
                kind = plan.name if plan.name in ("steps", "times") else "field"
                out.append(_Array(plan, plan.chunks, kind, plan.name, 0))
        return out

    async def _create(self, schema: Schema, times: bool) -> None:
        """Rank 0: create (replacing) the empty arrays."""
        if self._rank != 0:
            return
        for a in self._plans(schema, times):
            await self._group.create_array(
                a.plan.name,
                shape=(0, *a.plan.row_shape),
                dtype=a.plan.dtype,
                chunks=a.chunks,
                compressors=self._compressors,
                dimension_names=a.plan.dims,
                overwrite=True,
                config=ARRAY_CONFIG,
            )

    async def _load(self, schema: Schema, times: bool, count: int, fresh: bool) -> None:
        """This rank's columns over the stored arrays holding ``count`` frames
        (``fresh``: just created, empty), each with its trailing partial block
        read back (to resume)."""
        self._columns, self._picks, self._owned = {}, {}, []
        offsets: dict[str, Column] = {}
        rows: dict[str, int] = {}  # a ragged field's rows, from its last offset
        for a in self._plans(schema, times):
            if a.owner is not None and a.owner != self._rank:
                continue  # another rank's
            name = a.plan.name
            arr = (await self._group.getitem(name)).with_config(ARRAY_CONFIG)
            if a.kind == "decomposed":
                layout = self._layouts[name]
                for grid, sel in layout.chunks_of(self._rank):
                    key = f"{name}@{','.join(map(str, grid))}"
                    self._columns[key] = await self._column(a.plan, arr, count, grid, sel, fresh)
                    self._picks[key] = _Pick("field", name, sel)
                if self._rank == 0:
                    self._owned.append((arr, layout.shape, self._columns[key]))
                continue
            if a.kind == "offsets":
                length = 0 if fresh else count + 1
                if not fresh:
                    last = np.asarray(await arr.getitem(slice(count, count + 1)))
                    rows[a.field] = int(last[0])
            elif a.kind == "ragged":
                length = rows.get(a.field, 0)
            else:
                length = count
            col = await self._column(a.plan, arr, length, (), None, fresh)
            self._columns[name] = col
            self._owned.append((arr, a.plan.row_shape, col))
            if a.kind == "offsets":
                offsets[a.field] = col
                if fresh:  # offsets start at 0
                    await self._io.write([(col, b) for b in col.buf.push(np.zeros(1, np.int64))])
            else:
                self._picks[name] = _Pick(a.kind, a.field, None, offsets.get(a.field))

    async def _column(
        self,
        plan: ArrayPlan,
        arr: Any,
        length: int,
        grid: tuple[int, ...],
        sel: tuple[slice, ...] | None,
        fresh: bool,
    ) -> Column:
        """A column over ``arr`` holding ``length`` rows; for a chunk of a
        decomposed field (``grid``), rows are that chunk's part of each frame.
        A field's rows go in place into their chunk files when the chunks are
        the rows' own bytes (as ZarrStore's, :func:`._zarrio.writes_in_place`);
        otherwise the trailing partial block is read back into its buffer."""
        row_shape = plan.row_shape
        if sel is not None:
            row_shape = tuple(s.stop - s.start for s in sel)
        chunk = int(arr.chunks[0])
        actual = ArrayPlan(plan.name, plan.dtype, row_shape, chunk, None, plan.dims)
        empty = RowBuffer(plan.dtype, row_shape, chunk)
        field = plan.name not in ("steps", "times") and not plan.name.endswith(".offsets")
        in_place = field and ".rank" not in plan.name
        col = Column(actual, arr, empty, self._root, in_place=in_place, length=length, grid=grid)
        if col.direct is not None:
            return col
        start = length - length % chunk
        tail = None
        if length > start and not fresh:
            where = (slice(start, length),)
            if sel is not None:
                where += tuple(slice(g * (s.stop - s.start), (g + 1) * (s.stop - s.start))
                               for g, s in zip(grid, sel, strict=True))  # fmt: skip
            tail = np.asarray(await arr.getitem(where))
        col.buf = RowBuffer(plan.dtype, row_shape, chunk, length, tail)
        return col

    async def append(self, batch: Batch) -> None:
        """Buffer and write this rank's part of ``batch``; commit together at every
        ``commit_every`` frames (a batch is split there, so every rank commits
        at the same counts whatever its batches)."""
        self._check_usable()
        if batch.dropped_steps:
            exc = ConfigError(
                f"{self!r}: steps {batch.dropped_steps[:5]} were dropped; with comm every "
                "rank must store the same steps: use policy='block' (or a Spill)"
            )
            self._fail(exc)
            raise exc
        frames = batch.frames
        while frames:
            room = self._commit_every - (self._frames - self._meta.count)
            part, frames = frames[:room], frames[room:]
            try:
                await self._io.write(*self._blocks_of(part))
            except BaseException as exc:
                self._fail(exc)
                raise
            self._frames += len(part)
            self._last_step = part[-1].step
            self._steps_seen = _fingerprint(self._steps_seen, part)
            if self._frames - self._meta.count >= self._commit_every:
                await self.commit()

    def _blocks_of(self, frames: list[Frame]) -> tuple[list[tuple[Column, Block]], list[Run]]:
        """This rank's rows of ``frames``: the full blocks to write, and the runs
        of rows written in place (as :func:`._zarrcolumns.blocks_of`)."""
        n = len(frames)
        out: list[tuple[Column, Block]] = []
        runs: list[Run] = []

        def push(col: Column, rows: np.ndarray[Any, Any]) -> None:
            out.extend((col, b) for b in col.buf.push(rows, owned=True))

        for key, pick in self._picks.items():
            col = self._columns[key]
            if pick.kind == "steps":
                push(col, np.fromiter((f.step for f in frames), np.int64, n))
            elif pick.kind == "times":
                if any(f.time is None for f in frames):
                    raise SchemaError(f"{self!r}: expected a time on every frame")
                push(col, np.fromiter((f.time or 0.0 for f in frames), np.float64, n))
            elif pick.kind == "ragged":
                assert pick.offsets is not None
                arrays = [np.asarray(f.fields[pick.name]) for f in frames]
                counts = np.fromiter((len(a) for a in arrays), np.int64, n)
                push(pick.offsets, col.length + np.cumsum(counts))
                push(col, np.concatenate(arrays))
            else:
                arrays = [np.asarray(f.fields[pick.name]) for f in frames]
                if pick.sel is not None:
                    arrays = [a[pick.sel] for a in arrays]
                if col.direct is None:
                    out.extend((col, b) for b in col.buf.push_frames(arrays))
                    continue
                for index, row, i, j, full in col.direct.runs(n):
                    # a chunk's part of a frame is copied once, contiguous (owned)
                    part = [np.ascontiguousarray(a) for a in arrays[i:j]]
                    # owned: a copy nobody else holds (else a view of the sink's
                    # slot, which the write must finish with before append returns)
                    owned = len(part) > 1 or part[0] is not arrays[i]
                    if len(part) > 1:
                        part = [np.stack(part)]
                    runs.append((col, index, row, part, full, owned))
        return out, runs

    async def commit(self) -> None:
        """Collective: every rank's rows durable; the ranks agree on the count (the
        minimum; any disagreement or failure fails every rank alike); each rank
        shows its arrays at that count; rank 0 writes the metadata last.

        Raises
        ------
        StoreStateError
            Ranks at different frame counts or steps (every rank must write the
            same steps and call flush/close together), or a failure on any rank.
        """
        if self._state == "closed":
            self._check_usable()
        try:
            lo, hi = await self._agree(COMMIT, self._drain)
            if lo != hi:
                reports = await anyio.to_thread.run_sync(
                    self._comm.allgather, (self._frames, self._last_step)
                )
                which = (
                    "the steps or times before the last differ"
                    if all(r == reports[0] for r in reports)
                    else "(frames, last step) by rank " + str(reports)
                )
                raise StoreStateError(
                    f"{self!r}: ranks disagree at a commit: {which}; every rank must "
                    "write the same steps and times (policy='block'), in the same order, "
                    "and call flush() and close() together"
                )
            count = lo[0]
            await self._agree(SHOW, self._show, count)
            await self._agree(PUBLISH, self._publish, count)
        except BaseException:
            self._state = "broken"
            raise
        self._last_commit = time.monotonic()

    async def _drain(self) -> tuple[int, int | None]:
        if self._state == "failed":
            raise StoreStateError(
                f"{self!r}: an earlier write failed on rank {self._rank} ({self._failure})"
            )
        self._check_usable()
        await self._io.flush(self._columns.values())
        # every step since the open, not only the last: ranks that wrote steps
        # 0, 1, 3 and 0, 2, 3 agreed, and a frame held two steps' rows
        return self._frames, self._steps_seen

    async def _show(self, count: int) -> None:
        """This rank's arrays at their committed shape (before the metadata)."""
        for arr, row_shape, col in self._owned:
            rows = count if col.plan.name in self._layouts else col.length
            if int(arr.shape[0]) != rows:
                await arr.resize((rows, *row_shape), delete_outside_chunks=False)
            col.capacity = rows

    async def _publish(self, count: int) -> None:
        """Rank 0 writes the metadata that names ``count`` frames: the last write."""
        self._meta.count = count
        if self._rank == 0:
            assert self._root is not None
            await anyio.to_thread.run_sync(check_not_removed, self._root, self._path, repr(self))
            await self._write_meta()

    async def close(self) -> None:
        """Collective: commit, mark the group closed (rank 0), release.

        After a failure on this rank, its close joins the next commit of the
        other ranks to fail it too (never a hang); nothing more is written.
        """
        try:
            if self._state == "open":
                await self.commit()
                self._meta.closed = True
                await self._agree(PUBLISH, self._publish, self._meta.count)
            elif self._state == "failed":
                with contextlib.suppress(Exception):
                    await self.commit()  # tells the other ranks; raises here
        finally:
            self._state = "closed"
            await self._io.stop()
            self._release_lock()
            self._comm.free()  # on every path (a failed or broken close too)

    # -- internals ------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        """This rank's write failed: no more frames; its next commit (or its close)
        tells the other ranks why."""
        self._state = "failed"
        self._failure = f"{type(exc).__name__}: {exc}"

    def _check_usable(self) -> None:
        if self._state == "broken":
            raise StoreStateError(
                f"{self!r}: a commit failed on some rank; the store takes no more frames"
            )
        super()._check_usable()

    def _layout_json(self) -> dict[str, Any]:
        return {name: lay.to_json() for name, lay in sorted(self._layouts.items())}

    def _attributes(self) -> dict[str, Any]:
        par = {"ranks": self._comm.size, "fields": self._layout_json()}
        return {**super()._attributes(), PARALLEL_KEY: par}


#: the fingerprint's modulus and base (a prime below 2**61, and a base below it):
#: what the commit's int64 allreduce carries, negated too
_PRIME = (1 << 61) - 1
_BASE = 1_000_003


def _fingerprint(seen: int, frames: list[Frame]) -> int:
    """``seen`` extended by the steps (and times) of ``frames``, in order: equal
    on two ranks, whp, only when they appended the same steps and times."""
    for f in frames:
        seen = (seen * _BASE + f.step + 1) % _PRIME
        if f.time is not None:
            seen = (seen * _BASE + hash(float(f.time))) % _PRIME
    return seen
