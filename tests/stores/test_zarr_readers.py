"""ZarrStore read by plain tools while it grows, after a SIGKILL, and its size on disk.

xarray and zarr know nothing of snapsink's committed count: they read each
array's shape. A store keeps every array's shape equal to the committed count
at each commit, so ``xarray.open_zarr`` reads the committed frames mid-run and
after a crash, and a short run's partly filled chunks are holes on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import snapsink

xr = pytest.importorskip("xarray", reason="needs xarray: pip install -e '.[test]'")


def _frame(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((10, 3), i, np.float64), "e": np.float32(i) / 4}


def _open(path: Path) -> Any:
    return xr.open_zarr(path, consolidated=False)


def test_xarray_reads_the_committed_frames_mid_run(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with snapsink.SyncSink(snapsink.ZarrStore(path, chunk_frames=16)) as sink:
        for i in range(40):
            sink.write(_frame(i), step=i, time=i * 0.5)
        sink.flush()
        for i in range(40, 70):  # written, maybe stored, not committed
            sink.write(_frame(i), step=i, time=i * 0.5)
        ds = _open(path)
        assert ds.sizes["frame"] == 40
        np.testing.assert_array_equal(ds["x"].values, np.stack([_frame(i)["x"] for i in range(40)]))
        np.testing.assert_array_equal(ds["steps"].values, np.arange(40))
        np.testing.assert_array_equal(ds["times"].values, np.arange(40) * 0.5)
        arr = zarr.open_array(path / "e", mode="r")
        assert arr.shape == (40,)
        sink.flush()
        assert _open(path).sizes["frame"] == 70
    ds = _open(path)
    np.testing.assert_array_equal(ds["e"].values, np.arange(70, dtype=np.float32) / 4)


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np, snapsink
    path, committed = sys.argv[1], int(sys.argv[2])
    # the writer in this process, so that the SIGKILL stops it mid-write (a
    # writer process would drain and commit meanwhile: xarray and snapsink,
    # read one after the other, then saw different counts, 5 and 174)
    sink = snapsink.SyncSink(snapsink.ZarrStore(path, chunk_frames=16), writer="thread")
    i = 0
    while True:
        sink.write({"x": np.full((10, 3), i, np.float64)}, step=i)
        i += 1
        if i == committed:
            sink.flush()
            print("committed", flush=True)
    """
)


@pytest.mark.parametrize("committed", [5, 37])
def test_xarray_reads_a_store_left_by_a_sigkill(tmp_path: Path, committed: int) -> None:
    path = tmp_path / "run.zarr"
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(committed)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "committed"
            # let it write well past the commit (whole chunks of uncommitted frames)
            for _ in range(500):
                if any((path / "x" / "c").glob(f"{committed // 16 + 3}/*/*")):
                    break
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    ds = _open(path)
    n = ds.sizes["frame"]
    assert n >= committed
    traj = snapsink.open(path)
    assert len(traj) == n  # xarray sees exactly the committed frames
    np.testing.assert_array_equal(ds["steps"].values, np.arange(n))
    want = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, 10, 3))
    np.testing.assert_array_equal(ds["x"].values, want)


def _disk_bytes(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent bytes) of every file under ``path``."""
    used = apparent = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            used += st.st_blocks * 512
            apparent += st.st_size
    return used, apparent


def test_mode_a_realigns_arrays_a_crash_left_one_commit_ahead(tmp_path: Path) -> None:
    # a SIGKILL between the renames of one commit's array metadata leaves some
    # arrays one commit ahead (xarray: "conflicting sizes"); open with mode="a"
    # and close shows every array at the committed count again
    path = tmp_path / "run.zarr"
    store = snapsink.ZarrStore(path, compressors="auto", chunk_frames=4)
    with snapsink.SyncSink(store, writer="thread") as sink:
        for i in range(10):
            sink.write(_frame(i), step=i, time=i * 0.5)
    meta_path = path / "steps" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [13]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="conflicting sizes"):
        _open(path)
    with snapsink.SyncSink(snapsink.ZarrStore(path, "a"), writer="thread"):
        pass
    ds = _open(path)
    assert ds.sizes["frame"] == 10
    np.testing.assert_array_equal(ds["steps"].values, np.arange(10))
    np.testing.assert_array_equal(ds["x"].values, np.stack([_frame(i)["x"] for i in range(10)]))


@pytest.mark.parametrize("frames", [3, 100_000])
def test_a_store_takes_about_its_data_on_disk(tmp_path: Path, frames: int) -> None:
    """Within 1.5x the data plus a few KiB per array (metadata, a file system
    block per chunk file) at 3 frames and at 100,000."""
    path = tmp_path / "run.zarr"
    x = np.random.default_rng(0).random((frames, 10, 3))
    with snapsink.SyncSink(snapsink.ZarrStore(path), capacity=64) as sink:
        for i in range(frames):
            sink.write({"x": x[i]}, step=i, time=float(i))
    data = x.nbytes + frames * 16  # x, steps, times
    used, apparent = _disk_bytes(path)
    arrays = 3
    assert used <= 1.5 * data + arrays * 16 * 1024 + 16 * 1024, (used, apparent, data)
    np.testing.assert_array_equal(_open(path)["x"].values, x)
