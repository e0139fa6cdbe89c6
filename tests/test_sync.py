"""SyncSink: the same semantics for ordinary loops, on one background loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from conftest import FailingStore, GatedStore
from snapsink import (
    ClosedSinkError,
    ConfigError,
    HostMemory,
    NpyDirectory,
    SchemaError,
    Spill,
    SyncSink,
    WouldBlock,
    WriterError,
    WrongThreadError,
)
from snapsink import open as snapsink_open

pytestmark = pytest.mark.timeout(30)


def test_round_trip_and_capture() -> None:
    store = HostMemory()
    x = np.zeros(4)
    with SyncSink(store, capacity=2) as sink:
        for i in range(100):
            x[:] = i
            sink.write({"x": x}, step=2 * i, time=float(i))
            x[:] = -1
        sink.flush()
        assert len(store) == 100
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, 2 * np.arange(100))
    np.testing.assert_array_equal(traj["x"][:, 3], np.arange(100))
    np.testing.assert_array_equal(traj.times, np.arange(100.0))


def test_bad_input_then_good_frame() -> None:
    store = HostMemory()
    with SyncSink(store, schema={"x": "f4"}) as sink:
        with pytest.raises(SchemaError):
            sink.write({"y": 1.0})
        with pytest.raises(SchemaError):
            sink.write({"x": 1.0}, time=float("nan"))
        sink.write({"x": 1.0})
    assert len(store) == 1


def test_invalid_arguments_raise_before_any_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ConfigError):
        SyncSink(HostMemory(), policy="sometimes")
    assert threading.active_count() == before


def test_block_and_nowait() -> None:
    store = GatedStore()
    try:
        with SyncSink(store, capacity=2) as sink:
            sink.write({"v": 0.0})
            assert store.entered.wait(10)
            sink.write({"v": 1.0})
            with pytest.raises(WouldBlock):
                sink.write_nowait({"v": 2.0})
            done = threading.Event()

            def producer() -> None:
                sink.write({"v": 3.0})  # blocks until the gate opens
                done.set()

            t = threading.Thread(target=producer)
            t.start()
            assert not done.wait(0.1)
            store.gate.set()
            assert done.wait(10)
            t.join()
    finally:
        store.gate.set()
    np.testing.assert_array_equal(store.trajectory()["v"][:], [0.0, 1.0, 3.0])


def test_drop_and_spill_policies(tmp_path: Path) -> None:
    store = GatedStore()
    try:
        with SyncSink(store, capacity=2, policy="drop_newest") as sink:
            sink.write({"v": 0.0})
            assert store.entered.wait(10)
            for i in range(1, 10):
                sink.write({"v": float(i)})
            assert sink.statistics().dropped == 8
            store.gate.set()
        np.testing.assert_array_equal(store.trajectory().dropped_steps, np.arange(2, 10))
    finally:
        store.gate.set()
    store = GatedStore()
    try:
        with SyncSink(store, capacity=2, policy=Spill(tmp_path)) as sink:
            sink.write({"v": 0.0})
            assert store.entered.wait(10)
            for i in range(1, 30):
                sink.write({"v": float(i)})
            assert sink.statistics().spilled == 28
            store.gate.set()
    finally:
        store.gate.set()
    np.testing.assert_array_equal(store.trajectory()["v"][:], np.arange(30.0))


def test_many_threads_write_one_sink() -> None:
    store = HostMemory()
    with SyncSink(store, capacity=4) as sink:

        def producer(k: int) -> None:
            for _ in range(200):
                sink.write({"k": k})

        threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, np.arange(800))
    assert np.bincount(traj["k"][:]).tolist() == [200] * 4


def test_writer_error_and_close_semantics() -> None:
    store = FailingStore(fail_append_at=1)
    sink = SyncSink(store)
    sink.write({"v": 1.0})
    with pytest.raises(WriterError) as info:
        sink.flush()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(WriterError):
        sink.close()
    sink.close()  # closing twice is a no-op
    with pytest.raises(ClosedSinkError):
        sink.write({"v": 2.0})
    assert store.closed


def test_wrong_thread_is_refused() -> None:
    store = HostMemory()
    with SyncSink(store) as sink:
        portal = sink._loop.portal
        assert portal is not None

        async def from_loop() -> None:
            with pytest.raises(WrongThreadError, match="deadlock"):
                sink.write({"v": 1.0})
            with pytest.raises(WrongThreadError):
                sink.flush()

        portal.call(from_loop)
        sink.write({"v": 2.0})
    np.testing.assert_array_equal(store.trajectory()["v"][:], [2.0])


def test_existing_store_error_raises_from_constructor(tmp_path: Path) -> None:
    class Exists(HostMemory):
        def open(self) -> None:
            raise FileExistsError("already there")

    with pytest.raises(FileExistsError, match="already there"):
        SyncSink(Exists())


@pytest.mark.parametrize("commits_on_close", [False, True])
def test_the_final_commit_is_left_to_a_store_whose_close_commits(commits_on_close: bool) -> None:
    calls: list[str] = []

    class Recording(HostMemory):
        def commit(self) -> None:
            calls.append("commit")

        def close(self) -> None:
            calls.append("close")

    Recording.commits_on_close = commits_on_close  # type: ignore[attr-defined]
    store = Recording()
    with SyncSink(store) as sink:
        for i in range(3):
            sink.write({"v": float(i)}, step=i)
    # a store whose close commits is not committed first; any other store is
    assert calls == (["close"] if commits_on_close else ["commit", "close"])
    np.testing.assert_array_equal(store.trajectory()["v"], [0.0, 1.0, 2.0])


def test_used_after_loop_thread_died() -> None:
    sink = SyncSink(HostMemory())
    portal = sink._loop.portal
    assert portal is not None
    portal.call(sink._loop.stopped.set)  # the loop ends under the sink's feet
    sink._loop.thread.join(10)
    with pytest.raises(ClosedSinkError, match="thread has stopped"):
        sink.write({"v": 1.0})
    sink.close()


def test_sync_sink_inside_async_code_via_thread() -> None:
    """A SyncSink may be driven from a worker thread of an async program."""
    store = HostMemory()

    async def main() -> None:
        with SyncSink(store) as sink:
            await anyio.to_thread.run_sync(lambda: [sink.write({"v": float(i)}) for i in range(10)])

    anyio.run(main)
    assert len(store) == 10


def test_a_failing_close_is_noted_on_the_body_error_never_hiding_it() -> None:
    """The block's own exception propagates; the store's failure at close is
    a note on it (and raises on its own when the block raised nothing)."""
    with pytest.raises(KeyError) as info:
        with SyncSink(FailingStore(fail_append_at=1, fail_commit=True)) as sink:
            sink.write({"x": np.zeros(3)}, step=0)
            raise KeyError("the simulation failed")
    notes = getattr(info.value, "__notes__", [])
    assert any(n.startswith("snapsink: closing the sink also failed: WriterError") for n in notes)
    with pytest.raises(WriterError):
        with SyncSink(FailingStore(fail_append_at=1)) as sink:
            sink.write({"x": np.zeros(3)}, step=0)


class _InterruptedOnce(threading.Event):
    """The constructor's wait for the loop, interrupted once (a Ctrl-C)."""

    interrupted = False

    def wait(self, timeout: float | None = None) -> bool:
        main = threading.current_thread() is threading.main_thread()
        if main and not _InterruptedOnce.interrupted:
            _InterruptedOnce.interrupted = True
            raise KeyboardInterrupt
        return super().wait(timeout)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_interrupted_constructor_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """Ctrl-C while SyncSink waits for its loop to open the store: the open
    goes on, and is closed (the store's lock free, no writer left)."""
    import snapsink._sync as sync_module

    init = sync_module._LoopThread.__init__

    def with_interrupted_wait(self: Any, sink: Any) -> None:
        init(self, sink)
        self._ready = _InterruptedOnce()

    monkeypatch.setattr(_InterruptedOnce, "interrupted", False)
    monkeypatch.setattr(sync_module._LoopThread, "__init__", with_interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        SyncSink(NpyDirectory(tmp_path / "run"), writer=writer)
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name == "snapsink-sync-loop"]
    with SyncSink(NpyDirectory(tmp_path / "run", mode="a"), writer=writer) as sink:
        sink.write({"x": np.float64(1.0)}, step=0)  # the lock was released
    assert snapsink_open(tmp_path / "run")["x"][:].tolist() == [1.0]


# A script whose main thread ends while a non-daemon thread still writes: the
# frames it writes while the exit hooks run (its hook, registered after
# snapsink's, runs first) are stored, and the sink is not closed under it. An
# idle executor worker (it ends only in concurrent.futures' own hook) must not
# hold the exit up.
_LIVE_WRITER_AT_EXIT = r"""
import threading
from concurrent.futures import ThreadPoolExecutor
import numpy as np, snapsink

sink = snapsink.SyncSink(snapsink.NpyDirectory({run!r}), writer="thread")
exiting = threading.Event()
threading._register_atexit(exiting.set)
pool = ThreadPoolExecutor(1)
pool.submit(int).result()

def simulation():
    sink.write({{"x": np.full(4, 0.0)}}, step=0)
    exiting.wait()
    for i in range(1, 50):
        sink.write({{"x": np.full(4, float(i))}}, step=i)

threading.Thread(target=simulation).start()
"""


def test_exit_waits_for_a_live_thread_writing_to_the_sink(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = _LIVE_WRITER_AT_EXIT.format(run=str(tmp_path / "run"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ClosedSinkError" not in done.stderr, done.stderr
    traj = snapsink_open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(50))
    assert traj["x"][:, 0].tolist() == [float(i) for i in range(50)]


class _GatedFailing(GatedStore):
    """Its appends wait for the gate, then fail."""

    def append(self, batch: Any) -> None:
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        raise OSError(28, "No space left on device (injected)")


def _signal_draining(sink: SyncSink) -> threading.Event:
    """An event set once a close has begun to drain the sink, on its loop."""
    draining = threading.Event()
    aclose = sink._sink.aclose

    async def signalling() -> None:
        draining.set()
        await aclose()

    sink._sink.aclose = signalling  # type: ignore[method-assign]
    return draining


@pytest.mark.parametrize("form", ["close", "with"])
@pytest.mark.parametrize("fails", [False, True])
def test_a_close_during_another_threads_close_waits_for_it(form: str, fails: bool) -> None:
    """Each close returns once the store holds every frame, and raises the
    error of the close that drained."""
    store = _GatedFailing() if fails else GatedStore()
    try:
        sink = SyncSink(store, capacity=8)
        for i in range(5):
            sink.write({"v": float(i)}, step=i)
        draining = _signal_draining(sink)
        stored: dict[str, int] = {}
        errors: dict[str, BaseException] = {}

        def close(who: str) -> None:
            try:
                if who == "second" and form == "with":
                    with sink:
                        pass
                else:
                    sink.close()
            except BaseException as exc:
                errors[who] = exc
            stored[who] = len(store)

        first = threading.Thread(target=close, args=("first",))
        first.start()
        assert draining.wait(10)  # the first close drains, held by the store's gate
        second = threading.Thread(target=close, args=("second",))
        second.start()
        second.join(0.1)  # the old code returned here, with the gate still closed
        store.gate.set()
        first.join(10)
        second.join(10)
    finally:
        store.gate.set()
    if fails:
        assert stored == {"first": 0, "second": 0}
        assert isinstance(errors["first"], WriterError)
        assert isinstance(errors["first"].__cause__, OSError)
        assert errors.get("second") is errors["first"]
    else:
        assert errors == {}
        assert stored == {"first": 5, "second": 5}
        np.testing.assert_array_equal(store.trajectory()["v"][:], np.arange(5.0))
    sink.close()  # once closed, closing again is a no-op


# At exit, a close under way in a daemon thread: the exit hook waits for it.
_CLOSE_UNDER_WAY_AT_EXIT = r"""
import threading, time
import numpy as np, snapsink

gate = threading.Event()

class Slow(snapsink.NpyDirectory):
    def append(self, batch):
        gate.wait()
        time.sleep(0.3)  # a store slower than the interpreter's exit
        super().append(batch)

sink = snapsink.SyncSink(Slow({run!r}), writer="thread")
for i in range(5):
    sink.write({{"x": np.full(4, float(i))}}, step=i)
draining = threading.Event()
aclose = sink._sink.aclose
async def signalling():
    draining.set()
    await aclose()
sink._sink.aclose = signalling
threading.Thread(target=sink.close, daemon=True).start()
draining.wait()
threading._register_atexit(gate.set)
"""


def test_exit_waits_for_a_close_under_way_in_another_thread(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = _CLOSE_UNDER_WAY_AT_EXIT.format(run=str(tmp_path / "run"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    traj = snapsink_open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(5))
    assert traj["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("call", ["close", "flush"])
def test_close_or_flush_from_a_handler_that_interrupted_a_write_is_refused(call: str) -> None:
    """A signal handler runs in the thread it interrupted, maybe inside
    write() with the channel's lock held: a close or flush there would wait
    for that write forever. It raises WrongThreadError, and the sink carries on
    once the handler returned. (The handler is simulated: the lock held as the
    interrupted write holds it.)"""
    store = HostMemory()
    sink = SyncSink(store)
    try:
        sink.write({"x": np.arange(3.0)}, step=0)
        ch = sink._sink._channel
        assert ch is not None
        with ch.lock:  # inside write(), as the interrupted thread is
            with pytest.raises(WrongThreadError, match="signal handler"):
                getattr(sink, call)()
            assert sink.statistics().written + sink.statistics().queued == 1
        sink.write({"x": np.arange(3.0) + 1}, step=1)
    finally:
        sink.close()
    assert store.trajectory().steps.tolist() == [0, 1]
    assert np.asarray(store.trajectory()["x"][1]).tolist() == [1.0, 2.0, 3.0]


def test_a_close_interrupted_while_it_drains_is_finished_by_the_next_close() -> None:
    """Ctrl-C while close() waits for the drain: the drain goes on in the
    loop, and the next close waits for it (it returned at once, with the
    store not yet complete, and a copy's clean-up raced the drain)."""
    import signal

    store = GatedStore()
    sink = SyncSink(store, capacity=8)
    for i in range(5):
        sink.write({"x": np.full(3, float(i))}, step=i)
    assert store.entered.wait(10)
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    # two: the first ends the wait for the drain, the second the wait for
    # the loop thread that close() does on its way out
    threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
    threading.Timer(0.6, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        sink.close()  # the gate is shut: the drain waits
    assert not store.batches  # nothing stored yet
    threading.Timer(0.3, store.gate.set).start()
    sink.close()
    assert store.trajectory().steps.tolist() == [0, 1, 2, 3, 4]
    sink.close()  # done: a no-op


def test_a_write_from_a_handler_that_interrupted_a_spill_write_is_refused(tmp_path: Path) -> None:
    """A signal handler's write while this thread writes a frame to the spill
    (no lock held then) would wait for that frame's turn forever; it raises
    WrongThreadError, and the interrupted frame is stored as it was (the
    error path must not settle the interrupted write's spill ticket)."""
    store = GatedStore()
    sink = SyncSink(store, capacity=1, policy=Spill(tmp_path / "spill"))
    ch = sink._sink._channel
    assert ch is not None
    inner: list[BaseException] = []
    spill_write = ch.spill_write

    def interrupted(*args: Any, **kwargs: Any) -> None:
        try:  # what a handler running here would do
            sink.write({"x": np.full(2, 99.0)}, step=99)
        except BaseException as exc:
            inner.append(exc)
        spill_write(*args, **kwargs)

    try:
        sink.write({"x": np.full(2, 0.0)}, step=0)  # held by the store's gate
        assert store.entered.wait(10)
        ch.spill_write = interrupted  # type: ignore[method-assign]
        sink.write({"x": np.full(2, 1.0)}, step=1)  # spilled
        ch.spill_write = spill_write  # type: ignore[method-assign]
        store.gate.set()
        sink.write({"x": np.full(2, 2.0)}, step=2)
    finally:
        store.gate.set()
        sink.close()
    assert len(inner) == 1 and isinstance(inner[0], WrongThreadError), inner
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 1, 2]
    assert np.asarray(traj["x"][:, 0]).tolist() == [0.0, 1.0, 2.0]


def test_a_flush_waiting_when_another_thread_closes_returns_once_stored() -> None:
    """The close from another thread stores and commits every frame the flush
    waits for: the flush returns; one that reaches the loop after the close
    stopped it raises ClosedSinkError (not the portal's RuntimeError)."""
    store = GatedStore()
    sink = SyncSink(store, capacity=8, writer="thread")
    flushing = threading.Event()
    flush = sink._sink.flush

    async def signalling() -> None:
        flushing.set()  # (it then waits in the flush, before the loop runs the close)
        await flush()

    sink._sink.flush = signalling  # type: ignore[method-assign]
    draining = _signal_draining(sink)
    got: dict[str, BaseException | None] = {}
    saw: dict[str, int] = {}

    def call(name: str, op: Any) -> None:
        try:
            op()
            got[name] = None
        except BaseException as exc:
            got[name] = exc
        saw[name] = len(store)

    try:
        for i in range(5):
            sink.write({"v": float(i)}, step=i)
        flusher = threading.Thread(target=call, args=("flush", sink.flush))
        flusher.start()
        assert flushing.wait(10)
        closer = threading.Thread(target=call, args=("close", sink.close))
        closer.start()
        assert draining.wait(10)  # the close began before the store took a frame
        store.gate.set()
        flusher.join(10)
        closer.join(10)
    finally:
        store.gate.set()
    assert got == {"flush": None, "close": None}
    assert saw == {"flush": 5, "close": 5}
    np.testing.assert_array_equal(store.trajectory()["v"][:], np.arange(5.0))
    sink._check_caller = lambda: None  # type: ignore[method-assign]  # as if it passed first
    with pytest.raises(ClosedSinkError, match="closed"):
        sink.flush()
