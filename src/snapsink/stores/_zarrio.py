"""Chunk I/O of ZarrStore on a local directory: zarr's codecs, snapsink's writes.

Why this module exists: writing through zarr's async array API costs a serial
round trip per chunk (indexing, a task per chunk, one store call each, a thread
hop each), and the sink's loop sat idle waiting on it (issue 17). zarr-python
stays the format authority here: every block (a chunk, or a shard when
sharding) is encoded by the array's *own* codec pipeline from the array's own
chunk spec, so the bytes are the ones zarr would store, under the key zarr's
chunk-key encoding names (one exception: zarr's ``zstd`` codec is run by
python-zstandard when it is installed: the same zstd frames, which zarr
decodes, byte for byte zarr's at the same libzstd version, see
:class:`_Zstd`). What changes is who runs it:

- whole blocks of every array are encoded and written by one thread pool sized
  to the cores (the codecs snapsink uses, bytes/zstd/blosc/gzip/crc32c, release
  the GIL or are plain memory copies), several blocks at a time;
- an encoded block of 1 MiB or more is copied into a page-aligned staging
  buffer and written with ``O_DIRECT`` by one I/O thread, while the pool
  encodes the next blocks (:meth:`BlockWriter._hand_to_io`): no page-cache
  copy taking an encoder's core, and no encoder waiting for the disk;
- each block goes to a temporary file that is renamed into place. A file that
  replaces an existing chunk (a partial chunk committed earlier, rewritten
  whole) is fsynced *before* the rename, so committed rows are never behind a
  rename that a power cut could undo (issue 11, item 6); a new file is fsynced
  at the next commit, with every directory whose entries changed, before the
  metadata that names its rows is written (commit-last). The files of one
  chunk are renamed in the order their writes were decided (:class:`Landings`):
  a commit in the background writes a partly filled chunk while the appends
  may write it whole, and the whole one must stay.
- rows of an uncompressed, unsharded array (zarr's ``bytes`` codec alone, the
  native byte order, a zero fill value: the chunk file *is* the rows' memory)
  skip the chunk buffer: they go from the frames straight into their chunk file
  at their offset (``pwritev``), as NpyDirectory writes rows. A chunk file is
  created at its final name and first extended to its full size (zarr reads
  only whole uncompressed chunks; the rest reads as the fill value, zero);
  rows are only ever written past the committed ones, so a crash can never
  tear a committed row (readers trust only the committed count), and every
  file written since the last commit is fdatasync'ed before the metadata.

:class:`DurableLocalStore` gives zarr's own writes (group and array
``zarr.json``, static arrays) the same rule: fsync, then rename.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import math
import os
import re
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from .._errors import ConfigError
from ._npyfile import pwrite_all, start_writeback
from ._pwrite import (
    DIRECT_ALIGN,
    DIRECT_MIN_BYTES,
    DirectWriter,
    direct_io_pays,
    page_aligned_empty,
)

__all__ = [
    "ZSTD_ENCODER_ENV",
    "BlockTarget",
    "BlockWriter",
    "DurableLocalStore",
    "Landings",
    "Ticket",
    "encode_block",
    "first_error",
    "is_leftover",
    "pwrite_all",
    "replace_durably",
    "whole_pages",
    "worker_count",
    "writes_in_place",
    "zstd_encoder",
]

#: Temporary files: ours (``<name>.<uuid hex>.partial``) and zarr LocalStore's
#: (``<stem>.<uuid hex>.partial``, e.g. ``zarr.<hex>.partial``) look alike.
_LEFTOVER = re.compile(r"\.[0-9a-f]{32}\.partial$")
#: moves a written temporary file to its path (default ``os.replace``; a block
#: writer's keeps the writes of a chunk in order, see :class:`Landings`)
Rename = Callable[[Path, Path], None]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _datasync(fd: int) -> None:
    """fdatasync where there is one (a file's data and size, not its times)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def is_leftover(name: str) -> bool:
    """Whether a file name is a temporary file of an interrupted write (ours or zarr's)."""
    return _LEFTOVER.search(name) is not None


def worker_count() -> int:
    """Threads of a block writer: the cores this process may use, at least 2.

    At least two so that one thread's fsync or page-cache copy overlaps
    another's encoding even on one core.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 2
    return max(2, n)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")


def _fsync_fd_of(path: Path | str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def whole_pages(offset: int, length: int, page: int = _PAGE) -> tuple[int, int]:
    """The whole pages inside ``[offset, offset + length)``: ``(start, length)``."""
    start = -(-offset // page) * page
    stop = (offset + length) // page * page
    return start, max(0, stop - start)


def write_file(
    path: Path,
    data: memoryview,
    *,
    sync: bool | None = None,
    size: int | None = None,
    rename: Rename | None = None,
) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place.

    ``sync=None``: fsync before the rename only when ``path`` exists (the
    rename replaces committed data); ``True``/``False`` force it either way
    (a file not fsynced is the caller's to sync). ``size``: extend the file to
    ``size`` bytes after the data (a hole, which reads as zeros and takes no
    disk space). ``rename(tmp, path)``: what moves the file into place
    (default ``os.replace``; the block writer's keeps the writes of one chunk
    in order and notes what the next sync covers, see :class:`Landings`).
    """
    if sync is None:
        sync = os.path.lexists(path)
    tmp = _tmp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
            if size is not None and size > len(data):
                os.ftruncate(fd, size)
            if not sync:
                start_writeback(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _place(tmp, path, sync=sync, exclusive=False, rename=rename)


def write_file_direct(
    path: Path,
    buf: np.ndarray[Any, Any],
    length: int,
    *,
    sync: bool | None = None,
    rename: Rename | None = None,
) -> bool:
    """:func:`write_file` (same ``sync`` and ``rename``) of the first ``length`` bytes of
    ``buf``, a page-aligned buffer of at least ``length`` rounded up to a page,
    written with ``O_DIRECT`` (the page cache skipped: no copy into it, about
    0.15 CPU-seconds per second of disk time against 0.5-1 buffered) and cut
    back to ``length``. False when the file system refuses direct I/O (nothing
    is left behind: the caller writes the file buffered)."""
    if sync is None:
        sync = os.path.lexists(path)
    tmp = _tmp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DIRECT
    try:
        fd = os.open(tmp, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    padded = -(-length // DIRECT_ALIGN) * DIRECT_ALIGN
    try:
        try:
            buf[length:padded] = 0  # the page's tail, cut below: never old bytes
            pwrite_all(fd, [buf[:padded].data], 0)
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno == errno.EINVAL:  # an alignment stricter than a page
            return False
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _place(tmp, path, sync=sync, exclusive=False, rename=rename)
    return True


class StagingBuffers:
    """Page-aligned buffers for encoded blocks on their way to a direct write:
    at most ``count`` at once (a worker that finds none waits for the disk,
    which bounds the encoded bytes held in memory), each grown to the largest
    block it carried."""

    def __init__(self, count: int):
        self._free: list[np.ndarray[Any, Any]] = []
        self._slots = threading.Semaphore(count)
        #: stop() was called: take() gives None, and the block writer starts no thread
        self.stopped = False

    def take(self, nbytes: int) -> np.ndarray[Any, Any] | None:
        """A buffer of at least ``nbytes`` rounded up to a page (waits while all
        are out); None once stopped."""
        while not self._slots.acquire(timeout=0.1):
            if self.stopped:
                return None
        if self.stopped:
            self._slots.release()
            return None
        want = -(-nbytes // DIRECT_ALIGN) * DIRECT_ALIGN
        with contextlib.suppress(IndexError):
            buf = self._free.pop()
            if buf.nbytes >= want:
                return buf
        return page_aligned_empty((want,), np.dtype(np.uint8))

    def give(self, buf: np.ndarray[Any, Any]) -> None:
        self._free.append(buf)
        self._slots.release()

    def stop(self) -> None:
        """Wake every waiter with None, keep no buffer."""
        self.stopped = True
        self._free.clear()


def replace_durably(files: Sequence[tuple[Path, bytes]]) -> None:
    """Replace each of ``files`` (existing files: the arrays' metadata at a
    commit) with its new bytes, durably: every one written to a temporary file
    and fsynced first, then all renamed over theirs, back to back, then each
    directory fsynced. When this returns, every one is durable. Blocking: run
    it in a worker thread.

    Why this order: a plain reader (xarray) sees arrays of different lengths
    between the first rename and the last; with every fsync done before the
    first, that window is the renames alone (microseconds), not one fsync per
    file (milliseconds each on a disk). A failure before the renames leaves
    every file as it was."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            tmp = _tmp_path(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            staged.append((tmp, path))
            try:
                _write_all(fd, memoryview(data))
            finally:
                os.close(fd)
            _fsync_fd_of(tmp)
    except BaseException:
        for tmp, _ in staged:
            _unlink_quietly(tmp)
        raise
    for k, (tmp, path) in enumerate(staged):
        try:
            os.replace(tmp, path)
        except BaseException:
            for rest, _ in staged[k:]:
                _unlink_quietly(rest)
            raise
    _fsync_paths((), {path.parent for path, _ in files})


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _place(
    tmp: Path, path: Path, *, sync: bool, exclusive: bool, rename: Rename | None = None
) -> bool:
    """Move the written temporary file ``tmp`` to ``path`` (fsynced first when
    ``sync``) with ``rename``; ``exclusive``: never replace an existing ``path``
    (returns False, tmp removed). The one rename of every temporary file of
    this module."""
    try:
        if sync:
            _fsync_fd_of(tmp)
        if not exclusive:
            (rename or os.replace)(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    except BaseException:
        _unlink_quietly(tmp)
        raise


# -- encoding ----------------------------------------------------------------------------
def _sync_codecs(pipeline: Any) -> list[Any] | None:
    """The pipeline's codecs in order when each can encode synchronously, else None."""
    try:
        codecs = [
            *pipeline.array_array_codecs,
            pipeline.array_bytes_codec,
            *pipeline.bytes_bytes_codecs,
        ]
    except AttributeError:  # another pipeline class (e.g. zarrs): use its own encode
        return None
    if not all(callable(getattr(c, "_encode_sync", None)) for c in codecs):
        return None  # e.g. sharding, whose encode is async only
    return codecs


class _Zstd:
    """zarr's ``zstd`` codec encoded by python-zstandard (the ``zstd`` extra), when
    it is installed.

    The same format: a zstd frame of the codec's level, with the content size in
    its header (numcodecs' decoder, which zarr reads with, needs it) and a
    checksum when the codec asks for one; zarr and every zstd reader decode it.
    Why: its speed does not depend on the allocator's state. numcodecs'
    encoder takes a fresh output buffer per chunk, which glibc's default
    settings map and fault in anew for a chunk of megabytes (240,595 page
    faults per GiB in the writer at 8 MiB chunks, against 16,935). Measured on the
    2-core VM, a SyncSink storing 1 GiB of the benchmark's smooth frames, 3-4
    interleaved runs each: with glibc's defaults (what a user runs),
    1,179-1,281 MB/s against 1,088-1,100 at 2 MiB frames and 1,318-1,346
    against 1,133-1,147 at 16 MiB; with the allocator pinned as the
    benchmarks pin it (``MALLOC_MMAP_THRESHOLD_``), numcodecs is ahead,
    1,246-1,392 against 1,244-1,284 MB/s at 2 MiB and 1,310-1,457 against
    1,269-1,352 at 16 MiB (its build is 1.1x as fast on one core on these
    frames; on random float32, python-zstandard is 1.2-1.4x as fast). It
    releases the GIL as numcodecs does. A compressor is not thread-safe: each
    worker thread keeps its own.
    """

    def __init__(self) -> None:
        try:
            import zstandard
        except ImportError:
            self.module: Any = None
        else:
            self.module = zstandard
        self._local = threading.local()

    def available(self) -> bool:
        return self.module is not None

    def encode(self, codec: Any, value: Buffer, spec: Any) -> Buffer:
        key = (int(codec.level), bool(codec.checksum))
        compressors: dict[tuple[int, bool], Any] | None = getattr(self._local, "c", None)
        if compressors is None:
            compressors = self._local.c = {}
        compressor = compressors.get(key)
        if compressor is None:
            compressor = compressors[key] = self.module.ZstdCompressor(
                level=key[0], write_checksum=key[1], write_content_size=True
            )
        data = compressor.compress(value.as_numpy_array())
        return spec.prototype.buffer.from_bytes(data)  # type: ignore[no-any-return]


#: The environment variable that picks the encoder of zarr's ``zstd`` codec
#: (read by every block writer, so a writer process follows its sink's setting).
ZSTD_ENCODER_ENV = "SNAPSINK_ZSTD_ENCODER"
_ZSTD = _Zstd()


def zstd_encoder() -> str:
    """What encodes zarr's ``zstd`` codec in a block writer: ``"zstandard"``
    (python-zstandard, the default when installed) or ``"numcodecs"`` (zarr's
    own codec; the default without python-zstandard, or chosen with
    ``SNAPSINK_ZSTD_ENCODER=numcodecs``).

    Raises
    ------
    ConfigError
        ``SNAPSINK_ZSTD_ENCODER`` is set to another value, or to
        ``"zstandard"`` without python-zstandard installed.
    """
    want = os.environ.get(ZSTD_ENCODER_ENV, "")
    if want in ("", "zstandard"):
        if _ZSTD.available():
            return "zstandard"
        if want:
            raise ConfigError(
                f"{ZSTD_ENCODER_ENV}: 'zstandard' needs python-zstandard "
                "(pip install 'snapsink[zstd]'); it is not installed"
            )
        return "numcodecs"
    if want == "numcodecs":
        return "numcodecs"
    raise ConfigError(
        f"{ZSTD_ENCODER_ENV}: expected 'zstandard' or 'numcodecs' (or unset), got {want!r}"
    )


def _is_zstd(codec: Any) -> bool:
    # zarr's own class only: a subclass may encode differently
    return type(codec).__name__ == "ZstdCodec" and type(codec).__module__ == "zarr.codecs.zstd"


def encode_block(pipeline: Any, spec: Any, block: np.ndarray[Any, Any]) -> memoryview:
    """The stored bytes of one block (a chunk or shard of ``spec.shape``), as zarr encodes it.

    Runs in a worker thread. Codecs that have zarr's synchronous encode are
    chained as zarr's ``BatchedCodecPipeline.encode_batch`` chains them (each
    codec's output spec from ``resolve_metadata``); any other pipeline runs its
    own ``encode`` on a private event loop. zarr's ``zstd`` codec is encoded by
    python-zstandard when it is installed (see :class:`_Zstd`).
    """
    nd = spec.prototype.nd_buffer.from_ndarray_like(block)
    codecs = _sync_codecs(pipeline)
    out: Buffer | None
    if codecs is not None:
        value: Any = nd
        fast_zstd = zstd_encoder() == "zstandard"
        for codec in codecs:
            if fast_zstd and _is_zstd(codec):
                value = _ZSTD.encode(codec, value, spec)
            else:
                value = codec._encode_sync(value, spec)
            spec = codec.resolve_metadata(spec)
            if value is None:
                break
        out = value
    else:
        out = next(iter(asyncio.run(pipeline.encode([(nd, spec)]))))
    if out is None:  # pragma: no cover - zarr encodes None only for a None chunk
        raise RuntimeError("zarr's codec pipeline returned no bytes for a chunk")
    data: np.ndarray[Any, Any] = out.as_numpy_array()
    return data.data.cast("B")


def writes_in_place(pipeline: Any, spec: Any, dtype: np.dtype[Any]) -> bool:
    """Whether a chunk file of this array is exactly its rows' memory, so rows can
    be written in place: zarr's ``bytes`` codec alone (no sharding, no
    compression, no checksum), in this machine's byte order, a fill value whose
    bytes are zero (what extending a file reads as) and no empty dimension."""
    codecs = _sync_codecs(pipeline)
    if codecs is None or len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
        return False
    dtype = np.dtype(dtype)
    if dtype.kind not in "biufc" or not math.prod(spec.shape):
        return False
    if dtype.itemsize > 1:
        endian = getattr(codecs[0], "endian", None)
        endian = getattr(endian, "value", endian)
        if not dtype.isnative or endian not in (None, sys.byteorder):
            return False
    try:
        fill = np.full((), spec.fill_value, dtype)
    except (TypeError, ValueError):
        return False
    return not any(fill.tobytes())


@dataclass(frozen=True, slots=True)
class BlockTarget:
    """What a worker needs to encode and place blocks of one array.

    Attributes
    ----------
    directory
        The array's directory (``root / array path``).
    pipeline, spec
        The array's codec pipeline and the ArraySpec of one block.
    key
        Block index → chunk key (zarr's chunk-key encoding, e.g. ``c/3/0``).
    """

    directory: Path
    pipeline: Any
    spec: Any
    key: Any
    #: a chunk file is exactly its rows' memory (see :func:`writes_in_place`)
    raw: bool = False
    #: chunk grid coordinates along the other axes (a rank's chunk of a field
    #: decomposed over ranks, see :mod:`._zarrparallel`); () for zeros
    grid: tuple[int, ...] = ()
    #: block index -> its path, made once (a Path and its hash cost microseconds
    #: a row, and in-place rows come one frame at a time)
    _paths: dict[int, Path] = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row (along axis 0) of an uncompressed chunk."""
        return math.prod(self.shape[1:]) * int(self.spec.dtype.to_native_dtype().itemsize)

    def path(self, index: int) -> Path:
        path = self._paths.get(index)
        if path is None:
            inner = self.grid or (0,) * (len(self.shape) - 1)
            key: str = self.key((index, *inner))
            path = self._paths[index] = self.directory / key
        return path

    def padded(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``rows`` as a whole block: the rest filled with the fill value, as zarr pads."""
        block = np.full(self.shape, self.spec.fill_value, dtype=rows.dtype)
        block[: len(rows)] = rows
        return block


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # the error is collected from the pool's future itself


def _wrapped(fut: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
    """An asyncio future of a pool job whose error counts as retrieved: the writer
    collects errors from the pool's futures (never "exception was never retrieved")."""
    af = asyncio.wrap_future(fut)
    af.add_done_callback(_retrieve)
    return af


def first_error(errors: list[BaseException]) -> BaseException:
    """The error to raise for several failed block writes: the first OSError (else the
    first error), with a note naming the others (never an ExceptionGroup)."""
    main = next((e for e in errors if isinstance(e, OSError)), errors[0])
    others = [e for e in errors if e is not main]
    if others:
        shown = "; ".join(f"{type(e).__name__}: {e}" for e in others[:3])
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        main.add_note(f"{len(others)} other chunk write(s) failed too: {shown}{more}")
    return main


#: rows written in place of at most this many bytes a call are written by the
#: caller (the store's loop thread), not by a job in the pool
INLINE_ROWS = 64 << 10
#: the writeback of a chunk file's rows written in place is started once this
#: many bytes of them are waiting (or at once, for a larger row): one advice
#: call per row cost a small frame more than its write
EARLY_WRITEBACK = 1 << 20


@dataclass(frozen=True, slots=True)
class Ticket:
    """A block write's place in line (:meth:`BlockWriter.claim`)."""

    path: Path
    number: int
    #: an earlier write of ``path`` was still running when it was claimed
    replaces: bool


class Landings:
    """The renames of a block writer's chunk files, in the order their writes
    were submitted, chunk by chunk.

    A chunk may be written again while an earlier write of it still runs: a
    commit in the background writes a partly filled chunk, and the appends that
    go on meanwhile write the same chunk whole once it fills. Each later write
    holds every row of the earlier one, so the one left in place must be the
    last one decided: each write takes a ticket when it is decided
    (:meth:`claim`: a commit's when it starts, though it submits its writes
    later), and one that would land after a later write of its chunk is
    dropped instead (:meth:`land`). Called under the block writer's lock.
    """

    def __init__(self) -> None:
        self._next = 0
        #: path -> [its writes not landed yet, the last ticket landed]; a path
        #: leaves once none runs (a failed write leaves it: the store fails)
        self._paths: dict[Path, list[int]] = {}

    def claim(self, path: Path) -> tuple[int, bool]:
        """A ticket for a write of ``path`` submitted now, and whether an earlier
        write of ``path`` still runs (then this one replaces a file a commit may
        name: it is fsynced before its rename)."""
        ticket = self._next
        self._next += 1
        entry = self._paths.get(path)
        if entry is None:
            self._paths[path] = [1, -1]
            return ticket, False
        entry[0] += 1
        return ticket, True

    def land(self, tmp: Path, path: Path, ticket: int) -> bool:
        """Rename ``tmp`` to ``path``, unless a later write of ``path`` has
        landed already (then ``tmp`` is removed); whether it was renamed."""
        entry = self._paths[path]
        entry[0] -= 1
        landed = entry[1] < ticket
        if landed:
            os.replace(tmp, path)
            entry[1] = ticket
        else:
            os.unlink(tmp)
        if not entry[0]:
            del self._paths[path]
        return landed

    def running(self) -> int:
        """Chunk files with a write not landed yet (for tests)."""
        return len(self._paths)


class BlockWriter:
    """Encodes and writes blocks of local zarr arrays in a bounded thread pool.

    :meth:`submit` starts a job and returns at once unless ``max_inflight`` jobs
    are running (then it waits for the oldest); :meth:`drain` waits for all and
    raises the first failure. Files written without an fsync, and directories
    whose entries changed, are remembered until :meth:`sync`. Used from one
    asyncio task at a time (the store's), jobs run in the pool.
    """

    def __init__(self, root: Path, workers: int | None = None, max_inflight: int | None = None,
                 direct_io: bool = True):
        self.root = root
        #: rows written in place may go direct (stores/_pwrite.py)
        self._direct_io = direct_io
        self.workers = workers or worker_count()
        self.max_inflight = max_inflight or 2 * self.workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: deque[concurrent.futures.Future[None]] = deque()
        self._errors: list[BaseException] = []
        self._unsynced: set[Path] = set()
        self._dirs: set[Path] = set()
        self._known_dirs: set[Path] = set()
        #: chunk files written in place: open descriptors, those written since the
        #: last sync, and those whose last row is written (closed at the next sync)
        self._fds: dict[Path, int] = {}
        #: how many jobs (and syncs) use each open chunk file's descriptors now
        self._users: dict[Path, int] = {}
        #: each open chunk file's direct writer (large aligned rows go direct)
        self._directs: dict[Path, DirectWriter] = {}
        self._dirty: set[Path] = set()
        self._full: set[Path] = set()
        #: guards the descriptors and every set above: a sync takes what is there
        #: and leaves what later jobs add to the next (a commit in the background);
        #: reentrant, since _chunk_fd holds it while _ensure_dir notes a directory
        self._fd_lock = threading.RLock()
        #: chunk file -> [first byte whose writeback is not started, end of the
        #: rows written contiguously from there] (:meth:`_early_writeback`)
        self._waiting: dict[Path, list[int]] = {}
        #: encoded blocks of DIRECT_MIN_BYTES or more go to one I/O thread that
        #: writes them direct (off once a file system refuses), so that the
        #: workers encode while the disk writes: see :meth:`_hand_to_io`. Not on
        #: tmpfs: there a direct write is the same copy, plus the staging one
        #: (measured 4-8% slower, zstd level 1, 16 MiB frames)
        self._direct_blocks = direct_io and direct_io_pays(root)
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._io_inflight: deque[concurrent.futures.Future[None]] = deque()
        self._staging = StagingBuffers(self.workers + 1)
        #: whole-block files land in the order they were submitted
        self._landings = Landings()

    # -- jobs (worker threads) ----------------------------------------------------------
    def _ensure_dir(self, d: Path) -> None:
        if d in self._known_dirs:
            return
        missing = []
        p = d
        while p != self.root and not p.is_dir():
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            try:
                os.mkdir(m)
            except FileExistsError:
                pass
            with self._fd_lock:
                self._dirs.add(m.parent)  # a new entry in its parent
        self._known_dirs.add(d)

    def _job(
        self, target: BlockTarget, ticket: Ticket, rows: np.ndarray[Any, Any], whole: bool
    ) -> None:
        path = ticket.path
        # fsync before the rename when the file replaces one a commit may name:
        # there already, or an earlier write of it still running (see Landings)
        sync = ticket.replaces or os.path.lexists(path)
        land = self._landing(ticket.number, sync)
        if not whole and target.raw:
            # the rows, then a hole up to the chunk's size (zeros, the fill
            # value): a short run's partly filled chunk takes only its rows on disk
            data = np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data
            self._ensure_dir(path.parent)
            write_file(
                path, data, sync=sync, size=target.row_nbytes * target.shape[0], rename=land
            )
            return
        block = rows if whole else target.padded(rows)
        data = encode_block(target.pipeline, target.spec, block)
        self._ensure_dir(path.parent)
        if self._direct_blocks and data.nbytes >= DIRECT_MIN_BYTES:
            buf = self._staging.take(data.nbytes)
            if buf is not None:
                buf[: data.nbytes] = np.frombuffer(data, np.uint8)
                self._hand_to_io(path, buf, data.nbytes, sync, land)
                return
        write_file(path, data, sync=sync, rename=land)

    def _landing(self, ticket: int, synced: bool) -> Rename:
        """The rename of the write ``ticket`` (see :class:`Landings`); once
        renamed, its file (unless ``synced``) and its directory are left to the
        next :meth:`sync`, in the same step: a commit that waited for a write
        dropped for a later one then syncs that later one."""

        def land(tmp: Path, path: Path) -> None:
            with self._fd_lock:
                if self._landings.land(tmp, path, ticket):
                    if not synced:
                        self._unsynced.add(path)
                    self._dirs.add(path.parent)

        return land

    # Encoded blocks, written direct by the I/O thread. Measured on the 2-core VM
    # (ext4, zstd level 1, 8 MiB chunks): buffered, a worker's write of the
    # encoded bytes copies them into the page cache (0.5-1 CPU-second per GB,
    # the core an encoder needed), and a direct write in the worker itself waits
    # for the disk instead of encoding (tried: 10-15% slower); handed to an I/O
    # thread, the workers encode while the disk writes.
    def _hand_to_io(
        self, path: Path, buf: np.ndarray[Any, Any], n: int, sync: bool, land: Rename
    ) -> None:
        with self._fd_lock:
            stopped = self._staging.stopped
            if not stopped and self._io_pool is None:
                self._io_pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="snapsink-zarr-io"
                )
            if not stopped:
                assert self._io_pool is not None
                try:
                    fut = self._io_pool.submit(self._write_encoded, path, buf, n, sync, land)
                except BaseException:
                    self._staging.give(buf)
                    raise
                self._io_inflight.append(fut)
        if stopped:  # a job that outlived shutdown(): no thread is started again
            self._write_encoded(path, buf, n, sync, land)

    def _write_encoded(
        self, path: Path, buf: np.ndarray[Any, Any], n: int, sync: bool, land: Rename
    ) -> None:
        try:
            if not (
                self._direct_blocks and write_file_direct(path, buf, n, sync=sync, rename=land)
            ):
                self._direct_blocks = False  # this file system: buffered from now on
                write_file(path, buf[:n].data, sync=sync, rename=land)
        finally:
            self._staging.give(buf)

    def _chunk_fd(self, target: BlockTarget, path: Path) -> int:
        """The open chunk file ``path``, created (at its final name) and extended to
        the whole chunk's size if it is missing or short; the caller is one of its
        users until it calls :meth:`_release`."""
        with self._fd_lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._open_chunk(target, path)
            self._use(path)
            return fd

    def _open_chunk(self, target: BlockTarget, path: Path) -> int:
        """Open (or create) chunk file ``path`` at its whole size; under the lock."""
        self._ensure_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._dirs.add(path.parent)  # a new entry
        try:
            size = target.row_nbytes * target.shape[0]
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fds[path] = fd
        self._directs[path] = DirectWriter(self._direct_io)
        return fd

    def _use(self, path: Path) -> None:
        """One more user (a job, a sync) of ``path``'s descriptors; under the lock."""
        self._users[path] = self._users.get(path, 0) + 1

    def _unuse(self, path: Path) -> bool:
        """One user fewer; whether it was the last. Under the lock (a path that
        shutdown() forgot counts as having none)."""
        n = self._users.pop(path, 0) - 1
        if n > 0:
            self._users[path] = n
        return n <= 0

    def _release(self, path: Path) -> None:
        """A job is done with ``path``'s descriptors. The last user of a chunk
        file whose last row is written closes it early while more than
        :data:`OPEN_CHUNKS` are open: the next sync fsyncs it by its path, so
        that the files open between two commits stay bounded (small chunks and a
        large ``commit_every`` ran out of descriptors, about two per frame)."""
        with self._fd_lock:
            if not self._unuse(path):
                return
            if path not in self._fds or path not in self._full or len(self._fds) <= OPEN_CHUNKS:
                return
            self._full.discard(path)
            self._dirty.discard(path)
            self._unsynced.add(path)
            self._directs.pop(path).close()
            os.close(self._fds.pop(path))

    def _rows_job(
        self, target: BlockTarget, index: int, row: int, buffers: list[memoryview], full: bool
    ) -> None:
        path = target.path(index)
        fd = self._chunk_fd(target, path)
        try:
            offset = row * target.row_nbytes
            with self._fd_lock:
                direct = self._directs[path]
            if direct.write(fd, buffers, offset):
                n = sum(b.nbytes for b in buffers)
            else:
                n = pwrite_all(fd, buffers, offset)
            with self._fd_lock:
                self._dirty.add(path)
                if full:
                    self._full.add(path)
                advise = self._early_writeback(path, offset, n, full)
            if advise[1]:
                start_writeback(fd, *advise)
        finally:
            self._release(path)

    def _early_writeback(self, path: Path, offset: int, n: int, full: bool) -> tuple[int, int]:
        """The range of ``path`` whose writeback to start now that ``[offset,
        offset + n)`` is written: whole pages (DONTNEED may drop a page once it
        is written back, and rows written later into a partly written page
        would read it back first), once :data:`EARLY_WRITEBACK` bytes wait or
        the chunk's last row is written. Rows not contiguous with those waiting
        (jobs that ended out of order) start a new range; the commit's sync
        covers every byte either way. Called under the descriptor lock."""
        waiting = self._waiting.get(path)
        if waiting is None or waiting[1] != offset:
            waiting = self._waiting[path] = [offset, offset]
        waiting[1] = offset + n
        if full:
            del self._waiting[path]
            return whole_pages(waiting[0], waiting[1] - waiting[0])
        if waiting[1] - waiting[0] < EARLY_WRITEBACK:
            return 0, 0
        start, length = whole_pages(waiting[0], waiting[1] - waiting[0])
        if length:
            waiting[0] = start + length
        return start, length

    # -- the store's side (event loop) ---------------------------------------------------
    def _collect(self) -> None:
        while self._inflight and self._inflight[0].done():
            fut = self._inflight.popleft()
            if (exc := fut.exception()) is not None:
                self._errors.append(exc)
        with self._fd_lock:
            io = self._io_inflight
            while io and io[0].done():
                if (exc := io.popleft().exception()) is not None:
                    self._errors.append(exc)

    def _raise_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise first_error(errors)

    def claim(self, target: BlockTarget, index: int) -> Ticket:
        """The place in line of a write of block ``index`` of ``target`` made
        now: a write submitted with it lands as if submitted now (a commit in
        the background takes the partly filled blocks it will write when it
        starts, and submits them after the appends that go on meanwhile)."""
        path = target.path(index)
        with self._fd_lock:
            return Ticket(path, *self._landings.claim(path))

    async def submit(
        self,
        target: BlockTarget,
        index: int,
        rows: np.ndarray[Any, Any],
        *,
        whole: bool = True,
        ticket: Ticket | None = None,
    ) -> asyncio.Future[None]:
        """Start writing ``rows`` as block ``index`` of ``target`` (padded unless
        ``whole``), in its place in line (``ticket``, from :meth:`claim`;
        default: now).

        ``rows`` must stay untouched until the returned future is done.
        """
        if ticket is None:
            ticket = self.claim(target, index)
        return await self._start(self._job, target, ticket, rows, whole)

    async def submit_rows(
        self,
        target: BlockTarget,
        index: int,
        row: int,
        rows: Sequence[np.ndarray[Any, Any]],
        *,
        full: bool,
        now: bool = False,
    ) -> asyncio.Future[None]:
        """Start writing ``rows`` (each one row, or a stack of rows) in place into
        chunk ``index`` of ``target`` from row ``row`` of the chunk; ``full``: they
        end the chunk. ``rows`` must stay untouched until the future is done.

        ``now``: write them here, in the caller's thread (the caller would wait
        for the job anyway, and has no other to run beside it)."""
        buffers = [np.ascontiguousarray(r).reshape(-1).view(np.uint8).data for r in rows]
        if now or sum(b.nbytes for b in buffers) <= INLINE_ROWS:
            # A few bytes (steps, times, scalar fields): one pwritev here costs
            # microseconds, a job in the pool tens (a thread hand-off each way).
            # Rows the caller waits for alone: the hand-offs are pure latency.
            await self._raise_failed()
            self._rows_job(target, index, row, buffers, full)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return await self._start(self._rows_job, target, index, row, buffers, full)

    async def _raise_failed(self) -> None:
        """If a job failed: wait for every job in flight, then raise (see
        :meth:`drain`), so that all their failures are collected (one raised,
        the others noted) and none still writes once the failure is reported."""
        self._collect()
        if self._errors:
            await self.drain()

    async def _start(self, fn: Any, *args: Any) -> asyncio.Future[None]:
        await self._raise_failed()
        while len(self._inflight) >= self.max_inflight:
            await asyncio.wait([_wrapped(self._inflight[0])])
            await self._raise_failed()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix="snapsink-zarr"
            )
        fut = self._pool.submit(fn, *args)
        self._inflight.append(fut)
        return _wrapped(fut)

    async def drain(self, *, raise_errors: bool = True) -> None:
        """Wait for every job; raise the first failure (see :func:`first_error`)."""
        if self._inflight:
            await asyncio.wait([_wrapped(f) for f in self._inflight])
        # the jobs are done, and handed the I/O thread their last writes
        with self._fd_lock:
            io = list(self._io_inflight)
        if io:
            await asyncio.wait([_wrapped(f) for f in io])
        self._collect()
        if raise_errors:
            self._raise_errors()

    def sync(self) -> None:
        """fsync the files written without one and the directories changed. Blocking:
        run it in a worker thread, after :meth:`drain` of the jobs it must cover.

        It syncs what the jobs done so far wrote, taken at its start; jobs that
        run meanwhile (the next frames' rows, while a commit runs in the
        background) are left to the next sync. A chunk file whose last row is
        written is closed once synced (no job writes it again).
        """
        with self._fd_lock:
            dirty, self._dirty = self._dirty, set()
            paths = sorted(dirty)
            fds = [self._fds[path] for path in paths]
            for path in paths:  # a user: no job closes it while it is synced
                self._use(path)
            done = self._full & dirty
            self._full -= done
            files, self._unsynced = sorted(self._unsynced), set()
            dirs, self._dirs = self._dirs, set()
        try:
            for fd in fds:
                _datasync(fd)
        finally:
            with self._fd_lock:
                for path in paths:
                    self._unuse(path)
                for path in done:  # no job writes it again
                    self._directs.pop(path).close()
                    os.close(self._fds.pop(path))
        _fsync_paths(files, dirs)

    def shutdown(self) -> None:
        """Stop the pool (its jobs are done or abandoned after :meth:`drain`) and
        close the chunk files still open (synced or not: the last commit stands)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._staging.stop()  # a job still waiting for a buffer writes buffered
        with self._fd_lock:
            io_pool, self._io_pool = self._io_pool, None
            self._io_inflight.clear()
        if io_pool is not None:
            io_pool.shutdown(wait=False)
        with self._fd_lock:
            fds, self._fds = self._fds, {}
            directs, self._directs = self._directs, {}
            self._users.clear()
            self._waiting.clear()
            self._dirty.clear()
            self._full.clear()
        for direct in directs.values():
            direct.close()
        for fd in fds.values():
            os.close(fd)


#: Open chunk files above which one whose last row is written is closed when its
#: last job ends (fsynced by path at the next sync) instead of at the next sync
OPEN_CHUNKS = 64


def _fsync_paths(files: Iterable[Path], dirs: Iterable[Path]) -> None:
    """fsync ``files``, then ``dirs`` deepest first (a directory after the
    entries below it). A path gone meanwhile is skipped: it was replaced or
    trimmed since, and its successor was fsynced."""
    for path in sorted(files):
        with contextlib.suppress(FileNotFoundError):
            _fsync_fd_of(path)
    if os.name != "posix":  # pragma: no cover - directories cannot be fsynced elsewhere
        return
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):
            _fsync_fd_of(d, directory=True)


# -- zarr's own writes -------------------------------------------------------------------
def _dirs_to_root(root: Path, d: Path) -> Iterator[Path]:
    """``d`` and each directory above it, up to ``root`` (or to the top, for a
    ``d`` outside it): those whose entries a new file in ``d`` may have added."""
    while True:
        yield d
        if d == root or root not in d.parents:
            return
        d = d.parent


def _durable_replace(root: Path, tmp: Path, path: Path, *, exclusive: bool) -> bool:
    """fsync ``tmp``, move it to ``path`` and fsync the directories on the way to root
    (its parent alone when it replaces a file: the other entries did not change).

    ``exclusive``: never replace an existing ``path`` (returns False, tmp removed).
    """
    # replacing an existing file changes one entry, its parent's; a new file may
    # have new directories above it too
    replaces = not exclusive and os.path.lexists(path)
    if not _place(tmp, path, sync=True, exclusive=exclusive):
        return False
    if os.name == "posix":
        for d in _dirs_to_root(root, path.parent):
            _fsync_fd_of(d, directory=True)
            if replaces:
                break
    return True


class DurableLocalStore(LocalStore):
    """A zarr ``LocalStore`` whose writes are durable before they replace anything.

    zarr's LocalStore writes an object to a temporary file and renames it into
    place without an fsync: a power cut can then leave a renamed, empty
    ``zarr.json``. Here each ``set`` writes the temporary file through
    LocalStore itself, fsyncs it, renames it, and fsyncs the directories up to
    the root. Used for metadata and static arrays (a few small files a commit);
    frame chunks go through :class:`BlockWriter`.
    """

    #: whether writes skip their fsyncs now (inside :meth:`deferred`)
    _deferring = False
    #: objects written without their fsyncs: the files, and the directories
    #: whose entries they added; synced by :meth:`sync_deferred`
    _unsynced: tuple[set[Path], set[Path]] | None = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Write objects without their fsyncs inside this block, and remember
        them for :meth:`sync_deferred`: for the arrays a store creates before
        its first frame, which the first commit names (and syncs first). Each
        object is still written whole and renamed into place."""
        if self._unsynced is None:
            self._unsynced = (set(), set())
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @property
    def has_deferred(self) -> bool:
        """Objects written inside :meth:`deferred` wait for :meth:`sync_deferred`."""
        return self._unsynced is not None

    def sync_deferred(self) -> None:
        """fsync what was written inside :meth:`deferred` (files, then directories,
        deepest first). Blocking: run it in a thread."""
        unsynced, self._unsynced = self._unsynced, None
        if unsynced is not None:
            _fsync_paths(*unsynced)

    async def set(self, key: str, value: Buffer) -> None:
        await self._durable_set(key, value, exclusive=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # zarr asks this of every parent group at each array it creates: an
        # existing object (the common case) costs no temporary file and fsync.
        # One created meanwhile is still never replaced (exclusive placement).
        if os.path.lexists(self.root / key):  # noqa: ASYNC240 - one stat, local
            return
        await self._durable_set(key, value, exclusive=True)

    async def _durable_set(self, key: str, value: Buffer, *, exclusive: bool) -> None:
        path = self.root / key
        tmp = _tmp_path(path)
        await super().set(str(tmp.relative_to(self.root)), value)
        if not self._deferring or self._unsynced is None:
            await asyncio.to_thread(_durable_replace, self.root, tmp, path, exclusive=exclusive)
            return
        files, dirs = self._unsynced
        if _place(tmp, path, sync=False, exclusive=exclusive):
            files.add(path)
            dirs.update(_dirs_to_root(self.root, path.parent))  # new directories too
