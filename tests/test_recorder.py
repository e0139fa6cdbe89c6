"""Recorder and SyncRecorder: routing steps to sinks by schedule, read back."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from conftest import FailingStore, GatedStore
from snapsink import (
    ClosedSinkError,
    ConfigError,
    DTypeError,
    HostMemory,
    Recorder,
    Route,
    SchemaError,
    StoreExistsError,
    StoreLockedError,
    SyncRecorder,
    SyncSink,
    WriterError,
    ZarrStore,
    every,
    once,
    when,
)

N_ATOMS = 16
NUMBERS = np.arange(1, N_ATOMS + 1, dtype=np.int32)


def toy_md(n_steps: int) -> list[dict[str, Any]]:
    """States of a damped toy 'simulation': energy decays, positions drift."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N_ATOMS, 3))
    v = rng.normal(size=(N_ATOMS, 3))
    states = []
    for _ in range(n_steps):
        x = x + 0.01 * v
        v = 0.97 * v
        energy = float(0.5 * (v**2).sum())
        states.append(
            {
                "positions": x.copy(),
                "velocities": v.copy(),
                "energy": energy,
                "temperature": energy / (1.5 * N_ATOMS),
                "numbers": NUMBERS,
            }
        )
    return states


def converged(state: dict[str, Any]) -> bool:
    return bool(state["energy"] < 5.0)


def md_routes(path: Path) -> dict[str, Route]:
    return {
        "thermo": Route(ZarrStore(path, group="thermo"), fields=["energy", "temperature"]),
        "frames": Route(
            lambda static: ZarrStore(path, group="frames", static=static),
            fields=["positions", "velocities"],
            schedule=every(50),
            static=["numbers"],
        ),
        "converged": Route(
            HostMemory(), fields=["positions", "energy"], schedule=when(converged) & once()
        ),
    }


def check_md(path: Path, states: list[dict[str, Any]], converged_store: HostMemory) -> None:
    n = len(states)
    thermo = snapsink.open(path, group="thermo")
    np.testing.assert_array_equal(thermo.steps, np.arange(n))
    np.testing.assert_allclose(thermo.times, 0.5 * np.arange(n))
    np.testing.assert_array_equal(thermo["energy"][:], [s["energy"] for s in states])
    np.testing.assert_array_equal(thermo["temperature"][:], [s["temperature"] for s in states])
    assert set(thermo.fields) == {"energy", "temperature"}

    frames = snapsink.open(path, group="frames")
    expected_steps = np.arange(0, n, 50)
    np.testing.assert_array_equal(frames.steps, expected_steps)
    np.testing.assert_array_equal(
        frames["positions"][:], np.stack([states[k]["positions"] for k in expected_steps])
    )
    np.testing.assert_array_equal(
        frames["velocities"][:], np.stack([states[k]["velocities"] for k in expected_steps])
    )
    np.testing.assert_array_equal(frames.static["numbers"], NUMBERS)

    first = next(k for k, s in enumerate(states) if converged(s))
    conv = converged_store.trajectory()
    np.testing.assert_array_equal(conv.steps, [first])
    np.testing.assert_array_equal(conv["positions"][0], states[first]["positions"])
    assert conv["energy"][0] == states[first]["energy"]


async def test_async_recorder_routes_by_schedule(tmp_path: Path) -> None:
    path = tmp_path / "md.zarr"
    states = toy_md(160)
    routes = md_routes(path)
    work = copy.deepcopy(states)
    received: list[tuple[str, ...]] = []
    async with Recorder(routes) as rec:
        for k, state in enumerate(work):
            received.append(await rec.record(state, step=k, time=0.5 * k))
            # the recorder captured the frame: overwriting the arrays is safe
            state["positions"][:] = np.nan
            state["velocities"][:] = np.nan
        await rec.flush()
        stats = rec.statistics()
    assert received[0] == ("thermo", "frames")
    assert received[50] == ("thermo", "frames")
    assert received[1] == ("thermo",)
    assert sum("converged" in r for r in received) == 1
    assert stats["thermo"].written == len(states)
    assert stats["frames"].written == 4
    assert stats["converged"].written == 1
    check_md(path, states, routes["converged"].store)


def test_sync_recorder_routes_by_schedule(tmp_path: Path) -> None:
    path = tmp_path / "md.zarr"
    states = toy_md(160)
    routes = md_routes(path)
    with SyncRecorder(**routes) as rec:
        for k, state in enumerate(states):
            rec.record(state, step=k, time=0.5 * k)
        rec.flush()
        # flushed: a reader sees every frame while the recorder is still open
        assert len(snapsink.open(path, group="thermo")) == len(states)
        assert rec.last_step == len(states) - 1
    check_md(path, states, routes["converged"].store)


def test_fields_by_function_and_default_steps() -> None:
    class Particles:
        """A non-mapping state, as an MD engine would hold it."""

        def __init__(self, k: int):
            self.x = np.full((4, 3), float(k))
            self.e = -float(k)

    thermo, frames = HostMemory(), HostMemory()
    with SyncRecorder(
        thermo=Route(thermo, fields=lambda p: {"energy": p.e}),
        frames=Route(frames, fields=lambda p: {"positions": p.x}, schedule=3),
    ) as rec:
        for k in range(10):
            rec.record(Particles(k))  # steps default to 0, 1, 2, ...
    t = thermo.trajectory()
    np.testing.assert_array_equal(t.steps, np.arange(10))
    np.testing.assert_array_equal(t["energy"][:], -np.arange(10.0))
    f = frames.trajectory()
    np.testing.assert_array_equal(f.steps, [0, 3, 6, 9])
    np.testing.assert_array_equal(f["positions"][:, 0, 0], [0.0, 3.0, 6.0, 9.0])


def test_fields_none_takes_every_entry_but_static() -> None:
    with SyncRecorder(
        all=Route(lambda static: HostMemory(static=static), static=["numbers"]),
    ) as rec:
        for k in range(3):
            rec.record({"x": np.arange(3.0) + k, "numbers": NUMBERS, "e": float(k)}, step=10 * k)
        store = rec.store("all")
    traj = store.trajectory()
    assert set(traj.fields) == {"x", "e"}
    np.testing.assert_array_equal(traj.static["numbers"], NUMBERS)
    np.testing.assert_array_equal(traj.steps, [0, 10, 20])
    np.testing.assert_array_equal(traj["x"][2], np.arange(3.0) + 2)


def test_static_by_function_and_at_construction(tmp_path: Path) -> None:
    masses = np.linspace(1.0, 2.0, N_ATOMS)
    npy = tmp_path / "run"
    with SyncRecorder(
        a=Route(
            lambda static: snapsink.NpyDirectory(npy, static=static),
            fields=["positions"],
            static=lambda s: {"numbers": s["numbers"], "masses": masses},
        ),
        b=Route(HostMemory(static={"masses": masses}), fields=["energy"], schedule=once()),
    ) as rec:
        with pytest.raises(ConfigError, match="first record"):
            rec.store("a")
        for k, state in enumerate(toy_md(5)):
            rec.record(state, step=k)
        b = rec.store("b")
    traj = snapsink.open(npy)
    np.testing.assert_array_equal(traj.static["numbers"], NUMBERS)
    np.testing.assert_array_equal(traj.static["masses"], masses)
    assert len(traj) == 5
    assert len(b.trajectory()) == 1
    np.testing.assert_array_equal(b.trajectory().static["masses"], masses)


async def test_lazy_route_opens_inside_a_cancel_scope() -> None:
    # The route with static= opens at the first record, here inside fail_after;
    # its sink belongs to the recorder's task group, so leaving the scope first is fine.
    async with Recorder(
        r=Route(lambda static: HostMemory(static=static), fields=["x"], static=["n"])
    ) as rec:
        with anyio.fail_after(10):
            await rec.record({"x": 1.0, "n": np.arange(2)}, step=0)
        await rec.record({"x": 2.0, "n": np.arange(2)}, step=1)
        store = rec.store("r")
    np.testing.assert_array_equal(store.trajectory()["x"][:], [1.0, 2.0])


async def test_step_errors() -> None:
    mem = HostMemory()
    async with Recorder(r=Route(mem)) as rec:
        await rec.record({"x": 1.0}, step=5)
        with pytest.raises(SchemaError, match="greater than 5"):
            await rec.record({"x": 2.0}, step=5)
        with pytest.raises(DTypeError, match="expected an int"):
            await rec.record({"x": 2.0}, step=6.0)  # type: ignore[arg-type]
        await rec.record({"x": 3.0})  # default: previous + 1
    np.testing.assert_array_equal(mem.trajectory().steps, [5, 6])
    np.testing.assert_array_equal(mem.trajectory()["x"][:], [1.0, 3.0])


def test_missing_field_writes_nothing_and_recorder_stays_usable() -> None:
    a, b = HostMemory(), HostMemory()
    with SyncRecorder(a=Route(a, fields=["x"]), b=Route(b, fields=["y"])) as rec:
        rec.record({"x": 0.0, "y": 0.0}, step=0)
        with pytest.raises(SchemaError, match="'y'") as info:
            rec.record({"x": 1.0}, step=1)
        assert "which has 'x'" in str(info.value)
        with pytest.raises(SchemaError, match="mapping"):
            rec.record(object(), step=2)
        rec.record({"x": 3.0, "y": 3.0}, step=3)
    np.testing.assert_array_equal(a.trajectory().steps, [0, 3])
    np.testing.assert_array_equal(b.trajectory().steps, [0, 3])


def test_selection_function_must_return_a_mapping() -> None:
    with SyncRecorder(r=Route(HostMemory(), fields=lambda s: [1.0])) as rec:  # type: ignore[arg-type,return-value]
        with pytest.raises(SchemaError, match="returned list"):
            rec.record({"x": 1.0})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Route(object()), "Store methods"),
        (lambda: Route(HostMemory(), fields="positions"), "list of names"),
        (lambda: Route(HostMemory(), fields=["x", "x"]), "repeat"),
        (lambda: Route(HostMemory(), fields=["bad name"]), "identifier"),
        (lambda: Route(HostMemory(), schedule=0), "at least 1"),
        (lambda: Route(HostMemory(), schedule="often"), "schedule"),
        (lambda: Route(HostMemory(), static=["n"]), "function static -> store"),
        (lambda: Route(HostMemory(), capacity=0), "capacity"),
        (lambda: Route(HostMemory(), policy="sometimes"), "policy"),
        (lambda: Recorder(), "at least one route"),
        (lambda: Recorder({"a-b": Route(HostMemory())}), "identifier"),
        (lambda: Recorder(a=HostMemory()), "snapsink.Route"),
        (lambda: Recorder({"a": Route(HostMemory())}, a=Route(HostMemory())), "twice"),
    ],
)
def test_bad_configuration(make: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_store_function_must_return_a_store() -> None:
    with SyncRecorder(r=Route(lambda static: 42, static=["n"])) as rec:
        with pytest.raises(ConfigError, match="returned int"):
            rec.record({"n": 1, "x": 1.0})
        with pytest.raises(KeyError, match="no route named"):
            rec.store("nope")


async def test_record_outside_the_block_is_refused() -> None:
    rec = Recorder(r=Route(HostMemory()))
    with pytest.raises(ClosedSinkError, match="not open"):
        await rec.record({"x": 1.0})
    async with rec:
        await rec.record({"x": 1.0})
    with pytest.raises(ClosedSinkError, match="closed"):
        await rec.record({"x": 2.0})
    with pytest.raises(ConfigError, match="already opened"):
        async with rec:
            pass

    srec = SyncRecorder(r=Route(HostMemory()))
    srec.close()
    srec.close()  # idempotent
    with pytest.raises(ClosedSinkError, match="closed"):
        srec.record({"x": 1.0})


async def test_an_existing_store_fails_at_open_and_closes_the_others(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    async with Recorder(t=Route(ZarrStore(path, group="thermo"))) as rec:
        await rec.record({"e": 1.0})
    first = HostMemory()
    with pytest.raises(StoreExistsError, match="mode='w'"):
        async with Recorder(
            ok=Route(first),
            t=Route(ZarrStore(path, group="thermo")),  # mode="x"
        ):
            pytest.fail("unreachable")
    assert len(first.trajectory()) == 0
    with pytest.raises(StoreExistsError):
        SyncRecorder(ok=Route(HostMemory()), t=Route(ZarrStore(path, group="thermo")))


async def test_store_failure_reaches_the_loop_and_close() -> None:
    bad = FailingStore(fail_append_at=1)
    good = HostMemory()
    # the message names the store (its repr)
    with pytest.raises(WriterError, match=r"the store <conftest\.FailingStore .*> failed") as info:
        async with Recorder(good=Route(good), bad=Route(bad, capacity=1)) as rec:
            for k in range(50):
                await rec.record({"x": float(k)}, step=k)
                await rec.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert bad.closed
    # the healthy route kept and committed what it got
    assert len(good.trajectory()) >= 1


async def test_body_exception_is_not_grouped() -> None:
    mem = HostMemory()
    with pytest.raises(KeyError, match="boom"):
        async with Recorder(r=Route(mem)) as rec:
            await rec.record({"x": 1.0})
            raise KeyError("boom")
    assert len(mem.trajectory()) == 1  # accepted frames are still stored


def test_sync_failure_reaches_close() -> None:
    bad = FailingStore(fail_append_at=1)
    rec = SyncRecorder(bad=Route(bad))
    with pytest.raises(WriterError):
        for k in range(50):
            rec.record({"x": float(k)}, step=k)
            rec.flush()
    with pytest.raises(WriterError):
        rec.close()
    assert bad.closed


def test_drop_policy_per_route_is_counted() -> None:

    gated = GatedStore()
    try:
        with SyncRecorder(r=Route(gated, capacity=1, policy="drop_newest")) as rec:
            for k in range(20):
                rec.record({"x": float(k)}, step=k)
            stats = rec.statistics()["r"]
            gated.gate.set()
    finally:
        gated.gate.set()
    assert stats.dropped > 0
    traj = gated.trajectory()
    assert len(traj) + len(traj.dropped_steps) == 20
    assert rec.routes["r"].policy == "drop_newest"


# -- one store per route; errors name their route; flush reaches every route -----------
def test_routes_given_one_store_object_are_refused() -> None:
    mem = HostMemory()
    with pytest.raises(ConfigError, match=r"routes 'a' and 'b'.* same HostMemory"):
        SyncRecorder(a=Route(mem, fields=["x"]), b=Route(mem, fields=["x"], schedule=2))
    # a store function returning another route's store: refused at the first record
    rec = SyncRecorder(a=Route(mem), b=Route(lambda static: mem, static=["n"]))
    with pytest.raises(ConfigError, match="routes 'a' and 'b'"):
        rec.record({"x": 0.0, "n": 1})
    rec.close()
    assert len(mem.trajectory()) == 0  # nothing was written into it twice


def test_host_memory_has_one_sink_at_a_time() -> None:
    mem = HostMemory()
    with SyncSink(mem) as first:
        first.write({"x": 0.0}, step=0)
        with pytest.raises(StoreLockedError, match="another sink"):
            SyncSink(mem)
        with pytest.raises(StoreLockedError) as info:
            SyncRecorder(other=Route(mem))
        assert "snapsink: raised by route 'other'" in info.value.__notes__
    with SyncSink(mem) as again:  # free once the first has closed: it appends
        assert again.last_step == 0
        again.write({"x": 1.0}, step=1)
    np.testing.assert_array_equal(mem.trajectory().steps, [0, 1])
    np.testing.assert_array_equal(mem.trajectory()["x"][:], [0.0, 1.0])


class _CountingCommits(HostMemory):
    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


async def test_flush_flushes_every_route_before_raising() -> None:
    bad1 = FailingStore(fail_append_at=None, fail_commit=True)
    bad2 = FailingStore(fail_append_at=None, fail_commit=True)
    good = _CountingCommits()
    routes = {"bad1": Route(bad1), "good": Route(good), "bad2": Route(bad2)}
    with pytest.raises(WriterError) as info:
        async with Recorder(routes) as rec:
            await rec.record({"x": 1.0}, step=0)
            with pytest.raises(WriterError) as flushed:
                await rec.flush()
            assert good.commits == 1  # the route after the failing one was flushed
            notes = flushed.value.__notes__
            assert notes[0] == "snapsink: raised by route 'bad1'"
            assert any(n.startswith("snapsink: flushing route 'bad2' also failed") for n in notes)
    assert isinstance(info.value.__cause__, OSError)

    sgood = _CountingCommits()
    srec = SyncRecorder(
        bad=Route(FailingStore(fail_append_at=None, fail_commit=True)), good=Route(sgood)
    )
    srec.record({"x": 1.0}, step=0)
    with pytest.raises(WriterError) as sync_flushed:
        srec.flush()
    assert sgood.commits == 1
    assert "snapsink: raised by route 'bad'" in sync_flushed.value.__notes__
    with pytest.raises(WriterError):
        srec.close()


async def test_sink_errors_name_their_route() -> None:
    fast, slow = HostMemory(), HostMemory()
    async with Recorder(fast=Route(fast, fields=["x"]), slow=Route(slow, schedule=2)) as rec:
        await rec.record({"x": np.zeros(3)}, step=1)  # 'fast' only: x is (3,)
        with pytest.raises(SchemaError, match=r"expected shape \(3,\)") as info:
            await rec.record({"x": np.zeros(4)}, step=2)
        assert info.value.__notes__ == ["snapsink: raised by route 'fast'"]
    np.testing.assert_array_equal(fast.trajectory().steps, [1])

    rec2 = SyncRecorder(ok=Route(HostMemory()), bad=Route(FailingStore(fail_append_at=1)))
    rec2.record({"x": 0.0}, step=0)
    with pytest.raises(WriterError) as failed:
        for k in range(1, 50):
            rec2.flush()
            rec2.record({"x": float(k)}, step=k)
    assert "snapsink: raised by route 'bad'" in failed.value.__notes__
    with pytest.raises(WriterError) as closed:
        rec2.close()
    assert "snapsink: raised by route 'bad'" in closed.value.__notes__


async def test_record_cancelled_while_a_lazy_route_opens_leaves_it_open() -> None:
    entered, gate = threading.Event(), threading.Event()
    made: list[HostMemory] = []

    class SlowOpen(HostMemory):
        def open(self) -> Any:
            entered.set()
            gate.wait(10)
            return super().open()

    def make(static: Any) -> HostMemory:
        made.append(SlowOpen(static=static))
        return made[-1]

    async def cancel_while_opening(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(entered.wait, 10)
        scope.cancel()
        gate.set()

    state = {"x": 0.0, "n": np.arange(2)}
    async with Recorder(lz=Route(make, fields=["x"], static=["n"])) as rec:
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_while_opening, scope)
                await rec.record(state, step=0)
        assert scope.cancelled_caught
        assert rec.last_step is None  # cancelled before the step was planned
        assert rec.store("lz") is made[0]  # opened all the same, and once
        assert await rec.record(state, step=0) == ("lz",)
        assert await rec.record({**state, "x": 1.0}, step=1) == ("lz",)
    assert len(made) == 1
    np.testing.assert_array_equal(made[0].trajectory().steps, [0, 1])
    np.testing.assert_array_equal(made[0].trajectory()["x"][:], [0.0, 1.0])


# -- a record takes effect route by route: cancelled, refused, interrupted --------------
async def test_a_cancelled_record_takes_effect_where_captured_and_is_retried() -> None:
    a, gated = HostMemory(), GatedStore()
    try:
        async with Recorder(
            a=Route(a, fields=["x"]), b=Route(gated, fields=["x"], capacity=1)
        ) as rec:
            with anyio.move_on_after(0) as none:  # cancelled before any route captured
                await rec.record({"x": 0.0}, step=0, time=0.0)
            assert none.cancelled_caught and rec.last_step is None
            assert await rec.record({"x": 0.0}, step=0, time=0.0) == ("a", "b")
            await gated.wait_entered()  # b's store holds frame 0 in append
            for k in range(1, 10):  # fill b's channel: a record then waits on b, after a took it
                with anyio.move_on_after(0.05) as some:
                    await rec.record({"x": float(k)}, step=k, time=float(k))
                if some.cancelled_caught:
                    break
            else:
                pytest.fail("b's channel never filled")
            assert rec.last_step == k  # a captured it
            with pytest.raises(SchemaError, match=rf"time at step {k}: expected {float(k)}"):
                await rec.record({"x": float(k)}, step=k, time=k + 0.5)
            gated.gate.set()
            assert await rec.record({"x": float(k)}, step=k, time=float(k)) == ("b",)
            assert await rec.record({"x": -1.0}, time=k + 1.0) == ("a", "b")  # step k + 1
    finally:
        gated.gate.set()
    for store in (a, gated):
        traj = store.trajectory()
        np.testing.assert_array_equal(traj.steps, np.arange(k + 2))
        np.testing.assert_array_equal(traj["x"][:], [*map(float, range(k + 1)), -1.0])
        np.testing.assert_array_equal(traj.times, np.arange(k + 2.0))


class _Interrupting:
    """A field whose capture is interrupted (as by Ctrl-C in a waiting write)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise KeyboardInterrupt


def test_an_interrupted_sync_record_is_retried_for_the_other_routes() -> None:
    a, b = HostMemory(), HostMemory()
    with SyncRecorder(
        a=Route(a, fields=["x"]), b=Route(b, fields=lambda s: {"y": s["y"]}, schedule=once())
    ) as rec:
        with pytest.raises(KeyboardInterrupt):
            rec.record({"x": 0.0, "y": _Interrupting()}, step=0)
        assert rec.last_step == 0  # a has step 0; b does not
        assert rec.record({"x": 9.0, "y": 7.0}, step=0) == ("b",)  # a is skipped
        assert rec.record({"x": 1.0, "y": 8.0}) == ("a",)  # step 1; b's once() is spent
    np.testing.assert_array_equal(a.trajectory().steps, [0, 1])
    np.testing.assert_array_equal(a.trajectory()["x"][:], [0.0, 1.0])
    np.testing.assert_array_equal(b.trajectory().steps, [0])
    np.testing.assert_array_equal(b.trajectory()["y"][:], [7.0])


def test_time_is_checked_at_every_record_before_anything_is_written() -> None:
    mem = HostMemory()
    with SyncRecorder(r=Route(mem, fields=["x"], schedule=2)) as rec:
        rec.record({"x": 0.0}, step=0, time=0.0)
        for bad, error, match in [
            (float("nan"), SchemaError, "expected a finite number"),
            (-1.0, SchemaError, r"expected a time >= 0\.0"),
            ("abc", DTypeError, "expected a float"),
            (None, SchemaError, r"expected a time \(earlier frames had one\)"),
        ]:
            with pytest.raises(error, match=f"time at step 1: {match}"):
                rec.record({"x": 1.0}, step=1, time=bad)  # step 1: no route is due
        assert rec.last_step == 0
        rec.record({"x": 1.0}, step=1, time=5.0)
        with pytest.raises(SchemaError, match=r"expected a time >= 5\.0"):
            rec.record({"x": 2.0}, step=2, time=2.0)
        rec.record({"x": 2.0}, step=2, time=6.0)
    np.testing.assert_array_equal(mem.trajectory().steps, [0, 2])
    np.testing.assert_array_equal(mem.trajectory().times, [0.0, 6.0])


def test_fields_none_leaves_out_the_names_a_static_function_returned() -> None:
    with SyncRecorder(
        r=Route(
            lambda static: HostMemory(static=static),
            static=lambda s: {"numbers": s["numbers"], "masses": np.ones(2)},
        )
    ) as rec:
        for k in range(2):
            rec.record({"x": float(k), "numbers": NUMBERS[:2]})
    traj = rec.store("r").trajectory()
    assert list(traj.fields) == ["x"]
    np.testing.assert_array_equal(traj["x"][:], [0.0, 1.0])
    np.testing.assert_array_equal(traj.static["numbers"], NUMBERS[:2])


def test_errors_planning_a_step_name_their_route() -> None:
    mem = HostMemory()
    with SyncRecorder(
        ok=Route(mem, fields=["e"]),
        relaxed=Route(HostMemory(), fields=["e"], schedule=when(lambda s: s["fmax"] < 0.05)),
        lazy=Route(
            lambda static: HostMemory(static=static), fields=["e"], static=lambda s: {"n": s["n"]}
        ),
    ) as rec:
        for state, route in [
            ({"e": 1.0}, "lazy"),  # its static= function, at the first record
            ({"e": 1.0, "n": 1}, "relaxed"),  # the predicate
        ]:
            with pytest.raises(KeyError) as info:
                rec.record(state, step=0)
            assert info.value.__notes__ == [f"snapsink: raised by route {route!r}"]
        assert rec.last_step is None
    with SyncRecorder(
        ok=Route(mem, fields=["e"]),
        frames=Route(HostMemory(), fields=lambda s: {"p": s["positions"]}, schedule=2),
    ) as rec2:
        with pytest.raises(KeyError) as info:
            rec2.record({"e": 1.0}, step=0)  # the fields= function
        assert info.value.__notes__ == ["snapsink: raised by route 'frames'"]
        rec2.record({"e": 2.0, "positions": np.zeros(3)}, step=0)
    np.testing.assert_array_equal(mem.trajectory()["e"][:], [2.0])  # nothing else written


def _with_frames(steps: range, **kw: Any) -> HostMemory:
    mem = HostMemory(**kw)
    with SyncSink(mem) as sink:
        for k in steps:
            sink.write({"x": float(k)}, step=k, time=float(k))
    return mem


async def test_resumed_routes_continue_after_their_largest_last_step() -> None:
    a, b, fresh = _with_frames(range(3)), _with_frames(range(5)), HostMemory()
    with SyncRecorder(a=Route(a), b=Route(b, schedule=2), fresh=Route(fresh)) as rec:
        assert rec.last_step == 4
        with pytest.raises(SchemaError, match=r"expected a time >= 4\.0"):
            rec.record({"x": 5.0}, time=1.0)
        assert rec.record({"x": 5.0}, time=5.0) == ("a", "fresh")  # step 5
        assert rec.record({"x": 6.0}, time=6.0) == ("a", "b", "fresh")
    np.testing.assert_array_equal(a.trajectory().steps, [0, 1, 2, 5, 6])
    np.testing.assert_array_equal(b.trajectory().steps, [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(fresh.trajectory()["x"][:], [5.0, 6.0])

    # a route opened at the first record resumes then: the step is taken after it
    lazy = _with_frames(range(4), static={"n": np.arange(2)})
    async with Recorder(r=Route(lambda static: lazy, fields=["x"], static=["n"])) as arec:
        assert arec.last_step is None
        assert await arec.record({"x": 4.0, "n": np.arange(2)}, time=4.0) == ("r",)
        assert arec.last_step == 4
    np.testing.assert_array_equal(lazy.trajectory().steps, np.arange(5))


class _ThreadNpy(snapsink.NpyDirectory):
    """A NpyDirectory written by a thread (its own __init__: it does not describe
    itself to a writer process), to keep the test fast."""

    def __init__(self, path: Path, mode: str = "x") -> None:
        super().__init__(path, mode=mode)


def test_a_failed_open_names_the_new_stores_the_routes_before_it_made(tmp_path: Path) -> None:
    with SyncSink(_ThreadNpy(tmp_path / "b")) as sink:
        sink.write({"x": 1.0}, step=0)
    with pytest.raises(StoreExistsError) as info:
        SyncRecorder(
            mem=Route(HostMemory()),
            a=Route(_ThreadNpy(tmp_path / "a")),
            b=Route(_ThreadNpy(tmp_path / "b")),
        )
    notes = info.value.__notes__
    assert "snapsink: raised by route 'b'" in notes
    left = [n for n in notes if "a new store" in n]
    assert len(left) == 1 and left[0].startswith("snapsink: route 'a' had opened")
    assert "mode='w' or mode='a'" in left[0]
    assert len(snapsink.open(tmp_path / "a")) == 0  # closed, empty; b untouched
    assert snapsink.open(tmp_path / "b")["x"][:].tolist() == [1.0]
    with SyncRecorder(
        a=Route(_ThreadNpy(tmp_path / "a", mode="a")), b=Route(_ThreadNpy(tmp_path / "b", "a"))
    ) as rec:
        rec.record({"x": 2.0})
    assert snapsink.open(tmp_path / "a").steps.tolist() == [1]
    assert snapsink.open(tmp_path / "b")["x"][:].tolist() == [1.0, 2.0]


def test_a_record_whose_bookkeeping_was_interrupted_is_completed_by_its_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after every route's sink took the frame, before the recorder noted
    it: the sinks say what was captured, so the retry of the step writes
    nothing twice and once() stays once; a step fully recorded is refused by name."""
    from snapsink._routes import Router

    recorded = Router.recorded
    fired: list[int] = []

    def interrupted_once(self: Router, step: int, *args: Any, **kwargs: Any) -> None:
        if step == 3 and not fired:
            fired.append(step)
            raise KeyboardInterrupt
        recorded(self, step, *args, **kwargs)

    monkeypatch.setattr(Router, "recorded", interrupted_once)
    first, every = HostMemory(), HostMemory()
    with SyncRecorder(
        first=Route(first, schedule=when(lambda s: s["x"] >= 3) & once()), all=Route(every)
    ) as rec:
        for i in range(3):
            rec.record({"x": float(i)}, step=i)
        with pytest.raises(KeyboardInterrupt):
            rec.record({"x": 3.0}, step=3)
        assert rec.last_step == 2  # the recorder did not note it
        assert rec.record({"x": 3.0}, step=3) == ("first", "all")  # both had it: no write
        with pytest.raises(SchemaError, match="3 was recorded already"):
            rec.record({"x": 3.0}, step=3)
        for i in range(4, 6):
            rec.record({"x": float(i)}, step=i)
    assert first.trajectory().steps.tolist() == [3]
    assert every.trajectory().steps.tolist() == [0, 1, 2, 3, 4, 5]
    assert every.trajectory()["x"][:].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


# -- converged(once=True) under a drop policy: a dropped frame stores no system ----------
def _converging(step: int, b: int = 6) -> dict[str, Any]:
    """System k converges at step k and stays converged (all of them from step b)."""
    return {
        "positions": np.full((2 * b, 3), float(step)),
        "mask": np.arange(b) <= step,
        "natoms": np.full(b, 2),
    }


def _check_every_system_stored_once(traj: Any, first: int) -> None:
    """Systems 1..5 were dropped at steps 1..5 and stored at step ``first``."""
    assert traj.steps.tolist() == [0, first]
    assert traj.dropped_steps.tolist() == [1, 2, 3, 4, 5]
    systems = snapsink.by_system(traj)
    assert sorted(systems) == list(range(6))
    assert {k: r["step"] for k, r in systems.items()} == {0: 0, **dict.fromkeys(range(1, 6), first)}
    for r in systems.values():
        np.testing.assert_array_equal(r["positions"], np.full((2, 3), float(r["step"])))


def _dropping_route(store: HostMemory) -> Route:
    return Route(
        store,
        fields=["positions"],
        capacity=1,
        policy="drop_newest",
        select=snapsink.converged(lambda s: s["mask"], sizes="natoms"),
    )


def test_a_system_whose_frame_was_dropped_is_stored_at_a_later_step() -> None:
    """drop_newest: the frames of steps 1..5 find the one slot taken (step 0 is
    being written) and are dropped; their systems are not taken as stored, so
    the first step after the store caught up stores them."""
    gated = GatedStore()
    try:
        with SyncRecorder(r=_dropping_route(gated)) as rec:
            for step in range(6):
                assert rec.record(_converging(step), step=step) == ("r",)
            assert rec.statistics()["r"].dropped == 5
            gated.gate.set()
            rec.flush()
            assert rec.record(_converging(6), step=6) == ("r",)
            assert rec.record(_converging(7), step=7) == ()  # every system stored
    finally:
        gated.gate.set()
    _check_every_system_stored_once(gated.trajectory(), 6)


async def test_a_system_whose_frame_was_dropped_is_stored_later_async() -> None:
    gated = GatedStore()
    try:
        async with Recorder(r=_dropping_route(gated)) as rec:
            for step in range(6):
                assert await rec.record(_converging(step), step=step) == ("r",)
            gated.gate.set()
            await rec.flush()
            assert await rec.record(_converging(6), step=6) == ("r",)
            assert await rec.record(_converging(7), step=7) == ()
    finally:
        gated.gate.set()
    _check_every_system_stored_once(gated.trajectory(), 6)


def test_converged_once_under_drop_oldest_is_refused_naming_the_route() -> None:
    """drop_oldest drops a frame after its write returned: the systems it
    held would be taken as stored and never stored."""
    select = snapsink.converged(lambda s: s["mask"], sizes="natoms")
    with pytest.raises(ConfigError, match=r"route 'relaxed'.*'drop_oldest'.*'block'.*once=False"):
        SyncRecorder(relaxed=Route(HostMemory(), select=select, policy="drop_oldest"))
    # every frame a filter (once=False) stores is its own: drop_oldest is fine there
    mem = HostMemory()
    select = snapsink.converged(lambda s: s["mask"], sizes="natoms", once=False)
    with SyncRecorder(
        r=Route(mem, fields=["positions"], select=select, policy="drop_oldest")
    ) as rec:
        rec.record(_converging(0), step=0)
    assert snapsink.by_system(mem.trajectory())[0]["step"] == 0
