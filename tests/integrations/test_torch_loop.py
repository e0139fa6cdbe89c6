"""A PyTorch MD loop (an async driver) recorded through a Recorder.

Tensors are updated in place after each record: the stored frames must hold the
values at the time of the call, equal to clones taken then. The CUDA variant
(marked ``gpu``) sends device tensors through the sink's CUDA copy stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink

torch = pytest.importorskip("torch")

N = 64
N_STEPS = 60
DT = 0.05


def cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401  (the sink stages device arrays with CuPy)
    except ImportError:
        return False
    return True


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not cuda_ready(), reason="needs CUDA and CuPy"),
        ],
    ),
]


def spring_forces(x: Any, x0: Any, k: float) -> tuple[Any, Any]:
    d = x - x0
    return -k * d, 0.5 * k * (d * d).sum()


def hot(state: dict[str, Any]) -> bool:
    return bool(state["kinetic"] > 0.3)


@pytest.mark.parametrize("device", DEVICES)
async def test_torch_md_loop(tmp_path: Path, device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(N, 3, generator=gen, dtype=torch.float64).to(device)
    x = x0 + 0.1 * torch.randn(N, 3, generator=gen, dtype=torch.float64).to(device)
    v = torch.zeros(N, 3, dtype=torch.float64, device=device)
    f, pot = spring_forces(x, x0, k=4.0)
    path = tmp_path / "torch.zarr"

    expected: dict[int, dict[str, np.ndarray[Any, Any]]] = {}
    converged = snapsink.HostMemory()

    def state() -> dict[str, Any]:
        kin = 0.5 * (v * v).sum()
        return {"positions": x, "velocities": v, "potential": pot, "kinetic": kin}

    async with snapsink.Recorder(
        thermo=snapsink.Route(
            snapsink.ZarrStore(path, group="thermo"), fields=["potential", "kinetic"]
        ),
        frames=snapsink.Route(
            snapsink.ZarrStore(path, group="frames"),
            fields=["positions", "velocities"],
            schedule=snapsink.every(10),
        ),
        first_slow=snapsink.Route(
            converged,
            fields=["positions"],
            # first multiple of 5 steps where the kinetic energy exceeds 0.3
            schedule=snapsink.every(5) & snapsink.when(hot) & snapsink.once(),
        ),
    ) as rec:
        for step in range(N_STEPS):
            s = state()
            expected[step] = {k: t.detach().cpu().numpy().copy() for k, t in s.items()}
            await rec.record(s, step=step, time=step * DT)
            # velocity Verlet, in place: the recorder must have captured already
            v.add_(f, alpha=0.5 * DT)
            x.add_(v, alpha=DT)
            f, pot = spring_forces(x, x0, k=4.0)
            v.add_(f, alpha=0.5 * DT)

    th = snapsink.open(path, group="thermo")
    np.testing.assert_array_equal(th.steps, np.arange(N_STEPS))
    np.testing.assert_array_equal(th["potential"][:], [expected[k]["potential"] for k in th.steps])
    np.testing.assert_array_equal(th["kinetic"][:], [expected[k]["kinetic"] for k in th.steps])
    fr = snapsink.open(path, group="frames")
    np.testing.assert_array_equal(fr.steps, np.arange(0, N_STEPS, 10))
    for i, k in enumerate(fr.steps):
        np.testing.assert_array_equal(fr["positions"][i], expected[int(k)]["positions"])
        np.testing.assert_array_equal(fr["velocities"][i], expected[int(k)]["velocities"])
    first = next(k for k in range(0, N_STEPS, 5) if expected[k]["kinetic"] > 0.3)
    c = converged.trajectory()
    np.testing.assert_array_equal(c.steps, [first])
    np.testing.assert_array_equal(c["positions"][0], expected[first]["positions"])


@pytest.mark.parametrize("copy", [True, False])
def test_cpu_tensors_that_require_grad_are_recorded(copy: bool) -> None:
    """Parameters and results of a graph store their values, as on the CUDA path
    (torch itself refuses ``numpy()`` on a tensor that requires grad)."""
    model = torch.nn.Linear(3, 2).double()
    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3)
    mem = snapsink.HostMemory()
    expected = []
    with snapsink.SyncSink(mem, writer="thread") as sink:
        for step in range(3):
            loss = model(x).square().sum()
            assert model.weight.requires_grad and loss.requires_grad
            sink.write({"weight": model.weight, "loss": loss}, step=step, copy=copy)
            sink.flush()  # copy=False lends the parameter: stored before it changes
            expected.append((model.weight.detach().numpy().copy(), loss.item()))
            loss.backward()
            with torch.no_grad():
                model.weight -= 0.1 * model.weight.grad
            model.zero_grad()
    traj = mem.trajectory()
    for i, (weight, loss_value) in enumerate(expected):
        np.testing.assert_array_equal(traj["weight"][i], weight)
        assert traj["loss"][i] == loss_value
    assert not np.array_equal(traj["weight"][0], traj["weight"][2])  # it trained
