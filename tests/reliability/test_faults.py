"""Disk faults: full disk, I/O errors on write and on fsync, permission denied,
the store's directory removed mid-run.

Every fault must reach the producer as ``snapsink.WriterError`` (chained to the
OSError) at its next write, at flush and at close; nothing may hang (the
per-test timeout turns a hang into a failure); and the store must still open
with every frame committed before the fault, bit-exact.

Faults are injected at the store's file-write boundary (``os.pwritev``, the
data sync, ``os.fsync``, ``os.open``, zarr's LocalStore ``_put``), filtered to
the files of the store under test; a real ENOSPC comes from a 1 MiB tmpfs when
this process may mount one (root on Linux), else that test skips.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr.codecs
import zarr.storage._local as zarr_local
from _check import assert_prefix
from _writer import SCHEMA, frame_for, step_of, time_of

import snapsink
from snapsink import Sink, WriterError
from snapsink.stores import _npyfile

pytestmark = pytest.mark.timeout(60)

FAULTS_INJECTED: list[str] = []


class Fault:
    """An OSError raised by a patched function while armed, for paths under ``root``."""

    def __init__(self, root: Path, err: int, name: str):
        self.root = str(root.resolve())
        self.err = err
        self.name = name
        self.armed = False
        self.hits = 0

    def on_path(self, path: object) -> None:
        if self.armed and os.fspath(path).startswith(self.root):  # type: ignore[arg-type]
            self.hits += 1
            FAULTS_INJECTED.append(self.name)
            raise OSError(self.err, f"{os.strerror(self.err)} (injected: {self.name})", path)

    def on_fd(self, fd: int) -> None:
        if self.armed:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return
            self.on_path(path)


def install(mp: pytest.MonkeyPatch, fault: Fault, where: str) -> None:
    """Patch the boundary named ``where`` to consult ``fault``."""
    if where == "pwritev":
        real_pwritev = os.pwritev

        def pwritev(fd: int, bufs: Any, offset: int) -> int:
            fault.on_fd(fd)
            return real_pwritev(fd, bufs, offset)

        mp.setattr(os, "pwritev", pwritev)
    elif where == "datasync":
        real_sync = _npyfile._datasync

        def datasync(fd: int) -> None:
            fault.on_fd(fd)
            real_sync(fd)

        mp.setattr(_npyfile, "_datasync", datasync)
    elif where == "fsync":
        real_fsync = os.fsync

        def fsync(fd: Any) -> None:
            fault.on_fd(fd if isinstance(fd, int) else fd.fileno())
            real_fsync(fd)

        mp.setattr(os, "fsync", fsync)
    elif where == "open":
        real_open = os.open

        def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            fault.on_path(path)
            return real_open(path, flags, *args, **kw)

        mp.setattr(os, "open", open_)
    elif where == "zarr_put":
        real_put = zarr_local._put

        def put(path: Path, value: Any, exclusive: bool = False) -> int:
            fault.on_path(path)
            return real_put(path, value, exclusive=exclusive)

        mp.setattr(zarr_local, "_put", put)
    else:  # pragma: no cover
        raise AssertionError(where)


def make_store(kind: str, path: Path, **kw: Any) -> Any:
    if kind == "hdf5":
        pytest.importorskip("h5py")
        ce = kw.pop("commit_every", 3)
        return snapsink.HDF5Store(path, chunk_frames=4, commit_every=ce, **kw)
    if kind == "npy":
        return snapsink.NpyDirectory(path, commit_every=kw.pop("commit_every", 3), **kw)
    if kind == "zarr-zstd":
        kw["compressors"] = zarr.codecs.ZstdCodec(level=1)
    return snapsink.ZarrStore(path, chunk_frames=4, commit_every=kw.pop("commit_every", 3), **kw)


async def run_into_fault(
    store: Any, arm: Callable[[], None], *, good: int = 10, limit: int = 2000
) -> tuple[int, BaseException]:
    """Write ``good`` frames and flush, ``arm()`` the fault, keep writing (and
    flushing) until the sink reports it. Checks the WriterError at write or
    flush, again at flush and write, and at close. Returns (committed, cause).
    """
    with pytest.raises(WriterError) as at_close:
        # The faults are monkeypatched into this process: the store runs here.
        async with Sink(store, capacity=2, schema=SCHEMA, writer="thread") as sink:
            for i in range(good):
                s = step_of(i)
                await sink.write(frame_for(s), step=s, time=time_of(s))
            await sink.flush()
            arm()
            with pytest.raises(WriterError) as first:
                for i in range(good, good + limit):
                    s = step_of(i)
                    await sink.write(frame_for(s), step=s, time=time_of(s))
                    if i % 4 == 0:
                        await sink.flush()
            cause = first.value.__cause__
            assert isinstance(cause, OSError), repr(first.value)
            with pytest.raises(WriterError) as again:
                await sink.flush()
            assert again.value.__cause__ is cause
            with pytest.raises(WriterError):
                await sink.write(frame_for(10**6), step=10**7, time=0.0)
    assert at_close.value.__cause__ is cause
    return good, cause


CASES = [
    # (store, boundary, errno)
    ("npy", "pwritev", errno.ENOSPC),
    ("npy", "pwritev", errno.EIO),
    ("npy", "datasync", errno.EIO),
    ("npy", "fsync", errno.EIO),
    ("npy", "fsync", errno.ENOSPC),
    ("zarr", "zarr_put", errno.ENOSPC),
    ("zarr", "zarr_put", errno.EIO),
    ("zarr", "fsync", errno.EIO),
    # compressed: partly filled chunks written by commits in the background
    ("zarr-zstd", "fsync", errno.EIO),
    # HDF5 writes through its own C library: the fault is injected at the
    # store's fsync (a real full disk: the tmpfs test below)
    ("hdf5", "fsync", errno.EIO),
    ("hdf5", "fsync", errno.ENOSPC),
]


@pytest.mark.parametrize(("kind", "where", "err"), CASES)
async def test_io_error_surfaces_and_committed_frames_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, where: str, err: int
) -> None:
    path = tmp_path / "store"
    fault = Fault(path, err, f"{kind}:{where}:{errno.errorcode[err]}")
    install(monkeypatch, fault, where)
    committed, cause = await run_into_fault(
        make_store(kind, path), lambda: setattr(fault, "armed", True)
    )
    assert isinstance(cause, OSError) and cause.errno == err
    assert "injected" in str(cause)
    assert fault.hits >= 1
    fault.armed = False
    n = assert_prefix(path, at_least=committed)
    # A fault at the data sync or at the metadata may never be followed by a
    # commit naming frames whose data was not made durable: nothing past the
    # last successful commit (the first `committed` frames, or a few more that
    # a periodic commit covered before the fault).
    assert n < committed + 2000
    # The store takes new frames after the fault is gone (mode="a").
    await append_more(kind, path, n, 5)
    assert assert_prefix(path) == n + 5


async def append_more(kind: str, path: Path, start: int, count: int) -> None:
    async with Sink(make_store(kind, path, mode="a"), schema=SCHEMA) as sink:
        for i in range(start, start + count):
            s = step_of(i)
            await sink.write(frame_for(s), step=s, time=time_of(s))


@pytest.mark.parametrize("kind", ["npy", "zarr", "zarr-zstd", "hdf5"])
async def test_failed_sync_is_never_followed_by_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """fsyncgate: after a failed fsync the kernel may have dropped the dirty
    pages and a retried fsync "succeeds"; a store must not then commit the
    frames that fsync covered. The fault here fails once, then heals."""
    path = tmp_path / "store"
    fault = Fault(path, errno.EIO, f"{kind}:sync-once:EIO")
    install(monkeypatch, fault, "datasync" if kind == "npy" else "fsync")
    if kind == "hdf5":
        pytest.importorskip("h5py")
    real_on_fd = fault.on_fd

    def once(fd: int) -> None:
        try:
            real_on_fd(fd)
        except OSError:
            fault.armed = False
            raise

    fault.on_fd = once  # type: ignore[method-assign]
    store = make_store(kind, path, commit_every=10**6)
    committed, _ = await run_into_fault(store, lambda: setattr(fault, "armed", True))
    assert fault.hits == 1
    assert assert_prefix(path) == committed


@pytest.mark.parametrize("kind", ["npy", "zarr"])
async def test_permission_denied_creating_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """We run as root, so chmod would not deny: the open is refused by a patch.
    The field files are created at the first frame, on the consumer: the
    producer gets a WriterError, and the store opens with no frame."""
    path = tmp_path / "store"
    fault = Fault(path, errno.EACCES, f"{kind}:open:EACCES")
    install(monkeypatch, fault, "open" if kind == "npy" else "zarr_put")
    store = make_store(kind, path)
    with pytest.raises(WriterError) as info:
        async with Sink(store, schema=SCHEMA, writer="thread") as sink:
            fault.armed = True
            for i in range(50):
                await sink.write(frame_for(step_of(i)), step=step_of(i), time=time_of(step_of(i)))
            await sink.flush()
    assert isinstance(info.value.__cause__, PermissionError)
    fault.armed = False
    assert assert_prefix(path) == 0


@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
async def test_permission_denied_opening_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Denied before the sink opens: entering the sink raises the PermissionError
    itself (like ``open()``), naming the path, and nothing is left half open."""
    path = tmp_path / "store"
    fault = Fault(tmp_path, errno.EACCES, f"{kind}:open-store:EACCES")
    fault.armed = True
    install(monkeypatch, fault, "zarr_put" if kind == "zarr" else "open")
    with pytest.raises(PermissionError, match="store"):
        async with Sink(make_store(kind, path), schema=SCHEMA, writer="thread"):
            pytest.fail("the sink must not open")
    assert fault.hits >= 1


@pytest.mark.parametrize("kind", ["npy", "zarr"])
async def test_store_directory_removed_mid_run(tmp_path: Path, kind: str) -> None:
    """Someone deletes the store while it is written: the writer must notice at
    its next commit (WriterError), not recreate a partial store that no reader
    can open, and never hang."""
    path = tmp_path / "store"
    FAULTS_INJECTED.append(f"{kind}:rmtree")
    with pytest.raises(WriterError) as info:
        async with Sink(make_store(kind, path, commit_every=2), schema=SCHEMA) as sink:
            for i in range(10):
                await sink.write(frame_for(step_of(i)), step=step_of(i), time=time_of(step_of(i)))
            await sink.flush()
            shutil.rmtree(path)
            for i in range(10, 40):
                await sink.write(frame_for(step_of(i)), step=step_of(i), time=time_of(step_of(i)))
            await sink.flush()
    assert isinstance(info.value.__cause__, OSError)
    # Nothing half-written was left behind to be mistaken for a store.
    if path.exists():
        with pytest.raises((snapsink.StoreNotFoundError, snapsink.FormatError)):
            snapsink.open(path)
    else:
        with pytest.raises(snapsink.StoreNotFoundError):
            snapsink.open(path)


# -- a real full disk (the tiny_fs fixture: tests/conftest.py) -----------------------
@pytest.mark.parametrize("kind", ["npy", "zarr", "hdf5"])
async def test_real_enospc_on_a_full_tmpfs(tiny_fs: Path, kind: str) -> None:
    path = tiny_fs / "store"
    FAULTS_INJECTED.append(f"{kind}:tmpfs:ENOSPC")
    big = snapsink.Schema({"x": snapsink.Field("float64", (64, 64))})  # 32 KiB a frame
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((64, 64)) for _ in range(8)]
    committed = 0
    with pytest.raises(WriterError) as info:
        async with Sink(make_store(kind, path, commit_every=4), schema=big) as sink:
            for i in range(200):  # 6 MiB: far past 1 MiB
                await sink.write({"x": frames[i % 8]}, step=i)
                if i % 4 == 3:
                    await sink.flush()
                    committed = i + 1
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(cause)
    # the disk's error names no file: the WriterError names the store
    assert str(path) in str(info.value), str(info.value)
    traj = snapsink.open(path)
    assert len(traj) >= committed > 0
    xs = traj["x"][:]
    for i in range(len(traj)):
        assert xs[i].tobytes() == frames[i % 8].tobytes()
    np.testing.assert_array_equal(traj.steps, np.arange(len(traj)))


def test_faults_were_injected() -> None:
    """Keeps the figure honest: the tests above did inject (run last in file)."""
    if FAULTS_INJECTED:
        assert len(set(FAULTS_INJECTED)) >= 8
