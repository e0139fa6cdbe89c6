"""A JAX loop (a jitted step, an ordinary Python loop) through a SyncRecorder.

JAX arrays are immutable; the stored frames must equal ``np.asarray`` of the
arrays passed at each step. The GPU variant (marked ``gpu``) runs where JAX
sees a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink

jax = pytest.importorskip("jax")
jnp = jax.numpy

N_STEPS = 40


def gpu_ready() -> bool:
    try:
        jax.devices("gpu")
        import cupy  # noqa: F401  (the sink stages device arrays with CuPy)
    except (RuntimeError, ImportError):
        return False
    return True


BACKENDS = [
    "cpu",
    pytest.param(
        "gpu",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not gpu_ready(), reason="needs a JAX GPU device and CuPy"),
        ],
    ),
]


@jax.jit
def step_fn(u: Any, nu: float) -> tuple[Any, Any]:
    """One explicit step of 1-D periodic diffusion; returns (u, total 'energy')."""
    lap = jnp.roll(u, 1) + jnp.roll(u, -1) - 2.0 * u
    u = u + nu * lap
    return u, jnp.sum(u * u)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jax_loop(tmp_path: Path, backend: str) -> None:
    device = jax.devices(backend)[0]
    u = jax.device_put(jnp.sin(jnp.linspace(0.0, 6.0, 128)) ** 3, device)
    energy = jnp.sum(u * u)
    expected: list[dict[str, np.ndarray[Any, Any]]] = []
    path = tmp_path / "jax_run"
    with snapsink.SyncRecorder(
        u=snapsink.Route(snapsink.NpyDirectory(path), fields=["u"], schedule=4),
        energy=snapsink.Route(snapsink.HostMemory(), fields=["energy"]),
    ) as rec:
        for step in range(N_STEPS):
            state = {"u": u, "energy": energy}
            expected.append({k: np.asarray(a) for k, a in state.items()})
            rec.record(state, step=step, time=0.1 * step)
            u, energy = step_fn(u, 0.2)
        energy_store = rec.store("energy")
    en = energy_store.trajectory()  # after the block: every frame is stored

    traj = snapsink.open(path)
    np.testing.assert_array_equal(traj.steps, np.arange(0, N_STEPS, 4))
    np.testing.assert_array_equal(traj["u"][:], [expected[k]["u"] for k in traj.steps])
    assert traj["u"].dtype == np.float32
    np.testing.assert_array_equal(en["energy"][:], [e["energy"] for e in expected])
    # diffusion loses 'energy' monotonically
    assert np.all(np.diff(en["energy"][:]) <= 0)
