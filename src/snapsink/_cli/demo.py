"""``snapsink demo``: a small physical simulation streaming its snapshots to disk.

A 2-D scalar wave field (leapfrog) and particles drifting down its gradient,
on NumPy or CuPy; every ``--every`` steps a frame (the field, the particles'
positions, the energy) goes through an async :class:`~snapsink.Sink` into a
fresh store. The summary says what the I/O cost the simulation.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._errors import SnapsinkError, StoreExistsError
from ._proxy import TimedStore

__all__ = ["WaveSim", "add_parser", "run"]


@dataclass
class WaveSim:
    """2-D scalar wave equation (leapfrog) plus particles advected by the field."""

    n: int = 256
    particles: int = 1024
    c: float = 0.35
    damping: float = 1e-4
    xp: Any = np

    def __post_init__(self) -> None:
        xp = self.xp
        y, x = xp.meshgrid(xp.arange(self.n), xp.arange(self.n), indexing="ij")
        r2 = ((x - self.n / 3) ** 2 + (y - self.n / 2) ** 2) / (self.n / 16) ** 2
        self.u = xp.exp(-r2).astype(xp.float32)
        self.u_prev = self.u.copy()
        rng = np.random.default_rng(0)
        self.pos = xp.asarray(
            rng.uniform(0, self.n - 1, size=(self.particles, 2)).astype(np.float32)
        )
        self.vel = xp.zeros_like(self.pos)

    def step(self) -> None:
        xp = self.xp
        u = self.u
        lap = xp.roll(u, 1, 0) + xp.roll(u, -1, 0) + xp.roll(u, 1, 1) + xp.roll(u, -1, 1) - 4 * u
        u_next = (2 - self.damping) * u - (1 - self.damping) * self.u_prev + self.c**2 * lap
        self.u_prev, self.u = u, u_next.astype(xp.float32)
        gy, gx = xp.gradient(self.u)
        iy = xp.clip(self.pos[:, 0].astype(xp.int32), 0, self.n - 1)
        ix = xp.clip(self.pos[:, 1].astype(xp.int32), 0, self.n - 1)
        force = -xp.stack([gy[iy, ix], gx[iy, ix]], axis=1) * 50.0
        self.vel = (0.98 * self.vel + force).astype(xp.float32)
        self.pos = xp.mod(self.pos + self.vel, self.n - 1).astype(xp.float32)

    def energy(self) -> float:
        xp = self.xp
        du = self.u - self.u_prev
        return float(0.5 * xp.sum(du * du) + 0.5 * self.c**2 * xp.sum(xp.gradient(self.u)[0] ** 2))


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a small simulation and stream its snapshots into a fresh store",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--out", help="store to create; must not exist (default: a fresh snapsink-demo-<time>)"
    )
    p.add_argument("--frames", type=int, default=1000, help="snapshots to write (1000)")
    p.add_argument("--every", type=int, default=5, help="simulation steps per snapshot (5)")
    p.add_argument("--grid", type=int, default=256, help="grid points per side (256)")
    p.add_argument("--capacity", type=int, default=8, help="sink channel capacity (8)")
    p.add_argument("--format", choices=("npy", "zarr"), default="npy")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.set_defaults(handler=run)


def fresh_path(base: str, suffix: str = "") -> Path:
    """``base-<YYYYmmdd-HHMMSS>[-k]suffix`` that does not exist yet."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(f"{base}-{stamp}{suffix}")
    k = 1
    while path.exists():
        path = Path(f"{base}-{stamp}-{k}{suffix}")
        k += 1
    return path


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
    dependency for thirty lines is not worth it.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, queued: int, capacity: int, nbytes: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        fill = int(width * done / max(self.total, 1))
        self.stream.write(
            f"\r  {100 * done / max(self.total, 1):3.0f}% |{'#' * fill}{'.' * (width - fill)}| "
            f"{done}/{self.total} frames  {rate:,.0f} fr/s  {nbytes / 1e6 / elapsed:,.1f} MB/s  "
            f"queue {queued}/{capacity}  {elapsed:.0f}s<{left:.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _make_store(fmt: str, out: Path, attrs: dict[str, Any], static: dict[str, Any]) -> Any:
    if fmt == "npy":
        from ..writers.npy import NpyDirectory

        return NpyDirectory(out, mode="x", attrs=attrs, static=static)
    from ..writers.zarr import ZarrStore

    return ZarrStore(out, mode="x", attrs=attrs, static=static)


async def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from .._sink import Sink

    xp, device = pick_device(args.device)
    sim = WaveSim(n=args.grid, xp=xp)
    out: Path = args.out_path
    attrs = {
        "model": "2-D wave equation + advected particles",
        "grid": args.grid,
        "every": args.every,
        "device": device,
    }
    static = {
        "grid_spacing": np.float64(1.0),
        "particle_ids": np.arange(sim.particles, dtype=np.int32),
    }
    store = TimedStore(_make_store(args.format, out, attrs, static))
    print(
        f"snapsink demo: {args.frames} frames, one every {args.every} steps of a "
        f"{args.grid}x{args.grid} wave field + {sim.particles} particles, on {device}"
    )
    print(f"  writing a {args.format} store to {out}")
    sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
    bar = Progress(args.frames)
    t_compute = t_write = 0.0
    t0 = time.perf_counter()
    try:
        async with Sink(store, capacity=args.capacity) as sink:
            for frame in range(args.frames):
                c0 = time.perf_counter()
                for _ in range(args.every):
                    sim.step()
                energy = sim.energy()  # a host sync on the GPU, as in real MD codes
                sync()
                c1 = time.perf_counter()
                step = (frame + 1) * args.every
                await sink.write(
                    {"field": sim.u, "positions": sim.pos, "energy": energy},
                    step=step,
                    time=step * 0.1,
                )
                t_write += time.perf_counter() - c1
                t_compute += c1 - c0
                st = sink.statistics()
                bar.update(frame + 1, st.queued, st.capacity, st.bytes_written)
            c1 = time.perf_counter()
        t_close = time.perf_counter() - c1
    finally:
        bar.close()
    t_total = time.perf_counter() - t0
    stats = sink.statistics()
    exposed = t_write + t_close
    return {
        "out": str(out),
        "format": args.format,
        "device": device,
        "frames": stats.written,
        "bytes": stats.bytes_written,
        "dropped": stats.dropped,
        "spilled": stats.spilled,
        "peak_queued": stats.peak_queued,
        "capacity": stats.capacity,
        "t_total": t_total,
        "t_compute": t_compute,
        "t_in_write": t_write,
        "t_close": t_close,
        "t_store": store.busy,
        "t_exposed": exposed,
        "io_hidden": (store.busy - exposed) / store.busy if store.busy > 0 else 1.0,
    }


def _summary(r: dict[str, Any]) -> None:
    mb = r["bytes"] / 1e6
    print(
        f"  frames     : {r['frames']} written ({mb:,.1f} MB), dropped {r['dropped']}, "
        f"spilled {r['spilled']}; queue peaked at {r['peak_queued']}/{r['capacity']}"
    )
    print(
        f"  time       : {r['t_total']:.2f} s in all, {r['t_compute']:.2f} s computing; "
        f"{mb / max(r['t_total'], 1e-9):,.1f} MB/s ({r['frames'] / max(r['t_total'], 1e-9):,.0f} "
        "frames/s) stored"
    )
    print(
        f"  I/O hidden : eta = {r['io_hidden']:.2f}: the store worked {r['t_store']:.2f} s; the "
        f"simulation waited {r['t_exposed']:.3f} s of it ({r['t_in_write']:.3f} s in write(), "
        f"{r['t_close']:.3f} s draining at close)"
    )
    print("               eta = (store time - time waited) / store time; 1 = all I/O hidden")
    print(f"  data       : {Path(r['out']).resolve()}")
    print(
        f'  read back  : python -c "import snapsink; t = snapsink.open({r["out"]!r}); '
        "print(len(t), t['field'][-1].mean())\""
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    if args.frames < 1 or args.every < 1 or args.grid < 8 or args.capacity < 1:
        raise SnapsinkError("--frames, --every and --capacity must be >= 1, --grid >= 8")
    if args.out:
        args.out_path = Path(args.out)
        if args.out_path.exists() or args.out_path.is_symlink():
            raise StoreExistsError(
                f"--out {args.out!r} exists; the demo never overwrites: "
                "pick a new path or leave --out out"
            )
    else:
        args.out_path = fresh_path("snapsink-demo", ".zarr" if args.format == "zarr" else "")
    result = anyio.run(_simulate, args)
    _summary(result)
    return 0
