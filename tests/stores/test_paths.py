"""A store's local path names what it named when the store was made: an
``os.chdir`` of the simulation afterwards moves nothing (NpyDirectory,
ZarrStore, HDF5Store; in a writer thread and in a writer process)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.storage import LocalStore

import snapsink
from snapsink import HDF5Store, NpyDirectory, ZarrStore

#: kind -> (the store's relative name, how to make it)
KINDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "npy": ("run", NpyDirectory),
    "zarr": ("run.zarr", ZarrStore),
    # a zarr LocalStore the user made on a relative root
    "zarr-localstore": ("run.zarr", lambda root, **kw: ZarrStore(LocalStore(root), **kw)),
    "hdf5": ("run.h5", HDF5Store),
}
WRITERS = ["thread", "process"]


def _frames(seed: int, n: int) -> list[dict[str, np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(3)} for _ in range(n)]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: a file's bytes, None for a directory."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def cwd_back() -> Iterator[None]:
    """The tests change directory; the suite runs in one process."""
    before = os.getcwd()
    try:
        yield
    finally:
        os.chdir(before)


def _check(where: Path, frames: list[dict[str, np.ndarray[Any, Any]]]) -> None:
    traj = snapsink.open(where)
    assert traj.steps.tolist() == list(range(len(frames)))
    got = np.asarray(traj["x"][:])
    assert got.tobytes() == np.stack([f["x"] for f in frames]).tobytes()  # bit-exact


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_relative_path_keeps_its_directory_after_chdir(
    tmp_path: Path, kind: str, writer: str, cwd_back: None
) -> None:
    """Made in A with a relative path, written after a chdir to B: the frames
    are in A, and B's store of the same name (someone's earlier run) is
    untouched; the writer thread wrote into B (the zarr lock stayed in A,
    replacing B's frames despite mode "x"), or failed."""
    if kind == "hdf5":
        pytest.importorskip("h5py")
    name, make = KINDS[kind]
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    earlier = _frames(1, 4)
    with snapsink.SyncSink(make(str(b / name)), writer="thread") as sink:
        for i, f in enumerate(earlier):
            sink.write(f, step=i)
    b_before = _tree(b)

    frames = _frames(2, 6)
    os.chdir(a)
    store = make(name, commit_every=2)
    with snapsink.SyncSink(store, writer=writer) as sink:
        sink.write(frames[0], step=0)
        os.chdir(b)  # the simulation changes directory
        for i, f in enumerate(frames[1:], 1):
            sink.write(f, step=i)

    _check(a / name, frames)
    assert _tree(b) == b_before  # nothing created in B, its store untouched
    _check(b / name, earlier)
    assert str(a / name) in repr(store)  # the directory it means, in full


@pytest.mark.parametrize("writer", WRITERS)
def test_a_file_url_names_its_local_directory(tmp_path: Path, writer: str, cwd_back: None) -> None:
    """ZarrStore("file:///.../run.zarr") writes that directory; zarr's
    LocalStore took the URL for a relative path (a directory "file:" in the
    working directory)."""
    os.chdir(tmp_path)
    where = tmp_path / "data" / "run.zarr"
    frames = _frames(3, 3)
    with snapsink.SyncSink(ZarrStore(f"file://{where}"), writer=writer) as sink:
        for i, f in enumerate(frames):
            sink.write(f, step=i)
    _check(where, frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
def test_a_reader_opened_by_a_relative_path_reads_after_chdir(
    tmp_path: Path, kind: str, cwd_back: None
) -> None:
    """snapsink.open("run"), then os.chdir: the Trajectory reads (and
    refreshes) the store it opened, not whatever the name means now."""
    if kind == "hdf5":
        pytest.importorskip("h5py")
    name, make = KINDS[kind]
    frames = _frames(4, 5)
    with snapsink.SyncSink(make(str(tmp_path / name)), writer="thread") as sink:
        for i, f in enumerate(frames):
            sink.write(f, step=i)
    os.chdir(tmp_path)
    traj = snapsink.open(name)
    os.chdir(tmp_path.parent)
    traj.refresh()
    assert np.asarray(traj["x"][:]).tobytes() == np.stack([f["x"] for f in frames]).tobytes()
    assert traj.steps.tolist() == list(range(5))


def test_open_reads_a_file_url(tmp_path: Path) -> None:
    """snapsink.open takes the file:// URL a ZarrStore was made with."""
    where = tmp_path / "run.zarr"
    frames = _frames(5, 2)
    with snapsink.SyncSink(ZarrStore(f"file://{where}"), writer="thread") as sink:
        for i, f in enumerate(frames):
            sink.write(f, step=i)
    assert snapsink.open(f"file://{where}").steps.tolist() == [0, 1]
