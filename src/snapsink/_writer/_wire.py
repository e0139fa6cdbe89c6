"""The control channel between a sink and its writer process.

A ``SOCK_SEQPACKET`` socket pair: each message is one pickled tuple, read
whole, with file descriptors (shared-memory mappings) passed alongside as
``SCM_RIGHTS``. A message larger than :data:`INLINE_MAX` (a store description
carrying large static arrays) travels in a memory file whose descriptor is the
message. The peer's death reads as end of stream: no heartbeat is needed.

Pickle is safe here and only here: the socket pair is private to the sink and
the writer it started (created before the writer, inherited by it alone), so
nothing but those two processes can write to it; nothing read from a store or
a file is ever unpickled.

Only bookkeeping crosses it (runs of dropped steps, ``("dropped", [(start,
stop), ...])``, flush and close requests and their acknowledgements, errors);
frame data lies in shared memory.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
import traceback
from typing import Any, Final

from .._errors import WriterError

__all__ = ["Wire", "decode_error", "encode_error", "picklable"]

INLINE_MAX: Final = 32 << 10
_MAX_FDS: Final = 4
_BIG: Final = "__big__"


class Wire:
    """One end of the control channel; ``send`` is safe from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, msg: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        big = -1
        if len(data) > INLINE_MAX:
            big = os.memfd_create("snapsink-message", os.MFD_CLOEXEC)
            os.write(big, data)
            data = pickle.dumps((_BIG, len(data)))
            fds = (*fds, big)
        try:
            with self._send_lock:
                if fds:
                    socket.send_fds(self.sock, [data], list(fds))
                else:
                    self.sock.sendall(data)
        finally:
            if big >= 0:
                os.close(big)

    def recv(self) -> tuple[tuple[Any, ...], list[int]] | None:
        """The next message and its descriptors; None at end of stream (the peer
        closed or died).

        A peer that died with messages of ours unread sets ECONNRESET on this
        end, and Linux reports it on the next receive *before* the messages the
        peer sent ahead of its death (the pending error is read, and cleared,
        first). Those messages still matter (a slot's mapping for a frame
        already published, the writer's last error), so a reset is read past:
        the stream ends where a receive returns nothing.

        Raises what unpickling raises (a message naming a class this process
        cannot import: AttributeError, ModuleNotFoundError) and what reading
        the socket raises; the caller fails the sink with it, never waits on.
        """
        resets = 0
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, INLINE_MAX + 1024, _MAX_FDS)
                break
            except (ConnectionResetError, BrokenPipeError):
                # the error is cleared as it is reported: a second one in a row
                # cannot come from the same death; stop rather than spin
                resets += 1
                if resets > 1:
                    return None
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        try:
            msg = pickle.loads(data)
            if msg and msg[0] == _BIG:
                big = fds.pop()
                try:
                    payload = os.pread(big, msg[1], 0)
                finally:
                    os.close(big)
                msg = pickle.loads(payload)
        except BaseException:
            # unreadable (it names a class this process cannot import): the
            # descriptors that came with it are nobody's
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return msg, fds

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def picklable(obj: object) -> Exception | None:
    """None if ``obj`` survives the control channel, else the error that stops it."""
    try:
        pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        return exc
    return None


def encode_error(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """``(pickled exception or None, type name, message, traceback text)``."""
    try:
        blob: bytes | None = pickle.dumps(exc)
        pickle.loads(pickle.dumps(exc))
    except Exception:
        blob = None
    tb = "".join(traceback.format_exception(exc))
    return blob, type(exc).__qualname__, str(exc), tb


def decode_error(info: tuple[bytes | None, str, str, str]) -> BaseException:
    """The exception the writer sent, rebuilt (its traceback text as a note)."""
    blob, name, message, tb = info
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = WriterError(f"{name}: {message}")
    exc.add_note("in the snapsink writer process:\n" + tb.rstrip())
    return exc
