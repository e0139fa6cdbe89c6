"""ZarrStore on a local S3 server (moto) next to ZarrStore on the local disk, in one run.

Every variant writes the same float32 frames (``--frame-kib``, 64 KiB by
default; ``--frames`` of them) through ``snapsink.SyncSink(ZarrStore(...),
writer="thread")`` and ends with everything committed (the sink closed):

- ``disk``: a ZarrStore on a directory under the temp dir (the local fast
  path: a thread pool, fsync before each commit's metadata);
- ``s3 cN``: a ZarrStore on ``s3://bucket/run-k.zarr`` served by moto's server
  (``python -m moto.server``, in a process of its own on 127.0.0.1), with at
  most N chunk PUTs in flight (``snapsink.stores.zarr._MAX_CONCURRENT_BLOCKS``),
  N in ``--concurrency``. The peak of PUTs actually in flight is reported.

Each chunk holds ``--chunk-frames`` frames (4 by default: 256 KiB chunks), so
a run PUTs frames / chunk_frames chunks of the data array. Variants are
interleaved, round by round; the best of ``--repeats`` is reported (a shared
machine only slows a run down). The last S3 run is read back with
``snapsink.open`` and checked bit-exact.

moto keeps objects in memory, in one Python process, and answers in well
under a millisecond: with ``--latency-ms 20`` each PUT is answered 20 ms late
(the server's request threads sleep), about what an S3 PUT takes, which shows
what the PUTs in flight hide. The figures are not what AWS gives.

    python benchmarks/s3.py [--quick] [--latency-ms MS] [--json PATH]

``--sweep`` runs three sweeps instead, on one moto server whose injected
latency is switched between variants (0 ms and 20 ms a PUT), all variants of
a sweep interleaved round by round, best of ``--repeats``:

- PUTs in flight (``--concurrency``) at chunks of ``--chunk-frames`` frames
  and at the default chunking, with the peak of PUTs in flight and the PUTs
  per frame the server counted;
- chunk and shard sizes at the default concurrency: 64 KiB, 1 MiB and 8 MiB
  chunks (``chunk_frames`` of 64 KiB frames), the default rule, and 64 KiB or
  1 MiB chunks in 1 MiB or 8 MiB shards (``shard_frames``), over
  ``--chunk-sweep-frames`` frames, with the PUTs (and other writes: the batch
  deletes of the trim at close) per frame;
- s3fs's multipart upload: ``_pipe_file`` (what zarr's ``FsspecStore.set``
  calls, with no part size: s3fs's default ``chunksize`` of 50 MiB, so one PUT
  below 100 MiB) of 32 and 128 MiB objects, one and four at a time, with parts
  of 8, 16 and 50 MiB or a single PUT; at 0 ms and at 20 ms plus 64 MiB/s per
  request (the bandwidth of one S3 connection is what parts are for).

    python benchmarks/s3.py --sweep [--quick] [--json benchmarks/results/s3-sweep-cpu.json]

The full sweep takes about 6 minutes on 2 cores, ``--quick`` under one.

Needs ``pip install "moto[server]" s3fs``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import snapsink
import snapsink.stores.zarr as zarr_writer

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (sibling module)

KEY = SECRET = "bench"


#: moto's server, each write (PUT, or POST: a batch delete, a multipart
#: upload's start and end) answered after ``latency`` seconds (its request
#: threads sleep, so PUTs in flight overlap, as on a real object store), plus
#: the body's size over ``bandwidth`` bytes/s when that is set (one S3
#: connection moves tens of MiB/s, which is why large objects go up in parts).
#: ``GET /_bench?latency=S&bandwidth=B`` changes them; any ``GET /_bench``
#: answers the writes counted so far: PUT and POST requests (POST: a batch
#: delete, or a multipart upload's start and end), PUTs alone, and their bytes.
_SERVER = """
import json, sys, threading, time
from urllib.parse import parse_qs
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main
knobs = {"latency": float(sys.argv[2]), "bandwidth": 0.0}
counts = {"writes": 0, "puts": 0, "bytes": 0}
lock = threading.Lock()
call = DomainDispatcherApplication.__call__
def delayed(self, environ, start_response):
    if environ.get("PATH_INFO") == "/_bench":
        for k, v in parse_qs(environ.get("QUERY_STRING", "")).items():
            knobs[k] = float(v[0])
        with lock:
            body = json.dumps(counts).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if environ["REQUEST_METHOD"] in ("PUT", "POST"):
        size = int(environ.get("CONTENT_LENGTH") or 0)
        with lock:
            counts["writes"] += 1
            counts["puts"] += environ["REQUEST_METHOD"] == "PUT"
            counts["bytes"] += size
        delay = knobs["latency"]
        if knobs["bandwidth"]:
            delay += size / knobs["bandwidth"]
        if delay:
            time.sleep(delay)
    return call(self, environ, start_response)
DomainDispatcherApplication.__call__ = delayed
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


def _knobs(endpoint: str, **knobs: float) -> dict[str, int]:
    """Set the server's injected latency/bandwidth; its write counts so far."""
    query = "&".join(f"{k}={v}" for k, v in knobs.items())
    with urllib.request.urlopen(f"{endpoint}/_bench?{query}", timeout=30) as r:
        counts: dict[str, int] = json.loads(r.read())
    return counts


@contextmanager
def moto_server(latency: float = 0.0) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1; its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port), str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
        "skip_instance_cache": True,
    }


def _frames(frame_bytes: int, pool: int = 8) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(frame_bytes // 4).astype(np.float32) for _ in range(pool)]


def _run(store: Any, frames: list[np.ndarray[Any, Any]], n: int) -> float:
    t0 = time.perf_counter()
    with snapsink.SyncSink(store, writer="thread", capacity=32) as sink:
        for i in range(n):
            sink.write({"x": frames[i % len(frames)]}, step=i, time=float(i))
    return time.perf_counter() - t0


# -- the sweeps (--sweep) ------------------------------------------------------
#: server profiles of the sweeps: injected latency (s) and per-request bandwidth
#: (bytes/s, 0: none). "20 ms" is about an S3 PUT's latency; the third adds a
#: per-connection bandwidth like S3's (tens of MiB/s), the case multipart is for.
_PROFILES: dict[str, dict[str, float]] = {
    "0 ms": {"latency": 0.0, "bandwidth": 0.0},
    "20 ms": {"latency": 0.02, "bandwidth": 0.0},
}
_WAN = {"latency": 0.02, "bandwidth": 64.0 * 2**20}
_WAN_NAME = "20 ms + 64 MiB/s per request"


def _s3_store_run(
    endpoint: str,
    url: str,
    frames: list[np.ndarray[Any, Any]],
    n: int,
    *,
    concurrency: int,
    chunk_frames: int | None,
    shard_frames: int | None,
) -> dict[str, Any]:
    """One ZarrStore run on ``url``: seconds, writes and bytes the server saw,
    the peak of PUTs in flight, and the data array's chunks/shards."""
    default = zarr_writer._MAX_CONCURRENT_BLOCKS
    zarr_writer._MAX_CONCURRENT_BLOCKS = concurrency
    try:
        store = snapsink.ZarrStore(
            url,
            storage_options=_options(endpoint),
            chunk_frames=chunk_frames,
            shard_frames=shard_frames,
        )
    finally:
        zarr_writer._MAX_CONCURRENT_BLOCKS = default
    before = _knobs(endpoint)
    t = _run(store, frames, n)
    after = _knobs(endpoint)
    plan = store._columns["x"].plan
    return {
        "seconds": t,
        "writes": after["writes"] - before["writes"],
        "puts": after["puts"] - before["puts"],
        "bytes": after["bytes"] - before["bytes"],
        "peak_in_flight": store._io.inflight.peak,
        "chunk_frames": plan.chunk,
        "shard_frames": plan.shard,
    }


def _keep_best(best: dict[tuple[str, str], dict[str, Any]], key: tuple[str, str], r: Any) -> None:
    if key not in best or r["seconds"] < best[key]["seconds"]:
        best[key] = r


def _sweep_concurrency(
    endpoint: str, args: argparse.Namespace, frames: list[np.ndarray[Any, Any]]
) -> list[dict[str, Any]]:
    """PUTs in flight, at small chunks (``--chunk-frames``) and the default rule."""
    chunkings: list[int | None] = [args.chunk_frames, None]
    best: dict[tuple[str, str], dict[str, Any]] = {}
    run = 0
    for _ in range(args.repeats):
        for profile, knobs in _PROFILES.items():
            _knobs(endpoint, **knobs)
            for cf in chunkings:
                for c in args.concurrency:
                    run += 1
                    r = _s3_store_run(
                        endpoint,
                        f"s3://bench/conc-{run}.zarr",
                        frames,
                        args.frames,
                        concurrency=c,
                        chunk_frames=cf,
                        shard_frames=None,
                    )
                    r.update(profile=profile, concurrency=c, chunking=_chunk_label(cf, None))
                    _keep_best(best, (profile, f"{cf} c{c}"), r)
    return _rows(best, args, base=lambda r: (r["profile"], r["chunking"], 1))


def _chunk_label(cf: int | None, sf: int | None) -> str:
    return "default" if cf is None and sf is None else f"cf={cf} sf={sf}"


def _sweep_chunks(
    endpoint: str, args: argparse.Namespace, frames: list[np.ndarray[Any, Any]]
) -> list[dict[str, Any]]:
    """Chunk and shard sizes at the default concurrency: chunk_frames of 64 KiB
    frames giving 64 KiB, 1 MiB and 8 MiB chunks, with and without shards."""
    per_mib = max(1, 1024 // args.frame_kib)
    variants: list[tuple[int | None, int | None]] = [
        (1, None),
        (per_mib, None),
        (8 * per_mib, None),
        (None, None),
        (1, per_mib),
        (1, 8 * per_mib),
        (per_mib, 8 * per_mib),
    ]
    if args.quick:
        variants = [(1, None), (None, None), (1, 8 * per_mib)]
    best: dict[tuple[str, str], dict[str, Any]] = {}
    run = 0
    for _ in range(args.repeats):
        for profile, knobs in _PROFILES.items():
            _knobs(endpoint, **knobs)
            for cf, sf in variants:
                run += 1
                r = _s3_store_run(
                    endpoint,
                    f"s3://bench/chunks-{run}.zarr",
                    frames,
                    args.chunk_sweep_frames,
                    concurrency=zarr_writer._MAX_CONCURRENT_BLOCKS,
                    chunk_frames=cf,
                    shard_frames=sf,
                )
                r.update(
                    profile=profile,
                    concurrency=zarr_writer._MAX_CONCURRENT_BLOCKS,
                    chunking=_chunk_label(cf, sf),
                )
                _keep_best(best, (profile, _chunk_label(cf, sf)), r)
    return _rows(
        best,
        args,
        base=lambda r: (r["profile"], "default", r["concurrency"]),
        frames=args.chunk_sweep_frames,
    )


def _rows(
    best: dict[tuple[str, str], dict[str, Any]],
    args: argparse.Namespace,
    base: Any,
    frames: int | None = None,
) -> list[dict[str, Any]]:
    """Rows with MiB/s, writes per frame, and the ratio to the row that ``base``
    names by ``(profile, chunking, concurrency)``."""
    n = frames or args.frames
    mib = n * args.frame_kib / 1024
    index = {(r["profile"], r["chunking"], r["concurrency"]): r for r in best.values()}
    out = []
    for r in best.values():
        ref = index.get(base(r))
        row = dict(r)
        row["frames"] = n
        row["mib_s"] = mib / r["seconds"]
        row["writes_per_frame"] = r["writes"] / n
        row["puts_per_frame"] = r["puts"] / n
        row["vs_base"] = ref["seconds"] / r["seconds"] if ref else None
        out.append(row)
    return out


def _sweep_multipart(endpoint: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """s3fs's ``_pipe_file`` (what zarr's FsspecStore.set calls) on large objects,
    one at a time and 4 in flight, with part sizes (``chunksize``) around its
    default: a single PUT below 2 x chunksize (50 MiB: so below 100 MiB), else
    a multipart upload of chunksize parts, ``max_concurrency`` (10) at a time."""
    import fsspec.asyn
    import s3fs

    fs = s3fs.S3FileSystem(**_options(endpoint))
    sizes = [32] if args.quick else [32, 128]
    parts = [8, 16, 50, 2048]  # MiB; 50 is s3fs's default, 2048 means one PUT
    best: dict[tuple[str, str], dict[str, Any]] = {}
    data = {m: np.random.default_rng(m).bytes(m << 20) for m in sizes}

    async def put(keys: list[str], blob: bytes, part: int) -> None:
        import asyncio

        await asyncio.gather(*[fs._pipe_file(k, blob, chunksize=part << 20) for k in keys])

    run = 0
    profiles = {"0 ms": _PROFILES["0 ms"], _WAN_NAME: _WAN}
    for _ in range(args.repeats):
        for profile, knobs in profiles.items():
            _knobs(endpoint, **knobs)
            for m in sizes:
                for objects in (1, 4):
                    for part in parts:
                        run += 1
                        keys = [f"bench/mp-{run}/{i}" for i in range(objects)]
                        before = _knobs(endpoint)
                        t0 = time.perf_counter()
                        fsspec.asyn.sync(fs.loop, put, keys, data[m], part)
                        t = time.perf_counter() - t0
                        after = _knobs(endpoint)
                        fs.rm(f"bench/mp-{run}", recursive=True)
                        label = "one PUT" if part >= 2048 else f"{part} MiB parts"
                        r = {
                            "profile": profile,
                            "object_mib": m,
                            "objects": objects,
                            "part_mib": part,
                            "variant": label,
                            "seconds": t,
                            "writes": after["writes"] - before["writes"],
                            "mib_s": m * objects / t,
                        }
                        key = (profile, f"{m} {objects} {part}")
                        _keep_best(best, key, r)
    out = []
    for r in best.values():
        ref = best[(r["profile"], f"{r['object_mib']} {r['objects']} 50")]
        out.append({**r, "vs_s3fs_default": ref["seconds"] / r["seconds"]})
    return out


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """The three sweeps on one moto server; print their tables, return the result."""
    import boto3

    frames = _frames(args.frame_kib * 1024)
    t0 = time.perf_counter()
    with moto_server() as endpoint:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")
        conc = _sweep_concurrency(endpoint, args, frames)
        chunks = _sweep_chunks(endpoint, args, frames)
        multipart = _sweep_multipart(endpoint, args)
        _knobs(endpoint, latency=0.0, bandwidth=0.0)
        last = f"s3://bench/chunks-{len(chunks) * args.repeats}.zarr"
        traj = snapsink.open(last, storage_options=_options(endpoint))
        if len(traj) != args.chunk_sweep_frames:
            raise SystemExit(f"{last}: {len(traj)} frames read back")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(
        f"{machine}; best of {args.repeats}, variants interleaved; frames of "
        f"{args.frame_kib} KiB; a shared machine: read the ratios, not the MiB/s"
    )
    print(f"\nPUTs in flight ({args.frames} frames; ratio to c1 of the same profile and chunking)")
    print(
        f"{'profile':<8} {'chunking':<14} {'c':>4} {'MiB/s':>7} {'vs c1':>6} {'peak':>5} "
        f"{'PUTs/frame':>10}"
    )
    for r in conc:
        ratio = "" if r["vs_base"] is None else f"{r['vs_base']:6.2f}"
        print(
            f"{r['profile']:<8} {r['chunking']:<14} {r['concurrency']:>4} {r['mib_s']:7.1f} "
            f"{ratio:>6} {r['peak_in_flight']:>5} {r['puts_per_frame']:10.3f}"
        )
    print(
        f"\nchunks and shards ({args.chunk_sweep_frames} frames, "
        f"{zarr_writer._MAX_CONCURRENT_BLOCKS} in flight; ratio to the default rule)"
    )
    print(
        f"{'profile':<8} {'chunking':<16} {'chunk KiB':>9} {'block KiB':>9} "
        f"{'MiB/s':>7} {'vs def':>6} {'PUTs/frame':>10} {'other/frame':>11}"
    )
    for r in chunks:
        kib = args.frame_kib
        block = (r["shard_frames"] or r["chunk_frames"]) * kib
        print(
            f"{r['profile']:<8} {r['chunking']:<16} {r['chunk_frames'] * kib:>9} {block:>9} "
            f"{r['mib_s']:7.1f} {r['vs_base']:6.2f} {r['puts_per_frame']:10.3f} "
            f"{r['writes_per_frame'] - r['puts_per_frame']:11.3f}"
        )
    print("(other: POST requests, the batch deletes of the trim at close)")
    print("\nlarge objects through s3fs's _pipe_file (ratio to its default, 50 MiB parts)")
    print(
        f"{'profile':<28} {'MiB':>4} {'objs':>4} {'variant':<14} "
        f"{'writes':>6} {'MiB/s':>7} {'vs def':>6}"
    )
    for r in multipart:
        print(
            f"{r['profile']:<28} {r['object_mib']:>4} {r['objects']:>4} {r['variant']:<14} "
            f"{r['writes']:>6} {r['mib_s']:7.1f} {r['vs_s3fs_default']:6.2f}"
        )
    elapsed = time.perf_counter() - t0
    print(f"\n({elapsed:.0f} s in all)")
    result = {
        "machine": machine,
        "repeats": args.repeats,
        "frame_kib": args.frame_kib,
        "default_concurrency": zarr_writer._MAX_CONCURRENT_BLOCKS,
        "profiles": {**_PROFILES, _WAN_NAME: _WAN},
        "seconds": elapsed,
        "concurrency": conc,
        "chunks": chunks,
        "multipart": multipart,
    }
    # the table is printed above; finish makes the JSON's folder
    return _common.finish(result, lambda _: None, args.json)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print its table and return its result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="default 512; --quick 128")
    ap.add_argument("--frame-kib", type=int, default=64)
    ap.add_argument("--chunk-frames", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=None,
                    help="default 1 4 16 32 64; --quick --sweep 1 32")
    ap.add_argument("--repeats", type=int, default=None, help="default 2; --quick 1")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay each PUT by this much in the server (an S3 PUT takes tens of ms)",
    )
    ap.add_argument("--quick", action="store_true", help="128 frames, one repeat")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="sweep PUTs in flight, chunk/shard sizes and multipart part sizes instead, "
        "with and without injected latency (benchmarks/results/s3-sweep-cpu.json)",
    )
    ap.add_argument(
        "--chunk-sweep-frames",
        type=int,
        default=None,
        help="frames per run of the chunk sweep (not a power of 2: the trim at close "
        "shows; default 1000, --quick 250)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        _common.fill_unset(args, frames=128, repeats=1, chunk_sweep_frames=250)
        if args.sweep:
            _common.fill_unset(args, concurrency=[1, 32])
    _common.fill_unset(args, frames=512, repeats=2, chunk_sweep_frames=1000,
                       concurrency=[1, 4, 16, 32, 64])
    if args.sweep:
        return sweep(args)
    import boto3

    frames = _frames(args.frame_kib * 1024)
    mib = args.frames * args.frame_kib / 1024
    chunks = -(-args.frames // args.chunk_frames)
    best: dict[str, float] = {}
    peaks: dict[str, int] = {}
    default = zarr_writer._MAX_CONCURRENT_BLOCKS
    tmp = Path(tempfile.mkdtemp(prefix="snapsink-s3-bench-"))
    with moto_server(args.latency_ms / 1000) as endpoint:
        opts = _options(endpoint)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket="bench")
        run = 0
        last_url = ""
        try:
            for _ in range(args.repeats):
                path = tmp / f"disk-{run}.zarr"
                t = _run(
                    snapsink.ZarrStore(path, chunk_frames=args.chunk_frames), frames, args.frames
                )
                best["disk"] = min(best.get("disk", t), t)
                shutil.rmtree(path)
                for c in args.concurrency:
                    run += 1
                    zarr_writer._MAX_CONCURRENT_BLOCKS = c
                    last_url = f"s3://bench/run-{run}.zarr"
                    store = snapsink.ZarrStore(
                        last_url, storage_options=opts, chunk_frames=args.chunk_frames
                    )
                    t = _run(store, frames, args.frames)
                    name = f"s3 c{c}"
                    best[name] = min(best.get(name, t), t)
                    peaks[name] = max(peaks.get(name, 0), store._io.inflight.peak)
        finally:
            zarr_writer._MAX_CONCURRENT_BLOCKS = default
            shutil.rmtree(tmp, ignore_errors=True)
        traj = snapsink.open(last_url, storage_options=opts)
        got = traj["x"][:]
        for i in range(args.frames):
            if got[i].tobytes() != frames[i % len(frames)].tobytes():
                raise SystemExit(f"frame {i} of {last_url} does not read back bit-exact")
    print(
        f"{args.frames} frames of {args.frame_kib} KiB ({mib:.0f} MiB), chunks of "
        f"{args.chunk_frames} frames: {3 * chunks} chunk PUTs per S3 run (x, steps, times); "
        f"PUT latency added {args.latency_ms:g} ms; "
        f"best of {args.repeats}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'variant':<10} {'seconds':>8} {'MiB/s':>8} {'vs disk':>8} {'peak PUTs':>10}")
    out = []
    for name, t in best.items():
        ratio = best["disk"] / t
        peak = peaks.get(name)
        print(f"{name:<10} {t:8.3f} {mib / t:8.1f} {ratio:8.2f} {peak if peak else '':>10}")
        out.append(
            {
                "variant": name,
                "seconds": t,
                "mib_s": mib / t,
                "vs_disk": ratio,
                "peak_in_flight": peak,
            }
        )
    print(f"(the default concurrency is {default}; the last S3 run read back bit-exact)")
    result = {
        "frames": args.frames,
        "frame_kib": args.frame_kib,
        "chunk_frames": args.chunk_frames,
        "latency_ms": args.latency_ms,
        "default_concurrency": default,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "results": out,
    }
    # the table is printed above; finish makes the JSON's folder
    return _common.finish(result, lambda _: None, args.json)


if __name__ == "__main__":
    main()
