"""Shared helpers of the benchmark scripts (not a benchmark: run.py does not list it).

- ``scratch``: a temporary directory, removed afterwards (SIGTERM included);
- stores: ``make_store`` and ``io_alone`` (the same frames appended synchronously);
- the writer option (``writer="auto" | "process" | "thread"`` of ``Sink`` and
  ``SyncSink``), passed only when this snapsink has it, and the kind a sink used;
- fresh child processes with glibc's allocator thresholds pinned (``spawn``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import snapsink
from snapsink import Batch, Frame

STORE_LABEL = {"npy": "NpyDirectory", "zarr": "ZarrStore", "memory": "HostMemory"}

#: Frames between commits (fsync + metadata) of the disk stores, in the sink and
#: in the synchronous references alike: each case pays real fsyncs.
COMMIT_EVERY = 8


@contextlib.contextmanager
def scratch(prefix: str = "snapsink-bench-", dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary directory under ``dir`` (default: the temp filesystem), removed
    afterwards, SIGTERM included (see ``sigterm_exits``)."""
    with sigterm_exits():
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        try:
            yield path
        except BaseException:
            _remove(path, linger=2.0)
            raise
        else:
            shutil.rmtree(path, ignore_errors=True)


def _remove(path: Path, linger: float) -> None:
    """``rmtree``, repeated for ``linger`` seconds: after an interrupt, a sink's
    writer process (which outlives its producer by design) or tensorstore's
    threads may still write into the directory for a moment, and one
    ``rmtree(ignore_errors=True)`` left what they wrote after it behind."""
    deadline = time.monotonic() + linger
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM (``timeout``, a batch scheduler) raised as ``SystemExit(143)`` in
    the block, so that the scratch directory's ``finally`` runs: the default
    action killed the process and left hundreds of MB of stores behind. Only
    where nothing handles SIGTERM yet (``snapsink bench`` raises an interrupt
    of its own) and on the main thread (the only one that can)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: `timeout` may send two
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def filesystem(path: str | Path) -> str:
    """The mount point and type of ``path`` (Linux), for the record."""
    best = ("", "?")
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                mnt, fstype = parts[1], parts[2]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(
                    best[0]
                ):
                    best = (mnt, fstype)
    except OSError:
        pass
    return f"{best[1]} at {best[0] or '?'}"


def proc_status(pid: int | str, keys: tuple[str, ...]) -> dict[str, int]:
    """Bytes of the ``keys`` of ``/proc/<pid>/status`` (``"self"``: this process),
    e.g. ``VmHWM`` (the peak RSS of this process image: unlike ``ru_maxrss``,
    not inherited from the parent's peak across fork and exec); 0 for a key
    missing, or a process that exited meanwhile."""
    out = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def child_pids() -> list[str]:
    """The pids of this process's children (a sink's writer process among them)."""
    pids: list[str] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                pids += fh.read().split()
        except OSError:  # a thread that ended meanwhile
            pass
    return pids


def settle_disk(pause: float = 0.5) -> None:
    """Before a timed case: write out what earlier cases left dirty (``os.sync``)
    and give the disk and the kernel a moment with the files they deleted, so
    that no case pays for the one before it."""
    os.sync()
    time.sleep(pause)


def machine() -> dict[str, Any]:
    """What the JSON results record about the machine and the software."""
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "snapsink": snapsink.__version__,
    }


# -- stores ------------------------------------------------------------------------------
def store_class(kind: str) -> Any:
    """The store class of ``kind`` (npy, zarr, memory), its module imported.

    snapsink imports a store's module (and zarr with ZarrStore's) on first use:
    a timed case that builds its store calls this first, so that it does not
    time the program's own import of zarr, which ``io_alone`` never times.
    """
    if kind not in STORE_LABEL:
        raise ValueError(f"unknown store kind {kind!r}; expected npy, zarr or memory")
    return getattr(snapsink, STORE_LABEL[kind])


def make_store(kind: str, path: Path, commit_every: int | None = COMMIT_EVERY) -> Any:
    """A fresh store of ``kind`` (npy, zarr, memory); ``commit_every=None``: its default."""
    cls = store_class(kind)
    if kind == "memory":
        return cls()
    return cls(path, **({} if commit_every is None else {"commit_every": commit_every}))


def stored(kind: str, store: Any, path: Path) -> int:
    """Frames a finished run left in its store (read back)."""
    return len(store) if kind == "memory" else len(snapsink.open(path))


def fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file (or, with ``directory``, a directory's entries) by path."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(path: str, pool: list[np.ndarray[Any, Any]], n: int, flags: int = 0) -> None:
    """The ``raw`` baseline: ``n`` frames (the ``pool``'s, cycled) written with one
    ``os.write`` each into a new file, then one fsync: the disk's own pace.
    ``flags`` are added to the open's (``os.O_DIRECT``: page-aligned frames)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o644)
    try:
        for i in range(n):
            view = memoryview(pool[i % len(pool)]).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def io_alone(
    kind: str,
    fields: Mapping[str, Any],
    frames: int,
    path: Path,
    commit_every: int | None = COMMIT_EVERY,
) -> float:
    """Seconds to append ``frames`` copies of ``fields`` synchronously to a fresh store.

    Open, prepare, appends, commits, close: what the sink's consumer does, with
    no capture, no channel and no compute. ``path`` is removed afterwards.
    """
    store = make_store(kind, path, commit_every)
    schema = snapsink.Schema.infer(dict(fields))
    host = {k: np.asarray(v) for k, v in fields.items()}
    try:
        if inspect.iscoroutinefunction(store.append):

            async def body() -> None:
                await store.open()
                await store.prepare(schema, times=True)
                for i in range(frames):
                    await store.append(Batch([Frame(i, i * 0.01, host)]))
                await store.commit()
                await store.close()

            t0 = time.perf_counter()
            anyio.run(body)
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        store.open()
        store.prepare(schema, times=True)
        for i in range(frames):
            store.append(Batch([Frame(i, i * 0.01, host)]))
        store.commit()
        store.close()
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the writer option -------------------------------------------------------------------
WRITER_CHOICES = ("auto", "process", "thread")


def writer_supported(cls: Any = None) -> bool:
    """Whether ``cls`` (default ``snapsink.Sink``) takes ``writer=``."""
    try:
        params = inspect.signature(cls or snapsink.Sink).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-level or odd signature
        return False
    return "writer" in params


def sink_kwargs(cls: Any, writer: str) -> dict[str, Any]:
    """``{"writer": writer}`` when ``cls`` takes it, else nothing (this snapsink's default)."""
    return {"writer": writer} if writer_supported(cls) else {}


def writers_to_run(option: str) -> list[str]:
    """The ``--writer`` option as a list of writers to pass (``both``: thread and process).

    Raises SystemExit when a writer is asked for that this snapsink cannot run.
    """
    if option == "both":
        return ["thread", "process"] if writer_supported() else ["auto"]
    if option == "process" and not writer_supported():
        raise SystemExit(
            "--writer process: this snapsink's Sink has no writer= option (only its "
            "consumer thread); use --writer auto or thread"
        )
    return [option]


def writer_kind(sink: Any, requested: str, store: Any) -> tuple[str, str]:
    """The writer a sink used (``sink.writer``), and how that was found out.

    A snapsink without the ``writer=`` option only has a consumer thread.
    """
    if not writer_supported(type(sink)):
        return "thread", "no writer= option"
    return sink.writer, "sink.writer"


# -- child processes ---------------------------------------------------------------------
#: glibc's dynamic mmap threshold makes the cost of NumPy temporaries depend on the
#: heap's history: until a large block has been freed, temporaries above 128 KiB
#: are mmapped and page-faulted on every allocation; afterwards they come from the
#: heap. Compute alone then varies ~2x between processes. Pinning the threshold
#: (32 MiB: the cap of glibc's own dynamic threshold on 64-bit) fixes the state for
#: every child. Pinning it also stops glibc raising the trim threshold with it
#: (to twice the mmap threshold), which would leave the 128 KiB default and have
#: every freed temporary at the heap's top trimmed and faulted back in: 5x slower
#: small ops. So the trim threshold is pinned too, where glibc would have put it.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def child_env(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> dict[str, str]:
    """The environment of a benchmark child: this one, allocator pinned, this snapsink.

    ``0`` leaves a threshold as the environment has it. OPENBLAS_* and the other
    settings of the environment are kept as they are.
    """
    env = dict(os.environ)
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    if trim_threshold:
        env["MALLOC_TRIM_THRESHOLD_"] = str(trim_threshold)
    # the child imports the snapsink this process imported (a checkout's src/ or a copy)
    src = Path(snapsink.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    return env


def malloc_settings(env: Mapping[str, str]) -> dict[str, str | None]:
    return {k: env.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}


def spawn(script: str | Path, spec: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, str(script), "--child", json.dumps(dict(spec))],
        capture_output=True,
        text=True,
        env=dict(env),
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(
            f"{Path(script).name} child {json.dumps(dict(spec))} failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


class CheckingStore:
    """A Store that keeps nothing: it checks each frame's field ``u`` is finite.

    It measures the path to the store (capture, channel, writer) without the
    disk; ``describe()`` lets a writer process rebuild it (from this module,
    which the writer imports through the sink's ``sys.path``)."""

    def __init__(self) -> None:
        self.frames = 0

    def describe(self) -> snapsink.StoreSpec:
        return snapsink.StoreSpec(CheckingStore)

    def open(self) -> None:
        return None

    def prepare(self, schema: Any, *, times: bool) -> None:
        return None

    def append(self, batch: Batch) -> None:
        for frame in batch.frames:
            if not np.isfinite(frame.fields["u"][0]):
                raise ValueError(f"frame at step {frame.step}: u[0] is not finite")
            self.frames += 1

    def commit(self) -> None:
        return None

    def close(self) -> None:
        return None


class ThrottledNpy(snapsink.NpyDirectory):
    """NpyDirectory on an emulated slow filesystem: each append also waits as
    writing its bytes at ``bps`` bytes/s would (0: no wait).

    ``describe()`` lets a writer process rebuild it (from this module, which the
    writer imports through the sink's ``sys.path``), so that a sink over it
    runs the writer ``"auto"`` picks for a real NpyDirectory: a store class
    made inside a function could only have a thread."""

    def __init__(self, path: str | Path, *, bps: float = 0.0, commit_every: int = COMMIT_EVERY):
        super().__init__(path, commit_every=commit_every)
        self.bps = float(bps)

    def describe(self) -> snapsink.StoreSpec:
        return snapsink.StoreSpec(
            ThrottledNpy,
            (os.path.abspath(self.path),),
            {"bps": self.bps, "commit_every": self._commit_every},
        )

    def append(self, batch: Batch) -> None:
        super().append(batch)
        if self.bps:
            time.sleep(sum(f.nbytes for f in batch.frames) / self.bps)


def fill_unset(args: Any, **values: Any) -> None:
    """Set each of ``values`` on ``args`` only where the user left it unset
    (``None``): ``--quick`` supplies defaults and never replaces a flag given."""
    for name, value in values.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def finish(
    result: dict[str, Any], print_table: Any, path: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Every benchmark's tail: print its table, write its JSON to ``path`` (if
    any; the folder is made), return the result."""
    print_table(result)
    if path is not None:
        out = Path(path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                f"--json {str(out)!r}: {str(out.parent)!r} is not a directory; "
                "the table above was not saved"
            ) from None
        out.write_text(json.dumps(result, indent=2))
    return result
