"""The device path end to end through Sink, into every store.

Each test runs on the CPU emulation of the device path (everywhere, CI
included) and, marked ``gpu``, on a real GPU through CuPy (plus PyTorch and
JAX arrays where installed). Stored values are compared bit-exact with what
the device held at the time of ``write``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from snapsink import Field, HostMemory, NpyDirectory, Sink, ZarrStore
from snapsink._staging.emulation import EmulatedDeviceArray, EmulatedStream
from snapsink.stores.gpu import GPUBuffer

pytestmark = pytest.mark.timeout(120)


@dataclass
class Device:
    """How a test makes device arrays, overwrites them on a stream, and reads them."""

    name: str
    stream: Any
    to_device: Callable[[np.ndarray], Any]
    fill: Callable[[Any, float, Any], None]  # enqueue "x[:] = value" on the stream
    to_host: Callable[[Any], np.ndarray]
    sync: Callable[[], None]


def _emulation() -> Device:
    stream = EmulatedStream("caller")
    return Device(
        "emulation",
        stream,
        EmulatedDeviceArray.from_host,
        lambda x, v, s: s.launch(np.copyto, x.host, v),
        lambda x: x.get(stream),
        stream.synchronize,
    )


def _cupy() -> Device:
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no CUDA driver")
    stream = cp.cuda.Stream(non_blocking=True)

    def fill(x: Any, v: float, s: Any) -> None:
        with s:
            x.fill(v)

    return Device("cupy", stream, cp.asarray, fill, cp.asnumpy, stream.synchronize)


@pytest.fixture(params=["emulation", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest) -> Device:
    return _emulation() if request.param == "emulation" else _cupy()


def _store(kind: str, tmp_path: Path) -> Any:
    if kind == "memory":
        return HostMemory()
    if kind == "npy":
        return NpyDirectory(tmp_path / "run")
    return ZarrStore(tmp_path / "run.zarr")


def _read(kind: str, store: Any, tmp_path: Path) -> snapsink.Trajectory:
    if kind == "memory":
        return store.trajectory()
    return snapsink.open(tmp_path / ("run" if kind == "npy" else "run.zarr"))


@pytest.mark.parametrize("kind", ["memory", "npy", "zarr"])
async def test_overwrite_right_after_write_stores_the_captured_values(
    device: Device, kind: str, tmp_path: Path
) -> None:
    """The capture contract: a kernel overwriting the array right after
    ``write`` returns never reaches the stored frame (1,000 frames into memory)."""
    n = 1000 if kind == "memory" else 200
    x = device.to_device(np.zeros((64, 3), np.float32))
    rng = np.random.default_rng(0)
    ragged = [rng.normal(size=(int(k), 3)).astype(np.float32) for k in rng.integers(0, 7, n)]
    schema = {"x": Field("f4", (64, 3)), "r": Field("f4", (None, 3)), "e": "f8"}
    store = _store(kind, tmp_path)
    async with Sink(store, capacity=4, schema=schema) as sink:
        for i in range(n):
            device.fill(x, float(i), device.stream)
            r = device.to_device(ragged[i])
            await sink.write({"x": x, "r": r, "e": float(i)}, step=i, stream=device.stream)
            device.fill(x, -1.0, device.stream)  # enqueued at once: must not leak in
        stager = sink._channel.device
        # pinned (and snapshot) memory stays at the ring's size: capacity x frame
        frame_bytes = 64 * 3 * 4 + max(len(r) for r in ragged) * 3 * 4
        assert stager.pinned_nbytes <= 4 * frame_bytes
    device.sync()
    traj = _read(kind, store, tmp_path)
    assert len(traj) == n
    expected = np.repeat(np.arange(n, dtype=np.float32), 64 * 3).reshape(n, 64, 3)
    np.testing.assert_array_equal(traj["x"][:], expected)
    for got, want in zip(traj["r"][:], ragged, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(traj["e"][:], np.arange(n, dtype=np.float64))


@pytest.mark.parametrize("policy", ["drop_oldest", "spill"])
async def test_device_frames_under_drop_and_spill(
    device: Device, policy: str, tmp_path: Path
) -> None:
    x = device.to_device(np.zeros(1000, np.float64))
    pol: Any = snapsink.Spill(tmp_path / "spill") if policy == "spill" else policy
    store = HostMemory()
    async with Sink(store, capacity=2, policy=pol) as sink:
        for i in range(100):
            device.fill(x, float(i), device.stream)
            await sink.write({"x": x}, step=i, stream=device.stream)
            device.fill(x, -1.0, device.stream)
    traj = store.trajectory()
    stats = sink.statistics()
    assert stats.written + stats.dropped == 100
    assert len(traj) + len(traj.dropped_steps) == 100
    np.testing.assert_array_equal(traj["x"][:, 0], traj.steps.astype(np.float64))
    np.testing.assert_array_equal(traj["x"][:, -1], traj.steps.astype(np.float64))
    if policy == "spill":
        assert stats.dropped == 0 and len(traj) == 100


async def test_gpubuffer_keeps_frames_on_the_device(device: Device) -> None:
    x = device.to_device(np.zeros(8, np.float32))
    store = GPUBuffer(5, backend=None if device.name == "cupy" else "emulation")
    async with Sink(store, capacity=2) as sink:
        for i in range(12):
            device.fill(x, float(i), device.stream)
            await sink.write({"x": x}, step=i, stream=device.stream)
            device.fill(x, -1.0, device.stream)
        assert sink._channel.device.pinned_nbytes == 0  # device views, no pinned copy
    frames = store.read()
    np.testing.assert_array_equal(frames.steps, np.arange(7, 12))
    np.testing.assert_array_equal(
        device.to_host(frames.fields["x"]),
        np.repeat(np.arange(7, 12, dtype=np.float32), 8).reshape(5, 8),
    )
    assert frames.evicted == 7
    # and on to the host, through another sink
    host = HostMemory()
    async with Sink(host) as sink:
        assert await store.drain_to(sink) == 5
    np.testing.assert_array_equal(host.trajectory()["x"][:, 3], np.arange(7, 12, dtype=np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["memory", "npy", "zarr"])
async def test_torch_cuda_tensors_round_trip(kind: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    stream = torch.cuda.Stream()
    x = torch.zeros((32, 3), device="cuda", dtype=torch.float64)
    store = _store(kind, tmp_path)
    async with Sink(store, capacity=3) as sink:
        for i in range(100):
            with torch.cuda.stream(stream):
                x.fill_(float(i))
                await sink.write({"x": x, "i": i}, step=i)
                x.fill_(-1.0)
    torch.cuda.synchronize()
    traj = _read(kind, store, tmp_path)
    np.testing.assert_array_equal(traj["x"][:, 0, 0], np.arange(100, dtype=np.float64))
    np.testing.assert_array_equal(traj["x"][:, 31, 2], np.arange(100, dtype=np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["memory", "npy", "zarr"])
async def test_jax_gpu_arrays_round_trip(kind: str, tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("no GPU for jax")
    store = _store(kind, tmp_path)
    key = jax.random.PRNGKey(0)
    expected = []
    async with Sink(store, capacity=3) as sink:
        for i in range(50):
            key, sub = jax.random.split(key)
            x = jax.random.normal(sub, (16, 4), dtype=jnp.float32)
            expected.append(np.asarray(x))
            await sink.write({"x": x}, step=i)
    traj = _read(kind, store, tmp_path)
    np.testing.assert_array_equal(traj["x"][:], np.stack(expected))


async def test_borrowed_device_arrays_from_a_functional_loop(device: Device) -> None:
    """``copy=False``: each step makes a new array and never touches the old
    one; the stored frames are exactly the arrays written."""
    store = HostMemory()
    expected = []
    async with Sink(store, capacity=3) as sink:
        for i in range(300):
            host = np.full((128,), float(i), np.float32)
            expected.append(host)
            x = device.to_device(host)  # a fresh array per step
            await sink.write({"x": x}, step=i, stream=device.stream, copy=False)
        # borrowing takes no snapshot: no device memory held for slots
        assert sink._channel.device.device_nbytes == 0
    np.testing.assert_array_equal(store.trajectory()["x"][:], np.stack(expected))


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_failed_device_copy_fails_the_sink_and_stores_no_stale_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """A device-to-host copy that fails on the copy stream (a CUDA error, which
    the event's query returns, as the emulation now does) leaves its slot with
    no frame: the sink fails, the next write or flush and the close raise
    WriterError chained to the error, and only the frames before are stored,
    never the slot's stale contents."""
    from snapsink._staging.emulation import EmulationBackend

    real = EmulationBackend.copy_d2h_async
    calls = [0]

    def failing(self: Any, dst: Any, src: Any, stream: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:
            stream.launch(_raise_copy_error)
            return
        real(self, dst, src, stream)

    monkeypatch.setattr(EmulationBackend, "copy_d2h_async", failing)
    x = EmulatedDeviceArray.from_host(np.zeros(4))
    store: Any = HostMemory() if writer == "thread" else NpyDirectory(tmp_path / "run")
    raised = []
    with pytest.raises(snapsink.WriterError) as at_close:
        async with Sink(store, capacity=2, writer=writer) as sink:
            for i in range(6):
                x.host[:] = i
                try:
                    await sink.write({"x": x}, step=i)
                except snapsink.WriterError as exc:
                    raised.append(exc)
                await anyio.sleep(0.02)
            with pytest.raises(snapsink.WriterError):
                await sink.flush()
    assert raised and all("injected copy failure" in str(e) for e in raised)
    assert "injected copy failure" in str(at_close.value)
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [0, 1]
    assert traj["x"][:, 0].tolist() == [0.0, 1.0]


def _raise_copy_error() -> None:
    raise RuntimeError("injected copy failure (as cudaErrorIllegalAddress)")
