"""The ``snapsink`` command: demo, info, convert, bench, and its error handling."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
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
    got = capsys.readouterr()
    assert got.out == ""  # validated before the first line is printed
    line = one_error_line(got.err)
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


def test_convert_adds_a_group_to_an_existing_zarr_store(
    npy_store: Path, zarr_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to-group: the store gains the group; the groups it had are untouched."""
    before = {g: snapsink.open(zarr_store, group=g) for g in snapsink.groups(zarr_store)}
    steps_before = {g: t.steps.tolist() for g, t in before.items()}
    assert main(["convert", str(npy_store), str(zarr_store), "--to-group", "copied"]) == 0
    assert sorted(snapsink.groups(zarr_store)) == sorted([*before, "copied"])
    assert_same(snapsink.open(npy_store), snapsink.open(zarr_store, group="copied"))
    for g, steps in steps_before.items():
        assert snapsink.open(zarr_store, group=g).steps.tolist() == steps
    capsys.readouterr()
    # the same group again is refused, listing what the store has
    assert main(["convert", str(npy_store), str(zarr_store), "--to-group", "copied"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already has group 'copied'" in line and "'b'" in line
    # an existing npy destination never takes a group
    assert main(["convert", str(zarr_store), str(npy_store), "--group", "b",
                 "--to-group", "x"]) == 2
    assert "not Zarr" in one_error_line(capsys.readouterr().err)


@pytest.fixture
def hdf5_store(tmp_path: Path) -> Path:
    """An HDF5 file with two snapsink groups, told apart by their attrs."""
    pytest.importorskip("h5py")
    path = tmp_path / "ref.h5"
    for mode, g in (("w", "a"), ("a", "b")):
        write_store(snapsink.HDF5Store(path, mode=mode, group=g, attrs={"group": g}, static=STATIC))
    return path


def test_convert_hdf5_group(
    hdf5_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--group names the group of an HDF5 source (it used to be dropped: a
    file of two groups was refused as if no group had been given)."""
    out_npy = tmp_path / "b-npy"
    assert main(["convert", str(hdf5_store), str(out_npy), "--group", "b"]) == 0
    src = snapsink.open(hdf5_store, group="b")
    assert_same(src, snapsink.open(out_npy))
    assert dict(snapsink.open(out_npy).attrs) == {"group": "b"}
    out_zarr = tmp_path / "a.zarr"
    args = ["convert", str(hdf5_store), str(out_zarr), "--group", "a", "--format", "zarr"]
    assert main(args) == 0
    assert dict(snapsink.open(out_zarr, group="a").attrs) == {"group": "a"}
    assert "group='a'" in capsys.readouterr().out


def test_convert_takes_the_format_a_destination_name_says(
    hdf5_store: Path, zarr_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DST ending in .zarr is a Zarr store whatever the source (an HDF5
    source made an NpyDirectory named run.zarr), one ending in .h5 an HDF5 file."""
    out = tmp_path / "from-h5.zarr"
    assert main(["convert", str(hdf5_store), str(out), "--group", "a"]) == 0
    assert "(zarr)" in capsys.readouterr().out
    assert_same(snapsink.open(hdf5_store, group="a"), snapsink.open(out, group="a"))
    again = tmp_path / "again.zarr"  # Zarr to Zarr: a copy
    assert main(["convert", str(zarr_store), str(again), "--group", "b"]) == 0
    assert_same(snapsink.open(zarr_store, group="b"), snapsink.open(again, group="b"))
    assert main(["convert", str(zarr_store), str(tmp_path / "plain"), "--group", "b"]) == 0
    assert (tmp_path / "plain" / "metadata.json").is_file()  # no suffix: the other one
    h5 = tmp_path / "x.h5"  # an HDF5 name: an HDF5 file (it was a directory)
    assert main(["convert", str(zarr_store), str(h5), "--group", "b"]) == 0
    assert h5.is_file() and "(hdf5)" in capsys.readouterr().out
    assert_same(snapsink.open(zarr_store, group="b"), snapsink.open(h5, group="b"))


def test_a_url_is_refused_whole_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line made a Path of s3://bkt/run.zarr and said
    "'s3:/bkt/run.zarr': no such file or directory" (found by a probe)."""
    assert main(["info", "s3://bkt/run.zarr"]) == 2
    err = capsys.readouterr().err
    assert "'s3://bkt/run.zarr'" in err and "snapsink.open(url" in err
    assert main(["convert", str(tmp_path / "none"), "s3://bkt/out.zarr"]) == 2
    assert "DST 's3://bkt/out.zarr'" in capsys.readouterr().err


def test_info_and_convert_refuse_a_truncated_hdf5_file(hdf5_store: Path, tmp_path: Path) -> None:
    """One error line and exit 2, in a child process: HDF5 used to loop forever
    on a truncated file (in C, where no per-test timeout reaches)."""
    cut = tmp_path / "cut.h5"
    cut.write_bytes(hdf5_store.read_bytes()[:3000])
    code = (
        "import sys\n"
        "from snapsink.cli import main\n"
        f"sys.exit(10 * main(['info', {str(cut)!r}]) + "
        f"main(['convert', {str(cut)!r}, {str(tmp_path / 'out')!r}, '--group', 'a']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 22, proc.stderr
    info, convert = proc.stderr.strip().splitlines()
    for command, line in (("info", info), ("convert", convert)):
        assert line.startswith(f"snapsink {command}: error: {str(cut)!r}: truncated HDF5 file")
        assert "it holds 3000 bytes" in line
    assert not (tmp_path / "out").exists()


def test_info_follows_a_symbolic_link_to_an_hdf5_file(
    hdf5_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link.h5"
    link.symlink_to(hdf5_store)
    assert main(["info", str(link)]) == 0
    assert re.search(r"groups\s+: a, b", capsys.readouterr().out)


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
DEMO = ["demo", "--frames", "6", "--every", "2", "--grid", "16", "--device", "cpu"]


def _snapsink_in_its_group(
    argv: list[str], env: dict[str, str], *path: Path
) -> subprocess.Popen[str]:
    """``python -m snapsink ARGV`` with this snapsink (and ``path``) first on
    its path, in a process group of its own (a signal to the group reaches
    the demo's runs too); stderr is piped."""
    src = str(Path(snapsink.__file__).resolve().parents[1])
    entries = (src, *map(str, path), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in entries if p)
    return subprocess.Popen(
        [sys.executable, "-m", "snapsink", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def demo_report(out: str) -> dict[str, Any]:
    """The numbers and paths ``snapsink demo`` printed."""
    times = re.search(
        r"^  loop\s+: no I/O ([\d.]+) s \| synchronous writer ([\d.]+) s \([\d.]+x\) \| "
        r"snapsink ([\d.]+) s \([\d.]+x\): in the loop, (.+)$",
        out,
        re.MULTILINE,
    )
    whole = re.search(
        r"^  end to end : no I/O ([\d.]+) s \| synchronous writer ([\d.]+) s \| "
        r"snapsink ([\d.]+) s: snapsink took (.+)$",
        out,
        re.MULTILINE,
    )
    stored = re.search(r"stored\s+: (\d+) frames .* dropped (\d+), spilled (\d+)", out)
    assert times is not None and whole is not None and stored is not None, out
    data = re.search(r"^  data\s+: (.+)$", out, re.MULTILINE)
    hint = re.search(r"^  read back\s+: (.+)$", out, re.MULTILINE)
    return {
        "times": [float(times.group(k)) for k in (1, 2, 3)],
        "totals": [float(whole.group(k)) for k in (1, 2, 3)],
        "claim": times.group(4),
        "end_to_end": whole.group(4),
        "frames": int(stored.group(1)),
        "lost": int(stored.group(2)) + int(stored.group(3)),
        "data": data.group(1) if data else None,
        "hint": hint.group(1) if hint else None,
        "checked": "bit-identical" in out and "MISMATCH" not in out,
    }


def assert_demo_store(path: Path, frames: int = 6, every: int = 2, grid: int = 16) -> None:
    """The store holds the frames a fresh in-process run of the simulation computes."""
    from snapsink._cli.demo import WaveSim

    sim = WaveSim(n=grid)
    energies = [sim.advance(every) for _ in range(frames)]
    t = snapsink.open(path)
    assert len(t) == frames
    assert t.steps.tolist() == [every * (k + 1) for k in range(frames)]
    last = t.frame(frames - 1)
    assert np.asarray(last["field"]).tobytes() == sim.u.tobytes()
    assert np.asarray(last["positions"]).tobytes() == sim.pos.tobytes()
    assert t["energy"][:].tolist() == energies
    assert t.static["particle_ids"].tolist() == list(range(sim.particles))


def test_demo_out_writes_what_it_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "sub" / "demo-npy"
    assert main([*DEMO, "--out", str(out_dir), "--repeat", "2"]) == 0
    text = capsys.readouterr().out
    rep = demo_report(text)
    assert rep["frames"] == 6 and rep["lost"] == 0 and rep["checked"]
    assert min(rep["times"]) >= 0 and rep["times"][2] > 0  # snapsink's includes its close
    # end to end adds each variant's setup: the writer process's start for snapsink
    assert all(t >= s for t, s in zip(rep["totals"], rep["times"], strict=True))
    assert rep["totals"][2] > rep["times"][2] and "writer process" in rep["end_to_end"]
    assert len(re.findall(r"\(runs: [\d.]+ [\d.]+\)", text)) == 3
    assert rep["data"] == str(out_dir)
    assert_demo_store(out_dir)
    assert [p.name for p in out_dir.parent.iterdir()] == ["demo-npy"]  # no scratch left
    check_catches_corruption(out_dir, tmp_path / "copy")
    # never overwrites
    assert main([*DEMO, "--out", str(out_dir)]) == 2
    assert "exists" in one_error_line(capsys.readouterr().err)
    assert_demo_store(out_dir)


def check_catches_corruption(store: Path, scratch: Path) -> None:
    """The demo's read-back check passes on ``store`` (a demo's, DEMO's sizes) and
    names the first frame and field that differ in a corrupted copy of it."""
    import shutil

    from snapsink._cli._demorun import reference
    from snapsink._cli.demo import _read_back

    ref = reference(6, 2, 16)
    assert _read_back(store, ref) is None

    def corrupt(name: str, change: Any) -> str | None:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(store, scratch)
        a = np.load(scratch / f"{name}.npy", mmap_mode="r+")
        change(a)
        a.flush()
        del a
        return _read_back(scratch, ref)

    def flip(k: int, idx: tuple[int, ...] = ()) -> Any:  # one bit of frame k
        def change(a: np.ndarray[Any, Any]) -> None:
            a.view(f"u{a.dtype.itemsize}")[(k, *idx)] ^= 1

        return change

    assert corrupt("field", flip(3, (5, 7))) == (
        "frame 3 (step 8): field 'field' differs from the run without I/O"
    )
    assert "frame 1 (step 4): field 'positions'" in str(corrupt("positions", flip(1, (0, 0))))
    assert "frame 0 (step 2): field 'energy'" in str(corrupt("energy", flip(0)))
    # frames 2 and 4 both corrupt: the first is named
    both = corrupt("field", lambda a: a.__setitem__(slice(2, 5, 2), 0))
    assert str(both).startswith("frame 2 (step 6)")
    assert "does not follow step" in str(corrupt("steps", lambda a: a.__setitem__(3, 2)))
    steps = corrupt("steps", lambda a: a.__setitem__(5, 13))
    assert steps == "frame 5: step 13, the run without I/O wrote step 12"
    assert "frame 2 (step 6): time" in str(corrupt("times", flip(2)))


def test_demo_default_leaves_nothing_keep_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tempfile

    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert main(DEMO) == 0
    rep = demo_report(capsys.readouterr().out)
    assert rep["frames"] == 6 and rep["checked"] and rep["hint"] is None
    assert list(cwd.iterdir()) == [] and list(tmp.iterdir()) == []

    assert main([*DEMO, "--keep", "--format", "zarr"]) == 0
    rep = demo_report(capsys.readouterr().out)
    assert list(cwd.iterdir()) == []
    (kept,) = tmp.iterdir()
    store = Path(rep["data"])
    assert store.parent == kept and store.suffix == ".zarr"
    assert [p.name for p in kept.iterdir()] == [store.name]  # the baseline's data is gone
    assert_demo_store(store)
    # the hint runs this interpreter (not whatever `python` is on PATH) on the kept store
    interpreter, dash_c, code = shlex.split(rep["hint"])
    assert (interpreter, dash_c) == (sys.executable, "-c")
    exec(code, {})  # what that command runs, without starting another interpreter
    n, mean = capsys.readouterr().out.split()
    assert int(n) == 6
    assert float(mean) == pytest.approx(float(snapsink.open(store)["field"][-1].mean()))


@pytest.mark.parametrize(
    "bad",
    [["--frames", "0"], ["--every", "0"], ["--grid", "4"], ["--capacity", "0"], ["--repeat", "0"]],
)
def test_demo_bad_args_exit_2(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*DEMO, "--out", str(tmp_path / "x"), *bad]) == 2
    assert bad[0] in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", [["--format", "hdf5"], ["--device", "tpu"], ["--frames", "x"]])
def test_demo_unknown_choice_exit_2(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*DEMO, *bad])
    assert exc.value.code == 2


def test_demo_refuses_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No room for the runs, or --out under a file: one line, exit 2, nothing made."""
    import snapsink._cli.demo as demo

    afile = tmp_path / "afile"
    afile.write_text("")
    for sub in ("run", "x/y/run"):
        assert main([*DEMO, "--out", str(afile / sub)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{str(afile)!r} is not a directory" in line
    monkeypatch.setattr(demo, "_free_bytes", lambda path: 1 << 20)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    for extra in ([], ["--out", str(tmp_path / "new" / "run")]):
        assert main([*DEMO, *extra]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "not enough free space" in line and "1 MB is free" in line
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_demo_names_a_runs_death_by_signal(tmp_path: Path) -> None:
    from snapsink._cli.demo import _died

    bus = _died("sync", -7, tmp_path)
    assert "synchronous writer run died of SIGBUS" in bus
    assert "disk is probably full" in bus and str(tmp_path) in bus
    assert "/dev/shm" in _died("snapsink", -7, tmp_path)
    assert _died("none", -11, tmp_path) == "the no I/O run died of SIGSEGV"
    assert "SIGKILL" in _died("snapsink", -9, tmp_path)


def test_demo_unfinished_run_leaves_nothing_it_made(tmp_path: Path) -> None:
    """What an interrupted or failed demo removes, and what it says about it."""
    from snapsink._cli.demo import _Places, _tidy

    def args(out: Path | None, keep: bool = False) -> argparse.Namespace:
        return argparse.Namespace(out=str(out) if out else None, keep=keep)

    def place(out: Path, started: bool) -> _Places:
        scratch = out.parent / ".scratch"
        scratch.mkdir(parents=True)
        (scratch / "sync-0").mkdir()
        out.mkdir(parents=True)
        (out / "metadata.json").write_text("{}")
        return _Places(out, scratch, [out.parent], started=started)

    # --out: the partial store this run started goes, with the parent it made
    out = tmp_path / "made" / "run"
    note = _tidy(args(out), place(out, started=True), keep_out=False)
    assert note == f"removed the partial store it had started at {out} (the run did not finish)"
    assert list(tmp_path.iterdir()) == []
    # ... but a store the run had not started is not its to remove
    note = _tidy(args(out), place(out, started=False), keep_out=False)
    assert note is None and [p.name for p in out.parent.iterdir()] == ["run"]
    # a finished run's store stays, and the user is told where
    assert _tidy(args(out), place(tmp_path / "b" / "run", True), keep_out=True) == (
        f"the store (complete) is at {tmp_path / 'b' / 'run'}"
    )
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["run"]
    # the temporary directory: removed whole when the run did not finish, --keep or not
    scratch = tmp_path / "t"
    for keep in (False, True):
        (scratch / "run").mkdir(parents=True)
        note = _tidy(args(None, keep), _Places(scratch / "run", scratch), keep_out=False)
        assert not scratch.exists()
        assert (note is not None and "nothing kept" in note) == keep


def test_demo_sigterm_cleans_up(tmp_path: Path) -> None:
    """SIGTERM to the process group (what `timeout` and batch schedulers send)
    while the snapsink run writes: exit 143, one line, the partial store and
    the scratch removed, no traceback."""
    import signal
    import time

    out = tmp_path / "o" / "run"
    argv = [*DEMO[:-4], "--frames", "1500", "--every", "1", "--grid", "8", "--out", str(out)]
    proc = _snapsink_in_its_group(argv, dict(os.environ))
    try:
        while not out.exists() and proc.poll() is None:  # the snapsink run began
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    line = one_error_line(err)
    assert line.startswith("snapsink demo: terminated (SIGTERM)")
    assert f"removed the partial store it had started at {out}" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("times", "claim", "verdict"),
    [
        ((4.10, 5.42, 4.25), "snapsink hid 89% of the I/O", "kept 96% of its speed"),
        ((4.0, 5.0, 4.5), "snapsink hid 50% of the I/O", "hid part of the I/O"),
        ((4.0, 5.0, 3.9), "snapsink hid all of the I/O", "as fast as without I/O"),
        ((4.0, 5.0, 5.5), "hid none of the 1.00 s of I/O", "did not pay off"),
        ((4.0, 4.05, 4.3), "within the noise", "no I/O to hide"),
    ],
)
def test_demo_judge(times: tuple[float, float, float], claim: str, verdict: str) -> None:
    from snapsink._cli.demo import judge

    got_claim, got_verdict = judge(*times)
    assert claim in got_claim
    assert verdict in got_verdict
    assert got_verdict.endswith(".")


def test_demo_end_to_end_sentence() -> None:
    from snapsink._cli.demo import end_to_end

    assert end_to_end(2.0, 2.5, 0.4) == (
        "snapsink took 0.50 s more than the synchronous writer, the start of its "
        "writer process (0.40 s, once per run) included"
    )
    assert "took 0.50 s less than" in end_to_end(2.5, 2.0, 0.4)
    assert "took about as long as" in end_to_end(2.0, 2.01, 0.4)


# -- bench -------------------------------------------------------------------------------
FAKE_SUITE = """
import json, os, sys
from pathlib import Path
ORDER = ("small_frames", "overlap")
def main(argv):
    print("suite argv", argv)
    how = os.environ.get("FAKE_SUITE", "")
    if how == "interrupt":
        raise KeyboardInterrupt
    if how == "fail":
        return 1
    out = Path(argv[argv.index("--json-dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap-cpu.json").write_text(json.dumps({"quick": "--quick" in argv}))
    return 0
"""


@pytest.fixture
def fake_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A benchmarks/ directory whose run.py records its argv and writes a result."""
    fake = tmp_path / "benchmarks"
    (fake / "results").mkdir(parents=True)
    (fake / "results" / "overlap-cpu.json").write_text('{"recorded": true}')
    (fake / "run.py").write_text(FAKE_SUITE)
    monkeypatch.setenv("SNAPSINK_BENCHMARKS", str(fake))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    return fake


def suite_argv(out: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith("suite argv"))
    argv: list[str] = eval(line.removeprefix("suite argv "))
    return argv


def test_bench_runs_the_suite_runner(fake_suite: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--only", "overlap", "--writer", "thread"]) == 0
    argv = suite_argv(capsys.readouterr().out)
    assert argv[:3] == ["--quick", "--only", "overlap"]
    assert argv[-2:] == ["--writer", "thread"]


def test_bench_quick_leaves_the_recorded_results_alone(
    fake_suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    json_dir = Path(suite_argv(out)[suite_argv(out).index("--json-dir") + 1])
    assert (fake_suite / "results" / "overlap-cpu.json").read_text() == '{"recorded": true}'
    assert json_dir.parent == fake_suite.parent / "tmp"  # a fresh temporary directory
    assert (json_dir / "overlap-cpu.json").read_text() == '{"quick": true}'
    assert f"results written to {json_dir} (--save records them)" in out


def test_bench_save_and_json_dir(
    fake_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--json-dir", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "overlap-cpu.json").read_text() == '{"quick": false}'
    assert (fake_suite / "results" / "overlap-cpu.json").read_text() == '{"recorded": true}'
    assert main(["bench", "--save"]) == 0
    assert (fake_suite / "results" / "overlap-cpu.json").read_text() == '{"quick": false}'
    assert f"results recorded in {fake_suite / 'results'}" in capsys.readouterr().out


def test_bench_errors_name_the_subcommand(
    fake_suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--only", "overlap,nope"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(
        "snapsink bench: error: --only 'overlap,nope': unknown benchmark(s) nope"
    )
    assert "known: small_frames, overlap" in line
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--save", "--json-dir", "x"])
    assert exc.value.code == 2
    assert "snapsink bench: error: argument --json-dir" in capsys.readouterr().err


def test_bench_json_dir_is_checked_before_the_suite_runs(
    fake_suite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, says in ((afile, "exists and is not a directory"), (afile / "sub", "is a file")):
        assert main(["bench", "--json-dir", str(bad)]) == 2
        got = capsys.readouterr()
        assert "suite argv" not in got.out and "results written to" not in got.out
        assert says in one_error_line(got.err)
    assert afile.read_text() == "x"


@pytest.mark.parametrize("how", ["interrupt", "fail"])
def test_bench_leaves_no_empty_temporary_directory(
    how: str,
    fake_suite: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C, or a suite that wrote nothing: no snapsink-bench-* left behind, and
    never a claim that results were written."""
    monkeypatch.setenv("FAKE_SUITE", how)
    assert main(["bench", "--quick"]) == (130 if how == "interrupt" else 1)
    got = capsys.readouterr()
    assert "results written to" not in got.out
    assert list((tmp_path / "tmp").iterdir()) == []
    if how == "fail":
        assert "no results written" in got.out


def test_tox_bench_runs_what_the_docs_say() -> None:
    import configparser

    root = Path(__file__).resolve().parents[1]
    if not (root / "tox.ini").is_file():
        pytest.skip("no tox.ini in this checkout")
    tox = configparser.ConfigParser()
    tox.read(root / "tox.ini")
    command = tox["testenv:bench"]["commands"].strip()
    assert command == "snapsink bench {posargs}"
    docs = " ".join((root / "docs" / "benchmarks.md").read_text().split())
    assert "`tox -e bench` runs `snapsink bench`" in docs


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


# -- the command itself -------------------------------------------------------------------
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"snapsink {snapsink.__version__}"


def test_help_has_no_rst_markup() -> None:
    from snapsink.cli import build_parser, plain

    assert plain("``snapsink demo``: see :class:`~snapsink.Sink` and `x`") == (
        "snapsink demo: see Sink and x"
    )
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {"snapsink": parser.format_help()}
    texts.update({f"snapsink {n}": p.format_help() for n, p in sub.choices.items()})
    assert set(texts) == {
        "snapsink",
        *(f"snapsink {n}" for n in ("demo", "info", "convert", "bench")),
    }
    for name, text in texts.items():
        assert "`" not in text and not re.search(r":\w+:", text), f"{name} --help:\n{text}"


@pytest.mark.parametrize(
    "argv", [["demo"], ["info", "somewhere"], ["convert", "a", "b"], ["bench", "--quick"]]
)
def test_usage_errors_name_the_subcommand(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--no-such-option"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"snapsink {argv[0]}: error: unrecognized arguments: --no-such-option" in err
    assert err.startswith(f"usage: snapsink {argv[0]} ")


@pytest.mark.parametrize("command", ["demo", "info", "convert", "bench"])
def test_every_subcommand_is_documented(command: str) -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root / "docs").is_dir():  # pragma: no cover - an sdist without docs
        pytest.skip("no docs/ in this checkout")
    readme = (root / "README.md").read_text()
    docs = " ".join(p.read_text() for p in (root / "docs").rglob("*.md"))
    assert f"snapsink {command}" in readme, f"README.md does not mention `snapsink {command}`"
    assert f"snapsink {command}" in docs, f"docs/ do not mention `snapsink {command}`"


def test_groups_are_discoverable(tmp_path: Path) -> None:
    """snapsink.groups lists a store's groups; open without a group opens the only
    one, and otherwise (or for an unknown group) says which groups there are."""
    import snapsink

    one = tmp_path / "one.zarr"
    with snapsink.SyncSink(snapsink.ZarrStore(one, group="frames")) as sink:
        sink.write({"e": 1.5}, step=3)
    assert snapsink.groups(one) == ["frames"]
    assert snapsink.open(one)["e"][:].tolist() == [1.5]  # the only group
    two = tmp_path / "two.zarr"
    for g in ("thermo", "frames"):
        with snapsink.SyncSink(snapsink.ZarrStore(two, mode="a", group=g)) as sink:
            sink.write({"e": 2.0}, step=0)
    assert snapsink.groups(two) == ["frames", "thermo"]
    with pytest.raises(snapsink.FormatError, match="'frames', 'thermo': pass group="):
        snapsink.open(two)
    with pytest.raises(snapsink.StoreNotFoundError, match="'frames', 'thermo'"):
        snapsink.open(two, group="nope")
    assert snapsink.open(two, group="thermo").steps.tolist() == [0]
    npy = tmp_path / "run"
    with snapsink.SyncSink(snapsink.NpyDirectory(npy)) as sink:
        sink.write({"e": 1.0}, step=0)
    assert snapsink.groups(npy) == [""]
    with pytest.raises(snapsink.StoreNotFoundError):
        snapsink.groups(tmp_path / "missing")


def test_convert_picks_the_only_group_as_open_does(
    zarr_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only = tmp_path / "only.zarr"
    write_store(snapsink.ZarrStore(only, group="run/a", attrs=ATTRS, static=STATIC))
    assert main(["convert", str(only), str(tmp_path / "out")]) == 0
    assert_reference(snapsink.open(tmp_path / "out"))
    capsys.readouterr()
    # two groups and none at the root: which one is for the user to say
    assert main(["convert", str(zarr_store), str(tmp_path / "out2")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "several snapsink groups ('a', 'b')" in line and "--group" in line
    assert not (tmp_path / "out2").exists()


def test_convert_reports_the_size_as_info_does(
    npy_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "conv.zarr"
    assert main(["convert", str(npy_store), str(dst)]) == 0
    said = re.search(r"\((\S+ \S+) on disk, (\S+ \S+) apparent\)", capsys.readouterr().out)
    assert main(["info", str(dst)]) == 0
    info = re.search(r"size\s+: (\S+ \S+) on disk \((\S+ \S+) apparent\)", capsys.readouterr().out)
    assert said is not None and info is not None and said.groups() == info.groups()


@pytest.mark.parametrize("inside", ["dst-in-src", "src-in-dst"])
def test_convert_refuses_a_destination_inside_the_source(
    inside: str, npy_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in npy_store.iterdir())
    if inside == "dst-in-src":
        args = [str(npy_store), str(npy_store / "copy.zarr")]
    else:  # a new group whose directory would hold the source group
        holder = tmp_path / "holder.zarr"
        write_store(snapsink.ZarrStore(holder, group="g/h", attrs=ATTRS, static=STATIC))
        args = [str(holder), str(holder), "--group", "g/h", "--format", "zarr", "--to-group", "g"]
    assert main(["convert", *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("is inside" if inside == "dst-in-src" else "holds") + " the source store" in line
    assert sorted(p.name for p in npy_store.iterdir()) == before
    assert_reference(snapsink.open(npy_store))
    if inside == "src-in-dst":
        assert snapsink.groups(holder) == ["g/h"]
        assert_reference(snapsink.open(holder))


def test_a_failed_convert_removes_the_partial_destination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src.zarr"
    with snapsink.SyncSink(snapsink.ZarrStore(src, chunk_frames=2), writer="thread") as sink:
        for i in range(6):
            sink.write({"x": np.full(4, float(i))}, step=i)
    (src / "x" / "c" / "2" / "0").unlink()  # frames 4 and 5
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "chunk 'c/2/0'" in err[0] and "removed" in err[1] and "partial store" in err[1]
    assert not (tmp_path / "out").exists()


def test_open_takes_the_group_spellings_info_takes(
    zarr_store: Path, hdf5_store: Path, npy_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (zarr_store, hdf5_store):
        for spelling in ("/b", "b/", "/b/"):
            assert_same(snapsink.open(path, group="b"), snapsink.open(path, group=spelling))
            assert main(["info", str(path), "--group", spelling]) == 0
    assert_reference(snapsink.open(npy_store, group="/"))  # the root: its only group
    with pytest.raises(snapsink.ConfigError, match="group 'b//c'"):
        snapsink.open(zarr_store, group="/b//c")


# -- partial output: removed after a failure, Ctrl-C or SIGTERM; nothing printed first ---------
def _damaged_group(src: Path) -> None:
    """Zarr group g of 6 frames, two a chunk; the chunk of frames 4 and 5 removed."""
    store = snapsink.ZarrStore(src, group="g", chunk_frames=2)
    with snapsink.SyncSink(store, writer="thread") as sink:
        for i in range(6):
            sink.write({"x": np.full(4, float(i))}, step=i)
    (src / "g" / "x" / "c" / "2" / "0").unlink()


@pytest.mark.parametrize(
    ("dst", "extra", "removed"),
    [
        ("out.h5", [], "out.h5"),  # the group is inside the file
        ("out.zarr", [], "out.zarr"),  # the root holds the group
        ("out.zarr", ["--to-group", "a/b"], "out.zarr"),
        ("have.zarr", ["--to-group", "p/r/s"], "have.zarr/p/r"),  # an existing store gains p/r/s
    ],
)
def test_a_failed_convert_into_a_group_removes_what_it_made(
    dst: str, extra: list[str], removed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damaged_group(tmp_path / "src.zarr")
    have = tmp_path / "have.zarr"
    write_store(snapsink.ZarrStore(have, group="p/q", attrs=ATTRS, static=STATIC))
    args = ["convert", str(tmp_path / "src.zarr"), str(tmp_path / dst), "--group", "g", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "chunk 'c/2/0'" in err[0]
    assert err[1].startswith(f"snapsink convert: copy: removed {str(tmp_path / removed)!r}")
    assert not (tmp_path / removed).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["have.zarr", "src.zarr"]
    assert snapsink.groups(have) == ["p/q"]
    assert_reference(snapsink.open(have))


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_convert_removes_its_partial_destination_and_says_so(
    sig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C or SIGTERM (`timeout`, a batch scheduler) while convert writes:
    the partial store goes (a rerun is not refused), and stderr says so."""
    import signal

    from snapsink._trajectory import Trajectory

    src, dst = tmp_path / "src.zarr", tmp_path / "out.h5"
    write_store(snapsink.ZarrStore(src, group="g", attrs=ATTRS, static=STATIC))
    signum = getattr(signal, sig)
    chunks = Trajectory.iter_chunks

    def interrupted(self: Trajectory, frames: int) -> Any:
        for part in chunks(self, frames):
            yield part
            signal.raise_signal(signum)  # the frames were handed to the sink

    def unhandled(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the caller: convert does not handle it")

    monkeypatch.setattr(Trajectory, "iter_chunks", interrupted)
    previous = signal.signal(signal.SIGTERM, unhandled)  # (its default action kills pytest)
    try:
        assert main(["convert", str(src), str(dst), "--group", "g"]) == 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err.strip().splitlines()
    what = "terminated (SIGTERM)" if sig == "SIGTERM" else "interrupted"
    assert err[0] == f"snapsink convert: {what}"
    assert err[1].startswith(f"snapsink convert: copy: removed {str(dst)!r}, the partial store")
    assert len(err) == 2 and not dst.exists()
    monkeypatch.undo()
    assert main(["convert", str(src), str(dst), "--group", "g"]) == 0
    assert_reference(snapsink.open(dst, group="g"))


def test_convert_into_an_hdf5_group_reports_the_file_s_size(
    npy_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "conv.h5"
    assert main(["convert", str(npy_store), str(dst), "--group", "g"]) == 0
    said = re.search(r"\((\S+ \S+) on disk, (\S+ \S+) apparent\)", capsys.readouterr().out)
    assert main(["info", str(dst)]) == 0
    info = re.search(r"size\s+: (\S+ \S+) on disk \((\S+ \S+) apparent\)", capsys.readouterr().out)
    assert said is not None and info is not None and said.groups() == info.groups()
    assert said.group(2) != "0 B"


@pytest.mark.parametrize("damage", ["npy-metadata", "second-group"])
def test_info_on_a_damaged_store_prints_nothing_but_the_error(
    damage: str, npy_store: Path, zarr_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script reading stdout never sees a description of a store info failed
    to read: every group is read before the first line is printed."""
    if damage == "npy-metadata":
        path = npy_store
        (path / "metadata.json").write_text("{garbage")
    else:  # group a reads, group b does not
        path = zarr_store
        shutil.rmtree(path / "b" / "steps")
    assert main(["info", str(path)]) == 2
    got = capsys.readouterr()
    assert got.out == ""
    assert one_error_line(got.err).startswith("snapsink info: error: ")


def test_demo_whose_reader_left_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`snapsink demo | head -1`: the reader left; exit 0, nothing on stderr, and
    nothing of the run left behind (as `info | head` does)."""
    r, w = os.pipe()
    os.close(r)  # the reader already left: the first line written fails
    with open(w, "w") as gone:
        monkeypatch.setattr(sys, "stdout", gone)
        assert main([*DEMO, "--out", str(tmp_path / "o" / "run")]) == 0
        monkeypatch.undo()
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


HOLD_START = """
import os, sys, time
d = os.environ.get("SNAPSINK_TEST_HOLD")
if d and sys.orig_argv[1:2] == ["-c"] and not os.path.exists(os.path.join(d, "started")):
    open(os.path.join(d, "started"), "w").close()
    t0 = time.monotonic()
    while not os.path.exists(os.path.join(d, "go")) and time.monotonic() - t0 < 60:
        time.sleep(0.005)
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX process groups")
def test_demo_interrupted_while_a_run_starts_prints_one_line(tmp_path: Path) -> None:
    """Ctrl-C (to the process group) while a run's process starts up, before
    it could take an interrupt (held there until the signal was sent): the
    demo prints its one line, never a traceback of the run."""
    import signal
    import time

    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD_START)
    out = tmp_path / "o" / "run"
    env = dict(os.environ, SNAPSINK_TEST_HOLD=str(tmp_path))
    proc = _snapsink_in_its_group([*DEMO, "--out", str(out)], env, hold)
    try:
        while not (tmp_path / "started").exists() and proc.poll() is None:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        (tmp_path / "go").touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert one_error_line(err) == "snapsink demo: interrupted"
    assert not (tmp_path / "o").exists()


def test_bench_only_empty_names_no_benchmark(
    fake_suite: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--only "$LIST"` with LIST unset is refused, not the whole suite run."""
    assert main(["bench", "--only", ""]) == 2
    got = capsys.readouterr()
    assert "suite argv" not in got.out
    assert one_error_line(got.err).startswith("snapsink bench: error: --only '': ")


THROUGHPUT_TERMINATED = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import throughput

def measure_case(root, *args):
    open(os.path.join(root, "frames.npy"), "wb").close()  # a store being written
    signal.raise_signal(signal.SIGTERM)

throughput.measure_case = measure_case
throughput.run()
"""


def test_throughput_benchmark_removes_its_scratch_on_sigterm(tmp_path: Path) -> None:
    """benchmarks/throughput.py writes its stores under the current directory:
    SIGTERM (`timeout`, a batch scheduler) removes them, exit status 143."""
    from snapsink._cli.bench import find_benchmarks

    try:
        where = find_benchmarks()
    except snapsink.SnapsinkError:
        pytest.skip("no benchmarks/ in this checkout")
    if not (where / "throughput.py").is_file():
        pytest.skip("no benchmarks/throughput.py in this checkout")
    src = str(Path(snapsink.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", THROUGHPUT_TERMINATED, str(where)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 143, proc.stderr
    assert list(tmp_path.iterdir()) == []
