"""The collectives a many-rank store needs, over MPI or ``torch.distributed``.

A :class:`~snapsink.ZarrStore` given ``comm=`` coordinates its ranks with four
operations: ``allreduce_max`` (a few integers, the element-wise maximum over
ranks: each commit's agreement on the global frame count, a fixed-size message
whatever the number of ranks), ``allgather`` (every rank's report, to every
rank: at open, and the messages of a failed commit), ``bcast`` (rank 0's
result) and ``free``. They run on a *duplicate* of the user's
communicator (MPI's ``Comm.Dup``; a new gloo group over the same ranks for
``torch.distributed``), so the store's collectives, which run in the sink's
writer thread, never match the simulation's own messages. Nothing here opens a
socket: the transport is the user's MPI or torch's gloo.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._errors import ConfigError

__all__ = ["Communicator", "as_communicator"]


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

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (others pass anything)."""
        raise NotImplementedError

    def free(self) -> None:
        """Release the duplicate (at the store's close)."""


class _MPIComm(Communicator):
    def __init__(self, comm: Any):
        from mpi4py import MPI

        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise ConfigError(
                "comm: MPI was initialized without MPI_THREAD_MULTIPLE (got thread level "
                f"{MPI.Query_thread()}, expected {MPI.THREAD_MULTIPLE}); the store's "
                "collectives run in the sink's writer thread: initialize MPI with "
                "mpi4py's default (mpi4py.rc.thread_level = 'multiple')"
            )
        self._comm = comm.Dup()
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

    def bcast(self, obj: Any) -> Any:
        return self._comm.bcast(obj, root=0)

    def free(self) -> None:
        comm, self._comm = self._comm, None
        if comm is not None:
            comm.Free()


class _TorchComm(Communicator):
    def __init__(self, group: Any):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise ConfigError(
                "comm: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first"
            )
        group = None if group is dist.group.WORLD else group
        ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        self._dist = dist
        # a group of its own, on gloo (objects travel on the CPU whatever the
        # user's backend), so the store's messages never meet the user's
        self._group = dist.new_group(ranks=sorted(ranks), backend="gloo")
        self._root = int(dist.get_global_rank(self._group, 0))
        self.rank = int(dist.get_rank(self._group))
        self.size = int(dist.get_world_size(self._group))

    def allgather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self._group)
        return out

    def allreduce_max(self, values: list[int]) -> list[int]:
        import torch

        t = torch.tensor(values, dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._group)
        return [int(v) for v in t.tolist()]

    def bcast(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._root, group=self._group)
        return box[0]


def _is_mpi_comm(comm: object) -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and isinstance(comm, mpi.Comm)


def _is_torch_group(comm: object) -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    return comm is dist.group.WORLD or isinstance(comm, dist.ProcessGroup)


def as_communicator(comm: object) -> Communicator:
    """The store's duplicate of ``comm``: an mpi4py communicator (``MPI.COMM_WORLD``)
    or a ``torch.distributed`` process group (``torch.distributed.group.WORLD``).

    Collective: every rank of ``comm`` must call it (it duplicates ``comm``).

    Raises
    ------
    ConfigError
        Anything else; MPI without thread level MULTIPLE; torch.distributed
        not initialized.
    """
    if _is_mpi_comm(comm):
        return _MPIComm(comm)
    if _is_torch_group(comm):
        return _TorchComm(comm)
    raise ConfigError(
        "comm: expected an mpi4py communicator (e.g. MPI.COMM_WORLD) or a "
        f"torch.distributed process group (e.g. dist.group.WORLD), got {type(comm).__name__}"
    )
