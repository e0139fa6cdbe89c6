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


#: the one module allowed to pickle: the control channel between a sink and the
#: writer process it started (a private socket pair, never a file or a store)
PICKLE_OK = {SRC / "_writer" / "_wire.py"}


def test_no_pickle_anywhere_in_the_source() -> None:
    """No pickle, marshal, eval or exec (pickle only on the writer's private
    control socket); every np.load / read_array call (found in the syntax tree,
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
    with SyncSink(
        snapsink.NpyDirectory(path, static={"mass": np.ones(3)}, attrs={"a": 1}),
        schema={"x": snapsink.Field("float32", (None, 3)), "e": "f8"},
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
            self.paths.append(os.path.realpath(os.fspath(file)))
            return real_os_open(file, *a, **kw)

        mp.setattr(builtins, "open", spy_open)
        mp.setattr(os, "open", spy_os_open)

    def assert_inside(self, root: Path) -> None:
        root_s = os.path.realpath(root)
        outside = [p for p in self.paths if not p.startswith(root_s + os.sep) and p != root_s]
        outside = [p for p in outside if not p.startswith(("/proc", "/dev", sys_prefixes()))]
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
    async with snapsink.Sink(
        snapsink.ZarrStore(path, static={"mass": np.ones(3)}, attrs={"a": 1}),
        schema={"x": snapsink.Field("float32", (None, 3)), "e": "f8"},
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
