"""Griffe extension: render Sphinx roles of snapsink's docstrings for mkdocstrings.

Docstrings use numpydoc with Sphinx roles (``:class:`~snapsink.HostMemory```,
``:meth:`write```). mkdocstrings renders Markdown, where such roles would show
raw. This extension rewrites each role into a code span, linked (through
mkdocs-autorefs) when its target is a public top-level name ``snapsink.X``,
which the API reference always documents; any other target stays an unlinked
code span, so a role can never produce a broken link.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|exc|data|mod|obj):`(~?)([\w.]+)(?:\(\))?`")


def _public_names() -> set[str]:
    """``snapsink.__all__``, read from the source (the package need not be importable)."""
    init = Path(__file__).resolve().parents[2] / "src" / "snapsink" / "__init__.py"
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


class RstRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package."""

    def __init__(self) -> None:
        super().__init__()
        self._public = _public_names()

    def _replace(self, match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        label = target.rsplit(".", 1)[-1] if short else target
        parts = target.split(".")
        if len(parts) == 2 and parts[0] == "snapsink" and parts[1] in self._public:
            return f"[`{label}`][{target}]"
        return f"`{label}`"

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        """Called for each object griffe loads; rewrites its docstring."""
        doc = getattr(obj, "docstring", None)
        if doc is not None and ":" in doc.value:
            doc.value = _ROLE.sub(self._replace, doc.value)
