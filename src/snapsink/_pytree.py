"""Nested state (pytrees): flattened into dotted field names, and rebuilt.

A frame may be nested: mappings of mappings (a JAX pytree, a PyTorch state
dict, ``{"model": model.state_dict()}``), dataclasses, NamedTuples, lists and
tuples of arrays, and any JAX pytree node when JAX is loaded. It is stored flat:
each leaf is one field, named by its path with :data:`SEP` between the keys
(``{"params": {"w": w}}`` gives the field ``params.w``; ``[a, b]`` under
``layers`` gives ``layers.0`` and ``layers.1``).

Why ``.``: the name becomes a file name (``params.w.npy``), a Zarr array name
and an xarray variable name, where ``/`` would make directories; ``.`` is
PyTorch's own separator (``layer.0.weight``), so a state dict is already in
this form, and it never occurred in a field name before (names were
identifiers), so every existing store reads the same. ``__`` was the
alternative, but it occurs in identifiers: ``my__field`` would split.

A key that holds ``.`` is a path: ``{"layer.0.weight": w}`` and
``{"layer": {"0": {"weight": w}}}`` are the same field, and read back nested
as the latter. Two spellings of one field in a frame are refused
(:class:`~snapsink.SchemaError`), as is a field that is also a node
(``{"a": x, "a.b": y}``): neither could be read back unambiguously.

What is a leaf: an array (numpy, CuPy, PyTorch, JAX, anything with
``__array__``, ``__dlpack__`` or ``__cuda_array_interface__``), a number, and a
list or tuple that holds only numbers (or such lists): numpy's reading of
``[1.0, 2.0, 3.0]``, one field, as before. A list or tuple that holds arrays is
a node, by index. ``None`` is refused (it has nothing to store), except as a
child of a node only JAX knows, where it has no leaves, as in JAX.

Only the slow paths call this module: a flat frame whose names match the schema
never does (see :meth:`snapsink.Schema.validate`). JAX is never imported here:
it is used only when ``sys.modules`` already holds it (a JAX pytree means JAX
is loaded).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np

from ._errors import ConfigError, DTypeError, SchemaError

__all__ = ["SEP", "flatten_frame", "flatten_specs", "rebuild", "tree_conflict", "unflatten"]

#: The separator between the keys of a nested field's name.
SEP = "."

_SCALARS = (int, float, complex, np.generic)
_ARRAY_HOOKS = (
    "__array__",
    "__array_interface__",
    "__cuda_array_interface__",
    "__dlpack__",
    "__snapsink_emulated_device__",
)
#: type -> whether its instances are arrays (looked up on the type: attributes
#: such as __cuda_array_interface__ are properties that may raise on an instance)
_ARRAY_TYPES: dict[type, bool] = {np.ndarray: True}


class _Twice(Exception):
    """Internal: a flattened name was produced twice (re-walked for the message)."""

    def __init__(self, name: str):
        self.name = name


def _is_array(value: object) -> bool:
    kind = type(value)
    known = _ARRAY_TYPES.get(kind)
    if known is None:
        known = _ARRAY_TYPES[kind] = any(hasattr(kind, h) for h in _ARRAY_HOOKS)
    return known


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields")


def _numbers(seq: list[Any] | tuple[Any, ...]) -> bool:
    """True when ``seq`` holds only numbers, or lists and tuples of them: an array-like."""
    for item in seq:
        if isinstance(item, _SCALARS):
            continue
        if isinstance(item, list | tuple) and not _is_namedtuple(item) and _numbers(item):
            continue
        return False
    return True


def _key(key: object, where: str) -> str:
    """One key of a path as it appears in a field name: a str or int key's own
    value, never its ``__str__``, which a ``(str, Enum)`` or ``(int, Enum)``
    member overrides (``Species.H == "H"`` is the key ``H``; ``"Species.H"``
    would also split into a path)."""
    if type(key) is str:
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return int.__repr__(key)
    if isinstance(key, str):
        return str.__str__(key)
    if not where:
        raise ConfigError(f"field name: expected a str, got {type(key).__name__} {key!r}")
    raise ConfigError(
        f"field name: expected str or int keys in nested state, got the "
        f"{type(key).__name__} key {key!r} under {where!r}"
    )


def _jax_node(value: object) -> tuple[list[tuple[object, Any]], Any] | None:
    """``([(key, child)], treedef)`` of a JAX pytree node one level down, or None
    when JAX is not loaded or ``value`` is a leaf to it. A child that is None
    has no leaves, as in JAX (the treedef restores it)."""
    # a JAX that another thread is still importing (no tree_util yet) is not
    # loaded: no JAX pytree exists before it is
    tree_util = getattr(sys.modules.get("jax"), "tree_util", None)
    if tree_util is None:
        return None
    pairs, treedef = tree_util.tree_flatten_with_path(
        value, is_leaf=lambda x: x is not value and x is not None
    )
    if tree_util.treedef_is_leaf(treedef):
        return None
    out: list[tuple[object, Any]] = []
    for path, child in pairs:
        entry = path[-1]
        for attr in ("name", "key", "idx"):  # GetAttrKey, DictKey/FlattenedIndexKey, SequenceKey
            if hasattr(entry, attr):
                out.append((getattr(entry, attr), child))
                break
        else:  # pragma: no cover - a key type JAX may add
            out.append((str(entry), child))
    return out, treedef


#: what a node is, for rebuilding it: its kind and, for a JAX node, its treedef
Node = tuple[str, Iterable[tuple[object, Any]], Any]


def _node(value: object) -> Node | None:
    """``(kind, (key, child) pairs, treedef)`` of a node, or None for a leaf."""
    if value is None:
        return None  # not an empty node (as to JAX): a leaf the schema refuses
    if isinstance(value, Mapping):
        return "mapping", value.items(), None
    if isinstance(value, tuple | list):
        if _is_namedtuple(value):
            names: tuple[str, ...] = cast(Any, value)._fields
            return "namedtuple", zip(names, value, strict=True), None
        if _numbers(value):
            return None  # an array-like, as numpy reads it
        return "sequence", enumerate(value), None
    if _is_array(value):
        return None
    # JAX first: a dataclass registered with JAX (flax.struct, equinox) keeps
    # its static fields (functions, settings) out of its leaves
    jax_node = _jax_node(value)
    if jax_node is not None:
        return "jax", jax_node[0], jax_node[1]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return "dataclass", [(f.name, getattr(value, f.name)) for f in fields], None
    return None


def _walk(
    name: str,
    value: Any,
    out: dict[str, Any],
    trace: list[tuple[str, str]] | None,
    spelled: str,
) -> None:
    kind = type(value)
    node = (
        None if kind is np.ndarray or kind is float or kind is int or kind is bool else _node(value)
    )
    if node is None:
        if name in out and trace is None:
            raise _Twice(name)
        out[name] = value
        if trace is not None:
            trace.append((name, spelled))
        return
    for key, child in node[1]:
        k = _key(key, name)
        how = "" if trace is None else f"{spelled}[{key!r}]"  # spelled for messages only
        _walk(f"{name}{SEP}{k}", child, out, trace, how)


def _top_level(frame: object, step: int | None) -> Node:
    node = None if isinstance(frame, list | tuple) and not _is_namedtuple(frame) else _node(frame)
    if node is None:
        at = "" if step is None else f" at step {step}"
        raise DTypeError(
            f"frame{at}: expected a mapping of field name to array (or a dataclass, "
            f"NamedTuple or JAX pytree of arrays), got {type(frame).__name__}"
        )
    return node


def flatten_frame(frame: object, step: int | None = None) -> dict[str, Any]:
    """``{dotted name: leaf}`` of a frame, in the frame's order (depth first).

    Names are not checked here (the schema does), but keys must be str or int.

    Raises
    ------
    DTypeError
        ``frame`` is not a mapping, dataclass, NamedTuple or JAX pytree node.
    SchemaError
        Two paths of the frame give the same name.
    ConfigError
        A key that is neither a str nor an int.
    """
    out: dict[str, Any] = {}
    try:
        for key, value in _top_level(frame, step)[1]:
            _walk(_key(key, ""), value, out, None, "")
    except _Twice as twice:
        trace: list[tuple[str, str]] = []
        for key, value in _top_level(frame, step)[1]:
            _walk(_key(key, ""), value, {}, trace, f"[{key!r}]")
        spellings = [s for n, s in trace if n == twice.name]
        at = "" if step is None else f" at step {step}"
        raise SchemaError(
            f"field {twice.name!r}{at}: given twice, as {' and as '.join(spellings)}; a key "
            f"with {SEP!r} is a path ({{'a{SEP}b': x}} is {{'a': {{'b': x}}}}): keep one of them"
        ) from None
    return out


def flatten_specs(fields: Mapping[str, object]) -> dict[str, object]:
    """A declared schema's ``{name: spec}`` with nested mappings flattened.

    Only mappings nest here: a tuple is a ``(dtype, shape)`` pair.

    Raises
    ------
    ConfigError
        A name given twice, or a key that is neither a str nor an int.
    """
    out: dict[str, object] = {}

    def walk(name: str, spec: object) -> None:
        if isinstance(spec, Mapping):
            for key, sub in spec.items():
                walk(f"{name}{SEP}{_key(key, name)}", sub)
            return
        if name in out:
            raise ConfigError(
                f"schema field {name!r}: given twice (a key with {SEP!r} is a path: "
                f"{{'a{SEP}b': ...}} is {{'a': {{'b': ...}}}})"
            )
        out[name] = spec

    for key, spec in fields.items():
        if not isinstance(key, str):  # the schema's name check says what is wrong
            out[key] = spec
            continue
        walk(_key(key, ""), spec)
    return out


def tree_conflict(names: Iterator[str] | list[str]) -> str | None:
    """A message when a name is also a node of another (``a`` and ``a.b``), else None."""
    known = set(names)
    for name in known:
        cut = name.rfind(SEP)
        while cut > 0:
            head = name[:cut]
            if head in known:
                return (
                    f"field {head!r} is both a field and the parent of field {name!r}; "
                    "nested state is read back as a tree, where a node cannot also be a leaf"
                )
            cut = name.rfind(SEP, 0, cut)
    return None


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": x, "a.c": y}`` → ``{"a": {"b": x, "c": y}}``, keys as strings."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, last = name.split(SEP)
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def rebuild(like: object, get: Callable[[str], Any]) -> Any:
    """The structure of ``like`` with each leaf replaced by ``get(name)``.

    ``like`` is a template of the state that was written (a dataclass, a
    NamedTuple, a JAX pytree, a dict with dotted keys): the result has its
    types and keys. A list or tuple of numbers in the template is a leaf. A
    mapping node is rebuilt as ``type(node)(pairs)``, or, for a dict subclass
    whose constructor takes more (a ``defaultdict``), as a copy of the node
    refilled; one that can be neither comes back as a plain dict.

    Raises
    ------
    DTypeError
        ``like`` is not a mapping, dataclass, NamedTuple or JAX pytree node.
    """
    return _rebuild_node(like, _top_level(like, None), "", get)


def _mapping_like(like: Mapping[Any, Any], pairs: dict[Any, Any]) -> Any:
    """``pairs`` in a mapping of ``like``'s type: ``type(like)(pairs)`` when that
    holds the pairs, else, for a dict subclass whose constructor takes more than
    them (a ``defaultdict``'s ``default_factory``), a copy of ``like`` refilled,
    which keeps it. A plain dict only when neither works; a mapping that is not
    a dict is never copied (its copy may share, and so empty, the template's
    storage)."""
    kind = type(like)
    if kind is dict:
        return pairs
    try:
        new = cast(Any, kind)(pairs)
        if new.keys() == pairs.keys():  # not a constructor that took them as something else
            return new
    except Exception:
        pass
    if isinstance(like, dict):  # a copy has its own storage
        try:
            new = copy.copy(like)
            new.clear()
            new.update(pairs)
            return new
        except Exception:
            pass
    return pairs


def _rebuild(name: str, value: Any, get: Callable[[str], Any]) -> Any:
    node = _node(value)
    return get(name) if node is None else _rebuild_node(value, node, name, get)


def _rebuild_node(like: Any, node: Node, name: str, get: Callable[[str], Any]) -> Any:
    kind, children, treedef = node
    keys: list[object] = []
    values: list[Any] = []
    for key, child in children:
        k = _key(key, name)
        keys.append(key)
        values.append(_rebuild(f"{name}{SEP}{k}" if name else k, child, get))
    if kind == "mapping":
        return _mapping_like(like, dict(zip(keys, values, strict=True)))
    if kind == "namedtuple":
        return type(like)(*values)
    if kind == "sequence":
        return type(like)(values)
    if kind == "dataclass":
        fields = dataclasses.fields(like)
        new = dataclasses.replace(
            like, **{f.name: v for f, v in zip(fields, values, strict=True) if f.init}
        )
        for f, v in zip(fields, values, strict=True):
            if not f.init:  # set by the class itself: restore the stored value
                object.__setattr__(new, f.name, v)
        return new
    jax = sys.modules["jax"]
    return jax.tree_util.tree_unflatten(treedef, values)
