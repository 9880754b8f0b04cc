"""Listening sockets: SO_REUSEADDR before bind(), dual-stack, and sockets inherited from systemd.

Every way a listener can fail to appear becomes an EcholabError with one line that names the
address and says what to do; the exit code tells the cases apart (errors.py).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

from echolab.errors import (
    EXIT_ADDR_IN_USE,
    EXIT_OS_ERROR,
    EXIT_PERMISSION,
    EXIT_USAGE,
    EcholabError,
)
from echolab.netaddr import format_address

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): inherited sockets start at descriptor 3


__all__ = ["format_address", "inherited_listeners", "open_listener", "socket_address"]


def socket_address(sock: socket.socket) -> str:
    """The bound address of a socket as HOST:PORT (the real port for port 0)."""
    addr = sock.getsockname()
    return format_address(addr[0], addr[1])


def inherited_listeners() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID), else [].

    Follows sd_listen_fds(3) with unset_environment: the variables are read once and removed,
    so nothing the server starts mistakes them for its own.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not pid or not count:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        raise EcholabError(
            f"bad LISTEN_PID/LISTEN_FDS from the environment: {pid!r}/{count!r}", EXIT_USAGE
        ) from None
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise EcholabError(
                f"inherited descriptor {fd} is not open: {exc.strerror}", EXIT_USAGE
            ) from None
        if not stat.S_ISSOCK(mode):
            raise EcholabError(f"inherited descriptor {fd} is not a socket", EXIT_USAGE)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise EcholabError(
                f"inherited descriptor {fd} is not a listening TCP socket", EXIT_USAGE
            )
        sock.set_inheritable(False)
        set_nodelay(sock)  # connections queued before we started keep Nagle: harmless
        sockets.append(sock)
    return sockets


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on a listener: every connection accepted from it inherits it.

    An echo must leave at once. With Nagle's algorithm a small echo waits while an earlier one
    is unacknowledged, and the client delays that ACK until its next request: pipelined 64-byte
    round trips took 20 ms each instead of 0.2 ms (docs/load.md, open loop in stream mode).
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_idle_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO: blocking reads and writes fail with EAGAIN after `seconds`.

    Set on a listener before listen(), every accepted connection inherits both (the kernel
    clones the listener's struct sock), so a forked child needs no system call for them.
    """
    if seconds > 0:
        tv = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def open_listener(
    host: str,
    port: int,
    backlog: int,
    reuseaddr: bool = True,
    idle_timeout: float = 0.0,
    *,
    reuseport: bool = False,
) -> socket.socket:
    """Create, configure, bind and listen; raise EcholabError with one clear line on failure."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise EcholabError(
            f"cannot resolve listen address {host!r}: {exc.strerror}", EXIT_USAGE
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    where = format_address(host, port)
    sock = socket.socket(family, kind, proto)
    try:
        if reuseaddr:
            # Set after socket() and before bind(): lets a restarted server bind while TIME_WAIT
            # sockets of its previous life linger on the port (they last 60 s on Linux). It never
            # lets two live listeners share a port: that is SO_REUSEPORT. See socket(7) and
            # https://github.com/python-trio/trio/issues/39 for why every server sets it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            # Another listener with SO_REUSEPORT (same user) may bind the port beside this one:
            # the kernel spreads new connections over both (restart-check --strategy reuseport).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and sockaddr[0] in ("::", ""):
            # '::' means every address, IPv4 too (mapped), whatever net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        set_idle_timeout(sock, idle_timeout)  # before listen(): no connection may miss it
        set_nodelay(sock)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise _bind_error(exc, where, port, reuseaddr) from None
        try:
            sock.listen(backlog)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _bind_error(exc, where, port, reuseaddr) from None
            raise EcholabError(
                f"listen() on {where} failed: {exc.strerror}", EXIT_OS_ERROR
            ) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(exc: OSError, where: str, port: int, reuseaddr: bool) -> EcholabError:
    if exc.errno == errno.EADDRINUSE:
        why = (
            "SO_REUSEADDR is off (--no-reuseaddr), so TIME_WAIT sockets left by a previous "
            "server block the port for up to 60 s; or another socket is listening on it"
            if not reuseaddr
            else "another socket is listening on it, or a process still holds a socket bound "
            "to it without SO_REUSEADDR"
        )
        return EcholabError(
            f"{where} is already in use: {why} (see `echolab sockets --port {port}`)",
            EXIT_ADDR_IN_USE,
        )
    if exc.errno == errno.EACCES:
        return EcholabError(
            f"permission denied binding {where}: ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE (or lower net.ipv4.ip_unprivileged_port_start)",
            EXIT_PERMISSION,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return EcholabError(
            f"cannot bind {where}: no such local address on this host", EXIT_OS_ERROR
        )
    return EcholabError(f"cannot bind {where}: {exc.strerror}", EXIT_OS_ERROR)
