"""Fork server for the kill tests (run as a child process, not collected by pytest).

Importing snapsink, numpy and zarr costs ~0.4 s; paying it once per kill would
make 100+ kills far too slow. This script imports everything once, then reads
one JSON job per line on stdin and forks a fresh writer process per job. Every
line it or a writer prints on stdout is ``<job> <what> [<value>]``:

- ``<job> pid <pid>``: the writer's pid (printed by the server after the fork);
- ``<job> wp <pid>``: the sink's writer process (when it has one);
- ``<job> w <i>``: ``await sink.write()`` of frame index ``i`` returned (only
  with ``"report_writes": true``);
- ``<job> f <i>``: ``await sink.flush()`` returned after frame index ``i``;
- ``<job> done``: the writer closed its sink cleanly;
- ``<job> error <message>``: the writer failed (a test failure).

Lines are written with one ``os.write`` each (shorter than PIPE_BUF), so lines
of concurrent writers never interleave.

A job: ``{"job": id, "kind": "npy"|"zarr"|"zarr-inplace"|"zarr-zstd"|"zarr-shard"|"hdf5"|"h5md",
"path": ..., "mode": "x"|"a", "policy": "block"|"spill", "spill": dir, "start": i0, "n": frames,
"flush_every": k, "commit_every": c, "capacity": cap, "writer": "auto"|"thread",
"report_writes": bool}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import anyio
import numpy as np

import snapsink
import snapsink.stores.npy
import snapsink.stores.zarr

try:  # the HDF5 store is optional (h5py)
    import h5py  # noqa: F401

    import snapsink.stores.hdf5
except ImportError:
    pass

SCHEMA = snapsink.Schema(
    {
        "x": snapsink.Field("float64", (4, 3)),
        "r": snapsink.Field("int32", (None, 2)),
        "e": snapsink.Field("float64"),
    }
)


#: ``zarr-inplace``: a ZarrStore whose arrays are all written in place (no ragged
#: field): its periodic commits buffer nothing
SCHEMA_INPLACE = snapsink.Schema({"x": SCHEMA["x"], "e": SCHEMA["e"]})


#: ``zarr-zstd``: a ZarrStore with zstd whose encoded chunks (2 frames of 1 MiB
#: of random bits, which zstd cannot shrink) go to its I/O thread, written direct
SCHEMA_LARGE = snapsink.Schema(
    {"x": SCHEMA["x"], "e": SCHEMA["e"], "big": snapsink.Field("float32", (512, 512))}
)


def schema_of(kind: str) -> snapsink.Schema:
    return {"zarr-inplace": SCHEMA_INPLACE, "zarr-zstd": SCHEMA_LARGE}.get(kind, SCHEMA)


#: the H5MD layout's mapping: ``x`` (4 particles in 3-D) is the position element
H5MD = {"position": "x", "observables": ["e"]}


def step_of(i: int) -> int:
    """Step of the i-th frame of a run (strictly increasing, not contiguous)."""
    return 2 * i + 1


def time_of(step: int) -> float:
    return step * 0.25


def big_for(step: int) -> np.ndarray[Any, Any]:
    """The large field of ``step`` (``zarr-zstd``): every bit pattern of a float32."""
    rng = np.random.default_rng(10**9 + step)
    return rng.integers(0, 2**32, size=(512, 512), dtype=np.uint32).view(np.float32)


def frame_for(step: int) -> dict[str, Any]:
    """The frame of ``step``: a deterministic function of the step alone."""
    rng = np.random.default_rng(step)
    return {
        "x": rng.standard_normal((4, 3)),
        "r": rng.integers(-(10**6), 10**6, size=(step % 4, 2), dtype=np.int32),
        "e": float(rng.standard_normal()),
    }


def make_store(cfg: dict[str, Any]) -> Any:
    if cfg["kind"] == "npy":
        return snapsink.NpyDirectory(
            cfg["path"], mode=cfg["mode"], commit_every=cfg["commit_every"]
        )
    if cfg["kind"] == "hdf5":
        return snapsink.HDF5Store(
            cfg["path"], mode=cfg["mode"], chunk_frames=4, commit_every=cfg["commit_every"]
        )
    if cfg["kind"] == "h5md":  # the H5MD layout: the same datasets, linked into /particles
        return snapsink.HDF5Store(
            cfg["path"],
            mode=cfg["mode"],
            layout="h5md",
            h5md=H5MD,
            chunk_frames=4,
            commit_every=cfg["commit_every"],
        )
    if cfg["kind"] == "zarr-zstd":
        import zarr

        return snapsink.ZarrStore(
            cfg["path"],
            mode=cfg["mode"],
            chunk_frames=2,
            commit_every=cfg["commit_every"],
            compressors=zarr.codecs.ZstdCodec(level=1),
        )
    if cfg["kind"] == "zarr-shard":
        # zstd chunks of 2 frames in shards of 4, a ragged field: each commit
        # writes partly filled shards in the background while the appends fill
        # and write the same shards whole
        import zarr

        return snapsink.ZarrStore(
            cfg["path"],
            mode=cfg["mode"],
            chunk_frames=2,
            shard_frames=4,
            commit_every=cfg["commit_every"],
            compressors=zarr.codecs.ZstdCodec(level=1),
        )
    return snapsink.ZarrStore(
        cfg["path"], mode=cfg["mode"], chunk_frames=4, commit_every=cfg["commit_every"]
    )


def _say(job: object, text: str) -> None:
    os.write(1, f"{job} {text}\n".encode()[:4000])


async def _write(cfg: dict[str, Any]) -> None:
    job = cfg["job"]
    policy: Any = snapsink.Spill(cfg["spill"]) if cfg["policy"] == "spill" else "block"
    store = make_store(cfg)
    report = cfg.get("report_writes", False)
    schema = schema_of(cfg["kind"])
    async with snapsink.Sink(
        store,
        capacity=cfg["capacity"],
        policy=policy,
        schema=schema,
        writer=cfg.get("writer", "auto"),
    ) as sink:
        if sink._process is not None and sink._process.proc is not None:
            _say(job, f"wp {sink._process.proc.pid}")
        for i in range(cfg["start"], cfg["start"] + cfg["n"]):
            s = step_of(i)
            fields = frame_for(s)
            if "big" in schema:
                fields["big"] = big_for(s)
            await sink.write({k: fields[k] for k in schema}, step=s, time=time_of(s))
            if report:
                _say(job, f"w {i}")
            if (i + 1) % cfg["flush_every"] == 0:
                await sink.flush()
                _say(job, f"f {i}")
    _say(job, "done")


def _child(cfg: dict[str, Any]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        anyio.run(_write, cfg)
    except BaseException as exc:
        _say(cfg["job"], f"error {type(exc).__name__}: {exc!r}".replace("\n", " "))
        code = 1
    os._exit(code)


def main() -> None:
    # Writers are reaped by the kernel; the tests watch them through pidfds.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        if not line.strip():
            continue
        cfg = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(cfg)
        _say(cfg["job"], f"pid {pid}")


if __name__ == "__main__":
    main()
