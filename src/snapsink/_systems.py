"""Per-system capture in a batch: store each system of a batched simulation once.

A batched simulation (a GPU MD toolkit relaxing B structures at once) keeps
per-atom arrays of all systems concatenated (``positions``: ``(N, 3)`` with
``N = sizes.sum()``) and per-system arrays (``energy``: ``(B,)``). A route with
``select=converged(mask, sizes=...)`` stores, at each step, only the systems
whose mask turned true since they were last stored, each system once:

- the route's fields are cut to those systems' rows: a field whose first
  dimension is ``N`` gives the chosen systems' atoms, one whose first dimension
  is ``B`` their entries; other fields (a batch-wide temperature, say) are
  stored whole. Where ``N == B`` (a batch with an empty system, say) the first
  dimension cannot tell: the per-system fields are then named
  (``converged(per_system=[...])``, the others being per atom), or a field of
  that dimension is refused, never cut by the wrong rows (one-atom systems
  excepted: both cuts take the same rows). A field's role is told once, from
  the state the route's schema is made from, and kept: at a later step, a
  per-atom field must have ``N`` rows and a per-system one ``B``, or the
  frame is refused, and a whole field is never cut;
- two fields are added: ``system`` (the systems' indices in the batch) and
  ``natoms`` (their atom counts), so a reader can split the rows again
  (:func:`by_system`).

A frame is one step: all systems that converged at that step, in batch order.
On a device the cut is a gather on the device, so only the chosen systems'
bytes cross PCIe; the mask and the sizes (``B`` values each) are read on the
host at each due step (a small device-to-host copy that waits for the device:
combine with a step schedule, ``every(10)``, to test less often).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import is_device_array
from ._dtypes import exportable
from ._errors import ConfigError, SchemaError
from ._schema import Field, Schema

__all__ = ["SYSTEM", "SYSTEM_ROWS", "Systems", "SystemsState", "by_system", "converged"]

#: the added field of a selected frame: the systems' indices in the batch
SYSTEM = "system"
#: the added field of a selected frame: each system's atom (row) count
SYSTEM_ROWS = "natoms"


@dataclass(frozen=True, slots=True)
class Systems:
    """Which systems of a batch a route stores at a step; made by :func:`converged`.

    Parameters
    ----------
    mask
        ``mask(state) -> (B,)`` booleans: the systems to store now.
    sizes
        The atom (row) count of each system: a field name, a function of the
        state, or a fixed tuple.
    once
        Store each system at most once in a recording.
    per_system
        The names of the per-system fields (one row per system), or None:
        told by their first dimension.
    """

    mask: Callable[[Any], Any]
    sizes: str | Callable[[Any], Any] | tuple[int, ...]
    once: bool = True
    per_system: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        name = getattr(self.mask, "__qualname__", None) or repr(self.mask)
        sizes = self.sizes if isinstance(self.sizes, str) else "..."
        per = "" if self.per_system is None else f", per_system={list(self.per_system)!r}"
        return f"converged({name}, sizes={sizes!r}, once={self.once}{per})"


def converged(
    mask: Callable[[Any], Any],
    *,
    sizes: str | Callable[[Any], Any] | Sequence[int] | np.ndarray[Any, Any],
    once: bool = True,
    per_system: Sequence[str] | None = None,
) -> Systems:
    """Store each system of a batch at the first step where ``mask`` holds for it.

    Pass it as a route's ``select=``. The route's schedule still decides which
    steps are looked at (``every(10)`` tests every tenth step).

    Parameters
    ----------
    mask
        ``mask(state) -> (B,)`` booleans (NumPy, CuPy, PyTorch or JAX; on the
        device is fine): True for the systems to store now, e.g.
        ``lambda s: s["fmax"] < 0.05``.
    sizes
        The atom (row) count of each system, ``(B,)`` ints: the name of a
        field of the state, a function of the state, or a fixed sequence. The
        per-atom arrays hold the systems' rows one after the other, in batch order.
    once
        True (the default): a system is stored once, at the first step its mask
        is true, never again in this recording. False: at every due step where
        its mask is true.
    per_system
        The names of the route's per-system fields (first dimension ``B``);
        the other fields of first dimension ``N`` are then per atom, the rest
        whole. ``None`` (the default): each field is told by its first
        dimension, ``N`` per atom, ``B`` per system, anything else whole;
        where ``N == B`` (an empty system in the batch, or as many atoms as
        systems) that cannot tell, and a field of that first dimension is
        refused (:class:`SchemaError`, at the step) unless every system has
        one atom (both cuts then take the same rows). Each field keeps the
        role it has in the first state (the one the route's schema is made
        from): a later step whose rows do not fit it is refused.

    Returns
    -------
    Systems
        For ``Route(..., select=...)``.

    Raises
    ------
    ConfigError
        ``mask`` is not callable, ``sizes`` is none of the above, or
        ``per_system`` is not a list of names.

    Examples
    --------
    >>> relaxed = snapsink.Route(
    ...     snapsink.NpyDirectory("relaxed"), fields=["positions", "energy"],
    ...     select=snapsink.converged(lambda s: s["fmax"] < 0.05, sizes="natoms"),
    ... )  # doctest: +SKIP
    """
    if not callable(mask):
        raise ConfigError(
            f"converged(mask): expected a function of the state returning (B,) booleans, "
            f"got {type(mask).__name__} {mask!r}"
        )
    if isinstance(once, np.bool_):
        once = bool(once)
    if not isinstance(once, bool):
        raise ConfigError(f"converged(once): expected a bool, got {type(once).__name__}")
    if per_system is not None and (
        isinstance(per_system, str | bytes)
        or not isinstance(per_system, Sequence | set | frozenset)
        or not all(isinstance(n, str) for n in per_system)
    ):
        raise ConfigError(
            "converged(per_system): expected None or a list of field names, got "
            f"{type(per_system).__name__} {per_system!r}"
        )
    fixed: str | Callable[[Any], Any] | tuple[int, ...]
    if isinstance(sizes, str) or callable(sizes):
        fixed = sizes
    else:
        try:
            arr = np.asarray(sizes)
        except Exception:
            arr = np.asarray(None)
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr < 0).any():
            raise ConfigError(
                "converged(sizes): expected the name of a field, a function of the state, "
                f"or a sequence of non-negative ints (one per system), got {sizes!r}"
            )
        fixed = tuple(int(n) for n in arr)
    return Systems(mask, fixed, once, None if per_system is None else tuple(per_system))


def _host(value: Any, what: str) -> np.ndarray[Any, Any]:
    """``value`` as a host array (a device array is copied, waiting for the device)."""
    if is_device_array(value):
        from ._staging.device import to_host_blocking

        return to_host_blocking(value)
    try:
        return np.asarray(exportable(value))
    except Exception as exc:
        raise SchemaError(f"{what}: expected an array, got {type(value).__name__}") from exc


def gather_rows(value: Any, index: np.ndarray[Any, Any]) -> Any:
    """``value[index]`` along the first axis, where ``value`` lives.

    On a device the gather runs there, ordered on the framework's current
    stream, so the sink's capture (which waits for that stream) sees it.
    One contiguous range is a slice (no gather at all).
    """
    n = len(index)
    if n and int(index[-1]) - int(index[0]) == n - 1 and (n == 1 or (np.diff(index) == 1).all()):
        return value[int(index[0]) : int(index[0]) + n]
    if isinstance(value, np.ndarray):
        return value[index]
    if not is_device_array(value):
        return np.asarray(exportable(value))[index]
    # a module another thread is still importing may lack its array type yet: no
    # value is an instance of it then
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)
    if torch is not None and tensor is not None and isinstance(value, tensor):
        return value.index_select(0, torch.as_tensor(index, device=value.device))
    if getattr(type(value), "__snapsink_emulated_device__", False):
        from ._staging.device import backend_named

        be = backend_named("emulation")
        return be.take(value, index, be.resolve_stream(None, value))
    cupy = sys.modules.get("cupy")
    cupy_array = getattr(cupy, "ndarray", None)
    if cupy is not None and cupy_array is not None and isinstance(value, cupy_array):
        return value.take(cupy.asarray(index), axis=0)
    return value[index]  # JAX arrays and other array libraries index with NumPy


def _shape(value: Any) -> tuple[int, ...]:
    shape = getattr(value, "shape", None)
    return tuple(np.shape(value) if shape is None else shape)


def _leading(value: Any) -> int | None:
    shape = _shape(value)
    return int(shape[0]) if len(shape) else None


class SystemsState:
    """One route's per-system selection over a recording: which systems are stored.

    Parameters
    ----------
    systems
        The route's :class:`Systems`.
    route
        The route's name, for error messages.
    """

    def __init__(self, systems: Systems, route: str):
        self.systems = systems
        self.route = route
        #: systems stored so far (``once=True``); sized at the first look
        self.stored: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        #: each field's role, ``{name: "atoms" | "systems" | "whole" | "either"}``:
        #: fixed by :meth:`schema` (else by the first selected frame), then kept
        self.roles: dict[str, str] | None = None

    def _sizes(self, state: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
        sizes = self.systems.sizes
        what = f"route {self.route!r} converged(sizes)"
        if isinstance(sizes, tuple):
            return np.asarray(sizes, np.int64)
        if isinstance(sizes, str):
            if not isinstance(state, Mapping) or sizes not in state:
                raise SchemaError(f"{what}: expected a field {sizes!r} in the state")
            value = state[sizes]
        else:
            value = sizes(state)
        arr = _host(value, what)
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr < 0).any():
            raise SchemaError(
                f"{what}: expected (B,) non-negative ints, got {arr.dtype} of shape {arr.shape}"
            )
        return arr.astype(np.int64, copy=False)

    def _mask(self, state: Any, b: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        what = f"route {self.route!r} converged(mask)"
        arr = _host(self.systems.mask(state), what)
        if arr.shape != (b,) or arr.dtype != np.bool_:
            raise SchemaError(
                f"{what}: expected ({b},) booleans (one per system), got {arr.dtype} "
                f"of shape {arr.shape}"
            )
        return arr

    def _roles(self, fields: Mapping[str, Any], sizes: np.ndarray[Any, Any]) -> dict[str, str]:
        """``{name: "atoms" | "systems" | "whole" | "either"}``: each field's role,
        told from one state.

        A field named in ``per_system`` holds systems; any other, by its first
        dimension: ``N`` atoms, ``B`` systems, else whole. Where ``N == B``
        and ``per_system`` is None, a field of that dimension is refused,
        unless every system has one atom: it is then ``"either"`` (the two
        cuts take the same rows) until a step tells.
        """
        route, per_system = self.route, self.systems.per_system
        b, n = len(sizes), int(sizes.sum())
        missing = [name for name in per_system or () if name not in fields]
        if missing:
            raise SchemaError(
                f"route {route!r} converged(per_system=...): expected field(s) "
                f"{', '.join(map(repr, missing))} among the route's fields, which are "
                f"{', '.join(map(repr, fields)) or 'none'}"
            )
        one_atom = n == b and bool((sizes == 1).all())
        out = {}
        for name, value in fields.items():
            lead = _leading(value)
            if per_system is not None and name in per_system:
                if lead != b:
                    raise SchemaError(
                        f"route {route!r}: field {name!r} (converged(per_system=...)): "
                        f"expected a first dimension of {b} (one row per system), got "
                        f"shape {_shape(value)}"
                    )
                out[name] = "systems"
            elif lead == n and lead == b and per_system is None:
                if not one_atom:
                    raise self._ambiguous(name, sizes)
                out[name] = "either"
            elif lead == n:
                out[name] = "atoms"
            elif lead == b and per_system is None:
                out[name] = "systems"
            else:  # named per_system fields are the only per-system ones
                out[name] = "whole"
        return out

    def _ambiguous(self, name: str, sizes: np.ndarray[Any, Any]) -> SchemaError:
        n = int(sizes.sum())
        return SchemaError(
            f"route {self.route!r}: field {name!r}: its first dimension, {n}, is both "
            f"the batch's atom count and its number of systems (sizes "
            f"{sizes.tolist()}), so its rows may be atoms or systems; name the "
            "per-system fields, converged(..., per_system=[...]), the others "
            "being per atom (per_system=[] for none)"
        )

    def _kinds(self, fields: Mapping[str, Any], sizes: np.ndarray[Any, Any]) -> dict[str, str]:
        """``{name: "atoms" | "systems" | "whole"}``: how each field is cut at this step.

        A field keeps the role it got when the schema was made (or, with the
        route's own ``schema=``, at the first selected frame): its first
        dimension at a later step may match the batch's atom count or number
        of systems by chance (a batch-wide ``(3, 3)`` cell), or neither
        (sizes that no longer count the rows), and the frame would be cut by
        the wrong rows. An ``"either"`` field takes the role of the first
        step that tells.
        """
        if self.roles is None:
            self.roles = self._roles(fields, sizes)
        roles = self.roles
        b, n = len(sizes), int(sizes.sum())
        told: dict[str, str] = {}
        out = {}
        for name, value in fields.items():
            role = roles.get(name, "whole")  # a field the schema lacks: the sink refuses it
            lead = _leading(value)
            if role == "either":
                if n != b and lead in (n, b):
                    role = told[name] = "atoms" if lead == n else "systems"
                elif n == b and lead == n:
                    if not (sizes == 1).all():
                        raise self._ambiguous(name, sizes)
                    role = "atoms"  # one atom each: the same rows either way
            if (role, lead) not in (("atoms", n), ("systems", b)) and role != "whole":
                raise self._wrong_rows(name, value, role, sizes)
            out[name] = role
        roles.update(told)
        return out

    def _wrong_rows(
        self, name: str, value: Any, role: str, sizes: np.ndarray[Any, Any]
    ) -> SchemaError:
        b, n = len(sizes), int(sizes.sum())
        expected, fix = {
            "atoms": (
                f"per atom: expected {n} rows, the batch's atom count",
                "the sizes must count its rows (a batch-wide field whose first dimension "
                "was the atom count in the first state is taken per atom: give it another "
                "shape, value[None], or another route)",
            ),
            "systems": (
                f"per system: expected {b} rows, one per system",
                "the mask, the sizes and each per-system field have one entry per system",
            ),
            "either": (
                f"per atom or per system: expected {n} or {b} rows",
                "the sizes must count the rows of the per-atom fields",
            ),
        }[role]
        return SchemaError(
            f"route {self.route!r}: field {name!r} is {expected} (sizes {sizes.tolist()}: "
            f"N = {n} atoms, B = {b} systems), got shape {_shape(value)}; a field keeps "
            f"the role it got when the route's schema was made, and {fix}"
        )

    def schema(self, fields: Mapping[str, Any], state: Any) -> Schema:
        """The route's schema, from a whole state: per-atom and per-system
        fields become ragged, ``system`` and ``natoms`` are added."""
        for name in (SYSTEM, SYSTEM_ROWS):
            if name in fields:
                raise SchemaError(
                    f"route {self.route!r}: field {name!r} is added by converged(); "
                    "rename the state's field or leave it out of fields="
                )
        roles = self._roles(fields, self._sizes(state))
        whole = Schema.infer(fields)
        out: dict[str, Field] = {}
        for name, f in whole.items():
            if roles[name] != "whole":
                out[name] = Field(f.dtype, (None, *f.shape[1:]))
            else:
                out[name] = f
        out[SYSTEM] = Field("int64", (None,))
        out[SYSTEM_ROWS] = Field("int64", (None,))
        schema = Schema(out)
        self.roles = roles  # the last schema made is the one the route opens with
        return schema

    def select(self, state: Any, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        """The chosen systems' part of ``fields``, or None when no system is due.

        No system is taken as stored here: :meth:`stored_now` does that once
        the frame is captured. Each field is cut by the role it got when the
        schema was made (:attr:`roles`), whatever its first dimension now.

        Raises
        ------
        SchemaError
            A mask or sizes of the wrong shape or type, sizes that change
            their number of systems during the recording, a field that may
            be per atom or per system (see :func:`converged`), or one whose
            rows do not fit its role: a per-atom field of other than
            ``sum(sizes)`` rows, a per-system one of other than ``B``.
        """
        sizes = self._sizes(state)
        b = len(sizes)
        mask = self._mask(state, b)
        if self.systems.once:
            if self.stored is None:
                self.stored = np.zeros(b, np.bool_)
            elif len(self.stored) != b:
                raise SchemaError(
                    f"route {self.route!r} converged(): the batch had {len(self.stored)} "
                    f"systems, now {b}; start a new recording for a new batch"
                )
            mask = mask & ~self.stored
        chosen = np.flatnonzero(mask)
        if not len(chosen):
            return None
        kinds = self._kinds(fields, sizes)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        counts = sizes[chosen]
        # the chosen systems' atom rows, in batch order
        rows = np.repeat(starts[chosen] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        rows += np.arange(int(counts.sum()), dtype=np.int64)
        out: dict[str, Any] = {}
        for name, value in fields.items():
            kind = kinds[name]
            if kind == "atoms":
                out[name] = gather_rows(value, rows)
            elif kind == "systems":
                out[name] = gather_rows(value, chosen)
            else:
                out[name] = value
        out[SYSTEM] = chosen.astype(np.int64)
        out[SYSTEM_ROWS] = counts
        return out

    def stored_now(self, selected: Mapping[str, Any]) -> None:
        """The frame :meth:`select` gave was captured: with ``once``, its systems
        are not stored again."""
        if self.systems.once:
            assert self.stored is not None
            self.stored[np.asarray(selected[SYSTEM])] = True


def by_system(traj: Any, per_system: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """The systems a ``converged()`` route stored, by their index in the batch.

    Parameters
    ----------
    traj
        A :class:`~snapsink.Trajectory` of such a route (``snapsink.open(path)``
        or ``HostMemory.trajectory()``).
    per_system
        The names of the per-system fields, as given to ``converged()``.
        Without them, a ragged field is read as per system where its row
        counts match the frames' systems and not their atoms, and per atom
        the other way round; where both match in every frame (an empty
        system, as many atoms as systems, or one atom each, where the
        readings differ in shape: ``()`` or ``(1,)`` for a scalar), it is
        refused.

    Returns
    -------
    dict
        ``{system: {"step": int, "time": float or None, name: array, ...}}``;
        each field holds that system's rows (per-atom and per-system fields)
        or the frame's whole value (other fields). A system stored at several
        steps (``once=False``) keeps its last.

    Raises
    ------
    SchemaError
        The trajectory has no ``system`` and ``natoms`` fields, a name of
        ``per_system`` is no ragged field, a field may be read per atom or
        per system (give ``per_system``), or a frame's rows of a field do
        not match its systems (per system) or its ``natoms`` (per atom).
    """
    fields = traj.fields
    if SYSTEM not in fields or SYSTEM_ROWS not in fields:
        raise SchemaError(
            f"by_system: expected the fields {SYSTEM!r} and {SYSTEM_ROWS!r} that "
            f"converged() adds, got {', '.join(fields) or 'none'}"
        )
    steps = traj.steps
    times = traj.times
    frames = [traj.frame(i) for i in range(len(traj))]
    named = None if per_system is None else set(per_system)
    ragged = [n for n, f in fields.items() if f.ragged and n not in (SYSTEM, SYSTEM_ROWS)]
    unknown = sorted(named - set(ragged)) if named is not None else []
    if unknown:
        raise SchemaError(
            f"by_system(per_system=...): expected ragged fields of the trajectory, among "
            f"{', '.join(map(repr, ragged)) or 'none'}; got {', '.join(map(repr, unknown))}"
        )
    # a ragged field holds atoms (rows = atoms of the frame's systems) or
    # systems (rows = systems); where both counts fit every frame, the row
    # counts cannot tell: even with one atom each, where both cuts took the
    # same rows, a per-system value reads back as () and a per-atom one as (1, ...)
    systems_of = set()
    for name in ragged:
        if named is not None:
            as_systems = name in named
        else:
            as_systems = all(len(fr[name]) == len(fr[SYSTEM]) for fr in frames)
            as_atoms = all(len(fr[name]) == int(fr[SYSTEM_ROWS].sum()) for fr in frames)
            if as_systems and as_atoms and frames:
                raise SchemaError(
                    f"by_system: field {name!r}: its rows match both the systems and the "
                    "atoms of every frame, so it may hold either; name the per-system "
                    "fields, by_system(traj, per_system=[...]), the others being per atom "
                    "(per_system=[] for none)"
                )
        for i, fr in enumerate(frames):
            counts = fr[SYSTEM_ROWS]
            want = len(counts) if as_systems else int(counts.sum())
            if len(fr[name]) != want:
                why = (
                    "its rows follow neither the systems nor the atoms of every frame"
                    if named is None
                    else f"expected {want}, " + ("one per system" if as_systems else "its atoms")
                )
                raise SchemaError(
                    f"by_system: field {name!r}: {len(fr[name])} rows at step "
                    f"{int(steps[i])}, whose frame holds {len(counts)} system(s) of "
                    f"{counts.tolist()} atoms; {why}, so they cannot be split by system "
                    "(read the frames with traj.frame(i))"
                )
        if as_systems:
            systems_of.add(name)
    out: dict[int, dict[str, Any]] = {}
    for i, frame in enumerate(frames):
        counts = frame[SYSTEM_ROWS]
        atom_start = np.concatenate(([0], np.cumsum(counts)))
        for j, sid in enumerate(frame[SYSTEM].tolist()):
            rec: dict[str, Any] = {
                "step": int(steps[i]),
                "time": None if times is None else float(times[i]),
            }
            for name, value in frame.items():
                if name in (SYSTEM, SYSTEM_ROWS):
                    continue
                if name in systems_of:
                    rec[name] = value[j]
                elif fields[name].ragged:
                    rec[name] = value[atom_start[j] : atom_start[j + 1]]
                else:
                    rec[name] = value
            rec[SYSTEM_ROWS] = int(counts[j])
            out[int(sid)] = rec
    return out
