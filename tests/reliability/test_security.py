"""Security: no pickle anywhere; hostile metadata (path traversal, wrong types,
object dtypes, symlinks) gives FormatError and never reaches outside the store.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapsink
from snapsink import FormatError, StoreNotFoundError, SyncSink

pytestmark = pytest.mark.timeout(120)

SRC = Path(snapsink.__file__).resolve().parent
TRAVERSAL = ["../evil", "/etc/passwd", "a/../../b", "..", "x\x00y", "static/../..", "C:\\evil"]


#: the modules allowed to pickle, between a job's own processes only: the control
#: channel between a sink and the writer process it started (a private socket
#: pair), and a many-rank store's collectives over its ranks' gloo group (as
#: mpi4py's and torch's object collectives pickle); never a file or a store
PICKLE_OK = {SRC / "_writer" / "_wire.py", SRC / "_comm.py"}


def test_no_pickle_anywhere_in_the_source() -> None:
    """No pickle, marshal, eval or exec (pickle only between a job's own
    processes: PICKLE_OK); every np.load / read_array call (found in the syntax tree,
    so docstrings do not count) passes allow_pickle=False."""
    calls = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if path in PICKLE_OK:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""
                ]
                assert not any(m.split(".")[0] in {"pickle", "dill", "marshal", "shelve"}
                               for m in mods), f"{path}:{node.lineno}"
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert name not in {"eval", "exec", "loads"} or not isinstance(func, ast.Name), (
                f"{path}:{node.lineno}"
            )
            if name in {"load", "read_array"} and (
                name == "read_array" or ast.unparse(func) in {"np.load", "numpy.load"}
            ):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("allow_pickle"), ast.Constant) and (
                    kw["allow_pickle"].value is False  # type: ignore[attr-defined]
                )
                assert ok, f"{path}:{node.lineno}: {ast.unparse(node)}"
    assert calls >= 1  # the static arrays are read with read_array(allow_pickle=False)


def make_npy(path: Path) -> None:
    """A small valid store to tamper with (written by the thread writer: the
    reader is under test here, and a writer process costs ~0.3 s a store)."""
    with SyncSink(
        snapsink.NpyDirectory(path, static={"mass": np.ones(3)}, attrs={"a": 1}),
        schema={"x": snapsink.Field("float32", (None, 3)), "e": "f8"},
        writer="thread",
    ) as sink:
        for i in range(4):
            sink.write({"x": np.full((i, 3), i, "f4"), "e": float(i)}, step=i, time=0.5 * i)


class OpenSpy:
    """Records every path opened for reading or writing while active."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.paths: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def spy_open(file: Any, *a: Any, **kw: Any) -> Any:
            if isinstance(file, str | os.PathLike):
                self.paths.append(os.path.realpath(os.fspath(file)))
            return real_open(file, *a, **kw)

        def spy_os_open(file: Any, *a: Any, **kw: Any) -> int:
            name = os.fspath(file)
            dir_fd = kw.get("dir_fd")
            if dir_fd is not None and not os.path.isabs(name):
                # relative to an open directory: resolve through it
                name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
            self.paths.append(os.path.realpath(name))
            return real_os_open(file, *a, **kw)

        mp.setattr(builtins, "open", spy_open)
        mp.setattr(os, "open", spy_os_open)

    def assert_inside(self, root: Path) -> None:
        root_s = os.path.realpath(root)
        outside = [p for p in self.paths if not p.startswith(root_s + os.sep) and p != root_s]
        outside = [p for p in outside if not p.startswith(("/proc", "/dev", *sys_prefixes()))]
        assert not outside, f"opened outside the store: {outside}"


def sys_prefixes() -> tuple[str, ...]:
    import sys

    return (os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), str(SRC))


def read_everything(path: Path) -> None:
    traj = snapsink.open(path)
    _ = (traj.steps, traj.times, traj.static, traj.attrs, traj.dropped_steps)
    for name in traj.fields:
        _ = traj[name][:]


@pytest.mark.parametrize("bad", TRAVERSAL)
@pytest.mark.parametrize("where", ["static", "field", "rows", "schema_key"])
def test_npy_metadata_traversal_is_a_format_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str, where: str
) -> None:
    store = tmp_path / "store"
    make_npy(store)
    (tmp_path / "evil.npy").write_bytes(b"secret")
    meta = json.loads((store / "metadata.json").read_text())
    if where == "static":
        meta["static"] = [bad]
    elif where == "field":
        meta["schema"][bad] = meta["schema"].pop("e")
    elif where == "rows":
        meta["rows"] = {bad: 3}
    else:
        meta["schema"] = {bad: {"dtype": "<f8", "shape": []}}
    (store / "metadata.json").write_text(json.dumps(meta))
    spy = OpenSpy(monkeypatch)
    with pytest.raises(FormatError):
        read_everything(store)
    with pytest.raises(FormatError):
        SyncSink(snapsink.NpyDirectory(store, mode="a"))
    spy.assert_inside(store)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(TRAVERSAL),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
TEMPLATE: list[Path] = []
KEYS = ["format", "version", "schema", "count", "rows", "times", "dropped", "attrs", "static",
        "versions", "created", "updated", "closed"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=json_values, drop=st.booleans())
def test_npy_hostile_metadata_fuzz(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: Any, drop: bool
) -> None:
    """Any single key replaced by any JSON value (or removed): the reader either
    opens a consistent store or raises FormatError/StoreNotFoundError; never
    another exception, never a file outside the store."""
    if not TEMPLATE:
        TEMPLATE.append(tmp_path_factory.mktemp("template") / "store")
        make_npy(TEMPLATE[0])
    store = tmp_path_factory.mktemp("h") / "store"
    shutil.copytree(TEMPLATE[0], store)  # much cheaper than writing (and fsyncing) anew
    meta = json.loads((store / "metadata.json").read_text())
    if drop:
        meta.pop(key)
    else:
        meta[key] = value
    (store / "metadata.json").write_text(json.dumps(meta))
    with pytest.MonkeyPatch.context() as mp:
        spy = OpenSpy(mp)
        try:
            read_everything(store)
        except (FormatError, StoreNotFoundError):
            pass
        spy.assert_inside(store)


def test_npy_object_dtype_headers_are_refused(tmp_path: Path) -> None:
    """An object-dtype .npy (a pickle inside) as static or as data: FormatError,
    nothing unpickled."""
    store = tmp_path / "store"
    make_npy(store)
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([object()], dtype=object), allow_pickle=True)
    os.replace(evil, store / "static" / "mass.npy")
    with pytest.raises(FormatError):
        _ = snapsink.open(store).static
    header = (store / "e.npy").read_bytes()[:4096].replace(b"'<f8'", b"'|O' ")
    (store / "e.npy").write_bytes(header + (store / "e.npy").read_bytes()[4096:])
    with pytest.raises(FormatError):
        _ = snapsink.open(store)["e"][:]


def test_npy_append_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """A hostile store whose data file is a symlink to a file outside it:
    appending must refuse, and the outside file must be untouched."""
    store = tmp_path / "store"
    make_npy(store)
    outside = tmp_path / "victim.npy"
    os.replace(store / "e.npy", outside)
    before = outside.read_bytes()
    os.symlink(outside, store / "e.npy")
    with pytest.raises((FormatError, snapsink.WriterError, OSError)):
        with SyncSink(snapsink.NpyDirectory(store, mode="a")) as sink:
            for i in range(4, 40):
                sink.write({"x": np.zeros((1, 3), "f4"), "e": 9.0}, step=i, time=10.0 + i)
    assert outside.read_bytes() == before


async def make_zarr(path: Path) -> None:
    """A small valid store to tamper with (the thread writer: see make_npy)."""
    async with snapsink.Sink(
        snapsink.ZarrStore(path, static={"mass": np.ones(3)}, attrs={"a": 1}),
        schema={"x": snapsink.Field("float32", (None, 3)), "e": "f8"},
        writer="thread",
    ) as sink:
        for i in range(4):
            await sink.write({"x": np.full((i, 3), i, "f4"), "e": float(i)}, step=i, time=0.5 * i)


@pytest.mark.parametrize("bad", TRAVERSAL)
async def test_zarr_attribute_traversal_is_a_format_error(tmp_path: Path, bad: str) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    grp = zarr.open_group(store, mode="r+")
    meta = dict(grp.attrs["snapsink"])
    meta["schema"] = {bad: {"dtype": "<f8", "shape": []}}
    grp.attrs["snapsink"] = meta
    with pytest.raises(FormatError):
        read_everything(store)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("count", "4"), ("count", -1), ("count", 10**30), ("count", True), ("schema", [1]),
        ("schema", {"e": {"dtype": "|O", "shape": []}}), ("times", "yes"), ("dropped", {"a": 1}),
        ("dropped", [[5, 2]]), ("version", 99), ("format", "other"), ("closed", 1),
    ],
)
async def test_zarr_wrong_types_are_format_errors(tmp_path: Path, key: str, value: Any) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    grp = zarr.open_group(store, mode="r+")
    meta = dict(grp.attrs["snapsink"])
    meta[key] = value
    grp.attrs["snapsink"] = meta
    with pytest.raises(FormatError):
        read_everything(store)


# -- issue 11, item 7: a FIFO (or another special file) never hangs a reader -------------
NPY_FILES = ["metadata.json", "steps.npy", "e.npy", "x.offsets.npy", "x.npy", "static/mass.npy"]


def _resume_npy(store: Path) -> None:
    with SyncSink(snapsink.NpyDirectory(store, mode="a", static={"mass": np.ones(3)})) as sink:
        sink.write({"x": np.zeros((1, 3), "f4"), "e": 9.0}, step=10, time=10.0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", NPY_FILES)
def test_npy_fifo_in_place_of_a_file_is_a_format_error(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    make_npy(store)
    os.remove(store / name)
    os.mkfifo(store / name)
    with pytest.raises(FormatError, match=r"not a regular file|FIFO"):
        read_everything(store)
    # The writer's resume reads the same files: FormatError too, not OSError(ESPIPE).
    with pytest.raises(FormatError, match=r"not a regular file|FIFO"):
        _resume_npy(store)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key", ["e/c/0", "x/c/0/0", "static/mass/c/0", "steps/zarr.json"])
async def test_zarr_fifo_in_place_of_a_chunk_is_a_format_error(tmp_path: Path, key: str) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    os.remove(store / key)
    os.mkfifo(store / key)
    with pytest.raises(FormatError, match=r"not a regular file|FIFO"):
        await anyio.to_thread.run_sync(read_everything, store)


# -- issue 11, item 12: the reader never opens anything outside the store -------------------
def _symlink_out(store: Path, name: str, outside: Path) -> None:
    """Move ``store/name`` (a file or a directory) to ``outside`` and leave a
    symlink to it: the content is a valid store's, so only the link is wrong."""
    os.replace(store / name, outside)
    os.symlink(outside, store / name)


@pytest.mark.parametrize("name", [*NPY_FILES, "static"])
def test_npy_reader_refuses_symlinks_out_of_the_store(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    make_npy(store)
    _symlink_out(store, name, tmp_path / "outside")
    with pytest.raises(FormatError, match="symbolic link"):
        read_everything(store)
    with pytest.raises(FormatError, match="symbolic link"):
        _resume_npy(store)


def test_npy_reader_follows_a_symlink_to_the_store_itself(tmp_path: Path) -> None:
    """The store's own path may be a link (the user's choice); only what is
    inside it is checked."""
    make_npy(tmp_path / "store")
    os.symlink(tmp_path / "store", tmp_path / "link")
    traj = snapsink.open(tmp_path / "link")
    assert traj.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(traj.static["mass"], np.ones(3))


@pytest.mark.parametrize("name", ["e/c/0", "x/c/0/0", "static/mass/c/0", "e", "static",
                                  "e/zarr.json"])
async def test_zarr_reader_refuses_symlinks_out_of_the_store(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    _symlink_out(store, name, tmp_path / "outside")
    with pytest.raises(FormatError, match="symbolic link"):
        await anyio.to_thread.run_sync(read_everything, store)


# -- issue 11, item 13: tampered sizes and codecs are FormatErrors, before any allocation -----
def _edit_meta(store: Path, **changes: Any) -> None:
    meta = json.loads((store / "metadata.json").read_text())
    meta.update(changes)
    (store / "metadata.json").write_text(json.dumps(meta))


def test_npy_huge_count_is_a_format_error_before_allocating(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_npy(store)
    _edit_meta(store, count=2**40)
    with pytest.raises(FormatError, match=r"steps\.npy: metadata\.json names 1099511627776 rows"):
        read_everything(store)


def test_npy_huge_frame_shape_is_a_format_error_before_allocating(tmp_path: Path) -> None:
    """A per-frame shape of 10**12 in the schema and in the data file's header
    alike: the file's real size refuses it."""
    store = tmp_path / "store"
    make_npy(store)
    meta = json.loads((store / "metadata.json").read_text())
    meta["schema"]["e"] = {"dtype": "<f8", "shape": [10**12]}
    (store / "metadata.json").write_text(json.dumps(meta))
    data = (store / "e.npy").read_bytes()
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0))
    header["shape"] = (4, 10**12)
    (store / "e.npy").write_bytes(_header_4096(header) + data[4096:])
    with pytest.raises(FormatError, match=r"e\.npy: .*names 4 rows of shape \(1000000000000,\)"):
        read_everything(store)


def _header_4096(header: dict[str, Any]) -> bytes:
    from snapsink.stores._npyformat import build_header

    return build_header(np.dtype(header["descr"]), header["shape"])


def test_npy_static_header_claiming_too_much_is_a_format_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_npy(store)
    path = store / "static" / "mass.npy"
    with open(path, "rb") as fh:
        assert np.lib.format.read_magic(fh) == (1, 0)
        _, _, dtype = np.lib.format.read_array_header_1_0(fh)
        body = fh.read()
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": (10**12,)}
        )
        fh.write(body)
    with pytest.raises(FormatError, match=r"mass\.npy: the header claims 1000000000000 elements"):
        _ = snapsink.open(store).static


@pytest.mark.parametrize("runs", [[[0, 2**62]], [[5, 2**64]], [[-(2**64), 0]]])
def test_npy_dropped_runs_out_of_reach_are_format_errors(tmp_path: Path, runs: Any) -> None:
    store = tmp_path / "store"
    make_npy(store)
    _edit_meta(store, dropped=runs)
    with pytest.raises(FormatError, match="dropped"):
        _ = snapsink.open(store).dropped_steps


async def test_zarr_dropped_run_too_long_is_a_format_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    grp = zarr.open_group(store, mode="r+")
    meta = dict(grp.attrs["snapsink"])
    meta["dropped"] = [[0, 2**62]]
    grp.attrs["snapsink"] = meta
    with pytest.raises(FormatError, match="dropped"):
        _ = snapsink.open(store).dropped_steps


def test_npy_last_offset_must_equal_the_row_count(tmp_path: Path) -> None:
    """offsets[count] != rows: refused, never a silently shorter last frame."""
    store = tmp_path / "store"
    make_npy(store)
    traj = snapsink.open(store)
    np.testing.assert_array_equal(traj["x"][3], np.full((3, 3), 3, "f4"))
    path = store / "x.offsets.npy"
    off = np.load(path, mmap_mode="r+", allow_pickle=False)
    assert off.tolist() == [0, 0, 1, 3, 6]
    off[4] = 5  # metadata still says 6 rows
    off.flush()
    del off
    with pytest.raises(FormatError, match=r"x\.offsets\.npy: offsets run from 0 to 5.* 6 rows"):
        read_everything(store)


def _edit_array_json(path: Path, edit: Any) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


async def test_zarr_unknown_codec_is_a_format_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    await make_zarr(store)

    def edit(meta: dict[str, Any]) -> None:
        meta["codecs"] = [{"name": "no_such_codec_xyz"}]

    _edit_array_json(store / "e" / "zarr.json", edit)
    with pytest.raises(FormatError, match=r"'e'.*no_such_codec_xyz"):
        await anyio.to_thread.run_sync(read_everything, store)


async def test_zarr_truncated_chunk_is_a_format_error(tmp_path: Path) -> None:
    store = tmp_path / "store"
    await make_zarr(store)
    chunk = store / "e" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:11])
    with pytest.raises(FormatError, match=r"array 'e'"):
        await anyio.to_thread.run_sync(read_everything, store)


async def test_zarr_huge_count_is_a_format_error_before_allocating(tmp_path: Path) -> None:
    """count 2**40 and every array's shape raised to match: the chunks that
    would hold those rows do not exist, so nothing is allocated."""
    store = tmp_path / "store"
    await make_zarr(store)
    grp = zarr.open_group(store, mode="r+")
    meta = dict(grp.attrs["snapsink"])
    meta["count"] = 2**40
    grp.attrs["snapsink"] = meta
    for name in ("steps", "times", "e", "x.offsets"):

        def edit(m: dict[str, Any]) -> None:
            m["shape"][0] = 2**40 + 1

        _edit_array_json(store / name / "zarr.json", edit)
    with pytest.raises(FormatError, match=r"chunk .* is missing"):
        await anyio.to_thread.run_sync(read_everything, store)


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_tampered_ragged_offsets_are_a_format_error(tmp_path: Path, kind: str) -> None:
    """Offsets that run backwards or past the stored rows: a FormatError naming
    the field, from the read side both readers share (stores/_rows.py)."""
    if kind == "hdf5":
        h5py = pytest.importorskip("h5py")
    path = tmp_path / ("run.zarr" if kind == "zarr" else "run.h5")
    store = snapsink.ZarrStore(path) if kind == "zarr" else snapsink.HDF5Store(path)
    with snapsink.SyncSink(store, schema={"r": snapsink.Field("f8", (None, 2))}) as sink:
        for i in range(4):
            sink.write({"r": np.full((i + 1, 2), float(i))}, step=i)
    good = snapsink.open(path)["r"][:]
    assert [len(x) for x in good] == [1, 2, 3, 4]
    bad = np.array([0, 1, 5, 3, 11], np.int64)  # backwards, and past the 10 stored rows
    if kind == "zarr":
        import zarr

        zarr.open_array(path / "r.offsets", mode="r+")[:] = bad
    else:
        from snapsink.stores._hdf5read import HANDLES

        HANDLES.release(str(path))  # the reader's shared handle, so h5py may write
        with h5py.File(path, "r+") as f:
            f["r.offsets"][:5] = bad
    with pytest.raises(FormatError, match=r"offsets of ragged field 'r' are corrupt"):
        snapsink.open(path)["r"][:]
