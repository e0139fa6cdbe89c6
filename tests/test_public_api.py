"""The public surface: every public name is exported and documented."""

from __future__ import annotations

import inspect

import snapsink


def test_all_names_exist_and_public_names_are_in_all() -> None:
    for name in snapsink.__all__:
        assert hasattr(snapsink, name), name
    public = {n for n in dir(snapsink) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(snapsink, n))}
    assert public - modules - {"annotations"} <= set(snapsink.__all__)


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
