"""The writer process, and the policy and error contracts held by both writer kinds.

Each contract runs against ``writer="thread"`` and ``writer="process"`` with
the same store class (an NpyDirectory subclass whose gate and fault are files,
see ``tests/process_stores.py``), and reads the store back from disk.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from conftest import wait_for_orphaned_writer
from process_stores import FailingNpy, GatedNpy
from snapsink import ConfigError, Field, Schema, Sink, Spill, SyncSink, WouldBlock, WriterError
from snapsink._staging.emulation import EmulatedDeviceArray, EmulatedStream, EmulationBackend
from snapsink._writer import _shm
from snapsink._writer.publish import ProcessChannel

pytestmark = pytest.mark.timeout(20)

WRITERS = ["thread", "process"]


def open_gate(gate: str) -> None:
    Path(gate).touch()


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


async def wait_path(path: str | Path) -> None:
    """Wait for a file another process creates (no event crosses processes)."""
    with anyio.fail_after(20):
        while not exists(path):  # noqa: ASYNC110
            await anyio.sleep(0.001)


def gated(tmp_path: Path, **kw: Any) -> tuple[GatedNpy, str]:
    gate = str(tmp_path / "gate")
    return GatedNpy(str(tmp_path / "run"), gate, **kw), gate


async def fill(sink: Sink, gate: str, n: int) -> None:
    """Write step 0, wait until the store is inside its append, write 1..n-1."""
    await sink.write({"v": np.zeros(2)}, step=0)
    await wait_path(gate + ".entered")
    for i in range(1, n):
        await sink.write({"v": np.full(2, float(i))}, step=i)


def expect_kind(sink: Sink, writer: str) -> None:
    assert sink.writer == writer
    assert (sink._process is not None) == (writer == "process")


# -- choosing the writer -------------------------------------------------------------
def test_auto_picks_a_process_for_disk_stores_and_a_thread_for_memory(tmp_path: Path) -> None:
    assert Sink(snapsink.NpyDirectory(tmp_path / "a")).writer == "process"
    assert Sink(snapsink.ZarrStore(tmp_path / "b")).writer == "process"
    assert Sink(snapsink.HostMemory()).writer == "thread"
    assert Sink(snapsink.NpyDirectory(tmp_path / "d"), writer="thread").writer == "thread"
    import zarr.storage

    assert Sink(snapsink.ZarrStore(zarr.storage.MemoryStore())).writer == "thread"

    class Local(snapsink.NpyDirectory):  # cannot be pickled: stays in this process
        pass

    assert Sink(Local(tmp_path / "c")).writer == "thread"


def test_bad_writer_requests_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="writer: expected 'auto', 'process' or 'thread'"):
        Sink(snapsink.HostMemory(), writer="fork")
    with pytest.raises(ConfigError, match="HostMemory cannot be written from another process"):
        Sink(snapsink.HostMemory(), writer="process")
    with pytest.raises(ConfigError, match="another process"):
        SyncSink(snapsink.HostMemory(), writer="process")


# -- the same contracts, both writer kinds ----------------------------------------------
@pytest.mark.parametrize("writer", WRITERS)
async def test_block_loses_nothing_and_bounds_the_channel(tmp_path: Path, writer: str) -> None:
    store, gate = gated(tmp_path)
    async with Sink(store, capacity=4, policy="block", writer=writer) as sink:
        expect_kind(sink, writer)
        await sink.write({"v": np.zeros(2)}, step=0)
        await wait_path(gate + ".entered")
        for i in range(1, 4):
            sink.write_nowait({"v": np.full(2, float(i))})
        with pytest.raises(WouldBlock, match="full"):
            sink.write_nowait({"v": np.full(2, 99.0)})
        assert sink.statistics().queued == 4
        open_gate(gate)
        for i in range(4, 300):
            await sink.write({"v": np.full(2, float(i))})
            assert sink.statistics().queued <= 4
    traj = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(traj.steps, np.arange(300))
    np.testing.assert_array_equal(traj["v"][:, 0], np.arange(300))
    st = sink.statistics()
    assert st.written == 300 and st.queued == 0 and st.peak_queued == 4
    assert st.bytes_written == 300 * 16


@pytest.mark.parametrize("writer", WRITERS)
async def test_drop_newest_counts_and_records_every_drop(tmp_path: Path, writer: str) -> None:
    store, gate = gated(tmp_path)
    async with Sink(store, capacity=4, policy="drop_newest", writer=writer) as sink:
        await fill(sink, gate, 20)
        assert sink.statistics().dropped == 16
        open_gate(gate)
    traj = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(traj.steps, [0, 1, 2, 3])
    np.testing.assert_array_equal(traj["v"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(traj.dropped_steps, np.arange(4, 20))
    assert sink.statistics().written == 4


@pytest.mark.parametrize("writer", WRITERS)
async def test_drop_oldest_keeps_the_newest(tmp_path: Path, writer: str) -> None:
    store, gate = gated(tmp_path)
    async with Sink(store, capacity=4, policy="drop_oldest", writer=writer) as sink:
        await fill(sink, gate, 20)
        assert sink.statistics().dropped == 16
        open_gate(gate)
    traj = snapsink.open(tmp_path / "run")
    # The thread writer holds one frame (being written); the writer process is
    # handed half the slots, so the frames it holds are kept too.
    kept = [0, 17, 18, 19] if writer == "thread" else [0, 1, 18, 19]
    np.testing.assert_array_equal(traj.steps, kept)
    np.testing.assert_array_equal(traj["v"][:, 1], kept)
    np.testing.assert_array_equal(
        traj.dropped_steps, sorted(set(range(20)) - set(kept))
    )


@pytest.mark.parametrize("writer", WRITERS)
async def test_spill_keeps_order_and_bits(tmp_path: Path, writer: str) -> None:
    store, gate = gated(tmp_path)
    spill = tmp_path / "spill"
    rng = np.random.default_rng(1)
    values = rng.standard_normal((40, 2))
    async with Sink(store, capacity=1, policy=Spill(spill), writer=writer) as sink:
        await sink.write({"v": values[0]}, step=0)
        await wait_path(gate + ".entered")
        for i in range(1, 40):
            await sink.write({"v": values[i]}, step=i)
        assert sink.statistics().spilled >= 38
        open_gate(gate)
    traj = snapsink.open(tmp_path / "run")
    np.testing.assert_array_equal(traj.steps, np.arange(40))
    assert traj["v"][:].tobytes() == values.tobytes()
    assert not any(p.is_file() for p in spill.rglob("*"))  # every spill file removed
    # the fields' bytes, as for frames held in memory (not as laid out on disk)
    assert sink.statistics().bytes_written == 40 * 16


@pytest.mark.parametrize("writer", WRITERS)
async def test_store_error_reaches_write_flush_and_close(tmp_path: Path, writer: str) -> None:
    store = FailingNpy(str(tmp_path / "run"), fail_at=2)
    with pytest.raises(WriterError, match="No space left") as at_close:
        async with Sink(store, capacity=2, writer=writer) as sink:
            await sink.write({"v": np.zeros(2)}, step=0)
            await sink.flush()
            await sink.write({"v": np.ones(2)}, step=1)
            with pytest.raises(WriterError) as at_flush:
                await sink.flush()
            assert isinstance(at_flush.value.__cause__, OSError)
            assert at_flush.value.__cause__.errno == 28
            with pytest.raises(WriterError) as at_write:
                await sink.write({"v": np.zeros(2)}, step=2)
            assert isinstance(at_write.value.__cause__, OSError)
    assert isinstance(at_close.value.__cause__, OSError)
    if writer == "process":  # the cause carries the writer's traceback
        assert any("snapsink writer process" in n for n in at_close.value.__cause__.__notes__)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [0]  # the flushed frame survives


@pytest.mark.parametrize("writer", WRITERS)
def test_sync_sink_flush_is_durable_and_visible(tmp_path: Path, writer: str) -> None:
    schema = Schema({"x": Field("float32", (None, 3)), "e": "float64", "n": "int16"})
    rng = np.random.default_rng(2)
    frames = [
        {
            "x": rng.standard_normal((1 + (7 * i) % 50, 3)).astype(np.float32),
            "e": float(rng.standard_normal()),
            "n": np.int16(i),
        }
        for i in range(60)
    ]
    with SyncSink(
        snapsink.NpyDirectory(tmp_path / "run"), capacity=3, schema=schema, writer=writer
    ) as sink:
        for i, f in enumerate(frames[:30]):
            sink.write(f, step=3 * i, time=0.5 * i)
        sink.flush()
        seen = snapsink.open(tmp_path / "run")
        assert len(seen) == 30
        for i, f in enumerate(frames[30:], 30):
            sink.write(f, step=3 * i, time=0.5 * i)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [3 * i for i in range(60)]
    assert traj.times is not None and traj.times.tolist() == [0.5 * i for i in range(60)]
    for i, f in enumerate(frames):
        assert traj["x"][i].tobytes() == f["x"].tobytes()
    assert traj["e"][:].tolist() == [f["e"] for f in frames]
    assert traj["n"][:].tolist() == list(range(60))


# -- what only a writer process does -------------------------------------------------------
def test_the_proxy_sleeps_while_nothing_is_queued(tmp_path: Path) -> None:
    """The sink's proxy thread wakes only for the writer's replies, never on a
    timer, while no frame waits to be published: each wake-up takes the GIL
    from the simulation (a 50 ms tick made every GIL-releasing NumPy op of a
    step cost 8-10 µs more)."""
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), capacity=4) as sink:
        for i in range(10):
            sink.write({"v": np.full(3, float(i))}, step=i)
        sink.flush()
        ch = sink._sink._channel
        assert isinstance(ch, ProcessChannel)
        looks = []
        real = ch.idle_unless_queued
        ch.idle_unless_queued = lambda: looks.append(1) or real()  # type: ignore[method-assign]
        time.sleep(0.5)
        assert len(looks) <= 1  # a 50 ms tick would have looked about 10 times
        sink.write({"v": np.full(3, 10.0)}, step=10)
    assert snapsink.open(tmp_path / "run")["v"][:, 0].tolist() == [float(i) for i in range(11)]


async def test_a_queued_frame_is_published_with_no_call_back_from_the_writer(
    tmp_path: Path,
) -> None:
    """Frames left queued (drop_oldest hands the writer half the slots) are
    published once the writer frees room, while the producer makes no call: the
    writer calls back, and if that call back is missed (a race the ring's flag
    allows), the proxy thread, nudged awake when the frames were queued, looks
    again on its own."""
    store, gate = gated(tmp_path)
    async with Sink(store, capacity=4, policy="drop_oldest", writer="process") as sink:
        await fill(sink, gate, 4)  # 0 and 1 with the writer, 2 and 3 queued
        ch = sink._channel
        assert isinstance(ch, ProcessChannel) and ch.ring is not None
        assert len(ch.queue) == 2
        ch.ring.set(_shm.WANT_DONE, 0)  # the call back is lost
        open_gate(gate)
        with anyio.fail_after(10):
            while sink.statistics().written < 4:  # noqa: ASYNC110 (another process)
                await anyio.sleep(0.01)
        assert sink.statistics().dropped == 0
    np.testing.assert_array_equal(snapsink.open(tmp_path / "run").steps, [0, 1, 2, 3])


@pytest.mark.parametrize(
    "dtype", ["float32", ">f8", "<i2", "bool", "complex64", "float16", "M8[s]", "u8"]
)
def test_capture_copies_every_layout_byte_for_byte(dtype: str) -> None:
    """copy_into: a contiguous array of the slot's dtype is copied as bytes under
    the GIL; anything else goes through np.copyto, with the same result."""
    from snapsink._writer.publish import copy_into

    base = np.arange(48).astype(dtype).reshape(8, 6)
    for value in (
        base[:4],  # contiguous, the slot's dtype: the memmove path
        np.asfortranarray(base[:4]),
        base[::2],  # strided
        base[:4].astype(base.dtype.newbyteorder()),  # the other byte order: a cast
        base[:4].astype("float64") if base.dtype.kind in "fiub" else base[:4],
    ):
        slot = np.full((4, 6), 7).astype(dtype)
        copy_into(slot, value)
        assert slot.tobytes() == np.asarray(value).astype(dtype, casting="unsafe").tobytes()
    empty = np.zeros((0, 6), dtype)
    copy_into(empty, np.zeros((0, 6), dtype))


def test_frames_in_every_layout_are_stored_bit_exact(tmp_path: Path) -> None:
    """Through the writer process: C and Fortran order, strided views, the other
    byte order and a safe cast all land as the values written."""
    schema = Schema({"a": Field("float32", (4, 6)), "b": Field("float64", (5,))})
    a = np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32)
    b = np.random.default_rng(4).standard_normal(10)
    frames = [
        {"a": a[:4], "b": b[:5]},
        {"a": np.asfortranarray(a[4:]), "b": b[5:].astype(">f8")},
        {"a": a[::2], "b": b[::2]},
        {"a": a[1::2].astype(np.float16), "b": b[1::2].astype(np.float32)},
    ]
    with SyncSink(
        snapsink.NpyDirectory(tmp_path / "run"), capacity=2, schema=schema, writer="process"
    ) as sink:
        for i, f in enumerate(frames):
            sink.write(f, step=i)
    traj = snapsink.open(tmp_path / "run")
    assert len(traj) == len(frames)
    for i, f in enumerate(frames):
        assert traj["a"][i].tobytes() == np.asarray(f["a"], np.float32).tobytes()
        assert traj["b"][i].tobytes() == np.asarray(f["b"], np.float64).tobytes()


async def test_zarr_store_runs_on_the_writers_loop(tmp_path: Path) -> None:
    data = np.arange(5000, dtype=np.float64).reshape(50, 100)
    async with Sink(snapsink.ZarrStore(tmp_path / "z.zarr", chunk_frames=8)) as sink:
        expect_kind(sink, "process")
        for i in range(50):
            await sink.write({"v": data[i]}, step=i)
    traj = snapsink.open(tmp_path / "z.zarr")
    assert traj["v"][:].tobytes() == data.tobytes()


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_an_async_driver_that_computes_on_its_loop_starves_no_store(
    tmp_path: Path, writer: str
) -> None:
    """ZarrStore under drop_newest, a driver whose only await is write: the store
    runs in the writer process, or on the writer thread's own loop, so frames
    are stored as fast as it goes (with the store on the driver's loop it
    stored 0 of 1,000 and dropped 992)."""
    a = np.random.default_rng(0).standard_normal((128, 128))
    n = 400
    store = snapsink.ZarrStore(tmp_path / "z.zarr")
    async with Sink(store, policy="drop_newest", writer=writer) as sink:
        for i in range(n):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.001:  # ~1 ms of compute on the loop
                a = np.tanh(a)
            await sink.write({"v": a[0]}, step=i)
    st = sink.statistics()
    assert st.written + st.dropped == n
    # not starved: with the store on the driver's loop this was 0 (ZarrStore's
    # own speed, and a shared 2-core machine, decide the rest)
    assert st.written >= n // 5, st
    traj = snapsink.open(tmp_path / "z.zarr")
    assert len(traj) == st.written
    assert sorted(traj.steps.tolist() + traj.dropped_steps.tolist()) == list(range(n))


async def test_killed_writer_process_is_a_writer_error_not_a_hang(tmp_path: Path) -> None:
    with pytest.raises(WriterError, match="writer process died") as at_close:
        async with Sink(snapsink.NpyDirectory(tmp_path / "run"), capacity=2) as sink:
            for i in range(5):
                await sink.write({"v": np.full(3, float(i))}, step=i)
            await sink.flush()
            proc = sink._process.proc  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(proc.wait)
            with anyio.fail_after(10), pytest.raises(WriterError, match="killed by signal 9"):
                for i in range(5, 1000):
                    await sink.write({"v": np.full(3, float(i))}, step=i)
            with pytest.raises(WriterError):
                await sink.flush()
    assert "killed by signal 9" in str(at_close.value)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist()[:5] == [0, 1, 2, 3, 4]  # committed frames intact
    assert traj["v"][4].tolist() == [4.0] * 3


def test_opening_errors_come_from_the_writer_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "someone-elses-file").write_text("x")
    with pytest.raises(snapsink.StoreExistsError):
        SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process")
    assert (tmp_path / "run" / "someone-elses-file").read_text() == "x"


def test_unclosed_sync_sink_is_drained_at_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import numpy as np, snapsink\n"
        f"s = snapsink.SyncSink(snapsink.NpyDirectory({str(tmp_path / 'run')!r}))\n"
        "for i in range(100): s.write({'v': np.full(4, float(i))}, step=i)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(100))
    assert traj["v"][99].tolist() == [99.0] * 4


def test_device_frames_land_in_registered_shared_memory(tmp_path: Path) -> None:
    """CPU emulation of the device path: the device-to-host copy targets the
    shared slot, which was page-locked (registered) first and unregistered at close."""
    rng = np.random.default_rng(3)
    host = [rng.standard_normal((64, 3)).astype(np.float32) for _ in range(30)]
    stream = EmulatedStream("caller")
    dev = EmulatedDeviceArray.empty((64, 3), np.float32)
    before = set(EmulationBackend.registered)
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), capacity=3) as sink:
        assert sink._sink._process is not None
        for i, h in enumerate(host):
            stream.launch(np.copyto, dev.host, h)  # the simulation's kernel
            sink.write({"x": dev, "e": float(i)}, step=i, stream=stream)
            stream.launch(np.copyto, dev.host, -1.0)  # overwritten right after
        assert len(EmulationBackend.registered - before) == 3  # one per slot
    assert EmulationBackend.registered == before
    traj = snapsink.open(tmp_path / "run")
    assert traj["x"][:].tobytes() == np.stack(host).tobytes()
    assert traj["e"][:].tolist() == [float(i) for i in range(30)]


@pytest.mark.parametrize(
    ("policy", "nowait"), [("drop_newest", False), ("drop_oldest", False), ("block", True)]
)
def test_under_max_bytes_room_comes_back_once_the_writer_stored_frames(
    tmp_path: Path, policy: str, nowait: bool
) -> None:
    """Two 512-byte frames do not fit ``max_bytes=1000``: each frame must find
    the bytes of the one before it given back once the writer stored it, and
    not be dropped (or refused by ``write_nowait``) on a stale count."""
    path = tmp_path / "run"
    with SyncSink(
        snapsink.NpyDirectory(path), policy=policy, max_bytes=1000, writer="process"
    ) as sink:
        ch = sink._sink._channel
        for i in range(8):
            frame = {"v": np.full(64, float(i))}
            if nowait:
                sink.write_nowait(frame, step=i)
            else:
                sink.write(frame, step=i)
            # wait for the writer's own counter (reading it gives nothing back)
            deadline = time.monotonic() + 10
            while ch.ring.get(_shm.DONE) < i + 1:
                assert time.monotonic() < deadline, "the writer never stored the frame"
                time.sleep(0.001)
        assert sink.statistics().dropped == 0
    traj = snapsink.open(path)
    assert traj.steps.tolist() == list(range(8))
    assert traj["v"][:, 0].tolist() == [float(i) for i in range(8)]
    assert traj.dropped_steps.size == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_drops_reach_the_store_when_the_simulation_is_killed(tmp_path: Path, policy: str) -> None:
    """The drop policy's record survives the simulation's SIGKILL as its frames
    do: every step is stored or recorded as dropped, none both, none neither."""
    path = str(tmp_path / "run")
    code = (
        "import os, signal, sys, numpy as np, snapsink\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from process_stores import SlowNpy\n"
        f"s = snapsink.SyncSink(SlowNpy({path!r}, 0.05), capacity=1, policy={policy!r},"
        " writer='process')\n"
        "for i in range(40): s.write({'x': np.full(8, float(i))}, step=i)\n"
        "print(s.statistics().dropped, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL, run.stderr
    dropped = int(run.stdout)
    # the orphaned writer stores what it was handed, commits and exits
    wait_for_orphaned_writer(path)
    traj = snapsink.open(path)
    stored, recorded = traj.steps.tolist(), traj.dropped_steps.tolist()
    assert len(recorded) == dropped > 0
    assert sorted(stored + recorded) == list(range(40))
    assert traj["x"][:, 0].tolist() == [float(s) for s in stored]


def _snapsink_memory() -> tuple[int, int]:
    """This process's descriptors and mappings of snapsink's memory files."""
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += "memfd:snapsink" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the listing's own descriptor, gone
    with open("/proc/self/maps") as maps:
        mapped = sum("memfd:snapsink" in line for line in maps)
    return fds, mapped


def test_close_releases_the_shared_memory_while_the_sink_lives_on(tmp_path: Path) -> None:
    """After the with-block the name ``sink`` still holds the sink: its slots and
    ring (memory and descriptors) are released all the same, and its statistics
    still read."""
    before = _snapsink_memory()
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), capacity=8, writer="process") as sink:
        for i in range(20):
            sink.write({"v": np.full(1 << 16, float(i))}, step=i)
        during = _snapsink_memory()
    # the ring and the slots made so far were mapped (a slot is made only when no
    # stored one is free: a writer that keeps up needs fewer than the capacity)
    assert during[1] >= before[1] + 2
    assert _snapsink_memory() == before
    st = sink.statistics()
    assert (st.written, st.queued, st.bytes_written) == (20, 0, 20 * 8 * (1 << 16))
    assert snapsink.open(tmp_path / "run")["v"][:, 0].tolist() == [float(i) for i in range(20)]


# -- what the writer process imports ------------------------------------------------------
_STORE_MODULE = """\
import snapsink


class {name}(snapsink.NpyDirectory):
    '''An NpyDirectory of its own module (NpyDirectory describes it by its class).'''
"""


def _written_and_read_back(store: Any, path: Path) -> str:
    """Write three frames through ``store`` with writer="auto"; the writer kind."""
    with SyncSink(store) as sink:
        for i in range(3):
            sink.write({"v": np.full(2, float(i))}, step=i)
    assert snapsink.open(path)["v"][:, 0].tolist() == [0.0, 1.0, 2.0]
    return sink.writer


@pytest.mark.parametrize("where", ["__main__", "a file loaded by path"])
def test_a_store_class_the_writer_cannot_import_gets_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A class of the script being run (or a notebook's cell), or of a module
    loaded from a file that is not on sys.path, pickles here but cannot be
    imported by a writer process: "auto" writes from a thread, and "process"
    says why (it was a raw AttributeError from the writer's unpickling)."""
    if where == "__main__":

        class Scripted(snapsink.NpyDirectory):
            pass

        Scripted.__module__, Scripted.__qualname__ = "__main__", "Scripted"
        monkeypatch.setattr(sys.modules["__main__"], "Scripted", Scripted, raising=False)
        cls: Any = Scripted
    else:
        import importlib.util

        (tmp_path / "plugin.py").write_text(_STORE_MODULE.format(name="Scripted"))
        spec = importlib.util.spec_from_file_location(
            "snapsink_test_plugin", tmp_path / "plugin.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "snapsink_test_plugin", module)
        spec.loader.exec_module(module)
        cls = module.Scripted
    assert _written_and_read_back(cls(tmp_path / "run"), tmp_path / "run") == "thread"
    with pytest.raises(ConfigError, match=r"Scripted cannot be written from another process") as e:
        Sink(cls(tmp_path / "other"), writer="process")
    assert "define Scripted in a module the writer process can import" in str(e.value)
    assert "writer='thread'" in str(e.value)


def test_a_relative_path_entry_keeps_its_directory_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store module found through "." on sys.path: after an os.chdir the
    writer process still imports it from where this process did (it looked for
    it in its own working directory, and failed to start)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "mods" / "snapsink_test_relstore.py").write_text(_STORE_MODULE.format(name="Rel"))
    monkeypatch.chdir(tmp_path / "mods")
    monkeypatch.syspath_prepend(".")
    monkeypatch.delitem(sys.modules, "snapsink_test_relstore", raising=False)
    from snapsink_test_relstore import Rel  # type: ignore[import-not-found]

    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _written_and_read_back(Rel(tmp_path / "run"), tmp_path / "run") == "process"


def test_the_writer_runs_the_snapsink_of_the_sink_not_another_copy(tmp_path: Path) -> None:
    """A script that puts a snapsink checkout on sys.path at run time, with
    another copy installed: the writer process runs the script's copy (it ran
    the installed one; with none installed it could not start at all)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "snapsink").symlink_to(Path(snapsink.__file__).parent)
    (tmp_path / "who.py").write_text(
        "import os, snapsink\n\n"
        "class Who(snapsink.NpyDirectory):\n"
        "    def open(self):\n"
        "        with open(self.path + '.who', 'w') as f:\n"
        "            f.write(snapsink.__file__)\n"
        "        return super().open()\n"
    )
    run = tmp_path / "run"
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(checkout)!r}, {str(tmp_path)!r}]\n"
        "import numpy as np, snapsink\n"
        "from who import Who\n"
        f"with snapsink.SyncSink(Who({str(run)!r})) as sink:\n"
        "    sink.write({'v': np.arange(3.0)}, step=0)\n"
        "print(sink.writer, snapsink.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    writer, parents = done.stdout.split()
    assert writer == "process"
    assert parents == str(checkout / "snapsink" / "__init__.py")
    assert (tmp_path / "run.who").read_text() == parents
    assert snapsink.open(run)["v"][0].tolist() == [0.0, 1.0, 2.0]


def test_a_module_in_the_working_directory_shadows_nothing_in_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``queue.py`` in the working directory, which is not on this process's
    path: the writer process imports the standard library's (the working
    directory came first on its path, and the writer failed to start)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "queue.py").write_text("raise ImportError('the queue.py of the cwd')\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and not p.startswith(".")])
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as sink:
        sink.write({"v": np.arange(3.0)}, step=0)
        pid = sink._sink._process.proc.pid  # type: ignore[union-attr]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # what ps shows names the store the writer writes
        assert f"snapsink-writer {sink._sink._store!r}".encode() in cmdline
    assert snapsink.open(tmp_path / "run")["v"][0].tolist() == [0.0, 1.0, 2.0]


def test_a_killed_writer_under_ignored_sigchld_is_not_reported_as_exit_code_0(
    tmp_path: Path,
) -> None:
    """With SIGCHLD ignored the kernel reaps the writer: its status cannot be
    known, and the error says so (it said "exit code 0" for a SIGKILL)."""
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(WriterError) as at_close:
            with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as sink:
                sink.write({"v": np.arange(3.0)}, step=0)
                sink.flush()
                os.kill(sink._sink._process.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
                with pytest.raises(WriterError) as at_flush:
                    sink.flush()
    finally:
        signal.signal(signal.SIGCHLD, before)
    for exc in (at_flush.value, at_close.value):
        assert "writer process died (its exit status is unknown: this process ignores SIGCHLD)" in (
            str(exc)
        )
        assert "exit code" not in str(exc)
    assert snapsink.open(tmp_path / "run")["v"][:].tolist() == [[0.0, 1.0, 2.0]]


def test_a_writer_killed_while_it_opens_the_store_sends_nobody_to_its_output(
    tmp_path: Path,
) -> None:
    """A writer process killed by a signal while it opens the store printed
    nothing: the error says it was killed, and no longer points at its "error
    output above" (which it says for one that exited with an error)."""
    from process_stores import OpenGatedNpy

    gate = str(tmp_path / "gate")

    def kill_the_writer() -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate + ".entered"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for pid in _children():
            if b"snapsink-writer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)

    import threading

    killer = threading.Thread(target=kill_the_writer)
    killer.start()
    try:
        with pytest.raises(WriterError) as info:
            SyncSink(OpenGatedNpy(str(tmp_path / "run"), gate), writer="process")  # opens
    finally:
        killer.join()
    assert "exited while opening the store (killed by signal 9)" in str(info.value)
    assert "output" not in str(info.value)
    # nothing was made, nothing is held: the same path opens
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as again:
        again.write({"v": np.arange(3.0)}, step=0)
    assert snapsink.open(tmp_path / "run")["v"][:].tolist() == [[0.0, 1.0, 2.0]]


def _children() -> list[str]:
    pids: list[str] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += f.read().split()
    return pids


_MANY_SLOTS = """
import os, resource, sys, numpy as np, snapsink
sys.path.insert(0, {tests!r})
from process_stores import GatedNpy
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # the usual 1024, scaled down
sink = snapsink.SyncSink(GatedNpy({run!r}, {gate!r}), capacity=400, writer="process")
for i in range(200):  # the store is stalled: each frame takes a slot of its own
    sink.write({{"x": np.full(4, i, np.float32)}}, step=i)
writer = sink._sink._process.proc.pid
with open(f"/proc/{{writer}}/limits") as f:
    limit = next(line.split()[3] for line in f if line.startswith("Max open files"))
open({gate!r}, "w").close()
sink.flush()
fds = len(os.listdir(f"/proc/{{writer}}/fd"))
sink.close()
print(limit, hard, fds, len(snapsink.open({run!r})))
"""


def test_a_writer_holds_a_slot_in_one_open_file_at_most_and_lifts_its_limit(
    tmp_path: Path,
) -> None:
    """200 slots in use (a stalled store) under a soft limit of 256 open files:
    the writer process held two descriptors per slot (the one received and the
    mapping's own) and died of EMFILE, losing frames whose write had returned.
    It now keeps only what its mapping needs, and lifts its own soft limit to
    the hard one (the simulation's limit stays as it was)."""
    code = _MANY_SLOTS.format(
        tests=str(Path(__file__).resolve().parents[1]),
        run=str(tmp_path / "run"),
        gate=str(tmp_path / "gate"),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    limit, hard, fds, stored = done.stdout.split()
    assert limit == hard  # lifted (the producer set 256)
    assert int(stored) == 200
    per_slot = 0 if sys.version_info >= (3, 13) else 1
    assert int(fds) <= 40 + per_slot * 200, fds  # the writer's own files, then the slots


def test_a_slot_the_open_file_limit_refuses_takes_nothing_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    """The simulation's own limit runs out while a slot is made: an OSError
    that names the capacity and the way out, nothing of the frame taken, and
    the sink goes on once descriptors are free again."""
    import resource

    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    gate = tmp_path / "gate"
    with SyncSink(GatedNpy(str(tmp_path / "run"), str(gate)), capacity=4) as sink:
        sink.write({"x": np.full(4, 0, np.float32)}, step=0)  # the store stalls on it
        hog: list[int] = []
        try:
            with pytest.raises(OSError, match="Too many open files"):
                while True:  # use up this process's descriptors
                    hog.append(os.open(os.devnull, os.O_RDONLY))
            with pytest.raises(OSError, match=r"slot 1 \(capacity=4\).*ulimit -n") as info:
                sink.write({"x": np.full(4, 1, np.float32)}, step=1)  # a new slot
            assert info.value.errno == errno.EMFILE
        finally:
            for fd in hog:
                os.close(fd)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == limits
        assert sink.statistics().queued == 1  # nothing of step 1 was taken
        gate.touch()
        for i in range(1, 6):
            sink.write({"x": np.full(4, i, np.float32)}, step=i)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(6))
    assert traj["x"][:].tolist() == [[float(i)] * 4 for i in range(6)]


# -- messages the writer process cannot read (probe E) ---------------------------------------
def test_a_message_the_writer_cannot_read_is_a_writer_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message naming a class the writer process cannot import (a module put
    on sys.path after the writer started): the writer fails as on a store
    error, and the sink raises WriterError at its flush and close, naming what
    could not be read. The writer's inbox thread died with the AttributeError,
    and the flush waited forever."""
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "snapsink_test_late.py").write_text("class Late:\n    pass\n")
    with pytest.raises(WriterError, match="could not read a message from the sink") as at_close:
        with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as sink:
            for i in range(3):
                sink.write({"v": np.full(2, float(i))}, step=i)
            sink.flush()
            monkeypatch.syspath_prepend(tmp_path / "late")  # the writer's path lacks it
            monkeypatch.delitem(sys.modules, "snapsink_test_late", raising=False)
            from snapsink_test_late import Late  # type: ignore[import-not-found]

            sink._sink._process.send(("wake", Late()))  # type: ignore[union-attr]
            with pytest.raises(WriterError) as at_flush:
                sink.flush()
            with pytest.raises(WriterError):
                sink.write({"v": np.zeros(2)}, step=3)
    for exc in (at_flush.value, at_close.value):
        cause = exc.__cause__
        assert isinstance(cause, RuntimeError), repr(cause)
        assert "could not read a message from the sink (ModuleNotFoundError" in str(cause)
        assert "snapsink_test_late" in str(cause)
        assert "after 3 frames stored" in str(cause)
        assert any("snapsink writer process" in n for n in cause.__notes__)
    traj = snapsink.open(tmp_path / "run")  # the frames stored stay committed
    assert traj.steps.tolist() == [0, 1, 2]
    assert traj["v"][:].tolist() == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]


def test_a_reply_the_sink_cannot_read_is_a_writer_error_not_a_hang(tmp_path: Path) -> None:
    """A reply of the writer that the sink's proxy thread fails to read: the
    sink fails with WriterError chained to the cause (the proxy thread died
    with it, and the flush waited forever)."""
    import pickle

    with pytest.raises(WriterError, match="could not read a reply") as at_close:
        with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as sink:
            sink.write({"v": np.arange(2.0)}, step=0)
            sink.flush()
            wire = sink._sink._process.wire  # type: ignore[union-attr]
            real = wire.recv

            def garbled() -> Any:
                real()  # the reply is read, and cannot be decoded
                raise pickle.UnpicklingError("garbled reply")

            wire.recv = garbled  # type: ignore[method-assign]
            sink.write({"v": np.arange(2.0) + 1}, step=1)
            with pytest.raises(WriterError, match="could not read a reply") as at_flush:
                sink.flush()
    for exc in (at_flush.value, at_close.value):
        assert isinstance(exc.__cause__, WriterError)
        assert isinstance(exc.__cause__.__cause__, pickle.UnpicklingError)
        assert "UnpicklingError: garbled reply" in str(exc)
    assert snapsink.open(tmp_path / "run").steps.tolist()[:1] == [0]


def test_enum_names_and_steps_reach_the_writer_process_as_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema declared with (str, Enum) names and dims, static names and
    attrs of the same enum, an IntEnum step, a float subclass's time: all reach
    the writer process as plain str, int and float, and read back so. The enum
    lives in __main__, which the writer cannot import: the pickled schema
    killed its inbox thread (a hang)."""
    import enum

    class Species(str, enum.Enum):  # noqa: UP042 - str() of it is "Species.HYDROGEN"
        HYDROGEN = "H"
        ATOMS = "atoms"

    class Step(enum.IntEnum):
        FIRST = 7

    class Seconds(float):
        pass

    for cls in (Species, Step, Seconds):
        cls.__module__, cls.__qualname__ = "__main__", cls.__name__
        monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    schema = Schema({Species.HYDROGEN: Field("f8", (2,), dims=(Species.ATOMS,))})
    store = snapsink.NpyDirectory(
        tmp_path / "run",
        static={Species.ATOMS: np.arange(2)},
        attrs={Species.HYDROGEN: Species.ATOMS},
    )
    with SyncSink(store, schema=schema, writer="process") as sink:
        sink.write({Species.HYDROGEN: np.ones(2)}, step=Step.FIRST, time=0.5)
        sink.write({"H": np.full(2, 2.0)}, step=8, time=Seconds(1.5))
    traj = snapsink.open(tmp_path / "run")
    assert list(traj.fields) == ["H"] and type(next(iter(traj.fields))) is str
    assert traj.steps.tolist() == [7, 8]
    assert traj.times is not None and traj.times.tolist() == [0.5, 1.5]
    assert traj["H"][:].tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert traj.schema is not None and traj.schema["H"].dims == ("atoms",)
    assert list(traj.static) == ["atoms"] and traj.static["atoms"].tolist() == [0, 1]
    assert traj.attrs["H"] == "atoms"
