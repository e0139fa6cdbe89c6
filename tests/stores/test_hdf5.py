"""HDF5Store and its reader: round trips, modes, groups, locks, crash recovery."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _values import DTYPES, assert_bits, sample

h5py = pytest.importorskip("h5py")

import snapsink  # noqa: E402
from snapsink._errors import (  # noqa: E402
    ConfigError,
    DTypeError,
    FormatError,
    SchemaError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
    StoreStateError,
)
from snapsink._schema import Batch, Field, Frame, Schema  # noqa: E402
from snapsink.stores import hdf5 as hdf5_module  # noqa: E402
from snapsink.stores._hdf5file import (  # noqa: E402
    _field,
    _superblock,
    clear_open_flags,
    lookup3,
)
from snapsink.stores._hdf5plan import check_compression  # noqa: E402
from snapsink.stores.hdf5 import HDF5Store, list_hdf5_groups, open_hdf5  # noqa: E402


def write(
    store: HDF5Store,
    schema: Schema,
    frames: list[Frame],
    *,
    times: bool,
    batch: int = 1,
    close: bool = True,
) -> Any:
    resume = store.open()
    store.prepare(schema, times=times)
    for i in range(0, len(frames), batch):
        store.append(Batch(frames[i : i + batch]))
    if close:
        store.close()
    return resume


# -- round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_bit_exact(tmp_path: Path, dtype: str) -> None:
    dt = np.dtype(dtype)
    schema = Schema({"a": Field(dt, (4, 3)), "s": Field(dt, ()), "r": Field(dt, (None, 2))})
    frames = [
        Frame(
            10 + 3 * i,
            0.25 * i,
            {
                "a": sample(dt, (4, 3), i),
                "s": sample(dt, (1,), 100 + i)[0],
                "r": sample(dt, (i % 3, 2), 200 + i),
            },
        )
        for i in range(7)
    ]
    path = tmp_path / "run.h5"
    write(HDF5Store(path, chunk_frames=3), schema, frames, times=True, batch=2)

    traj = snapsink.open(path)
    assert len(traj) == 7 and traj.schema == schema and traj.closed is True
    assert_bits(traj.steps, np.array([f.step for f in frames], np.int64))
    assert_bits(traj.times, np.array([f.time for f in frames], np.float64))
    assert_bits(traj["a"][:], np.stack([f.fields["a"] for f in frames]))
    assert_bits(traj["s"][:], np.stack([f.fields["s"] for f in frames]))
    for i, rows in enumerate(traj["r"][:]):
        assert_bits(rows, frames[i].fields["r"])
    assert_bits(traj["a"][5], frames[5].fields["a"])
    del traj
    # plain h5py reads the same bits: the datasets are exactly the committed rows
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["snapsink"])["format"] == "snapsink-hdf5"
        assert f["snapsink.commit"][...].tolist() == [7, 0, 1]
        assert_bits(f["a"][...], np.stack([fr.fields["a"] for fr in frames]))
        assert_bits(f["steps"][...], np.array([fr.step for fr in frames], np.int64))
        offsets = f["r.offsets"][...]
        want = np.concatenate([[0], np.cumsum([i % 3 for i in range(7)])])
        assert offsets.tolist() == want.tolist()
        data = f["r"][...]
        for i, fr in enumerate(frames):
            assert_bits(data[offsets[i] : offsets[i + 1]], fr.fields["r"])


def test_no_times_empty_ragged_frames_and_zero_size_dims(tmp_path: Path) -> None:
    schema = Schema(
        {
            "pos": Field("float32", (None, 3)),
            "empty": Field("float64", (0, 3)),
            "ids": Field("int64", (None,)),
        }
    )
    rows = [0, 5, 0, 0, 2, 7, 0, 1, 3]
    frames = [
        Frame(
            i,
            None,
            {
                "pos": sample(np.dtype("float32"), (r, 3), i),
                "empty": np.zeros((0, 3)),
                "ids": np.arange(r, dtype=np.int64) + 100 * i,
            },
        )
        for i, r in enumerate(rows)
    ]
    path = tmp_path / "r.h5"
    write(HDF5Store(path, chunk_frames=2), schema, frames, times=False, batch=4)
    traj = open_hdf5(path)
    assert traj.times is None
    assert [len(g) for g in traj["pos"][:]] == rows
    for got, fr in zip(traj["ids"][3:8], frames[3:8], strict=True):
        assert_bits(got, fr.fields["ids"])
    assert traj["empty"][:].shape == (len(rows), 0, 3)
    assert_bits(traj["pos"][5], frames[5].fields["pos"])


def test_a_batch_spanning_many_chunks_and_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session every ~1 KiB of full chunks: many sessions, each in SWMR mode.
    monkeypatch.setattr(hdf5_module, "_SESSION_BYTES", 1024)
    schema = Schema({"x": Field("float64", (3, 5))})
    frames = [Frame(i, float(i), {"x": np.full((3, 5), i, np.float64)}) for i in range(103)]
    path = tmp_path / "m.h5"
    store = HDF5Store(path, chunk_frames=4, commit_every=10**6, commit_seconds=None)
    store.open()
    store.prepare(schema, times=True)
    store.append(Batch(frames[:1]))
    store.append(Batch(frames[1:90]))  # starts mid-chunk
    with h5py.File(path, "r", swmr=True) as f:  # written, not committed yet
        assert f["snapsink.commit"][0] == 0 and f["x"].shape[0] >= 64
    for fr in frames[90:]:
        store.append(Batch([fr]))
    store.close()
    traj = snapsink.open(path)
    assert_bits(traj["x"][:], np.stack([f.fields["x"] for f in frames]))
    with h5py.File(path, "r") as f:
        assert f["x"].chunks == (4, 3, 5) and f["x"].maxshape == (None, 3, 5)


@pytest.mark.parametrize("compression", ["gzip", ("gzip", 9), "lzf"])
def test_compression_round_trips(tmp_path: Path, compression: Any) -> None:
    schema = Schema({"x": Field("float32", (64,)), "r": Field("int32", (None,))})
    frames = [
        Frame(i, None, {"x": np.zeros(64, np.float32) + i, "r": np.arange(i % 5, dtype=np.int32)})
        for i in range(21)
    ]
    path = tmp_path / "c.h5"
    write(HDF5Store(path, chunk_frames=8, compression=compression), schema, frames, times=False)
    traj = snapsink.open(path)
    assert_bits(traj["x"][:], np.stack([f.fields["x"] for f in frames]))
    assert [r.tolist() for r in traj["r"][:]] == [list(range(i % 5)) for i in range(21)]
    with h5py.File(path, "r") as f:
        assert f["x"].compression == (compression if isinstance(compression, str) else "gzip")


def test_compression_argument_is_checked() -> None:
    assert check_compression(None) is None
    assert check_compression("gzip") == ("gzip", 4)
    assert check_compression({"compression": 32015, "compression_opts": (3,)}) == (32015, (3,))
    for bad in ["zip", ("gzip", 11), ("lzf", 3), 12, ("gzip",)]:
        with pytest.raises(ConfigError, match="compression"):
            HDF5Store("x.h5", compression=bad)


def test_static_attrs_and_dropped_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    numbers = np.array([1, 8, 8], np.int32)
    store = HDF5Store(
        path, attrs={"run": "md", "dt": 0.5}, static={"numbers": numbers, "cell": np.eye(3)}
    )
    store.open()
    store.prepare(Schema({"e": "f8"}), times=True)
    store.append(Batch([Frame(0, 0.0, {"e": np.float64(1)})], dropped_steps=[1, 2, 3, 7]))
    store.append(Batch([Frame(9, 1.0, {"e": np.float64(2)})], dropped_steps=[8]))
    store.commit()
    assert snapsink.open(path).dropped_steps.tolist() == [1, 2, 3, 7, 8]
    store.close()
    traj = snapsink.open(path)
    assert traj.attrs == {"run": "md", "dt": 0.5}
    assert_bits(traj.static["numbers"], numbers)
    assert_bits(traj.static["cell"], np.eye(3))
    assert traj.dropped_steps.tolist() == [1, 2, 3, 7, 8]
    with h5py.File(path, "r") as f:
        assert f["snapsink.dropped"][...].tolist() == [[1, 4], [7, 9]]
        assert json.loads(f.attrs["attrs"]) == {"run": "md", "dt": 0.5}


# -- modes ---------------------------------------------------------------------------
def _frames(start: int, n: int) -> list[Frame]:
    return [Frame(2 * i, 0.5 * i, {"v": np.float64(i)}) for i in range(start, start + n)]


SCHEMA = Schema({"v": "f8"})


def test_modes_x_w_a(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    write(HDF5Store(path, chunk_frames=4), SCHEMA, _frames(0, 6), times=True)
    with pytest.raises(StoreExistsError, match="mode='w'"):
        HDF5Store(path).open()
    assert snapsink.open(path)["v"][:].tolist() == [float(i) for i in range(6)]

    # "a" resumes after the committed frames: last step and time come back
    store = HDF5Store(path, mode="a", attrs={"more": 1})
    resume = store.open()
    assert resume is not None and resume.count == 6
    assert (resume.last_step, resume.last_time, resume.times) == (10, 2.5, True)
    store.prepare(SCHEMA, times=True)
    for fr in _frames(6, 5):
        store.append(Batch([fr]))
    store.close()
    traj = snapsink.open(path)
    assert traj["v"][:].tolist() == [float(i) for i in range(11)]
    assert traj.steps.tolist() == [2 * i for i in range(11)] and traj.attrs == {"more": 1}

    # "w" replaces
    write(HDF5Store(path, mode="w"), SCHEMA, _frames(100, 2), times=True)
    assert snapsink.open(path)["v"][:].tolist() == [100.0, 101.0]


def test_a_store_is_made_whole_beside_the_path_before_the_path_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that dies while it makes the file, or a new store's datasets,
    must not leave a torn HDF5 file (HDF5 writes structure in no crash-safe
    order outside SWMR mode: a SIGKILL there left files HDF5 could not open,
    and mode="a" could not resume). Here the making fails half-way, as a
    kill would stop it; the path must be as it was, and mode="a" must work."""
    from snapsink.stores import _hdf5claim

    path = tmp_path / "made.h5"

    def torn(grp: Any, arrays: Any) -> None:  # the group exists, the commit record not yet
        raise OSError("killed while laying out the group")

    monkeypatch.setattr(_hdf5claim, "_write_static", torn)
    with pytest.raises(OSError, match="killed"):
        HDF5Store(path, static={"box": np.ones(3)}).open()
    monkeypatch.undo()
    assert not path.exists() or path.stat().st_size == 0  # not a torn HDF5 file
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    write(HDF5Store(path, mode="a"), SCHEMA, _frames(0, 2), times=True)
    assert snapsink.open(path)["v"][:].tolist() == [0.0, 1.0]

    # the first prepare too: the datasets are made in a copy, renamed over the file
    path2 = tmp_path / "prepared.h5"
    store = HDF5Store(path2)
    store.open()
    ino = path2.stat().st_ino

    def torn_columns(*args: Any, **kwargs: Any) -> Any:
        raise OSError("killed while making the datasets")

    monkeypatch.setattr(store, "_create_columns", torn_columns)
    with pytest.raises(OSError, match="killed"):
        store.prepare(SCHEMA, times=True)
    assert path2.stat().st_ino == ino  # the file as open() made it: a store of 0 frames
    assert len(snapsink.open(path2)) == 0
    store.close()
    write(HDF5Store(path2, mode="a"), SCHEMA, _frames(0, 3), times=True)
    assert snapsink.open(path2)["v"][:].tolist() == [0.0, 1.0, 2.0]


def test_a_new_file_another_writer_already_holds_is_made_in_place(tmp_path: Path) -> None:
    """Two writers of one new file (groups a and b), b holding it first: a must
    not rename a remade file over the one b holds (b would write a file no path
    names): a makes it in place, and both groups land in the one file."""
    from snapsink.stores._hdf5session import StoreFile

    path = tmp_path / "two.h5"
    a, b = HDF5Store(path, group="a"), HDF5Store(path, group="b")
    held = StoreFile(str(path), "b", b, "b")  # b's descriptor and claim, as its open() takes
    held.locks.claim("b")
    a.open()
    assert path.stat().st_ino == os.fstat(held.fd).st_ino  # the file b holds
    held.release()
    b.open()
    for store, value in ((a, 1.0), (b, 2.0)):
        store.prepare(SCHEMA, times=True)
        store.append(Batch([Frame(0, 0.0, {"v": np.float64(value)})]))
        store.close()
    assert list_hdf5_groups(path) == ["a", "b"]
    assert snapsink.open(path, group="a")["v"][:].tolist() == [1.0]
    assert snapsink.open(path, group="b")["v"][:].tolist() == [2.0]


def test_mode_a_on_a_missing_file_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "new.h5"
    assert write(HDF5Store(path, mode="a"), SCHEMA, _frames(0, 3), times=True) is None
    assert len(snapsink.open(path)) == 3


def test_resume_of_another_schema_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    write(HDF5Store(path), SCHEMA, _frames(0, 3), times=True)
    store = HDF5Store(path, mode="a")
    store.open()
    with pytest.raises(SchemaError, match="holds frames of"):
        store.prepare(Schema({"v": "f4"}), times=True)
    store.close()
    assert snapsink.open(path)["v"][:].tolist() == [0.0, 1.0, 2.0]


def test_foreign_files_are_never_overwritten(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_bytes(b"my notes")
    for mode in ("x", "w"):
        with pytest.raises(StoreExistsError, match="not an HDF5 file"):
            HDF5Store(text, mode=mode).open()
    with pytest.raises(FormatError, match="not an HDF5 file"):
        HDF5Store(text, mode="a").open()
    assert text.read_bytes() == b"my notes"

    other = tmp_path / "other.h5"
    with h5py.File(other, "w", libver="latest") as f:
        f["data"] = np.arange(3)
    with pytest.raises(StoreExistsError):
        HDF5Store(other, mode="w").open()
    with pytest.raises(FormatError, match="not a snapsink store"):
        HDF5Store(other, mode="a").open()
    # a group of its own in that file is fine, and the user's data stays
    write(HDF5Store(other, group="snap"), SCHEMA, _frames(0, 2), times=True)
    with h5py.File(other, "r") as f:
        assert f["data"][...].tolist() == [0, 1, 2]
    assert snapsink.open(other, group="snap")["v"][:].tolist() == [0.0, 1.0]


def test_bad_frames_are_refused_whole_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "b.h5"
    schema = Schema({"x": Field("float64", (2,)), "r": Field("int32", (None, 2))})
    store = HDF5Store(path)
    store.open()
    store.prepare(schema, times=False)
    good = Frame(0, None, {"x": np.ones(2), "r": np.ones((1, 2), np.int32)})
    bad = Frame(1, None, {"x": np.ones(3), "r": np.ones((1, 2), np.int32)})
    with pytest.raises(SchemaError, match=r"field 'x': expected shape \(2,\), got \(3,\)"):
        store.append(Batch([good, bad]))
    store.append(Batch([good]))
    store.close()
    traj = snapsink.open(path)
    assert len(traj) == 1 and traj["r"][0].tolist() == [[1, 1]]
    with pytest.raises(StoreStateError, match="needs an open store"):
        store.append(Batch([good]))


def test_dtypes_hdf5_does_not_hold_are_refused_before_writing(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "d.h5")
    with pytest.raises(DTypeError, match=r"float128|longdouble"):
        store.check_schema(Schema({"q": Field(np.longdouble, ())}))
    with pytest.raises(DTypeError):
        HDF5Store(tmp_path / "d.h5", static={"q": np.zeros(2, np.longdouble)})
    with pytest.raises(DTypeError):
        with snapsink.SyncSink(HDF5Store(tmp_path / "e.h5"), writer="thread") as sink:
            sink.write({"q": np.zeros(2, np.clongdouble)})
    assert not (tmp_path / "d.h5").exists()


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="mode"):
        HDF5Store("a.h5", mode="r")
    with pytest.raises(ConfigError, match="layout"):
        HDF5Store("a.h5", layout="netcdf")
    with pytest.raises(ConfigError, match="group"):
        HDF5Store("a.h5", group="../x")
    with pytest.raises(ConfigError, match="chunk_frames"):
        HDF5Store("a.h5", chunk_frames=0)
    with pytest.raises(ConfigError, match="attrs"):
        HDF5Store("a.h5", attrs={"x": float("nan")})


# -- groups and writers ----------------------------------------------------------------
def test_two_stores_write_two_groups_of_one_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "g.h5"
    traj_store = HDF5Store(path, group="traj", chunk_frames=2, commit_every=3)
    thermo = HDF5Store(path, group="thermo/energy", chunk_frames=5, commit_every=2)
    traj_store.open()
    thermo.open()
    traj_store.prepare(Schema({"x": Field("float32", (4, 3))}), times=True)
    thermo.prepare(SCHEMA, times=True)
    for i in range(20):
        if i % 5 == 0:
            traj_store.append(Batch([Frame(i, 0.1 * i, {"x": np.full((4, 3), i, np.float32)})]))
        thermo.append(Batch([Frame(i, 0.1 * i, {"v": np.float64(-i)})]))
    # readers see each group's commits while both still write
    assert len(snapsink.open(path, group="thermo/energy")) == 20
    thermo.close()
    traj_store.close()
    assert snapsink.groups(path) == ["thermo/energy", "traj"]
    traj = snapsink.open(path, group="traj")
    assert traj.steps.tolist() == [0, 5, 10, 15]
    assert traj["x"][:, 0, 0].tolist() == [0.0, 5.0, 10.0, 15.0]
    energy = snapsink.open(path, group="thermo/energy")["v"][:]
    assert energy.tolist() == [-float(i) for i in range(20)]
    with pytest.raises(StoreNotFoundError, match="'thermo/energy', 'traj'"):
        snapsink.open(path, group="nope")
    with pytest.raises(FormatError, match="pass group="):
        snapsink.open(path)


def test_one_writer_per_group(tmp_path: Path) -> None:
    path = tmp_path / "l.h5"
    first = HDF5Store(path, group="a")
    first.open()
    for mode in ("x", "w", "a"):
        with pytest.raises(StoreLockedError, match="another writer"):
            HDF5Store(path, group="a", mode=mode).open()
    other = HDF5Store(path, group="b")
    other.open()  # another group of the same file: fine
    other.close()
    first.close()
    again = HDF5Store(path, group="a", mode="a")  # released at close
    again.open()
    again.close()


def test_recorder_routes_write_groups_of_one_file_on_their_schedules(tmp_path: Path) -> None:
    """kUPS style: the initial state once, a trajectory every 4 steps, energies every
    step: three routes, three writer processes, one file."""
    path = tmp_path / "md.h5"
    numbers = np.array([1, 1, 8], np.int32)
    with snapsink.SyncRecorder(
        initial=snapsink.Route(
            HDF5Store(path, group="initial"), fields=["positions"], schedule=snapsink.once()
        ),
        traj=snapsink.Route(
            HDF5Store(path, group="traj", static={"numbers": numbers}),
            fields=["positions", "velocities"],
            schedule=snapsink.every(4),
        ),
        thermo=snapsink.Route(HDF5Store(path, group="thermo"), fields=["energy"]),
    ) as rec:
        for step in range(10):
            x = np.full((3, 3), step, np.float64)
            rec.record(
                {"positions": x, "velocities": -x, "energy": 0.5 * step}, step=step, time=0.1 * step
            )
        rec.flush()
        # readers see the flushed frames of every group while the writers still run
        assert len(snapsink.open(path, group="thermo").refresh()) == 10
    assert snapsink.groups(path) == ["initial", "thermo", "traj"]
    init = snapsink.open(path, group="initial")
    assert init.steps.tolist() == [0] and init["positions"][0].sum() == 0
    traj = snapsink.open(path, group="traj")
    assert traj.steps.tolist() == [0, 4, 8]
    assert_bits(traj["velocities"][2], -np.full((3, 3), 8.0))
    assert_bits(traj.static["numbers"], numbers)
    thermo = snapsink.open(path, group="thermo")
    assert thermo["energy"][:].tolist() == [0.5 * s for s in range(10)]
    assert_bits(thermo.times, 0.1 * np.arange(10))


def test_sink_uses_the_writer_process_and_readers_see_flushed_frames(tmp_path: Path) -> None:
    path = tmp_path / "p.h5"
    store = HDF5Store(path, chunk_frames=4)
    spec = store.describe()
    assert spec is not None and spec.args[0] == str(path)
    assert pickle.loads(pickle.dumps(spec)).build().describe() == spec
    with snapsink.SyncSink(store) as sink:
        assert sink._sink._process is not None  # a writer process owns the file
        for i in range(6):
            sink.write({"x": np.arange(3.0) + i}, step=i)
        sink.flush()
        traj = snapsink.open(path)
        assert len(traj) == 6 and traj.closed is False
        sink.write({"x": np.zeros(3)}, step=6)
        sink.flush()
        assert len(traj.refresh()) == 7
        assert_bits(traj["x"][6], np.zeros(3))
    assert traj.refresh().closed is True


# -- crash recovery ----------------------------------------------------------------------
def test_lookup3_matches_hdf5s_superblock_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with h5py.File(path, "w", libver="latest"):
        pass
    raw = path.read_bytes()[:48]
    assert lookup3(raw[:44]) == int.from_bytes(raw[44:48], "little")
    assert lookup3(b"") == 0xDEADBEEF and lookup3(b"abc") != lookup3(b"abd")


def test_a_writer_killed_mid_session_leaves_a_file_that_reads_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "k.h5"
    write(HDF5Store(path, chunk_frames=4), SCHEMA, _frames(0, 5), times=True)
    # A writer process killed inside a SWMR session, with rows written past the
    # commit: the file stays marked "open for writing".
    code = (
        "import h5py, os, signal, numpy as np\n"
        f"f = h5py.File({str(path)!r}, 'r+', libver='latest', locking=False)\n"
        "f.swmr_mode = True\n"
        "f['snapsink.commit'][2] = 0\n"  # reopened: not closed
        "f['v'].resize(9, axis=0); f['v'][5:9] = 7.0; f['steps'].resize(9, axis=0)\n"
        "f.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r+", locking=False)
    traj = snapsink.open(path)  # SWMR read: the committed frames
    assert traj["v"][:].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and traj.closed is False
    del traj
    store = HDF5Store(path, mode="a")
    assert store.open().count == 5
    store.prepare(SCHEMA, times=True)
    store.append(Batch(_frames(5, 2)))
    store.close()
    traj = snapsink.open(path)
    assert traj["v"][:].tolist() == [float(i) for i in range(7)]
    assert traj.steps.tolist() == [2 * i for i in range(7)]
    with h5py.File(path, "r") as f:  # closed cleanly: plain h5py, exact extents
        assert f["v"].shape == (7,) and f["steps"].shape == (7,)


def test_clear_open_flags_refuses_a_damaged_superblock(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with h5py.File(path, "w", libver="latest"):
        pass
    raw = bytearray(path.read_bytes())
    raw[11] = 5
    path.write_bytes(bytes(raw))  # flags set, checksum not updated
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(FormatError, match="checksum"):
            clear_open_flags(fd, str(path))
    finally:
        os.close(fd)


# -- a full disk, a file-size limit: the room is allocated before HDF5 writes -------
def test_disk_full_reaches_the_producer_as_writer_error(tiny_fs: Path) -> None:
    path = tiny_fs / "full.h5"
    with pytest.raises(snapsink.WriterError) as info:
        with snapsink.SyncSink(HDF5Store(path, chunk_frames=1)) as sink:
            for i in range(64):
                sink.write({"x": np.zeros(64 << 10)}, step=i)  # 512 KiB frames
                sink.flush()
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(cause)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_chunk_larger_than_the_free_space_is_refused_not_stored_as_zeros(
    tiny_fs: Path, writer: str
) -> None:
    """The default 8 MiB chunk on a 1 MiB disk: HDF5 wrote the chunk when its
    dataset closed, h5py ignored the failed write, and flush and close
    succeeded with frames 1-9 read back as zeros (a hole). Now the room is
    allocated first: ENOSPC at the flush, nothing committed, nothing false."""
    path = tiny_fs / "big-chunk.h5"
    with pytest.raises(snapsink.WriterError) as info:
        with snapsink.SyncSink(HDF5Store(path), writer=writer) as sink:
            for i in range(10):
                sink.write({"x": np.full(4096, i, "f8")}, step=i)
            sink.flush()
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(cause)
    assert len(snapsink.open(path)) == 0


_LIMITED = r"""
import resource, sys
import numpy as np, snapsink
path, writer = sys.argv[1], sys.argv[2]
resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, resource.RLIM_INFINITY))
flushed = 0
try:
    with snapsink.SyncSink(snapsink.HDF5Store(path, chunk_frames=64), writer=writer) as sink:
        for i in range(1000):
            sink.write({"x": np.full(4096, i, "f8")}, step=i)  # 2 MiB chunks
            if i % 50 == 49:
                sink.flush()
                flushed = i + 1
except snapsink.WriterError as exc:
    cause = exc.__cause__
    print(type(cause).__name__, getattr(cause, "errno", None), flushed)
"""


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_file_size_limit_fails_the_sink_cleanly_and_the_store_resumes(
    tmp_path: Path, writer: str
) -> None:
    """Past RLIMIT_FSIZE, HDF5's own writes failed: the cause was a
    RuntimeError, the file was left shorter than its superblock says (no
    reader, no ``mode="a"`` could open it), and the thread writer's process
    crashed at exit. Now: EFBIG before HDF5 writes, the committed frames
    intact, and the store resumes."""
    path = tmp_path / "limited.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(path), writer],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, err, flushed = proc.stdout.split()
    assert (kind, int(err)) == ("OSError", errno.EFBIG), proc.stdout
    assert int(flushed) == 100  # the third chunk found no room
    traj = snapsink.open(path)
    assert len(traj) == 100
    xs = traj["x"][:]
    np.testing.assert_array_equal(xs, np.repeat(np.arange(100.0), 4096).reshape(100, 4096))
    with snapsink.SyncSink(HDF5Store(path, mode="a")) as sink:
        sink.write({"x": np.full(4096, -1.0)}, step=5000)
    traj = snapsink.open(path)
    assert traj.steps[-1] == 5000 and (traj["x"][-1] == -1.0).all()
    np.testing.assert_array_equal(traj["x"][:100], xs[:100])


_MADE_NEAR_THE_LIMIT = r"""
import resource, sys
import numpy as np, snapsink
path, limit, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
    if kind == "open":
        snapsink.HDF5Store(path).open()
    else:
        F = snapsink.Field
        schema = snapsink.Schema(
            {"x": F("float64", (1000,)), "r": F("int32", (None, 3)), "pos": F("float32", (5, 3))}
        )
        store = snapsink.HDF5Store(path, chunk_frames=4, layout="h5md", h5md={"position": "pos"})
        with snapsink.SyncSink(store, schema=schema, writer="thread") as sink:
            frame = {"x": np.zeros(1000), "r": np.zeros((2, 3), np.int32)}
            sink.write({**frame, "pos": np.zeros((5, 3), np.float32)}, step=0)
except snapsink.WriterError as exc:
    print(type(exc.__cause__).__name__, getattr(exc.__cause__, "errno", None))
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


@pytest.mark.parametrize(("kind", "limit"), [("open", 1862), ("prepare", 9547), ("prepare", 10870)])
def test_a_file_made_past_a_size_limit_is_an_oserror_and_no_crash(
    tmp_path: Path, kind: str, limit: int
) -> None:
    """Making the file (open) or its datasets (prepare) wrote through HDF5,
    unreserved: past the limit the cause was a RuntimeError ('Set slist
    enabled failed'), and the process crashed (SIGSEGV) at exit. A new file is
    now built in memory and written by the store; a copy gets its room first."""
    proc = subprocess.run(
        [sys.executable, "-c", _MADE_NEAR_THE_LIMIT, str(tmp_path / "f.h5"), str(limit), kind],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["OSError", str(errno.EFBIG)], proc.stdout


_COMPRESSED_SMALL = r"""
import resource, sys
import numpy as np, snapsink
resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, resource.RLIM_INFINITY))
with snapsink.SyncSink(snapsink.HDF5Store(sys.argv[1], compression="gzip"), writer="thread") as s:
    for i in range(3):
        s.write({"x": np.full(100, float(i))}, step=i)
        s.flush()
print("ok")
"""


def test_a_compressed_commit_asks_for_the_room_of_its_rows_not_a_whole_chunk(
    tmp_path: Path,
) -> None:
    """A gzip store asked for a whole uncompressed 8 MiB chunk per commit, so
    a disk with megabytes free refused an 800-byte commit (found by a probe)."""
    path = tmp_path / "gz.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _COMPRESSED_SMALL, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert snapsink.open(path)["x"][:, 0].tolist() == [0.0, 1.0, 2.0]


def test_room_a_killed_session_allocated_is_freed_by_the_next(tmp_path: Path) -> None:
    """The room is allocated past the end, the file's size unchanged: a writer
    killed mid-session leaves it allocated but outside the file (it used to be
    inside, and the next writer made it part of the file for good), and the
    next session frees it."""
    from snapsink.stores._hdf5file import _fallocate, reserve

    if _fallocate() is None:
        pytest.skip("no fallocate here")
    path = tmp_path / "k.h5"
    with snapsink.SyncSink(HDF5Store(path), writer="thread") as sink:
        sink.write({"x": np.zeros(10)}, step=0)
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            reserve(fd, 64 << 20, "test")  # what a killed session leaves
        except OSError as exc:  # pragma: no cover - a file system without it
            pytest.skip(f"fallocate: {exc}")
    finally:
        os.close(fd)
    st = path.stat()
    if st.st_blocks * 512 < 64 << 20:  # pragma: no cover - allocation not reported
        pytest.skip("the file system does not report the allocation")
    assert st.st_size == size
    with snapsink.SyncSink(HDF5Store(path, "a"), writer="thread") as sink:
        sink.write({"x": np.ones(10)}, step=1)
    st = path.stat()
    assert st.st_blocks * 512 < st.st_size + (1 << 20)
    assert snapsink.open(path)["x"][:, 0].tolist() == [0.0, 1.0]


def test_the_room_allocated_for_a_session_is_given_back(tmp_path: Path) -> None:
    """Each session allocates room past the file's end before HDF5 writes;
    what HDF5 did not use is cut off again: the closed file ends where its
    superblock says, as a file HDF5 wrote alone does."""
    path = tmp_path / "room.h5"
    with snapsink.SyncSink(HDF5Store(path, chunk_frames=16, commit_every=5)) as sink:
        for i in range(40):
            sink.write({"x": np.full(100, i, "f8"), "n": np.int32(i)}, step=i)
            if i % 7 == 6:
                sink.flush()
    fd = os.open(path, os.O_RDONLY)
    try:
        found = _superblock(fd, str(path))
        assert found is not None
        raw, size_of_offsets = found
        end = _field(raw, size_of_offsets, 2) + _field(raw, size_of_offsets, 0)
        assert os.fstat(fd).st_size == end
    finally:
        os.close(fd)
    assert snapsink.open(path)["n"][:].tolist() == list(range(40))


# -- reading and the CLI -------------------------------------------------------------------
def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        snapsink.open(tmp_path / "none.h5")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(FormatError, match="not a snapsink group"):
        snapsink.open(plain)
    assert list_hdf5_groups(plain) == []


def _read_in_child(code: str) -> str:
    """Run ``code`` in a child process and return what it printed: HDF5 may
    loop forever on a damaged file, in C code no per-test timeout interrupts."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_truncated_file_is_refused_never_read_forever(tmp_path: Path) -> None:
    """A file shorter than its superblock records (a partial copy) is a
    FormatError naming both sizes, at open and at a read after it was cut:
    in SWMR read mode HDF5 does not check the size and loops on it."""
    path = tmp_path / "whole.h5"
    write(HDF5Store(path), SCHEMA, _frames(0, 3), times=True)
    whole = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole[:3000])
    later = tmp_path / "later.h5"
    later.write_bytes(whole)
    code = (
        "import os, snapsink\n"
        "try:\n"
        f"    snapsink.open({str(cut)!r})\n"
        "except snapsink.FormatError as exc:\n"
        "    print(exc)\n"
        f"t = snapsink.open({str(later)!r})\n"
        f"os.truncate({str(later)!r}, 3000)\n"
        "try:\n"
        "    print(t['v'][:])\n"
        "except snapsink.FormatError as exc:\n"
        "    print(exc)\n"
    )
    lines = _read_in_child(code).splitlines()
    assert len(lines) == 2, lines
    for where, line in zip((cut, later), lines, strict=True):
        assert line.startswith(f"{str(where)!r}: truncated HDF5 file"), line
        assert f"it holds 3000 bytes, its superblock records {len(whole)}" in line


def test_a_file_longer_than_its_superblock_records_opens(tmp_path: Path) -> None:
    """A live writer's file grows before its next flush records the size:
    longer than recorded is no truncation."""
    path = tmp_path / "long.h5"
    write(HDF5Store(path), SCHEMA, _frames(0, 3), times=True)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    assert snapsink.open(path)["v"][:].tolist() == [0.0, 1.0, 2.0]


def test_a_symbolic_link_to_a_store_opens(tmp_path: Path) -> None:
    """As an NpyDirectory's or a Zarr store's directory, the HDF5 file may be
    named through a symbolic link."""
    path = tmp_path / "real.h5"
    write(HDF5Store(path, group="g"), SCHEMA, _frames(0, 3), times=True)
    link = tmp_path / "link.h5"
    link.symlink_to(path)
    assert snapsink.open(link)["v"][:].tolist() == [0.0, 1.0, 2.0]
    assert snapsink.open(link, group="g").steps.tolist() == [0, 2, 4]
    assert snapsink.groups(link) == ["g"]


def test_a_store_written_through_a_symbolic_link_writes_its_target(tmp_path: Path) -> None:
    """mode "a" appends to the target, "w" replaces the target's contents (the
    link stays a link), "x" sees the target exists; a dangling link makes its
    target."""
    path = tmp_path / "scratch" / "real.h5"
    path.parent.mkdir()
    write(HDF5Store(path), SCHEMA, _frames(0, 2), times=True)
    link = tmp_path / "link.h5"
    link.symlink_to(path)
    write(HDF5Store(link, mode="a"), SCHEMA, _frames(2, 1), times=True)
    assert link.is_symlink() and snapsink.open(path)["v"][:].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(StoreExistsError, match="already exists"):
        HDF5Store(link, mode="x").open()
    write(HDF5Store(link, mode="w"), SCHEMA, _frames(5, 1), times=True)
    assert link.is_symlink() and snapsink.open(path)["v"][:].tolist() == [5.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.h5", "scratch"]
    dangling = tmp_path / "new.h5"
    dangling.symlink_to(tmp_path / "scratch" / "new.h5")
    write(HDF5Store(dangling), SCHEMA, _frames(0, 1), times=True)
    assert (tmp_path / "scratch" / "new.h5").is_file() and dangling.is_symlink()
    assert snapsink.open(dangling)["v"][:].tolist() == [0.0]


def test_a_corrupt_root_store_gives_no_group_hint(tmp_path: Path) -> None:
    """The root the only snapsink group: nothing to pass as group=."""
    path = tmp_path / "bad.h5"
    write(HDF5Store(path), SCHEMA, _frames(0, 3), times=True)
    with h5py.File(path, "r+") as f:
        del f["steps"]
    with pytest.raises(FormatError, match="dataset 'steps' is missing") as info:
        snapsink.open(path)
    assert "pass group" not in str(info.value) and "snapsink groups are" not in str(info.value)


def test_to_xarray_and_iteration(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    write(
        HDF5Store(path),
        Schema({"x": Field("float64", (2,))}),
        [Frame(i, 0.1 * i, {"x": np.array([i, -i], np.float64)}) for i in range(4)],
        times=True,
    )
    ds = snapsink.open(path).to_xarray()
    assert ds["x"].dims == ("frame", "x_dim_0") and ds["step"].values.tolist() == [0, 1, 2, 3]
    assert [fr["x"].tolist() for fr in snapsink.open(path)] == [[i, -i] for i in range(4)]


def test_info_describes_hdf5_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from snapsink.cli import main

    path = tmp_path / "i.h5"
    write(HDF5Store(path, group="traj"), SCHEMA, _frames(0, 3), times=True)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "HDF5 file" in out and "groups     : traj" in out and "frames     : 3" in out


def test_import_snapsink_does_not_import_h5py() -> None:
    code = (
        "import sys, snapsink\n"
        "assert 'h5py' not in sys.modules, 'h5py loaded by import snapsink'\n"
        "s = snapsink.HDF5Store\n"
        "assert 'h5py' not in sys.modules and s.__module__ == 'snapsink'\n"
        "assert 'HDF5Store' in snapsink.__all__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the reader's file handles ---------------------------------------------------------
def _open_fds_under(root: Path) -> list[str]:
    """This process's open descriptors on files under ``root``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


def _small_store(path: Path, k: int) -> None:
    schema = Schema({"x": Field("float64", (3,))})
    frames = [Frame(i, None, {"x": np.full(3, float(k * 10 + i))}) for i in range(4)]
    write(HDF5Store(path), schema, frames, times=False)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_dropped_trajectory_closes_its_file_and_live_ones_keep_reading(tmp_path: Path) -> None:
    """Each HDF5 file read stays open while a trajectory of it lives, and no
    longer: every file ever read used to stay open until the process exited
    (a reliability soak of a few thousand opens ran out of descriptors)."""
    paths = [tmp_path / f"s{k}.h5" for k in range(12)]
    for k, p in enumerate(paths):
        _small_store(p, k)
    keep = open_hdf5(paths[0])
    twin = open_hdf5(paths[0])
    for k, p in enumerate(paths[1:], 1):
        t = open_hdf5(p)
        assert t["x"][3].tolist() == [k * 10 + 3.0] * 3
        del t
    assert _open_fds_under(tmp_path) == [str(paths[0])]  # one handle, two readers
    del twin
    assert keep["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]  # still open, still read
    assert list_hdf5_groups(paths[5]) == [""]  # an operation alone: closed after it
    assert _open_fds_under(tmp_path) == [str(paths[0])]
    del keep
    assert _open_fds_under(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_failed_opens_leave_no_file_open(tmp_path: Path) -> None:
    import gc

    bare = tmp_path / "bare.h5"
    h5py.File(bare, "w").close()  # HDF5, but no snapsink group
    for _ in range(20):
        with pytest.raises(FormatError):
            open_hdf5(bare)
    gc.collect()  # (an exception's traceback may keep the failed reader in a cycle)
    _small_store(tmp_path / "s.h5", 1)
    assert open_hdf5(tmp_path / "s.h5")["x"][0].tolist() == [10.0] * 3
    assert _open_fds_under(tmp_path) == []


# -- ranks (probe D) ---------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_field_of_more_than_31_dimensions_is_refused_before_any_frame(
    tmp_path: Path, writer: str
) -> None:
    """An HDF5 dataset holds 32 dimensions, one of them the frames: a field of
    32 is refused at the write that fixes the schema (nothing written, the sink
    usable); 31, ragged or not, is stored and read back."""
    path = tmp_path / "run.h5"
    store = snapsink.HDF5Store(path)
    with pytest.raises(SchemaError, match=r"field 'x': expected at most 31 dimensions"):
        store.check_schema(Schema({"x": Field("f8", (None,) + (1,) * 31)}))
    fixed = np.arange(2.0).reshape((2,) + (1,) * 30)
    with snapsink.SyncSink(store, writer=writer) as sink:
        with pytest.raises(SchemaError, match=r"field 'x': expected at most 31 dimensions"):
            sink.write({"x": np.zeros((1,) * 32), "e": 0.0}, step=0)
        for i in range(2):
            sink.write({"x": fixed + i, "e": float(i)}, step=i + 1)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [1, 2]
    np.testing.assert_array_equal(traj["x"][:], np.stack([fixed, fixed + 1]))
    ragged = Schema({"r": Field("i4", (None,) + (1,) * 30)})
    store = snapsink.HDF5Store(tmp_path / "ragged.h5")
    with snapsink.SyncSink(store, writer="thread", schema=ragged) as sink:
        sink.write({"r": np.full((3,) + (1,) * 30, 7, np.int32)}, step=0)
    assert snapsink.open(tmp_path / "ragged.h5")["r"][0].shape == (3,) + (1,) * 30


def test_a_static_array_of_more_than_32_dimensions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(ConfigError, match=r"static 'g': expected at most 32 dimensions"):
        snapsink.HDF5Store(path, static={"g": np.zeros((1,) * 33)})
    store = snapsink.HDF5Store(path, static={"g": np.ones((1,) * 32)})
    with pytest.raises(ConfigError, match=r"static 'h': expected at most 32 dimensions"):
        store.add_metadata(static={"h": np.zeros((1,) * 33)})
    with snapsink.SyncSink(store, writer="thread") as sink:
        sink.write({"e": 1.0}, step=0)
    traj = snapsink.open(path)
    assert sorted(traj.static) == ["g"]
    assert np.asarray(traj.static["g"]).shape == (1,) * 32
