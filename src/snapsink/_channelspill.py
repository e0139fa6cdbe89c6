"""The spill side of the channel: the spill queue's counters and the
producers' and the consumer's operations on it.

:class:`SpillQueue` is a base of :class:`~snapsink._channel.Channel`: the same
object, the same lock and state. It is kept apart because it is the one part
of the channel that does file I/O (a spill write runs outside the lock, a
spilled frame is read back by the consumer) and the one with an ordering
protocol of its own (spill writes take turns, so that the spill queue keeps the
order in which frames were accepted).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._channeltypes import Entry, Offer, SpillTicket
from ._errors import SpillError
from ._schema import Field, Schema, StepClock, is_device_array
from ._spill import Spill, SpillDir, SpillReader, record_nbytes
from ._wakers import Waker

__all__ = ["SpillQueue"]


class SpillQueue:
    """The spill queue of a :class:`~snapsink._channel.Channel` (see module docstring)."""

    if TYPE_CHECKING:  # the channel's state and methods this side uses
        lock: threading.RLock
        policy: str | Spill
        schema: Schema | None
        clock: StepClock
        failure: BaseException | None
        room_waiters: list[Waker]
        seq: int
        pending: int
        peak: int
        spilled: int

        def raise_if_unusable(self) -> None: ...
        def _wake_consumer(self) -> None: ...
        def _wake_producers(self) -> None: ...

    def _init_spill_queue(self, spill_dir: SpillDir | None) -> None:
        """The spill queue: frames that found the channel full, and every frame
        after them until the consumer took them all, on disk in order (see
        _spill). Only counters live here."""
        self.spill_dir = spill_dir  # a Spill policy's, made at the sink's open
        self.spill_reader: SpillReader | None = None  # the thread consumer's
        self.fifo_writing = 0  # accepted, their write to disk under way
        self.fifo_waiting = 0  # on disk, not yet taken by the consumer
        self.fifo_head_seq = 0  # seq of the oldest of those
        self.fifo_tickets = 0  # spill writes handed out
        self.fifo_turn = 0  # the spill write that may run (they run in order)
        self.fifo_turns = threading.Condition(self.lock)
        # bytes of records (header and fields, as on disk): the bound's parts
        self.spill_reserved = 0  # of the spill writes under way
        self.spill_unstored = 0  # in the spill queue, not yet stored
        self.spill_appended = 0  # ever joined the spill queue
        self.spill_overhead = 0  # the most a record took beyond its frame's bytes
        self.spill_record = 0  # the bytes of every record, without ragged fields
        #: tickets handed out whose write is not over (done or failed), by number
        self.fifo_open: dict[int, SpillTicket] = {}
        #: of those, the ones whose caller gave up before their turn came
        self.fifo_abandoned: set[int] = set()
        self.fifo_counted = 0  # spill writes done: SpillDir.frames once they are settled

    @property
    def spilled_bytes(self) -> int:
        """What ``Spill.max_bytes`` bounds (lock held): the bytes the spill
        directory holds once the spill writes under way are done (their
        records, those not yet stored, and the stored ones before them in the
        same segment, which goes whole), plus :attr:`spill_overhead`, since a
        frame is checked against the bound by its bytes (here and in
        ``park_producer``, so that both agree). 0 while no spilled frame waits
        (a frame larger than the bound then spills alone).

        The consumers count stored spilled frames off with ``spilled_bytes -=
        size``, the size the reader gave: their records' bytes."""
        pending = self.spill_reserved + self.spill_unstored
        if not pending:
            return 0
        stale = 0
        if self.spill_dir is not None:
            stale = self.spill_dir.stale_bytes(self.spill_appended - self.spill_unstored)
        return pending + stale + self.spill_overhead

    @spilled_bytes.setter
    def spilled_bytes(self, value: int) -> None:
        # only ever ``-=`` (the channel's release, a writer process's reap): the
        # frames taken off are stored, their records no longer waiting
        self.spill_unstored += value - self.spilled_bytes

    def _offer_spill(
        self, step: int, time: float | None, nbytes: int, items: Sequence[tuple[str, Field, Any]]
    ) -> tuple[Offer, SpillTicket | None]:
        """Accept a frame into the spill queue (lock held): a ticket for its
        write, or WAIT while the spill directory is at ``Spill.max_bytes``."""
        policy = self.policy
        schema = self.schema
        assert isinstance(policy, Spill) and schema is not None
        if schema.ragged:
            record = record_nbytes(schema, [len(v) for _, f, v in items if f.ragged])
        else:
            record = self.spill_record = self.spill_record or record_nbytes(schema, ())
        self.spill_overhead = max(self.spill_overhead, record - nbytes)
        spilled = self.spilled_bytes
        if policy.max_bytes is not None and spilled and spilled + nbytes > policy.max_bytes:
            return Offer.WAIT, None
        clock = self.clock
        before = (clock.last_step, clock.last_time, clock.has_times)
        ticket = SpillTicket(self.fifo_tickets, step, time, record, before)
        ticket.owner = threading.get_ident()
        self.fifo_open[ticket.n] = ticket
        self.fifo_tickets += 1
        self.fifo_writing += 1
        self.spill_reserved += record
        clock.advance(step, time)
        return Offer.SPILL, ticket

    def spill_write(
        self, ticket: SpillTicket, items: Sequence[tuple[str, Field, Any]], stream: Any
    ) -> None:
        """Write a SPILL frame to disk (blocking; outside the lock), in its turn.

        On failure the frame is not taken: nothing of it stays on disk, it is not
        counted, and its step is given back (unless another frame was accepted
        after it, by another thread). Raises SpillError (an OSError) chained to
        the cause.
        """
        spill_dir = self.spill_dir
        assert spill_dir is not None
        failure, stored = self._wait_turn(ticket)
        to_host = None
        if any(is_device_array(v) for _, _, v in items):
            from ._staging.device import to_host_blocking

            def to_host(value: Any) -> Any:
                return to_host_blocking(value, stream) if is_device_array(value) else value

        try:
            if failure is not None:
                self.raise_if_unusable()
            assert self.schema is not None
            if spill_dir.remove_stored(stored):
                with self.lock:  # counted while this write waited its turn: room freed
                    if self.room_waiters:
                        self._wake_producers()
            nbytes = spill_dir.append(self.schema, ticket.step, ticket.time, items, to_host)
        except BaseException as exc:
            with self.lock:
                taken, given_back = self._settle_in_turn(ticket)
                if self.room_waiters:
                    self._wake_producers()
            if taken:  # in the spill queue after all (e.g. a KeyboardInterrupt after the append)
                raise
            if isinstance(exc, OSError) and self.failure is None:
                detail = (
                    "the step can be written again"
                    if given_back
                    else "its step is used up: another frame was accepted after it"
                )
                raise SpillError(
                    exc.errno or 0,
                    f"spilling the frame at step {ticket.step} to {spill_dir.path} failed "
                    f"({exc.strerror or exc}); the frame was not taken, {detail}",
                ) from exc
            raise
        self._spilled(ticket, nbytes)

    def _wait_turn(self, ticket: SpillTicket) -> tuple[BaseException | None, int]:
        """Wait until the spill writes before ``ticket``'s are done (they go to
        disk in order); the store's failure, if it failed meanwhile, and the
        record bytes of the spilled frames stored by then."""
        with self.lock:
            while self.fifo_turn != ticket.n and self.failure is None:
                self.fifo_turns.wait(0.25)
            return self.failure, self.spill_appended - self.spill_unstored

    def _settle_in_turn(self, ticket: SpillTicket) -> tuple[bool, bool]:
        """End a spill write that did not end normally, in its turn (lock held):
        whether its frame is taken, and, if not, whether its step was given back.

        The frame is taken when it is in the spill queue on disk (the spill
        directory counted it: an exception after its append returned), since
        the queue is read in order; else it is not, as after a failed write.
        """
        spill_dir = self.spill_dir
        if spill_dir is not None and spill_dir.frames > self.fifo_counted:
            self._spilled_in_turn(ticket, spill_dir.last_nbytes)
            return True, False
        return False, self._fail_in_turn(ticket)

    def _fail_in_turn(self, ticket: SpillTicket) -> bool:
        """A spill write that ends, in its turn, with no frame on disk (lock
        held): the next may run; the step is given back when no frame was
        accepted after it (the return value)."""
        self._not_taken(ticket)
        self._next_turn()
        given_back = self._give_step_back(ticket)
        if given_back:
            self.fifo_turn = self.fifo_tickets
        return given_back

    def _not_taken(self, ticket: SpillTicket) -> None:
        """A spill write that puts no frame in the spill queue (it failed, or its
        caller left it), lock held: it is no longer being written, nor are its
        bytes spilled."""
        del self.fifo_open[ticket.n]
        self.fifo_writing -= 1
        self.spill_reserved -= ticket.nbytes

    def _give_step_back(self, ticket: SpillTicket) -> bool:
        """Un-issue ``ticket`` if it is the last one handed out (no frame was
        accepted after it), lock held: the clock goes back to before its step.
        Whether it was."""
        if ticket.n != self.fifo_tickets - 1:
            return False
        self.fifo_tickets -= 1
        c = self.clock
        c.last_step, c.last_time, c.has_times = ticket.before
        return True

    def _spilled(self, ticket: SpillTicket, nbytes: int) -> None:
        """A spill write is on disk: the frame joins the spill queue."""
        with self.lock:
            self._spilled_in_turn(ticket, nbytes)

    def _spilled_in_turn(self, ticket: SpillTicket, nbytes: int) -> None:
        del self.fifo_open[ticket.n]
        self.fifo_writing -= 1
        self.fifo_counted += 1
        self._next_turn()
        self.spill_reserved -= ticket.nbytes
        self.spill_unstored += nbytes
        self.spill_appended += nbytes
        self.spilled += 1
        if self.failure is not None:
            # the store failed while this frame was written: fail() emptied the
            # queue, so it waits for nobody (statistics said queued=1 after
            # the close)
            return
        self.seq += 1
        if not self.fifo_waiting:
            self.fifo_head_seq = self.seq
        self.fifo_waiting += 1
        self.pending += 1
        if self.pending > self.peak:
            self.peak = self.pending
        self._wake_consumer()

    def _next_turn(self) -> None:
        """A spill write is over, done or failed: the next one may run (lock
        held). Turns whose callers gave up pass, their frames not taken."""
        self.fifo_turn += 1
        while self.fifo_turn in self.fifo_abandoned:
            self.fifo_abandoned.discard(self.fifo_turn)
            self._not_taken(self.fifo_open[self.fifo_turn])
            self.fifo_turn += 1
        self.fifo_turns.notify_all()

    def abandon_spill(self) -> None:
        """The calling thread left a spill write it was handed, by an exception
        anywhere between the offer and the write's end (a KeyboardInterrupt):
        settle it, so that later spill writes and the close never wait for it.

        In its turn, a frame that reached the spill queue on disk is taken (it
        is stored); one that did not is not, as after a failed write. Before its
        turn the frame is not taken: the last one handed out gives its step
        back, an earlier one is passed over when its turn comes.
        """
        me = threading.get_ident()
        with self.lock:
            ticket = next((t for t in self.fifo_open.values() if t.owner == me), None)
            if ticket is None:
                return  # its write ended (done or failed), or it never got one
            if ticket.n == self.fifo_turn:
                self._settle_in_turn(ticket)
            elif ticket.n == self.fifo_tickets - 1:
                self._not_taken(ticket)
                self._give_step_back(ticket)
            else:
                self.fifo_abandoned.add(ticket.n)
            if self.room_waiters:
                self._wake_producers()

    def read_spilled(self, entry: Entry) -> None:
        """Fill a spilled entry from the spill queue (the consumer reads them in
        order, outside the lock)."""
        reader = self.spill_reader
        if reader is None:
            assert self.spill_dir is not None and self.schema is not None
            reader = self.spill_reader = SpillReader(self.spill_dir.path, self.schema)
        entry.step, entry.time, entry.fields, entry.size = reader.read_next()

    def remove_stored_spills(self) -> None:
        """Remove the spill segments whose frames are all stored."""
        if self.spill_reader is not None and self.spill_reader.exhausted:
            self.spill_reader.remove_exhausted()
