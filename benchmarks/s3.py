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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import snapsink
import snapsink.stores.zarr as zarr_writer

KEY = SECRET = "bench"


#: moto's server, each PUT answered after ``latency`` seconds (its request
#: threads sleep, so PUTs in flight overlap, as on a real object store)
_SERVER = """
import sys, time
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main
latency = float(sys.argv[2])
call = DomainDispatcherApplication.__call__
def delayed(self, environ, start_response):
    if latency and environ["REQUEST_METHOD"] == "PUT":
        time.sleep(latency)
    return call(self, environ, start_response)
DomainDispatcherApplication.__call__ = delayed
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print its table and return its result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--frame-kib", type=int, default=64)
    ap.add_argument("--chunk-frames", type=int, default=4)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="delay each PUT by this much in the server (an S3 PUT takes tens of ms)",
    )
    ap.add_argument("--quick", action="store_true", help="128 frames, one repeat")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.repeats = 128, 1
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
                    peaks[name] = max(peaks.get(name, 0), store._inflight.peak)
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
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
