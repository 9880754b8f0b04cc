"""Listening sockets on real loopback ports: options, dual stack, and every failure's line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from echolab import errors, listener
from echolab.errors import EcholabError


def test_reuseaddr_is_set_before_bind_by_default_and_off_on_request() -> None:
    with listener.open_listener("127.0.0.1", 0, 16) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    with listener.open_listener("127.0.0.1", 0, 16, reuseaddr=False) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_accepted_connections_inherit_tcp_nodelay() -> None:
    with listener.open_listener("127.0.0.1", 0, 16) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            conn, _ = sock.accept()
            with conn:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_listener_is_not_inherited_by_exec() -> None:
    with listener.open_listener("127.0.0.1", 0, 16) as sock:
        assert not sock.get_inheritable()


def test_dual_stack_accepts_ipv4_and_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback")
    with listener.open_listener("::", 0, 16) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=2):
                conn, _ = sock.accept()
                conn.close()


def test_port_in_use_by_a_live_listener_names_the_address() -> None:
    with listener.open_listener("127.0.0.1", 0, 16) as first:
        port = first.getsockname()[1]
        with pytest.raises(EcholabError) as exc:
            listener.open_listener("127.0.0.1", port, 16)
    assert exc.value.code == errors.EXIT_ADDR_IN_USE
    text = str(exc.value)
    assert f"127.0.0.1:{port} is already in use" in text
    assert "\n" not in text


def test_unresolvable_host_is_a_usage_error() -> None:
    with pytest.raises(EcholabError) as exc:
        listener.open_listener("no-such-host.invalid", 0, 16)
    assert exc.value.code == errors.EXIT_USAGE


def test_foreign_address_is_an_os_error() -> None:
    with pytest.raises(EcholabError) as exc:
        listener.open_listener("192.0.2.1", 0, 16)  # TEST-NET-1: never an address of ours
    assert exc.value.code == errors.EXIT_OS_ERROR
    assert "no such local address" in str(exc.value)


def test_inherited_socket_follows_sd_listen_fds() -> None:
    """A real exec with the socket on descriptor 3 and LISTEN_PID set to the new process."""
    with listener.open_listener("127.0.0.1", 0, 16) as sock:
        port = sock.getsockname()[1]
        code = (
            "import os; from echolab.listener import inherited_listeners as i; s = i(); "
            "print(len(s), s[0].getsockname()[1], s[0].fileno(), "
            "'LISTEN_PID' in os.environ, s[0].get_inheritable())"
        )
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
            "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])"
        )
        out = subprocess.run(
            [sys.executable, "-c", launcher, str(sock.fileno()), code],
            pass_fds=(sock.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    assert out == ["1", str(port), "3", "False", "False"]


def test_listen_fds_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listener.inherited_listeners() == []
    assert "LISTEN_FDS" not in os.environ


def test_listen_fds_pointing_at_a_non_socket_is_refused() -> None:
    code = (
        "import os, sys; from echolab.listener import inherited_listeners as i\n"
        "from echolab.errors import EcholabError\n"
        "r, w = os.pipe(); os.dup2(r, 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "try: i()\nexcept EcholabError as e: print(e.code, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("2 inherited descriptor 3 is not a socket"), out
