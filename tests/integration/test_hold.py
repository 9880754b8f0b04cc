"""`echolab hold`: idle clients that close on the server's FIN and never reconnect."""

from __future__ import annotations

import signal
import subprocess

from echolab import tcpstate
from tests.support import echolab_cmd, running_server, start_server, wait_until


def hold(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        echolab_cmd("hold", "--target", f"127.0.0.1:{port}", *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_hold_closes_after_the_servers_fin_so_time_wait_lands_on_the_server() -> None:
    srv = start_server("--grace", "0")
    proc = hold(srv.port, "--clients", "4")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith(f"hold: 4 connections to 127.0.0.1:{srv.port} open, echo checked")
    assert srv.stop() == 0  # the stop ends the sessions from the server's side
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "the server closed every connection; closed ours after its FIN" in out
    wait_until(lambda: tcpstate.time_wait_count(srv.port, addr="127.0.0.1") >= 4, 5,
               what="TIME_WAIT on the server's port")  # fmt: skip
    assert tcpstate.time_wait_count(srv.port, "remote", addr="127.0.0.1") == 0
    # Never reconnected: nothing of ours is left on the port but the TIME_WAIT sockets.
    assert tcpstate.count_states(srv.port, "remote", addr="127.0.0.1") == {}


def test_hold_ends_on_sigterm_closing_from_its_side() -> None:
    with running_server() as srv:
        proc = hold(srv.port, "--clients", "2")
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 143, err
        assert "SIGTERM: closed 2 connection(s) from our side" in out
        assert "Traceback" not in err


def test_hold_against_nothing_is_one_line_exit_2() -> None:
    with running_server() as srv:
        port = srv.port
    proc = hold(port)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"echolab hold: cannot connect the held clients to 127.0.0.1:{port}: Connection refused"
    ]
