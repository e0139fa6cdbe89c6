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

Every fenced Python block of README.md and docs/**/*.md runs as written, with
sybil (see "snippets" below).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
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
# Every fenced ```python block of README.md and docs/**/*.md runs, as written, with
# sybil: the blocks of one page share a namespace, in order, like a reader pasting
# them into one session, in a fresh temporary directory. Pages may add hidden setup
# or checks in an HTML comment, `<!-- invisible-code-block: python ... -->`; a block
# that cannot run here is exempted by `<!-- skip: next "why" -->` right above it
# (the reason is required, and shows in the page's source next to the block).
# `--8<-- "file.py:section"` lines are expanded as the docs build (pymdownx.snippets
# with base_path docs/examples and dedent_subsections), so the page runs as rendered.

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
PAGES = sorted(
    str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
)
FENCE_INFO = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[ \t]*\{?\.?([\w+-]*)", re.MULTILINE)
INCLUDE = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<file>[^":]+)(?::(?P<section>[\w-]+))?"\s*$')
SKIP = re.compile(r"<!--+\s*skip:\s*(?P<args>.*?)\s*--+>", re.DOTALL)


def expand_includes(text: str, base: Path = EXAMPLES) -> str:
    """Replace ``--8<-- "file:section"`` lines with the text pymdownx.snippets includes."""
    out = []
    for line in text.splitlines(keepends=True):
        m = INCLUDE.match(line.rstrip("\n"))
        if not m:
            out.append(line)
            continue
        source = (base / m["file"]).read_text().splitlines(keepends=True)
        if m["section"]:
            start = f"--8<-- [start:{m['section']}]"
            end = f"--8<-- [end:{m['section']}]"
            first = next(i for i, s in enumerate(source) if s.strip().endswith(start))
            last = next(i for i, s in enumerate(source) if s.strip().endswith(end))
            source = [textwrap.dedent("".join(source[first + 1 : last]))]
        body = "".join(source)
        out.append(textwrap.indent(body, m["indent"]) + ("" if body.endswith("\n") else "\n"))
    return "".join(out)


def parse_page(page: str, text: str | None = None) -> Any:
    from sybil import Document
    from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

    raw = (ROOT / page).read_text() if text is None else text
    document = Document(expand_includes(raw), str(ROOT / page))
    for parser in (PythonCodeBlockParser(), SkipParser()):
        for region in parser(document):
            document.add(region)
    return document


def python_fences(text: str) -> int:
    """Opening fences whose language is Python (``py``, ``python``, ``python3``, ...)."""
    fences = FENCE_INFO.findall(text)
    return sum(1 for lang in fences[::2] if lang.lower() in ("py", "python", "python3"))


def run_page(page: str, text: str | None = None) -> tuple[int, list[str]]:
    """Evaluate every example of a page in order; (blocks run, skip reasons)."""
    import unittest

    document = parse_page(page, text)
    document.namespace["__name__"] = "__snippet__"
    document.namespace["missing"] = lambda module: importlib.util.find_spec(module) is None
    ran, skipped = 0, []
    for example in document:
        is_code = type(example.region.evaluator).__name__ != "Skipper"
        try:
            example.evaluate()
        except unittest.SkipTest as exc:
            skipped.append(str(exc))
            continue
        except BaseException as exc:
            exc.add_note(f"in the python block at {page}, line {example.line}")
            raise
        ran += is_code
    return ran, skipped


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_runs(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = (ROOT / page).read_text()
    for m in SKIP.finditer(text):  # an exemption says why
        assert re.fullmatch(r"(next|start)\s+(\".+\"|if\(.+reason=.+\))", m["args"], re.S), (
            f"{page}: exemption without a quoted reason: {m.group(0)!r}"
        )
    document = parse_page(page)
    code = [e for e in document if type(e.region.evaluator).__name__ != "Skipper"]
    # every Python fence is seen by sybil (none hides behind an odd info string)
    visible = python_fences(expand_includes(text))
    invisible = len(re.findall(r"<!--+\s*invisible-code-block:\s*python", text))
    assert len(code) == visible + invisible, f"{page}: {visible} python fences, sybil saw {code}"
    run_page(page)


def test_the_pages_are_every_markdown_file() -> None:
    assert "README.md" in PAGES and "docs/index.md" in PAGES and len(PAGES) >= 10


def test_a_failing_block_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    page = "\n".join(["```python", "x = 1", "```", "", "```python", "assert x == 2", "```", ""])
    with pytest.raises(AssertionError) as info:
        run_page("README.md", page)
    assert any("README.md, line 5" in note for note in info.value.__notes__)
    skipping = page.replace(
        "\n\n```python\nassert", '\n\n<!-- skip: next "why" -->\n```python\nassert'
    )
    assert run_page("README.md", skipping) == (1, ["why"])


def test_includes_expand_like_the_docs_build(tmp_path: Path) -> None:
    (tmp_path / "ex.py").write_text(
        "import os\n\n\ndef f():\n    # --8<-- [start:body]\n    y = 1\n    return y\n"
        "    # --8<-- [end:body]\n"
    )
    text = '```python\n--8<-- "ex.py:body"\n```\n```python\n--8<-- "ex.py"\n```\n'
    out = expand_includes(text, tmp_path)
    assert out.startswith("```python\ny = 1\nreturn y\n```\n```python\nimport os\n")


def test_crash_safety_states_the_stores_commit_defaults() -> None:
    text = (ROOT / "docs" / "guides" / "crash-safety.md").read_text()
    said = dict(re.findall(r"`(NpyDirectory|ZarrStore)`: (\d+) frames or", " ".join(text.split())))
    for name in ("NpyDirectory", "ZarrStore"):
        default = inspect.signature(getattr(snapsink, name)).parameters["commit_every"].default
        assert said.get(name) == str(default), f"crash-safety.md: {name} commits every {default}"
