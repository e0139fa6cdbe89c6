"""ZarrStore on S3: a real S3 server (moto's server mode) started on 127.0.0.1.

Write through a sink and read back bit-exact, many chunk PUTs in flight, the
conditional create refusing a second writer, resume with ``mode="a"``, and a
SIGKILL of the writing process leaving the committed frames readable. Skipped
without moto's server and s3fs: ``pip install "moto[server]" s3fs``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from zarr.storage import MemoryStore

import snapsink
from snapsink._errors import (
    ConfigError,
    DTypeError,
    StoreExistsError,
    StoreNotFoundError,
    WriterError,
)
from snapsink.stores import zarr as zarr_store
from snapsink.stores._zarrplan import MAX_CHUNK_FRAMES, TARGET_CHUNK_BYTES
from snapsink.stores.zarr import ZarrStore

pytest.importorskip("moto.server", reason="needs moto's server: pip install 'moto[server]'")
pytest.importorskip("flask", reason="needs moto's server: pip install 'moto[server]'")
pytest.importorskip("s3fs", reason="needs s3fs: pip install 'snapsink[s3]'")
boto3 = pytest.importorskip("boto3", reason="needs boto3 (moto installs it)")

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server in a process of its own (its warnings stay there)."""
    yield from _serve(["-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"])


#: moto's server with each PUT answered ``sys.argv[2]`` seconds late (its
#: request threads sleep, as an S3 PUT takes tens of ms); ``GET /_peak``
#: answers the most PUTs it has had in flight at once.
_SLOW_SERVER = """
import sys, threading, time
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main
latency = float(sys.argv[2])
state = {"now": 0, "peak": 0}
lock = threading.Lock()
call = DomainDispatcherApplication.__call__
def slow(self, environ, start_response):
    if environ.get("PATH_INFO") == "/_peak":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(state["peak"]).encode()]
    if environ["REQUEST_METHOD"] != "PUT":
        return call(self, environ, start_response)
    with lock:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
    try:
        time.sleep(latency)
        return call(self, environ, start_response)
    finally:
        with lock:
            state["now"] -= 1
DomainDispatcherApplication.__call__ = slow
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


def _serve(args: list[str]) -> Iterator[str]:
    """Run ``python *args`` (``"{port}"`` replaced by a free port) until the
    fixture ends; yield its endpoint once it listens."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, *(str(port) if a == "{port}" else a for a in args)],
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
                    pytest.fail(f"moto's server did not start (exit code {proc.poll()})")
                time.sleep(0.05)  # the server is a separate process: poll its port
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def slow_endpoint() -> Iterator[str]:
    """moto's S3 server answering each PUT 30 ms late, counting PUTs in flight."""
    yield from _serve(["-c", _SLOW_SERVER, "{port}", "0.03"])


def _options(endpoint: str) -> dict[str, Any]:
    return {
        "key": KEY,
        "secret": SECRET,
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": REGION},
        "skip_instance_cache": True,
    }


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    _client(endpoint).create_bucket(Bucket=name)
    return name


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    )


def _keys(endpoint: str, bucket: str) -> list[str]:
    listing = _client(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _frame(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "positions": rng.standard_normal((40, 3)).astype(np.float32),
        "energy": np.float64(rng.standard_normal()),
        "ids": rng.integers(0, 2**62, (i % 5 + 1,), dtype=np.int64),  # ragged
    }


SCHEMA = snapsink.Schema(
    {
        "positions": snapsink.Field("float32", (40, 3)),
        "energy": snapsink.Field("float64", ()),
        "ids": snapsink.Field("int64", (None,)),
    }
)


def _check(traj: Any, steps: range) -> None:
    assert list(traj.steps) == list(steps)
    np.testing.assert_array_equal(traj.times, [0.25 * s for s in steps])
    positions = traj["positions"][:]
    energy = traj["energy"][:]
    for k, s in enumerate(steps):
        want = _frame(s)
        assert positions[k].tobytes() == want["positions"].tobytes()  # bit-exact
        assert energy[k].tobytes() == want["energy"].tobytes()
        assert traj["ids"][k].tobytes() == want["ids"].tobytes()


def _write(sink: Any, steps: range) -> None:
    for s in steps:
        sink.write(_frame(s), step=s, time=0.25 * s)


def test_a_sink_writes_to_s3_and_open_reads_it_back_bit_exact(endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/run.zarr"
    opts = _options(endpoint)
    store = ZarrStore(url, storage_options=opts, chunk_frames=4, attrs={"run": "s3"})
    with snapsink.SyncSink(store, schema=SCHEMA, writer="thread", capacity=16) as sink:
        _write(sink, range(50))
    traj = snapsink.open(url, storage_options=opts)
    assert len(traj) == 50
    assert traj.attrs == {"run": "s3"}
    _check(traj, range(50))
    assert snapsink.groups(url, storage_options=opts) == [""]
    ds = traj.to_xarray()
    assert ds["positions"].values.tobytes() == b"".join(
        _frame(s)["positions"].tobytes() for s in range(50)
    )
    keys = _keys(endpoint, bucket)
    assert "run.zarr/zarr.json" in keys
    assert "run.zarr/positions/c/12/0/0" in keys  # frames 48-49: chunk 12 of 4 frames


def test_chunk_puts_are_in_flight_many_at_a_time(endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/many.zarr"
    store = ZarrStore(url, storage_options=_options(endpoint), chunk_frames=1, commit_every=10_000)
    with snapsink.SyncSink(store, schema=SCHEMA, writer="thread", capacity=64) as sink:
        _write(sink, range(64))
    assert store._io.inflight.peak > 4, store._io.inflight.peak  # not one PUT at a time
    _check(snapsink.open(url, storage_options=_options(endpoint)), range(64))


def test_the_server_sees_max_concurrent_blocks_puts_at_once(slow_endpoint: str) -> None:
    """With PUTs answered 30 ms late, the server has the full default of chunk
    PUTs in flight at once: neither snapsink's bound nor the HTTP connection
    pool (botocore's is 10 unless set) holds them back."""
    limit = zarr_store._MAX_CONCURRENT_BLOCKS
    _client(slow_endpoint).create_bucket(Bucket="slow")
    url = "s3://slow/peak.zarr"
    opts = _options(slow_endpoint)
    store = ZarrStore(url, storage_options=opts, chunk_frames=1, commit_every=10_000)
    with snapsink.SyncSink(store, schema=SCHEMA, writer="thread", capacity=64) as sink:
        _write(sink, range(2 * limit))
    with urllib.request.urlopen(f"{slow_endpoint}/_peak", timeout=30) as r:
        server_peak = int(r.read())
    assert store._io.inflight.peak == limit
    assert server_peak == limit  # more would mean PUTs past snapsink's bound
    traj = snapsink.open(url, storage_options=opts)
    assert list(traj.steps) == list(range(2 * limit))
    assert traj["positions"][:].tobytes() == b"".join(
        _frame(s)["positions"].tobytes() for s in range(2 * limit)
    )


def _chunk_shape(endpoint: str, bucket: str, key: str) -> tuple[list[int], list[Any]]:
    """The chunk shape and codecs stored in the array metadata object ``key``."""
    body = _client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    meta = json.loads(body)
    return meta["chunk_grid"]["configuration"]["chunk_shape"], meta["codecs"]


def test_default_chunks_on_s3_aim_at_8_mib_unsharded(endpoint: str, bucket: str) -> None:
    """Without chunk_frames an s3:// store gets the local rule: about
    TARGET_CHUNK_BYTES (8 MiB) per chunk, one PUT each, no shards. benchmarks/s3.py
    --sweep chose it for object storage too (1 MiB chunks: 0.53-0.70x, 64 KiB
    chunks in 8 MiB shards: 0.47-0.65x)."""
    assert TARGET_CHUNK_BYTES == 8 << 20
    url = f"s3://{bucket}/default.zarr"
    opts = _options(endpoint)
    frame = np.arange(16384, dtype=np.float32)  # 64 KiB
    with snapsink.SyncSink(ZarrStore(url, storage_options=opts), writer="thread") as sink:
        for s in range(3):
            sink.write({"x": frame + s}, step=s, time=0.5 * s)
    chunks, codecs = _chunk_shape(endpoint, bucket, "default.zarr/x/zarr.json")
    assert chunks == [128, 16384]  # 128 frames of 64 KiB: 8 MiB
    assert all(c["name"] != "sharding_indexed" for c in codecs)
    assert _chunk_shape(endpoint, bucket, "default.zarr/steps/zarr.json")[0] == [MAX_CHUNK_FRAMES]
    x = snapsink.open(url, storage_options=opts)["x"][:]
    np.testing.assert_array_equal(x, [frame + s for s in range(3)])


def test_the_writer_process_rebuilds_the_s3_store_from_its_description(
    endpoint: str, bucket: str
) -> None:
    url = f"s3://{bucket}/proc.zarr"
    store = ZarrStore(url, storage_options=_options(endpoint), chunk_frames=8)
    spec = store.describe()
    assert spec is not None
    assert spec.args == (url, "x")
    assert spec.kwargs["storage_options"] == _options(endpoint)
    with snapsink.SyncSink(store, schema=SCHEMA) as sink:
        assert sink.writer == "process"  # "auto" moves a URL store to a writer process
        _write(sink, range(30))
        sink.flush()
        _check(snapsink.open(url, storage_options=_options(endpoint)), range(30))
    _check(snapsink.open(url, storage_options=_options(endpoint)), range(30))


def test_a_zarr_fsspec_store_object_is_written_from_a_thread(endpoint: str, bucket: str) -> None:
    from zarr.storage import FsspecStore

    opts = _options(endpoint)
    obj = FsspecStore.from_url(f"s3://{bucket}/obj.zarr", storage_options=opts)
    store = ZarrStore(obj, group="md", chunk_frames=3)
    assert store.describe() is None  # a store object cannot be rebuilt in a process
    with snapsink.SyncSink(store, schema=SCHEMA) as sink:
        assert sink.writer == "thread"
        _write(sink, range(8))
    assert snapsink.groups(f"s3://{bucket}/obj.zarr", storage_options=opts) == ["md"]
    _check(snapsink.open(f"s3://{bucket}/obj.zarr", storage_options=opts), range(8))
    assert "obj.zarr/zarr.json" in _keys(endpoint, bucket)  # the implicit root group
    # the store object is the caller's: so is its HTTP session (its loop is gone)
    asyncio.run(obj.fs._s3creator.__aexit__(None, None, None))


def test_describe_is_none_when_the_storage_options_are_not_plain_data(endpoint: str) -> None:
    opts = {**_options(endpoint), "config_kwargs": {"hook": lambda: None}}
    store = ZarrStore("s3://any/run.zarr", storage_options=opts)
    assert store.describe() is None  # the sink then writes from a thread


def test_mode_x_refuses_an_existing_store_and_leaves_it_as_it_was(
    endpoint: str, bucket: str
) -> None:
    url = f"s3://{bucket}/run.zarr"
    opts = _options(endpoint)
    with snapsink.SyncSink(
        ZarrStore(url, storage_options=opts), schema=SCHEMA, writer="thread"
    ) as sink:
        _write(sink, range(5))
    before = _keys(endpoint, bucket)
    with pytest.raises(StoreExistsError, match="already exists"):
        with snapsink.SyncSink(ZarrStore(url, storage_options=opts), writer="thread") as sink:
            sink.write(_frame(0), step=0)
    assert _keys(endpoint, bucket) == before
    _check(snapsink.open(url, storage_options=opts), range(5))


def test_mode_w_on_an_array_of_another_run_is_refused_and_nothing_deleted(
    endpoint: str, bucket: str
) -> None:
    """group='md/x' with mode 'w', where 'md' is a run and 'x' its field:
    the array was deleted and replaced by a group, and run 'md' could no
    longer be read (found by a probe; on a local directory too)."""
    url = f"s3://{bucket}/run.zarr"
    opts = _options(endpoint)
    with snapsink.SyncSink(
        ZarrStore(url, group="md", storage_options=opts), schema=SCHEMA, writer="thread"
    ) as sink:
        _write(sink, range(5))
    before = _keys(endpoint, bucket)
    for group in ("md/steps", f"md/{next(iter(SCHEMA))}"):
        with pytest.raises(StoreExistsError, match=r"is a zarr array.*nothing was deleted"):
            with snapsink.SyncSink(
                ZarrStore(url, "w", group=group, storage_options=opts), writer="thread"
            ) as sink:
                sink.write(_frame(0), step=0)
    assert _keys(endpoint, bucket) == before
    _check(snapsink.open(url, group="md", storage_options=opts), range(5))


def test_the_conditional_put_refuses_a_second_creator(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers both find the group absent: S3's If-None-Match lets one in."""
    url = f"s3://{bucket}/race.zarr"
    opts = _options(endpoint)
    with snapsink.SyncSink(
        ZarrStore(url, storage_options=opts, attrs={"who": "first"}), schema=SCHEMA, writer="thread"
    ) as first:
        first.write(_frame(0), step=0, time=0.0)
        first.flush()
        late = ZarrStore(url, storage_options=opts, attrs={"who": "second"})

        async def absent(*args: object) -> bool:
            return False  # as if it had looked before the first writer created the group

        monkeypatch.setattr(zarr_store, "node_exists", absent)
        with pytest.raises(StoreExistsError, match="conditional PUT was refused"):
            with snapsink.SyncSink(late, writer="thread") as second:
                second.write(_frame(0), step=0)
        first.write(_frame(1), step=1, time=0.25)
    traj = snapsink.open(url, storage_options=opts)
    assert traj.attrs == {"who": "first"}
    _check(traj, range(2))


def test_mode_a_resumes_after_the_committed_frames(endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/resume.zarr"
    opts = _options(endpoint)
    with snapsink.SyncSink(
        ZarrStore(url, storage_options=opts, chunk_frames=4), schema=SCHEMA, writer="thread"
    ) as sink:
        _write(sink, range(10))  # ends inside a chunk: the resume rewrites it
    with snapsink.SyncSink(ZarrStore(url, "a", storage_options=opts), writer="thread") as sink:
        _write(sink, range(10, 23))
    _check(snapsink.open(url, storage_options=opts), range(23))


def test_bad_frames_are_refused_and_the_s3_sink_stays_usable(endpoint: str, bucket: str) -> None:
    url = f"s3://{bucket}/bad.zarr"
    opts = _options(endpoint)
    with snapsink.SyncSink(
        ZarrStore(url, storage_options=opts), schema=SCHEMA, writer="thread"
    ) as sink:
        _write(sink, range(3))
        bad = {**_frame(3), "positions": np.zeros((40, 3), np.float64)}
        with pytest.raises(DTypeError, match="positions"):
            sink.write(bad, step=3, time=0.75)
        _write(sink, range(3, 6))
    _check(snapsink.open(url, storage_options=opts), range(6))


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_misspelled_storage_option_is_a_config_error(endpoint: str, writer: str) -> None:
    """s3fs builds its session at the first request, after the store was
    made: the writer raised a bare TypeError, and snapsink.open called the
    group corrupt (FormatError; found by a probe)."""
    url = f"s3://b-{uuid.uuid4().hex[:12]}/run.zarr"
    opts = {**_options(endpoint), "endpoint": "typo"}
    with pytest.raises(snapsink.ConfigError, match=r"refused the storage_options.*'endpoint'"):
        with snapsink.SyncSink(ZarrStore(url, storage_options=opts), writer=writer) as sink:
            sink.write(_frame(0), step=0)
    with pytest.raises(snapsink.ConfigError, match="refused the storage_options"):
        snapsink.open(url, storage_options=opts)


def test_storage_options_need_a_url(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="storage_options: only for a URL"):
        ZarrStore(str(tmp_path / "run.zarr"), storage_options={"anon": True})
    with pytest.raises(ConfigError, match="storage_options: only for a URL"):
        snapsink.open(str(tmp_path), storage_options={"anon": True})
    with pytest.raises(ConfigError, match="expected a dict"):
        ZarrStore("s3://bucket/run.zarr", storage_options=["anon"])  # type: ignore[arg-type]
    assert not os.listdir(tmp_path)


def test_open_of_a_missing_s3_store_says_so(endpoint: str, bucket: str) -> None:
    with pytest.raises(StoreNotFoundError):
        snapsink.open(f"s3://{bucket}/nothing.zarr", storage_options=_options(endpoint))


_CHILD = """
import sys, time
import numpy as np
import snapsink
sys.path.insert(0, {tests!r})
from test_zarr_s3 import SCHEMA, _frame
store = snapsink.ZarrStore({url!r}, storage_options={opts!r}, chunk_frames=4,
                           commit_every=10_000, commit_seconds=None)
with snapsink.SyncSink(store, schema=SCHEMA, writer="thread") as sink:
    for s in range(10_000):
        sink.write(_frame(s), step=s, time=0.25 * s)
        if s == 21:
            sink.flush()
            print("flushed", flush=True)
        if s > 21:
            time.sleep(0.005)  # keep writing (uncommitted) until killed
"""


def test_a_sigkilled_writer_leaves_the_committed_frames_readable(
    endpoint: str, bucket: str
) -> None:
    url = f"s3://{bucket}/killed.zarr"
    opts = _options(endpoint)
    code = _CHILD.format(tests=os.path.dirname(__file__), url=url, opts=opts)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"flushed", line
        # wait until chunks past the commit are PUT (uncommitted data on S3)
        deadline = time.monotonic() + 30
        while not any(k.startswith("killed.zarr/positions/c/9/") for k in _keys(endpoint, bucket)):
            assert time.monotonic() < deadline, "the child wrote no chunk past the flush"
            time.sleep(0.02)  # the child is another process: poll the bucket
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    traj = snapsink.open(url, storage_options=opts)
    assert len(traj) == 22  # exactly the flushed frames: the count names no others
    _check(traj, range(22))


class _FailingPuts(MemoryStore):
    """A MemoryStore whose PUTs of ``positions`` chunks (one frame each, so
    never a partial chunk written at the commit itself) fail once ``failing``
    is set: an S3 outage while they are in flight."""

    failing = False

    async def set(self, key: str, value: Any, byte_range: Any = None) -> None:
        if self.failing and key.startswith("positions/c/"):
            await asyncio.sleep(0.2)  # still in flight when the flush commits
            raise OSError(errno.EIO, "PUT refused: SlowDown")
        await super().set(key, value, byte_range)


def test_a_failed_chunk_put_in_flight_reaches_the_producer_and_the_last_commit_stands() -> None:
    store = _FailingPuts()
    with pytest.raises(WriterError, match="SlowDown") as caught:
        with snapsink.SyncSink(
            ZarrStore(store, chunk_frames=1), schema=SCHEMA, writer="thread"
        ) as sink:
            _write(sink, range(6))
            sink.flush()
            store.failing = True
            _write(sink, range(6, 9))
            sink.flush()  # waits for the PUTs in flight: they fail, no metadata PUT
    assert isinstance(caught.value.__cause__, OSError)
    store.failing = False
    traj = snapsink.open(store)
    assert len(traj) == 6  # the metadata PUT never came after the failed chunks
    _check(traj, range(6))
