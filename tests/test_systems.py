"""Per-system capture in a batch: Route(select=converged(mask, sizes=...)).

A ragged batch of 9 systems relaxes; each converges at its own step and stays
converged. Each system must be stored exactly once, at its convergence step,
with its own rows of the per-atom fields, its per-system values, its index and
its step, bit for bit, on the host and on the CPU emulation of the device path
(and on CuPy / PyTorch CUDA when a GPU is there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import ConfigError, HostMemory, NpyDirectory, SchemaError
from snapsink._staging.emulation import EmulatedDeviceArray

SIZES = np.array([3, 5, 1, 7, 2, 4, 6, 8, 2])
CONVERGES = np.array([4, 10, 2, 10, 7, 15, 1, 12, 6])  # step at which fmax reaches 0
N_STEPS = 20
B, N = len(SIZES), int(SIZES.sum())
START = np.concatenate(([0], np.cumsum(SIZES)))


def host_state(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "positions": rng.normal(size=(N, 3)),  # a new value every step
        "forces": rng.normal(size=(N, 3)).astype(np.float32),
        "energy": rng.normal(size=B),
        "fmax": np.maximum(CONVERGES - step, 0).astype(np.float64),
        "natoms": SIZES.copy(),
        "temperature": float(300 + step),
    }


def _emulated(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: EmulatedDeviceArray.from_host(np.asarray(v)) if isinstance(v, np.ndarray) else v
        for k, v in state.items()
    }


def _mask(s: dict[str, Any]) -> Any:
    fmax = s["fmax"]
    if isinstance(fmax, EmulatedDeviceArray):  # a "kernel" on the device
        out = EmulatedDeviceArray.empty(fmax.shape, np.bool_)
        out.host[...] = fmax.get() <= 0
        return out
    return fmax <= 0


def _check(traj: snapsink.Trajectory) -> None:
    """Every system once, at its convergence step, bit-exact."""
    assert traj.steps.tolist() == sorted(set(CONVERGES.tolist()))
    ids = np.concatenate([traj.frame(i)["system"] for i in range(len(traj))])
    assert sorted(ids.tolist()) == list(range(B))  # each once
    systems = snapsink.by_system(traj)
    assert sorted(systems) == list(range(B))
    for sid, rec in systems.items():
        step = int(CONVERGES[sid])
        want = host_state(step)
        rows = slice(START[sid], START[sid + 1])
        assert rec["step"] == step
        assert rec["natoms"] == SIZES[sid]
        np.testing.assert_array_equal(rec["positions"], want["positions"][rows])
        np.testing.assert_array_equal(rec["forces"], want["forces"][rows])
        assert rec["forces"].dtype == np.float32
        assert rec["energy"] == want["energy"][sid]
        assert rec["temperature"] == want["temperature"]


def _record(make_state: Callable[[int], dict[str, Any]], store: Any, **route: Any) -> None:
    with snapsink.SyncRecorder(
        relaxed=snapsink.Route(
            store,
            fields=["positions", "forces", "energy", "temperature"],
            select=snapsink.converged(_mask, sizes="natoms"),
            **route,
        )
    ) as rec:
        for step in range(N_STEPS):
            rec.record(make_state(step), step=step)


@pytest.mark.parametrize("where", ["host", "emulation"])
def test_each_system_is_stored_once_at_its_convergence_step(where: str) -> None:
    store = HostMemory()
    _record(host_state if where == "host" else lambda k: _emulated(host_state(k)), store)
    traj = store.trajectory()
    _check(traj)
    # the frame of step 10 holds systems 1 and 3 (batch order), their rows only
    i = traj.steps.tolist().index(10)
    frame = traj.frame(i)
    assert frame["system"].tolist() == [1, 3]
    assert frame["natoms"].tolist() == [5, 7]
    assert frame["positions"].shape == (12, 3)


@pytest.mark.parametrize("kind", ["npy", "zarr"])
def test_selected_systems_read_back_from_disk(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("run" if kind == "npy" else "run.zarr")
    store = NpyDirectory(path) if kind == "npy" else snapsink.ZarrStore(path)
    _record(host_state, store)
    _check(snapsink.open(path))


async def test_async_recorder_and_a_step_schedule() -> None:
    """every(3): systems are looked at on steps 0, 3, 6, ... and stored at the
    first looked-at step where they have converged."""
    store = HostMemory()
    async with snapsink.Recorder(
        relaxed=snapsink.Route(
            store,
            fields=["positions", "energy"],
            schedule=snapsink.every(3),
            select=snapsink.converged(_mask, sizes=SIZES.tolist()),
        )
    ) as rec:
        for step in range(N_STEPS):
            await rec.record(_emulated(host_state(step)), step=step)
    systems = snapsink.by_system(store.trajectory())
    assert sorted(systems) == list(range(B))
    for sid, r in systems.items():
        seen = -(-int(CONVERGES[sid]) // 3) * 3  # the first multiple of 3 at or after
        assert r["step"] == seen
        np.testing.assert_array_equal(
            r["positions"], host_state(seen)["positions"][START[sid] : START[sid + 1]]
        )


def test_once_false_stores_a_system_at_every_step_its_mask_holds() -> None:
    store = HostMemory()
    with snapsink.SyncRecorder(
        low=snapsink.Route(
            store,
            fields=["energy"],
            select=snapsink.converged(_mask, sizes="natoms", once=False),
        )
    ) as rec:
        for step in range(N_STEPS):
            rec.record(host_state(step), step=step)
    traj = store.trajectory()
    for i, step in enumerate(traj.steps.tolist()):
        frame = traj.frame(i)
        assert frame["system"].tolist() == np.flatnonzero(CONVERGES <= step).tolist()
        np.testing.assert_array_equal(
            frame["energy"], host_state(step)["energy"][CONVERGES <= step]
        )


def test_a_declared_schema_opens_the_route_at_once(tmp_path: Path) -> None:
    schema = {
        "positions": snapsink.Field("float64", (None, 3)),
        "energy": snapsink.Field("float64", (None,)),
        "system": snapsink.Field("int64", (None,)),
        "natoms": snapsink.Field("int64", (None,)),
    }
    store = NpyDirectory(tmp_path / "run")
    with snapsink.SyncRecorder(
        r=snapsink.Route(
            store,
            fields=["positions", "energy"],
            schema=schema,
            select=snapsink.converged(_mask, sizes="natoms"),
        )
    ) as rec:
        assert rec.store("r") is store  # opened before the first record
        for step in range(N_STEPS):
            rec.record(host_state(step), step=step)
    systems = snapsink.by_system(snapsink.open(tmp_path / "run"))
    assert {s: r["step"] for s, r in systems.items()} == dict(enumerate(CONVERGES.tolist()))


def test_bad_selections_say_what_was_expected() -> None:
    with pytest.raises(ConfigError, match="converged\\(mask\\): expected a function"):
        snapsink.converged(np.ones(3, bool), sizes="natoms")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="converged\\(sizes\\)"):
        snapsink.converged(_mask, sizes=[1.5, 2])
    with pytest.raises(ConfigError, match=r"select: expected snapsink\.converged"):
        snapsink.Route(HostMemory(), select=_mask)  # type: ignore[arg-type]

    store = HostMemory()
    rec = snapsink.SyncRecorder(
        r=snapsink.Route(
            store, fields=["energy"], select=snapsink.converged(lambda s: s["fmax"], sizes="natoms")
        )
    )
    with rec:
        with pytest.raises(SchemaError, match=r"converged\(mask\): expected \(9,\) booleans"):
            rec.record(host_state(0), step=0)
        # the recorder stays usable: a good record goes through
    assert len(store.trajectory()) == 0

    def wrong_count(s: dict[str, Any]) -> Any:
        return np.ones(4, bool)

    with (
        snapsink.SyncRecorder(
            r=snapsink.Route(
                HostMemory(),
                fields=["energy"],
                select=snapsink.converged(wrong_count, sizes="natoms"),
            )
        ) as rec2,
        pytest.raises(SchemaError, match=r"expected \(9,\) booleans.*shape \(4,\)"),
    ):
        rec2.record(host_state(0), step=0)


def test_a_state_field_named_system_is_refused() -> None:
    state = host_state(0) | {"system": np.arange(B)}
    with (
        snapsink.SyncRecorder(
            r=snapsink.Route(
                HostMemory(),
                fields=["energy", "system"],
                select=snapsink.converged(_mask, sizes="natoms"),
            )
        ) as rec,
        pytest.raises(SchemaError, match="field 'system' is added by converged"),
    ):
        rec.record(state, step=0)


def test_by_system_needs_a_selected_trajectory() -> None:
    store = HostMemory()
    with snapsink.SyncSink(store) as sink:
        sink.write({"x": np.zeros(3)}, step=0)
    with pytest.raises(SchemaError, match="by_system: expected the fields 'system' and 'natoms'"):
        snapsink.by_system(store.trajectory())


def test_once_does_not_fire_again_after_a_resume(tmp_path: Path) -> None:
    """once(): its state follows from the stored frames, so a recording that
    appends (mode="a") to a store with frames does not store the step again."""
    path = tmp_path / "run"
    for run, steps in enumerate((range(0, 5), range(5, 10))):
        store = NpyDirectory(path, mode="x" if run == 0 else "a")
        with snapsink.SyncRecorder(
            first=snapsink.Route(store, fields=["temperature"], schedule=snapsink.once())
        ) as rec:
            for step in steps:
                rec.record(host_state(step), step=step)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [0]
    assert traj["temperature"][:].tolist() == [300.0]


async def test_once_after_a_resume_async(tmp_path: Path) -> None:
    path = tmp_path / "run"
    for run, steps in enumerate((range(0, 3), range(3, 6))):
        store = NpyDirectory(path, mode="x" if run == 0 else "a")
        async with snapsink.Recorder(
            first=snapsink.Route(store, fields=["temperature"], schedule=snapsink.once())
        ) as rec:
            for step in steps:
                await rec.record(host_state(step), step=step)
    assert snapsink.open(path).steps.tolist() == [0]


def _gpu_state(xp: Any, to_device: Callable[[np.ndarray], Any]) -> Callable[[int], dict[str, Any]]:
    def make(step: int) -> dict[str, Any]:
        return {
            k: to_device(v) if isinstance(v, np.ndarray) else v for k, v in host_state(step).items()
        }

    return make


@pytest.mark.gpu
@pytest.mark.parametrize("framework", ["cupy", "torch"])
def test_device_gather_on_the_gpu(framework: str, tmp_path: Path) -> None:
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("no CUDA driver")
    if framework == "cupy":
        to_device: Callable[[np.ndarray], Any] = cp.asarray
    else:
        torch = pytest.importorskip("torch")

        def to_device(a: np.ndarray) -> Any:
            return torch.as_tensor(a, device="cuda")

    store = NpyDirectory(tmp_path / "run")
    _record(_gpu_state(cp, to_device), store)
    _check(snapsink.open(tmp_path / "run"))


def _zero_batch(mask: list[bool], **converged: Any) -> tuple[HostMemory, snapsink.SyncRecorder]:
    """A batch of 2 systems, the first empty: as many atoms (2) as systems."""
    store = HostMemory()
    state = {
        "pos": np.array([[1.0, 1, 1], [2.0, 2, 2]]),  # system 1's atoms
        "energy": np.array([10.0, 20.0]),
        "natoms": np.array([0, 2]),
    }
    rec = snapsink.SyncRecorder(
        r=snapsink.Route(
            store,
            fields=["pos", "energy"],
            select=snapsink.converged(lambda s: np.array(mask), sizes="natoms", **converged),
        )
    )
    with rec:
        rec.record(state, step=0)
    return store, rec


def test_as_many_atoms_as_systems_needs_the_per_system_fields_named() -> None:
    with pytest.raises(SchemaError, match=r"field 'pos': its first dimension, 2, is both") as info:
        _zero_batch([False, True])
    assert "per_system=[...]" in str(info.value)

    store, _ = _zero_batch([False, True], per_system=["energy"])
    frame = store.trajectory().frame(0)
    np.testing.assert_array_equal(frame["energy"], [20.0])
    np.testing.assert_array_equal(frame["pos"], [[1.0, 1, 1], [2.0, 2, 2]])
    np.testing.assert_array_equal(frame["system"], [1])

    # both systems: the stored row counts cannot tell either, by_system is told
    store, _ = _zero_batch([True, True], per_system=["energy"])
    with pytest.raises(SchemaError, match=r"by_system: field 'pos'.*per_system=\[...\]"):
        snapsink.by_system(store.trajectory())
    systems = snapsink.by_system(store.trajectory(), per_system=["energy"])
    assert systems[0]["energy"] == 10.0 and systems[0]["pos"].shape == (0, 3)
    assert systems[1]["energy"] == 20.0
    np.testing.assert_array_equal(systems[1]["pos"], [[1.0, 1, 1], [2.0, 2, 2]])


def test_per_system_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"converged\(per_system\): expected None or a list"):
        snapsink.converged(_mask, sizes="natoms", per_system="energy")
    with pytest.raises(SchemaError, match=r"expected field\(s\) 'fmax' among the route's fields"):
        _zero_batch([True, True], per_system=["fmax"])
    with (
        snapsink.SyncRecorder(
            r=snapsink.Route(
                HostMemory(),
                fields=["fmax"],
                select=snapsink.converged(_mask, sizes="natoms", per_system=["fmax"]),
            )
        ) as rec,
        pytest.raises(SchemaError, match=r"field 'fmax' .*: expected a first dimension of 9"),
    ):
        rec.record({"fmax": np.zeros(N), "natoms": SIZES}, step=0)
    # one-atom systems: per atom or per system, the same rows
    store = HostMemory()
    with snapsink.SyncRecorder(
        r=snapsink.Route(
            store, select=snapsink.converged(lambda s: np.array([False, True]), sizes=[1, 1])
        )
    ) as rec:
        rec.record({"e": np.array([1.0, 2.0])}, step=0)
    np.testing.assert_array_equal(store.trajectory()["e"][0], [2.0])


def test_a_refused_frame_leaves_its_systems_to_a_retry() -> None:
    store = HostMemory()
    sizes = np.array([1, 2])

    def state(done: list[bool], width: int = 3) -> dict[str, Any]:
        return {"pos": np.zeros((3, width)), "natoms": sizes, "done": np.array(done)}

    with snapsink.SyncRecorder(
        r=snapsink.Route(
            store, fields=["pos"], select=snapsink.converged(lambda s: s["done"], sizes="natoms")
        )
    ) as rec:
        assert rec.record(state([True, False]), step=0) == ("r",)
        with pytest.raises(SchemaError, match="'pos'"):
            rec.record(state([True, True], width=2), step=1)  # the sink refuses it
        assert rec.record(state([True, True]), step=1) == ("r",)  # system 1, not 0 again
    traj = store.trajectory()
    np.testing.assert_array_equal(traj.steps, [0, 1])
    assert [traj.frame(i)["system"].tolist() for i in range(2)] == [[0], [1]]


def test_with_per_system_named_other_fields_of_the_batch_size_are_whole() -> None:
    """per_system names the per-system fields: another field of first
    dimension B (a batch-wide (3,) cell with 3 systems) is stored whole."""
    store = HostMemory()
    state = {
        "pos": np.arange(18.0).reshape(6, 3),
        "energy": np.array([10.0, 20.0, 30.0]),
        "cell": np.array([7.0, 8.0, 9.0]),
        "natoms": np.array([2, 3, 1]),
    }
    with snapsink.SyncRecorder(
        r=snapsink.Route(
            store,
            fields=["pos", "energy", "cell"],
            select=snapsink.converged(
                lambda s: np.array([False, True, False]), sizes="natoms", per_system=["energy"]
            ),
        )
    ) as rec:
        rec.record(state, step=0)
    frame = store.trajectory().frame(0)
    np.testing.assert_array_equal(frame["energy"], [20.0])
    np.testing.assert_array_equal(frame["cell"], [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(frame["pos"], np.arange(6.0, 15.0).reshape(3, 3))


def _batch_route(store: HostMemory, fields: list[str], **converged: Any) -> snapsink.SyncRecorder:
    """A route over states that say which systems are done (``done``) and their sizes."""
    return snapsink.SyncRecorder(
        r=snapsink.Route(
            store,
            fields=fields,
            select=snapsink.converged(lambda s: s["done"], sizes="natoms", **converged),
        )
    )


def test_a_per_atom_field_must_keep_the_rows_its_sizes_count() -> None:
    """Sizes that no longer count the per-atom rows (an atom was added) are
    refused, not stored whole into the ragged field, which would hand a
    system another system's atoms; the recorder stays usable."""
    store = HostMemory()
    sizes, done = np.array([2, 3]), np.array([False, True])
    with _batch_route(store, ["positions", "energy"]) as rec:
        rec.record(
            {
                "positions": np.zeros((5, 3)),
                "energy": np.zeros(2),
                "natoms": sizes,
                "done": np.array([False, False]),
            },
            step=0,
        )
        positions = np.arange(18.0).reshape(6, 3)
        with pytest.raises(
            SchemaError,
            match=r"route 'r': field 'positions' is per atom: expected 5 rows.*"
            r"N = 5 atoms, B = 2 systems\), got shape \(6, 3\)",
        ):
            rec.record(
                {"positions": positions, "energy": np.ones(2), "natoms": sizes, "done": done},
                step=1,
            )
        with pytest.raises(
            SchemaError, match=r"field 'energy' is per system: expected 2 rows.*got shape \(3,\)"
        ):
            rec.record(
                {"positions": positions[:5], "energy": np.ones(3), "natoms": sizes, "done": done},
                step=1,
            )
        assert len(store.trajectory()) == 0  # nothing written
        rec.record(
            {
                "positions": positions[:5],
                "energy": np.array([1.0, 2.0]),
                "natoms": sizes,
                "done": done,
            },
            step=1,
        )
    systems = snapsink.by_system(store.trajectory())
    assert list(systems) == [1]
    np.testing.assert_array_equal(systems[1]["positions"], positions[2:5])
    assert systems[1]["energy"] == 2.0


def test_a_field_keeps_the_role_it_had_when_the_schema_was_made() -> None:
    cell = np.arange(9.0).reshape(3, 3)
    # a batch-wide (3, 3) cell in a first state of 3 atoms is taken per atom:
    # with 4 atoms later, it is refused rather than stored whole
    with _batch_route(HostMemory(), ["positions", "cell"]) as rec:
        rec.record(
            {
                "positions": np.zeros((3, 3)),
                "cell": cell,
                "natoms": np.array([1, 2]),
                "done": np.array([False, False]),
            },
            step=0,
        )
        with pytest.raises(
            SchemaError, match=r"field 'cell' is per atom: expected 4 rows.*got shape \(3, 3\)"
        ):
            rec.record(
                {
                    "positions": np.ones((4, 3)),
                    "cell": cell,
                    "natoms": np.array([2, 2]),
                    "done": np.array([True, False]),
                },
                step=1,
            )
    # the other way round: whole in the first state, it is never cut, even
    # when the batch's atom count comes to match its first dimension
    store = HostMemory()
    with _batch_route(store, ["positions", "cell"]) as rec:
        rec.record(
            {
                "positions": np.zeros((4, 3)),
                "cell": cell,
                "natoms": np.array([2, 2]),
                "done": np.array([False, False]),
            },
            step=0,
        )
        rec.record(
            {
                "positions": np.arange(9.0).reshape(3, 3),
                "cell": cell,
                "natoms": np.array([1, 2]),
                "done": np.array([False, True]),
            },
            step=1,
        )
    traj = store.trajectory()
    assert traj.fields["cell"] == snapsink.Field("float64", (3, 3))
    systems = snapsink.by_system(traj)
    assert list(systems) == [1]
    np.testing.assert_array_equal(systems[1]["cell"], cell)
    np.testing.assert_array_equal(systems[1]["positions"], [[3.0, 4, 5], [6.0, 7, 8]])


def test_known_roles_cut_a_later_batch_of_as_many_atoms_as_systems() -> None:
    """Roles told by the first state (5 atoms, 2 systems) still hold at a step
    where N == B (system 0 lost its atoms): no ambiguity, no refusal. A
    one-atom-each first state leaves them open until a step tells."""
    store = HostMemory()
    with _batch_route(store, ["pos", "energy"]) as rec:
        rec.record(
            {
                "pos": np.zeros((5, 3)),
                "energy": np.zeros(2),
                "natoms": np.array([2, 3]),
                "done": np.array([False, False]),
            },
            step=0,
        )
        rec.record(
            {
                "pos": np.array([[1.0, 1, 1], [2.0, 2, 2]]),
                "energy": np.array([10.0, 20.0]),
                "natoms": np.array([0, 2]),
                "done": np.array([False, True]),
            },
            step=1,
        )
    systems = snapsink.by_system(store.trajectory())
    assert systems[1]["energy"] == 20.0
    np.testing.assert_array_equal(systems[1]["pos"], [[1.0, 1, 1], [2.0, 2, 2]])

    # one atom each: pos and energy may be either until step 1 tells (4 atoms,
    # 3 systems); then a per-system energy of 4 rows is refused, not cut as atoms
    store = HostMemory()
    with _batch_route(store, ["pos", "energy"]) as rec:
        for step, sizes, energy in ((0, [1, 1, 1], [1.0, 2, 3]), (1, [1, 1, 2], [4.0, 5, 6])):
            rec.record(
                {
                    "pos": np.arange(3.0 * sum(sizes)).reshape(-1, 3),
                    "energy": np.array(energy),
                    "natoms": np.array(sizes),
                    "done": np.arange(3) == step,
                },
                step=step,
            )
        state = {
            "pos": np.arange(12.0).reshape(4, 3),
            "energy": np.arange(4.0),
            "natoms": np.array([1, 1, 2]),
            "done": np.array([False, False, True]),
        }
        with pytest.raises(
            SchemaError, match=r"field 'energy' is per system: expected 3 rows.*got shape \(4,\)"
        ):
            rec.record(state, step=2)
        rec.record(state | {"energy": np.array([7.0, 8, 9])}, step=2)
    systems = snapsink.by_system(store.trajectory())
    assert [float(systems[s]["energy"]) for s in range(3)] == [1.0, 5.0, 9.0]
    assert {np.shape(systems[s]["energy"]) for s in range(3)} == {()}
    np.testing.assert_array_equal(systems[0]["pos"], [[0.0, 1, 2]])
    np.testing.assert_array_equal(systems[1]["pos"], [[3.0, 4, 5]])
    np.testing.assert_array_equal(systems[2]["pos"], [[6.0, 7, 8], [9.0, 10, 11]])


def test_by_system_of_one_atom_systems_is_told_the_per_system_fields() -> None:
    """One atom each in every frame: both cuts took the same rows, but a
    per-system value reads back as () and a per-atom one as (1, 3); the row
    counts cannot tell which, so by_system is told rather than guessing."""
    store = HostMemory()
    with _batch_route(store, ["positions", "energy"]) as rec:
        rec.record(
            {
                "positions": np.array([[1.0, 2, 3], [4.0, 5, 6]]),
                "energy": np.array([0.5, 1.5]),
                "natoms": np.array([1, 1]),
                "done": np.array([True, True]),
            },
            step=0,
        )
    traj = store.trajectory()
    with pytest.raises(SchemaError, match=r"by_system: field 'positions'.*per_system=\[...\]"):
        snapsink.by_system(traj)
    systems = snapsink.by_system(traj, per_system=["energy"])
    assert [np.shape(systems[s]["energy"]) for s in (0, 1)] == [(), ()]
    assert [float(systems[s]["energy"]) for s in (0, 1)] == [0.5, 1.5]
    np.testing.assert_array_equal(systems[1]["positions"], [[4.0, 5, 6]])


def test_by_system_refuses_rows_that_do_not_follow_natoms() -> None:
    """A frame whose per-atom rows are not its natoms' sum (written by hand, or
    by a version that stored such frames) cannot be split by system."""
    store = HostMemory()
    ints = snapsink.Field("int64", (None,))
    schema = {
        "positions": snapsink.Field("float64", (None, 3)),
        "energy": snapsink.Field("float64", (None,)),
        "system": ints,
        "natoms": ints,
    }
    with snapsink.SyncSink(store, schema=schema) as sink:
        sink.write(
            {
                "positions": np.zeros((3, 3)),
                "energy": np.zeros(1),
                "system": np.array([0]),
                "natoms": np.array([3]),
            },
            step=0,
        )
        sink.write(
            {
                "positions": np.zeros((6, 3)),
                "energy": np.zeros(1),
                "system": np.array([1]),
                "natoms": np.array([3]),
            },
            step=1,
        )
    traj = store.trajectory()
    with pytest.raises(
        SchemaError, match=r"field 'positions': 6 rows at step 1, .* 1 system\(s\) of \[3\] atoms"
    ):
        snapsink.by_system(traj)
    with pytest.raises(SchemaError, match=r"field 'positions': 6 rows at step 1.*expected 3"):
        snapsink.by_system(traj, per_system=["energy"])
