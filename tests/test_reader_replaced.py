"""A Trajectory whose store was replaced (``mode="w"``) since it was opened
refuses to read (FormatError), never returns the new run's bytes as the old
run's fields; a store that only grew (``mode="a"``, another group) reads on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import FormatError

REPLACED = "was replaced since it was opened"


def _store(kind: str, tmp_path: Path, mode: str = "x") -> tuple[Any, Path, str | None]:
    """(store, path, group) of one format; ``*-group``: a group beside another."""
    if kind == "npy":
        path = tmp_path / "run"
        return snapsink.NpyDirectory(path, mode=mode), path, None
    if kind.startswith("zarr"):
        path, group = tmp_path / "run.zarr", ("a" if kind == "zarr-group" else None)
        return snapsink.ZarrStore(path, mode=mode, group=group), path, group
    path, group = tmp_path / "run.h5", ("a" if kind == "h5-group" else None)
    return snapsink.HDF5Store(path, mode=mode, group=group), path, group


def _write(store: Any, value: Callable[[int], Any], steps: range) -> None:
    with snapsink.SyncSink(store, writer="thread") as sink:
        for i in steps:
            sink.write({"x": value(i)}, step=i)


KINDS = ["npy", "zarr", "zarr-group", "h5", "h5-group"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same_schema", [False, True])
def test_a_replaced_store_is_refused(kind: str, same_schema: bool, tmp_path: Path) -> None:
    store, path, group = _store(kind, tmp_path)
    if group is not None:  # another group in the same store, left alone
        _write(_store(kind.split("-")[0], tmp_path)[0], lambda i: np.zeros(1), range(1))
    _write(store, lambda i: np.full(3, 1.5 + i), range(3))
    traj = snapsink.open(path, group=group)
    view = traj["x"]
    assert traj["x"][2].tolist() == [3.5] * 3
    # the run restarted: more frames, at the same steps when the schema is the same
    if same_schema:
        new, steps = (lambda i: np.full(3, -1.0 - i)), range(6)
    else:
        new, steps = (lambda i: np.full(3, 7 + i, np.int64)), range(100, 106)
    _write(_store(kind, tmp_path, mode="w")[0], new, steps)
    for read in (lambda: traj["x"][0], lambda: view[1], lambda: traj.frame(2), traj.refresh):
        with pytest.raises(FormatError, match=REPLACED):
            read()
    # opened again, the new run reads back
    again = snapsink.open(path, group=group)
    assert again.steps.tolist() == list(steps)
    np.testing.assert_array_equal(again["x"][:], np.stack([new(i) for i in steps]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_that_grew_reads_on(kind: str, tmp_path: Path) -> None:
    store, path, group = _store(kind, tmp_path)
    _write(store, lambda i: np.full(3, float(i)), range(3))
    traj = snapsink.open(path, group=group)
    assert traj["x"][1].tolist() == [1.0] * 3
    _write(_store(kind, tmp_path, mode="a")[0], lambda i: np.full(3, float(i)), range(3, 5))
    if group is not None:  # and another writer adds a group to the store
        other = snapsink.HDF5Store if kind.startswith("h5") else snapsink.ZarrStore
        _write(other(path, group="b"), lambda i: np.ones(2), range(2))
    assert traj["x"][2].tolist() == [2.0] * 3
    assert len(traj.refresh()) == 5
    assert traj.steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(traj["x"][:], np.repeat(np.arange(5.0), 3).reshape(5, 3))


def test_readers_hold_at_most_their_share_of_open_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reader pins its store's steps.npy, up to a budget of the process's
    open files (a quarter of the limit): beyond it, readers open and read as
    before, holding nothing; a pinned one still sees a replacement."""
    import os

    from snapsink.stores import _npyread

    monkeypatch.setattr(_npyread._Pins, "budget", _npyread._Pins.held + 2)
    for i in range(5):
        _write(snapsink.NpyDirectory(tmp_path / f"r{i}"), float, range(2))
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    readers = [snapsink.open(tmp_path / f"r{i}") for i in range(5)]
    assert [r["x"][:].tolist() for r in readers] == [[0.0, 1.0]] * 5
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) - before <= 2
    _write(snapsink.NpyDirectory(tmp_path / "r0", mode="w"), float, range(3))
    with pytest.raises(FormatError, match=REPLACED):
        readers[0]["x"][:]


def test_too_many_open_files_is_not_a_damaged_store() -> None:
    import errno

    from snapsink.stores._npyfile import unreadable

    with pytest.raises(OSError, match="Too many") as info:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise unreadable("x/metadata.json", exc) from exc
    assert not isinstance(info.value, FormatError)
    assert isinstance(unreadable("x", OSError(errno.EIO, "I/O error")), FormatError)


def test_a_zarr_object_store_reopened_for_a_dask_task_refuses_another_run() -> None:
    """A store that is not a local directory travels with the task and is
    reopened where the task runs: as a refresh of the graph's reader would, the
    reopen refuses a run with another schema or fewer frames (such a store
    records no identity of its own)."""
    import zarr

    memory = zarr.storage.MemoryStore()
    _write(snapsink.ZarrStore(memory), lambda i: np.full(3, float(i)), range(5))
    opener = snapsink.open(memory)._source.opener()
    assert opener().read_rows("x", 0, 5)[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    for value, steps in ((lambda i: np.full(3, 10.0 + i), range(3)), (int, range(8))):
        _write(snapsink.ZarrStore(memory, mode="w"), value, steps)
        with pytest.raises(FormatError, match=REPLACED):
            opener()
    again = snapsink.open(memory)._source.opener()()
    assert again.read_rows("x", 0, 8).tolist() == list(range(8))
