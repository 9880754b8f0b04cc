"""Held clients: idle connections kept open across a server's restart (`echolab hold`).

They are the clients of the restart experiment: each connects once, checks one echo, then
waits. When the server's FIN arrives (the stopping server closes the session from its side),
the client closes at once, so the server's socket moves from FIN_WAIT_2 to TIME_WAIT on the
server's own port; a client that lingered would leave it in FIN_WAIT_2. A held client never
reconnects: a burst of SYNs from the same client address to the stopped port can reopen a
4-tuple that sits in TIME_WAIT (RFC 6191), erasing the evidence before the new server binds —
which is why `echolab load --mode hold`, which replaces a lost connection at once, is not used
for this.

restart-check runs them in a thread of its own (`HeldClients.start_watching`); `echolab hold`
runs the same loop in the foreground, in a container of the lab for instance.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import threading
import time
from typing import Any

from echolab.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EcholabError
from echolab.netaddr import format_address
from echolab.probe import exchange
from echolab.tcpstate import plain_address

PAYLOAD = b"echolab hold\n"


class HeldClients:
    """`n` connected clients that echo once, then stay idle until the server closes them.

    Counters are written by the watching thread and read by others (plain ints: the GIL makes
    each update atomic).
    """

    def __init__(self, family: int, sockaddr: tuple[Any, ...], n: int, timeout: float) -> None:
        self.where = format_address(str(sockaddr[0]), int(sockaddr[1]))
        self.sel = selectors.DefaultSelector()
        self.open: dict[int, socket.socket] = {}
        self.endpoints: list[tuple[str, int]] = []  # our clients' (address, port)
        self.received: dict[int, int] = {}  # bytes read on each open socket since connected
        self.by_server = 0  # closed after the server's FIN
        self.resets = 0  # ended by a reset (no TIME_WAIT for those)
        self.last_close = 0.0
        self.close_times: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            for _ in range(n):
                self._connect_one(family, sockaddr, timeout)
        except BaseException:
            self.close()
            raise

    def _connect_one(self, family: int, sockaddr: tuple[Any, ...], timeout: float) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.open[sock.fileno()] = sock
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            got = exchange(sock, PAYLOAD, time.monotonic() + timeout)
        except OSError as exc:
            raise EcholabError(
                f"cannot connect the held clients to {self.where}: {exc.strerror or exc}",
                EXIT_USAGE,
            ) from None
        if got != PAYLOAD:
            raise EcholabError(
                f"the server at {self.where} did not echo ({len(got)} of {len(PAYLOAD)} bytes "
                "back)",
                EXIT_FAILED,
            )
        sock.setblocking(False)
        name = sock.getsockname()
        self.endpoints.append((plain_address(name[0]), name[1]))
        self.received[sock.fileno()] = 0
        self.sel.register(sock, selectors.EVENT_READ)

    @property
    def count(self) -> int:
        return len(self.endpoints)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for data or a close; close each client the server closed."""
        if not self.open:
            time.sleep(timeout)
            return
        for key, _ in self.sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                self.resets += 1
            else:
                if data:  # an echo of ours (send_all): count it, keep waiting for the FIN
                    self.received[sock.fileno()] += len(data)
                    continue
                self.by_server += 1
            self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        self.open.pop(sock.fileno(), None)
        self.received.pop(sock.fileno(), None)
        sock.close()
        self.last_close = time.monotonic()
        self.close_times.append(self.last_close)

    def send_all(self, payload: bytes) -> int:
        """Send `payload` on every open client (the reload check: do sessions survive?)."""
        sent = 0
        for fd, sock in list(self.open.items()):
            # Zeroed before the send: the watcher thread may read the echo before send()
            # returns here, and zeroing after would lose it (the session would look dead).
            self.received[fd] = 0
            try:
                sock.send(payload)
            except OSError:
                continue
            sent += 1
        return sent

    def echoed(self, nbytes: int) -> int:
        """How many open clients have read `nbytes` back since the last send_all()."""
        return sum(1 for n in list(self.received.values()) if n >= nbytes)

    def start_watching(self) -> None:
        """Watch in a thread of our own until stop_watching(): close each on the server's FIN."""
        self._thread = threading.Thread(target=self._watch, name="echolab-held", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll(0.005)
            except (OSError, ValueError):  # closed under us by close()
                return

    def stop_watching(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def close_all(self) -> None:
        """Close every client from our side (the client-first case)."""
        for sock in list(self.open.values()):
            self._forget(sock)

    def close(self) -> None:
        self.stop_watching()
        self.close_all()
        self.sel.close()


def resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """The first address of host:port (exit 2 when it does not resolve)."""
    try:
        family, _t, _p, _n, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, IndexError, UnicodeError) as exc:
        raise EcholabError(f"cannot resolve {host!r}: {exc}", EXIT_USAGE) from None
    return family, tuple(sockaddr)


def run(args: argparse.Namespace) -> int:
    """`echolab hold`: hold N clients until the server closes them all (or --duration ends)."""
    host, port = args.target
    family, sockaddr = resolve(host, port)
    stop: list[int] = []

    def record(signum: int, _frame: object) -> None:
        stop.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, record)
    held = HeldClients(family, sockaddr, args.clients, args.timeout)
    where = format_address(host, port)
    print(f"hold: {held.count} connections to {where} open, echo checked", flush=True)
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    try:
        while held.open and not stop and time.monotonic() < deadline:
            held.poll(0.05)
    finally:
        left = len(held.open)
        held.close()
    if stop:
        print(f"hold: {signal.Signals(stop[0]).name}: closed {left} connection(s) from our side")
        return 128 + stop[0]
    if left:
        print(f"hold: --duration ended: closed {left} connection(s) from our side", flush=True)
        return EXIT_OK
    resets = f" ({held.resets} reset)" if held.resets else ""
    print(
        f"hold: the server closed every connection{resets}; closed ours after its FIN",
        flush=True,
    )
    return EXIT_FAILED if held.resets else EXIT_OK
