"""GPUBuffer on the emulation backend (the CuPy path: tests/staging/test_device_gpu.py)."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import HostMemory, Sink, SyncSink
from snapsink._errors import (
    ConfigError,
    DeviceError,
    SchemaError,
    StoreExistsError,
    StoreStateError,
    WriterError,
)
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink._staging.device import DeviceStager
from snapsink._staging.emulation import EmulatedDeviceArray, EmulatedStream
from snapsink._staging.host import Slot
from snapsink.stores.gpu import GPUBuffer, GPUBufferStatistics

SCHEMA = Schema(
    {"x": Field("float64", (2, 3)), "e": Field("float32", ()), "r": Field("int32", (None, 2))}
)


def _frame(i: int) -> dict[str, Any]:
    return {
        "x": np.full((2, 3), i, np.float64),
        "e": np.float32(i / 2),
        "r": np.arange(2 * (i % 4), dtype=np.int32).reshape(-1, 2) + i,
    }


def _frames(steps: Any) -> list[Frame]:
    return [Frame(i, 0.1 * i, _frame(i)) for i in steps]


def _host(arr: Any) -> np.ndarray[Any, Any]:
    return arr.get(EmulatedStream("read"))  # type: ignore[no-any-return]


def _buffer(capacity: int, steps: Any = (), overflow: str = "evict_oldest") -> GPUBuffer:
    buf = GPUBuffer(capacity, backend="emulation", overflow=overflow)
    buf.prepare(SCHEMA, times=True)
    if len(steps):
        buf.append(Batch(_frames(steps)))
    return buf


def _check_frames(traj: snapsink.Trajectory, steps: list[int]) -> None:
    """The trajectory holds exactly ``steps``, each frame bit-exact."""
    np.testing.assert_array_equal(traj.steps, steps)
    assert traj.times is not None
    np.testing.assert_array_equal(traj.times, [0.1 * s for s in steps])
    for k, step in enumerate(steps):
        want = _frame(step)
        got = traj.frame(k)
        for name in ("x", "e", "r"):
            assert got[name].dtype == np.asarray(want[name]).dtype
            assert got[name].tobytes() == np.asarray(want[name]).tobytes(), (name, step)


def _invariant(s: GPUBufferStatistics) -> None:
    assert s.stored == s.held + s.drained + s.skipped + s.evicted + s.cleared


def test_ring_keeps_the_last_capacity_frames() -> None:
    buf = GPUBuffer(4, backend="emulation")
    assert buf.open() is None
    buf.prepare(SCHEMA, times=True)
    for start in range(0, 10, 3):
        frames = [Frame(i, 0.1 * i, _frame(i)) for i in range(start, min(start + 3, 10))]
        buf.append(Batch(frames, dropped_steps=[100 + start]))
    assert len(buf) == 4
    assert buf.total == 10
    assert buf.evicted == 6
    out = buf.read()
    np.testing.assert_array_equal(out.steps, [6, 7, 8, 9])
    np.testing.assert_allclose(out.times, [0.6, 0.7, 0.8, 0.9])  # type: ignore[arg-type]
    np.testing.assert_array_equal(
        _host(out.fields["x"]), [np.full((2, 3), i) for i in range(6, 10)]
    )
    np.testing.assert_array_equal(_host(out.fields["e"]), np.arange(6, 10, dtype=np.float32) / 2)
    expected = [_frame(i)["r"] for i in range(6, 10)]
    np.testing.assert_array_equal(_host(out.fields["r"]), np.concatenate(expected))
    np.testing.assert_array_equal(
        _host(out.offsets["r"]), np.concatenate([[0], np.cumsum([len(r) for r in expected])])
    )
    # the 6 evicted frames are named, with the steps dropped before the ring
    assert out.dropped_steps == [0, 1, 2, 3, 4, 5, 100, 103, 106, 109]
    assert (out.evicted, out.refused) == (6, 0)
    stats = buf.statistics()
    assert (stats.held, stats.stored, stats.evicted, stats.pending_dropped) == (4, 10, 6, 10)
    assert stats.dropped == 6  # every eviction counted as a drop
    _invariant(stats)
    buf.close()  # (a sink closes its store before another opens it)
    resume = buf.open()
    assert resume is not None
    assert (resume.count, resume.last_step, resume.times) == (10, 9, True)


async def test_device_frames_from_the_stager() -> None:
    sim = EmulatedStream("sim")
    schema = Schema({"x": Field("float64", (5,))})
    stager = DeviceStager(1)
    buf = GPUBuffer(2, backend="emulation")
    buf.prepare(schema, times=False)
    x = EmulatedDeviceArray.empty(5)
    for i in range(3):
        sim.launch(np.copyto, x.host, float(i))
        fields, completion = stager.capture(
            Slot(0), schema.validate({"x": x}, i), sim, to_host=False
        )
        sim.launch(np.copyto, x.host, -1.0)
        await completion.wait()
        buf.append(Batch([Frame(i, None, fields)]))
    out = buf.read()
    assert out.times is None
    np.testing.assert_array_equal(_host(out.fields["x"]), [[1.0] * 5, [2.0] * 5])
    stager.close()
    sim.close()


class _RecordingSink:
    """A sink-like target that copies each frame to the host when written."""

    def __init__(self, on_write: Any = None) -> None:
        self.frames: list[tuple[int, float | None, dict[str, np.ndarray[Any, Any]]]] = []
        self.on_write = on_write

    async def write(
        self, frame: dict[str, Any], *, step: int, time: float | None, stream: Any
    ) -> None:
        self.frames.append((step, time, {k: _host(v) for k, v in frame.items()}))
        if self.on_write is not None:
            await self.on_write(step)


async def test_drain_to_moves_the_frames_out() -> None:
    buf = _buffer(3, range(5))
    sink = _RecordingSink()
    assert await buf.drain_to(sink) == 3
    assert [s for s, _, _ in sink.frames] == [2, 3, 4]
    for step, t, fields in sink.frames:
        assert t == pytest.approx(0.1 * step)
        for name, value in _frame(step).items():
            np.testing.assert_array_equal(fields[name], value)
    # the buffer is empty afterwards; a second drain sends nothing
    assert len(buf) == 0
    np.testing.assert_array_equal(buf.read().steps, [])
    assert await buf.drain_to(sink) == 0
    assert len(sink.frames) == 3
    stats = buf.statistics()
    assert (stats.drained, stats.evicted, stats.held) == (3, 2, 0)
    _invariant(stats)
    # lost steps stay pending: a sink-like target cannot record them
    assert buf.read().dropped_steps == [0, 1]


async def test_second_drain_into_the_same_sink_sends_only_new_frames() -> None:
    """The regression: a second drain re-sent old frames (step 6 after step 9)."""
    buf = GPUBuffer(4, backend="emulation")
    host = HostMemory()
    async with Sink(host, schema=SCHEMA) as target:
        async with Sink(buf, schema=SCHEMA) as sink:
            for i in range(10):
                await sink.write(_frame(i), step=i, time=0.1 * i)
        assert await buf.drain_to(target) == 4
        # the same buffer, resumed by a new sink: steps continue after the last one
        async with Sink(buf) as sink:
            with pytest.raises(SchemaError, match="greater than 9"):
                await sink.write(_frame(3), step=3, time=0.3)
            for i in range(10, 13):
                await sink.write(_frame(i), step=i, time=0.1 * i)
        assert await buf.drain_to(target) == 3
        assert await buf.drain_to(target) == 0
    _check_frames(host.trajectory(), [6, 7, 8, 9, 10, 11, 12])


async def test_drain_into_a_store_records_the_evicted_steps() -> None:
    buf = _buffer(4)
    buf.append(Batch(_frames(range(10)), dropped_steps=[]))
    mem = HostMemory()
    assert await buf.drain_to(mem) == 4
    traj = mem.trajectory()
    _check_frames(traj, [6, 7, 8, 9])
    assert traj.dropped_steps.tolist() == [0, 1, 2, 3, 4, 5]
    assert len(buf) == 0 and buf.read().dropped_steps == []
    # more frames, more evictions, and steps a sink dropped on the way in
    buf.append(Batch(_frames([10, 11, 13, 14, 15, 16]), dropped_steps=[12]))
    assert await buf.drain_to(mem) == 4
    traj = mem.trajectory()
    _check_frames(traj, [6, 7, 8, 9, 13, 14, 15, 16])
    assert traj.dropped_steps.tolist() == [0, 1, 2, 3, 4, 5, 10, 11, 12]
    stats = buf.statistics()
    assert (stats.stored, stats.drained, stats.evicted, stats.pending_dropped) == (16, 8, 8, 0)
    _invariant(stats)


@pytest.mark.parametrize("kind", ["npy", "zarr"])
async def test_drain_into_a_disk_store_twice(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("run.zarr" if kind == "zarr" else "run")
    make = snapsink.NpyDirectory if kind == "npy" else snapsink.ZarrStore
    store = make(path, mode="a")
    buf = _buffer(3, range(5))
    assert await buf.drain_to(store) == 3
    buf.append(Batch(_frames([5, 6, 7, 8]), dropped_steps=[]))
    assert await buf.drain_to(store) == 3  # the same store object, rebuilt for each drain
    traj = snapsink.open(path)
    _check_frames(traj, [2, 3, 4, 6, 7, 8])
    assert traj.dropped_steps.tolist() == [0, 1, 5]


async def test_drain_into_a_store_of_mode_x_once(tmp_path: Path) -> None:
    store = snapsink.NpyDirectory(tmp_path / "run")
    buf = _buffer(3, range(3))
    assert await buf.drain_to(store) == 3
    buf.append(Batch(_frames([3, 4]), dropped_steps=[]))
    with pytest.raises(StoreExistsError, match="mode='a'"):
        await buf.drain_to(store)
    # nothing left the ring; it drains elsewhere
    assert len(buf) == 2
    mem = HostMemory()
    assert await buf.drain_to(mem) == 2
    _check_frames(mem.trajectory(), [3, 4])
    _check_frames(snapsink.open(tmp_path / "run"), [0, 1, 2])


async def test_drain_sends_only_steps_after_the_target_s_last() -> None:
    mem = HostMemory()
    mem.prepare(SCHEMA, times=True)
    mem.append(Batch(_frames([0, 7]), [3]))
    buf = _buffer(4, range(10))
    assert await buf.drain_to(mem) == 2
    traj = mem.trajectory()
    _check_frames(traj, [0, 7, 8, 9])
    # the store's and the ring's, each step once (a set of steps, as on disk)
    assert traj.dropped_steps.tolist() == [0, 1, 2, 3, 4, 5]
    stats = buf.statistics()
    assert (stats.drained, stats.skipped, stats.held) == (2, 2, 0)
    _invariant(stats)
    # and into a sink that already took step 7
    buf = _buffer(4, range(10))
    host = HostMemory()
    async with Sink(host, schema=SCHEMA) as target:
        await target.write(_frame(7), step=7, time=0.1 * 7)
        assert await buf.drain_to(target) == 2
        buf.append(Batch(_frames([10]), []))
        assert await buf.drain_to(target) == 1
    _check_frames(host.trajectory(), [7, 8, 9, 10])
    stats = buf.statistics()
    assert (stats.drained, stats.skipped, stats.held) == (3, 2, 0)


async def test_a_refused_drain_leaves_the_frames_in_the_ring() -> None:
    other = HostMemory()
    other.prepare(Schema({"y": Field("int8", ())}), times=False)
    other.append(Batch([Frame(0, None, {"y": np.int8(1)})]))
    buf = _buffer(3, range(5))
    with pytest.raises(SchemaError, match="schema"):
        await buf.drain_to(other)
    assert len(other.trajectory()) == 1 and other.trajectory().dropped_steps.tolist() == []
    np.testing.assert_array_equal(buf.read().steps, [2, 3, 4])
    assert buf.read().dropped_steps == [0, 1]
    # a sink target that refuses the times: the frame it refused stays too
    host = HostMemory()
    async with Sink(host, schema=SCHEMA) as target:
        await target.write(_frame(0), step=0)  # no times
        with pytest.raises(SchemaError, match="expected no time"):
            await buf.drain_to(target)
    np.testing.assert_array_equal(buf.read().steps, [2, 3, 4])
    mem = HostMemory()
    assert await buf.drain_to(mem) == 3  # and the buffer still drains
    _check_frames(mem.trajectory(), [2, 3, 4])
    assert mem.trajectory().dropped_steps.tolist() == [0, 1]


def test_drain_from_sync_code_into_a_sync_sink() -> None:
    import anyio

    buf = _buffer(2, range(4))
    host = HostMemory()
    with SyncSink(host, schema=SCHEMA) as target:
        assert anyio.run(buf.drain_to, target) == 2
    _check_frames(host.trajectory(), [2, 3])


# -- overflow policies ------------------------------------------------------------
async def test_overflow_refuse_keeps_the_first_frames() -> None:
    buf = GPUBuffer(3, backend="emulation", overflow="refuse")
    async with Sink(buf, schema=SCHEMA) as sink:
        for i in range(5):
            await sink.write(_frame(i), step=i, time=0.1 * i)
    assert sink.statistics().written == 5  # the store took them: the ring counts
    stats = buf.statistics()
    assert (stats.held, stats.stored, stats.refused, stats.evicted) == (3, 3, 2, 0)
    _invariant(stats)
    out = buf.read()
    np.testing.assert_array_equal(out.steps, [0, 1, 2])
    assert (out.refused, out.dropped_steps) == (2, [3, 4])
    mem = HostMemory()
    assert await buf.drain_to(mem) == 3
    _check_frames(mem.trajectory(), [0, 1, 2])
    assert mem.trajectory().dropped_steps.tolist() == [3, 4]
    # a refused step still counts as taken: the next frames follow it
    resume = buf.open()
    assert resume is not None and resume.last_step == 4


def test_overflow_raise_on_direct_append() -> None:
    buf = _buffer(3, overflow="raise")
    buf.append(Batch(_frames([0, 1])))
    with pytest.raises(StoreStateError, match=r"is full \(3 frames\): step\(s\) \[3, 4\]"):
        buf.append(Batch(_frames([2, 3, 4])))
    out = buf.read()
    np.testing.assert_array_equal(out.steps, [0, 1, 2])  # the frames that fitted
    assert out.dropped_steps == [] and buf.statistics().refused == 0
    assert buf.clear() == 3
    buf.append(Batch(_frames([5, 6])))
    np.testing.assert_array_equal(buf.read().steps, [5, 6])


async def test_overflow_raise_reaches_the_producer() -> None:
    buf = GPUBuffer(2, backend="emulation", overflow="raise")
    with pytest.raises(WriterError, match="is full") as info:
        async with Sink(buf, schema=SCHEMA) as sink:
            for i in range(3):
                await sink.write(_frame(i), step=i, time=0.1 * i)
            await sink.flush()
    assert isinstance(info.value.__cause__, StoreStateError)
    np.testing.assert_array_equal(buf.read().steps, [0, 1])


# -- clear, concurrency, errors ---------------------------------------------------
def test_clear_discards_frames_and_pending_steps() -> None:
    buf = _buffer(3, range(5))
    assert buf.clear() == 3
    assert len(buf) == 0 and buf.read().dropped_steps == []
    buf.append(Batch(_frames([5]), [4]))
    out = buf.read()
    np.testing.assert_array_equal(out.steps, [5])
    assert out.dropped_steps == [4]
    stats = buf.statistics()
    assert (stats.cleared, stats.held, stats.stored) == (3, 1, 6)
    _invariant(stats)


async def test_appending_during_a_drain_never_evicts_a_frame_being_drained() -> None:
    buf = _buffer(4, range(4))
    done = threading.Event()
    appender = threading.Thread(
        target=lambda: (buf.append(Batch(_frames([4, 5]))), done.set()), daemon=True
    )

    async def start_appending(step: int) -> None:
        if step == 0:  # the ring is full: the appender must wait for the drain
            appender.start()

    sink = _RecordingSink(start_appending)
    assert await buf.drain_to(sink) == 4
    appender.join(10)
    assert done.is_set()
    assert [s for s, _, _ in sink.frames] == [0, 1, 2, 3]
    for step, _, fields in sink.frames:
        np.testing.assert_array_equal(fields["x"], _frame(step)["x"])
    np.testing.assert_array_equal(buf.read().steps, [4, 5])
    assert buf.evicted == 0


async def test_one_drain_at_a_time_and_no_clear_during_one() -> None:
    buf = _buffer(2, range(2))
    seen: list[str] = []

    async def meddle(step: int) -> None:
        with pytest.raises(StoreStateError, match="already running"):
            await buf.drain_to(HostMemory())
        with pytest.raises(StoreStateError, match="clear"):
            buf.clear()
        seen.append("checked")

    assert await buf.drain_to(_RecordingSink(meddle)) == 2
    assert seen == ["checked", "checked"]


async def test_errors() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        GPUBuffer(0, backend="emulation")
    with pytest.raises(ConfigError, match="backend"):
        GPUBuffer(1, backend="opencl")
    with pytest.raises(ConfigError, match=r"overflow: expected 'evict_oldest'.*got 'drop'"):
        GPUBuffer(1, backend="emulation", overflow="drop")
    buf = GPUBuffer(1, backend="emulation")
    with pytest.raises(SchemaError, match="nothing was written"):
        buf.read()
    with pytest.raises(StoreStateError, match="prepare"):
        buf.append(Batch(_frames([0])))
    buf.prepare(SCHEMA, times=False)
    with pytest.raises(SchemaError):
        buf.prepare(Schema({"y": Field("float64", ())}), times=False)
    with pytest.raises(ConfigError, match="got the buffer itself"):
        await buf.drain_to(buf)
    with pytest.raises(ConfigError, match=r"a Sink, a SyncSink or a store.*got list"):
        await buf.drain_to([])


def test_without_cupy_gpubuffer_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import snapsink._staging.device as device

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    monkeypatch.setattr(device, "_backends", {})
    with pytest.raises(DeviceError, match=r"GPUBuffer needs CuPy.*snapsink\[gpu\]") as info:
        GPUBuffer(4)
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(DeviceError, match="GPUBuffer needs CuPy"):
        snapsink.GPUBuffer(4, backend="cupy")


def test_a_gpu_buffer_has_one_sink_at_a_time() -> None:
    """As HostMemory and the disk stores: a second sink opening the buffer while
    the first has it open is refused; once that one closed, it may append."""
    buf = GPUBuffer(4, backend="emulation")
    with snapsink.SyncSink(buf, writer="thread") as first:
        first.write({"x": np.float64(1.0)}, step=0)
        with pytest.raises(snapsink.StoreLockedError, match="another sink is writing"):
            snapsink.SyncSink(buf, writer="thread")
    with snapsink.SyncSink(buf, writer="thread") as second:
        second.write({"x": np.float64(2.0)}, step=1)
    assert buf.read().steps.tolist() == [0, 1]


def _emulated_copy_threads() -> int:
    return sum(t.name == "snapsink-emulated-copy" for t in threading.enumerate())


async def test_a_dropped_buffer_releases_its_stream() -> None:
    """The ring's own stream goes with the buffer (not with its sink: read() and
    drain_to() use it after): an emulated stream's worker thread stops then."""
    sim = EmulatedStream("sim")
    gc.collect()  # the buffers earlier tests dropped
    before = _emulated_copy_threads()
    for i in range(5):
        buf = GPUBuffer(2, backend="emulation")
        async with Sink(buf) as sink:
            await sink.write({"x": EmulatedDeviceArray(np.full(3, float(i)))}, step=i, stream=sim)
        assert _emulated_copy_threads() == before + 1  # the ring's, alive after its sink
        stream = buf.stream
        drained = HostMemory()
        assert await buf.drain_to(drained) == 1
        assert drained.trajectory().frame(0)["x"].tolist() == [float(i)] * 3
        del buf, sink  # the sink holds its store
        gc.collect()
        assert _emulated_copy_threads() == before, f"buffer {i}: its stream's thread is left"
        with pytest.raises(DeviceError, match="closed"):
            stream.launch(print)
    sim.close()
