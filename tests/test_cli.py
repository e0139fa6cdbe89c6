"""The ``snapsink`` command: demo, info, convert, bench, and its error handling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import snapsink
from snapsink import Batch, Field, Frame, Schema
from snapsink.cli import main

SCHEMA = Schema(
    {
        "positions": Field("float32", (None, 3)),  # ragged
        "grid": Field("float64", (4, 5)),
        "energy": Field("float64", ()),
        "flags": Field("uint8", (2,)),
    }
)
STEPS = [0, 3, 4, 10, 11, 12, 20]
DROPPED = [1, 2, 5, 6, 7, 13]


def _frames() -> list[Frame]:
    rng = np.random.default_rng(7)
    out = []
    for k, step in enumerate(STEPS):
        fields = {
            "positions": rng.standard_normal((k % 3 + 1, 3)).astype(np.float32),
            "grid": rng.standard_normal((4, 5)),
            "energy": np.float64(-1.5 * k + 0.1),
            "flags": np.array([k, 255 - k], np.uint8),
        }
        if k == 2:
            fields["grid"][0, 0] = np.nan  # bit-exact copies keep NaNs too
        out.append(Frame(step, 0.25 * step + 1e-9, fields))
    return out


STATIC = {"masses": np.array([1.008, 12.011, 15.999]), "ids": np.arange(5, dtype=np.int32)}
ATTRS = {"model": "test", "dt": 0.25, "nested": {"a": [1, 2]}}


def write_store(store: Any, close: bool = True) -> None:
    """Write the reference frames straight through the Store protocol."""

    async def body() -> None:
        async def call(fn: Any, *a: Any, **kw: Any) -> Any:
            out = fn(*a, **kw)
            if hasattr(out, "__await__"):
                out = await out
            return out

        await call(store.open)
        await call(store.prepare, SCHEMA, times=True)
        frames = _frames()
        await call(store.append, Batch(frames[:3], DROPPED[:2]))
        await call(store.append, Batch(frames[3:], DROPPED[2:]))
        await call(store.commit)
        if close:
            await call(store.close)

    anyio.run(body)


@pytest.fixture
def npy_store(tmp_path: Path) -> Path:
    path = tmp_path / "ref-npy"
    write_store(snapsink.NpyDirectory(path, attrs=ATTRS, static=STATIC))
    return path


@pytest.fixture
def zarr_store(tmp_path: Path) -> Path:
    path = tmp_path / "ref.zarr"
    write_store(snapsink.ZarrStore(path, group="a", attrs=ATTRS, static=STATIC))
    write_store(snapsink.ZarrStore(path, mode="a", group="b", attrs=ATTRS, static=STATIC))
    return path


def assert_same(a: snapsink.Trajectory, b: snapsink.Trajectory) -> None:
    assert len(a) == len(b) == len(STEPS)
    assert a.fields == b.fields
    np.testing.assert_array_equal(a.steps, b.steps)
    assert a.times is not None and b.times is not None
    assert a.times.tobytes() == b.times.tobytes()
    np.testing.assert_array_equal(a.dropped_steps, b.dropped_steps)
    assert dict(a.attrs) == dict(b.attrs)
    assert set(a.static) == set(b.static)
    for k in a.static:
        assert a.static[k].dtype == b.static[k].dtype
        assert a.static[k].tobytes() == b.static[k].tobytes()
    for name, f in a.fields.items():
        if f.ragged:
            for x, y in zip(a[name][:], b[name][:], strict=True):
                assert x.dtype == y.dtype and x.shape == y.shape
                assert x.tobytes() == y.tobytes()
        else:
            x, y = a[name][:], b[name][:]
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes()


def assert_reference(t: snapsink.Trajectory) -> None:
    """``t`` holds exactly the reference frames, static arrays, attrs, dropped steps."""
    assert t.steps.tolist() == STEPS
    assert t.dropped_steps.tolist() == DROPPED
    assert dict(t.attrs) == ATTRS
    for k, v in STATIC.items():
        assert t.static[k].tobytes() == v.tobytes()
    for i, fr in enumerate(_frames()):
        got = t.frame(i)
        for name, v in fr.fields.items():
            assert np.asarray(got[name]).tobytes() == np.asarray(v).tobytes()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- info --------------------------------------------------------------------------------
def test_info_npy_matches_the_store(npy_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(npy_store)]) == 0
    out = capsys.readouterr().out
    assert "NpyDirectory" in out
    assert re.search(r"frames\s+: 7\b", out)
    assert "closed cleanly" in out and "NOT closed" not in out
    assert re.search(r"steps\s+: 0 \.\. 20", out)
    assert re.search(r"times\s+: 1e-09 \.\. 5", out)
    assert "dropped    : 6 steps (1-2, 5-7, 13)" in out
    assert "masses float64[3]" in out and "ids int32[5]" in out
    assert re.search(r"positions\s+float32\s+\(rows, 3\)\s+ragged", out)
    assert re.search(r"energy\s+float64\s+\(\)\s+scalar", out)
    assert "model, dt, nested" in out
    m = re.search(r"size\s+: ([\d.]+) (B|KiB|MiB)", out)
    assert m is not None and float(m.group(1)) > 0


def test_info_unclosed_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "open-npy"
    store = snapsink.NpyDirectory(path)
    write_store(store, close=False)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "NOT closed cleanly" in out
    assert re.search(r"frames\s+: 7\b", out)
    store.close()


def test_info_zarr_groups(zarr_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(zarr_store)]) == 0
    out = capsys.readouterr().out
    assert "Zarr v3" in out
    assert "groups     : a, b" in out
    assert "[group a]" in out and "[group b]" in out
    assert out.count("closed cleanly") == 2
    assert main(["info", str(zarr_store), "--group", "b"]) == 0
    out = capsys.readouterr().out
    assert "[group b]" in out and "[group a]" not in out
    assert re.search(r"frames\s+: 7\b", out)
    assert main(["info", str(zarr_store), "--group", "nope"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'a'" in line and "'b'" in line


# -- convert ---------------------------------------------------------------------------
def test_convert_round_trip_bit_exact(
    npy_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    z = tmp_path / "conv.zarr"
    assert main(["convert", str(npy_store), str(z)]) == 0
    out = capsys.readouterr().out
    assert "converted 7 frames" in out and "6 dropped steps" in out
    back = tmp_path / "back-npy"
    assert main(["convert", str(z), str(back)]) == 0
    src = snapsink.open(npy_store)
    assert_same(src, snapsink.open(z))
    assert_same(src, snapsink.open(back))
    assert_reference(snapsink.open(back))


def test_convert_zarr_group_both_ways(
    zarr_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_npy = tmp_path / "b-npy"
    assert main(["convert", str(zarr_store), str(out_npy), "--group", "b"]) == 0
    assert_same(snapsink.open(zarr_store, group="b"), snapsink.open(out_npy))
    out_zarr = tmp_path / "again.zarr"
    assert main(["convert", str(out_npy), str(out_zarr), "--group", "run/frames"]) == 0
    assert_same(snapsink.open(out_npy), snapsink.open(out_zarr, group="run/frames"))
    assert "group='run/frames'" in capsys.readouterr().out


def test_convert_empty_store_keeps_schema_and_dropped(tmp_path: Path) -> None:
    src = tmp_path / "empty-npy"
    store = snapsink.NpyDirectory(src, attrs={"x": 1})
    store.open()
    store.prepare(SCHEMA, times=False)
    store.append(Batch([], [3, 4]))
    store.close()
    dst = tmp_path / "empty.zarr"
    assert main(["convert", str(src), str(dst)]) == 0
    t = snapsink.open(dst)
    assert len(t) == 0 and t.fields == dict(SCHEMA.items())
    assert t.dropped_steps.tolist() == [3, 4] and dict(t.attrs) == {"x": 1}


@pytest.mark.parametrize(
    ("case", "needle"),
    [("missing", "no such file"), ("not-a-store", "not a snapsink store"), ("exists", "exists")],
)
def test_convert_errors_exit_2(
    case: str, needle: str, npy_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = npy_store, tmp_path / "dst.zarr"
    if case == "missing":
        src = tmp_path / "nothing-here"
    elif case == "not-a-store":
        src = tmp_path / "plain"
        src.mkdir()
        (src / "notes.txt").write_text("hello")
    else:
        dst.mkdir()
    assert main(["convert", str(src), str(dst)]) == 2
    assert needle in one_error_line(capsys.readouterr().err)
    if case != "exists":
        assert not dst.exists()


@pytest.mark.parametrize("case", ["missing", "not-a-store", "file"])
def test_info_errors_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x"
    if case == "not-a-store":
        path.mkdir()
    elif case == "file":
        path.write_text("not a store")
    assert main(["info", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("snapsink info: error:") and str(path) in line


# -- demo ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_demo_writes_what_it_reports(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / f"demo-{fmt}"
    argv = ["demo", "--out", str(out_dir), "--frames", "12", "--grid", "32", "--every", "2"]
    assert main([*argv, "--format", fmt, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"frames\s+: (\d+) written \(([\d.,]+) MB\), dropped (\d+), spilled (\d+)", out)
    assert m is not None, out
    assert int(m.group(1)) == 12 and m.group(3) == "0" and m.group(4) == "0"
    assert "eta = " in out and "read back" in out and str(out_dir.resolve()) in out
    t = snapsink.open(out_dir)
    assert len(t) == 12
    assert t.steps.tolist() == list(range(2, 26, 2))
    assert t["field"][:].shape == (12, 32, 32)
    assert t.static["particle_ids"].shape == (1024,)
    # never overwrites
    assert main([*argv, "--format", fmt]) == 2
    assert "exists" in one_error_line(capsys.readouterr().err)


def test_demo_default_out_is_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["demo", "--frames", "3", "--grid", "16", "--device", "cpu"]) == 0
    made = sorted(p.name for p in tmp_path.iterdir())
    assert len(made) == 2 and all(n.startswith("snapsink-demo-") for n in made)
    assert all(len(snapsink.open(tmp_path / n)) == 3 for n in made)
    assert main(["demo", "--frames", "0"]) == 2
    one_error_line(capsys.readouterr().err)


# -- bench -------------------------------------------------------------------------------
def test_bench_runs_the_suite_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "run.py").write_text("def main(argv):\n    print('suite argv', argv)\n    return 0\n")
    monkeypatch.setenv("SNAPSINK_BENCHMARKS", str(fake))
    assert main(["bench", "--quick", "--only", "overlap"]) == 0
    assert "suite argv ['--quick', '--only', 'overlap']" in capsys.readouterr().out


def test_bench_finds_the_repository_suite() -> None:
    from snapsink._cli.bench import find_benchmarks

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run.py").is_file():
        pytest.skip("no benchmarks/run.py in this checkout")
    assert find_benchmarks() == root / "benchmarks"


def test_bench_without_checkout_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import snapsink._cli.bench as bench

    monkeypatch.setenv("SNAPSINK_BENCHMARKS", str(tmp_path / "none"))
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "a" / "b" / "c" / "d" / "bench.py"))
    assert main(["bench", "--quick"]) == 2
    assert "source checkout" in one_error_line(capsys.readouterr().err)


# -- python -m snapsink -------------------------------------------------------------------
def test_python_dash_m(npy_store: Path) -> None:
    env = dict(os.environ)
    src = str(Path(snapsink.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    ok = subprocess.run(
        [sys.executable, "-m", "snapsink", "info", str(npy_store)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"frames\s+: 7\b", ok.stdout)
    bad = subprocess.run(
        [sys.executable, "-m", "snapsink", "info", str(npy_store / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert one_error_line(bad.stderr).startswith("snapsink info: error:")
