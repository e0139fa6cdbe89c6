"""The writer process, seen from the sink: start it, serve its replies, close it.

The frames themselves go to the writer through the :class:`ProcessChannel` of
:mod:`.publish` (shared slots and the publication ring); a :class:`ProcessWriter`
is that channel's :class:`~snapsink._writer.publish.Control`: it starts the
process, sends the control messages, runs the proxy thread that reads the
writer's replies (flushed, done, error, closed) and reaps the process.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError, WriterError
from .._store import Resume, StoreSpec
from ._wire import Wire, decode_error, picklable
from .publish import ProcessChannel

__all__ = ["WRITERS", "ProcessWriter", "choose_writer", "store_spec"]

WRITERS = ("auto", "process", "thread")

#: writers whose control socket this process holds
_live_writers: weakref.WeakSet[ProcessWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child must not hold the writers' sockets: the writer learns of
    the sink's death from the end of its stream, which a copy in a child (a
    multiprocessing worker, say) would hold off for as long as the child lives."""
    for writer in list(_live_writers):
        writer.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Reaper:
    """Waits for the writer processes that said "closed" and are exiting, so
    that a sink's close never waits for a child's interpreter teardown.

    One daemon thread per process, started with the first writer (when a sink
    opens), not at each close: starting a thread there cost 0.15-2.5 ms of a
    close on the 2-core VM (the new thread waits for a core while the exiting
    child holds one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[subprocess.Popen[bytes]] | None = None
        self._pid = -1  # the process whose thread this is (a fork starts its own)

    def ensure(self) -> queue.SimpleQueue[subprocess.Popen[bytes]]:
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                q: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
                threading.Thread(
                    target=self._run, args=(q,), name="snapsink-writer-reaper", daemon=True
                ).start()
                self._queue, self._pid = q, os.getpid()
            return self._queue

    @staticmethod
    def _run(q: queue.SimpleQueue[subprocess.Popen[bytes]]) -> None:
        while True:
            q.get().wait()

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        self.ensure().put(proc)


_REAPER = _Reaper()


def store_spec(store: Any) -> tuple[StoreSpec | None, str]:
    """The store's description for a writer process, or None and why not."""
    if getattr(store, "wants_device", False):
        return None, "it keeps frames on the device"
    describe = getattr(store, "describe", None)
    if not callable(describe):
        return None, "it has no describe() method returning a snapsink StoreSpec"
    spec = describe()
    if not isinstance(spec, StoreSpec):
        return None, "its describe() returned no StoreSpec (it cannot be rebuilt elsewhere)"
    exc = picklable(spec)
    if exc is not None:
        return None, f"its description cannot be pickled ({type(exc).__name__}: {exc})"
    return spec, ""


def choose_writer(store: Any, writer: object) -> StoreSpec | None:
    """The store's description when ``writer`` asks for a process (and the
    store can move), None for a thread; ConfigError for a bad request."""
    if writer not in WRITERS:
        raise ConfigError(f"writer: expected 'auto', 'process' or 'thread', got {writer!r}")
    if writer == "thread":
        return None
    spec, why = store_spec(store)
    if spec is None and writer == "process":
        raise ConfigError(
            f"writer='process': {type(store).__name__} cannot be written from another "
            f"process: {why}; use writer='thread' (or 'auto')"
        )
    return spec


class ProcessWriter:
    """A writer process and the sink's end of its control channel.

    Parameters
    ----------
    spec
        How the writer rebuilds the store.
    label
        What ``ps`` shows on the writer's command line.
    """

    def __init__(self, spec: StoreSpec, label: str):
        self.spec = spec
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.wire: Wire | None = None
        self.channel: ProcessChannel | None = None
        self.on_flushed: Callable[[int], None] = lambda gen: None
        self.on_failed: Callable[[], None] = lambda: None
        self._proxy: threading.Thread | None = None
        #: the proxy's wake-up pipe (see nudge)
        self._nudge_r = self._nudge_w = -1
        self._closed_cleanly = False
        self._stop = False

    # -- startup ------------------------------------------------------------------
    def start(self) -> Resume | None:
        """Start the process, have it open the store; blocking.

        Returns the store's :class:`Resume` (or None). Raises what opening the
        store raised (e.g. StoreExistsError), or WriterError if the process
        could not start.
        """
        _REAPER.ensure()  # now, not at the close
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "snapsink._writer._child",
                    str(child.fileno()),
                    f"snapsink-writer {self.label}",
                ],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                # its own session: a Ctrl-C in the terminal interrupts the
                # simulation, never the writer draining its frames
                start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            raise WriterError(f"could not start the writer process: {exc}") from exc
        finally:
            child.close()
        self.wire = Wire(parent)
        _live_writers.add(self)
        try:
            # the path first: unpickling the description may import the store's module
            self.wire.send(("path", list(sys.path)))
            self.wire.send(("init", self.spec))
            got = self.wire.recv()
        except BaseException:
            self.abort()
            raise
        if got is None:
            self.abort()
            raise WriterError(
                f"the writer process exited while opening the store "
                f"({self._exit_status()}); its error output is above"
            )
        msg, _ = got
        if msg[0] == "error":
            self.abort()
            raise decode_error(msg[1])
        resume: Resume | None = msg[1]
        return resume

    def attach(self, channel: ProcessChannel) -> None:
        """Start serving ``channel``: the proxy thread reads the writer's replies."""
        self.channel = channel
        self._nudge_r, self._nudge_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._proxy = threading.Thread(
            target=self._serve, name="snapsink-writer-proxy", daemon=True
        )
        self._proxy.start()

    def send(self, msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
        assert self.wire is not None
        try:
            self.wire.send(msg, fds)
        except OSError:
            # The writer is gone; the proxy thread reports why.
            pass

    def nudge(self) -> None:
        """Wake the proxy thread from a wait with no timeout (channel lock held)."""
        if self._nudge_w >= 0:
            with contextlib.suppress(OSError):  # full: it is awake already
                os.write(self._nudge_w, b"!")

    # -- the proxy thread ----------------------------------------------------------
    def _serve(self) -> None:
        ch = self.channel
        wire = self.wire
        assert ch is not None and wire is not None
        sock = wire.sock.fileno()
        while True:
            # Device frames are published once their copy completed. The first
            # queued frame's copy is waited for here, so it is published the
            # moment it lands (the wait releases the GIL; the writer's messages
            # queue meanwhile, a copy takes micro- to milliseconds). Otherwise
            # look every 2 ms while device frames are in use (a capture may start
            # while this thread waits); host frames every 50 ms while one is queued
            # (the writer calls back when it advances, and this is the safety net),
            # and not at all while none is: each wake-up takes the GIL from the
            # simulation, and a thread waking every 50 ms made every GIL-releasing
            # NumPy op of a simulation's step cost 8-10 µs more (a 256 KiB copy: 3
            # µs without a sink, 11-13 µs with one, 3-4 µs with no tick; 2-core VM).
            # A frame left queued nudges it (ProcessChannel.proxy_idle).
            copying = ch.copying()
            if copying is not None and not select.select([wire.sock], [], [], 0)[0]:
                try:
                    copying.synchronize()
                except Exception:  # a CUDA error: the producer's next poll reports it
                    time.sleep(0.002)
                ch.pump()
                continue
            tick: float | None = 0.002
            if ch.device is None:
                tick = None if ch.idle_unless_queued() else 0.05
            ready, _, _ = select.select([sock, self._nudge_r], [], [], tick)
            if self._nudge_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._nudge_r, 4096)
            if sock not in ready:
                if ch.queue or ch.fifo_waiting:
                    ch.pump()
                continue
            got = wire.recv()
            if got is None:
                break
            msg, _ = got
            kind = msg[0]
            if kind == "done":
                ch.pump()
            elif kind == "flushed":
                ch.pump()
                self.on_flushed(msg[1])
            elif kind == "error":
                self._fail(decode_error(msg[1]))
            elif kind == "closed":
                # the store is committed and closed: the close need not wait
                # for the process to exit (it is reaped in the background)
                self._closed_cleanly = True
                break
        if not self._closed_cleanly and not self._stop:
            self._fail(
                WriterError(
                    f"the writer process died ({self._exit_status()}); frames "
                    "committed before stay readable"
                )
            )
        elif not self._closed_cleanly and ch.failure is None:
            self._fail(WriterError(f"the writer process ended early ({self._exit_status()})"))

    def _fail(self, exc: BaseException) -> None:
        ch = self.channel
        assert ch is not None
        ch.fail(exc)
        self.on_failed()

    def _exit_status(self) -> str:
        proc = self.proc
        if proc is None:
            return "not started"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"

    def forget_after_fork(self) -> None:
        """In a forked child: close this copy of the socket, touch nothing else
        (the proxy thread and the locks did not come along)."""
        wire, self.wire = self.wire, None
        self._stop = True
        self.proc = None
        if wire is not None:
            with contextlib.suppress(OSError):
                os.close(wire.sock.detach())
        self._close_nudge()

    # -- shutdown -----------------------------------------------------------------
    def close(self) -> None:
        """Publish what is left, have the writer commit and close the store, and
        wait for it to exit (blocking)."""
        ch = self.channel
        assert ch is not None
        # Frames waiting for a device copy or a spill file are published as they
        # become ready.
        while ch.failure is None and not ch.publish_all():
            time.sleep(0.0005)
        self._stop = True
        # Also after a failure: one found in this process (a device copy that
        # failed) leaves a healthy writer, which stores what was published,
        # commits and closes; a failed or dead writer ignores it (or is gone).
        self.send(("close", ch.published))
        if self._proxy is not None:
            self._proxy.join()
        with ch.lock:  # nudge() runs under it: never a write to a reused descriptor
            self._close_nudge()
        self._shutdown()
        ch.reap(final=self._closed_cleanly)

    def abort(self) -> None:
        """Stop the writer without waiting for frames (startup failed)."""
        self._stop = True
        self._shutdown()

    def _close_nudge(self) -> None:
        fds, (self._nudge_r, self._nudge_w) = (self._nudge_r, self._nudge_w), (-1, -1)
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _shutdown(self) -> None:
        if self.wire is not None:
            self.wire.close()
        proc = self.proc
        if proc is not None and self._closed_cleanly:
            # it said "closed" and is exiting: reap it without making the
            # simulation wait for an interpreter's teardown
            _REAPER.reap(proc)
        elif proc is not None:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged writer
                proc.kill()
                proc.wait()
        if self.channel is not None:
            self.channel.release_memory()
