"""tcpstate: parsing /proc/net/tcp{,6} lines, and reading real loopback sockets."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from echolab import tcpstate

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode"
)
# A listener on 127.0.0.1:7007 and a TIME_WAIT socket with 59.50 s (5950 ticks) left;
# host byte order (little-endian x86/arm64): 127.0.0.1 is 0100007F, 7007 is 1B5F.
LISTEN_V4 = (
    "   0: 0100007F:1B5F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
    "4242 1 0000000000000000 100 0 0 10 0"
)
TIME_WAIT_V4 = (
    "   1: 0100007F:1B5F 0100007F:A1B2 06 00000000:00000000 03:0000173E 00000000     0        0 "
    "0 3 0000000000000000"
)
# ::1 port 7007, ESTABLISHED with [::1]:41394, uid 1000.
ESTABLISHED_V6 = (
    "   0: 00000000000000000000000001000000:1B5F 00000000000000000000000001000000:A1B2 01 "
    "00000000:00000000 02:000A1B2C 00000000  1000        0 31337 1 0000000000000000 20 4 30 10 -1"
)

little_endian = struct.pack("=I", 1) == b"\x01\x00\x00\x00"


@pytest.mark.skipif(not little_endian, reason="the sample lines are in little-endian byte order")
def test_parse_ipv4_listen_and_time_wait() -> None:
    listen = tcpstate.parse_line(LISTEN_V4)
    assert listen is not None
    assert (listen.state, listen.local, listen.remote) == ("LISTEN", "127.0.0.1:7007", "0.0.0.0:0")
    assert (listen.inode, listen.uid, listen.timer, listen.timer_s) == (4242, 0, "", 0.0)

    tw = tcpstate.parse_line(TIME_WAIT_V4)
    assert tw is not None
    assert tw.state == "TIME_WAIT"
    assert (tw.local_port, tw.remote_addr, tw.remote_port) == (7007, "127.0.0.1", 0xA1B2)
    assert tw.timer == "time_wait"
    assert tw.timer_s == pytest.approx(0x173E / tcpstate._CLK_TCK)


@pytest.mark.skipif(not little_endian, reason="the sample lines are in little-endian byte order")
def test_parse_ipv6_established() -> None:
    s = tcpstate.parse_line(ESTABLISHED_V6, socket.AF_INET6)
    assert s is not None
    assert (s.family, s.state, s.local, s.remote) == (
        "ipv6",
        "ESTABLISHED",
        "[::1]:7007",
        "[::1]:41394",
    )
    assert (s.uid, s.inode, s.timer) == (1000, 31337, "keepalive")


@pytest.mark.parametrize("line", [HEADER, "", "garbage", "   0: zz:1B5F 00:00 0A a:b c:d e f g h"])
def test_parse_rejects_header_and_junk(line: str) -> None:
    assert tcpstate.parse_line(line) is None


def test_plain_address_unmaps_ipv4() -> None:
    assert tcpstate.plain_address("::ffff:127.0.0.1") == "127.0.0.1"
    assert tcpstate.plain_address("::1") == "::1"
    assert tcpstate.plain_address("::ffff:1") == "::ffff:1"


def test_state_names_cover_the_kernel_states() -> None:
    assert tcpstate.STATE_NAMES[0x06] == "TIME_WAIT"
    assert tcpstate.STATE_NAMES[0x0A] == "LISTEN"
    assert set(tcpstate.STATE_NAMES.values()) == set(tcpstate.STATE_ORDER)


def test_real_sockets_server_first_close_leaves_time_wait_on_the_server_port() -> None:
    """A loopback listener; one connection closed by the server first, one left open."""
    with socket.socket() as listener:
        # No SO_REUSEADDR: port 0 then never picks a port with TIME_WAIT left by other tests.
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        c1 = socket.create_connection(("127.0.0.1", port))
        c1_port = c1.getsockname()[1]
        a1, _ = listener.accept()
        c2 = socket.create_connection(("127.0.0.1", port))
        a2, _ = listener.accept()
        a1.close()  # the server closes first...
        assert c1.recv(1) == b""
        c1.close()  # ...and the client answers: TIME_WAIT lands on the server's side
        deadline = time.monotonic() + 5
        while tcpstate.time_wait_count(port, addr="127.0.0.1") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            # The same port number may be in use on another local address (an outgoing
            # connection from a bridge address, say): look at loopback only.
            counts = tcpstate.count_states(port, addr="127.0.0.1")
            seen = tcpstate.read_sockets(port, side="any")
            assert counts == {"LISTEN": 1, "ESTABLISHED": 1, "TIME_WAIT": 1}, seen
            assert tcpstate.time_wait_count(port, side="remote", addr="127.0.0.1") == 0
            assert tcpstate.count_states(port, "remote", addr="127.0.0.1") == {"ESTABLISHED": 1}
            assert tcpstate.count_states(port, addr="10.255.255.1") == {}
            (tw,) = tcpstate.read_sockets(port, states=["TIME_WAIT"], addr="127.0.0.1")
            assert (tw.local_port, tw.remote_port) == (port, c1_port)
            assert 50.0 < tw.timer_s <= 60.0
            assert tw.inode == 0  # no process holds a TIME_WAIT socket
            (est,) = tcpstate.with_owners(
                tcpstate.read_sockets(port, states=["ESTABLISHED"], addr="127.0.0.1")
            )
            assert est.remote_port == c2.getsockname()[1]
            assert os.getpid() in est.pids
        finally:
            for s in (c2, a2):
                s.close()


def key(s: tcpstate.TcpSocket) -> tuple[object, ...]:
    return (s.family, s.state, s.local, s.remote, s.inode, s.uid, s.rx_queue, s.timer)


def agree(port: int, side: tcpstate.Side) -> bool:
    """Both sources list the same loopback sockets. /proc/net/tcp is printed in pieces while
    the host's table changes, so under churn it may skip one: read it again (our sockets do
    not change meanwhile)."""
    for _ in range(10):
        diag = {key(s) for s in tcpstate.read_sockets(port, side) if loopback(s)}
        proc = {key(s) for s in tcpstate.read_sockets(port, side, source="proc") if loopback(s)}
        if diag == proc:
            return True
    return False


def loopback(s: tcpstate.TcpSocket) -> bool:
    return s.local_addr in ("127.0.0.1", "::1")


def test_sock_diag_and_proc_agree_socket_for_socket() -> None:
    """The two sources of read_sockets (inetdiag.py's netlink dump, /proc/net/tcp) on real
    loopback sockets in every interesting state, IPv4 and IPv6."""
    keep = []
    with socket.socket() as listener, socket.socket(socket.AF_INET6) as listener6:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener6.bind(("::1", port))
        listener.listen()
        listener6.listen()
        for host, lst in (("127.0.0.1", listener), ("::1", listener6)):
            c = socket.create_connection((host, port))
            a, _ = lst.accept()
            keep += [c, a]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        a, _ = listener.accept()
        a.close()  # server first: TIME_WAIT on the server's side
        assert c.recv(1) == b""
        c.close()
        deadline = time.monotonic() + 5
        while tcpstate.time_wait_count(port, addr="127.0.0.1") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        keep.append(socket.create_connection(("127.0.0.1", port)))  # left in the accept queue
        try:
            for side in ("local", "remote", "any"):
                assert agree(port, side), side
            (lst4,) = tcpstate.read_sockets(port, states=["LISTEN"], addr="127.0.0.1")
            assert lst4.rx_queue == 1  # the connection never accepted
        finally:
            for s in keep:
                s.close()


def test_sock_diag_unavailable_falls_back_to_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    from echolab import inetdiag

    def refuse(port: int, local: bool = True) -> list[object]:
        raise inetdiag.DiagUnavailable(1, "not here")

    monkeypatch.setattr(inetdiag, "dump", refuse)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (found,) = tcpstate.read_sockets(port, states=["LISTEN"])
        assert found.local == f"127.0.0.1:{port}"
