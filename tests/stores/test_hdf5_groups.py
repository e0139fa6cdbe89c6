"""HDF5Store: runs in groups of one file. mode="w" deletes only what snapsink
owns (never another writer's run, never a user's object), names never clash
with the store's own datasets or the H5MD tree, and a reader of the writer's
process never deadlocks it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import snapsink  # noqa: E402
from snapsink._errors import (  # noqa: E402
    ConfigError,
    SchemaError,
    StoreExistsError,
    StoreLockedError,
)
from snapsink._schema import Batch, Field, Frame, Schema  # noqa: E402
from snapsink.stores._hdf5file import FileLocks  # noqa: E402
from snapsink.stores._hdf5read import HANDLES  # noqa: E402
from snapsink.stores.hdf5 import HDF5Store  # noqa: E402

SCHEMA = Schema({"x": Field("f8", (2,))})


def _run(store: HDF5Store, values: list[float], close: bool = True) -> HDF5Store:
    store.open()
    store.prepare(SCHEMA, times=False)
    store.append(Batch([Frame(i, None, {"x": np.full(2, v)}) for i, v in enumerate(values)]))
    store.commit()
    if close:
        store.close()
    return store


def _x(path: Path, group: str | None) -> list[float]:
    return snapsink.open(path, group=group)["x"][:, 0].tolist()


# -- 1: mode="w" and the runs nested in a group -----------------------------------------
@pytest.mark.parametrize(("outer", "inner"), [(None, "g1"), ("run", "run/b")])
def test_w_never_deletes_a_nested_run_another_writer_holds(
    tmp_path: Path, outer: str | None, inner: str
) -> None:
    """mode="w" on the root (or a group) used to delete the runs nested in it
    while their writers ran; their claims are now taken first, and a held one
    refuses the replacement before anything is deleted."""
    path = tmp_path / "f.h5"
    _run(HDF5Store(path, group=outer), [1.0])
    live = _run(HDF5Store(path, group=inner), [5.0, 6.0], close=False)
    with pytest.raises(StoreLockedError, match=f"would delete group '{inner}'"):
        HDF5Store(path, "w", group=outer).open()
    live.append(Batch([Frame(2, None, {"x": np.full(2, 7.0)})]))
    live.close()  # its writer carries on, nothing lost
    assert _x(path, inner) == [5.0, 6.0, 7.0]
    assert _x(path, outer) == [1.0]
    # no writer holds it: the run nested in the replaced group goes with it (as Zarr)
    _run(HDF5Store(path, "w", group=outer), [2.0])
    assert _x(path, outer) == [2.0]
    assert inner not in snapsink.groups(path)


@pytest.mark.parametrize("group", [None, "run"])
def test_w_refuses_foreign_objects_below_the_group(tmp_path: Path, group: str | None) -> None:
    path = tmp_path / "f.h5"
    _run(HDF5Store(path, group=group), [1.0, 2.0])
    _run(HDF5Store(path, group=f"{group}/sub/b" if group else "sub/b"), [3.0])
    where = f"{group}/sub" if group else "sub"
    with h5py.File(path, "r+") as f:
        f[f"{where}/notes"] = np.arange(3)  # a user's dataset beside the nested run
    with pytest.raises(StoreExistsError, match="sub/notes"):
        HDF5Store(path, "w", group=group).open()
    assert _x(path, group) == [1.0, 2.0]  # nothing deleted
    with h5py.File(path, "r") as f:
        assert f[f"{where}/notes"][...].tolist() == [0, 1, 2]
        assert f"{where}/b" in f


def test_a_nested_run_keeps_out_of_its_runs_names(tmp_path: Path) -> None:
    """A run nested in a run may not take a name that run holds or will hold;
    the outer run's prepare used to delete a nested run at its field's name."""
    path = tmp_path / "f.h5"
    outer = HDF5Store(path, group="run")
    outer.open()  # no schema yet
    with pytest.raises(StoreExistsError, match="inside the snapsink run at 'run'"):
        HDF5Store(path, group="run/steps/x").open()
    _run(HDF5Store(path, group="run/x"), [4.0])
    with pytest.raises(SchemaError, match="dataset 'x' cannot be made: a group"):
        outer.prepare(SCHEMA, times=False)
    outer.close()
    assert _x(path, "run/x") == [4.0]


# -- 2: field names and the store's own datasets ----------------------------------------
@pytest.mark.parametrize("name", ["snapsink.commit", "snapsink.dropped", "snapsink.other"])
def test_fields_never_take_the_stores_own_datasets(tmp_path: Path, name: str) -> None:
    """A nested field {"snapsink": {"commit": ...}} used to replace the commit
    record; the store then never opened again."""
    path = tmp_path / "f.h5"
    with pytest.raises(SchemaError, match=f"field '{name}'.*store's own"):
        with snapsink.SyncSink(HDF5Store(path), writer="thread") as sink:
            sink.write({"snapsink": {name.split(".")[1]: np.zeros(3, np.int64)}}, step=0)
    traj = snapsink.open(path)
    assert len(traj) == 0
    with h5py.File(path, "r") as f:
        assert f["snapsink.commit"][...].tolist() == [0, 0, 1]


def test_h5md_fields_in_the_root_never_take_the_tree(tmp_path: Path) -> None:
    store = HDF5Store(tmp_path / "f.h5", layout="h5md", group="/", h5md={"position": "p"})
    for name in ("particles", "h5md", "observables"):
        schema = Schema({"p": Field("f4", (2, 3)), name: Field("f8", (2,))})
        with pytest.raises(SchemaError, match=f"field '{name}'.*H5MD tree"):
            store.check_schema(schema)
    # in a group of its own, the name is free
    HDF5Store(tmp_path / "g.h5", layout="h5md", h5md={"position": "p"}).check_schema(schema)


# -- 6: groups that clash -----------------------------------------------------------------
@pytest.mark.parametrize("group", ["h5md", "particles", "observables", "particles/all", "/h5md"])
def test_h5md_group_inside_the_tree_is_refused(tmp_path: Path, group: str) -> None:
    with pytest.raises(ConfigError, match=f"group '{group}'.*H5MD tree"):
        HDF5Store(tmp_path / "f.h5", layout="h5md", group=group, h5md={"position": "p"})
    assert not (tmp_path / "f.h5").exists()


def test_a_group_inside_a_users_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "user.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["mine"] = np.arange(5)
    for mode in "xwa":
        with pytest.raises(StoreExistsError, match="'mine' is a dataset"):
            HDF5Store(path, mode, group="mine/x").open()
    for mode, error, doing in [
        ("x", StoreExistsError, "write into"),
        ("w", StoreExistsError, "replace"),
        ("a", snapsink.FormatError, "append to"),
    ]:  # the dataset itself named as the group: not "already exists"
        with pytest.raises(error, match=f"not a snapsink store .*refusing to {doing} it"):
            HDF5Store(path, mode, group="mine").open()
    with h5py.File(path, "r") as f:
        assert list(f) == ["mine"]
        assert f["mine"][...].tolist() == [0, 1, 2, 3, 4]


def test_h5md_w_never_deletes_another_runs_tree(tmp_path: Path) -> None:
    """mode="w" on an H5MD store used to remove any H5MD tree of the file,
    another group's run's included."""
    path = tmp_path / "f.h5"
    m = {"position": "p"}
    store = HDF5Store(path, layout="h5md", h5md=m)
    store.open()
    store.prepare(Schema({"p": Field("f4", (2, 3))}), times=False)
    store.append(Batch([Frame(0, None, {"p": np.ones((2, 3), np.float32)})]))
    store.close()
    with pytest.raises(StoreExistsError, match=r"H5MD tree .* is not this group's"):
        HDF5Store(path, "w", layout="h5md", h5md=m, group="other").open()
    with h5py.File(path, "r") as f:
        assert f["particles/all/position/value"][...].tolist() == [[[1.0] * 3] * 2]


# -- 4: a reader of the writer's process ---------------------------------------------------
def _blocked_on(path: Path) -> bool:
    """Whether a lock request waits on the file (``/proc/locks``, ``->``)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as fh:
        return any("->" in line and f":{ino} " in line for line in fh)


def test_a_reader_waiting_for_a_session_never_blocks_the_writer(tmp_path: Path) -> None:
    """A writer thread takes the session lock, then closes this process's
    readers' handle (HANDLES.release); a reader used to wait for the session
    lock while holding HANDLES' lock: each waited for the other for ever."""
    if not os.path.exists("/proc/locks"):
        pytest.skip("needs /proc/locks")
    path = tmp_path / "f.h5"
    _run(HDF5Store(path), [1.0, 2.0])
    fd = os.open(path, os.O_RDWR)
    got: list[float] = []
    try:
        with FileLocks(fd, "test").session():  # as a writer thread's session
            reader = threading.Thread(target=lambda: got.extend(_x(path, None)), daemon=True)
            reader.start()
            for _ in range(200_000):  # until the reader waits for the session
                if _blocked_on(path) or not reader.is_alive():
                    break
            release = threading.Thread(target=HANDLES.release, args=(str(path),), daemon=True)
            release.start()
            release.join(timeout=5)
            assert not release.is_alive(), "the writer's release waited for the reader"
        reader.join(timeout=10)
        assert not reader.is_alive()
    finally:
        os.close(fd)
    assert got == [1.0, 2.0]


def test_a_reader_in_a_thread_writers_process_reads_between_its_sessions(
    tmp_path: Path,
) -> None:
    """Each session of a writer thread closes the process's read handles (HDF5
    opens a file once per process), between any two calls of a reader: the
    reader reads again on a fresh handle, never a spurious FormatError and
    never a false 'replaced'."""
    path = tmp_path / "f.h5"
    seen = []
    with snapsink.SyncSink(HDF5Store(path, commit_every=1), writer="thread") as sink:
        for i in range(300):
            sink.write({"x": np.full(4, i, np.float32)}, step=i)
            if i:
                traj = snapsink.open(path)
                seen.append(len(traj))
                if len(traj):
                    assert traj["x"][-1].tolist() == [float(len(traj) - 1)] * 4
    assert seen == sorted(seen) and seen[-1] >= 1
    assert snapsink.open(path).steps.tolist() == list(range(300))


def test_a_reader_opened_before_the_first_frame_follows_the_new_file(tmp_path: Path) -> None:
    """A new store's writer makes its file anew at the first prepare (a new
    inode): a reader opened before, which read nothing, follows it, while one
    that read frames refuses a file made again under it."""
    path = tmp_path / "f.h5"
    store = HDF5Store(path)
    store.open()
    early = snapsink.open(path)
    assert len(early) == 0 and early.schema is None
    store.prepare(SCHEMA, times=False)
    store.append(Batch([Frame(0, None, {"x": np.full(2, 1.5)})]))
    store.commit()
    early.refresh()
    assert early["x"][:, 0].tolist() == [1.5]
    store.close()
    _run(HDF5Store(path, "w"), [9.0])
    with pytest.raises(snapsink.FormatError, match="was replaced since it was opened"):
        early.refresh()


def test_reader_threads_beside_a_thread_writer_never_get_a_spurious_error(
    tmp_path: Path,
) -> None:
    """Two reader threads (one refreshing, one opening anew) beside a thread
    writer committing every few ms: a read a writer's session disturbed reads
    again, so every read sees consistent committed frames, and no error."""
    path = tmp_path / "f.h5"
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def read(keep: bool) -> None:
        traj = None
        while not stop.is_set():
            try:
                if traj is None or not keep:
                    traj = snapsink.open(path)
                else:
                    traj.refresh()
                n = len(traj)
                if n:
                    assert traj["x"][n - 1, 0] == traj.steps[n - 1]
                reads[0] += 1
            except Exception as exc:  # every error is the failure here
                errors.append(f"{type(exc).__name__}: {exc}")
                traj = None

    with snapsink.SyncSink(HDF5Store(path, commit_seconds=0.005), writer="thread") as sink:
        sink.write({"x": np.zeros(3)}, step=0)
        sink.flush()
        threads = [threading.Thread(target=read, args=(keep,)) for keep in (True, False)]
        for t in threads:
            t.start()
        i = 1
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            sink.write({"x": np.full(3, float(i))}, step=i)
            i += 1
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and reads[0] > 10


def test_two_writers_starting_at_once_on_a_new_file_both_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer A makes the new file whole and renames it over the path after B
    opened the path and before B claimed its group: B failed with 'the file
    was deleted or replaced' (4 of 20 runs of two processes, found by a
    probe). B now follows the path to A's file, where nothing of B's was."""
    path = tmp_path / "new.h5"
    a = HDF5Store(path, "a", group="a")
    b = HDF5Store(path, "a", group="b")
    real = FileLocks.claim
    raced: list[str] = []

    def claim(self: FileLocks, group: str) -> None:
        if group == "b" and not raced:
            raced.append(group)
            a.open()  # between B's open of the path and its claim
        real(self, group)

    monkeypatch.setattr(FileLocks, "claim", claim)
    _run(b, [5.0, 6.0])
    assert raced == ["b"]
    a.prepare(SCHEMA, times=False)
    a.append(Batch([Frame(0, None, {"x": np.full(2, 1.0)})]))
    a.close()
    assert _x(path, "a") == [1.0] and _x(path, "b") == [5.0, 6.0]
