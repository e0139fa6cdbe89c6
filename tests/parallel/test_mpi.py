"""Many ranks, one Zarr trajectory, over MPI: ``mpiexec -n 4`` (and ``-n 2``)
runs tests/parallel/_driver.py; the tests read the result back.

Contracts held here: each rank writes only its chunks (the files each rank
wrote are recorded), the trajectory reads back bit-exact with ``snapsink.open``
and with plain ``xarray.open_zarr``, a rank killed mid-run leaves only globally
committed frames, ``mode="a"`` resumes from the global count, and a misaligned
chunk or another rank count is a ConfigError.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import snapsink

pytest.importorskip("mpi4py")
xr = pytest.importorskip("xarray")

from _driver import block, check_trajectory, expected_particles, expected_rho  # noqa: E402

HERE = Path(__file__).parent
DRIVER = HERE / "_driver.py"


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def _env() -> dict[str, str]:
    src = str(HERE.parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def mpirun(n: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [_mpiexec(), "-n", str(n), sys.executable, str(DRIVER), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _chunk_files(record: Path) -> set[str]:
    return {line for line in record.read_text().splitlines() if "/c/" in line}


def test_four_ranks_write_one_trajectory(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    rec = tmp_path / "writes"
    out = mpirun(4, str(path), "--steps", "12", "--record", str(rec))
    assert out.returncode == 0, out.stderr
    traj = check_trajectory(path, 4, frames=12)
    assert traj.closed
    assert traj.attrs == {"run": "parallel"}
    # the global index: rows per rank of every frame
    index = traj._source.rank_index("particles")  # type: ignore[attr-defined]
    want = [[len(expected_particles(i, r)) for r in range(4)] for i in range(12)]
    np.testing.assert_array_equal(index, want)
    # Dask: the ragged field's global rows and offsets, read in chunks over the ranks
    pytest.importorskip("dask")
    arrays = traj.to_dask()
    rows = np.concatenate([expected_particles(i, r) for i in range(12) for r in range(4)])
    assert np.array_equal(arrays["particles"].compute(), rows)
    assert np.array_equal(arrays["particles"][5:17].compute(), rows[5:17])
    np.testing.assert_array_equal(
        arrays["particles.offsets"].compute(), np.concatenate([[0], np.cumsum(np.sum(want, 1))])
    )
    # plain xarray: the global field, and each rank's ragged rows as its own arrays
    ds = xr.open_zarr(path, consolidated=False)
    expected = np.stack([expected_rho(i) for i in range(12)])
    assert np.array_equal(ds["rho"].values, expected)
    for r in range(4):
        off = ds[f"particles.rank{r}.offsets"].values
        rows = ds[f"particles.rank{r}"].values
        for i in range(12):
            assert np.array_equal(rows[off[i] : off[i + 1]], expected_particles(i, r))
    # ownership: no chunk file written by two ranks; each rank's rho chunks are its block's
    files = {r: _chunk_files(Path(f"{rec}.{r}")) for r in range(4)}
    for r in range(4):
        for q in range(r + 1, 4):
            assert not files[r] & files[q], (r, q)
        ys, xs = block(r, 4)
        rho = {f for f in files[r] if "/rho/" in f}
        grid = {tuple(int(k) for k in f.split("/c/")[1].split("/")[1:]) for f in rho}
        assert grid == {(ys.start // 8, xs.start // 12)}
        others = {f.split(str(path) + "/")[1].split("/")[0] for f in files[r] - rho}
        assert others <= (
            {"steps", "times", "energy", f"particles.rank{r}", f"particles.rank{r}.offsets"}
            if r == 0
            else {f"particles.rank{r}", f"particles.rank{r}.offsets"}
        )
    group_meta = str(path / "zarr.json")
    assert group_meta in Path(f"{rec}.0").read_text().splitlines()
    for r in (1, 2, 3):  # only rank 0 writes the group's metadata
        assert group_meta not in Path(f"{rec}.{r}").read_text().splitlines()


def test_two_ranks_smaller_chunks_and_a_misaligned_one(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--steps", "7", "--chunks", '{"rho": [8, 6]}')
    assert out.returncode == 0, out.stderr
    check_trajectory(path, 2, frames=7)
    assert snapsink.open(path)._source._arrays["rho"].chunks[1:] == (8, 6)  # type: ignore[attr-defined]
    bad = mpirun(2, str(tmp_path / "bad.zarr"), "--chunks", '{"rho": [5, 6]}')
    assert bad.returncode != 0
    assert "ConfigError: chunks['rho']: expected a divisor" in bad.stderr
    assert "(16, 12)" in bad.stderr and "got (5, 6)" in bad.stderr


def test_ranks_writing_other_steps_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--steps", "4", "--skew")
    assert out.returncode != 0
    assert "StoreStateError" in out.stderr and "ranks disagree at a commit" in out.stderr
    traj = snapsink.open(path)  # nothing of the disagreeing frames is committed
    assert len(traj) == 0


def test_ranks_writing_other_steps_before_the_last_fail_clearly(tmp_path: Path) -> None:
    """Steps 0, 1, 3 on rank 0 and 0, 2, 3 on rank 1: the commit compared only
    the count and the last step, so frame 'step 1' held rank 1's step 2 (found
    by a probe). Every step since the open is compared now."""
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--steps", "3", "--commit-every", "3", "--other-middle", "1")
    assert out.returncode != 0
    assert "the steps or times before the last differ" in out.stderr, out.stderr
    assert len(snapsink.open(path)) == 0


def test_a_rank_given_another_store_fails_every_rank_and_writes_nothing(tmp_path: Path) -> None:
    """Rank 1 given another (existing) store wrote its blocks into it, and rank
    0 committed the trajectory without them, fill values where they belonged,
    'closed cleanly' (found by a probe)."""
    old = tmp_path / "old.zarr"
    assert mpirun(2, str(old), "--steps", "4").returncode == 0
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--mode", "w", "--other-path", f"1:{old}")
    assert out.returncode != 0
    assert "the ranks open different stores" in out.stderr, out.stderr
    assert f"rank 1: {str(old)!r}" in out.stderr
    assert not path.exists()
    check_trajectory(old, 2, frames=4)  # the other store as it was


def test_a_failing_rank_fails_every_rank_never_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    # rank 1's disk fails after a few block writes; the others learn it at their
    # next commit (every 3 frames) and fail too, instead of waiting for rank 1
    out = mpirun(2, str(path), "--steps", "30", "--commit-every", "3",
                 "--fail-rank", "1", "--fail-after", "8")  # fmt: skip
    assert out.returncode != 0
    assert "rank 1: " in out.stderr and "rank 0: " in out.stderr, out.stderr
    assert "rank 1 failed" in out.stderr and "injected I/O error" in out.stderr
    traj = check_trajectory(path, 2)  # the commits before the failure, bit-exact
    assert 3 <= len(traj) < 30
    assert len(traj) % 3 == 0


def test_a_rank_refused_before_prepare_fails_every_rank_never_a_hang(tmp_path: Path) -> None:
    # the schema is inferred; rank 1's first write is refused (NaN time), so it
    # goes from its open to its close while rank 0 prepares the store: the two
    # meet in one exchange and both fail (before: each waited in another collective)
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--steps", "3", "--nan-first-rank", "1", timeout=30)
    assert out.returncode != 0
    assert "rank 1: SchemaError: time at step 0" in out.stderr, out.stderr
    assert "rank 0: Misaligned: the ranks reached different steps" in out.stderr, out.stderr
    assert "rank 1: commit" in out.stderr and "rank 0: prepare" in out.stderr
    assert len(snapsink.open(path)) == 0  # nothing committed


def test_a_field_with_an_empty_dimension_compressed(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--steps", "4", "--commit-every", "3", "--empty-field",
                 "--compressors", "auto", timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    traj = check_trajectory(path, 2, frames=4)
    assert traj["none"][:].shape == (4, 0, 2)


def _progress(prefix: Path, ranks: int) -> dict[int, tuple[int, int]]:
    """``{rank: (last flushed step, pid)}`` of the ranks that flushed yet."""
    out = {}
    for r in range(ranks):
        try:
            step, pid = Path(f"{prefix}.{r}").read_text().split()
        except (FileNotFoundError, ValueError):
            continue
        out[r] = (int(step), int(pid))
    return out


def test_killed_rank_leaves_committed_frames_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    prog = tmp_path / "progress"
    cmd = [_mpiexec(), "-n", "4", sys.executable, str(DRIVER), str(path), "--steps", "2000",
           "--sleep", "0.01", "--flush-every", "4", "--commit-every", "3",
           "--progress", str(prog)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for rank 2 to have flushed a few times
            seen = _progress(prog, 4)
            if 2 in seen and seen[2][0] >= 15:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ranks never flushed"
            time.sleep(0.02)
        flushed = max(step for step, _ in _progress(prog, 4).values()) + 1
        os.kill(seen[2][1], signal.SIGKILL)
        proc.wait(timeout=60)  # mpiexec takes the job down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode != 0
    traj = check_trajectory(path, 4)  # every committed frame bit-exact
    n = len(traj)
    assert flushed <= n < 2000
    assert not traj.closed
    # resume on 4 ranks from the global count; frames past it are overwritten
    out = mpirun(4, str(path), "--mode", "a", "--start", str(n), "--steps", "5")
    assert out.returncode == 0, out.stderr
    check_trajectory(path, 4, frames=n + 5)
    # another rank count: refused, nothing written
    bad = mpirun(2, str(path), "--mode", "a", "--start", str(n + 5))
    assert bad.returncode != 0
    assert "ConfigError" in bad.stderr and "written by 4 ranks" in bad.stderr
    check_trajectory(path, 4, frames=n + 5)


def test_ranks_given_other_commit_every_or_chunks_are_refused_at_open(tmp_path: Path) -> None:
    """commit_every decides when a rank commits: ranks given 5 and 4 disagreed at
    their first commit, blaming the steps, and lost every frame; another chunks=
    was silently replaced by rank 0's (found by a probe). Both are compared at
    the open, with the path, group and mode."""
    path = tmp_path / "run.zarr"
    out = mpirun(2, str(path), "--commit-every", "5", "--rank-options", '1:{"commit_every": 4}')
    assert out.returncode != 0
    assert "ConfigError" in out.stderr, out.stderr
    assert "commit_every: the ranks give different values (rank 0: 5; rank 1: 4)" in out.stderr
    assert not path.exists()  # refused before anything was written
    out = mpirun(
        2,
        str(path),
        "--chunks",
        '{"rho": [8, 6]}',
        "--rank-options",
        '1:{"chunks": {"rho": [4, 6]}}',
    )
    assert out.returncode != 0
    assert "chunks: the ranks give different values" in out.stderr, out.stderr
    assert "rank 0: {'rho': (8, 6)}; rank 1: {'rho': (4, 6)}" in out.stderr
    assert not path.exists()


# One process, no mpiexec (MPI starts as a singleton): the store's duplicate of
# the communicator on every path, read back as the handle MPI_Comm_free nulls.
_FREES = """
import gc, json, sys
import numpy as np
from mpi4py import MPI
import snapsink
from _driver import fail_writes_after

where = sys.argv[1]
schema = snapsink.Schema({"u": snapsink.Field("float32", (4,))})
frame = {"u": np.zeros(4, np.float32)}

def store(name, comm=MPI.COMM_WORLD):
    return snapsink.ZarrStore(f"{where}/{name}", comm=comm, region={"u": (slice(0, 4),)})

freed = {}
s = store("closed.zarr")
with snapsink.SyncSink(s, schema=schema) as sink:
    sink.write(frame, step=0)
freed["closed"] = s._comm._comm == MPI.COMM_NULL
s = store("refused.zarr")  # its sink refuses it: never opened, then dropped
dup = s._comm._comm
try:
    snapsink.SyncSink(s, schema=schema, policy="drop_newest")
except snapsink.ConfigError:
    pass
del s
gc.collect()
freed["refused"] = dup == MPI.COMM_NULL
s = store("closed.zarr")  # mode="x" on an existing store: the open raises
try:
    with snapsink.SyncSink(s, schema=schema):
        pass
except snapsink.StoreExistsError:
    pass
freed["open failed"] = s._comm._comm == MPI.COMM_NULL
fail_writes_after(0)  # the first block write fails: the close is not clean
s = store("failed.zarr")
try:
    with snapsink.SyncSink(s, schema=schema) as sink:
        sink.write(frame, step=0)
        sink.flush()
except snapsink.WriterError:
    pass
freed["failed"] = s._comm._comm == MPI.COMM_NULL
try:
    store("null.zarr", comm=MPI.COMM_WORLD.Split(MPI.UNDEFINED))
except Exception as exc:
    freed["null"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(freed))
"""


def test_the_duplicate_is_freed_on_every_path_and_comm_null_is_refused(tmp_path: Path) -> None:
    """Only a clean close freed the store's Dup: refused, failed or unopened
    stores leaked one each, until MPI_Comm_dup failed after about 2,000 of them
    (found by a probe). COMM_NULL (a rank a Split left out) was a raw MPI error."""
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-c", _FREES, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    freed = json.loads(out.stdout.splitlines()[-1])
    null = freed.pop("null")
    assert freed == {"closed": True, "refused": True, "open failed": True, "failed": True}
    assert null.startswith("ConfigError: comm: got MPI.COMM_NULL: this process is not a member")
