"""One run of ``snapsink demo``, in its own process: the three variants, their
timings, and the reference the stored frames are checked against.

The command (:mod:`snapsink._cli.demo`) starts ``python -c`` with :func:`child`
and a JSON spec; the run prints its result as one JSON line on stdout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._errors import SnapsinkError
from ._wavesim import WaveSim

__all__ = ["FIELDS", "Progress", "checksum", "child", "digest", "pick_device", "reference"]

#: the fields of every frame, in the order the check reads them
FIELDS = ("field", "positions", "energy")
#: simulation time per step (a frame's time is its step times this)
DT = 0.1


def pick_device(choice: str) -> tuple[Any, str]:
    """The array module for ``--device`` and a description of it."""
    if choice == "cpu":
        return np, "cpu (NumPy)"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
            return cupy, f"gpu (CuPy, {name})"
    except Exception as exc:
        if choice == "gpu":
            raise SnapsinkError(
                f"--device gpu: no usable CUDA device via CuPy ({exc}); "
                "install the gpu extra: pip install 'snapsink[gpu]'"
            ) from exc
    if choice == "gpu":
        raise SnapsinkError("--device gpu: CuPy sees no CUDA device")
    return np, "cpu (NumPy)"


class Progress:
    """A one-line progress bar on a terminal (silent otherwise), redrawn at most 10x/s.

    Hand-written rather than tqdm: it needs the sink's queue and bytes, and a
    dependency for thirty lines is not worth it. The statistics are asked for
    only when the bar is redrawn.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, statistics: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        st = statistics()
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        fill = int(width * done / max(self.total, 1))
        self.stream.write(
            f"\r  snapsink {100 * done / max(self.total, 1):3.0f}% "
            f"|{'#' * fill}{'.' * (width - fill)}| {done}/{self.total} frames  "
            f"{st.bytes_written / 1e6 / elapsed:,.1f} MB/s stored  "
            f"queue {st.queued}/{st.capacity}  {elapsed:.0f}s<{left:.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _host(xp: Any) -> Callable[[Any], np.ndarray[Any, Any]]:
    if xp is np:
        return np.asarray
    return lambda a: a.get()  # a device-to-host copy that waits for the stream


def checksum(*arrays: np.ndarray[Any, Any]) -> int:
    """CRC-32 of the arrays' bytes: the final state each run reports."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc


def digest(a: Any) -> str:
    """A frame's field as 16 hex digits: its dtype, shape and bytes (SHA-1, the
    fastest of hashlib's here; it detects corruption, no adversary is assumed)."""
    arr = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha1(f"{arr.dtype.str}{arr.shape}".encode(), usedforsecurity=False)
    h.update(arr.data)
    return h.hexdigest()[:16]


def reference(frames: int, every: int, grid: int, xp: Any = np) -> dict[str, Any]:
    """The run without I/O once more, untimed: every frame's step, time and the
    :func:`digest` of each of its fields, and the final state's checksum.

    A pass of its own rather than hashing inside the timed loop: the loop
    measured stays exactly the simulation alone (hashing a frame costs about as
    much as a step of arithmetic, and its buffers would disturb the caches and
    the heap the next steps use). The simulation is deterministic, and the
    command checks that this pass ends in the state every timed run ends in.
    """
    sim = WaveSim(n=grid, xp=xp)
    host = _host(xp)
    steps: list[int] = []
    times: list[float] = []
    digests: dict[str, list[str]] = {name: [] for name in FIELDS}
    for i in range(frames):
        energy = sim.advance(every)
        step = (i + 1) * every
        steps.append(step)
        times.append(step * DT)
        digests["field"].append(digest(host(sim.u)))
        digests["positions"].append(digest(host(sim.pos)))
        digests["energy"].append(digest(np.float64(energy)))
    return {
        "steps": steps,
        "times": times,
        "digests": digests,
        "state": checksum(host(sim.u), host(sim.pos)),
    }


# -- the three variants; each returns its loop time and its end-to-end time ------------------
# Loop: from the first step to the last frame durable. End to end: from before
# the variant's setup (files, store, writer process) to the same point.
def _run_none(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(spec["frames"]):
        sim.advance(spec["every"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "total_seconds": seconds}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_sync(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    """What simulation codes do today: a preallocated ``.npy`` memmap per field."""
    t_start = time.perf_counter()
    host = _host(sim.xp)
    frames, every = spec["frames"], spec["every"]
    out = Path(spec["path"])
    out.mkdir()
    shapes: dict[str, tuple[Any, tuple[int, ...]]] = {
        "field": (np.float32, (frames, *sim.u.shape)),
        "positions": (np.float32, (frames, *sim.pos.shape)),
        "energy": (np.float64, (frames,)),
        "steps": (np.int64, (frames,)),
        "times": (np.float64, (frames,)),
    }
    maps = {
        name: np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
        for name, (dt, shape) in shapes.items()
    }
    t0 = time.perf_counter()  # the loop, as for snapsink: files set up before it
    for i in range(frames):
        energy = sim.advance(every)
        step = (i + 1) * every
        maps["field"][i] = host(sim.u)
        maps["positions"][i] = host(sim.pos)
        maps["energy"][i] = energy
        maps["steps"][i] = step
        maps["times"][i] = step * 0.1
    for m in maps.values():
        m.flush()
    del maps
    for name in shapes:
        _fsync(out / f"{name}.npy")
    _fsync(out)
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "total_seconds": t_end - t_start}


def _run_snapsink(sim: WaveSim, spec: dict[str, Any]) -> dict[str, Any]:
    """The user's code path: ``snapsink.SyncSink(store)``, the store as a user builds it."""
    t_start = time.perf_counter()  # end to end: building the store counts
    import snapsink

    frames, every = spec["frames"], spec["every"]
    attrs = {
        "model": "2-D wave equation + advected particles",
        "grid": sim.n,
        "every": every,
        "device": spec["device_name"],
    }
    static = {
        "grid_spacing": np.float64(1.0),
        "particle_ids": np.arange(sim.particles, dtype=np.int32),
    }
    bar = Progress(frames)
    store: Any
    if spec["format"] == "npy":
        store = snapsink.NpyDirectory(spec["path"], attrs=attrs, static=static)
    else:
        store = snapsink.ZarrStore(spec["path"], attrs=attrs, static=static)
    # the writer's start, timed from here: building the store above imported
    # its module (zarr for ZarrStore, 0.1 s), which is the program's own start
    t_open = time.perf_counter()
    try:
        # `with snapsink.SyncSink(...) as sink:` as a user writes it, spelled out
        # to hold Ctrl-C and SIGTERM back while the sink starts and closes
        with _holding_signals():
            sink = snapsink.SyncSink(store, capacity=spec["capacity"])
        try:
            # the loop, from here to the close: the writer process started above,
            # once per run, like the synchronous writer's files
            t0 = time.perf_counter()
            open_s = t0 - t_open
            for i in range(frames):
                energy = sim.advance(every)
                step = (i + 1) * every
                sink.write(
                    {"field": sim.u, "positions": sim.pos, "energy": energy},
                    step=step,
                    time=step * 0.1,
                )
                bar.update(i + 1, sink.statistics)
        finally:
            with _holding_signals():
                sink.close()
        t_end = time.perf_counter()  # closed: every frame durable
    finally:
        bar.close()
    st = sink.statistics()
    return {
        "seconds": t_end - t0,
        "total_seconds": t_end - t_start,
        "open_seconds": open_s,
        "written": st.written,
        "bytes": st.bytes_written,
        "dropped": st.dropped,
        "spilled": st.spilled,
        "peak_queued": st.peak_queued,
        "capacity": st.capacity,
    }


_signalled: list[int] = []
_held = [False]


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM: stop the run as Ctrl-C does (the sink closes, the writer
    stores what it holds), once. Later ones are ignored: the same signal often
    comes twice (to the process group, and passed on by the command), and a
    second interrupt would cut the close short; the command bounds the wait."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signalled.append(signum)
    if not _held[0]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _holding_signals() -> Iterator[None]:
    """A signal during the block is raised at its end. Around the sink's start
    and close: a SyncSink interrupted there leaves its writer process (in a
    session of its own, out of the command's reach) creating the store's files
    after this process exited, while the command removes them."""
    _held[0] = True
    try:
        yield
    finally:
        _held[0] = False
    if _signalled:
        raise KeyboardInterrupt


def child(spec_json: str, came: list[int] | None = None) -> int:
    """Entry point of one run's process: its result as one JSON line on stdout;
    128 + the signal's number when SIGINT or SIGTERM stopped it (``came``: the
    signals that came before this was called, while :data:`demo._CHILD` only
    recorded them). Never a traceback for an interrupt, at any moment."""
    try:
        try:
            signal.signal(signal.SIGINT, _on_signal)
            signal.signal(signal.SIGTERM, _on_signal)
            if came:  # (appended to until the line above)
                _on_signal(came[0], None)
            spec = json.loads(spec_json)
            try:
                xp, spec["device_name"] = pick_device(spec["device"])
                sim = WaveSim(n=spec["grid"], xp=xp)
                runner = {"none": _run_none, "sync": _run_sync, "snapsink": _run_snapsink}
                result = runner[spec["variant"]](sim, spec)
                host = _host(xp)
                result["state"] = checksum(host(sim.u), host(sim.pos))
                if spec.get("reference"):  # after the timed loop, never inside it
                    result["reference"] = reference(spec["frames"], spec["every"], spec["grid"], xp)
            except (SnapsinkError, OSError) as exc:
                if _signalled:  # what the signal broke
                    return 128 + _signalled[0]
                result = {"error": str(exc)}
            print(json.dumps(result), flush=True)
            return 0
        finally:
            # the run is over: a signal from here on has nothing left to stop
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:
        return 128 + (_signalled[0] if _signalled else signal.SIGINT)
