"""Disk throughput: NpyDirectory and ZarrStore through a Sink, next to raw writes,
tensorstore on the same Zarr array and the zstd codec alone, all in one run on one disk.

Every variant writes the same frames (float32, of each ``--sizes-kib``: 64 KiB,
2 MiB and 16 MiB by default) into fresh files in a temp directory under
``--dir`` (default: the current directory, whose disk is measured; removed at
the end, after Ctrl-C or SIGTERM too), and ends with everything durable:

- ``raw``: the frame bytes written with ``os.write`` (one call per frame) into
  one file, one ``fsync`` at the end (and of the directory). The most favourable
  cadence for raw: the stores also fsync at each commit (their defaults:
  NpyDirectory every 4096 frames or 5 s, ZarrStore every 1024 frames or 5 s),
  so the ratios against raw are conservative.
- ``raw direct``: the same, with ``O_DIRECT`` from page-aligned copies of the
  frames (when a frame is a whole number of pages): the disk reading the frames
  by DMA, with no page-cache copy, which is what the stores do for large aligned
  runs (``stores/_pwrite.py``). The ratios against ``raw`` keep the buffered
  baseline the targets were set against; ``.../raw direct`` is reported beside.
- ``npy``: ``snapsink.Sink(NpyDirectory(...), policy="block")`` from an async loop.
- ``zarr``, ``zarr+zstd1`` (and ``zarr+lz4`` with ``--all``):
  ``Sink(ZarrStore(..., compressors=...))``, default chunking.
- ``tensorstore``, ``tensorstore+zstd1`` (when tensorstore is installed; an
  optional peer, not a snapsink dependency): the same Zarr v3 array (same
  chunks, same codecs) written by tensorstore from the same loop, frames copied
  into a chunk buffer and each full chunk written asynchronously (``write`` of a
  chunk; the buffer reused once tensorstore copied it), then every file fsynced.
- ``naive zarr...`` (with ``--all``): ``zarr.create_array`` preallocated for all
  frames, one chunk per frame, ``arr[i] = frame`` per frame; then every file
  and directory fsynced (zarr itself never fsyncs).

The compressed ceiling: the zstd codec alone (numcodecs ``Zstd(level=1)``, what
zarr's ``ZstdCodec`` runs) encoding chunks of the same frames on one core, best
of 3, times the writer's cores: no compressed store can beat it on this machine.
Nor can it write faster than the disk takes its output: the table also gives
raw's rate over zstd's output/input ratio, and each compressed rate against the
lower of the two (``min(ceiling, disk)``; reported, no target). ZarrStore
encodes zstd with python-zstandard when it is installed (the ``zstd`` extra;
the same frames, faster on a core): then the table also gives that encoder's
own ceiling, the store's rate against it (no target), and the variant
``zarr+zstd1 numcodecs``, the same store with zarr's own encoder
(``SNAPSINK_ZSTD_ENCODER=numcodecs``), run in the same rounds.

Timing covers the writing of every frame until everything is durable; for the
sinks it starts once the sink is open (writer process started, store created:
a fixed ~0.3 s that is not throughput, reported apart as ``startup_s``), and
ends when the sink is closed (everything committed and fsynced). Variants are
interleaved (round r runs every variant once, in an order rotated per round);
each is run ``--repeats`` times and the best run is reported (``--stat median``
for the median): on a shared machine, interference only ever slows a run down.
``os.sync()`` runs before each measurement so no other dirty data is flushed
during it, and each variant's files are deleted after it (outside the timing).

    python benchmarks/throughput.py [--quick] [--dir DIR] [--json PATH | --save] [--all]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import zarr
import zarr.codecs
from zarr.storage import LocalStore

import snapsink
from snapsink.stores._pwrite import DIRECT_ALIGN, page_aligned_empty
from snapsink.stores._zarrio import ZSTD_ENCODER_ENV, zstd_encoder
from snapsink.stores._zarrplan import default_chunk_rows

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

MB = 1e6
DEFAULT_JSON = Path(__file__).parent / "results" / "throughput-cpu.json"
#: ZarrStore with zstd level 1 and zarr's own encoder (numcodecs), measured beside
#: the default when python-zstandard is the store's encoder
NUMCODECS_VARIANT = "zarr+zstd1 numcodecs"
#: distinct frames cycled through (enough that no store can dedupe, small enough
#: to generate quickly)
POOL = 8


def _compressors() -> dict[str, Any]:
    """The compressor settings measured: uncompressed, zstd level 1, blosc lz4."""
    return {
        "": None,
        "+zstd1": zarr.codecs.ZstdCodec(level=1),
        "+lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }


def _frames(frame_bytes: int, seed: int = 0) -> list[np.ndarray[Any, Any]]:
    """Simulation-like float32 frames: a smooth field plus noise, so that a
    compressor has something to find (not all zeros, not white noise)."""
    n = frame_bytes // 4
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 8 * np.pi, n, dtype=np.float64)
    out = []
    for k in range(POOL):
        f = np.sin(x + k) * 10.0 + rng.standard_normal(n) * 0.01
        out.append(f.astype(np.float32))
    return out


# -- the variants: each writes n frames into ``path`` and returns seconds ----------
def _fsync_tree(root: str) -> None:
    for d, _, files in os.walk(root):
        for name in files:
            _common.fsync_path(os.path.join(d, name))
        _common.fsync_path(d, directory=True)
    _common.fsync_path(os.path.dirname(root), directory=True)


def _raw(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
    t0 = time.perf_counter()
    os.mkdir(path)
    _common.raw_write(os.path.join(path, "raw.bin"), pool, n)
    _common.fsync_path(path, directory=True)
    return time.perf_counter() - t0


def _raw_direct(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
    aligned = []
    for frame in pool:  # outside the timing: the stores' slots are page aligned too
        a = page_aligned_empty(frame.shape, frame.dtype)
        a[...] = frame
        aligned.append(a)
    t0 = time.perf_counter()
    os.mkdir(path)
    _common.raw_write(os.path.join(path, "raw.bin"), aligned, n, os.O_DIRECT)
    _common.fsync_path(path, directory=True)
    return time.perf_counter() - t0


STARTUP: dict[str, list[float]] = {}


def _through_sink(make_store: Callable[[], Any], pool: list[np.ndarray[Any, Any]], n: int,
                  capacity: int, name: str = "") -> float:
    async def main() -> float:
        t_enter = time.perf_counter()
        async with snapsink.Sink(make_store(), capacity=capacity, policy="block") as sink:
            t0 = time.perf_counter()
            STARTUP.setdefault(name, []).append(t0 - t_enter)
            for i in range(n):
                await sink.write({"x": pool[i % POOL]}, step=i)
        return time.perf_counter() - t0

    return anyio.run(main)


def _npy(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
    return _through_sink(lambda: snapsink.NpyDirectory(path), pool, n, capacity, "npy")


def _zarr(name: str, compressors: Any, zstd_encoder: str | None = None) -> Callable[..., float]:
    """``zstd_encoder``: run the sink (and its writer process, which inherits the
    environment) with ``SNAPSINK_ZSTD_ENCODER`` set to it. ``name``: the variant's,
    which keys its ``startup_s`` (one shared key kept only the fastest variant's)."""

    def run(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
        def go() -> float:
            return _through_sink(
                lambda: snapsink.ZarrStore(path, compressors=compressors), pool, n, capacity,
                name,
            )

        if zstd_encoder is None:
            return go()
        old = os.environ.get(ZSTD_ENCODER_ENV)
        os.environ[ZSTD_ENCODER_ENV] = zstd_encoder
        try:
            return go()
        finally:
            if old is None:
                del os.environ[ZSTD_ENCODER_ENV]
            else:
                os.environ[ZSTD_ENCODER_ENV] = old

    return run


def _naive(compressors: Any) -> Callable[..., float]:
    def run(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
        shape = pool[0].shape
        t0 = time.perf_counter()
        arr = zarr.create_array(
            LocalStore(path),
            shape=(n, *shape),
            chunks=(1, *shape),
            dtype=pool[0].dtype,
            compressors=compressors,
        )
        for i in range(n):
            arr[i] = pool[i % POOL]
        _fsync_tree(path)
        return time.perf_counter() - t0

    return run


def _chunk_rows(pool: list[np.ndarray[Any, Any]]) -> int:
    """Frames per chunk: ZarrStore's default for these frames (the same array)."""
    return default_chunk_rows(pool[0].nbytes)


def _tensorstore(level: int | None) -> Callable[..., float]:
    def run(path: str, pool: list[np.ndarray[Any, Any]], n: int, capacity: int) -> float:
        import tensorstore as ts

        shape = list(pool[0].shape)
        rows = _chunk_rows(pool)
        codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if level is not None:
            codecs.append({"name": "zstd", "configuration": {"level": level, "checksum": False}})
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": path},
            "metadata": {
                "shape": [n, *shape],
                "chunk_grid": {"name": "regular",
                               "configuration": {"chunk_shape": [rows, *shape]}},
                "data_type": "float32",
                "codecs": codecs,
            },
            "create": True,
        }
        t0 = time.perf_counter()
        arr = ts.open(spec).result()
        bufs = [np.empty((rows, *shape), np.float32) for _ in range(2)]
        copies: list[Any] = [None, None]
        commits = []
        for i in range(n):
            k = (i // rows) % 2
            if i % rows == 0 and copies[k] is not None:
                copies[k].result()  # tensorstore has copied this buffer: reuse it
            bufs[k][i % rows] = pool[i % POOL]
            if i % rows == rows - 1 or i == n - 1:
                start = i - i % rows
                fut = arr[start : i + 1].write(bufs[k][: i + 1 - start])
                copies[k] = fut.copy
                commits.append(fut.commit)
        for c in commits:
            c.result()
        _fsync_tree(path)
        return time.perf_counter() - t0

    return run


def _have_tensorstore() -> bool:
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        return False
    return True


def _one_core_rate(
    encode: Callable[[Any], Any], chunk: np.ndarray[Any, Any], repeats: int
) -> float:
    reps = max(1, int(64e6 // chunk.nbytes))
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            encode(chunk)
        best = max(best, reps * chunk.nbytes / MB / (time.perf_counter() - t0))
    return best


def zstd_ceiling(pool: list[np.ndarray[Any, Any]], repeats: int = 3) -> dict[str, Any]:
    """MB/s of zstd level 1 (numcodecs, what zarr's ZstdCodec runs) on one core,
    over chunks of these frames, and that times the writer's cores: the issue's
    ceiling. Beside it, the same for the encoder ZarrStore runs (python-zstandard
    when installed, see ``docs/formats/zarr.md``)."""
    from numcodecs import Zstd

    from snapsink.stores._zarrio import worker_count

    codec = Zstd(level=1)
    rows = _chunk_rows(pool)
    chunk = np.stack([pool[i % POOL] for i in range(rows)])
    best = _one_core_rate(codec.encode, chunk, repeats)
    cores = min(worker_count(), os.cpu_count() or 1)
    out_in = len(codec.encode(chunk)) / chunk.nbytes
    out: dict[str, Any] = {
        "one_core_mb_per_s": best,
        "cores": cores,
        "ceiling_mb_per_s": best * cores,
        "compressed_over_raw": out_in,
        "encoder": zstd_encoder(),
    }
    if out["encoder"] == "zstandard":
        import zstandard

        fast = zstandard.ZstdCompressor(level=1, write_content_size=True)
        one = _one_core_rate(fast.compress, chunk, repeats)
        out["encoder_one_core_mb_per_s"] = one
        out["encoder_ceiling_mb_per_s"] = one * cores
    return out


def _check(name: str, path: str, pool: list[np.ndarray[Any, Any]], n: int) -> None:
    """Everything written reads back (outside the timing)."""
    if name in ("raw", "raw direct"):
        assert os.path.getsize(os.path.join(path, "raw.bin")) == n * pool[0].nbytes
        return
    if name.startswith(("naive", "tensorstore")):
        arr = zarr.open_array(LocalStore(path, read_only=True), mode="r")
        got = [arr[0], arr[n - 1]]
    else:
        traj = snapsink.open(path)
        assert len(traj) == n, (name, len(traj), n)
        got = [traj["x"][0], traj["x"][n - 1]]
    np.testing.assert_array_equal(got[0], pool[0])
    np.testing.assert_array_equal(got[1], pool[(n - 1) % POOL])


def variants(everything: bool = False) -> dict[str, Callable[..., float]]:
    """The variants measured; ``everything`` adds lz4 and the naive zarr loops."""
    out: dict[str, Callable[..., float]] = {"raw": _raw, "npy": _npy}
    if hasattr(os, "O_DIRECT"):
        out["raw direct"] = _raw_direct
    comps = _compressors()
    if not everything:
        comps.pop("+lz4")
    for label, c in comps.items():
        out[f"zarr{label}"] = _zarr(f"zarr{label}", c)
    if zstd_encoder() == "zstandard":
        # the same store with zarr's own zstd encoder, side by side
        out[NUMCODECS_VARIANT] = _zarr(NUMCODECS_VARIANT, comps["+zstd1"], "numcodecs")
    if _have_tensorstore():
        out["tensorstore"] = _tensorstore(None)
        out["tensorstore+zstd1"] = _tensorstore(1)
    if everything:
        for label, c in comps.items():
            out[f"naive zarr{label}"] = _naive(c)
    return out


def measure_case(
    root: str, frame_bytes: int, n: int, capacity: int, repeats: int,
    only: list[str] | None = None, everything: bool = False,
) -> dict[str, Any]:
    pool = _frames(frame_bytes)
    todo = variants(everything)
    if only:
        todo = {k: v for k, v in todo.items() if k in only}
    if frame_bytes % DIRECT_ALIGN:  # direct I/O writes whole pages
        todo.pop("raw direct", None)
    names = list(todo)
    secs: dict[str, list[float]] = {k: [] for k in names}
    total = n * frame_bytes
    STARTUP.clear()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            path = os.path.join(root, f"{name.replace(' ', '_').replace('+', '_')}-{r}")
            os.sync()
            secs[name].append(todo[name](path, pool, n, capacity))
            _check(name, path, pool, n)
            shutil.rmtree(path)
    return {
        "frame_bytes": frame_bytes,
        "frames": n,
        "total_bytes": total,
        "capacity": capacity,
        "seconds": secs,
        "mb_per_s": {k: [total / MB / s for s in v] for k, v in secs.items()},
        "chunk_frames": _chunk_rows(pool),
        "zstd": zstd_ceiling(pool),
        "startup_s": {k: min(v) for k, v in STARTUP.items()},
    }


def summarize(case: dict[str, Any], stat: str) -> dict[str, Any]:
    pick = max if stat == "best" else statistics.median
    rate = {k: pick(v) for k, v in case["mb_per_s"].items()}
    ratios: dict[str, float] = {}
    targets: dict[str, float] = {}
    if "raw" in rate:
        for k in ("npy", "zarr", "tensorstore"):
            if k in rate:
                ratios[f"{k}/raw"] = rate[k] / rate["raw"]
        targets["npy/raw"] = 0.9
        targets["zarr/raw"] = 0.6 if case["frame_bytes"] < (1 << 20) else 0.8
    if "raw direct" in rate:
        for k in ("raw", "npy", "zarr", "tensorstore"):
            if k in rate:
                ratios[f"{k}/raw direct"] = rate[k] / rate["raw direct"]
    z = case["zstd"]
    ceiling = z["ceiling_mb_per_s"]
    # What the disk allows a compressed store: its output (compressed_over_raw
    # of the input) at most at raw's rate in this run. Where that is below the
    # codec's ceiling, no compressed store can reach the ceiling here; the
    # ratio against the lower of the two is reported beside (no target).
    if "raw" in rate and z.get("compressed_over_raw"):
        z["disk_bound_mb_per_s"] = rate["raw"] / z["compressed_over_raw"]
        z["achievable_mb_per_s"] = min(ceiling, z["disk_bound_mb_per_s"])
    for k in ("zarr+zstd1", NUMCODECS_VARIANT, "tensorstore+zstd1"):
        if k in rate:
            ratios[f"{k}/zstd ceiling"] = rate[k] / ceiling
            if "achievable_mb_per_s" in z:
                ratios[f"{k}/min(ceiling, disk)"] = rate[k] / z["achievable_mb_per_s"]
    if "zarr+zstd1" in rate and "encoder_ceiling_mb_per_s" in z:
        # against the ceiling of the encoder the store ran (no target: the
        # issue's is numcodecs')
        ratios["zarr+zstd1/its encoder's ceiling"] = rate["zarr+zstd1"] / z[
            "encoder_ceiling_mb_per_s"
        ]
    if "zarr+zstd1" in rate and NUMCODECS_VARIANT in rate:
        ratios[f"zarr+zstd1/{NUMCODECS_VARIANT}"] = rate["zarr+zstd1"] / rate[NUMCODECS_VARIANT]
    targets["zarr+zstd1/zstd ceiling"] = 0.8
    for z, t in (("zarr", "tensorstore"), ("zarr+zstd1", "tensorstore+zstd1")):
        if z in rate and t in rate:
            ratios[f"{z}/{t}"] = rate[z] / rate[t]
            targets[f"{z}/{t}"] = 1.0  # the goal: at or above tensorstore
    for label in _compressors():
        z, nv = f"zarr{label}", f"naive zarr{label}"
        if z in rate and nv in rate:
            ratios[f"{z}/{nv}"] = rate[z] / rate[nv]
            targets[f"{z}/{nv}"] = 2.0
    case["stat"] = stat
    case["rate"] = rate
    case["best_mb_per_s"] = {k: max(v) for k, v in case["mb_per_s"].items()}
    case["median_mb_per_s"] = {k: statistics.median(v) for k, v in case["mb_per_s"].items()}
    case["ratios"] = ratios
    case["targets"] = {k: v for k, v in targets.items() if k in ratios}
    case["met"] = {k: ratios[k] >= v for k, v in case["targets"].items()}
    return case


SIZES_KIB = (64.0, 2048.0, 16384.0)


def run(
    directory: str | None = None,
    *,
    quick: bool = False,
    sizes_kib: tuple[float, ...] = SIZES_KIB,
    total_mib: float | None = None,
    capacity: int = 8,
    small_capacity: int = 64,
    repeats: int = 3,
    stat: str = "best",
    only: list[str] | None = None,
    everything: bool = False,
) -> dict[str, Any]:
    """Measure every variant for each frame size (``total_mib`` written per run)."""
    total_mib = total_mib or (256.0 if quick else 1024.0)
    # the current directory's file system (not the temp one, often tmpfs) is the
    # disk measured; the scratch directory goes with the run, SIGTERM included
    base = directory or os.getcwd()
    os.makedirs(base, exist_ok=True)
    load_before = _loadavg()
    cases = {}
    with _common.scratch("snapsink-throughput-", base) as where:
        root = str(where)
        for kib in sizes_kib:
            fbytes = int(kib * 1024)
            fbytes -= fbytes % 4
            label = f"{kib / 1024:g} MiB" if kib >= 1024 else f"{kib:g} KiB"
            cap = small_capacity if fbytes < (1 << 20) else capacity
            n = max(2, int(total_mib * (1 << 20)) // fbytes)
            cases[label] = summarize(
                measure_case(root, fbytes, n, cap, repeats, only, everything), stat
            )
    try:
        from importlib.metadata import version

        ts_version: str | None = version("tensorstore")
    except ImportError:
        ts_version = None
    except Exception:  # PackageNotFoundError: not installed
        ts_version = None
    return {
        "benchmark": "throughput",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "tensorstore": ts_version,
        "filesystem": _common.filesystem(root),
        "repeats": repeats,
        "raw_fsync": "one fsync at the end (and of the directory)",
        "loadavg_before_after": [load_before, _loadavg()],
        "timing": "sinks: from the open sink to its close (startup_s apart)",
        "cases": cases,
    }


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (a shared machine's numbers are only
    as good as its load), or None where there are none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def print_table(result: dict[str, Any]) -> None:
    print(f"disk throughput on {result['filesystem']}, {result['cpus']} CPUs; "
          f"{result['repeats']} interleaved runs per variant; load average before, after: "
          + ", ".join(str(x) for x in result.get("loadavg_before_after", [])))
    for label, case in result["cases"].items():
        print()
        z = case["zstd"]
        print(f"{label} frames: {case['frames']} x {case['frame_bytes'] / 1024:.0f} KiB "
              f"= {case['total_bytes'] / MB:.0f} MB, sink capacity {case['capacity']}, "
              f"{case['chunk_frames']} frames a chunk, {case['stat']} of runs")
        print(f"zstd level 1 alone (numcodecs): {z['one_core_mb_per_s']:.0f} MB/s on one core, "
              f"ceiling {z['ceiling_mb_per_s']:.0f} MB/s on {z['cores']}; sink startup (not "
              "timed): " + ", ".join(f"{k} {v:.2f} s" for k, v in case["startup_s"].items()))
        if "encoder_one_core_mb_per_s" in z:
            print(f"ZarrStore's zstd encoder, {z['encoder']}: "
                  f"{z['encoder_one_core_mb_per_s']:.0f} MB/s on one core, ceiling "
                  f"{z['encoder_ceiling_mb_per_s']:.0f} MB/s on {z['cores']}")
        if "disk_bound_mb_per_s" in z:
            print(f"zstd output is {z['compressed_over_raw']:.2f} of its input: the raw disk "
                  f"rate allows a compressed store {z['disk_bound_mb_per_s']:.0f} MB/s of input")
        print(f"{'variant':<20}{'MB/s':>10}   runs (MB/s)")
        for name, r in case["rate"].items():
            runs = " ".join(f"{x:.0f}" for x in case["mb_per_s"][name])
            print(f"{name:<20}{r:>10.0f}   {runs}")
        print(f"{'ratio':<38}{'value':>8}{'target':>9}")
        for k, v in case["ratios"].items():
            t = case["targets"].get(k)
            mark = "" if t is None else ("  ok" if v >= t else "  MISSED")
            tt = "" if t is None else f">= {t:g}"
            print(f"{k:<38}{v:>8.2f}{tt:>9}{mark}")


def _frame_kib(text: str) -> float:
    """A frame size in KiB: at least one float32 (4 bytes); a smaller one rounded
    down to no element and divided by zero after the setup."""
    kib = float(text)
    if not kib * 1024 >= 4:
        raise argparse.ArgumentTypeError(f"expected a frame of at least 4 bytes "
                                         f"(0.00390625 KiB), got {text!r} KiB")
    return kib


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir",
        default=None,
        help="where the temp directory of the stores goes (default: the current "
        "directory, whose disk is measured); removed at the end, SIGTERM included",
    )
    parser.add_argument("--quick", action="store_true", help="256 MiB a run instead of 1 GiB")
    parser.add_argument("--sizes-kib", type=_frame_kib, nargs="+", default=list(SIZES_KIB),
                        help="frame sizes in KiB (default: 64 2048 16384)")
    parser.add_argument("--total-mib", type=float, default=None, help="MiB written per run")
    parser.add_argument("--capacity", type=int, default=8,
                        help="sink capacity, frames of 1 MiB or more")
    parser.add_argument("--small-capacity", type=int, default=64,
                        help="sink capacity, smaller frames")
    parser.add_argument("--all", action="store_true",
                        help="also blosc lz4 and the naive zarr loops")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stat", choices=("median", "best"), default="best")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--json", default=None,
                       help="where the result goes (default: nowhere; '' for nowhere too)")
    where.add_argument("--save", action="store_true",
                       help=f"write it over the recorded results/{DEFAULT_JSON.name}")
    args = parser.parse_args(argv)
    result = run(
        args.dir, quick=args.quick, sizes_kib=tuple(args.sizes_kib), total_mib=args.total_mib,
        capacity=args.capacity, small_capacity=args.small_capacity, repeats=args.repeats,
        stat=args.stat, only=args.only, everything=args.all,
    )
    # only when asked: a trial run used to overwrite the results the docs render
    path = DEFAULT_JSON if args.save else (args.json or None)
    return _common.finish(result, print_table, path)


if __name__ == "__main__":
    main()
