"""`echolab probe`: one echo round trip with a random payload, for health checks."""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from argparse import Namespace

from echolab.errors import EXIT_FAILED, EXIT_OK
from echolab.listener import format_address

CHUNK = 1 << 16  # bytes per send() or recv(): about what a loopback socket buffer takes at once


def exchange(sock: socket.socket, payload: bytes, deadline: float | None = None) -> bytes:
    """Send `payload` while reading the echo back; return what came (fewer bytes if the peer
    closes first).

    An echo server sends back as it reads: a client that sent everything before reading
    would fill both directions' buffers and wait forever (16 MB did, on loopback). So the
    socket is non-blocking here and one poll() waits for either direction. Each wait lasts
    until `deadline` (a time.monotonic() value) or, without one, the socket's own timeout;
    running out raises TimeoutError.
    """
    previous = sock.gettimeout()
    sock.setblocking(False)
    try:
        return _exchange(sock, memoryview(payload), deadline, previous)
    finally:
        sock.settimeout(previous)


def _exchange(
    sock: socket.socket, payload: memoryview, deadline: float | None, timeout: float | None
) -> bytes:
    poller = select.poll()
    sent = 0
    got = bytearray()
    while len(got) < len(payload):
        want = select.POLLIN | (select.POLLOUT if sent < len(payload) else 0)
        poller.register(sock, want)
        wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
        events = poller.poll(None if wait is None else wait * 1000)
        if not events:
            raise TimeoutError("timed out")
        ready = events[0][1]
        if ready & (select.POLLIN | select.POLLERR | select.POLLHUP):
            try:
                chunk = sock.recv(min(CHUNK, len(payload) - len(got)))
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                break  # the peer closed
            got += chunk or b""
        if ready & select.POLLOUT and sent < len(payload):
            try:
                sent += sock.send(payload[sent : sent + CHUNK])
            except BlockingIOError:
                pass
    return bytes(got)


def round_trip(host: str, port: int, payload: bytes, timeout: float) -> float:
    """Connect, send `payload`, read it back, half-close; return the seconds it took.

    Raises OSError (refused, reset, timeout) or ValueError (the echo differs).
    """
    started = time.monotonic()
    deadline = started + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        got = exchange(sock, payload, deadline)
        sock.shutdown(socket.SHUT_WR)
    if got != payload:
        raise ValueError(
            f"echo differs: sent {len(payload)} bytes, got back {len(got)}"
            + (" (different content)" if len(got) == len(payload) else "")
        )
    return time.monotonic() - started


def run(args: Namespace) -> int:
    """Exit 0 when the payload came back intact, 1 otherwise, with one line either way."""
    host, port = args.target
    where = format_address(host, port)
    payload = os.urandom(args.payload)
    try:
        seconds = round_trip(host, port, payload, args.timeout)
    except (OSError, ValueError) as exc:
        reason = (
            exc.strerror
            if isinstance(exc, OSError) and exc.strerror
            else str(exc) or type(exc).__name__
        )
        if not args.quiet:
            print(f"echolab probe: {where}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(f"{where}: {len(payload)} bytes echoed intact in {seconds * 1000:.1f} ms")
    return EXIT_OK
