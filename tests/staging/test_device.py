"""Device staging on the CPU emulation backend: the same capture, event and
completion code that runs on a GPU (see test_device_gpu.py for CuPy)."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from typing import Any

import anyio
import numpy as np
import pytest

from snapsink._errors import ConfigError, DeviceError
from snapsink._schema import Field, Schema, is_device_array
from snapsink._staging.device import (
    DeviceCompletion,
    DeviceStager,
    device_dtype_shape,
    to_host_blocking,
)
from snapsink._staging.emulation import (
    EmulatedDeviceArray,
    EmulatedEvent,
    EmulatedStream,
    current_stream,
)
from snapsink._staging.host import Slot, SlotPool

STRATEGIES = ["snapshot", "direct"]


@pytest.fixture
def sim() -> Any:
    stream = EmulatedStream("sim")
    yield stream
    stream.close()


def _fill(x: np.ndarray[Any, Any], e: np.ndarray[Any, Any], i: int) -> None:
    x[:] = i * 1000 + np.arange(x.size, dtype=x.dtype)
    e[...] = i


async def _pipeline(
    stager: DeviceStager,
    schema: Schema,
    n: int,
    capacity: int,
    produce: Any,
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Producer/consumer over a SlotPool, as the channel drives the stager."""
    pool = SlotPool(capacity)
    pending: collections.deque[tuple[Slot, dict[str, Any], DeviceCompletion]] = (
        collections.deque()
    )
    stored: list[dict[str, np.ndarray[Any, Any]]] = []

    async def consume_one() -> None:
        slot, fields, completion = pending.popleft()
        await completion.wait()
        assert completion.done()
        stored.append({k: np.array(v, copy=True) for k, v in fields.items()})
        pool.release(slot)

    for i in range(n):
        slot = pool.acquire()
        while slot is None:
            await consume_one()
            slot = pool.acquire()
        fields, completion = produce(i, slot)
        pending.append((slot, fields, completion))
    while pending:
        await consume_one()
    return stored


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_capture_then_overwrite_keeps_values_of_the_call(
    sim: EmulatedStream, strategy: str
) -> None:
    schema = Schema({"x": Field("float64", (64,)), "e": Field("float32", ())})
    x = EmulatedDeviceArray.empty(64)
    e = EmulatedDeviceArray.empty((), np.float32)
    stager = DeviceStager(4, strategy=strategy)

    def produce(i: int, slot: Slot) -> Any:
        sim.launch(_fill, x.host, e.host, i)  # the simulation step writes frame i
        out = stager.capture(slot, schema.validate({"x": x, "e": e}, i), sim)
        sim.launch(_fill, x.host, e.host, -1)  # ... and overwrites it right after write()
        return out

    stored = await _pipeline(stager, schema, 1000, 4, produce)
    stager.close()
    assert len(stored) == 1000
    for i, frame in enumerate(stored):
        np.testing.assert_array_equal(frame["x"], i * 1000 + np.arange(64.0))
        assert frame["e"].shape == ()
        assert frame["e"] == i


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_caller_stream_waits_for_the_capture(sim: EmulatedStream, strategy: str) -> None:
    # The copy stream is stalled: an overwrite on the caller's stream that did
    # not wait for the capture would run first, deterministically.
    schema = Schema({"x": Field("int64", (8,))})
    x = EmulatedDeviceArray.from_host(np.arange(8))
    stager = DeviceStager(1, strategy=strategy)
    slot = Slot(0)
    stager.capture(slot, schema.validate({"x": x}, 0), sim)  # creates the copy stream
    gate = threading.Event()
    stager.copy_stream.launch(gate.wait)
    fields, completion = stager.capture(slot, schema.validate({"x": x}, 1), sim)
    sim.launch(np.copyto, x.host, -1)
    overwritten = sim.record()
    assert not completion.done()
    assert not overwritten.done
    gate.set()
    await completion.wait()
    sim.synchronize()
    np.testing.assert_array_equal(fields["x"], np.arange(8))
    np.testing.assert_array_equal(x.host, -1)
    stager.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_capture_never_waits_for_the_device(sim: EmulatedStream, strategy: str) -> None:
    schema = Schema({"x": Field("float32", (1000,))})
    x = EmulatedDeviceArray.empty(1000, np.float32)
    gate = threading.Event()
    sim.launch(gate.wait)  # a long kernel on the simulation's stream
    sim.launch(np.copyto, x.host, 7.0)
    stager = DeviceStager(2, strategy=strategy)
    fields, completion = stager.capture(Slot(0), schema.validate({"x": x}, 0), sim)
    # capture returned while the simulation's stream is still blocked
    assert not completion.done()

    progressed = []

    async def other_task() -> None:
        progressed.append(True)
        gate.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(completion.wait)
        tg.start_soon(other_task)  # the event loop stays responsive while waiting
    assert progressed
    assert completion.done()
    np.testing.assert_array_equal(fields["x"], 7.0)
    stager.close()


async def test_completion_wait_checkpoints_when_done(sim: EmulatedStream) -> None:
    schema = Schema({"x": Field("float64", (4,))})
    stager = DeviceStager(1)
    _, completion = stager.capture(
        Slot(0), schema.validate({"x": EmulatedDeviceArray.from_host(np.ones(4))}, 0), sim
    )
    completion.synchronize()
    assert completion.done()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await completion.wait()  # a checkpoint even when already done
    assert scope.cancelled_caught
    stager.close()


async def test_pinned_slots_are_reused_and_bounded(sim: EmulatedStream) -> None:
    capacity = 3
    schema = Schema({"x": Field("float64", (128,)), "r": Field("int32", (None, 2))})
    x = EmulatedDeviceArray.empty(128)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 40, size=300)
    stager = DeviceStager(capacity)
    seen_buffers: set[int] = set()

    def produce(i: int, slot: Slot) -> Any:
        r = EmulatedDeviceArray.from_host(
            np.arange(rows[i] * 2, dtype=np.int32).reshape(-1, 2) + i
        )
        sim.launch(np.copyto, x.host, float(i))
        out = stager.capture(slot, schema.validate({"x": x, "r": r}, i), sim)
        seen_buffers.add(id(slot.device.pinned["x"]))
        return out

    stored = await _pipeline(stager, schema, len(rows), capacity, produce)
    for i, frame in enumerate(stored):
        np.testing.assert_array_equal(frame["x"], float(i))
        np.testing.assert_array_equal(
            frame["r"], np.arange(rows[i] * 2, dtype=np.int32).reshape(-1, 2) + i
        )
    assert len(seen_buffers) == capacity  # fixed fields: one pinned buffer per slot, reused
    frame_max = 128 * 8 + int(rows.max()) * 2 * 4
    assert stager.pinned_nbytes <= capacity * frame_max
    assert stager.device_nbytes <= capacity * frame_max
    stager.close()
    assert stager.inflight == 0


async def test_ragged_growth_keeps_old_buffer_until_copy_done(sim: EmulatedStream) -> None:
    schema = Schema({"r": Field("float32", (None, 3))})
    stager = DeviceStager(1)
    slot = Slot(0)
    small = EmulatedDeviceArray.from_host(np.ones((2, 3), np.float32))
    stager.capture(slot, schema.validate({"r": small}, 0), sim)
    gate = threading.Event()
    stager.copy_stream.launch(gate.wait)
    f1, c1 = stager.capture(slot, schema.validate({"r": small}, 1), sim)
    old = slot.device.pinned["r"]
    big = EmulatedDeviceArray.from_host(np.full((50, 3), 5, np.float32))
    f2, c2 = stager.capture(slot, schema.validate({"r": big}, 2), sim)  # re-capture, grows
    assert slot.device.pinned["r"] is not old
    assert any(ref is old for _, ref in stager._inflight)  # kept until its copy completes
    gate.set()
    await c1.wait()
    await c2.wait()
    np.testing.assert_array_equal(f1["r"], 1.0)  # the old buffer received its copy
    assert f2["r"].shape == (50, 3)
    np.testing.assert_array_equal(f2["r"], 5.0)
    small2 = EmulatedDeviceArray.from_host(np.full((3, 3), 2, np.float32))
    f3, c3 = stager.capture(slot, schema.validate({"r": small2}, 3), sim)  # shrinks in place
    await c3.wait()
    assert f3["r"].shape == (3, 3)
    np.testing.assert_array_equal(f3["r"], 2.0)
    assert stager.inflight <= 2
    stager.close()


async def test_recapture_of_unawaited_slot_is_ordered(sim: EmulatedStream) -> None:
    # drop_oldest: a queued slot is captured again before its completion was awaited
    schema = Schema({"x": Field("int64", (16,))})
    stager = DeviceStager(1)
    slot = Slot(0)
    gate = threading.Event()
    sim.launch(gate.wait)
    a = EmulatedDeviceArray.from_host(np.full(16, 1))
    b = EmulatedDeviceArray.from_host(np.full(16, 2))
    _, ca = stager.capture(slot, schema.validate({"x": a}, 0), sim)
    fb, cb = stager.capture(slot, schema.validate({"x": b}, 1), sim)
    gate.set()
    await cb.wait()
    assert ca.done()
    np.testing.assert_array_equal(fb["x"], 2)
    stager.close()


async def test_casts_and_strided_views(sim: EmulatedStream) -> None:
    schema = Schema({"x": Field("float64", (4, 3)), "i": Field("int64", ())})
    base = EmulatedDeviceArray.from_host(np.arange(24, dtype=np.float32).reshape(4, 6))
    strided = base[:, ::2]  # non-contiguous float32 into a float64 field
    i32 = EmulatedDeviceArray.from_host(np.int32(5))
    for strategy in STRATEGIES:
        stager = DeviceStager(1, strategy=strategy)
        fields, completion = stager.capture(
            Slot(0), schema.validate({"x": strided, "i": i32}, 0), sim
        )
        await completion.wait()
        assert fields["x"].dtype == np.float64
        np.testing.assert_array_equal(fields["x"], base.host[:, ::2].astype(np.float64))
        assert fields["i"].dtype == np.int64
        assert fields["i"] == 5
        stager.close()


async def test_to_host_false_returns_device_snapshot(sim: EmulatedStream) -> None:
    schema = Schema({"x": Field("float64", (5,))})
    x = EmulatedDeviceArray.from_host(np.arange(5.0))
    stager = DeviceStager(1)
    slot = Slot(0)
    fields, completion = stager.capture(slot, schema.validate({"x": x}, 0), sim, to_host=False)
    sim.launch(np.copyto, x.host, -1.0)
    await completion.wait()
    assert isinstance(fields["x"], EmulatedDeviceArray)
    np.testing.assert_array_equal(fields["x"].get(stager.copy_stream), np.arange(5.0))
    assert stager.pinned_nbytes == 0
    stager.close()


async def test_current_stream_is_the_default(sim: EmulatedStream) -> None:
    schema = Schema({"x": Field("int16", (3,))})
    x = EmulatedDeviceArray.from_host(np.zeros(3, np.int16))
    stager = DeviceStager(1)
    gate = threading.Event()
    with sim:
        assert current_stream() is sim
        sim.launch(gate.wait)
        sim.launch(np.copyto, x.host, 9)
        fields, completion = stager.capture(Slot(0), schema.validate({"x": x}, 0))
    assert not completion.done()
    gate.set()
    await completion.wait()
    np.testing.assert_array_equal(fields["x"], 9)
    stager.close()


def test_to_host_blocking_is_ordered_after_the_stream(sim: EmulatedStream) -> None:
    x = EmulatedDeviceArray.from_host(np.zeros((3, 4)))
    gate = threading.Event()
    sim.launch(gate.wait)
    sim.launch(np.copyto, x.host, 3.0)
    threading.Timer(0.01, gate.set).start()
    out = to_host_blocking(x[:, 1:], sim)
    np.testing.assert_array_equal(out, np.full((3, 3), 3.0))


def test_device_dtype_shape_and_validation() -> None:
    x = EmulatedDeviceArray.empty((7, 3), np.float32)
    assert is_device_array(x)
    assert device_dtype_shape("x", x) == (np.dtype(np.float32), (7, 3))
    schema = Schema({"x": Field("float64", (None, 3))})
    [(name, _, value)] = schema.validate({"x": x}, 0)
    assert name == "x"
    assert value is x
    with pytest.raises(TypeError, match="expected dtype float32"):
        Schema({"x": Field("float32", (7, 3))}).validate(
            {"x": EmulatedDeviceArray.empty((7, 3), np.float64)}, 0
        )


def test_stager_errors(sim: EmulatedStream) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        DeviceStager(0)
    with pytest.raises(ConfigError, match="strategy"):
        DeviceStager(1, strategy="eager")
    stager = DeviceStager(1)
    schema = Schema({"x": Field("float64", (2,))})
    x = EmulatedDeviceArray.from_host(np.ones(2))
    with pytest.raises(ConfigError, match="stream"):
        stager.capture(Slot(0), schema.validate({"x": x}, 0), stream=object())
    stager.close()
    stager.close()
    with pytest.raises(DeviceError, match="closed"):
        stager.capture(Slot(0), schema.validate({"x": x}, 0), sim)


class _FakeCudaArray:
    """Looks like a CUDA array to is_device_array, without CuPy."""

    __cuda_array_interface__ = {  # noqa: RUF012
        "shape": (3,),
        "typestr": "<f4",
        "data": (0, False),
        "version": 3,
    }


def test_device_array_without_cupy_names_the_gpu_extra() -> None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed")
    assert is_device_array(_FakeCudaArray())
    with pytest.raises(DeviceError, match=r"snapsink\[gpu\]"):
        device_dtype_shape("x", _FakeCudaArray())
    schema = Schema({"x": Field("float32", (3,))})
    with pytest.raises(DeviceError, match=r"snapsink\[gpu\]"):
        schema.validate({"x": _FakeCudaArray()}, 0)
    stager = DeviceStager(1)
    with pytest.raises(DeviceError, match=r"snapsink\[gpu\]"):
        stager.capture(Slot(0), [("x", schema["x"], _FakeCudaArray())], None)


def test_importing_never_imports_cupy() -> None:
    code = (
        "import sys, importlib.util\n"
        "import snapsink._staging.device, snapsink._staging.emulation, snapsink.stores.gpu\n"
        "if importlib.util.find_spec('snapsink.__init__') is not None:\n"
        "    try:\n        import snapsink\n    except Exception:\n        pass\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_emulated_event_semantics(sim: EmulatedStream) -> None:
    ev = EmulatedEvent()
    assert ev.done  # never recorded: complete, as in CUDA
    gate = threading.Event()
    sim.launch(gate.wait)
    ev.record(sim)
    other = EmulatedStream("other")
    other.wait_event(ev)
    after = other.record()
    assert not ev.done
    assert not after.done
    gate.set()
    after.synchronize()
    assert ev.done
    other.close()


def test_emulated_stream_reports_a_failed_kernel(sim: EmulatedStream) -> None:
    def boom() -> None:
        raise RuntimeError("kernel fault")

    sim.launch(boom)
    with pytest.raises(DeviceError, match="kernel fault"):
        sim.synchronize()
    sim.synchronize()  # reported once


async def test_sink_end_to_end_with_emulated_device_arrays(sim: EmulatedStream) -> None:
    snapsink = pytest.importorskip("snapsink")
    if not hasattr(snapsink, "Sink"):
        pytest.skip("snapsink.Sink is not there yet")
    x = EmulatedDeviceArray.empty(16)
    store = snapsink.HostMemory()
    async with snapsink.Sink(store, capacity=3) as sink:
        for i in range(200):
            sim.launch(np.copyto, x.host, float(i))
            await sink.write({"x": x, "h": np.float64(i)}, step=i, stream=sim)
            sim.launch(np.copyto, x.host, -1.0)  # overwrite right after write()
    traj = store.trajectory()
    np.testing.assert_array_equal(traj["x"][:], np.repeat(np.arange(200.0)[:, None], 16, 1))
    np.testing.assert_array_equal(traj["h"][:], np.arange(200.0))
