"""Spill under failure: a spill write that fails takes nothing; a spilled
backlog costs constant memory; what a killed sink spilled is stored (writer
process) or cleaned up by the next sink (thread); an unusable spill directory
is a ConfigError at open; the writer's progress read torn never publishes a
spilled frame twice; each spilled frame read is the one named, and segments
rotate and go while the writer drains; max_bytes bounds the bytes in the spill
directory; a relative spill directory stays put through an os.chdir.
"""

from __future__ import annotations

import errno
import gc
import itertools
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from conftest import GatedStore
from process_stores import FailingNpy, GatedNpy, SlowNpy, TokenNpy
from snapsink import ConfigError, Field, Schema, Spill, SpillError, SyncSink
from snapsink._spill import SpillDir, SpillReader
from snapsink._writer import _shm
from snapsink._writer._child import Writer

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent


def _frame(i: int) -> dict[str, Any]:
    return {"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}


def _segments(root: Path) -> list[Path]:
    return sorted(root.rglob("*.seg"))


class _FailingPwritev:
    """os.pwritev raising ``err`` for files under ``root`` while armed."""

    def __init__(self, root: Path, err: int):
        self.root = str(root.resolve())
        self.err = err
        self.armed = False
        self.real = os.pwritev

    def __call__(self, fd: int, bufs: Any, offset: int) -> int:
        if self.armed and os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            # a partial write first, as a disk filling up mid-frame gives
            self.real(fd, [bytes(100)], offset)
            raise OSError(self.err, os.strerror(self.err))
        return self.real(fd, bufs, offset)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_failed_spill_write_takes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    gate = tmp_path / "gate"
    store: Any = GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    fault = _FailingPwritev(tmp_path / "spill", errno.ENOSPC)
    monkeypatch.setattr(os, "pwritev", fault)
    with SyncSink(store, capacity=1, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(4):
            sink.write(_frame(i), step=i)  # one in memory (or being appended), the rest spill
        assert sink.statistics().spilled >= 2
        spilled = sink.statistics().spilled
        (seg,) = _segments(tmp_path / "spill")
        size = seg.stat().st_size
        fault.armed = True
        with pytest.raises(SpillError) as info:
            sink.write(_frame(4), step=4)
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        assert isinstance(info.value.__cause__, OSError)
        assert "step can be written again" in str(info.value)
        assert seg.stat().st_size == size  # nothing of the frame stays on disk
        assert sink.statistics().spilled == spilled  # nor is it counted
        fault.armed = False
        sink.write(_frame(4), step=4)  # the step was given back
        sink.write(_frame(5), step=5)
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(6))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(6)]).tobytes()
    assert not _segments(tmp_path / "spill")


def test_a_full_spill_disk_takes_nothing_and_the_sink_goes_on(tiny_fs: Path) -> None:
    store = GatedStore()
    big = {"x": np.ones((64, 64))}  # 32 KiB
    with SyncSink(store, capacity=1, policy=Spill(tiny_fs)) as sink:
        step = 0
        with pytest.raises(SpillError) as info:
            for step in range(200):  # 6 MiB: far past 1 MiB
                sink.write({"x": big["x"] * step}, step=step)
        assert info.value.errno == errno.ENOSPC
        failed_at = step
        store.gate.set()
        sink.flush()  # the spilled backlog drains
        sink.write({"x": big["x"] * failed_at}, step=failed_at)  # the same step again
    traj = store.trajectory()
    assert traj.steps.tolist() == list(range(failed_at + 1))
    for i in (0, failed_at // 2, failed_at):
        assert traj["x"][i].tobytes() == (big["x"] * i).tobytes()


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_spilled_backlog_costs_constant_memory(tmp_path: Path, writer: str) -> None:
    gate = tmp_path / "gate"
    store: Any = GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    small = {"e": 1.0}
    with SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(2000):
            sink.write({"e": float(i)}, step=i)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2000, 22000):
                small["e"] = float(i)
                sink.write(small, step=i)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert sink.statistics().spilled >= 21000
        # 20,000 more spilled frames: was ~950 bytes each (19 MB); now counters
        assert grown < 256 << 10, f"{grown} bytes for 20,000 spilled frames"
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(22000))
    assert traj["e"][:].tolist() == [float(i) for i in range(22000)]
    assert not (tmp_path / "spill").exists() or not list((tmp_path / "spill").iterdir())


_KILLED_PRODUCER = """
import os, signal, sys, numpy as np, snapsink
sys.path.insert(0, {tests!r})
from process_stores import SlowNpy
store = SlowNpy({run!r}, delay=0.02)
sink = snapsink.SyncSink(store, capacity=2, policy=snapsink.Spill({spill!r}), writer={writer!r})
for i in range(60):
    sink.write({{"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}}, step=i)
print(sink.statistics().spilled, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _drained(tmp_path: Path) -> Any:
    """The run once the dead producer's writer drained it: no spill file left."""
    deadline = time.monotonic() + 60
    while any((tmp_path / "spill").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer drains, in its own session
    assert not list((tmp_path / "spill").iterdir())
    time.sleep(0.2)  # its last commit
    return snapsink.open(tmp_path / "run")


def test_what_a_killed_producer_spilled_is_stored_by_its_writer(tmp_path: Path) -> None:
    """Writer process: every frame whose write returned is stored, spilled ones
    included, after the producer is SIGKILLed; no spill file is left."""
    code = _KILLED_PRODUCER.format(
        tests=str(HERE.parent),
        run=str(tmp_path / "run"),
        spill=str(tmp_path / "spill"),
        writer="process",
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert int(done.stdout.split()[0]) > 10  # frames had spilled
    traj = _drained(tmp_path)
    assert traj.steps.tolist() == list(range(60))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(60)]).tobytes()


_KILLED_MID_SPILL = """
import os, signal, sys, numpy as np, snapsink
from snapsink import _spill
sys.path.insert(0, {tests!r})
from process_stores import SlowNpy
real, calls = _spill._write_all, [0]
def torn(fd, parts, total, offset):
    calls[0] += 1
    if calls[0] == 30:  # the header and part of the data, then the process dies
        real(fd, parts[:3], sum(len(memoryview(p).cast("B")) for p in parts[:3]), offset)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd, parts, total, offset)
_spill._write_all = torn
sink = snapsink.SyncSink(SlowNpy({run!r}, delay=0.02), capacity=2, policy=snapsink.Spill({spill!r}))
for i in range(60):
    sink.write({{"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}}, step=i)
    print(i, flush=True)
"""


def test_a_frame_torn_by_the_producers_death_leaves_no_spill_file(tmp_path: Path) -> None:
    """Writer process: the producer dies in the middle of a spill write. Every
    frame whose write returned is stored, and once the writer drained, the torn
    frame's segment and the directory are gone too (nothing can complete them)."""
    code = _KILLED_MID_SPILL.format(
        tests=str(HERE.parent), run=str(tmp_path / "run"), spill=str(tmp_path / "spill")
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    returned = [int(x) for x in done.stdout.split()]
    assert len(returned) > 20
    traj = _drained(tmp_path)
    assert traj.steps.tolist() == returned
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in returned]).tobytes()


_DIES_IN_OPEN_OR_CLOSE = """
import sys, numpy as np, snapsink
sys.path.insert(0, {tests!r})
from process_stores import {store}
sink = snapsink.SyncSink({store}({run!r}, {gate!r}), capacity=1, policy=snapsink.Spill({spill!r}))
for i in range(5):
    sink.write({{"x": np.arange(32, dtype=np.float64) + i, "e": float(i)}}, step=i)
sink.close()  # the test kills this process while the writer closes the store
"""


@pytest.mark.parametrize("moment", ["open", "close"])
def test_a_producer_killed_while_its_writer_opens_or_closes_leaves_no_spill_dir(
    tmp_path: Path, moment: str
) -> None:
    """Writer process: the producer is SIGKILLed while its writer opens the
    store (no write returned yet), or after it asked for the close and before
    it could remove its spill directory. The writer removes the directory (it
    stayed, holding only its lock, until a sink spilled there again); after a
    kill at the close, every frame is stored."""
    from conftest import wait_for_orphaned_writer

    gate, run, spill = str(tmp_path / "gate"), str(tmp_path / "run"), tmp_path / "spill"
    store = "OpenGatedNpy" if moment == "open" else "CloseGatedNpy"
    code = _DIES_IN_OPEN_OR_CLOSE.format(
        tests=str(HERE.parent), store=store, run=run, gate=gate, spill=str(spill)
    )
    # its error output to a file: the writer inherits it, and outlives it
    err = tmp_path / "stderr"
    with err.open("w") as to:
        producer = subprocess.Popen([sys.executable, "-c", code], stderr=to)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate + ".entered"):
            assert producer.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the writer never reached the gate"
            time.sleep(0.01)
        assert len(list(spill.iterdir())) == 1  # the sink's spill directory
    finally:
        producer.kill()
        producer.wait(timeout=30)
        Path(gate).touch()  # the writer goes on, its sink dead
    wait_for_orphaned_writer(run)
    deadline = time.monotonic() + 10
    while list(spill.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(spill.iterdir()) == []
    if moment == "close":
        traj = snapsink.open(run)
        assert traj.steps.tolist() == list(range(5))
        assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(5)]).tobytes()


def test_the_next_sink_removes_what_a_killed_sink_left(tmp_path: Path) -> None:
    """Thread writer: a SIGKILL leaves spill files; the next sink on the same
    directory removes them, and never a live sink's or a user's files."""
    spill = tmp_path / "spill"
    code = _KILLED_PRODUCER.format(
        tests=str(HERE.parent), run=str(tmp_path / "run"), spill=str(spill), writer="thread"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = _segments(spill)
    assert left, "the killed sink left spilled frames"
    (spill / "notes.txt").write_text("mine")
    live_store = GatedStore()
    with SyncSink(live_store, capacity=1, policy=Spill(spill)) as live:
        for i in range(5):
            live.write({"e": float(i)}, step=i)  # this sink spills too
        assert all(not p.exists() for p in left)  # the dead sink's files are gone
        mine = _segments(spill)
        assert mine
        with SyncSink(snapsink.HostMemory(), policy=Spill(spill)):
            pass  # a third sink must not touch the live one's files
        assert all(p.exists() for p in mine)
        live_store.gate.set()
    assert (spill / "notes.txt").read_text() == "mine"
    assert live_store.trajectory().steps.tolist() == list(range(5))


def test_an_unusable_spill_dir_is_a_config_error_at_open(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="Spill dir: expected a directory"):
        SyncSink(snapsink.NpyDirectory(tmp_path / "run"), policy=Spill(a_file))
    assert not (tmp_path / "run").exists()  # nothing was opened
    assert a_file.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            SyncSink(snapsink.HostMemory(), policy=Spill(ro))


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_closing_with_spilled_frames_stores_them_all(tmp_path: Path, writer: str) -> None:
    gate = tmp_path / "gate"
    store: Any = GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    with SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer=writer) as sink:
        for i in range(30):
            sink.write(_frame(i), step=i)
        assert sink.statistics().spilled >= 25
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
        # no flush: the close drains the spill queue
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(30))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(30)]).tobytes()


def test_the_writers_progress_read_torn_publishes_no_spilled_frame_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: the producer read the writer's ``done`` counter as 0 while the
    writer rewrote it (``struct.pack_into`` zero-fills its target first). With
    the ring full, the room computed from it was negative, the count of spilled
    frames waiting grew by as much, and those frames were published twice: the
    writer then found "a spilled frame is missing". Here every third read of
    ``done`` in the sink's process is such a torn 0."""
    real = _shm.Ring.get
    reads = itertools.count()
    torn = 0

    def torn_get(ring: _shm.Ring, offset: int) -> int:
        nonlocal torn
        if offset == _shm.DONE and next(reads) % 3 == 0 and real(ring, offset):
            torn += 1
            return 0
        return real(ring, offset)

    monkeypatch.setattr(_shm.Ring, "get", torn_get)
    gate = tmp_path / "gate"
    n = 3000  # the ring holds 1024 records: the rest of the backlog waits behind it
    with SyncSink(
        GatedNpy(str(tmp_path / "run"), str(gate)),
        capacity=2,
        policy=Spill(tmp_path / "spill"),
        writer="process",
    ) as sink:
        for i in range(n):
            sink.write(_frame(i), step=i)
        assert sink.statistics().spilled == n - 2
        gate.touch()  # the close drains the backlog through a full ring
    assert torn > 10, "the drain read the writer's progress torn"
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(n))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(n)]).tobytes()
    assert traj["e"][:].tolist() == [float(i) for i in range(n)]
    assert not _segments(tmp_path / "spill")


_BIG = Schema({"x": Field("float64", (2048,))})  # 16 KiB: four records fill a 64 KiB segment


def _append(spill: SpillDir, i: int) -> None:
    spill.append(_BIG, i, None, [("x", _BIG["x"], np.full(2048, float(i)))])


def _steps(reader: SpillReader) -> list[int]:
    out = []
    while (got := reader.read()) is not None:
        step, _, fields, _ = got
        assert fields["x"].tobytes() == np.full(2048, float(step)).tobytes()
        out.append(step)
    return out


def test_spilled_frames_keep_the_slot_layout_bit_exact(tmp_path: Path) -> None:
    """A field of a page or more starts on a page in a spilled record, as in a
    slot (frame_layout), whatever comes before it: small fields, an empty ragged
    field, a scalar. Written back to back, the record was shorter than its
    header said and every such frame failed to spill."""
    schema = Schema(
        {
            "e": Field("float64"),
            "r": Field("int32", (None, 3)),
            "big": Field("float32", (64, 64)),  # 16 KiB, after 64 + 64k bytes
            "k": Field("int8", (5,)),
        }
    )
    layout, _ = _shm.frame_layout(schema, [2])
    assert {n: off % 4096 for n, _, off, _, _ in layout}["big"] == 0
    rng = np.random.default_rng(3)
    frames = [
        {
            "e": np.float64(i) / 7,
            "r": rng.integers(-100, 100, size=(i % 3, 3), dtype=np.int32),
            "big": rng.integers(0, 2**32, size=(64, 64), dtype=np.uint32).view(np.float32),
            "k": np.arange(5, dtype=np.int8) * i,
        }
        for i in range(6)
    ]
    spill = SpillDir(Spill(tmp_path))
    try:
        for i, fr in enumerate(frames):
            items = [(name, schema[name], fr[name]) for name in schema]
            spill.append(schema, 10 + i, 0.5 * i, items)
        reader = SpillReader(spill.path, schema)
        for i, fr in enumerate(frames):
            got = reader.read()
            assert got is not None
            step, t, fields, _ = got
            assert (step, t) == (10 + i, 0.5 * i)
            for name in schema:
                assert np.asarray(fields[name]).tobytes() == np.asarray(fr[name]).tobytes(), name
        assert reader.read() is None
        reader.close()
    finally:
        spill.close()


def test_a_frame_appended_as_the_next_segment_starts_is_read_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader finds the end of segment 1 (an empty read); before it looks
    for segment 2, the producer appends one more frame to segment 1 and starts
    segment 2 with the next. The reader must read both, in order."""
    spill = SpillDir(Spill(tmp_path, max_bytes=1 << 18))  # segments of 64 KiB
    try:
        for i in range(2):
            _append(spill, i)
        reader = SpillReader(spill.path, _BIG)
        assert _steps(reader) == [0, 1]
        real = os.pread
        armed = True

        def racing(fd: int, n: int, offset: int) -> bytes:
            nonlocal armed
            got = real(fd, n, offset)
            if not got and armed:
                armed = False
                _append(spill, 2)  # still fits in segment 1
                _append(spill, 3)  # starts segment 2
            return got

        monkeypatch.setattr(os, "pread", racing)
        assert _steps(reader) == [2, 3]
        assert not armed
        assert [p.name for p in _segments(spill.path)] == ["000001.seg", "000002.seg"]
        assert reader.exhausted == [spill.path / "000001.seg"]
        reader.close()
    finally:
        spill.close()


def test_bytes_that_are_not_the_next_spilled_frame_are_an_error_naming_where(
    tmp_path: Path,
) -> None:
    spill = SpillDir(Spill(tmp_path))
    try:
        for i in range(3):
            _append(spill, i)
        (seg,) = _segments(spill.path)
        record = seg.stat().st_size // 3
        with open(seg, "r+b") as f:  # frame 3 claims to be the 7th
            f.seek(2 * record + 8)
            f.write(struct.pack("<q", 7))
        reader = SpillReader(spill.path, _BIG)
        assert [reader.read()[0] for _ in range(2)] == [0, 1]  # type: ignore[index]
        with pytest.raises(OSError, match="expected spilled frame 3, found serial 7") as info:
            reader.read()
        assert info.value.errno == errno.EIO
        assert f"{seg} is corrupt at byte {2 * record}" in str(info.value)
        assert reader.frames_read == 2  # nothing was taken
        reader.close()
    finally:
        spill.discard()
        spill.close()


def test_the_writer_reads_the_spilled_frame_each_record_names_or_fails_saying_which(
    tmp_path: Path,
) -> None:
    """A ring record names the spilled frame (its serial): the writer never
    stores another frame in its place, and one past the queue's end is missing."""
    schema = Schema.infer(_frame(0))
    spill = SpillDir(Spill(tmp_path / "spill"))
    ring = _shm.Ring.create(16, 0)
    try:
        for i in range(2):
            spill.append(schema, i, None, [(k, schema[k], v) for k, v in _frame(i).items()])
        w = Writer(wire=None)  # type: ignore[arg-type]  # it sends nothing here
        w.schema, w.spill_dir, w.ring = schema, spill.path, ring

        def publish(seq: int, serial: int) -> None:
            ring.put(seq, (seq, _shm.SPILLED, serial, 0, 0, 0, 0.0))
            ring.set(_shm.TAIL, seq)

        publish(1, 1)
        batch = w.take()
        assert batch is not None and [f.step for f in batch.frames] == [0]
        assert batch.frames[0].fields["x"].tobytes() == _frame(0)["x"].tobytes()
        w.stored()
        publish(2, 3)  # skips frame 2
        with pytest.raises(RuntimeError, match="ring record 2 names spilled frame 3, but the next"):
            w.take()
        publish(2, 2)
        batch = w.take()
        assert batch is not None and [f.step for f in batch.frames] == [1]
        w.stored()
        publish(3, 3)  # past the end of the queue
        with pytest.raises(OSError, match="spilled frame 3 is missing from") as info:
            w.take()
        assert info.value.errno == errno.ENOENT
        assert "after 2 spilled frames, ring record 3" in str(info.value)
        assert w.done == 2
        assert w.spill_reader is not None
        w.spill_reader.close()
    finally:
        ring.close()
        spill.close()


def test_a_close_that_leaves_spilled_frames_unpublished_is_an_error(tmp_path: Path) -> None:
    """Nothing silently lost: the sink publishes every frame it spilled before
    it asks the writer to close; a frame left in the spill queue then is a bug
    the close reports, not a frame dropped without a word."""
    schema = Schema.infer(_frame(0))
    spill = SpillDir(Spill(tmp_path / "spill"))
    ring = _shm.Ring.create(16, 0)
    try:
        for i in range(2):
            spill.append(schema, i, None, [(k, schema[k], v) for k, v in _frame(i).items()])
        w = Writer(wire=None)  # type: ignore[arg-type]  # it sends nothing here
        w.schema, w.spill_dir, w.ring = schema, spill.path, ring
        ring.put(1, (1, _shm.SPILLED, 1, 0, 0, 0, 0.0))
        ring.set(_shm.TAIL, 1)
        batch = w.take()
        assert batch is not None and [f.step for f in batch.frames] == [0]
        w.stored()
        w.close_at = 1  # the sink says: one frame, all published
        with pytest.raises(RuntimeError, match=r"publishing 1 spilled frames, but .* holds more"):
            w.finished()
        spill.append(schema, 2, None, [(k, schema[k], v) for k, v in _frame(2).items()])
        ring.put(2, (2, _shm.SPILLED, 2, 0, 0, 0, 0.0))
        ring.put(3, (3, _shm.SPILLED, 3, 0, 0, 0, 0.0))
        ring.set(_shm.TAIL, 3)
        w.close_at = 3
        for step in (1, 2):
            batch = w.take()
            assert batch is not None and [f.step for f in batch.frames] == [step]
            w.stored()
        assert w.finished()  # every spilled frame read: a clean close
        assert w.spill_reader is not None
        w.spill_reader.close()
        assert not _segments(spill.path)  # read to the end: removed
    finally:
        ring.close()
        spill.close()


class _SlowMemory(snapsink.HostMemory):
    def append(self, batch: Any) -> None:
        time.sleep(0.001)
        super().append(batch)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_segments_rotate_and_go_while_the_writer_drains(tmp_path: Path, writer: str) -> None:
    """Segments of 64 KiB (max_bytes / 4) appended, rotated, read and removed
    at once, frames of every size (a ragged field), flushes between: every
    frame stored bit-exact and in order, and nothing left in the spill dir."""
    n = 1500
    rows = np.random.default_rng(11).integers(0, 600, n)
    schema = Schema({"r": Field("float32", (None, 3)), "e": "float64"})

    def frame(i: int) -> dict[str, Any]:
        r = np.arange(rows[i] * 3, dtype=np.float32).reshape(-1, 3) + i
        return {"r": r, "e": float(i)}

    store: Any = _SlowMemory() if writer == "thread" else SlowNpy(str(tmp_path / "run"), 0.001)
    spill = tmp_path / "spill"
    with SyncSink(
        store, capacity=2, policy=Spill(spill, max_bytes=1 << 18), schema=schema, writer=writer
    ) as sink:
        for i in range(n):
            sink.write(frame(i), step=i)
            if i % 300 == 299:
                sink.flush()
        stats = sink.statistics()
    # frames of 3.6 KiB on average: that many spilled fill a dozen segments or more
    assert stats.spilled > 200, stats
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(n))
    assert traj["e"][:].tolist() == [float(i) for i in range(n)]
    got = traj["r"]
    for i in range(n):
        assert np.asarray(got[i]).tobytes() == frame(i)["r"].tobytes(), f"frame {i}"
    assert not _segments(spill)


# -- a KeyboardInterrupt in a spill write (review probe: the close hung) ------------------
def _big(i: int) -> dict[str, Any]:
    return {"x": np.arange(2048, dtype=np.float64) + i, "e": float(i)}  # 16 KiB: 4 a segment


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize("where", ["before its turn", "after the append", "as a segment starts"])
def test_a_ctrl_c_in_a_spill_write_leaves_the_sink_usable_and_its_close_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, where: str
) -> None:
    """KeyboardInterrupt at three moments of a spill write: later writes spill
    on, the close returns, every frame whose write returned is stored bit-exact,
    and the interrupted one is stored exactly when it reached the spill queue."""
    from snapsink import _channelspill, _spill

    hit = {"n": 0}

    def interrupt_once() -> None:
        hit["n"] += 1
        if hit["n"] == 6:
            raise KeyboardInterrupt

    if where == "before its turn":
        real_wait = _channelspill.SpillQueue._wait_turn

        def wait_turn(self: Any, ticket: Any) -> Any:
            interrupt_once()
            return real_wait(self, ticket)

        monkeypatch.setattr(_channelspill.SpillQueue, "_wait_turn", wait_turn)
    elif where == "after the append":
        real_append = _spill.SpillDir.append

        def append(self: Any, *a: Any, **kw: Any) -> int:
            n = real_append(self, *a, **kw)
            interrupt_once()
            return n

        monkeypatch.setattr(_spill.SpillDir, "append", append)
    else:
        real_open = _spill.SpillDir._open_segment

        def open_segment(self: Any, index: int) -> None:
            real_open(self, index)
            if index == 2 and not hit["n"]:  # the file exists: the reader may move on to it
                hit["n"] += 1
                raise KeyboardInterrupt

        monkeypatch.setattr(_spill.SpillDir, "_open_segment", open_segment)
    gate = tmp_path / "gate"
    store: Any = GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    returned, interrupted = [], []
    spill = Spill(tmp_path / "spill", max_bytes=1 << 18)
    with SyncSink(store, capacity=1, policy=spill, writer=writer) as sink:
        for i in range(16):
            try:
                sink.write(_big(i), step=i)
                returned.append(i)
            except KeyboardInterrupt:
                interrupted.append(i)
        if writer == "thread":
            store.gate.set()
        else:
            gate.touch()
    assert len(interrupted) == 1
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    stored = traj.steps.tolist()
    expected = sorted(returned + (interrupted if where == "after the append" else []))
    assert stored == expected
    assert traj["x"][:].tobytes() == np.stack([_big(i)["x"] for i in stored]).tobytes()
    assert not _segments(tmp_path / "spill")


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_storm_of_ctrl_c_in_spill_writes_never_hangs_the_close(
    tmp_path: Path, writer: str
) -> None:
    """Real SIGINTs every few ms while writes spill: the close returns, each frame
    whose write returned is stored, and whatever else is stored is whole."""
    import threading

    store = SlowNpy(str(tmp_path / "run"), 0.002) if writer == "process" else GatedStore()
    armed = {"on": False, "stop": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if armed["on"]:
            raise KeyboardInterrupt

    def storm() -> None:
        rng = np.random.default_rng(3)
        while not armed["stop"]:
            time.sleep(float(rng.uniform(0.0005, 0.003)))
            os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, on_sigint)
    returned, interrupted = [], 0
    try:
        spill = Spill(tmp_path / "spill", max_bytes=1 << 18)
        with SyncSink(store, capacity=1, policy=spill, writer=writer) as sink:
            t = threading.Thread(target=storm)
            t.start()
            try:
                for i in range(1500):
                    try:
                        armed["on"] = True
                        try:
                            sink.write(_big(i), step=i)
                        finally:
                            armed["on"] = False
                        returned.append(i)
                    except KeyboardInterrupt:
                        interrupted += 1
            finally:
                armed["stop"] = True
                t.join()
            if writer == "thread":
                store.gate.set()
    finally:
        signal.signal(signal.SIGINT, old)
    assert interrupted > 0
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    stored = traj.steps.tolist()
    assert set(returned) <= set(stored)
    assert stored == sorted(stored)
    assert traj["x"][:].tobytes() == np.stack([_big(i)["x"] for i in stored]).tobytes()
    assert not _segments(tmp_path / "spill")


class _FailsWhenAsked(snapsink.HostMemory):
    fail = False

    def append(self, batch: Any) -> None:
        time.sleep(0.001)
        if self.fail:
            raise OSError(errno.ENOSPC, "disk full (emulated)")
        super().append(batch)


def test_statistics_after_a_store_failure_under_spill_queue_nothing(tmp_path: Path) -> None:
    """A spill write that ended after the store failed counted its frame as
    queued: statistics() said queued=1 after the close, for a sink holding
    nothing (found by a probe; the channel's code, which both writers share)."""
    store = _FailsWhenAsked()
    sink = SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer="thread")
    with pytest.raises(snapsink.WriterError):
        with sink:
            for i in range(5):
                sink.write({"x": np.full(100, i, "f8")}, step=i)
            sink.flush()
            store.fail = True
            for i in range(5, 400):
                sink.write({"x": np.full(100, i, "f8")}, step=i)
    stats = sink.statistics()
    assert stats.queued == 0, stats
    assert stats.written == 5 and stats.spilled > 0


# -- what max_bytes bounds: the bytes in the spill directory ---------------------------
def _bytes_in(spill: Path) -> int:
    """Bytes of the segment files under ``spill`` (a reader may remove one meanwhile)."""
    total = 0
    for seg in spill.rglob("*.seg"):
        try:
            total += seg.stat().st_size
        except FileNotFoundError:
            pass
    return total


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.0005)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_max_bytes_bounds_the_bytes_in_the_spill_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """Spill(max_bytes=M) bounds what the spill directory holds: each record's
    header counts, and so do replayed frames whose segment still holds frames
    to replay (a segment goes whole). The store here stores a frame only while
    the producer waits for room, so the spill is full each time one goes: the
    directory reached M plus a frame at the first refill (1.25x M in longer
    runs), and a disk sized to M failed the write (ENOSPC) instead of blocking."""
    import threading

    limit = 1 << 18  # segments of 64 KiB: three 16 KiB records each
    sizes: list[int] = []
    real_append = SpillDir.append

    def append(self: SpillDir, *a: Any, **kw: Any) -> int:
        n = real_append(self, *a, **kw)
        sizes.append(_bytes_in(self.path))  # the directory only grows by an append
        return n

    monkeypatch.setattr(SpillDir, "append", append)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    store = TokenNpy(str(tmp_path / "run"), str(tokens))
    n = 40
    failed: list[BaseException] = []
    policy = Spill(tmp_path / "spill", max_bytes=limit)
    with SyncSink(store, capacity=1, policy=policy, writer=writer) as sink:
        ch = sink._sink._channel
        assert ch is not None

        def produce() -> None:
            try:
                for i in range(n):
                    sink.write(_big(i), step=i)
            except BaseException as exc:
                failed.append(exc)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            # one frame stored each time the producer waits for room
            for k in range(n):
                _until(lambda: ch.room_waiters or not producer.is_alive(), "a full spill")
                if not producer.is_alive():
                    break
                written = sink.statistics().written
                (tokens / str(k)).touch()
                _until(lambda w=written: sink.statistics().written > w, f"frame {k} stored")
        finally:
            (tokens / "open").touch()
            producer.join()
        stats = sink.statistics()
    assert not failed, failed
    assert stats.spilled > 30, stats
    record = max(sizes[0], 1)  # the first spilled frame, alone
    assert limit - 2 * record < max(sizes) <= limit, (limit, sizes)  # filled, never past
    traj = snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(n))
    assert traj["x"][:].tobytes() == np.stack([_big(i)["x"] for i in range(n)]).tobytes()
    assert not _segments(tmp_path / "spill")


def test_a_frame_larger_than_max_bytes_spills_alone(tmp_path: Path) -> None:
    """A frame larger than max_bytes spills once no spilled frame waits, and
    then alone: the next one waits for it to be stored."""
    import threading

    schema = Schema({"r": Field("float64", (None,))})
    store = GatedStore()
    spill = tmp_path / "spill"
    rows = [1, 12000, 2, 3]  # the second: 96 KB, past 64 KiB
    frames = [{"r": np.arange(m, dtype=np.float64) + i} for i, m in enumerate(rows)]
    policy = Spill(spill, max_bytes=1 << 16)
    with SyncSink(store, capacity=1, policy=policy, schema=schema) as sink:
        ch = sink._sink._channel
        assert ch is not None
        sink.write(frames[0], step=0)  # in memory, its append held at the gate
        sink.write(frames[1], step=1)  # spilled: nothing else is
        alone = _bytes_in(spill)
        assert 96_000 < alone < 100_000
        producer = threading.Thread(target=lambda: [sink.write(frames[i], step=i) for i in (2, 3)])
        producer.start()
        _until(lambda: ch.room_waiters, "the next frame waits")
        assert _bytes_in(spill) == alone and sink.statistics().spilled == 1
        store.gate.set()
        producer.join()
    traj = store.trajectory()
    assert traj.steps.tolist() == [0, 1, 2, 3]
    for i, fr in enumerate(frames):
        assert np.asarray(traj["r"][i]).tobytes() == fr["r"].tobytes()
    assert not _segments(spill)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_relative_spill_dir_stays_put_when_the_simulation_changes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """Spill("spill"), then an os.chdir after the sink opened: the next spill
    failed (ENOENT, the segment opened relative to the new directory) and the
    lock file stayed behind. The directory is made absolute when the policy
    is made, for the sink's process and its writer process alike."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    policy = Spill("spill")
    gate = tmp_path / "gate"
    store: Any = GatedStore() if writer == "thread" else GatedNpy(str(tmp_path / "run"), str(gate))
    with SyncSink(store, capacity=1, policy=policy, writer=writer) as sink:
        monkeypatch.chdir(tmp_path / "b")  # the simulation moves on
        try:
            for i in range(8):
                sink.write(_frame(i), step=i)
            assert sink.statistics().spilled >= 6
            assert _segments(tmp_path / "a" / "spill")  # where it was meant to be
        finally:
            if writer == "thread":
                store.gate.set()
            else:
                gate.touch()
    traj = store.trajectory() if writer == "thread" else snapsink.open(tmp_path / "run")
    assert traj.steps.tolist() == list(range(8))
    assert traj["x"][:].tobytes() == np.stack([_frame(i)["x"] for i in range(8)]).tobytes()
    assert list((tmp_path / "a" / "spill").iterdir()) == []  # no lock left behind
    assert not (tmp_path / "b" / "spill").exists()
    assert os.path.isabs(policy.dir) and Path(policy.dir).samefile(tmp_path / "a" / "spill")


def test_statistics_after_a_process_writers_store_failed_count_what_it_stored(
    tmp_path: Path,
) -> None:
    """The writer process stored frames, then its store failed: they count as
    written, with their bytes. The failure dropped the frames it had not yet
    counted, while their spilled bytes were counted (a probe saw written=0,
    bytes_written=160)."""
    store = FailingNpy(str(tmp_path / "run"), fail_at=3)
    sink = SyncSink(store, capacity=2, policy=Spill(tmp_path / "spill"), writer="process")
    try:
        for i in range(20):
            sink.write({"x": np.full(100, i, "f8")}, step=i)
        # this process idle (nothing reads the writer's counts) while the
        # writer stores two batches and fails at the third
        deadline = time.monotonic() + 30
        while sink._sink._channel.failure is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the store never failed"
            time.sleep(0.01)
        stats = sink.statistics()
    finally:
        with pytest.raises(snapsink.WriterError):
            sink.close()
    assert stats.written >= 2, stats  # two appends went through
    assert stats.bytes_written == 800 * stats.written, stats
