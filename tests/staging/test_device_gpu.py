"""Device staging on a real GPU (CuPy), plus PyTorch and JAX arrays. Bit-exact.

Skipped unless CuPy imports and a CUDA device is visible.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import numpy as np
import pytest

from snapsink._schema import Field, Schema, is_device_array
from snapsink._staging.device import (
    DeviceCompletion,
    DeviceStager,
    device_dtype_shape,
    to_host_blocking,
)
from snapsink._staging.host import Slot, SlotPool

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
try:
    _NDEV = int(cp.cuda.runtime.getDeviceCount())
except Exception:  # no driver, no device
    _NDEV = 0
if _NDEV == 0:
    pytest.skip("no CUDA device", allow_module_level=True)

STRATEGIES = ["snapshot", "direct"]


def _sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body with anyio (no pytest async plugin needed on GPU hosts)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        anyio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def _busy(stream: Any, seconds: float = 0.2) -> None:
    """Keep ``stream`` busy for about ``seconds`` on the GPU."""
    kernel = cp.RawKernel(
        r"""extern "C" __global__ void spin(long long cycles) {
            long long start = clock64();
            while (clock64() - start < cycles) {}
        }""",
        "spin",
    )
    rate = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrClockRate, 0) * 1e3
    with stream:
        kernel((1,), (1,), (np.int64(seconds * rate),))


async def _drain(
    pending: collections.deque[tuple[Slot, dict[str, Any], DeviceCompletion]],
    stored: list[dict[str, np.ndarray[Any, Any]]],
    pool: SlotPool,
) -> None:
    slot, fields, completion = pending.popleft()
    await completion.wait()
    stored.append({k: np.array(v, copy=True) for k, v in fields.items()})
    pool.release(slot)


@pytest.mark.parametrize("strategy", STRATEGIES)
@_sync
async def test_cupy_capture_then_overwrite(strategy: str) -> None:
    schema = Schema({"x": Field("float32", (1 << 16,)), "e": Field("float64", ())})
    stream = cp.cuda.Stream(non_blocking=True)
    x = cp.empty(1 << 16, cp.float32)
    e = cp.empty((), cp.float64)
    base = cp.arange(1 << 16, dtype=cp.float32)
    stager = DeviceStager(4, strategy=strategy)
    pool = SlotPool(4)
    pending: collections.deque[Any] = collections.deque()
    stored: list[dict[str, np.ndarray[Any, Any]]] = []
    for i in range(1000):
        with stream:
            cp.add(base, np.float32(i), out=x)
            e.fill(i)
        slot = pool.acquire()
        while slot is None:
            await _drain(pending, stored, pool)
            slot = pool.acquire()
        fields, completion = stager.capture(slot, schema.validate({"x": x, "e": e}, i), stream)
        with stream:
            x.fill(-1)
            e.fill(-1)
        pending.append((slot, fields, completion))
    while pending:
        await _drain(pending, stored, pool)
    stager.close()
    host_base = np.arange(1 << 16, dtype=np.float32)
    for i, frame in enumerate(stored):
        np.testing.assert_array_equal(frame["x"], host_base + np.float32(i))
        assert frame["e"] == i


@pytest.mark.parametrize("strategy", STRATEGIES)
@_sync
async def test_cupy_capture_does_not_sync_the_host(strategy: str) -> None:
    schema = Schema({"x": Field("float32", (1 << 20,))})
    stream = cp.cuda.Stream(non_blocking=True)
    x = cp.zeros(1 << 20, cp.float32)
    stager = DeviceStager(2, strategy=strategy)
    stager.capture(Slot(1), schema.validate({"x": x}, 0), stream)  # warm-up (allocations)
    stream.synchronize()
    _busy(stream, 0.3)
    with stream:
        x.fill(3)
    t0 = time.perf_counter()
    fields, completion = stager.capture(Slot(0), schema.validate({"x": x}, 1), stream)
    elapsed = time.perf_counter() - t0
    with stream:
        x.fill(-1)
    assert not completion.done()
    assert elapsed < 0.05, f"capture blocked for {elapsed:.3f} s"
    await completion.wait()
    np.testing.assert_array_equal(fields["x"], 3)
    stager.close()


class _ProtocolStream:
    def __init__(self, s: Any):
        self._s = s

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self._s.ptr)


@pytest.mark.parametrize("kind", ["cupy", "int", "protocol", "none"])
@_sync
async def test_cupy_stream_kinds(kind: str) -> None:
    schema = Schema({"x": Field("int32", (1000,))})
    s = cp.cuda.Stream(non_blocking=True)
    arg = {"cupy": s, "int": s.ptr, "protocol": _ProtocolStream(s), "none": None}[kind]
    x = cp.zeros(1000, cp.int32)
    stager = DeviceStager(1)
    with s:
        _busy(s, 0.05)
        x.fill(5)
        fields, completion = stager.capture(Slot(0), schema.validate({"x": x}, 0), arg)
        x.fill(-1)
    await completion.wait()
    np.testing.assert_array_equal(fields["x"], 5)
    stager.close()


@_sync
async def test_cupy_casts_strides_ragged() -> None:
    schema = Schema({"x": Field("float64", (64, 3)), "r": Field("int64", (None, 2))})
    base = cp.arange(64 * 6, dtype=cp.float32).reshape(64, 6)
    stager = DeviceStager(1)
    slot = Slot(0)
    for rows in (3, 100, 7, 0, 500):
        r = cp.arange(rows * 2, dtype=cp.int32).reshape(rows, 2)
        fields, completion = stager.capture(
            slot, schema.validate({"x": base[:, ::2], "r": r}, rows), None
        )
        await completion.wait()
        np.testing.assert_array_equal(fields["x"], cp.asnumpy(base[:, ::2]).astype(np.float64))
        assert fields["r"].dtype == np.int64
        np.testing.assert_array_equal(fields["r"], np.arange(rows * 2).reshape(rows, 2))
    assert stager.pinned_nbytes <= 64 * 3 * 8 + 500 * 2 * 8
    stager.close()


def test_cupy_to_host_blocking_and_dtype_shape() -> None:
    s = cp.cuda.Stream(non_blocking=True)
    x = cp.zeros((100, 3), cp.float32)
    _busy(s, 0.05)
    with s:
        x.fill(2)
    out = to_host_blocking(x[:, 1:], s)
    np.testing.assert_array_equal(out, 2)
    assert device_dtype_shape("x", x) == (np.dtype(np.float32), (100, 3))


@_sync
async def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    schema = Schema({"pos": Field("float32", (4096, 3)), "w": Field("float32", (8,))})
    s = torch.cuda.Stream()
    w = torch.randn(8, device="cuda", requires_grad=True)
    assert is_device_array(w)
    assert device_dtype_shape("w", w) == (np.dtype(np.float32), (8,))
    stager = DeviceStager(2)
    expected = []
    results = []
    with torch.cuda.stream(s):
        pos = torch.empty(4096, 3, device="cuda")
        for i in range(50):
            pos.copy_(torch.arange(4096 * 3, device="cuda", dtype=torch.float32).view(4096, 3) + i)
            expected.append((pos.cpu().numpy(), w.detach().cpu().numpy()))
            stream_arg = s if i % 2 else None  # explicit torch stream, or torch's current
            fields, completion = stager.capture(
                Slot(i % 2), schema.validate({"pos": pos, "w": w}, i), stream_arg
            )
            pos.fill_(-1)
            await completion.wait()
            results.append({k: v.copy() for k, v in fields.items()})
    for (pos_i, w_i), got in zip(expected, results, strict=True):
        np.testing.assert_array_equal(got["pos"], pos_i)
        np.testing.assert_array_equal(got["w"], w_i)
    stager.close()


@_sync
async def test_jax_arrays() -> None:
    jax = pytest.importorskip("jax")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        pytest.skip("jax without a GPU")
    jnp = jax.numpy
    schema = Schema({"x": Field("float32", (256, 3))})
    stager = DeviceStager(1)
    for i in range(5):
        x = jax.device_put(jnp.arange(768, dtype=jnp.float32).reshape(256, 3) + i, gpus[0])
        assert is_device_array(x)
        fields, completion = stager.capture(Slot(0), schema.validate({"x": x}, i), None)
        await completion.wait()
        np.testing.assert_array_equal(fields["x"], np.asarray(x))
    stager.close()


@_sync
async def test_gpubuffer_on_cupy() -> None:
    from snapsink._schema import Batch, Frame
    from snapsink.stores.gpu import GPUBuffer

    schema = Schema({"x": Field("float32", (10,)), "r": Field("int64", (None,))})
    buf = GPUBuffer(3)
    buf.prepare(schema, times=True)
    stager = DeviceStager(1)
    for i in range(5):
        x = cp.full(10, i, cp.float32)
        fields, completion = stager.capture(Slot(0), [("x", schema["x"], x)], None, to_host=False)
        await completion.wait()
        fields["r"] = np.arange(i, dtype=np.int64)  # a host field of the same frame
        buf.append(Batch([Frame(step=i, time=0.5 * i, fields=fields)]))
    out = buf.read()
    assert isinstance(out.fields["x"], cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(out.fields["x"]), np.repeat([[2], [3], [4]], 10, 1))
    np.testing.assert_array_equal(cp.asnumpy(out.offsets["r"]), [0, 2, 5, 9])
    np.testing.assert_array_equal(cp.asnumpy(out.fields["r"]), [0, 1, 0, 1, 2, 0, 1, 2, 3])
    np.testing.assert_array_equal(out.steps, [2, 3, 4])
    assert out.evicted == 2
    stager.close()


# -- GPUBuffer drains like a buffer (the emulation twins: tests/stores/test_gpu.py) --
def _gpu_schema() -> Schema:
    return Schema({"x": Field("float32", (1000,)), "r": Field("int64", (None, 2))})


async def _fill_gpubuffer(buf: Any, steps: Any) -> None:
    """Frames of device fields (and a host ragged field) through a Sink into ``buf``."""
    from snapsink import Sink

    stream = cp.cuda.Stream(non_blocking=True)
    x = cp.empty(1000, cp.float32)
    async with Sink(buf, capacity=2, schema=_gpu_schema()) as sink:
        for i in steps:
            with stream:
                x.fill(i)
            r = np.arange(2 * (i % 3), dtype=np.int64).reshape(-1, 2) + i
            await sink.write({"x": x, "r": r}, step=i, time=0.5 * i, stream=stream)
            with stream:
                x.fill(-1)  # enqueued at once: must not leak into the ring


def _check_gpu_frames(traj: Any, steps: list[int]) -> None:
    np.testing.assert_array_equal(traj.steps, steps)
    np.testing.assert_array_equal(traj.times, [0.5 * s for s in steps])
    np.testing.assert_array_equal(
        traj["x"][:], np.repeat(np.asarray(steps, np.float32)[:, None], 1000, 1)
    )
    for got, step in zip(traj["r"][:], steps, strict=True):
        np.testing.assert_array_equal(got, np.arange(2 * (step % 3)).reshape(-1, 2) + step)


@_sync
async def test_cupy_gpubuffer_drains_into_stores_with_its_evicted_steps(tmp_path: Any) -> None:
    import snapsink
    from snapsink.stores.gpu import GPUBuffer

    buf = GPUBuffer(4)
    await _fill_gpubuffer(buf, range(10))
    mem = snapsink.HostMemory()
    assert await buf.drain_to(mem) == 4
    _check_gpu_frames(mem.trajectory(), [6, 7, 8, 9])
    assert mem.trajectory().dropped_steps.tolist() == [0, 1, 2, 3, 4, 5]
    assert len(buf) == 0
    # twice into one disk store (mode="a"): only the new frames, the new evictions
    store = snapsink.NpyDirectory(tmp_path / "run", mode="a")
    await _fill_gpubuffer(buf, range(10, 15))
    assert await buf.drain_to(store) == 4
    await _fill_gpubuffer(buf, range(15, 17))
    assert await buf.drain_to(store) == 2
    traj = snapsink.open(tmp_path / "run")
    _check_gpu_frames(traj, [11, 12, 13, 14, 15, 16])
    assert traj.dropped_steps.tolist() == [10]
    stats = buf.statistics()
    assert (stats.stored, stats.drained, stats.evicted, stats.held) == (17, 10, 7, 0)


@_sync
async def test_cupy_gpubuffer_second_drain_into_the_same_sink() -> None:
    import snapsink
    from snapsink.stores.gpu import GPUBuffer

    buf = GPUBuffer(4)
    host = snapsink.HostMemory()
    async with snapsink.Sink(host, schema=_gpu_schema()) as target:
        await _fill_gpubuffer(buf, range(10))
        assert await buf.drain_to(target) == 4
        await _fill_gpubuffer(buf, range(10, 13))
        assert await buf.drain_to(target) == 3
        assert await buf.drain_to(target) == 0
    _check_gpu_frames(host.trajectory(), [6, 7, 8, 9, 10, 11, 12])


@_sync
async def test_cupy_gpubuffer_overflow_refuse_and_raise() -> None:
    import snapsink
    from snapsink.stores.gpu import GPUBuffer

    buf = GPUBuffer(3, overflow="refuse")
    await _fill_gpubuffer(buf, range(5))
    out = buf.read()
    np.testing.assert_array_equal(out.steps, [0, 1, 2])
    np.testing.assert_array_equal(cp.asnumpy(out.fields["x"])[:, 999], [0, 1, 2])
    assert (out.refused, out.dropped_steps) == (2, [3, 4])
    mem = snapsink.HostMemory()
    assert await buf.drain_to(mem) == 3
    _check_gpu_frames(mem.trajectory(), [0, 1, 2])
    assert mem.trajectory().dropped_steps.tolist() == [3, 4]

    strict = GPUBuffer(2, overflow="raise")
    with pytest.raises(snapsink.WriterError, match="is full") as info:
        await _fill_gpubuffer(strict, range(3))
    assert isinstance(info.value.__cause__, snapsink.StoreStateError)
    np.testing.assert_array_equal(strict.read().steps, [0, 1])
