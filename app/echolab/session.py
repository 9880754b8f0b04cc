"""The child's session: one client, one forked process, from fork() to os._exit().

A child resets its signal dispositions, closes every descriptor of the parent's but its own
connection and the report pipe, waits for its first bytes in splice(2) and echoes them, then
splices on (when sessions outnumber CPUs) or copies through one buffer (when CPU is
plentiful) — Linux only. It reports how many bytes it echoed through the report pipe and
returns its status, which the caller passes to os._exit().

Every page the child writes stops being shared with the parent and is copied first (a page
fault), so the path to an idle client's first splice() touches as little as it can: the
C-level _signal and _socket with plain ints, close_range(2) on descriptors, and one function
(serve_child) until the first bytes arrive.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C modules only: see server.py
import _socket
import fcntl
import os
import struct
import time

from echolab.logs import log
from echolab.netaddr import format_address

# Tunables, each with its reason.
CHUNK = 1 << 20  # bytes asked of one splice() call; the pipe's size bounds what one call moves
PIPE_SIZE = 1 << 18  # 256 KiB pipe per streaming child: fewer splice() calls per MiB
COPY_SIZE = 1 << 16  # the copying child's buffer, allocated only once its session is active
BULK_HINT = 1 << 12  # a first chunk of a page or more is bulk data, worth a copy buffer; a short
# message (a probe, a 64-byte request) stays on splice and never zero-fills COPY_SIZE bytes
STREAM_HINT = 1 << 15  # a read this large means a bulk stream: grow the pipe (short sessions
# never do, so an idle or chatty child keeps the default 64 KiB pipe and touches no more)
DRAIN_TIME = 0.5  # s a stopping child reads (and drops) after its FIN, so close() sends no RST

# How a session ended, as the child's exit status (decoded in the parent's exit log line).
CHILD_EOF = 0  # the client closed (or half-closed) and everything it sent was echoed
CHILD_ERROR = 1  # an unexpected error, logged by the child with its traceback
CHILD_RESET = 3  # the peer reset the connection or vanished (ECONNRESET, EPIPE, ETIMEDOUT)
CHILD_IDLE = 4  # the client was silent for --idle-timeout seconds
CHILD_SHUTDOWN = 5  # the server is stopping: the child closed the connection from its side
CHILD_STATUS = {
    CHILD_EOF: "closed by client",
    CHILD_ERROR: "error",
    CHILD_RESET: "reset by peer",
    CHILD_IDLE: "idle timeout",
    CHILD_SHUTDOWN: "closed by server shutdown",
}

REPORT = struct.Struct("=iQ")  # (pid, bytes echoed): 12 bytes, written atomically (< PIPE_BUF)

_SIGINT, _SIGTERM, _SIG_IGN = _signal.SIGINT, _signal.SIGTERM, _signal.SIG_IGN
_MAXFD = os.sysconf("SC_OPEN_MAX")


class _Shutdown(BaseException):
    """Raised in a child by SIGTERM: the server is stopping, close the connection in order."""


def serve_child(fd: int, report_w: int, splice_all: bool) -> int:
    """In the child, right after fork(): echo on connection `fd` until the session ends.

    Writes (pid, bytes echoed) to `report_w` and returns the exit status (CHILD_*). The
    other signals keep the parent's recording handlers: the child ignores what the parent
    ignores (its list of recorded signals is never read), and never gets SIGCHLD.
    """
    _signal.set_wakeup_fd(-1)  # before the wakeup pipe closes: its number will be reused
    _signal.signal(_SIGINT, _SIG_IGN)  # ^C goes to the parent, which drains us
    _signal.signal(_SIGTERM, _raise_shutdown)
    # Keep stdio, the connection and the report pipe; close everything else of the
    # parent's: the listeners (only the parent holds them), epoll, the wakeup pipe.
    low = high = report_w  # (no tuple: nothing allocated before the first splice)
    if fd < low:
        low = fd
    else:
        high = fd
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, _MAXFD)
    moved = 0
    try:
        r, w = os.pipe2(0)  # no O_CLOEXEC, no close(): the child never execs, exits next
        # The first wait, here rather than in _echo: an idle client's child blocks in this
        # splice() having called no other Python function (each call writes the reference
        # counts of its function and code objects, un-sharing their pages).
        n = os.splice(fd, w, CHUNK)  # blocks until data, EOF (0) or idle timeout (EAGAIN)
        status, moved = _echo(fd, r, w, n, splice_all) if n else (_closed(fd), 0)
    except BaseException as exc:  # noqa: BLE001  the session's end, whatever it was
        status = _ended_by(exc, fd)
    try:
        os.write(report_w, REPORT.pack(os.getpid(), moved))
    except OSError:
        pass  # report pipe full: the parent logs '?' bytes
    return status


def _echo(fd: int, r: int, w: int, n: int, splice_all: bool) -> tuple[int, int]:
    """Echo from the first `n` bytes (already in the pipe) on; return (status, bytes echoed).

    Socket -> pipe -> socket with splice(2), the bytes never copied into Python; the pipe
    grows to PIPE_SIZE once a read shows a bulk stream (STREAM_HINT), worth fewer and larger
    moves.
    """
    moved = 0
    splice = os.splice
    grown = False
    try:
        while n:
            if n >= STREAM_HINT and not grown:
                grown = True
                try:
                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    pass  # over pipe-user-pages-soft: the 64 KiB default still works
            bulk = n >= BULK_HINT
            while n:
                sent = splice(r, fd, n)
                n -= sent
                moved += sent
            if bulk and not splice_all:
                # Few sessions, CPU to spare: copy through one buffer from here on. On
                # loopback one spliced stream ran at 0.6x the C server (the receiver pays
                # for the spliced pages), a copied one at 1.0x; with sessions >= CPUs,
                # splice ran level with C at a third of the CPU per GiB (docs/bench.md).
                conn = _socket.socket(fileno=fd)
                buf = bytearray(COPY_SIZE)
                view = memoryview(buf)
                while n := conn.recv_into(buf):
                    conn.sendall(view[:n])
                    moved += n
                conn.detach()
                break
            n = splice(fd, w, CHUNK)
        return _closed(fd), moved
    except BaseException as exc:  # noqa: BLE001  the session's end, whatever it was
        return _ended_by(exc, fd), moved


def _closed(fd: int) -> int:
    """The client closed first and everything it sent is echoed: nothing unread, so close()
    sends a plain FIN (and TIME_WAIT stays on the client's side)."""
    os.close(fd)
    return CHILD_EOF


def _ended_by(exc: BaseException, fd: int) -> int:
    """The status for the exception that ended a session; closes in order where that helps."""
    try:
        if isinstance(exc, BlockingIOError):  # SO_RCVTIMEO/SO_SNDTIMEO, from the listener
            close_in_order(_socket.socket(fileno=fd))
            return CHILD_IDLE
        if isinstance(exc, _Shutdown):
            close_in_order(_socket.socket(fileno=fd))
            return CHILD_SHUTDOWN
    except _Shutdown:
        return CHILD_SHUTDOWN  # SIGTERM while closing in order
    if isinstance(exc, ConnectionError | TimeoutError):
        return CHILD_RESET  # ECONNRESET, EPIPE, ETIMEDOUT: nothing left to close in order
    # The child's last word: logged with its traceback, never a silent death.
    log.exception("session with %s failed", format_address(*_peer_of(fd)))
    return 1  # CHILD_ERROR


def _raise_shutdown(signum: int, frame: object) -> None:
    _signal.signal(_SIGTERM, _SIG_IGN)
    raise _Shutdown


def close_in_order(conn: _socket.socket) -> None:
    """Close from the server's side with a FIN, never an RST: this side then holds TIME_WAIT.

    shutdown(SHUT_WR) sends the FIN; data the client still sends is read and dropped for a
    moment, because close() with unread data would answer with an RST.
    """
    try:
        conn.shutdown(_socket.SHUT_WR)
        conn.settimeout(DRAIN_TIME)
        deadline = time.monotonic() + DRAIN_TIME
        while time.monotonic() < deadline and conn.recv(65536):
            pass
    except OSError:
        pass  # reset, timeout or already closed: nothing more to do in order
    finally:
        conn.close()


def _peer_of(fd: int) -> tuple[str, int]:
    try:
        addr = _socket.socket(fileno=os.dup(fd)).getpeername()
        return addr[0], addr[1]
    except OSError:
        return "?", 0
