"""The control channel between a sink and its writer process: a peer's death is
read as the end of the stream only after every message it sent before dying.

A sink killed while one of the writer's replies sat unread in its socket makes
Linux report ECONNRESET to the writer on its next receive, ahead of the
messages the sink sent before it died. The writer took the reset for the end
of the stream, never read the mapping of a slot it had published a frame in,
and stopped with "slot 6 generation 1 never arrived": the frames whose
``write`` had returned were lost (the producer-kill test caught it, 1 kill in
about 500)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from snapsink._writer import _shm
from snapsink._writer._child import Writer
from snapsink._writer._wire import INLINE_MAX, Wire

pytestmark = pytest.mark.timeout(60)


def pair() -> tuple[Wire, Wire]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return Wire(a), Wire(b)


def test_messages_sent_before_a_reset_are_read_before_the_end_of_stream() -> None:
    sink, writer = pair()
    writer.send(("done", 1))  # a reply the sink never reads
    mem = _shm.SlotMemory.create(4096, 1)
    mem.array[:8] = np.arange(8, dtype=np.uint8)
    sink.send(("slot", 6, 1, 4096), (mem.fd,))
    mem.close()
    big = np.arange(INLINE_MAX, dtype=np.uint8).tobytes()  # travels in a memory file
    sink.send(("store", big))
    sink.sock.close()  # dies with the reply unread: ECONNRESET on the writer's end

    got = writer.recv()
    assert got is not None
    (msg, fds) = got
    assert msg == ("slot", 6, 1, 4096) and len(fds) == 1
    seen = _shm.SlotMemory(fds[0], 4096, 1, writable=False)
    assert seen.array[:8].tolist() == list(range(8))
    seen.close()
    got = writer.recv()
    assert got is not None and got[0] == ("store", big)
    assert writer.recv() is None  # then the end of the stream
    assert writer.recv() is None
    writer.close()


def test_a_clean_end_of_stream_is_still_the_end() -> None:
    sink, writer = pair()
    sink.send(("wake",))
    sink.close()
    got = writer.recv()
    assert got is not None and got[0] == ("wake",)
    assert writer.recv() is None
    writer.close()


_SINK = """
import os, socket, sys
import numpy as np
from snapsink._writer import _shm
from snapsink._writer._wire import Wire
wire = Wire(socket.socket(fileno=int(sys.argv[1])))
wire.recv()  # the writer's go; its reply after it stays unread
mem = _shm.SlotMemory.create(8192, 1)
mem.array[:] = 7
wire.send(("slot", 6, 1, 8192), (mem.fd,))
os.kill(os.getpid(), 9)
"""


def test_the_writer_applies_the_last_mapping_of_a_killed_sink() -> None:
    """A real sink process, SIGKILLed after sending a slot's mapping, with one
    of the writer's replies unread: the writer maps the slot, then sees the
    sink gone."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SINK, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    w = Writer(Wire(ours))
    w.send(("go",))
    w.send(("done", 3))  # unread when the sink dies
    assert proc.wait(timeout=30) == -9
    w.start_reader()
    while not w.parent_gone:
        w.handle(block=True, timeout=1.0)
    slot = w.slots[6]
    assert slot.gen == 1 and slot.size == 8192
    assert np.all(slot.array == 7)
    slot.close()
    w.wire.close()
