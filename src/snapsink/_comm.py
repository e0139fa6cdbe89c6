"""The collectives a many-rank store needs, over MPI or ``torch.distributed``.

A :class:`~snapsink.ZarrStore` given ``comm=`` coordinates its ranks with three
operations: ``allreduce_max`` (a few integers, the element-wise maximum over
ranks: each commit's agreement on the global frame count, a fixed-size message
whatever the number of ranks), ``allgather`` (every rank's report, to every
rank: at open, and the messages of a failed commit) and ``free``. They run on
a *duplicate* of the user's communicator (MPI's ``Comm.Dup``; a gloo group of
the store's own over the same processes for ``torch.distributed``), so the
store's collectives, which run in the sink's writer thread, never match the
simulation's own messages. Nothing here opens a socket of its own: the
transport is the user's MPI or torch's gloo.

Freeing the duplicate. The store frees it when it closes (on every path) and
when its open fails; a store never opened (its sink refused it) frees it when
it is garbage collected. So a free may happen on one rank and not yet (or
never) on another. That is safe: ``MPI_Comm_free`` only marks the
communicator for deallocation once its pending operations complete, and MPI
implements it locally (MPICH, Open MPI); dropping a gloo group closes this
process's connections, and a rank still waiting in one of its collectives
fails at once ("connection closed by peer") instead of waiting.
"""

from __future__ import annotations

import builtins
import datetime
import pickle
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import numpy as np

from . import _errors
from ._errors import ConfigError, StoreStateError

__all__ = [
    "COMMIT",
    "PREPARE",
    "PUBLISH",
    "SHOW",
    "Communicator",
    "Misaligned",
    "agree",
    "as_communicator",
    "share",
    "together",
]


class Communicator:
    """A rank's view of a group of processes: ``rank``, ``size``, collectives.

    The base class holds the interface; :class:`_MPIComm` and
    :class:`_TorchComm` implement it. Every method is collective: each rank
    calls it, in the same order. Blocking: call it from a worker thread.
    """

    rank: int
    size: int

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        raise NotImplementedError

    def allreduce_max(self, values: list[int]) -> list[int]:
        """The element-wise maximum of every rank's ``values`` (int64, the same
        length on every rank), on every rank: an allreduce, whose message stays
        the same size at any number of ranks (an allgather's grows with them)."""
        raise NotImplementedError

    def free(self) -> None:
        """Release the duplicate (idempotent; see the module docstring)."""


def _free_mpi(comm: Any) -> None:
    from mpi4py import MPI

    if not MPI.Is_finalized():  # (at exit, after mpi4py's own MPI_Finalize)
        comm.Free()


class _MPIComm(Communicator):
    def __init__(self, comm: Any):
        from mpi4py import MPI

        if comm == MPI.COMM_NULL:
            raise ConfigError(
                "comm: got MPI.COMM_NULL: this process is not a member of the "
                "communicator (a rank that Split left out, with color MPI.UNDEFINED); "
                "build the store only on the ranks of the communicator"
            )
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise ConfigError(
                "comm: MPI was initialized without MPI_THREAD_MULTIPLE (got thread level "
                f"{MPI.Query_thread()}, expected {MPI.THREAD_MULTIPLE}); the store's "
                "collectives run in the sink's writer thread: initialize MPI with "
                "mpi4py's default (mpi4py.rc.thread_level = 'multiple')"
            )
        self._comm = comm.Dup()
        # a store that is never opened (or never closed) frees it when collected
        self._free = weakref.finalize(self, _free_mpi, self._comm)
        self.rank = int(self._comm.Get_rank())
        self.size = int(self._comm.Get_size())

    def allgather(self, obj: Any) -> list[Any]:
        return list(self._comm.allgather(obj))

    def allreduce_max(self, values: list[int]) -> list[int]:
        from mpi4py import MPI

        send = np.asarray(values, np.int64)
        recv = np.empty_like(send)
        self._comm.Allreduce(send, recv, op=MPI.MAX)
        return [int(v) for v in recv]

    def free(self) -> None:
        self._free()


#: gloo groups made so far for each tuple of processes (global ranks, in group
#: order): the next one's rendezvous prefix (see _TorchComm)
_torch_groups: dict[tuple[int, ...], int] = {}
_torch_groups_lock = threading.Lock()


class _TorchComm(Communicator):
    """A gloo group of the store's own over the processes of the user's group.

    Not ``dist.new_group``: every process of the job must call it, in the same
    order, which a process outside a sub-group cannot do for a store it never
    builds; and with ``use_local_synchronization=True`` its name is a hash of
    the ranks and of how many groups this process holds, which two groups
    made in turn (one freed before the next) share: the second rendezvous
    read the first one's stale addresses (connection reset). This group's
    rendezvous keys are the processes' ranks and how many stores they made
    together before: only its members build it, in the order they build
    their stores (a collective, as MPI's Dup), and no name is ever reused.
    Freed by dropping it: it is nobody else's (torch's registry never held it).
    """

    def __init__(self, group: Any):
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        if not dist.is_initialized():
            raise ConfigError(
                "comm: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first"
            )
        if group is None:
            group = dist.group.WORLD
        ranks = tuple(int(r) for r in dist.get_process_group_ranks(group))
        with _torch_groups_lock:
            made = _torch_groups.get(ranks, 0)
            _torch_groups[ranks] = made + 1
        name = "_".join(map(str, ranks))
        store = c10d.PrefixStore(f"snapsink/{name}/{made}/", c10d._get_default_store())
        self.rank = ranks.index(dist.get_rank())
        self.size = len(ranks)
        self._group: Any = dist.ProcessGroupGloo(store, self.rank, self.size, _timeout(group))

    def allgather(self, obj: Any) -> list[Any]:
        import torch

        data = torch.from_numpy(np.frombuffer(bytearray(pickle.dumps(obj)), np.uint8))
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        self._group.allgather([sizes], [torch.tensor([len(data)])]).wait()
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: len(data)] = data
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        self._group.allgather([out], [padded]).wait()
        return [
            pickle.loads(o[: int(n)].numpy().tobytes()) for o, n in zip(out, sizes, strict=True)
        ]

    def allreduce_max(self, values: list[int]) -> list[int]:
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp(dist.ReduceOp.MAX)
        self._group.allreduce([t], opts).wait()
        return [int(v) for v in t.tolist()]

    def free(self) -> None:
        self._group = None  # closes its connections, stops its threads


def _timeout(group: Any) -> datetime.timedelta:
    """The user's group's timeout (``init_process_group(timeout=)``,
    ``new_group(timeout=)``), so the store's collectives give up when the
    user's own would; torch names no public accessor, hence the fallback to
    torch's default."""
    import torch
    import torch.distributed as dist

    try:
        backend = group._get_backend(torch.device(group._device_types[0]))
        timeout = backend.options._timeout
    except (AttributeError, IndexError, RuntimeError):
        return dist.default_pg_timeout
    return timeout if isinstance(timeout, datetime.timedelta) else dist.default_pg_timeout


# A module another thread is still importing may lack the names looked up here
# yet: no communicator comes from it then (``()`` is no class at all).
def _is_mpi_comm(comm: object) -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and isinstance(comm, getattr(mpi, "Comm", ()))


def _is_torch_group(comm: object) -> bool:
    dist = sys.modules.get("torch.distributed")
    group = getattr(dist, "group", None)
    process_group = getattr(dist, "ProcessGroup", None)
    if group is None or process_group is None:
        return False
    return comm is group.WORLD or isinstance(comm, process_group)


def _is_torch_non_member(comm: object) -> bool:
    """``GroupMember.NON_GROUP_MEMBER``: what ``new_group`` gives a process
    outside the group (an int, -100)."""
    member = getattr(sys.modules.get("torch.distributed"), "GroupMember", None)
    outside = getattr(member, "NON_GROUP_MEMBER", None)
    return outside is not None and type(comm) is type(outside) and comm == outside


def as_communicator(comm: object) -> Communicator:
    """The store's duplicate of ``comm``: an mpi4py communicator (``MPI.COMM_WORLD``)
    or a ``torch.distributed`` process group (``torch.distributed.group.WORLD``,
    or a group from ``new_group``).

    Collective: every rank of ``comm`` must call it (it duplicates ``comm``).

    Raises
    ------
    ConfigError
        Anything else; ``MPI.COMM_NULL`` or torch's ``NON_GROUP_MEMBER`` (this
        process is not a member); MPI without thread level MULTIPLE;
        torch.distributed not initialized.
    """
    if _is_mpi_comm(comm):
        return _MPIComm(comm)
    if _is_torch_group(comm):
        return _TorchComm(comm)
    if _is_torch_non_member(comm):
        raise ConfigError(
            "comm: got torch.distributed's GroupMember.NON_GROUP_MEMBER: this process "
            "is not a member of the group (new_group gives it to the processes outside "
            "ranks=); build the store only on the group's processes"
        )
    raise ConfigError(
        "comm: expected an mpi4py communicator (e.g. MPI.COMM_WORLD) or a "
        f"torch.distributed process group (e.g. dist.group.WORLD), got {type(comm).__name__}"
    )


# -- agreeing on a step of every rank ------------------------------------------------
def _remote_error(kind: str, msg: str) -> Exception:
    """Another rank's error, by the name of its class: the same snapsink error or
    built-in exception when it is one (and takes a message alone), else a
    StoreStateError. Errors travel as names and messages, never pickled objects:
    a class that cannot be pickled must not break the collective."""
    cls = getattr(_errors, kind, None) or getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except Exception:
            pass
    return StoreStateError(f"{kind}: {msg}")


#: the last step of a rank that holds no frame, in a commit's allreduce
_NO_STEP = -(1 << 62)


class Misaligned(StoreStateError):
    """The ranks reached different exchanges of the store (one prepares the
    store for its first frame while another commits at its close: its first
    write was refused): raised on every rank alike, never a hang."""


async def together(
    comm: Communicator, step: Callable[..., Awaitable[Any]] | None, *args: Any
) -> list[Any]:
    """Run ``step`` here, then share every rank's result or failure: the same
    error on every rank (the failing rank's own), or every rank's result (an
    allgather: for a store's open, once)."""
    result: Any = None
    local: Exception | None = None
    if step is not None:
        try:
            result = await step(*args)
        except Exception as exc:
            local = exc
    return await share(comm, local, result)


async def share(comm: Communicator, local: Exception | None, result: Any) -> list[Any]:
    """Every rank's ``result``; or, when a rank failed, its error raised on
    every rank (``local``, this rank's own failure, here)."""
    error = None if local is None else (type(local).__name__, str(local))
    reports = await anyio.to_thread.run_sync(comm.allgather, (error, result))
    failed = [(r, e) for r, (e, _) in enumerate(reports) if e is not None]
    if local is not None:
        raise local
    if failed:
        rank, (cls, msg) = failed[0]
        raise _remote_error(cls, f"rank {rank} failed: {msg}")
    return [res for _, res in reports]


async def agree(
    comm: Communicator,
    step: Callable[..., Awaitable[tuple[int, int | None] | None]],
    *args: Any,
    phase: str,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """:func:`together` for a store's exchanges after its open, on one
    fixed-size allreduce: each rank's ``phase`` (which exchange it is at), its
    failure flag and ``step``'s (frames, last step), as ``(min frames, min last
    step), (max frames, max last step)`` over ranks. A commit then costs three
    small allreduces whatever the number of ranks (an allgather of every
    rank's report grows with them: docs/guides/scaling.md); only a failure
    gathers the ranks' messages, to raise the same error everywhere.

    Every exchange after the open is one of these allreduces, so that ranks at
    different exchanges (a rank whose first write was refused goes from its
    open straight to its close's commit, while the others prepare the store
    for their first frame) still meet in the same collective, learn it from
    the phases, and fail alike (:class:`Misaligned`) instead of waiting for
    each other in two different collectives.
    """
    code = _PHASES.index(phase) + 1
    result: tuple[int, int | None] | None = None
    local: Exception | None = None
    try:
        result = await step(*args)
    except Exception as exc:
        local = exc
    frames, last = result if result is not None else (0, None)
    last_v = _NO_STEP if last is None else last
    got = await anyio.to_thread.run_sync(
        comm.allreduce_max,
        [-code, code, int(local is not None), -frames, frames, -last_v, last_v],
    )
    if -got[0] != got[1]:  # ranks at different exchanges: every rank says which
        reports = await anyio.to_thread.run_sync(comm.allgather, phase)
        at = ", ".join(f"rank {r}: {p}" for r, p in enumerate(reports))
        raise Misaligned(
            f"the ranks reached different steps of the store ({at}); every rank must "
            "write the same steps, and call flush() and close() together: a rank whose "
            "first write was refused (a NaN time, a frame that does not match the "
            "schema) never prepared the store while the others did; write that step "
            "again on that rank, or fail every rank"
        ) from local
    if got[2]:  # a rank failed: every rank learns which, and why (raises)
        await share(comm, local, None)
    return (-got[3], -got[5]), (got[4], got[6])


#: the exchanges of :func:`agree`, by name (each rank sends the index of its own)
_PHASES = (
    "prepare (the first frame)",
    "commit (flush, close or commit_every)",
    "commit: show the arrays",
    "commit: publish the count",
)
PREPARE, COMMIT, SHOW, PUBLISH = _PHASES
