"""NpyDirectory's commits, run in the background while appends go on.

Why: a commit's fsync waits for the disk (milliseconds to tens of
milliseconds for a few MiB on the machines measured, and it varies run to
run), and while the writer waits in it, it takes no frames: the sink's slots
fill, and the simulation waits for room. A commit started in the background
lets the writer go on appending (to the page cache) while the disk syncs, so
the writer's pace is the larger of the two, not their sum.

The rules that keep commit-last:

- A commit is a snapshot taken in the writer's thread: the rows each data
  file holds, and the metadata naming exactly those rows (built there, from
  the store's state at that moment). The background thread only does I/O:
  each file's header naming its snapshot rows, fdatasync; then
  ``metadata.json`` replaced atomically. Rows appended meanwhile lie past the
  snapshot: never named before they are durable.
- At most one commit is in flight. A commit falling due while one runs waits
  for the next append (commits then come less often, never out of order).
- ``commit()`` (a flush, the close) waits for the one in flight and commits
  the rest in the caller's thread: when it returns, everything appended is
  durable and visible. A failed background commit is raised by the next
  append or commit, and the store stops committing (as after a failed
  fsync in the caller's thread).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

from ._lock import StoreLock
from ._npyfile import GrowableNpyFile, fsync_dir, replace_atomically
from ._npyformat import METADATA, METADATA_TMP

__all__ = ["Committer", "StoreHandles"]


class Committer:
    """One store's background commit: at most one in flight."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._on_done: Callable[[], None] | None = None
        #: the process whose thread runs the commits (a forked copy has none)
        self._pid = os.getpid()

    def busy(self) -> bool:
        """A commit is running."""
        return self._future is not None and not self._future.done()

    def start(self, job: Callable[[], None], on_done: Callable[[], None]) -> None:
        """Run ``job`` in the background; ``on_done`` runs in the caller's
        thread at the :meth:`collect` after it succeeded. Nothing may be in
        flight (call :meth:`collect` first)."""
        assert self._future is None
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="snapsink-npy-commit"
            )
        self._future = self._pool.submit(job)
        self._on_done = on_done

    def start_commit(
        self,
        dirty: list[tuple[GrowableNpyFile, int]],
        directory: str,
        metadata: str,
        *,
        new_entries: bool,
        check: Callable[[], None],
        on_done: Callable[[], None],
    ) -> None:
        """Commit in the background: each file in ``dirty`` durable with the
        rows its snapshot names, ``check()`` (the files are still the store's),
        the directory's new entries, then ``metadata`` (naming exactly those
        rows) as ``metadata.json``. At the :meth:`collect` after it ended, the
        files' committed rows move, then ``on_done()``."""

        def job() -> None:
            for f, rows in dirty:
                f.sync_rows(rows)
            check()
            if new_entries:
                fsync_dir(directory)
            replace_atomically(directory, METADATA_TMP, METADATA, metadata.encode("utf-8"))

        def done() -> None:
            for f, rows in dirty:
                f.committed = max(f.committed, rows)
            on_done()

        self.start(job, done)

    def collect(self, *, wait: bool) -> None:
        """Finish the commit in flight, if it ended (or, with ``wait``, once it
        ends): apply its result, or raise its error."""
        fut = self._future
        if fut is None or (not wait and not fut.done()):
            return
        self._future = None
        on_done, self._on_done = self._on_done, None
        fut.result()
        if on_done is not None:
            on_done()

    def shutdown(self) -> None:
        """Wait for the commit in flight (its error is dropped: the store is
        being closed after a failure) and stop the thread. In a process forked
        from the store's (its finalizer at the child's exit), nothing: the
        commit in flight is the parent's, and its thread is not in the child,
        so its future would never end."""
        if os.getpid() != self._pid:
            self._future = self._pool = self._on_done = None
            return
        fut, self._future = self._future, None
        if fut is not None:
            concurrent.futures.wait([fut])
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class StoreHandles:
    """What an open NpyDirectory holds: its data files, a descriptor of its
    directory (the directory it writes, whatever its path names later) and
    the single-writer lock. Closed by ``close()`` or by the store's finalizer."""

    __slots__ = ("committer", "dir_fd", "files", "lock")

    def __init__(self) -> None:
        self.files: dict[str, GrowableNpyFile] = {}
        self.dir_fd = -1
        self.lock: StoreLock | None = None
        self.committer = Committer()

    def start_writeback(self) -> None:
        """Start the disk on every file's rows written since the last call."""
        for f in self.files.values():
            f.start_writeback()

    def close(self) -> None:
        try:
            self.committer.shutdown()  # first: it writes through the descriptors
            for f in self.files.values():
                f.close()
            self.files.clear()
        finally:
            if self.dir_fd >= 0:
                fd, self.dir_fd = self.dir_fd, -1
                os.close(fd)
            if self.lock is not None:
                self.lock.release()  # last: nothing of ours is open any more
                self.lock = None
