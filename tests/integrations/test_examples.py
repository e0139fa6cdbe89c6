"""Every example under docs/examples runs and reports what it recorded.

An example whose simulation package is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

NEEDS = {
    "sync_loop": None,
    "async_driver": None,
    "ase_md": "ase",
    "pde_diffusion": "pde",
    "torch_loop": "torch",
}


def test_every_example_is_listed() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.py")} == set(NEEDS)


def run_example(name: str, out: Path) -> dict[str, Any]:
    module = NEEDS[name]
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"example {name} needs {module}")
    ns = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")
    main = ns["main"]
    if inspect.iscoroutinefunction(main):
        result: dict[str, Any] = anyio.run(main, out)
    else:
        result = main(out)
    return result


def test_sync_loop(tmp_path: Path) -> None:
    r = run_example("sync_loop", tmp_path)
    assert r["thermo_frames"] == 200
    assert r["frame_steps"] == list(range(0, 200, 25))
    assert len(r["relaxed_at"]) == 1
    first, last = r["energy_first_last"]
    assert last < first


def test_async_driver(tmp_path: Path) -> None:
    r = run_example("async_driver", tmp_path)
    assert r["sink_written"] == r["field_frames"] == 50
    assert r["recorded_steps"] == [50, 60, 70, 80, 90]
    assert r["static"] == ["x"]


def test_ase_md(tmp_path: Path) -> None:
    r = run_example("ase_md", tmp_path)
    assert r["thermo_frames"] == 51
    assert r["frame_steps"] == [0, 10, 20, 30, 40, 50]
    assert r["atoms"] == 256
    assert r["energy_drift_eV"] < 0.1  # NVE with a 2 fs step conserves energy


def test_pde_diffusion(tmp_path: Path) -> None:
    r = run_example("pde_diffusion", tmp_path)
    assert r["frames"] == 11
    assert r["times"] == [round(0.1 * k, 6) for k in range(11)]
    first, last = r["std_first_last"]
    assert last < first  # diffusion smooths the field


def test_torch_loop(tmp_path: Path) -> None:
    r = run_example("torch_loop", tmp_path)
    assert r["thermo_frames"] == 100
    assert r["frame_steps"] == [0, 20, 40, 60, 80]
    assert r["relative_energy_drift"] < 0.05


def test_example_runs_as_a_script(tmp_path: Path) -> None:
    """Without OUT_DIR an example writes to a temporary directory and removes it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "sync_loop.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert "'thermo_frames': 200" in out.stdout
    assert list(tmp.iterdir()) == []
