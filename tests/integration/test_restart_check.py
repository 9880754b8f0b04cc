"""`echolab restart-check` on loopback: both directions, the invalid run, managed mode.

TIME_WAIT lasts 60 s, so every test uses a port of its own (port 0 asks the kernel for one).
The precondition (server-side TIME_WAIT) is checked independently with `ss` where it exists.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echolab.proctree import kill_tree, process_state
from tests.support import (
    ROOT,
    run_echolab,
    ss_time_wait,
    wait_until,
)

KEYS = {"reuseaddr", "time_wait_at_restart", "rebind", "restart_ms", "refused_during_restart",
        "verdict"}  # fmt: skip


def restart_check(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any], str]:
    proc = run_echolab("restart-check", *args, "--json", "-", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= KEYS
    return proc.returncode, data, proc.stderr


def port_of(data: dict[str, Any]) -> int:
    return int(data["target"].rsplit(":", 1)[1])


def test_with_reuseaddr_the_restart_binds_at_once_under_time_wait() -> None:
    status, data, _ = restart_check("--port", "0", "--clients", "5")
    assert status == 0, data
    assert data["mode"] == "local" and data["reuseaddr"] is True
    assert data["time_wait_at_restart"] >= 5
    assert data["time_wait_from_clients"] == 5
    assert data["rebind"] == "ok"
    assert 0 <= data["rebind_ms"] <= data["details"]["rebind_allowed_ms"]
    assert data["restart_ms"] >= data["rebind_ms"]
    assert data["verdict"] == "pass"
    # Independent witness: `ss` sees the TIME_WAIT sockets on the server's port.
    seen = ss_time_wait(port_of(data))
    if seen is not None:
        assert seen >= 5


def test_without_reuseaddr_the_restart_gets_eaddrinuse() -> None:
    status, data, _ = restart_check("--port", "0", "--clients", "3", "--no-reuseaddr")
    assert status == 0, data
    assert data["reuseaddr"] is False
    assert data["time_wait_at_restart"] >= 3
    assert data["rebind"] == "EADDRINUSE"
    assert data["restart_ms"] is None
    assert data["refused_during_restart"] >= 1  # nothing listened after the stop
    assert data["verdict"] == "pass"


def test_clients_closing_first_leave_no_server_side_time_wait_exit_3() -> None:
    proc = run_echolab("restart-check", "--port", "0", "--close-first", "client")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "INVALID" in proc.stdout
    assert "the clients closed first" in proc.stdout
    status, data, _ = restart_check("--port", "0", "--close-first", "client", "--no-reuseaddr")
    assert status == 3
    assert data["time_wait_from_clients"] == 0
    assert data["client_side_time_wait"] == 5  # TIME_WAIT went to the clients' ports
    assert data["rebind"] == "ok"  # nothing to collide with, even without SO_REUSEADDR
    assert data["verdict"] == "invalid"


def test_table_output_reads_at_a_glance() -> None:
    proc = run_echolab("restart-check", "--port", "0", "--clients", "2")
    assert proc.returncode == 0, proc.stderr
    for label in ("TIME_WAIT at restart", "rebind", "refused meanwhile", "verdict"):
        assert label in proc.stdout
    assert "PASS" in proc.stdout


def test_port_taken_by_another_listener_is_one_line_exit_1() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = run_echolab("restart-check", "--port", str(port))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args",
    [["--restart-cmd", "true"], ["--target", "127.0.0.1:7"], ["--clients", "0"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = run_echolab("restart-check", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


# --- managed mode: a server run by "something else" (a pid file and a shell command) ----------
@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """A server started outside restart-check (detached, as a service manager would run it),
    and a shell command that restarts it."""
    port = free_port()
    pidfile = tmp_path / "server.pid"
    serve = shlex.join([sys.executable, "-m", "echolab", "serve", "--host", "127.0.0.1",
                        "--port", str(port), "--grace", "0"])  # fmt: skip
    # The shell exits at once, so the server is re-parented away from pytest (no zombie
    # for `kill -0` to mistake for a live process).
    start = f"cd {shlex.quote(str(ROOT))}; {serve} </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
    # Wait for the old server to exit: a zombie counts as gone (whoever adopted it may be
    # slow to reap it, and `kill -0` would still succeed).
    restart = (
        f'pid=$(cat {pidfile}); kill -TERM "$pid"; '
        f'while [ -r /proc/$pid/stat ] && [ "$(cut -d" " -f3 /proc/$pid/stat)" != Z ]; '
        f"do sleep 0.01; done; {start}"
    )
    subprocess.run(["sh", "-c", start], check=True)
    wait_until(lambda: listening(port), 10, what=f"a server on port {port}")
    try:
        yield port, restart, pidfile
    finally:
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: process_state(pid) in ("", "Z"), 10, what="server exit")
        except ProcessLookupError:
            pass
        except AssertionError:
            kill_tree(pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_managed_mode_measures_a_restart_from_the_outside(
    managed: tuple[int, str, Path],
) -> None:
    port, restart, pidfile = managed
    old_pid = pidfile.read_text()
    status, data, _ = restart_check("--restart-cmd", restart, "--target", f"127.0.0.1:{port}")
    assert status == 0, data
    assert pidfile.read_text() != old_pid  # it really restarted
    assert data["mode"] == "managed"
    assert data["time_wait_at_restart"] >= 5
    assert data["closed_by_server"] == 5
    assert data["rebind"] == "ok" and data["verdict"] == "pass"
    assert data["details"]["restart_cmd_status"] == 0


def test_managed_mode_expecting_eaddrinuse_fails_when_the_server_rebinds(
    managed: tuple[int, str, Path],
) -> None:
    """The restarted server sets SO_REUSEADDR, but the operator said it would not: exit 1."""
    port, restart, _ = managed
    status, data, _ = restart_check(
        "--restart-cmd", restart, "--target", f"127.0.0.1:{port}", "--no-reuseaddr"
    )
    assert status == 1, data
    assert data["rebind"] == "ok" and data["verdict"] == "fail"


def test_managed_mode_with_a_command_that_restarts_nothing_is_invalid(
    managed: tuple[int, str, Path],
) -> None:
    port, _, _ = managed
    status, data, _ = restart_check("--restart-cmd", "true", "--target", f"127.0.0.1:{port}")
    assert status == 3, data
    assert data["closed_by_server"] == 0
    assert "never closed the idle connections" in data["reason"]
