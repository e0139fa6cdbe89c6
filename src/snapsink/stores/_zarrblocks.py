"""How a ZarrStore's rows reach storage, and the data half of its commit.

:class:`BlockIO` takes the blocks and in-place runs that
:func:`._zarrcolumns.blocks_of` makes of a batch and writes them: on a local
directory through the block writer's thread pool (:class:`._zarrio.BlockWriter`),
elsewhere through zarr's async array API, many blocks in flight at once
(:class:`._zarrobject.Inflight`). It grows and trims the arrays' shapes, gives
RowBuffers their buffers back once written, and makes the rows durable before
the store writes the metadata that names them. Split from ``zarr.py`` so that
the store decides *when* to write and commit, and this module *how* a write is
done on either kind of store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype

from ._zarrcolumns import Column, Run
from ._zarrio import INLINE_ROWS, BlockWriter, Ticket, first_error, replace_durably
from ._zarrobject import Inflight
from ._zarrplan import Block, RowBuffer, grow_capacity

__all__ = ["BlockIO"]


async def _gather(aws: Sequence[Awaitable[None]]) -> None:
    """Await ``aws`` concurrently; failures are raised as the first OSError (see
    :func:`._zarrio.first_error`), never as an ExceptionGroup."""
    if len(aws) == 1:
        await aws[0]
        return
    if all(isinstance(a, asyncio.Future) and a.done() for a in aws):
        # rows written inline: done already, and gather would still cost a
        # turn of the loop
        results: list[Any] = [a.exception() for a in aws]  # type: ignore[attr-defined]
    else:
        results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise first_error(errors)


#: a column's partly filled last block: ``(column, its first row, the rows, its
#: write's place in line on a local directory)``
Partial = tuple[Column, int, np.ndarray[Any, Any], Ticket | None]


def _nbytes(run: Run) -> int:
    return sum(a.nbytes for a in run[3])


class BlockIO:
    """The writes of one ZarrStore: local (``root``) or through zarr's API.

    Parameters
    ----------
    root
        The store's local directory, or None for any other zarr store.
    max_concurrent
        Blocks in flight at once through zarr's API (other stores than a local
        directory): each is one PUT on an object store.
    direct_io
        Whether rows written in place may go direct (``ZarrStore(direct_io=)``).
    """

    def __init__(self, root: Path | None, max_concurrent: int, direct_io: bool = True):
        self.writer = BlockWriter(root, direct_io=direct_io) if root is not None else None
        #: block writes through zarr's API in flight (other stores than a local directory)
        self.inflight = Inflight(max_concurrent)
        #: buffers handed over by RowBuffers, given back once their write is done
        self._lent: list[tuple[asyncio.Future[None], RowBuffer, np.ndarray[Any, Any]]] = []

    async def write(self, blocks: list[tuple[Column, Block]], runs: Sequence[Run] = ()) -> None:
        """Write full, block-aligned runs of rows, and rows in place: all at once,
        whatever their array.

        Local: each block, and each run of rows, goes to the block writer; rows
        that are views of the caller's frames are waited for before returning
        (the sink reuses their memory), owned rows may still be written while the
        next batch arrives.
        """
        self._give_back_buffers()
        if not blocks and not runs:
            return
        for col, (start, rows, _) in blocks:
            await self._grow(col, start + len(rows))
        for run in runs:
            await self._grow(run[0], run[0].length)
        # an array whose rows hold no element only grows: its blocks are not
        # written (zarr's chunk spec has a length of 1 where the rows have 0)
        blocks = [(col, b) for col, b in blocks if not col.empty]
        if self.writer is None:
            await self._write_generic(blocks)
            return
        borrowed: list[asyncio.Future[None]] = []
        # Rows borrowed from the caller's frames are waited for before this
        # returns. Small runs are written here anyway (INLINE_ROWS); of the
        # large ones, one alone gains nothing from the pool but two thread
        # hand-offs, each a wakeup that may preempt the simulation on a busy
        # machine: then it is written here too. Two or more are written in
        # parallel.
        alone = (
            not blocks and sum(1 for run in runs if not run[5] and _nbytes(run) > INLINE_ROWS) <= 1
        )
        for col, index, row, arrays, full, owned in runs:
            assert col.target is not None
            fut = await self.writer.submit_rows(
                col.target, index, row, arrays, full=full, now=alone and not owned
            )
            if not owned:
                borrowed.append(fut)
        for col, (start, rows, owned) in blocks:
            assert col.target is not None
            size = col.plan.block
            for k in range(0, len(rows), size):
                fut = await self.writer.submit(col.target, (start + k) // size, rows[k : k + size])
                if not owned:
                    borrowed.append(fut)
            if owned and rows.base is None and len(rows) == size:
                self._lent.append((fut, col.buf, rows))  # a RowBuffer's own buffer
        if borrowed:
            await _gather(borrowed)

    def _give_back_buffers(self) -> None:
        still = []
        for fut, buf, rows in self._lent:
            if not fut.done():
                still.append((fut, buf, rows))
            elif not fut.cancelled() and fut.exception() is None:
                buf.recycle(rows)
        self._lent = still

    async def _write_generic(self, blocks: list[tuple[Column, Block]]) -> None:
        """Through zarr's async array API (non-local stores), many blocks at a time.

        Each block's write is started and left in flight (at most
        ``max_concurrent``; :class:`._zarrobject.Inflight`), so the PUTs of one
        batch overlap those of the next; :meth:`flush` waits for all of them
        before the store writes the metadata.
        """
        for col, (start, rows, owned) in blocks:
            # A store may keep the encoded buffer, which for uncompressed data is a
            # view of the rows (MemoryStore does): hand it rows nobody reuses. Owned
            # rows are never reused (RowBuffers recycle only on a local directory).
            if not owned:
                rows = rows.copy()
            # One setitem per block: zarr encodes a value of exactly one block's shape
            # as it is, but copies each block of a larger value into a fresh
            # fill-value chunk first, on the event loop.
            size = col.plan.block
            for k in range(0, len(rows), size):
                block = rows[k : k + size]
                await self.inflight.submit(
                    col.array.setitem(slice(start + k, start + k + len(block)), block)
                )

    def partials(self, columns: Iterable[Column], *, copy: bool = False) -> list[Partial]:
        """Each column's partly filled last block, if it changed since last
        written: what a commit starting now writes, marked written now (rows
        pushed later are the next commit's) and, on a local directory, with its
        place in line taken now (see ``_zarrio.Landings``: the appends going on
        meanwhile may write the same block whole, and that write must land
        last). ``copy``: copies of the rows, for a commit in the background
        (those appends refill the buffers)."""
        parts: list[Partial] = []
        for col in columns:
            part = col.buf.partial()
            if part is None:
                continue
            start, rows = part
            ticket = None
            if self.writer is not None and not col.empty:  # an empty one is never written
                assert col.target is not None
                ticket = self.writer.claim(col.target, start // col.plan.block)
            parts.append((col, start, rows.copy() if copy else rows, ticket))
            col.buf.mark_written()
        return parts

    async def flush(self, columns: Iterable[Column], parts: list[Partial] | None = None) -> None:
        """The data half of a commit: wait for every write, write each column's
        partly filled last block (``parts``, from :meth:`partials`; default:
        taken now), and make it all durable (fsync, on a local directory)
        before the store writes the metadata that names the rows."""
        if parts is None:
            parts = self.partials(columns)
        if self.writer is not None:
            await self.writer.drain()
        else:
            await self.inflight.drain()  # every chunk PUT before the metadata PUT
        if parts:
            await self._write_partials(parts)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.sync)

    async def _write_partials(self, parts: list[Partial]) -> None:
        """Write each column's partly filled last block (padded with the fill value)."""
        for col, start, rows, _ in parts:
            await self._grow(col, start + len(rows))
        parts = [part for part in parts if not part[0].empty]  # shown by their shape only
        if self.writer is None:
            await self.inflight.drain()  # a full block of the same chunk may be in flight
            await _gather(
                [
                    col.array.setitem(slice(start, start + len(rows)), rows.copy())
                    for col, start, rows, _ in parts
                ]
            )
        else:
            for col, start, rows, ticket in parts:
                assert col.target is not None
                index = start // col.plan.block
                await self.writer.submit(col.target, index, rows, whole=False, ticket=ticket)
            await self.writer.drain()

    # -- the arrays' shapes ---------------------------------------------------------
    async def _grow(self, col: Column, stop: int) -> None:
        """Room for rows up to ``stop`` before zarr's own writes (which refuse rows
        past an array's shape). The block writer of a local directory places its
        chunks itself, so there every array keeps the committed shape (see
        :meth:`show_committed`)."""
        if self.writer is None and stop > col.capacity:
            new = grow_capacity(col.capacity, stop, col.plan.block)
            await col.array.resize((new, *col.plan.row_shape))
            col.capacity = new

    async def show_committed(
        self, columns: Iterable[Column], lengths: Mapping[str, int] | None = None
    ) -> None:
        """Give every array the shape of what this commit holds, before the group's
        metadata names the count: plain zarr and xarray readers then see arrays
        of one length (``frame``) at any moment, mid-run or after a crash, never
        rows past the count (a local directory; other stores trim at close).

        ``lengths``: each array's length when the commit started (a commit in
        the background: rows appended since are not its to show); default:
        every row pushed."""
        if self.writer is None:
            return
        grown: list[tuple[Column, Any, int]] = []
        files: list[tuple[Path, bytes]] = []
        for col in columns:
            n = col.length if lengths is None else lengths[col.plan.name]
            if col.capacity == n:
                continue
            assert col.target is not None
            # zarr's own new metadata and its bytes, as AsyncArray.resize makes
            # and stores them (it only ever grows here: no chunk is outside)
            meta = col.array.metadata.update_shape((n, *col.plan.row_shape))
            for key, buf in meta.to_buffer_dict(default_buffer_prototype()).items():
                files.append((col.target.directory / key, buf.to_bytes()))
            grown.append((col, meta, n))
        if not grown:
            return
        # Every array's metadata in one worker job: through zarr's resize each
        # took two thread hops and zarr's store machinery (2 of a commit's
        # 3.3 ms on tmpfs, 4 MiB frames)
        await asyncio.to_thread(replace_durably, files)
        for col, meta, n in grown:
            object.__setattr__(col.array, "metadata", meta)  # as AsyncArray.resize does
            col.capacity = n

    @staticmethod
    async def trim(columns: Iterable[Column]) -> None:
        """Cut every array to the rows pushed (at close, after the last commit)."""
        for col in columns:
            length = col.length
            if col.capacity != length:
                await col.array.resize((length, *col.plan.row_shape))
                col.capacity = length

    async def stop(self) -> None:
        """Wait for block writes still running (after a failure), then stop the pool."""
        if self.writer is not None:
            await self.writer.drain(raise_errors=False)
            self.writer.shutdown()
        await self.inflight.drain(raise_errors=False)
        self._lent.clear()
