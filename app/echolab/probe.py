"""`echolab probe`: one echo round trip with a random payload, for health checks."""

from __future__ import annotations

import os
import socket
import sys
import time
from argparse import Namespace

from echolab.errors import EXIT_FAILED, EXIT_OK
from echolab.listener import format_address


def exchange(sock: socket.socket, payload: bytes, deadline: float | None = None) -> bytes:
    """Send `payload` and read back as many bytes (fewer if the peer closes first).

    With `deadline` (a time.monotonic() value) each read waits only for what is left of it.
    """
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        if deadline is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            break
        got += chunk
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
