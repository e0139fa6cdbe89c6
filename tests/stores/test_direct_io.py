"""Direct I/O (stores/_pwrite.py): runs of rows of 1 MiB or more, page aligned,
go to the disk from the writer's memory; everything else, and every file system
that refuses O_DIRECT, goes through the page cache. The bytes read back are the
same either way, bit for bit."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink._schema import Batch, Field, Frame, Schema
from snapsink._writer._shm import frame_layout
from snapsink.stores import _pwrite
from snapsink.stores._pwrite import (
    DIRECT_ALIGN,
    DIRECT_MIN_BYTES,
    DirectWriter,
    direct_eligible,
    page_aligned_empty,
)
from snapsink.stores.npy import NpyDirectory, open_npy
from snapsink.stores.zarr import ZarrStore

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")

MIB = 1 << 20


def takes_direct(where: Path) -> bool:
    """Whether the file system at ``where`` takes an aligned O_DIRECT write."""
    path = where / ".direct-probe"
    buf = page_aligned_empty((DIRECT_ALIGN,), np.dtype(np.uint8))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    try:
        os.pwrite(fd, buf, 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        path.unlink()


@pytest.fixture
def direct_dir(tmp_path: Path) -> Path:
    if not takes_direct(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    return tmp_path


@pytest.fixture
def count_direct(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many writes went direct (in this process), as a one-item list."""
    got = [0]
    real = DirectWriter.write

    def write(self: DirectWriter, fd: int, buffers: Any, offset: int) -> bool:
        went = real(self, fd, buffers, offset)
        got[0] += went
        return went

    monkeypatch.setattr(DirectWriter, "write", write)
    return got


def field_values(i: int, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """A frame's values: distinct per frame and per element, every bit pattern
    of a float32 possible (NaN payloads and signed zeros included)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 2**32, size=shape, dtype=np.uint32).view(np.float32)


def frames(n: int, shape: tuple[int, ...], first: int = 0) -> list[Frame]:
    return [
        Frame(i, 0.5 * i, {"u": field_values(i, shape), "e": np.float64(i) / 3})
        for i in range(first, first + n)
    ]


def aligned(fr: Frame) -> Frame:
    """The frame with its array in page-aligned memory, as a slot holds it."""
    u = page_aligned_empty(fr.fields["u"].shape, fr.fields["u"].dtype)
    u[...] = fr.fields["u"]
    return Frame(fr.step, fr.time, {**fr.fields, "u": u})


def check_npy(path: Path, expected: list[Frame]) -> None:
    traj = open_npy(path)
    assert len(traj) == len(expected)
    got = traj["u"][:]
    want = np.stack([f.fields["u"] for f in expected])
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()
    np.testing.assert_array_equal(traj["e"][:], [f.fields["e"] for f in expected])
    np.testing.assert_array_equal(traj.steps, [f.step for f in expected])
    # and numpy alone reads the same bytes
    assert np.load(path / "u.npy").view(np.uint32).tobytes() == want.view(np.uint32).tobytes()


# -- which writes may go direct -------------------------------------------------------
def test_only_large_aligned_runs_are_eligible() -> None:
    big = page_aligned_empty((MIB,), np.dtype(np.uint8))
    half = page_aligned_empty((MIB // 2,), np.dtype(np.uint8))
    assert direct_eligible([memoryview(big)], 0)
    assert direct_eligible([memoryview(half), memoryview(half)], 8 * DIRECT_ALIGN)
    assert not direct_eligible([memoryview(half)], 0)  # under DIRECT_MIN_BYTES
    assert not direct_eligible([memoryview(big)], 64)  # file offset
    assert not direct_eligible([memoryview(big)[64 : 64 + MIB // 2 * 2 - 4096]], 0)  # address
    assert not direct_eligible([memoryview(big)[: MIB - 64], memoryview(half)], 0)  # length
    assert DIRECT_MIN_BYTES == MIB


def test_slot_layouts_start_large_fields_on_a_page() -> None:
    schema = Schema(
        {
            "e": Field(np.float64, ()),
            "u": Field(np.float32, (256, 1024)),
            "k": Field(np.int8, (3,)),
            "r": Field(np.float64, (None, 1024)),
        }
    )
    layout, total = frame_layout(schema, [5])
    offsets = {name: off for name, _, off, _, _ in layout}
    assert offsets["u"] % 4096 == 0 and offsets["u"] >= 8
    assert offsets["r"] % 4096 == 0
    assert offsets["k"] % 64 == 0 and offsets["k"] < offsets["r"]
    assert total >= offsets["r"] + 5 * 8192
    # a thread writer's slot buffers too
    for shape, dtype in (((256, 1024), np.float32), ((3,), np.int8), ((4097,), np.uint8)):
        a = page_aligned_empty(shape, np.dtype(dtype))
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.nbytes < 4096 or a.ctypes.data % 4096 == 0


# -- NpyDirectory -----------------------------------------------------------------------
def test_npy_writes_large_aligned_frames_direct_bit_exact(
    direct_dir: Path, count_direct: list[int]
) -> None:
    schema = Schema({"u": Field(np.float32, (512, 512)), "e": Field(np.float64, ())})
    written = frames(12, (512, 512))
    store = NpyDirectory(direct_dir / "run", commit_every=4)
    store.open()
    store.prepare(schema, times=True)
    store.append(Batch([aligned(f) for f in written[:3]]))  # one 3 MiB run
    for f in written[3:]:
        store.append(Batch([aligned(f)]))
    store.close()
    assert count_direct[0] == 10  # every u run; never the 8-byte e rows
    check_npy(direct_dir / "run", written)

    # appending after a reopen goes direct as well, after the committed rows
    more = frames(3, (512, 512), first=12)
    store = NpyDirectory(direct_dir / "run", mode="a")
    store.open()
    store.prepare(schema, times=True)
    store.append(Batch([aligned(f) for f in more]))
    store.close()
    assert count_direct[0] == 11
    check_npy(direct_dir / "run", written + more)


def test_npy_unaligned_or_small_or_switched_off_goes_buffered(
    direct_dir: Path, count_direct: list[int]
) -> None:
    cases = [
        ("odd", (1000, 1000), {}, True),  # 4,000,000 bytes a row: not page sized
        ("small", (128, 512), {}, True),  # 256 KiB rows, one a batch
        ("off", (512, 512), {"direct_io": False}, True),
        ("unaligned-memory", (512, 512), {}, False),
    ]
    for name, shape, kw, align in cases:
        schema = Schema({"u": Field(np.float32, shape), "e": Field(np.float64, ())})
        written = frames(3, shape)
        store = NpyDirectory(direct_dir / name, **kw)
        store.open()
        store.prepare(schema, times=True)
        for f in written:
            if not align:  # the array 64 bytes past a page
                raw = page_aligned_empty((f.fields["u"].nbytes + 64,), np.dtype(np.uint8))
                u = raw[64:].view(np.float32).reshape(shape)
                u[...] = f.fields["u"]
                f = Frame(f.step, f.time, {**f.fields, "u": u})
            store.append(Batch([aligned(f) if align else f]))
        store.close()
        check_npy(direct_dir / name, written)
    assert count_direct[0] == 0


def test_npy_falls_back_when_the_file_system_refuses_direct_io(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a direct write (a file system without O_DIRECT, a stricter
    alignment): that write and every later one go through the page cache."""
    real = os.pwritev
    refused = []

    def pwritev(fd: int, buffers: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(_pwrite.os, "pwritev", pwritev)
    schema = Schema({"u": Field(np.float32, (512, 512)), "e": Field(np.float64, ())})
    written = frames(4, (512, 512))
    store = NpyDirectory(direct_dir / "run")
    store.open()
    store.prepare(schema, times=True)
    for f in written:
        store.append(Batch([aligned(f)]))
    store.close()
    assert len(refused) == 1  # tried once, then off for the file
    check_npy(direct_dir / "run", written)


def full_when_direct(real: Callable[[int, Any, int], int]) -> Callable[[int, Any, int], int]:
    """``real`` (a write of ``(fd, buffers, offset)``), failing with ENOSPC on a
    descriptor opened with ``O_DIRECT``: a disk that fills during a direct write."""

    def write(fd: int, buffers: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset)

    return write


def test_other_write_errors_are_raised_not_hidden(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk on a direct write is the store's error, as on a buffered one."""
    monkeypatch.setattr(_pwrite.os, "pwritev", full_when_direct(os.pwritev))
    schema = Schema({"u": Field(np.float32, (512, 512)), "e": Field(np.float64, ())})
    store = NpyDirectory(direct_dir / "run")
    store.open()
    store.prepare(schema, times=True)
    with pytest.raises(OSError, match="No space left") as info:
        store.append(Batch([aligned(frames(1, (512, 512))[0])]))
    assert info.value.errno == errno.ENOSPC
    store.close()
    assert len(open_npy(direct_dir / "run")) == 0


def test_direct_io_must_be_a_bool(tmp_path: Path) -> None:
    for cls in (NpyDirectory, ZarrStore):
        expected = r"direct_io: expected True or False, got 'no'"
        with pytest.raises(snapsink.ConfigError, match=expected):
            cls(tmp_path / "s", direct_io="no")  # type: ignore[call-arg, arg-type]
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_sinks_write_large_fields_through_either_writer_bit_exact(
    direct_dir: Path, writer: str
) -> None:
    """A scalar before the large field in the schema: the slot still starts the
    large field on a page, and the frames read back bit for bit."""
    written = frames(10, (512, 512))
    schema = Schema({"e": Field(np.float64, ()), "u": Field(np.float32, (512, 512))})
    with snapsink.SyncSink(
        NpyDirectory(direct_dir / "run"), schema=schema, writer=writer, capacity=4
    ) as sink:
        for f in written:
            sink.write(f.fields, step=f.step, time=f.time)
    check_npy(direct_dir / "run", written)


# -- ZarrStore --------------------------------------------------------------------------
def test_zarr_rows_in_place_go_direct_bit_exact(direct_dir: Path, count_direct: list[int]) -> None:
    import zarr

    written = frames(8, (512, 512))
    with snapsink.SyncSink(
        ZarrStore(direct_dir / "run.zarr", chunk_frames=4), writer="thread", capacity=4
    ) as sink:
        for f in written:
            sink.write(f.fields, step=f.step, time=f.time)
    assert count_direct[0] > 0
    got = zarr.open_group(direct_dir / "run.zarr", mode="r")["u"][:]
    want = np.stack([f.fields["u"] for f in written])
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()
    traj = snapsink.open(direct_dir / "run.zarr")
    np.testing.assert_array_equal(traj["e"][:], [f.fields["e"] for f in written])


# -- ZarrStore's encoded blocks: encoded by the workers, written direct by one I/O thread
@pytest.fixture
def direct_blocks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread of each encoded block's direct write (in this process)."""
    import threading

    from snapsink.stores import _zarrio

    threads: list[str] = []
    real = _zarrio.write_file_direct

    def write_file_direct(path: Path, buf: Any, length: int, **kw: Any) -> bool:
        threads.append(threading.current_thread().name)
        return real(path, buf, length, **kw)

    monkeypatch.setattr(_zarrio, "write_file_direct", write_file_direct)
    return threads


def write_zstd(path: Path, written: list[Frame], direct_io: bool = True) -> None:
    import zarr

    store = ZarrStore(
        path, chunk_frames=2, compressors=zarr.codecs.ZstdCodec(level=1), direct_io=direct_io
    )
    with snapsink.SyncSink(store, writer="thread", capacity=4) as sink:
        for f in written:
            sink.write(f.fields, step=f.step, time=f.time)


def check_zarr(path: Path, written: list[Frame]) -> None:
    import zarr

    got = zarr.open_group(path, mode="r")["u"][:]
    want = np.stack([f.fields["u"] for f in written])
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()
    np.testing.assert_array_equal(snapsink.open(path).steps, [f.step for f in written])


def test_zarr_encoded_blocks_go_direct_from_the_io_thread_bit_exact(
    direct_dir: Path, direct_blocks: list[str]
) -> None:
    # random bits: zstd keeps each 2 MiB block about 2 MiB, over DIRECT_MIN_BYTES;
    # 7 frames: 3 whole blocks and, at the close, one partial block
    written = frames(7, (512, 512))
    write_zstd(direct_dir / "run.zarr", written)
    assert len(direct_blocks) == 4
    assert set(direct_blocks) == {"snapsink-zarr-io_0"}
    check_zarr(direct_dir / "run.zarr", written)
    # each chunk file holds exactly the bytes a buffered write stores (no page
    # padding left behind)
    write_zstd(direct_dir / "buffered.zarr", written, direct_io=False)
    assert len(direct_blocks) == 4
    chunks = sorted(
        p.relative_to(direct_dir / "run.zarr")
        for p in (direct_dir / "run.zarr" / "u" / "c").rglob("*")
        if p.is_file()
    )
    assert len(chunks) == 4
    for rel in chunks:
        assert (direct_dir / "run.zarr" / rel).read_bytes() == (
            direct_dir / "buffered.zarr" / rel
        ).read_bytes()


def test_zarr_encoded_blocks_fall_back_when_direct_io_is_refused(
    direct_dir: Path, direct_blocks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapsink.stores import _zarrio

    real = os.open
    refused = []

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(_zarrio.os, "open", refusing_open)
    written = frames(7, (512, 512))
    write_zstd(direct_dir / "run.zarr", written)
    assert len(refused) == 1  # tried once, then buffered for the rest of the run
    check_zarr(direct_dir / "run.zarr", written)
    assert not list((direct_dir / "run.zarr").rglob("*.partial"))


def test_zarr_encoded_block_write_errors_reach_the_producer(
    direct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapsink.stores import _zarrio

    monkeypatch.setattr(_zarrio, "pwrite_all", full_when_direct(_zarrio.pwrite_all))
    with pytest.raises(snapsink.WriterError, match="No space left") as info:
        write_zstd(direct_dir / "run.zarr", frames(7, (512, 512)))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert len(snapsink.open(direct_dir / "run.zarr")) < 7  # the last commit stands


def test_no_encoded_block_goes_direct_on_tmpfs(direct_blocks: list[str]) -> None:
    from snapsink.stores._pwrite import memory_backed

    shm = Path("/dev/shm")
    mounts = Path("/proc/mounts").read_text().split("\n") if Path("/proc/mounts").exists() else []
    if not any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts if line):
        pytest.skip("no tmpfs at /dev/shm")
    assert memory_backed(shm) and memory_backed(shm / "not" / "yet")
    assert not memory_backed("/proc")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as d:
        written = frames(3, (512, 512))
        write_zstd(Path(d) / "run.zarr", written)
        check_zarr(Path(d) / "run.zarr", written)
    assert direct_blocks == []  # the same copy either way there: buffered, in the workers
