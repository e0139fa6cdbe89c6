"""GPUBuffer on the emulation backend (the CuPy path: tests/staging/test_device_gpu.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from snapsink._errors import ConfigError, SchemaError
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink._staging.device import DeviceStager
from snapsink._staging.emulation import EmulatedDeviceArray, EmulatedStream
from snapsink._staging.host import Slot
from snapsink.writers.gpu import GPUBuffer

SCHEMA = Schema(
    {"x": Field("float64", (2, 3)), "e": Field("float32", ()), "r": Field("int32", (None, 2))}
)


def _frame(i: int) -> dict[str, Any]:
    return {
        "x": np.full((2, 3), i, np.float64),
        "e": np.float32(i / 2),
        "r": np.arange(2 * (i % 4), dtype=np.int32).reshape(-1, 2) + i,
    }


def _host(arr: Any) -> np.ndarray[Any, Any]:
    return arr.get(EmulatedStream("read"))  # type: ignore[no-any-return]


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
    assert out.dropped_steps == [100, 103, 106, 109]
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
    def __init__(self) -> None:
        self.frames: list[tuple[int, float | None, dict[str, np.ndarray[Any, Any]]]] = []

    async def write(
        self, frame: dict[str, Any], *, step: int, time: float | None, stream: Any
    ) -> None:
        self.frames.append((step, time, {k: _host(v) for k, v in frame.items()}))


async def test_drain_to_writes_frames_in_order() -> None:
    buf = GPUBuffer(3, backend="emulation")
    buf.prepare(SCHEMA, times=True)
    buf.append(Batch([Frame(i, float(i), _frame(i)) for i in range(5)]))
    sink = _RecordingSink()
    assert await buf.drain_to(sink) == 3
    assert [s for s, _, _ in sink.frames] == [2, 3, 4]
    for step, t, fields in sink.frames:
        assert t == float(step)
        for name, value in _frame(step).items():
            np.testing.assert_array_equal(fields[name], value)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        GPUBuffer(0)
    with pytest.raises(ConfigError, match="backend"):
        GPUBuffer(1, backend="opencl").prepare(SCHEMA, times=False)
    buf = GPUBuffer(1, backend="emulation")
    with pytest.raises(SchemaError, match="nothing was written"):
        buf.read()
    buf.prepare(SCHEMA, times=False)
    with pytest.raises(SchemaError):
        buf.prepare(Schema({"y": Field("float64", ())}), times=False)
