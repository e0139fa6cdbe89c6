"""Public names carry numpydoc docstrings (what the API reference renders).

For each class and function in ``snapsink.__all__``:

- a function documents its arguments under ``Parameters``, its result under
  ``Returns`` (unless it returns None) and, when its body raises, ``Raises``;
- a class whose constructor takes arguments documents them under
  ``Parameters`` (or ``Attributes`` for a dataclass), and when the constructor
  raises, ``Raises``; exceptions need only a docstring;
- every public method and property has a docstring.

Gaps known in modules owned elsewhere are listed in KNOWN_GAPS and expected to
fail (strictly: fixing one makes its entry fail, so the list stays current).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

import snapsink

# name -> why it fails today (reported to the owners; remove when fixed)
KNOWN_GAPS: dict[str, str] = {}

SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}\s*$", re.MULTILINE)


def sections(doc: str | None) -> set[str]:
    return set(SECTION.findall(inspect.cleandoc(doc or "")))


def own_parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and not p.name.startswith("_")
    ]


def raises(fn: Callable[..., Any]) -> bool:
    """Whether the function's own body has a ``raise`` statement (not re-raise)."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):  # pragma: no cover
        return False
    return re.search(r"^\s*raise \w", src, re.MULTILINE) is not None


def returns_value(fn: Callable[..., Any]) -> bool:
    ann = inspect.signature(fn).return_annotation
    return ann not in (inspect.Signature.empty, None, "None")


def function_problems(name: str, fn: Callable[..., Any]) -> list[str]:
    doc = inspect.getdoc(fn)
    if not doc:
        return [f"{name}: no docstring"]
    have = sections(doc)
    problems = []
    if own_parameters(fn) and "Parameters" not in have:
        problems.append(f"{name}: arguments without a Parameters section")
    if returns_value(fn) and not have & {"Returns", "Yields"}:
        problems.append(f"{name}: a result without a Returns section")
    if raises(fn) and "Raises" not in have:
        problems.append(f"{name}: raises without a Raises section")
    return problems


def public_members(cls: type) -> dict[str, Any]:
    out = {}
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out[attr] = value
    return out


def class_problems(name: str, cls: type) -> list[str]:
    if not (cls.__doc__ and cls.__doc__.strip()):
        return [f"{name}: no docstring"]
    if issubclass(cls, BaseException):
        return []
    problems = []
    have = sections(cls.__doc__)
    init = cls.__dict__.get("__init__")
    if dataclasses.is_dataclass(cls):
        if dataclasses.fields(cls) and not have & {"Parameters", "Attributes"}:
            problems.append(f"{name}: dataclass fields without Attributes/Parameters")
    elif inspect.isfunction(init) and not getattr(cls, "_is_protocol", False):
        if own_parameters(init) and "Parameters" not in have:
            problems.append(f"{name}: constructor arguments without a Parameters section")
        if raises(init) and "Raises" not in have:
            problems.append(f"{name}: constructor raises without a Raises section")
    for attr, member in public_members(cls).items():
        fn = member.fget if isinstance(member, property) else member
        if fn is None or not (fn.__doc__ and fn.__doc__.strip()):
            problems.append(f"{name}.{attr}: no docstring")
    return problems


def problems_of(name: str) -> list[str]:
    obj = getattr(snapsink, name)
    if inspect.isclass(obj):
        return class_problems(name, obj)
    if inspect.isfunction(obj):
        return function_problems(name, obj)
    return []


DOCUMENTED = sorted(
    n
    for n in snapsink.__all__
    if inspect.isclass(getattr(snapsink, n)) or inspect.isfunction(getattr(snapsink, n))
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[n]))
        if n in KNOWN_GAPS
        else n
        for n in DOCUMENTED
    ],
)
def test_public_name_has_numpydoc_docstring(name: str) -> None:
    assert problems_of(name) == []


def test_checker_catches_gaps() -> None:
    def undocumented(x: int) -> int:
        """Doubles."""
        if x < 0:
            raise ValueError(x)
        return 2 * x

    assert function_problems("f", undocumented) == [
        "f: arguments without a Parameters section",
        "f: a result without a Returns section",
        "f: raises without a Raises section",
    ]
    assert function_problems("every", snapsink.every) == []


def test_every_public_name_is_in_the_api_reference() -> None:
    from pathlib import Path

    reference = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
    if not reference.exists():  # pragma: no cover - an sdist without docs
        pytest.skip("docs/reference.md not present")
    listed = set(re.findall(r"^::: snapsink\.(\w+)$", reference.read_text(), re.MULTILINE))
    missing = sorted(set(snapsink.__all__) - listed - {"__version__"})
    assert missing == [], f"add to docs/reference.md: {missing}"


# -- snippets ------------------------------------------------------------------------
#: pages whose every ```python block runs as written, and the last line the blocks
#: print (the first-hour issue extends this to every page with a maintained tool)
RUNNABLE_PAGES = {"docs/guides/writers.md": "10"}


@pytest.mark.parametrize(("page", "last_line"), RUNNABLE_PAGES.items())
def test_python_blocks_run_as_written(
    page: str,
    last_line: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / page).read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, f"{page}: no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        code = compile(block, page, "exec")
        exec(code, {"__name__": "__snippet__"})
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == last_line  # the blocks' own read-back
