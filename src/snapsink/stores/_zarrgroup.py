"""The group of a ZarrStore and its arrays: what Zarr can hold, the group node,
the arrays created for a schema or loaded and checked to resume, static arrays.

Coroutines over zarr's async API, awaited by :class:`~snapsink.stores.zarr.ZarrStore`
on its writer loop. Split from ``zarr.py`` so that the store keeps its life cycle
(modes, the order of a commit, metadata) and this module what one group holds;
the I/O-free layout they follow is :mod:`._zarrplan`'s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.api.asynchronous as za
from zarr.abc.store import Store as ZarrStoreLike
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import get_data_type_from_native_dtype
from zarr.errors import (
    ContainsArrayError,
    ContainsGroupError,
    NodeNotFoundError,
    NodeTypeValidationError,
)

from .._errors import ConfigError, DTypeError, FormatError, StoreExistsError
from .._schema import Schema
from ._common import check_stored_static
from ._rows import check_row_array
from ._zarrclaim import NODE_KEYS, remove_tree_contents
from ._zarrcolumns import Column, in_place
from ._zarrobject import create_group_if_absent
from ._zarrplan import STATIC_GROUP, ArrayPlan, RowBuffer, is_snapsink_attrs, plan_arrays

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

__all__ = [
    "ARRAY_CONFIG",
    "check_adoptable",
    "check_parents",
    "check_replaceable",
    "check_zarr_dtype",
    "check_zarr_dtypes",
    "create_columns",
    "create_group",
    "delete_group",
    "last_row",
    "load_columns",
    "node_exists",
    "open_group",
    "write_static",
]

#: Every chunk is written, even one equal to the fill value: a snapsink chunk is
#: data, and skipping it would turn a rewrite of a chunk into a deletion.
ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def _key(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


# -- what Zarr can hold ----------------------------------------------------------
def check_zarr_dtypes(schema: Schema, where: str = "ZarrStore") -> None:
    """Refuse a schema with a dtype that Zarr v3 cannot hold (float128, complex256).

    Raises
    ------
    DTypeError
        Naming the field, its dtype and what Zarr holds instead.
    """
    for name, fld in schema.items():
        check_zarr_dtype(fld.dtype, f"{where}: field {name!r}")


def check_zarr_dtype(dtype: np.dtype[Any], what: str) -> None:
    """Refuse one dtype that Zarr v3 cannot hold; ``what`` names its owner."""
    try:
        get_data_type_from_native_dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise DTypeError(
            f"{what}: dtype {dtype} cannot be stored in Zarr v3 (it holds bool, "
            "int8-int64, uint8-uint64, float16/32/64 and complex64/128); cast the "
            "field, e.g. to float64 or complex128, or use NpyDirectory"
        ) from exc


# -- the group node ----------------------------------------------------------------
async def node_exists(store: ZarrStoreLike, path: str) -> bool:
    """Whether a zarr node (v3, or v2's for recognition) is at ``path``."""
    for name in NODE_KEYS:
        if await store.exists(_key(path, name)):
            return True
    return False


async def _node_meta(store: ZarrStoreLike, path: str) -> dict[str, Any] | None:
    """The ``zarr.json`` of the node at ``path``, parsed; None when there is
    none, or it is not a JSON object (not for these checks to judge: zarr's
    open says what is wrong)."""
    raw = await store.get(_key(path, "zarr.json"), prototype=default_buffer_prototype())
    if raw is None:
        return None
    try:
        meta = json.loads(raw.to_bytes())
    except (ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


async def check_parents(store: ZarrStoreLike, path: str, who: str) -> None:
    """Refuse a group below an array (``group="x/sub"`` where ``x`` is an array):
    zarr nests nodes only in groups. Checked before anything is created.

    Raises
    ------
    ConfigError
        Naming the group and the array in the way.
    """
    parts = path.split("/") if path else []
    for k in range(len(parts)):
        parent = "/".join(parts[:k])
        meta = await _node_meta(store, parent)
        if meta is not None and meta.get("node_type") == "array":
            raise ConfigError(
                f"group: {who}: expected a group path whose parents are groups or absent; "
                f"got {path!r}, but {parent or '/'!r} is a zarr array (only groups hold "
                "nodes): choose a group outside it"
            )


async def check_replaceable(store: ZarrStoreLike, path: str, who: str) -> None:
    """``mode="w"`` replaces a snapsink run, or a plain group holding runs
    (with them): refuse, before anything is deleted, a node at ``path`` that
    is a zarr array (a field of a run, ``steps``), a group inside a run (its
    ``static``), or a zarr v2 node. A node whose metadata cannot be read is
    left to the replacement (a damaged run is what ``"w"`` starts afresh).

    Raises
    ------
    StoreExistsError
        Naming the group and what is there; nothing was deleted.
    """
    where = path or "/"
    for name in NODE_KEYS:
        if name == "zarr.json":
            continue
        if await store.exists(_key(path, name)):
            raise StoreExistsError(
                f"{who}: mode='w': group {where!r} is a zarr v2 node ({name}), not a "
                "snapsink run; nothing was deleted: choose another group, or remove it "
                "yourself"
            )
    meta = await _node_meta(store, path)
    if meta is None:
        return
    if meta.get("node_type") == "array":
        raise StoreExistsError(
            f"{who}: mode='w': group {where!r} is a zarr array (a field of a run, or a "
            "user's array), not a snapsink run; nothing was deleted: choose another group"
        )
    attrs = meta.get("attributes")
    if not path or is_snapsink_attrs(attrs if isinstance(attrs, dict) else {}):
        return
    parent = path.rpartition("/")[0]
    above = await _node_meta(store, parent)
    held = above.get("attributes") if above is not None else None
    if isinstance(held, dict) and is_snapsink_attrs(held):
        raise StoreExistsError(
            f"{who}: mode='w': group {where!r} is part of the run at "
            f"{parent or '/'!r} (its static arrays, say), not a run of its own; nothing "
            "was deleted: choose another group"
        )


async def delete_group(store: ZarrStoreLike, root: Path | None, path: str) -> None:
    """Delete the group at ``path`` (``mode="w"``)."""
    if root is not None:
        # The claim (_zarrclaim.claim_group_dir) already emptied a local group
        # for mode="w", after checking the whole tree and the nested groups'
        # locks; this is what is left: zarr's own entries, in a thread
        # (LocalStore.delete_dir would run rmtree on the event loop).
        target = root / path if path else root
        await asyncio.to_thread(remove_tree_contents, target)
    else:
        await store.delete_dir(path)
        for name in NODE_KEYS:
            await store.delete(_key(path, name))


async def create_group(
    store: ZarrStoreLike, path: str, attributes: Mapping[str, Any], who: str
) -> Any:
    """Create the group at ``path`` with ``attributes``; refuse one that appears
    meanwhile (a conditional PUT on S3, zarr's ``mode="w-"`` elsewhere).

    Raises
    ------
    StoreExistsError
        Another writer created a node there first.
    """
    if await create_group_if_absent(store, path, attributes, who):
        group = await za.open_group(store, path=path, mode="r+", zarr_format=3)
        parts = path.split("/") if path else []
        for k in range(len(parts)):  # the implicit parents, as zarr makes them
            parent = "/".join(parts[:k])
            if not await store.exists(_key(parent, "zarr.json")):
                await za.open_group(store, path=parent, mode="a", zarr_format=3)
        return group
    try:
        return await za.open_group(
            store, path=path, mode="w-", zarr_format=3, attributes=dict(attributes)
        )
    except (ContainsGroupError, ContainsArrayError, FileExistsError) as exc:
        raise StoreExistsError(
            f"{who}: a zarr node appeared at group {path or '/'!r} "
            "while this store was opening it (another writer?)"
        ) from exc


async def open_group(store: ZarrStoreLike, path: str, who: str) -> Any:
    """The existing group at ``path``, for writing (``mode="a"``).

    Raises
    ------
    FormatError
        The node there is not a zarr v3 group.
    """
    try:
        return await za.open_group(store, path=path, mode="r+", zarr_format=3)
    except (ContainsArrayError, NodeTypeValidationError, NodeNotFoundError) as exc:
        raise FormatError(f"{who}: the node at the group's path is not a zarr v3 group") from exc


async def check_adoptable(group: Any, path: str, who: str) -> None:
    """Adopt a plain group without snapsink metadata (e.g. the implicit parent of
    other groups), but never one holding arrays or a 'static' member of its own.

    Raises
    ------
    FormatError
        The group holds arrays that are not a snapsink store.
    """
    async for name, node in group.members():
        if isinstance(node, zarr.AsyncArray) or name == STATIC_GROUP:
            raise FormatError(
                f"{who}: group {path or '/'!r} holds zarr arrays that are "
                "not a snapsink store; pick another group or use mode='w'"
            )


# -- the arrays ---------------------------------------------------------------------
async def create_columns(
    group: Any,
    schema: Schema,
    *,
    times: bool,
    chunk_frames: int | None,
    shard_frames: int | None,
    compressors: Any,
    root: Path | None,
    leftovers: bool = False,
) -> dict[str, Column]:
    """Create (replacing) the empty arrays of ``schema`` in ``group``: one column each.

    ``leftovers``: the group names no schema yet but may hold arrays of a run
    that died before its first commit; those of none of the new arrays' names
    and of length zero (they show no row) are removed first, so that the
    group's arrays agree on the ``frame`` dimension for xarray.
    """
    columns: dict[str, Column] = {}
    plans = plan_arrays(schema, times=times, chunk_frames=chunk_frames, shard_frames=shard_frames)
    if leftovers:
        names = {plan.name for plan in plans}
        async for name, node in group.members():
            if isinstance(node, zarr.AsyncArray) and name not in names and node.shape[:1] == (0,):
                await group.delitem(name)
    for plan in plans:
        arr = await group.create_array(
            plan.name,
            shape=(0, *plan.row_shape),
            dtype=plan.dtype,
            chunks=plan.chunks,
            shards=plan.shards,
            compressors=compressors,
            dimension_names=plan.dims,
            overwrite=True,
            config=ARRAY_CONFIG,
        )
        buf = RowBuffer(plan.dtype, plan.row_shape, plan.block)
        columns[plan.name] = Column(plan, arr, buf, root, in_place=in_place(schema, plan.name))
    return columns


async def load_columns(
    group: Any, schema: Schema, *, times: bool, count: int, root: Path | None, who: str
) -> dict[str, Column]:
    """The columns of the arrays stored in ``group`` for ``count`` committed
    frames of ``schema``, each checked against its plan, with its trailing
    partial block read back into its buffer (to resume).

    Raises
    ------
    FormatError
        An array is missing, not an array, of another dtype or row shape, or
        shorter than the committed rows.
    """
    columns: dict[str, Column] = {}
    lengths: dict[str, int] = {}  # a ragged field's rows, from its last offset
    for plan in plan_arrays(schema, times=times):  # names, dtypes, shapes, dims
        arr = await _stored_array(group, plan, who)
        offsets = plan.name.endswith(".offsets")
        # known before any read: an offsets array comes before its field's rows
        length = lengths.get(plan.name, count + 1 if offsets else count)
        check_row_array(who, "array", plan, arr.dtype, arr.shape, length)
        if offsets:
            last = np.asarray(await arr.getitem(slice(count, count + 1)))
            lengths[plan.name[: -len(".offsets")]] = int(last[0])
        columns[plan.name] = await _resumed_column(plan, arr, schema, length, root)
    return columns


async def _stored_array(group: Any, plan: ArrayPlan, who: str) -> Any:
    """Array ``plan.name`` of ``group``, configured for writing."""
    try:
        arr = await group.getitem(plan.name)
    except KeyError as exc:
        raise FormatError(f"{who}: array {plan.name!r} is missing") from exc
    if not isinstance(arr, zarr.AsyncArray):
        raise FormatError(f"{who}: {plan.name!r} is not an array")
    return arr.with_config(ARRAY_CONFIG)


async def _resumed_column(
    plan: ArrayPlan, arr: Any, schema: Schema, length: int, root: Path | None
) -> Column:
    """The column of a stored array holding ``length`` rows: with the array's own
    chunking, and its trailing partial block buffered again."""
    shard = arr.shards[0] if arr.shards else None
    actual = ArrayPlan(plan.name, plan.dtype, plan.row_shape, arr.chunks[0], shard, plan.dims)
    empty = RowBuffer(plan.dtype, plan.row_shape, actual.block)
    col = Column(actual, arr, empty, root, in_place=in_place(schema, plan.name), length=length)
    if col.direct is None:
        start = length - length % actual.block
        tail = None
        if length > start:
            tail = np.asarray(await arr.getitem(slice(start, length)))
        col.buf = RowBuffer(plan.dtype, plan.row_shape, actual.block, length, tail)
    return col


async def last_row(col: Column, count: int) -> Any:
    """The last committed row of a frame-indexed column (``count`` > 0)."""
    row = col.buf.last()
    if row is None:  # the committed frames fill whole blocks: nothing is buffered
        row = np.asarray(await col.array.getitem(slice(count - 1, count)))[0]
    return row


async def write_static(group: Any, static: Mapping[str, Any], compressors: Any) -> None:
    """Write the static arrays into the ``static`` subgroup, each once: one
    already there (``mode="a"``) must equal the one given, and is kept.

    Raises
    ------
    ConfigError
        A stored static array differs from the one given; nothing is written.
    """
    if not static:
        return
    sg = await group.require_group(STATIC_GROUP)
    existing = {name async for name in sg.array_keys()}
    for name in existing & static.keys():  # every check before the first write
        stored = await sg.getitem(name)
        check_stored_static(name, np.asarray(await stored.getitem(...)), static[name])
    for name, value in static.items():
        if name in existing:
            continue  # written once: mode="a" keeps what is there
        arr = await sg.create_array(
            name,
            shape=value.shape,
            dtype=value.dtype,
            chunks=tuple(max(1, n) for n in value.shape),
            compressors=compressors,
            dimension_names=tuple(f"static_{name}_dim_{k}" for k in range(value.ndim)),
            config=ARRAY_CONFIG,
        )
        await arr.setitem(..., value)  # through DurableLocalStore when local
