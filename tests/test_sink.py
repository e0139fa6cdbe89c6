"""Sink: capture, ordering, policies, flush, errors, cancellation, statistics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapsink
from conftest import FailingStore, GatedStore
from process_stores import GatedNpy
from snapsink import (
    Batch,
    ClosedSinkError,
    ConfigError,
    Field,
    Frame,
    HostMemory,
    Schema,
    SchemaError,
    Sink,
    Spill,
    SyncSink,
    WouldBlock,
    WriterError,
)

pytestmark = pytest.mark.timeout(30)


async def test_round_trip_capture_and_times() -> None:
    store = HostMemory()
    x = np.zeros((5, 3), "f4")
    async with Sink(store, capacity=3) as sink:
        for i in range(50):
            x[:] = i  # overwritten right after each write: the capture must hold
            await sink.write({"x": x, "e": float(i) * 0.5}, time=i * 0.1)
            x[:] = -1
    traj = store.trajectory()
    assert len(traj) == 50
    np.testing.assert_array_equal(traj.steps, np.arange(50))
    np.testing.assert_array_equal(traj.times, np.arange(50) * 0.1)
    xs = traj["x"][:]
    assert xs.dtype == np.float32 and xs.shape == (50, 5, 3)
    np.testing.assert_array_equal(
        xs, np.arange(50, dtype="f4")[:, None, None] * np.ones((5, 3), "f4")
    )
    np.testing.assert_array_equal(traj["e"][:], np.arange(50) * 0.5)
    assert traj.frame(-1)["e"] == 24.5


async def test_ragged_field_and_declared_schema() -> None:
    store = HostMemory()
    schema = Schema({"pos": Field("f8", (None, 3)), "n": "i8"})
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(int(k), 3)) for k in rng.integers(0, 9, size=30)]
    async with Sink(store, schema=schema, capacity=4) as sink:
        for i, f in enumerate(frames):
            await sink.write({"pos": f, "n": len(f)}, step=10 * i)
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, 10 * np.arange(30))
    got = traj["pos"][:]
    assert len(got) == 30
    for a, b in zip(got, frames, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(traj["pos"][7], frames[7])
    np.testing.assert_array_equal(traj["n"][:], [len(f) for f in frames])


async def test_copy_false_borrows() -> None:
    store = HostMemory()
    frames = [np.full(4, i, "i4") for i in range(10)]
    async with Sink(store) as sink:
        for f in frames:
            await sink.write({"a": f}, copy=False)
    np.testing.assert_array_equal(store.trajectory()["a"][:], np.stack(frames))


async def test_bad_input_writes_nothing_and_sink_stays_usable() -> None:
    store = HostMemory()
    async with Sink(store, schema={"x": Field("f4", (3,))}) as sink:
        await sink.write({"x": np.ones(3, "f4")}, step=5)
        bad = [
            ({"x": np.ones(4, "f4")}, {"step": 6}, SchemaError),
            ({"x": np.ones(3, "f8")}, {"step": 6}, snapsink.DTypeError),
            ({"y": np.ones(3, "f4")}, {"step": 6}, SchemaError),
            ({"x": np.ones(3, "f4")}, {"step": 5}, SchemaError),
            ({"x": np.ones(3, "f4")}, {"step": 6, "time": 1.0}, SchemaError),
            ({"x": np.ones(3, "f4")}, {"step": "6"}, snapsink.DTypeError),
        ]
        for fields, kw, err in bad:
            with pytest.raises(err):
                await sink.write(fields, **kw)
            with pytest.raises(err):
                sink.write_nowait(fields, **kw)
        await sink.write({"x": np.full(3, 2, "f4")})  # default step: previous + 1
        assert sink.statistics().queued + sink.statistics().written == 2
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, [5, 6])
    np.testing.assert_array_equal(traj["x"][:], [[1, 1, 1], [2, 2, 2]])


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"policy": "drop"}, "policy"),
        ({"policy": None}, "policy"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"schema": 3}, "schema"),
    ],
)
def test_invalid_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        Sink(HostMemory(), **kwargs)


def test_invalid_store_and_spill() -> None:
    with pytest.raises(ConfigError, match="lacks open, prepare, append"):
        Sink(object())
    with pytest.raises(ConfigError, match="max_bytes"):
        Spill("/tmp", max_bytes=0)


async def test_closed_sink_errors() -> None:
    store = HostMemory()
    sink = Sink(store)
    with pytest.raises(ClosedSinkError, match="not open"):
        await sink.write({"a": 1.0})
    async with sink:
        await sink.write({"a": 1.0})
    with pytest.raises(ClosedSinkError):
        await sink.write({"a": 2.0})
    with pytest.raises(ClosedSinkError):
        sink.write_nowait({"a": 2.0})
    with pytest.raises(ClosedSinkError):
        await sink.flush()
    await sink.aclose()  # closing twice is fine
    assert len(store) == 1
    with pytest.raises(ConfigError, match="already opened"):
        async with sink:
            pass


async def _fill_while_gated(sink: Sink, store: GatedStore, n: int) -> None:
    """Write step 0, wait until the store is busy with it, then write 1..n-1."""
    await sink.write({"v": np.zeros(2)}, step=0)
    await store.wait_entered()
    for i in range(1, n):
        await sink.write({"v": np.full(2, float(i))}, step=i)


async def test_drop_newest_exact(gated: GatedStore) -> None:
    async with Sink(gated, capacity=4, policy="drop_newest") as sink:
        await _fill_while_gated(sink, gated, 20)
        stats = sink.statistics()
        # step 0 is being written (1 slot), steps 1-3 queued, 4-19 dropped
        assert stats.dropped == 16 and stats.queued == 4 and stats.peak_queued == 4
        gated.gate.set()
    traj = gated.trajectory()
    np.testing.assert_array_equal(traj.steps, [0, 1, 2, 3])
    np.testing.assert_array_equal(traj["v"][:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(traj.dropped_steps, np.arange(4, 20))
    assert sink.statistics().written == 4


async def test_drop_oldest_exact(gated: GatedStore) -> None:
    async with Sink(gated, capacity=4, policy="drop_oldest") as sink:
        await _fill_while_gated(sink, gated, 20)
        assert sink.statistics().dropped == 16
        gated.gate.set()
    traj = gated.trajectory()
    np.testing.assert_array_equal(traj.steps, [0, 17, 18, 19])
    np.testing.assert_array_equal(traj["v"][:, 1], [0, 17, 18, 19])
    np.testing.assert_array_equal(traj.dropped_steps, np.arange(1, 17))


async def test_block_bounds_memory_and_loses_nothing(gated: GatedStore) -> None:
    async with Sink(gated, capacity=4, policy="block") as sink:
        await sink.write({"v": np.zeros(2)}, step=0)
        await gated.wait_entered()
        for i in range(1, 4):
            sink.write_nowait({"v": np.full(2, float(i))})
        with pytest.raises(WouldBlock, match="full"):
            sink.write_nowait({"v": np.full(2, 99.0)})
        assert sink.statistics().queued == 4
        gated.gate.set()
        for i in range(4, 200):
            await sink.write({"v": np.full(2, float(i))})
            assert sink.statistics().queued <= 4
    traj = gated.trajectory()
    np.testing.assert_array_equal(traj.steps, np.arange(200))
    np.testing.assert_array_equal(traj["v"][:, 0], np.arange(200))
    assert sink.statistics().peak_queued == 4
    assert max(gated.batches) <= 2  # double-buffered: half the channel per batch


async def test_max_bytes_bounds_the_channel(gated: GatedStore) -> None:
    frame = np.zeros(1000)  # 8000 bytes
    async with Sink(gated, capacity=100, max_bytes=20_000) as sink:
        await sink.write({"v": frame})
        await gated.wait_entered()
        sink.write_nowait({"v": frame})
        with pytest.raises(WouldBlock):
            sink.write_nowait({"v": frame})  # 3 x 8000 > 20000
        gated.gate.set()
    assert len(gated.trajectory()) == 2


async def test_spill_keeps_order_and_bits(gated: GatedStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(3, 4)).astype("f4") for _ in range(40)]
    ragged = [rng.integers(0, 100, size=(int(k),)) for k in rng.integers(0, 5, size=40)]
    schema = {"x": Field("f4", (3, 4)), "r": Field("i8", (None,))}
    async with Sink(gated, capacity=4, policy=Spill(tmp_path / "spill"), schema=schema) as sink:
        await sink.write({"x": frames[0], "r": ragged[0]})
        await gated.wait_entered()
        for i in range(1, 40):
            buf = frames[i].copy()
            await sink.write({"x": buf, "r": ragged[i]})
            buf[:] = np.nan  # capture contract holds for spilled frames too
        stats = sink.statistics()
        assert stats.spilled == 36 and stats.dropped == 0
        spill_dirs = list((tmp_path / "spill").iterdir())
        assert len(spill_dirs) == 1
        # one append-only segment and a lock file, however many frames spilled
        assert sorted(p.name for p in spill_dirs[0].iterdir()) == ["000001.seg", "lock"]
        gated.gate.set()
        await sink.flush()
    assert not spill_dirs[0].exists()  # replayed segments and the directory are removed
    traj = gated.trajectory()
    np.testing.assert_array_equal(traj.steps, np.arange(40))
    np.testing.assert_array_equal(traj["x"][:], np.stack(frames))
    for a, b in zip(traj["r"][:], ragged, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "spill").exists() or list((tmp_path / "spill").iterdir()) == []


async def test_spill_max_bytes_falls_back_to_blocking(gated: GatedStore, tmp_path: Path) -> None:
    frame = np.zeros(100)  # 800 bytes
    async with Sink(gated, capacity=2, policy=Spill(tmp_path, max_bytes=2000)) as sink:
        await sink.write({"v": frame})
        await gated.wait_entered()
        await sink.write({"v": frame})  # queued in memory
        await sink.write({"v": frame})  # spilled: 800
        await sink.write({"v": frame})  # spilled: 1600
        assert sink.statistics().spilled == 2

        async def fifth() -> None:
            await sink.write({"v": frame + 5})  # 2400 > 2000: must block

        async with anyio.create_task_group() as tg:
            tg.start_soon(fifth)
            await anyio.wait_all_tasks_blocked()
            assert sink.statistics().spilled == 2 and sink.statistics().queued == 4
            gated.gate.set()
    traj = gated.trajectory()
    assert len(traj) == 5 and traj["v"][4][0] == 5


async def test_flush_makes_frames_visible(gated: GatedStore) -> None:
    gated.gate.set()
    async with Sink(gated, capacity=8) as sink:
        for i in range(10):
            await sink.write({"v": np.full(2, float(i))})
            await sink.flush()
            assert len(gated) == i + 1
            assert gated.commits >= i + 1


async def test_writer_error_reaches_write_flush_and_close() -> None:
    store = FailingStore(fail_append_at=1)
    with pytest.raises(WriterError, match="No space left") as at_close:
        async with Sink(store, capacity=2) as sink:
            await sink.write({"v": np.zeros(2)})
            with pytest.raises(WriterError) as at_flush:
                await sink.flush()
            assert isinstance(at_flush.value.__cause__, OSError)
            with pytest.raises(WriterError) as at_write:
                for _ in range(10):
                    await sink.write({"v": np.zeros(2)})
            assert isinstance(at_write.value.__cause__, OSError)
    assert isinstance(at_close.value.__cause__, OSError)
    assert store.closed  # the store is closed even after a failure


async def test_writer_error_wakes_a_blocked_producer(gated: GatedStore) -> None:
    class Boom(GatedStore):
        def append(self, batch: snapsink.Batch) -> None:
            super().append(batch)
            raise RuntimeError("disk on fire")

    store = Boom()
    with pytest.raises(WriterError):
        async with Sink(store, capacity=2) as sink:
            await sink.write({"v": np.zeros(2)})
            await store.wait_entered()
            await sink.write({"v": np.zeros(2)})

            async def blocked() -> None:
                with pytest.raises(WriterError, match="disk on fire"):
                    await sink.write({"v": np.zeros(2)})

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                await anyio.wait_all_tasks_blocked()
                store.gate.set()


async def test_commit_error_surfaces_at_flush() -> None:
    store = FailingStore(fail_append_at=None, fail_commit=True)
    with pytest.raises(WriterError, match="Input/output"):
        async with Sink(store) as sink:
            await sink.write({"v": 1.0})
            await sink.flush()


async def test_body_exception_commits_and_reraises() -> None:
    store = HostMemory()
    with pytest.raises(KeyError):
        async with Sink(store) as sink:
            for i in range(5):
                await sink.write({"v": float(i)})
            raise KeyError("user bug")
    assert len(store) == 5


async def test_cancelled_blocked_producer_leaves_channel_consistent(gated: GatedStore) -> None:
    async with Sink(gated, capacity=2) as sink:
        await sink.write({"v": np.zeros(2)}, step=0)
        await gated.wait_entered()
        await sink.write({"v": np.ones(2)}, step=1)
        with anyio.move_on_after(0.05) as scope:
            await sink.write({"v": np.ones(2)}, step=2)  # blocks: channel full
        assert scope.cancelled_caught
        assert sink.statistics().queued == 2
        gated.gate.set()
        await sink.write({"v": np.full(2, 3.0)}, step=3)  # step 2 was never accepted
        await sink.flush()
        assert sink.statistics().queued == 0
    np.testing.assert_array_equal(gated.trajectory().steps, [0, 1, 3])
    assert len(sink._channel.pool.free) == 2  # no slot leaked


async def test_cancelling_the_owner_still_stores_accepted_frames(gated: GatedStore) -> None:
    with anyio.CancelScope() as scope:
        async with Sink(gated, capacity=8) as sink:
            for i in range(6):
                await sink.write({"v": float(i)})
            scope.cancel()
            gated.gate.set()
            await anyio.sleep(10)  # cancelled here
    assert len(gated) == 6


async def test_statistics_bytes_and_counts() -> None:
    store = HostMemory()
    async with Sink(store, capacity=4) as sink:
        for _ in range(10):
            await sink.write({"x": np.zeros((10, 3), "f4"), "e": 0.0})
    s = sink.statistics()
    assert (s.written, s.dropped, s.spilled, s.queued) == (10, 0, 0, 0)
    assert s.bytes_written == 10 * (120 + 8)
    assert s.capacity == 4 and s.policy == "block"
    with pytest.raises(AttributeError):
        s.written = 3  # type: ignore[misc]  # frozen


async def test_several_producers_and_sinks_in_one_loop() -> None:
    stores = [HostMemory(), HostMemory()]
    async with Sink(stores[0], capacity=3) as a, Sink(stores[1], capacity=5) as b:

        async def producer(k: int) -> None:
            for i in range(50):
                await a.write({"v": float(i), "k": k})
                await b.write({"v": float(i), "k": k})

        async with anyio.create_task_group() as tg:
            for k in range(3):
                tg.start_soon(producer, k)
    for store in stores:
        traj = store.trajectory()
        np.testing.assert_array_equal(traj.steps, np.arange(150))
        assert sorted(traj["k"][:].tolist()) == sorted([0, 1, 2] * 50)


async def test_resume_into_host_memory_continues_steps() -> None:
    store = HostMemory()
    async with Sink(store) as sink:
        await sink.write({"v": 1.0}, step=3, time=0.5)
    async with Sink(store) as sink:
        with pytest.raises(SchemaError, match="greater than 3"):
            await sink.write({"v": 2.0}, step=3, time=1.0)
        await sink.write({"v": 2.0}, time=1.0)
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, [3, 4])
    with pytest.raises(SchemaError, match="declares"):
        async with Sink(store, schema={"w": "f8"}):
            pass


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.one_of(st.integers(1, 5), st.just("flush")), min_size=1, max_size=20),
    capacity=st.integers(1, 6),
    policy=st.sampled_from(["block", "spill"]),
)
def test_any_interleaving_of_writes_and_flushes_keeps_order(
    ops: list, capacity: int, policy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async def run() -> None:
        store = HostMemory()
        pol = Spill(tmp_path_factory.mktemp("spill")) if policy == "spill" else "block"
        expected: list[int] = []
        step = 0
        async with Sink(store, capacity=capacity, policy=pol) as sink:
            for op in ops:
                if op == "flush":
                    await sink.flush()
                    assert len(store) == len(expected)
                    continue
                for _ in range(op):
                    step += int(1 + step % 3)
                    await sink.write({"v": np.full(3, step, "i8")}, step=step)
                    expected.append(step)
        traj = store.trajectory()
        np.testing.assert_array_equal(traj.steps, expected)
        if expected:
            np.testing.assert_array_equal(traj["v"][:, 2], expected)

    anyio.run(run)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_compute_bound_producer_right_after_open_loses_nothing(policy: str) -> None:
    """A producer that computes on the loop from its first line (never awaiting
    anything but write) must find the consumer already running: before the
    sink waited for its consumer at open, the first frames were dropped."""

    def busy(seconds: float) -> None:
        # Blocks the event loop but releases the GIL, as a NumPy step does (a
        # pure-Python loop would starve every thread, whatever the design).
        time.sleep(seconds)

    store = HostMemory()
    async with Sink(store, capacity=8, policy=policy) as sink:
        for i in range(30):
            busy(0.005)
            await sink.write({"x": np.full(1 << 15, float(i))})
    assert sink.statistics().dropped == 0
    np.testing.assert_array_equal(store.trajectory()["x"][:, 0], np.arange(30.0))


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_schema_the_store_cannot_hold_is_refused_where_it_is_fixed(
    tmp_path: Path, writer: str
) -> None:
    """ZarrStore has no float128: the first write says so (DTypeError, not a
    WriterError later), fixes no schema, and the sink takes a float64 frame."""
    if not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    from snapsink import DTypeError, SyncSink, ZarrStore

    with SyncSink(ZarrStore(tmp_path / "run.zarr"), writer=writer) as sink:
        with pytest.raises(DTypeError, match="float128"):
            sink.write({"x": np.ones(3, dtype=np.float128)}, step=0)
        assert sink.schema is None
        sink.write({"x": np.ones(3)}, step=0)
    traj = snapsink.open(tmp_path / "run.zarr")
    assert traj.steps.tolist() == [0]
    assert traj["x"][0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(DTypeError, match="float128"):
        SyncSink(
            ZarrStore(tmp_path / "declared.zarr"),
            schema={"x": Field("float128", (3,))},
            writer=writer,
        )
    assert not (tmp_path / "declared.zarr").exists()


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_huge_capacity_costs_nothing_until_frames_come(tmp_path: Path, writer: str) -> None:
    """Slots are made as frames need them (issue 11, item 19: capacity=10**7
    allocated 1.7 GB and took 7 s before the first frame)."""
    import tracemalloc

    from snapsink import SyncSink

    store = snapsink.HostMemory() if writer == "thread" else snapsink.NpyDirectory(tmp_path / "s")
    tracemalloc.start()
    try:
        with SyncSink(store, capacity=10**7, writer=writer) as sink:
            opened = tracemalloc.get_traced_memory()[0]
            for i in range(20):
                sink.write({"x": np.full(4, float(i))}, step=i)
            sink.flush()
            made = len(sink._sink._channel.pool.slots)  # type: ignore[union-attr]
    finally:
        tracemalloc.stop()
    assert opened < 4 << 20, f"{opened} bytes traced at open"
    assert made <= 20  # one per frame at most, never the capacity
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "s")
    assert traj["x"][:].tolist() == [[float(i)] * 4 for i in range(20)]


# -- resuming after drops: a step is never both stored and dropped ----------------------
def _run_with_drops() -> snapsink.HostMemory:
    """Step 0 stored, steps 1-9 recorded as dropped (a drop policy's record)."""
    mem = snapsink.HostMemory()
    mem.open()
    mem.prepare(Schema({"x": "float64"}), times=False)
    mem.append(Batch([Frame(0, None, {"x": np.float64(0.0)})], dropped_steps=list(range(1, 10))))
    mem.close()
    return mem


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5", "memory"])
def test_resumed_run_storing_steps_it_had_dropped_no_longer_lists_them(
    tmp_path: Path, kind: str
) -> None:
    """A run resumed from a checkpoint before steps it had dropped stores them
    again: they are stored, and so no longer dropped (the steps before its
    restart stay dropped)."""
    if kind == "hdf5":
        pytest.importorskip("h5py")
    classes = {"npy": snapsink.NpyDirectory, "zarr": snapsink.ZarrStore}
    if kind == "hdf5":
        classes["hdf5"] = snapsink.HDF5Store
    path = tmp_path / ("run.h5" if kind == "hdf5" else "run")
    if kind == "memory":
        store = _run_with_drops()
    else:
        snapsink.copy(_run_with_drops(), classes[kind](path))
        assert snapsink.open(path).dropped_steps.tolist() == list(range(1, 10))
        store = classes[kind](path, mode="a")
    with SyncSink(store, writer="thread") as sink:
        assert sink.last_step == 0
        for step in range(5, 13):
            sink.write({"x": float(step)}, step=step)
    traj = store.trajectory() if kind == "memory" else snapsink.open(path)
    assert traj.steps.tolist() == [0, *range(5, 13)]
    assert traj["x"][:].tolist() == [0.0, *map(float, range(5, 13))]
    assert traj.dropped_steps.tolist() == [1, 2, 3, 4]


def test_a_sink_made_to_wait_on_another_event_loop_says_so_instead_of_hanging() -> None:
    """Its wake-ups go to the loop that opened it: once that loop has ended, a
    flush, or a write that must wait for room, on another loop would never
    return. Both raise WrongThreadError; the sink stays usable there otherwise."""
    import asyncio

    store = GatedStore()

    async def open_and_fill() -> Sink:
        sink = Sink(store, capacity=1, writer="thread")
        await sink.__aenter__()
        await sink.write({"x": 0.0}, step=0)
        store.entered.wait(10)  # the one slot is taken: the next write must wait
        return sink

    sink = asyncio.run(open_and_fill())

    async def later() -> None:
        with pytest.raises(snapsink.WrongThreadError, match="another event loop"):
            await sink.write({"x": 1.0}, step=1)
        with pytest.raises(snapsink.WrongThreadError, match="another event loop"):
            await sink.flush()
        store.gate.set()
        await sink.aclose()

    asyncio.run(later())
    assert store.trajectory().steps.tolist() == [0]


def test_frame_indices_empty_lists_and_bools() -> None:
    """An empty list selects no frame (as an empty int array does); a bool is no
    frame number (Python would take True for 1), for fixed and ragged fields."""
    store = HostMemory()
    rows = Field("int16", (None, 2))
    with SyncSink(store, schema={"x": "float64", "r": rows}, writer="thread") as sink:
        for i in range(3):
            sink.write({"x": float(i), "r": np.full((i, 2), i, np.int16)}, step=i)
    traj = store.trajectory()
    assert traj["x"][[]].tolist() == [] and traj["x"][[]].dtype == np.float64
    assert traj["r"][[]] == []
    assert traj["x"][[2, -3]].tolist() == [2.0, 0.0]
    assert [a.tolist() for a in traj["r"][[2]]] == [[[2, 2], [2, 2]]]
    for bad in (True, np.True_, False):
        with pytest.raises(IndexError, match="frame index: expected int"):
            traj["x"][bad]
        with pytest.raises(IndexError, match="frame index: expected int"):
            traj.frame(bad)


# -- drop_oldest drops a queued frame only when that makes room ------------------------
def _wait_for_file(path: str) -> None:
    """Wait for a file another thread or process creates (no event crosses them)."""
    deadline = time.monotonic() + 20
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.001)


@pytest.mark.parametrize(
    ("writer", "capacity", "sizes", "kept"),
    [
        # A (with the store) holds 6000 of 10000 bytes: C (6000) does not fit even
        # once B is gone, so only C is dropped (B was dropped for nothing, then C)
        ("thread", 2, [6000, 3000, 6000], [0, 1]),
        ("process", 2, [6000, 3000, 6000], [0, 1]),
        # room for the new frame once the two queued frames are gone: both go
        ("thread", 3, [4000, 3000, 3000, 5000], [0, 3]),
        # once the first is gone: it alone goes
        ("process", 3, [4000, 1000, 1000, 5000], [0, 2, 3]),
    ],
)
def test_drop_oldest_drops_queued_frames_only_when_that_makes_room(
    tmp_path: Path, writer: str, capacity: int, sizes: list[int], kept: list[int]
) -> None:
    gate = str(tmp_path / "gate")
    schema = Schema({"x": Field("uint8", (None,))})
    store = GatedNpy(str(tmp_path / "run"), gate)
    with SyncSink(
        store, capacity, "drop_oldest", max_bytes=10_000, schema=schema, writer=writer
    ) as sink:
        try:
            sink.write({"x": np.full(sizes[0], 0, np.uint8)}, step=0)
            _wait_for_file(gate + ".entered")  # frame 0 is being written
            for step, size in enumerate(sizes[1:], 1):
                sink.write({"x": np.full(size, step, np.uint8)}, step=step)
            stats = sink.statistics()
        finally:
            Path(gate).touch()
    dropped = sorted(set(range(len(sizes))) - set(kept))
    assert (stats.dropped, stats.queued) == (len(dropped), len(kept))
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == kept
    assert [(len(x), int(x[0])) for x in traj["x"][:]] == [(sizes[s], s) for s in kept]
    assert traj.dropped_steps.tolist() == dropped


# -- a stall under a drop policy: its dropped steps wait as runs -----------------------
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_a_stall_under_a_drop_policy_keeps_its_dropped_steps_as_one_run(policy: str) -> None:
    """Thousands of drops while the store stalls wait in the channel as one run
    of steps (not a step each: memory grew with the stall), and every one of
    them reaches the store, in slices of at most DROPS_PER_BATCH."""
    n = 20_000  # more than DROPS_PER_BATCH (16384): two slices
    store = GatedStore()
    with SyncSink(store, capacity=2, policy=policy, writer="thread") as sink:
        try:
            sink.write({"v": np.zeros(2)}, step=0)
            assert store.entered.wait(10)  # step 0 is being written, and stalls
            for i in range(1, n):
                sink.write({"v": np.full(2, float(i))}, step=i)
            pending = sink._sink._channel.pending_dropped  # type: ignore[union-attr]
            assert len(pending) == 1  # runs waiting: one, whatever the stall's length
            assert sink.statistics().dropped == n - 2
        finally:
            store.gate.set()
    kept = [0, 1] if policy == "drop_newest" else [0, n - 1]
    traj = store.trajectory()
    assert traj.steps.tolist() == kept
    assert traj["v"][:, 0].tolist() == [float(s) for s in kept]
    assert traj.dropped_steps.tolist() == sorted(set(range(n)) - set(kept))


# -- a write that fails takes nothing ---------------------------------------------------
def test_a_write_that_fails_to_make_the_writer_ring_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making the writer process's ring (at the first frame) can fail, e.g. with
    EMFILE: that write raises, nothing of it is stored, and its step can be
    written again (it was stored, and its step used up)."""
    import errno

    from snapsink._writer import _shm

    create = _shm.Ring.create
    failures = [OSError(errno.EMFILE, "Too many open files (injected)")]

    def fails_once(nrecords: int, n_ragged: int) -> _shm.Ring:
        if failures:
            raise failures.pop()
        return create(nrecords, n_ragged)

    monkeypatch.setattr(_shm.Ring, "create", fails_once)
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run"), writer="process") as sink:
        with pytest.raises(OSError, match="Too many open files"):
            sink.write({"x": np.full(3, 7.0)}, step=0)
        assert sink.statistics().queued == 0 and sink.last_step is None
        sink.write({"x": np.full(3, 8.0)}, step=0)  # the same step, again
        sink.write({"x": np.full(3, 9.0)}, step=1)
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [0, 1]
    assert traj["x"][:, 0].tolist() == [8.0, 9.0]


# -- a signal handler that interrupted a write -----------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_signal_handler_that_interrupted_a_write_may_read_statistics(
    tmp_path: Path, writer: str
) -> None:
    """A handler runs in the main thread, maybe while that thread holds the
    channel's lock inside write(): statistics() (a progress report) returns
    the counters (it waited for itself forever); a write() or close() from it
    raises WrongThreadError, saying what to do, and changes nothing."""
    import signal

    store = HostMemory() if writer == "thread" else snapsink.NpyDirectory(tmp_path / "run")
    seen: list[object] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(sink.statistics())
        with pytest.raises(snapsink.WrongThreadError, match="signal handler"):
            sink.write({"v": np.full(2, 99.0)}, step=99)
        with pytest.raises(snapsink.WrongThreadError, match="set a flag"):
            ch.raise_if_interrupted("close()")  # what the sync facade's close asks first
        seen.append("refused")

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with SyncSink(store, capacity=4, policy="drop_newest", writer=writer) as sink:
            for i in range(3):
                sink.write({"v": np.full(2, float(i))}, step=i)
            ch = sink._sink._channel
            assert ch is not None
            with ch.lock:  # where write() holds it when the signal lands
                signal.raise_signal(signal.SIGUSR1)  # its handler runs before this returns
            ch.raise_if_interrupted("close()")  # outside: nothing to say
            sink.write({"v": np.full(2, 3.0)}, step=3)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    stats, refused = seen
    assert isinstance(stats, snapsink.SinkStatistics) and refused == "refused"
    assert stats.written + stats.queued == 3 and stats.dropped == 0
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == [0, 1, 2, 3]
    assert traj["v"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


# -- a flush that another task's close ends; a close from another event loop -----------
class _ClosingFails(GatedStore):
    def close(self) -> None:
        super().close()
        raise OSError(5, "Input/output error (injected)")


async def _outcome(got: dict[str, Any], key: str, call: Callable[[], Awaitable[object]]) -> None:
    """Await ``call()`` and note under ``key`` how it ended: None, or what it raised."""
    try:
        await call()
        got[key] = None
    except Exception as exc:
        got[key] = exc


@pytest.mark.parametrize("close", ["drains", "drains_acked", "fails", "interrupted"])
async def test_a_flush_ended_by_another_tasks_close_ends_as_the_close_does(close: str) -> None:
    """The close stores and commits every frame: a flush waiting for them
    returns, or raises the close's error; only a close that did not finish
    leaves it a ClosedSinkError, which says so. (Save in "drains_acked", the
    writer's acknowledgement of the flush is held back: the close alone ends it.)"""
    store = _ClosingFails() if close == "fails" else GatedStore()
    sink = Sink(store, capacity=8, writer="thread")
    await sink.__aenter__()
    writer = sink._thread_writer
    assert writer is not None
    if close != "drains_acked":
        wake = sink._wake_flushers
        sink._wake_flushers = lambda gen: None if gen is not None else wake(None)  # type: ignore[method-assign]
    if close == "interrupted":

        def interrupted() -> None:
            raise RuntimeError("the close was interrupted (injected)")

        writer.join = interrupted  # type: ignore[method-assign]
    got: dict[str, Exception | None] = {}

    try:
        for i in range(4):
            await sink.write({"v": float(i)}, step=i)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_outcome, got, "flush", sink.flush)
            await anyio.wait_all_tasks_blocked()  # the flush waits: the store is gated
            assert "flush" not in got
            store.gate.set()
            await _outcome(got, "close", sink.aclose)
    finally:
        store.gate.set()
        if close == "interrupted":
            type(writer).join(writer)  # the writer went on draining: wait for it
    assert store.trajectory()["v"][:].tolist() == [0.0, 1.0, 2.0, 3.0]
    if close.startswith("drains"):
        assert got == {"flush": None, "close": None}
    elif close == "fails":
        assert isinstance(got["close"], WriterError)
        assert isinstance(got["close"].__cause__, OSError)
        assert got["flush"] is got["close"]
    else:
        assert isinstance(got["close"], RuntimeError)
        assert isinstance(got["flush"], ClosedSinkError)
        assert "did not finish" in str(got["flush"])
    with pytest.raises(ClosedSinkError, match="closed"):  # a flush after the close
        await sink.flush()


def test_a_close_on_another_running_event_loop_is_refused_changing_nothing() -> None:
    """A close wakes tasks on the sink's loop (a close or a flush waiting for
    it), which one run in another loop's thread would not wake: while the
    sink's loop runs, a close there raises WrongThreadError and the sink goes
    on. (Once its loop has ended, a close on another is taken: see
    test_a_sink_made_to_wait_on_another_event_loop_says_so_instead_of_hanging.)"""
    import asyncio

    store = HostMemory()
    got: dict[str, BaseException | None] = {}

    async def main() -> None:
        async with Sink(store, capacity=4, writer="thread") as sink:
            await sink.write({"v": 0.0}, step=0)

            def close_on_another_loop() -> None:
                async def close() -> None:
                    try:
                        await sink.aclose()
                        got["close"] = None
                    except BaseException as exc:
                        got["close"] = exc

                asyncio.run(close())

            await anyio.to_thread.run_sync(close_on_another_loop)
            await sink.write({"v": 1.0}, step=1)  # still open
            await sink.flush()
            assert store.trajectory()["v"][:].tolist() == [0.0, 1.0]

    asyncio.run(main())
    assert isinstance(got["close"], snapsink.WrongThreadError)
    assert "close it there" in str(got["close"])
    assert store.trajectory()["v"][:].tolist() == [0.0, 1.0]


# -- a close cancelled while another waits; a close while another task opens ----------
def _stored(path: Path) -> list[float]:
    return snapsink.open(path)["v"][:].tolist() if (path / "metadata.json").exists() else []


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("second", ["waiting", "later"])
async def test_a_close_cancelled_while_it_drains_is_finished_by_the_next_close(
    tmp_path: Path, writer: str, second: str
) -> None:
    """asyncio's task.cancel() ends a close's wait despite anyio's shield; the
    drain goes on, and a close waiting for it ("waiting") or called after it
    ("later") returns only once the store has every frame, as an interrupted
    SyncSink.close leaves the next close to finish it. (A close that waited
    returned at once, the frames the writer still held not stored.)"""
    import asyncio

    gate = str(tmp_path / "gate")
    run = tmp_path / "run"
    sink = Sink(GatedNpy(str(run), gate), capacity=8, writer=writer)
    await sink.__aenter__()
    got: dict[str, object] = {}

    async def close() -> None:
        await _outcome(got, "close", sink.aclose)
        got["stored"] = _stored(run)  # what the store holds when that close returns

    try:
        for i in range(5):
            await sink.write({"v": float(i)}, step=i)
        await anyio.to_thread.run_sync(_wait_for_file, gate + ".entered")  # the writer waits
        first = asyncio.ensure_future(sink.aclose())
        await anyio.wait_all_tasks_blocked()
        if second == "waiting":
            closer = asyncio.ensure_future(close())
            await anyio.wait_all_tasks_blocked()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        if second == "later":
            closer = asyncio.ensure_future(close())
        await anyio.wait_all_tasks_blocked()
        assert "close" not in got  # it waits for the drain, which waits at the gate
        await anyio.Path(gate).touch()
        await closer
    finally:
        await anyio.Path(gate).touch()
    assert got == {"close": None, "stored": [0.0, 1.0, 2.0, 3.0, 4.0]}
    await sink.aclose()  # a third close: done, nothing to wait for
    with pytest.raises(ClosedSinkError, match="closed"):
        await sink.write({"v": 5.0}, step=5)
    assert _stored(run) == [0.0, 1.0, 2.0, 3.0, 4.0]


async def test_a_close_that_took_over_a_cancelled_one_raises_its_error() -> None:
    """The drain's outcome is every close's: the store's failure at closing
    reaches the close that took over (once), not only the cancelled one."""
    import asyncio

    store = _ClosingFails()
    sink = Sink(store, capacity=8, writer="thread")
    await sink.__aenter__()
    try:
        for i in range(3):
            await sink.write({"v": float(i)}, step=i)
        await store.wait_entered()
        first = asyncio.ensure_future(sink.aclose())
        await anyio.wait_all_tasks_blocked()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        store.gate.set()
        with pytest.raises(WriterError, match="closing the store failed") as info:
            await sink.aclose()
    finally:
        store.gate.set()
    assert isinstance(info.value.__cause__, OSError)
    assert store.trajectory()["v"][:].tolist() == [0.0, 1.0, 2.0]
    await sink.aclose()  # reported; a close after it is a no-op


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("opens", [True, False])
async def test_a_close_while_another_task_opens_the_sink_closes_it_once_open(
    tmp_path: Path, writer: str, opens: bool
) -> None:
    """A close is always allowed: one called while another task is inside
    ``async with`` opening the sink (a slow store open, the writer process
    starting) waits for the open, then the sink is closed, its store complete
    and closed, and the opening task's ``async with`` raises ClosedSinkError
    (its body does not run). An open that fails leaves that close nothing to
    do. (The close failed with an AssertionError.)"""
    from process_stores import OpenGatedNpy

    gate = str(tmp_path / "gate")
    run = tmp_path / "run"
    if not opens:  # the store exists: mode "x" refuses it
        async with Sink(snapsink.NpyDirectory(run), writer="thread") as first:
            await first.write({"v": 9.0}, step=0)
    sink = Sink(OpenGatedNpy(str(run), gate), writer=writer)
    got: dict[str, object] = {}

    async def enter() -> None:
        try:
            async with sink:
                got["body"] = True
        except Exception as exc:
            got["enter"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(enter)
        try:
            await anyio.to_thread.run_sync(_wait_for_file, gate + ".entered")
            tg.start_soon(_outcome, got, "close", sink.aclose)
            await anyio.wait_all_tasks_blocked()
            assert got == {}  # the close waits for the open
            with pytest.raises(ClosedSinkError, match="still opening"):
                await sink.write({"v": 0.0}, step=0)
        finally:
            await anyio.Path(gate).touch()
    assert got["close"] is None and "body" not in got
    if opens:
        assert isinstance(got["enter"], ClosedSinkError)
        assert "closed (aclose() in another task) while it opened" in str(got["enter"])
    else:
        assert isinstance(got["enter"], FileExistsError)
    with pytest.raises(ClosedSinkError, match="closed"):
        await sink.write({"v": 0.0}, step=0)
    await sink.aclose()
    # the store was closed (its lock released): a sink appends to it
    async with Sink(snapsink.NpyDirectory(run, mode="a"), writer="thread") as again:
        await again.write({"v": 1.0}, step=1)
    assert _stored(run) == ([1.0] if opens else [9.0, 1.0])


async def test_an_open_cancelled_while_the_writer_thread_opens_the_store_closes_it(
    tmp_path: Path,
) -> None:
    """asyncio's task.cancel() passes the shield around the writer thread's
    open: the sink is closed, and so is its store once that open ends, so
    another sink may write it. (The store stayed open and locked until the
    process ended, its thread waiting forever.)"""
    import asyncio

    from process_stores import OpenGatedNpy

    gate = str(tmp_path / "gate")
    run = tmp_path / "run"
    sink = Sink(OpenGatedNpy(str(run), gate), writer="thread")
    opening = asyncio.ensure_future(sink.__aenter__())
    try:
        await anyio.to_thread.run_sync(_wait_for_file, gate + ".entered")
        opening.cancel()
    finally:
        await anyio.Path(gate).touch()
    with pytest.raises(asyncio.CancelledError):
        await opening
    with pytest.raises(ClosedSinkError, match="closed"):
        await sink.write({"v": 0.0}, step=0)
    async with Sink(snapsink.NpyDirectory(run, mode="a"), writer="thread") as again:
        await again.write({"v": 1.0}, step=0)
    assert _stored(run) == [1.0]
