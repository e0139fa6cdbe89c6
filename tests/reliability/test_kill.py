"""Process kill: a writer SIGKILLed at random moments never loses a flushed frame.

A fork server (``_writer.py``) imports snapsink once and forks a fresh writer
per kill. Each writer streams deterministic frames (``frame_for(step)``) into
an NpyDirectory or a ZarrStore on a LocalStore, under the ``block`` or the
``spill`` policy, with tiny ``commit_every`` so that kills land inside commits,
and reports every index whose ``flush()`` returned. The test kills it either
right after its k-th flush report (mid-commit of the following frames) or
after a random delay, then checks:

- the store opens (``snapsink.open``);
- every flushed frame reads back bit-exact, and every visible frame beyond
  them too, in order (no torn frame, no gap);
- ``mode="a"`` resumes after the visible frames, and the result reads back whole.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _check import assert_h5md_prefix, assert_prefix

import snapsink
from conftest import wait_for_orphaned_writer

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

pytestmark = pytest.mark.timeout(120)


class Job:
    """What the test knows about one forked writer."""

    def __init__(self, job_id: int):
        self.id = job_id
        self.cond = threading.Condition()
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.flushed = -1  # highest frame index whose flush() returned
        self.written = -1  # highest frame index whose write() returned (if reported)
        self.writer_pid: int | None = None  # the sink's writer process
        self.flushes = 0
        self.done = False
        self.error: str | None = None

    def event(self, what: str, value: str) -> None:
        with self.cond:
            if what == "pid":
                self.pid = int(value)
                try:
                    self.pidfd = os.pidfd_open(self.pid)
                except ProcessLookupError:
                    self.pidfd = None  # already gone (and reaped)
            elif what == "w":
                self.written = max(self.written, int(value))
            elif what == "wp":
                self.writer_pid = int(value)
            elif what == "f":
                self.flushed = max(self.flushed, int(value))
                self.flushes += 1
            elif what == "done":
                self.done = True
            elif what == "error":
                self.error = value
            self.cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred() or self.error is not None, timeout), (
                f"job {self.id}: timed out"
            )
            assert self.error is None, f"job {self.id}: writer failed: {self.error}"

    def kill_and_reap(self) -> None:
        """SIGKILL the writer (if alive) and wait until it is gone."""
        self.wait_for(lambda: self.pid is not None)
        fd = self.pidfd
        if fd is None:
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited on its own
        assert readable(fd, 30), f"job {self.id}: the writer survived SIGKILL"
        os.close(fd)
        self.pidfd = None


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` (a pidfd: the process exited) becomes readable within
    ``timeout`` seconds (poll, not select: any descriptor number)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout * 1000))


class ForkServer:
    def __init__(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
            "OPENBLAS_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_writer.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.jobs: dict[int, Job] = {}
        self.lock = threading.Lock()
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            job_id, what, *rest = raw.decode().rstrip("\n").split(" ", 2)
            with self.lock:
                job = self.jobs.get(int(job_id))
            if job is not None:
                job.event(what, rest[0] if rest else "")

    def spawn(self, **cfg: Any) -> Job:
        with self.lock:
            self.next_id += 1
            job = Job(self.next_id)
            self.jobs[job.id] = job
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"job": job.id, **cfg}) + "\n").encode())
            self.proc.stdin.flush()
        return job

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.reader.join(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        for job in self.jobs.values():  # never leave a writer behind
            if job.pidfd is not None:
                job.kill_and_reap()


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    srv = ForkServer()
    yield srv
    srv.close()


def is_store(path: Path) -> bool:
    if path.is_file():  # HDF5: a file whose group was laid out (killed later than that)
        try:
            snapsink.open(path)
        except (snapsink.FormatError, snapsink.StoreNotFoundError):
            # killed while the file was being created (asked only when no flush
            # returned): HDF5's own structure, not yet the group's attributes
            return False
        return True
    return (path / "metadata.json").exists() or (path / "zarr.json").exists()


def store_path(root: Path, kind: str) -> Path:
    return root / {"hdf5": "store.h5", "h5md": "store.h5md"}.get(kind, "store")


def check_store(path: Path, kind: str, at_least: int) -> int:
    """The frames visible through snapsink (see ``assert_prefix``); for the H5MD
    layout, also its ``/particles`` and ``/observables`` elements, read with plain
    h5py, up to the committed count."""
    n = assert_prefix(path, at_least=at_least)
    if kind == "h5md" and n:  # (a store killed before its first frame has no tree yet)
        assert_h5md_prefix(path, n)
    return n


def needs(kind: str) -> None:
    if kind in ("hdf5", "h5md"):
        pytest.importorskip("h5py")


def kill_once(
    server: ForkServer,
    root: Path,
    kind: str,
    policy: str,
    rng: random.Random,
    *,
    within: float | None = None,
    mid_commit: bool | None = None,
) -> tuple[int, int]:
    """One writer, one SIGKILL, one check, one resume. Returns (flushed, visible).

    ``within``: kill within that many seconds of the writer's start, while it
    makes its store (the file and the datasets, for HDF5: outside SWMR mode);
    the path must then hold no store, or a whole one. ``mid_commit``: kill
    right after a flush returned (else at a random moment); None: either, by
    ``rng``."""
    path = store_path(root, kind)
    spill = root / "spill"
    common = {
        "kind": kind,
        "path": str(path),
        "policy": policy,
        "spill": str(spill),
        "capacity": 1 if policy == "spill" else rng.choice([1, 2, 4]),
        "commit_every": rng.choice([1, 2, 3]),
        # the kill must land in the store's own I/O: the store runs in the
        # killed process (the writer process's kills are below)
        "writer": "thread",
    }
    job = server.spawn(**common, mode="x", start=0, n=100_000, flush_every=rng.choice([1, 2, 5]))
    if within is not None:
        job.wait_for(lambda: job.pid is not None)
        threading.Event().wait(rng.uniform(0.0, within))
    elif (rng.random() < 0.5) if mid_commit is None else mid_commit:
        k = rng.randrange(1, 6)
        job.wait_for(lambda: job.flushes >= k)  # then kill at once: mid-commit
    else:
        job.wait_for(lambda: job.pid is not None)
        threading.Event().wait(rng.uniform(0.0, 0.12))  # a random moment
    job.kill_and_reap()
    assert not job.done
    flushed = job.flushed + 1
    if within is not None:
        # no torn file: nothing (or the empty file the writer opened) or a store
        assert not path.exists() or path.is_dir() or path.stat().st_size == 0 or is_store(path)
    if flushed == 0 and not is_store(path):
        # Killed before the store's first commit: nothing was promised, and
        # there is nothing to open, but mode="a" must still start a store there.
        with pytest.raises((snapsink.StoreNotFoundError, snapsink.FormatError)):
            snapsink.open(path)
        visible = 0
    else:
        visible = check_store(path, kind, flushed)
    extra = rng.randrange(1, 7)
    again = server.spawn(**common, mode="a", start=visible, n=extra, flush_every=3)
    again.wait_for(lambda: again.done)
    again.kill_and_reap()  # reap: it has exited
    assert check_store(path, kind, visible + extra) == visible + extra
    return flushed, visible


def run_kills(
    server: ForkServer, tmp_path: Path, kind: str, policy: str, kills: int, seed: int
) -> list[tuple[int, int]]:
    seeds = [seed * 10_000 + k for k in range(kills)]

    def one(s: int) -> tuple[int, int]:
        root = tmp_path / f"k{s}"
        root.mkdir()
        # every other kill right after a flush: on a loaded machine the random
        # moments may all come before the writer's first frame
        return kill_once(server, root, kind, policy, random.Random(s), mid_commit=s % 2 == 0)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, seeds))
    # The kills must have landed at different stages, not all before the first frame.
    assert sum(1 for flushed, _ in results if flushed > 0) >= kills // 3
    return results


SEEDS = {
    ("npy", "block"): 1,
    ("npy", "spill"): 2,
    # a ragged field: its partly filled blocks go out with each commit, which
    # runs in the background while whole blocks of the same chunks are appended
    ("zarr", "block"): 3,
    ("zarr", "spill"): 4,
    # every array in place: nothing buffered
    ("zarr-inplace", "block"): 5,
    ("zarr-inplace", "spill"): 6,
    # 2 MiB encoded chunks, written direct by the store's I/O thread
    ("zarr-zstd", "block"): 18,
    ("zarr-zstd", "spill"): 19,
    # zstd shards with a ragged field, committed in the background
    ("zarr-shard", "block"): 20,
    ("zarr-shard", "spill"): 21,
    ("hdf5", "block"): 14,
    ("hdf5", "spill"): 15,
    ("h5md", "block"): 16,
    ("h5md", "spill"): 17,
}


@pytest.mark.parametrize("policy", ["block", "spill"])
@pytest.mark.parametrize("kind", ["npy", "zarr", "zarr-inplace", "hdf5", "h5md"])
def test_sigkill_never_loses_a_flushed_frame(
    server: ForkServer, tmp_path: Path, kind: str, policy: str
) -> None:
    """25 kills per (store, policy): 50 per store type in the default suite."""
    needs(kind)
    run_kills(server, tmp_path, kind, policy, kills=25, seed=SEEDS[kind, policy])


def test_sigkill_during_direct_writes_of_encoded_chunks(server: ForkServer, tmp_path: Path) -> None:
    """12 kills of a ZarrStore with zstd whose 2 MiB encoded chunks its I/O
    thread writes direct (the soak below runs 250 per policy)."""
    run_kills(server, tmp_path, "zarr-zstd", "block", kills=12, seed=SEEDS["zarr-zstd", "block"])
    # the kills landed among chunks large enough for the direct path
    chunks = [p for p in tmp_path.glob("k*/store/big/c/**/*") if p.is_file()]
    assert sum(p.stat().st_size >= 1 << 20 for p in chunks) >= 12


def test_sigkill_while_partly_filled_shards_are_committed_in_the_background(
    server: ForkServer, tmp_path: Path
) -> None:
    """12 kills of a ZarrStore with zstd shards and a ragged field, whose
    commits write partly filled shards in the background while the appends
    write the same shards whole (the soak below runs 250 per policy)."""
    run_kills(server, tmp_path, "zarr-shard", "spill", kills=12, seed=SEEDS["zarr-shard", "spill"])


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("policy", ["block", "spill"])
@pytest.mark.parametrize(
    "kind", ["npy", "zarr", "zarr-inplace", "zarr-zstd", "zarr-shard", "hdf5", "h5md"]
)
def test_sigkill_soak(server: ForkServer, tmp_path: Path, kind: str, policy: str) -> None:
    """The same, 250 kills per (store, policy)."""
    needs(kind)
    run_kills(server, tmp_path, kind, policy, kills=250, seed=100 + SEEDS[kind, policy])


@pytest.mark.parametrize("kind", ["hdf5", "h5md"])
def test_sigkill_while_the_store_is_made_leaves_no_torn_file(
    server: ForkServer, tmp_path: Path, kind: str
) -> None:
    """30 kills per layout within the first 30 ms: while the writer makes the
    HDF5 file and the datasets, HDF5's structure is written outside SWMR mode
    (a kill there left a file HDF5 could not open: about 1 kill in 100, and
    mode="a" then failed). The store is made whole beside the path and renamed
    over it: every kill leaves the path empty or a store, and mode="a" resumes."""
    needs(kind)
    seeds = [{"hdf5": 21, "h5md": 22}[kind] * 10_000 + k for k in range(30)]

    def one(s: int) -> tuple[int, int]:
        root = tmp_path / f"m{s}"
        root.mkdir()
        got = kill_once(server, root, kind, "block", random.Random(s), within=0.03)
        # the resumed writer removed any temporary file a kill left
        assert [p.name for p in root.iterdir() if p.name.endswith(".partial")] == []
        return got

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(one, seeds))


# -- the simulation's process killed: its writer process stores what it was given ---
def wait_gone(pid: int, timeout: float = 60) -> None:
    """Wait until process ``pid`` (not our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert readable(fd, timeout), f"process {pid} is still running after {timeout} s"
    finally:
        os.close(fd)


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def kill_producer_once(server: ForkServer, root: Path, kind: str, rng: random.Random) -> int:
    """Kill the producer at a random moment (default writer, policy block);
    after its writer process exits, every frame whose write() returned must be
    stored. Returns the number of frames written."""
    path = store_path(root, kind)
    job = server.spawn(
        kind=kind,
        path=str(path),
        policy="block",
        spill=str(root / "spill"),
        capacity=rng.choice([1, 2, 4, 8]),
        commit_every=rng.choice([1, 4, 1000]),
        mode="x",
        start=0,
        n=100_000,
        flush_every=10**9,  # never: only the writer's own commits and the drain
        report_writes=True,
    )
    if rng.random() < 0.5:
        k = rng.randrange(1, 40)
        job.wait_for(lambda: job.written >= k)
    else:
        job.wait_for(lambda: job.writer_pid is not None)
        threading.Event().wait(rng.uniform(0.0, 0.1))
    job.kill_and_reap()
    written = job.written + 1
    with job.cond:
        writer_pid = job.writer_pid
    if writer_pid is None:
        assert written == 0  # killed before the sink opened
        return 0
    wait_gone(writer_pid)
    if not is_store(path):
        assert written == 0
        return 0
    # Every frame whose write() returned is stored, bit-exact and in order. More
    # may be: reports still in the pipe when the kill landed are never read, so
    # the reports only bound the written frames from below (assert_prefix checks
    # every visible frame against the run, so none can be invented).
    check_store(path, kind, written)
    return written


def run_producer_kills(server: ForkServer, tmp_path: Path, kind: str, seeds: list[int]) -> None:
    """Kill the producer once per seed, 3 at a time; most kills must land mid-run
    and nothing may be left in /dev/shm."""
    before = shm_names()

    def one(s: int) -> int:
        root = tmp_path / f"p{s}"
        root.mkdir()
        return kill_producer_once(server, root, kind, random.Random(s))

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, seeds))
    assert sum(1 for w in results if w > 0) >= len(seeds) // 2  # the kills landed mid-run
    assert {n for n in shm_names() - before if "snapsink" in n or n.startswith("psm_")} == set()


PRODUCER_SEEDS = {
    "npy": 7,
    "zarr": 8,
    "zarr-inplace": 5,
    "zarr-zstd": 10,
    "zarr-shard": 11,
    "hdf5": 9,
    "h5md": 6,
}


@pytest.mark.parametrize("kind", ["npy", "zarr", "zarr-inplace", "hdf5", "h5md"])
def test_sigkill_of_the_producer_loses_no_written_frame(
    server: ForkServer, tmp_path: Path, kind: str
) -> None:
    """50 kills per store kind (25 more for each variant of one: HDF5's H5MD
    layout, the same store and sessions; Zarr's in-place rows, the same store
    and commits): the writer process drains and commits every frame already
    in shared memory, and leaves nothing in /dev/shm."""
    needs(kind)
    kills = 25 if kind in ("h5md", "zarr-inplace") else 50
    run_producer_kills(
        server, tmp_path, kind, [PRODUCER_SEEDS[kind] * 10_000 + k for k in range(kills)]
    )


def test_sigkill_of_the_producer_while_encoded_chunks_go_direct(
    server: ForkServer, tmp_path: Path
) -> None:
    """12 kills of the producer of a ZarrStore with zstd (2 MiB encoded chunks,
    written direct by the writer process's I/O thread): the writer drains
    every frame already in shared memory through that thread."""
    seed = PRODUCER_SEEDS["zarr-zstd"] * 10_000
    run_producer_kills(server, tmp_path, "zarr-zstd", [seed + k for k in range(12)])
    chunks = [p for p in tmp_path.glob("p*/store/big/c/**/*") if p.is_file()]
    assert sum(p.stat().st_size >= 1 << 20 for p in chunks) >= 6  # the direct path's size


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "kind", ["npy", "zarr", "zarr-inplace", "zarr-zstd", "zarr-shard", "hdf5", "h5md"]
)
def test_sigkill_of_the_producer_soak(server: ForkServer, tmp_path: Path, kind: str) -> None:
    """The same, 500 kills per store kind (CI's default 50 once met, in about
    500 kills, a sink that died with a writer's reply unread: see test_wire)."""
    needs(kind)
    seeds = [PRODUCER_SEEDS[kind] * 10_000 + 1_000 + k for k in range(500)]
    run_producer_kills(server, tmp_path, kind, seeds)


# -- what the kills found, pinned down deterministically ------------------------------
def test_npy_killed_during_its_first_commit_can_be_created_again(tmp_path: Path) -> None:
    """A writer killed inside its very first metadata write leaves only the
    store's own temp file: no store was ever committed, so every mode may
    claim the directory (it used to be refused as "not a snapsink store")."""
    for mode in ("x", "w", "a"):
        path = tmp_path / mode
        path.mkdir()
        (path / ".metadata.json.tmp").write_text('{"format": "snaps')
        with snapsink.SyncSink(snapsink.NpyDirectory(path, mode=mode)) as sink:
            sink.write({"v": 1.5}, step=4)
        traj = snapsink.open(path)
        assert traj.steps.tolist() == [4] and traj["v"][:].tolist() == [1.5]


@pytest.mark.parametrize("count", [4, 8, 5])
def test_zarr_resume_when_committed_frames_fill_whole_chunks(tmp_path: Path, count: int) -> None:
    """mode="a" after a count that is a multiple of chunk_frames: nothing is
    buffered, the last step and time must be read from the array (it used to
    fail with TypeError: int(None))."""
    path = tmp_path / "z"
    with snapsink.SyncSink(snapsink.ZarrStore(path, chunk_frames=4)) as sink:
        for i in range(count):
            sink.write({"v": float(i)}, step=10 * i, time=0.5 * i)
    with snapsink.SyncSink(snapsink.ZarrStore(path, mode="a")) as sink:
        with pytest.raises(snapsink.SchemaError, match=f"greater than {10 * (count - 1)}"):
            sink.write({"v": -1.0}, step=10 * (count - 1), time=1e9)
        sink.write({"v": 99.0}, time=0.5 * count)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == [10 * i for i in range(count)] + [10 * (count - 1) + 1]
    assert traj["v"][:].tolist() == [float(i) for i in range(count)] + [99.0]


@pytest.mark.timeout(90)
def test_sigterm_to_the_simulation_and_its_writer_keeps_every_written_frame(
    tmp_path: Path,
) -> None:
    """What a scheduler does to a job (SIGTERM to each of its processes): the
    writer ignores it, notices its simulation died, and stores every frame
    whose write returned; it died on the SIGTERM with them unstored."""
    path = str(tmp_path / "run")
    code = (
        "import os, signal, numpy as np, snapsink\n"
        f"s = snapsink.SyncSink(snapsink.NpyDirectory({path!r}), capacity=64, writer='process')\n"
        "for i in range(50): s.write({'x': np.full(100, float(i))}, step=i)\n"
        "os.kill(s._sink._process.proc.pid, signal.SIGTERM)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGTERM, run.stderr
    wait_for_orphaned_writer(path)
    traj = snapsink.open(path)
    assert traj.steps.tolist() == list(range(50))
    assert traj["x"][:, 0].tolist() == [float(i) for i in range(50)]
