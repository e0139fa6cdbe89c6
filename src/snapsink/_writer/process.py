"""The writer process, seen from the sink: start it, serve its replies, close it.

The frames themselves go to the writer through the :class:`ProcessChannel` of
:mod:`.publish` (shared slots and the publication ring); a :class:`ProcessWriter`
is that channel's :class:`~snapsink._writer.publish.Control`: it starts the
process, sends the control messages, runs the proxy thread that reads the
writer's replies (flushed, done, error, closed) and reaps the process.
"""

from __future__ import annotations

import contextlib
import copyreg
import importlib.machinery
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from typing import Any

from .._errors import ConfigError, WriterError
from .._store import Resume, StoreSpec
from . import _start
from ._wire import Wire, decode_error, picklable
from .publish import ProcessChannel

__all__ = ["WRITERS", "ProcessWriter", "choose_writer", "store_spec", "writer_path"]

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


#: where the writer process starts (see _start: it imports this very snapsink)
_START = os.path.abspath(_start.__file__)
#: this package: the writer imports it from here, wherever its path leads
_PACKAGE = __name__.partition(".")[0]


def writer_path() -> list[str]:
    """This process's ``sys.path`` as the writer process gets it: each entry
    absolute, found where this process looks in it now (the working directory
    only where this process has it on its path)."""
    path = []
    for entry in sys.path:
        if not isinstance(entry, str):
            continue  # the import system skips these too
        try:
            if not entry:
                entry = os.getcwd()
            elif not os.path.isabs(entry):
                # a relative entry stays where it was first looked in (its
                # finder, cached, holds the directory) after an os.chdir
                where = getattr(sys.path_importer_cache.get(entry), "path", None)
                if not (isinstance(where, str) and os.path.isabs(where)):
                    where = os.path.abspath(entry)
                entry = where
        except OSError:  # the working directory is gone: nothing to find there
            continue
        path.append(entry)
    # once each (a notebook cell run again inserts its entry again): the path
    # travels in the environment, whose strings have a size limit
    return list(dict.fromkeys(path))


#: the control channel's pickle protocol (pickle.HIGHEST_PROTOCOL, see _wire)
_PROTOCOL = 5
#: what pickle writes as values, naming no class
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, bytearray})


def _named(obj: object) -> list[tuple[str, str]]:
    """The ``(module, name)`` of each class and function that the pickle of
    ``obj`` names, found as pickle finds them (``__reduce_ex__``, copyreg)."""
    names: dict[tuple[str, str], None] = {}
    seen: dict[int, object] = {}  # holds what it saw: no id is reused meanwhile
    todo: list[Any] = [obj]
    while todo:
        o = todo.pop()
        t = type(o)
        if t in _PLAIN or id(o) in seen:
            continue
        seen[id(o)] = o
        if t in (tuple, list, set, frozenset):
            todo.extend(o)
        elif t is dict:
            todo.extend(o.items())
        elif isinstance(o, type) or t is types.FunctionType:
            names[(getattr(o, "__module__", None) or "", o.__qualname__)] = None
        else:
            reduce = copyreg.dispatch_table.get(t)
            try:
                rv = reduce(o) if reduce is not None else o.__reduce_ex__(_PROTOCOL)
            except Exception:
                continue  # written natively (a PickleBuffer), or not at all
            if isinstance(rv, str):  # a name in the object's module
                names[(getattr(o, "__module__", None) or "", rv)] = None
                continue
            for part in rv:
                if isinstance(part, Iterator):  # list and dict items
                    todo.extend(part)
                else:
                    todo.append(part)
    return [name for name in names if name[0]]


def _found(name: str, path: list[str] | None, top_path: list[str]) -> ModuleSpec | None:
    """The spec the import system finds for ``name`` in a process whose
    ``sys.path`` is ``top_path`` (``path``: the package's, for a submodule)."""
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(name, top_path if path is None else path)
            else:
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec(name, path) if find_spec is not None else None
        except Exception:
            spec = None
        if spec is not None:
            return spec
    return None


def _where(spec: ModuleSpec) -> str | None:
    origin = spec.origin
    return os.path.realpath(origin) if origin and os.path.isabs(origin) else origin


def _not_importable(module: str, path: list[str]) -> str | None:
    """Why a writer process with ``sys.path`` ``path`` would not import this
    process's ``module`` (None if it would)."""
    if module == "__main__":
        # the writer's __main__ is its own start script
        return "__main__ is the script, notebook or -c code this process runs"
    parts = module.split(".")
    if parts[0] == _PACKAGE:
        return None  # the writer imports this very package (see _start)
    search: list[str] | None = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        mine = getattr(sys.modules.get(name), "__spec__", None)
        if not isinstance(mine, ModuleSpec):
            return f"module {name!r} was not imported from a file on sys.path"
        theirs = _found(name, search, path)
        if theirs is None:
            return f"no module {name!r} is on sys.path, where it looks (this one is {mine.origin})"
        if _where(theirs) != _where(mine):
            return (
                f"the writer process would import module {name!r} from {theirs.origin}, "
                f"not from {mine.origin}"
            )
        search = list(theirs.submodule_search_locations or ())
    return None


def _cannot_move(spec: StoreSpec) -> str | None:
    """Why a writer process could not rebuild the store from ``spec`` (None if
    it can): the description must survive the control channel, and every class
    and function it names must be importable there, from the same file."""
    exc = picklable(spec)
    if exc is not None:
        return f"its description cannot be pickled ({type(exc).__name__}: {exc})"
    path = writer_path()
    for module, name in _named(spec):
        why = _not_importable(module, path)
        if why is not None:
            return (
                f"its description names {module}.{name}, which the writer process cannot "
                f"import ({why}); define {name} in a module the writer process can import "
                "(a file on sys.path)"
            )
    return None


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
    why = _cannot_move(spec)
    if why is not None:
        return None, why
    return spec, ""


def _wait_exited(pid: int, timeout: float) -> bool | None:
    """Wait until child ``pid`` has exited, leaving it to be reaped: True once
    it has, False if it still runs after ``timeout``, None if it cannot be
    waited for (reaped already: by the kernel, where SIGCHLD is ignored, or by
    another waiter)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return None
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


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
    def start(self, spill_dir: str | None = None) -> Resume | None:
        """Start the process, have it open the store; blocking.

        ``spill_dir``: the sink's spill directory, made before the writer
        starts; the writer holds its lock from the start, and removes it if
        the sink's process dies before it could (while the store opens, or
        just after asking for the close).

        Returns the store's :class:`Resume` (or None). Raises what opening the
        store raised (e.g. StoreExistsError), or WriterError if the process
        could not start.
        """
        _REAPER.ensure()  # now, not at the close
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = writer_path()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",  # nothing on the path but this process's (see _start)
                    # the same sites (their .pth files install import hooks)
                    *(["-s"] if sys.flags.no_user_site else []),
                    *(["-S"] if sys.flags.no_site else []),
                    _START,
                    str(child.fileno()),
                    f"snapsink-writer {self.label}",
                ],
                env={
                    **os.environ,
                    _start.PATH_VAR: ",".join(os.fsencode(e).hex() for e in path),
                },
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
            # the path first: unpickling the description may import the store's
            # module (the writer has it already: it adds nothing new)
            self.wire.send(("path", path))
            if spill_dir is not None:
                self.wire.send(("spilldir", spill_dir))
            self.wire.send(("init", self.spec))
            got = self.wire.recv()
        except BaseException:
            self.abort()
            raise
        if got is None:
            self.abort()
            status = self._exit_status()
            # a signal (SIGKILL, the OOM killer) leaves no output to look for
            where = "" if status.startswith("killed") else "; its error output is above"
            raise WriterError(
                f"the writer process exited while opening the store ({status}){where}"
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
            try:
                got = wire.recv()
            except BaseException as exc:
                # an unreadable reply, or a failed read: this thread ending
                # silently left every flush and the close waiting forever
                failure = WriterError(
                    f"could not read a reply of the writer process ({type(exc).__name__}: "
                    f"{exc}); frames committed before stay readable"
                )
                failure.__cause__ = exc
                self._fail(failure)
                return
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
        if proc.returncode is None:
            exited = _wait_exited(proc.pid, timeout=2)
            if exited is False:
                return "still running"
            if exited:
                proc.wait()  # reap it, with its status
        code = proc.returncode
        ignored = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
        # subprocess reads a child that it could not wait for as exit code 0
        if code is None or (code == 0 and ignored):
            why = "this process ignores SIGCHLD" if ignored else "something else reaped it"
            return f"its exit status is unknown: {why}"
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
