"""The public surface: every public name is exported and documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import snapsink


def test_all_names_exist_and_public_names_are_in_all() -> None:
    for name in snapsink.__all__:
        assert hasattr(snapsink, name), name
    # nothing else after ``import snapsink``: no submodule, no ``annotations``
    # (in a fresh interpreter: importing ``snapsink.stores.npy`` binds ``writers``)
    code = (
        "import snapsink\n"
        "public = {n for n in dir(snapsink) if not n.startswith('_')}\n"
        "print(sorted(public ^ (set(snapsink.__all__) - {'__version__'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_names_are_the_packages_own() -> None:
    for name in snapsink.__all__:
        obj = getattr(snapsink, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "snapsink", name
    assert repr(snapsink.Sink) == "<class 'snapsink.Sink'>"


def test_import_does_not_load_zarr_until_zarrstore_is_used() -> None:
    code = (
        "import sys, snapsink\n"
        "assert 'zarr' not in sys.modules, 'zarr loaded by import snapsink'\n"
        "z = snapsink.ZarrStore\n"
        "assert 'zarr' in sys.modules and z.__module__ == 'snapsink'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_import_loads_no_simulation_package() -> None:
    # in a fresh interpreter: the test session itself may have imported them
    code = (
        "import sys, snapsink, snapsink.integrations\n"
        "heavy = ('ase', 'torch', 'jax', 'pde')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        "import snapsink.integrations.ase\n"  # the adapter loads ASE at attach(), not here
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout + out.stderr


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in snapsink.__all__:
        obj = getattr(snapsink, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_error_tree() -> None:
    assert issubclass(snapsink.SchemaError, ValueError)
    assert issubclass(snapsink.DTypeError, TypeError)
    assert issubclass(snapsink.DTypeError, snapsink.SchemaError)
    assert issubclass(snapsink.StoreExistsError, FileExistsError)
    assert issubclass(snapsink.ConfigError, ValueError)
    for name in ("WouldBlock", "ClosedSinkError", "WriterError", "FormatError", "DeviceError"):
        assert issubclass(getattr(snapsink, name), snapsink.SnapsinkError), name


@pytest.mark.parametrize(
    ("name", "is_async"),
    [
        ("HostMemory", False),
        ("NpyDirectory", False),
        ("ZarrStore", True),
        ("HDF5Store", False),
        ("GPUBuffer", False),
    ],
)
def test_each_store_is_one_protocol_whole(name: str, is_async: bool) -> None:
    """A store's five methods are all blocking (Store) or all coroutines
    (AsyncStore), never a mix: the sink's writer calls them one way per store."""
    cls = getattr(snapsink, name)
    methods = ("open", "prepare", "append", "commit", "close")
    kinds = {m: inspect.iscoroutinefunction(getattr(cls, m)) for m in methods}
    assert kinds == dict.fromkeys(methods, is_async)
    assert issubclass(cls, snapsink.AsyncStore if is_async else snapsink.Store)
