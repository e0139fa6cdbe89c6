"""The ``snapsink`` command: ``demo`` (the main job) and ``info``.

``snapsink demo`` runs a small physical simulation (a 2-D wave field and
particles drifting down its gradient), streams snapshots through an async
:class:`~snapsink.Sink` into a fresh store, and reports what the I/O cost the
simulation. ``snapsink info PATH`` describes a stored run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ._errors import SnapsinkError

__all__ = ["main"]


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
        lap = (
            xp.roll(u, 1, 0) + xp.roll(u, -1, 0) + xp.roll(u, 1, 1) + xp.roll(u, -1, 1) - 4 * u
        )
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
        return float(
            0.5 * xp.sum(du * du) + 0.5 * self.c**2 * xp.sum(xp.gradient(self.u)[0] ** 2)
        )


def _fresh_dir(base: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(f"{base}-{stamp}")
    k = 1
    while path.exists():
        path = Path(f"{base}-{stamp}-{k}")
        k += 1
    return path


def _pick_device(choice: str) -> tuple[Any, str]:
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
                f"--device gpu: no usable CUDA device via CuPy ({exc})"
            ) from exc
    if choice == "gpu":
        raise SnapsinkError("--device gpu: CuPy sees no CUDA device")
    return np, "cpu (NumPy)"


def _progress(done: int, total: int, t0: float) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    fill = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - t0, 1e-9)
    sys.stderr.write(
        f"\r  [{'#' * fill}{'.' * (width - fill)}] {done}/{total} frames  {rate:,.0f} frames/s"
    )
    sys.stderr.flush()


def _make_store(fmt: str, out: Path, attrs: dict[str, Any], static: dict[str, Any]) -> Any:
    if fmt == "npy":
        from .writers.npy import NpyDirectory

        return NpyDirectory(out, mode="x", attrs=attrs, static=static)
    from .writers.zarr import ZarrStore

    return ZarrStore(out, mode="x", attrs=attrs, static=static)


async def _run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from ._sink import Sink

    xp, device = _pick_device(args.device)
    sim = WaveSim(n=args.grid, xp=xp)
    out = Path(args.out) if args.out else _fresh_dir("snapsink-demo")
    attrs = {
        "model": "2-D wave equation + advected particles",
        "grid": args.grid,
        "every": args.every,
    }
    static = {
        "grid_spacing": np.float64(1.0),
        "particle_ids": np.arange(sim.particles, dtype=np.int32),
    }
    store = _make_store(args.format, out, attrs, static)
    print(
        f"snapsink demo: {args.frames} frames every {args.every} steps of a "
        f"{args.grid}x{args.grid} "
        f"wave field + {sim.particles} particles on {device}"
    )
    print(f"  writing {args.format} store to {out}")
    sync = (
        (lambda: xp.cuda.get_current_stream().synchronize())
        if xp is not np
        else (lambda: None)
    )
    t_compute = 0.0
    t_write = 0.0
    t0 = time.perf_counter()
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
            if frame % 10 == 0 or frame == args.frames - 1:
                _progress(frame + 1, args.frames, t0)
        c1 = time.perf_counter()
        await sink.flush()
        t_flush = time.perf_counter() - c1
    t_total = time.perf_counter() - t0
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    stats = sink.statistics()
    result = {
        "out": str(out),
        "format": args.format,
        "device": device,
        "frames": stats.written,
        "bytes": stats.bytes_written,
        "dropped": stats.dropped,
        "spilled": stats.spilled,
        "t_total": t_total,
        "t_compute": t_compute,
        "t_write_blocking": t_write,
        "t_final_flush": t_flush,
    }
    mb = stats.bytes_written / 1e6
    exposed = t_write + t_flush
    print(
        f"  frames written : {stats.written} ({mb:,.1f} MB), "
        f"dropped {stats.dropped}, spilled {stats.spilled}"
    )
    print(
        f"  run time       : {t_total:.2f} s; compute {t_compute:.2f} s; "
        f"throughput {mb / t_total:,.1f} MB/s"
    )
    print(
        f"  I/O exposed    : {exposed:.3f} s ({100 * exposed / t_total:.1f}% of the run: time the "
        "simulation spent inside write() and the final flush)"
    )
    print(
        f"  read it back   : python -c \"import snapsink; t = snapsink.open('{out}'); "
        "print(len(t), t['field'][-1].mean())\""
    )
    return result


def _info(path: str) -> int:
    from ._reader import open as open_store

    traj = open_store(path)
    print(f"{path}: {len(traj)} frames")
    for name, f in traj.fields.items():
        print(f"  {name:<16} {f.dtype!s:<10} {f.shape}")
    if len(traj):
        print(f"  steps {traj.steps[0]} .. {traj.steps[-1]}")
        if traj.times is not None:
            print(f"  times {traj.times[0]:g} .. {traj.times[-1]:g}")
    print(f"  dropped steps: {len(traj.dropped_steps)}")
    if traj.static:
        print(f"  static: {', '.join(traj.static)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snapsink`` console script."""
    parser = argparse.ArgumentParser(prog="snapsink", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run a small simulation and stream its snapshots to disk"
    )
    demo.add_argument(
        "--out", help="store to create (default: a fresh snapsink-demo-<time> directory)"
    )
    demo.add_argument("--frames", type=int, default=1000)
    demo.add_argument("--every", type=int, default=5, help="simulation steps per snapshot")
    demo.add_argument("--grid", type=int, default=256)
    demo.add_argument("--capacity", type=int, default=8)
    demo.add_argument("--format", choices=("npy", "zarr"), default="npy")
    demo.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    info = sub.add_parser("info", help="describe a stored run")
    info.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.frames < 1 or args.every < 1 or args.grid < 8:
                parser.error("--frames and --every must be >= 1, --grid >= 8")
            anyio.run(_run_demo, args)
            return 0
        return _info(args.path)
    except (SnapsinkError, OSError) as exc:
        print(f"snapsink: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
