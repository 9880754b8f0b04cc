"""`echolab serve` on real loopback sockets, as real processes: what README says it does."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from echolab import tcpstate
from echolab.proctree import children_of, kill_tree, open_fds, process_state
from echolab.ready import parse_ready
from tests.support import (
    ROOT,
    connect,
    echo_once,
    echolab_cmd,
    pids_cgroup,
    require,
    run_echolab,
    running_server,
    start_server,
    wait_until,
)

EXIT_LINE = re.compile(r"child (\d+) (\S+): (.+) after ([\d.]+) s, (\d+|\?) bytes echoed")


def exit_lines(log: str) -> list[re.Match[str]]:
    return [m for m in map(EXIT_LINE.search, log.splitlines()) if m]


def read_until_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    got = bytearray()
    while chunk := sock.recv(1 << 20):
        got += chunk
    return bytes(got)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_inode(port: int) -> int:
    (sock,) = tcpstate.read_sockets(port, "local", states=("LISTEN",))
    return sock.inode


# 1. Concurrency ------------------------------------------------------------------------------


def test_hundreds_of_clients_each_in_its_own_process() -> None:
    n = 300
    with running_server() as srv:
        clients = [connect(srv.port) for _ in range(n)]
        wait_until(lambda: len(children_of(srv.pid)) == n, 20, what=f"{n} children")
        kids = children_of(srv.pid)
        assert len(set(kids)) == n
        for i, c in enumerate(clients):
            payload = f"client {i} ".encode() * 10
            assert echo_once(c, payload) == payload
        for c in clients:
            c.close()
        wait_until(lambda: not children_of(srv.pid), 20, what="every child gone")
    assert len(exit_lines(srv.log)) == n


def test_a_silent_client_never_delays_another() -> None:
    with running_server() as srv:
        silent = connect(srv.port)
        silent.sendall(b"half a mess")  # and then nothing, never reading
        start = time.monotonic()
        with connect(srv.port) as busy:
            for _ in range(50):
                assert echo_once(busy, b"ping") == b"ping"
        assert time.monotonic() - start < 5
        silent.close()


# 2. Half-close, binary safety, resets --------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4095, 65536, 3_000_001])
def test_echoes_exactly_the_bytes_received_then_closes_after_half_close(size: int) -> None:
    payload = os.urandom(size)  # NUL bytes and all: no C strings here
    with running_server() as srv, connect(srv.port) as c:
        sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got = read_until_eof(c)  # EOF: the child finished echoing, then closed
        sender.join()
    assert got == payload
    (line,) = exit_lines(srv.log)
    assert line.group(3) == "closed by client"
    assert int(line.group(5)) == size


def test_many_small_writes_come_back_in_order() -> None:
    with running_server() as srv, connect(srv.port) as c:
        sent = bytearray()
        for i in range(2000):
            chunk = struct.pack("!I", i) * (i % 7 + 1)
            c.sendall(chunk)
            sent += chunk
        c.shutdown(socket.SHUT_WR)
        assert read_until_eof(c) == bytes(sent)


def _socket_of(pid: int, fd: int) -> socket.socket:
    """A copy of descriptor `fd` of process `pid` (pidfd_getfd(2), Linux 5.6+, needs ptrace
    rights: root here), to read the options of a socket another process holds."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = libc.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd on x86_64
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(pidfd)
    return socket.socket(fileno=got)


def test_a_child_echoes_without_nagle() -> None:
    """Each child's connection has TCP_NODELAY (inherited from the listener): an echo leaves at
    once instead of waiting for the client's delayed ACK of the previous one."""
    require(os.geteuid() == 0, "needs root to read another process's socket (pidfd_getfd)")
    with running_server() as srv, connect(srv.port) as client:
        assert echo_once(client, b"ping") == b"ping"
        wait_until(lambda: len(children_of(srv.pid)) == 1, 10, what="the child")
        (child,) = children_of(srv.pid)
        local = client.getsockname()[1]
        for name in os.listdir(f"/proc/{child}/fd"):
            try:
                sock = _socket_of(child, int(name))
            except OSError:
                continue
            with sock:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == local:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                    return
        raise AssertionError("the child holds no socket connected to this client")


def test_a_reset_ends_only_that_child_quietly() -> None:
    with running_server() as srv:
        other = connect(srv.port)
        rude = connect(srv.port)
        assert echo_once(rude, b"x" * 1000) == b"x" * 1000
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.sendall(b"y" * 100_000)
        rude.close()  # RST
        srv.wait_for_line(r"reset by peer|closed by client")
        assert echo_once(other, b"still here") == b"still here"
        other.close()
        wait_until(lambda: not children_of(srv.pid), 10, what="children gone")
    assert "Traceback" not in srv.log
    assert "error" not in srv.log.lower()


# 3. The child cap and fork failures ----------------------------------------------------------


def test_at_the_cap_clients_wait_in_the_backlog_without_a_busy_loop() -> None:
    with running_server("--max-children", "3") as srv:
        first = [connect(srv.port) for _ in range(3)]
        for c in first:
            assert echo_once(c, b"in") == b"in"
        waiting = [connect(srv.port) for _ in range(2)]  # the kernel completes the handshake
        for c in waiting:
            c.sendall(b"queued")
        srv.wait_for_line("at the cap of 3 children")
        cpu_before = cpu_seconds(srv.pid)
        ready, _, _ = select.select(waiting, [], [], 1.0)
        assert ready == [], "a client past the cap was served"
        assert len(children_of(srv.pid)) == 3
        assert cpu_seconds(srv.pid) - cpu_before < 0.2, "the parent spun while at the cap"
        first[0].close()
        assert waiting[0].recv(100) == b"queued" or waiting[1].recv(100) == b"queued"
        for c in first[1:] + waiting:
            c.close()
        wait_until(lambda: not children_of(srv.pid), 10, what="children gone")
    assert len(exit_lines(srv.log)) == 5


def test_a_failed_fork_pauses_accepting_and_turns_nobody_away() -> None:
    # A pids cgroup, as Docker's pids_limit makes one: the server plus 2 children fit, no more.
    with pids_cgroup(3) as procs:

        def enter_cgroup() -> None:
            with open(procs, "w") as f:
                f.write("0")

        srv = start_server(preexec_fn=enter_cgroup)
        try:
            held = [connect(srv.port) for _ in range(2)]
            for c in held:
                assert echo_once(c, b"ok") == b"ok"
            waiting = [connect(srv.port) for _ in range(5)]  # the kernel completes them all
            for i, c in enumerate(waiting):
                c.sendall(b"queued %d" % i)
            srv.wait_for_line("fork\\(\\) failed")
            time.sleep(1.0)  # ten pauses' worth of retries
            # Nobody was turned away: no waiting client got an EOF, a reset or an echo.
            readable, _, _ = select.select(waiting, [], [], 0)
            assert readable == [], "a client was closed (or served) while fork() failed"
            assert len(children_of(srv.pid)) == 2
            failures = [x for x in srv.lines if "fork() failed" in x]
            assert len(failures) == 1, f"{len(failures)} failure lines in 1 s"
            assert "Resource temporarily unavailable" in failures[0]
            held[0].close()  # a slot frees: the held client is served first, then the rest
            assert waiting[0].recv(100) == b"queued 0"
            srv.wait_for_line("fork\\(\\) works again")
            held[1].close()
            assert waiting[1].recv(100) == b"queued 1"
            for c in waiting:
                c.close()
        finally:
            assert srv.stop() == 0
    assert "Traceback" not in srv.log


# 4. Idle timeout ----------------------------------------------------------------------------


def test_idle_client_is_disconnected_and_activity_resets_the_timer() -> None:
    with running_server("--idle-timeout", "1") as srv:
        idle = connect(srv.port)
        busy = connect(srv.port)
        start = time.monotonic()
        for _ in range(6):  # 2.4 s of activity, never 1 s silent
            assert echo_once(busy, b"tick") == b"tick"
            time.sleep(0.4)
        assert read_until_eof(idle, 5) == b""
        assert time.monotonic() - start > 0.9
        assert echo_once(busy, b"still") == b"still"
        idle.close()
        busy.close()
        srv.wait_for_line("idle timeout")
    statuses = [m.group(3) for m in exit_lines(srv.log)]
    assert statuses.count("idle timeout") == 1


# 5. Stopping: listener first, grace, FIN from the server, SIGKILL for stragglers -------------


def test_sigterm_closes_the_listener_at_once_and_lets_sessions_finish() -> None:
    srv = start_server("--grace", "3")
    try:
        c = connect(srv.port)
        assert echo_once(c, b"before") == b"before"
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for_line("SIGTERM: stopping")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        time.sleep(0.5)
        assert echo_once(c, b"during grace") == b"during grace"
        c.shutdown(socket.SHUT_WR)
        assert read_until_eof(c) == b""
        assert srv.proc.wait(10) == 0
        c.close()
    finally:
        srv.stop()
    assert "asking" not in srv.log  # the session ended by itself within the grace


def test_after_the_grace_children_close_with_fin_and_time_wait_stays_on_the_server_port() -> None:
    srv = start_server("--grace", "0.5")
    clients = [connect(srv.port) for _ in range(5)]
    ours = {c.getsockname()[1] for c in clients}
    for c in clients:
        assert echo_once(c, b"hi") == b"hi"
    srv.proc.send_signal(signal.SIGTERM)
    for c in clients:
        assert read_until_eof(c) == b""  # a FIN: an RST would raise ConnectionResetError
        c.close()
    assert srv.proc.wait(10) == 0
    srv.stop()
    # Only this test's sessions count: a reused port number may hold older TIME_WAIT.
    waiting = tcpstate.read_sockets(srv.port, "local", states=("TIME_WAIT",), addr="127.0.0.1")
    assert {sock.remote_port for sock in waiting} >= ours
    statuses = [m.group(3) for m in exit_lines(srv.log)]
    assert statuses == ["closed by server shutdown"] * 5
    assert srv.log.rstrip().endswith("stopped")


def test_a_child_that_cannot_stop_is_killed_and_reaped() -> None:
    srv = start_server("--grace", "0")
    c = connect(srv.port)
    assert echo_once(c, b"hi") == b"hi"
    (child,) = children_of(srv.pid)
    os.kill(child, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    srv.stop()
    c.close()
    assert process_state(child) == ""
    assert "killed by SIGKILL" in srv.log
    assert "SIGKILL" in srv.log


def test_sigint_stops_like_sigterm() -> None:
    srv = start_server()
    assert srv.stop(signal.SIGINT) == 0
    assert "SIGINT: stopping" in srv.log


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM),
     (signal.SIGTERM, signal.SIGINT), (signal.SIGTERM, signal.SIGQUIT)],
)  # fmt: skip
def test_a_second_stop_signal_ends_the_grace_every_time(first: int, second: int) -> None:
    for _ in range(3):
        srv = start_server("--grace", "3600")
        try:
            c = connect(srv.port)
            assert echo_once(c, b"hi") == b"hi"
            srv.proc.send_signal(first)
            srv.wait_for_line(f"{signal.Signals(first).name}: stopping")
            assert echo_once(c, b"in grace") == b"in grace"
            srv.proc.send_signal(second)
            srv.wait_for_line(f"{signal.Signals(second).name} again: ending the grace period")
            assert read_until_eof(c) == b""  # a FIN: the session was closed in order
            assert srv.proc.wait(10) == 0
            c.close()
        finally:
            srv.stop()
        assert [m.group(3) for m in exit_lines(srv.log)] == ["closed by server shutdown"]


def test_a_third_sigterm_ends_the_wait_before_sigkill() -> None:
    srv = start_server("--grace", "3600")
    c = connect(srv.port)
    assert echo_once(c, b"hi") == b"hi"
    (child,) = children_of(srv.pid)
    os.kill(child, signal.SIGSTOP)  # it cannot act on its SIGTERM
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for_line("SIGTERM: stopping")
    srv.proc.send_signal(signal.SIGTERM)
    srv.wait_for_line("asking 1 session")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    srv.stop()
    c.close()
    log = srv.log
    assert log.index("again: ending the wait for the children") < log.index("SIGKILL")
    assert process_state(child) == ""


def test_sigquit_stops_at_once_and_still_ends_the_children_in_order() -> None:
    srv = start_server("--grace", "3600")
    clients = [connect(srv.port) for _ in range(3)]
    for c in clients:
        assert echo_once(c, b"x") == b"x"
    kids = children_of(srv.pid)
    srv.proc.send_signal(signal.SIGQUIT)
    for c in clients:
        assert read_until_eof(c) == b""  # FIN, not RST: closed in order
        c.close()
    assert srv.proc.wait(10) == 0
    srv.stop()
    assert "SIGQUIT: stopping now, no grace" in srv.log
    assert [m.group(3) for m in exit_lines(srv.log)] == ["closed by server shutdown"] * 3
    assert all(process_state(k) == "" for k in kids), "a child outlived the server"


def test_sigusr1_logs_one_status_line() -> None:
    with running_server("--max-children", "9") as srv, connect(srv.port) as c:
        assert echo_once(c, b"x") == b"x"
        srv.proc.send_signal(signal.SIGUSR1)
        m = srv.wait_for_line(
            r"SIGUSR1: status: (\d+) children \(cap 9\), accepting, (\d+) accepted"
        )
        assert m.groups() == ("1", "1")
        assert echo_once(c, b"still") == b"still"


def test_a_closed_log_pipe_neither_stops_nor_spins_the_server() -> None:
    proc = subprocess.Popen(
        echolab_cmd("serve", "--host", "127.0.0.1", "--port", "0"),
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        ready = parse_ready(proc.stderr.readline())
        assert ready is not None
        proc.stderr.close()  # the reader goes away: each log write now raises SIGPIPE
        for _ in range(3):
            with connect(ready[1]) as c:  # each child's exit is a log line
                assert echo_once(c, b"x") == b"x"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(proc.pid) - cpu_before < 0.2, "the server spun on SIGPIPE"
        with connect(ready[1]) as c:
            assert echo_once(c, b"alive") == b"alive"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        kill_tree(proc)


def test_every_other_catchable_signal_is_ignored_with_a_line_and_kills_nothing() -> None:
    from echolab import server

    ignored = [s for s in server._HANDLED if s not in server._ACTIONS]
    assert signal.SIGUSR2 in ignored and signal.SIGALRM in ignored and signal.SIGPIPE in ignored
    with running_server() as srv, connect(srv.port) as c:
        assert echo_once(c, b"x") == b"x"
        (child,) = children_of(srv.pid)
        for signum in ignored:
            start = len(srv.lines)
            srv.proc.send_signal(signum)
            name = server._SIGNAL_NAMES[signum]
            srv.wait_for_line(f"INFO {re.escape(name)} ignored$", start=start)
        for signum in server._KERNEL_IGNORED:
            srv.proc.send_signal(signum)
        assert srv.proc.poll() is None
        assert children_of(srv.pid) == [child]
        assert echo_once(c, b"unharmed") == b"unharmed"
    assert "Traceback" not in srv.log


# 6. Nothing lost: zombies, descriptors, the listener, one exit line per child -----------------


def test_no_zombie_no_fd_growth_listener_only_in_parent_every_exit_logged_once() -> None:
    with running_server() as srv:
        fds_before = sorted(open_fds(srv.pid))
        inode = listener_inode(srv.port)
        held = [connect(srv.port) for _ in range(20)]
        wait_until(lambda: len(children_of(srv.pid)) == 20, 10, what="20 children")
        for kid in children_of(srv.pid):
            assert f"socket:[{inode}]" not in open_fds(kid), "a child holds the listener"
        for c in held:
            c.close()
        r = run_echolab(
            "load",
            "--target",
            f"127.0.0.1:{srv.port}",
            "--mode",
            "rate",
            "--connections",
            "500",
            "--clients",
            "16",
            "--no-progress",
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: not children_of(srv.pid), 20, what="every child reaped")
        time.sleep(0.2)
        assert [k for k in children_of(srv.pid) if process_state(k) == "Z"] == []
        assert sorted(open_fds(srv.pid)) == fds_before
        owners = tcpstate.socket_owners([inode])
        assert [pid for pid, _ in owners[inode]] == [srv.pid]
        wait_until(lambda: len(exit_lines(srv.log)) >= 520, 10, what="520 exit lines")
    lines = exit_lines(srv.log)
    pids = [m.group(1) for m in lines]
    assert len(pids) == len(set(pids)) >= 520
    assert all(m.group(5) != "?" for m in lines)


def test_json_log_lines_carry_the_fields() -> None:
    import json

    with running_server("--log-format", "json") as srv, connect(srv.port) as c:
        assert echo_once(c, b"abc") == b"abc"
        c.close()
        srv.wait_for_line('"event":"child_exit"')
    entries = [json.loads(x) for x in srv.lines]
    (exit_entry,) = [e for e in entries if e.get("event") == "child_exit"]
    assert exit_entry["bytes"] == 3
    assert exit_entry["status"] == "closed by client"
    assert {"ts", "level", "pid", "msg", "peer", "duration_s"} <= exit_entry.keys()


# 7. Bad input: one line, a distinct exit code, nothing left behind ----------------------------


def _assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert r.returncode == code, r
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]


def test_port_held_by_another_listener_exits_1() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = run_echolab("serve", "--host", "127.0.0.1", "--port", str(port), timeout=20)
    _assert_one_line_error(r, 6, f"127.0.0.1:{port} is already in use", "another socket")


def test_low_port_without_privilege_says_permission_denied() -> None:
    require(os.geteuid() == 0, "needs root to drop CAP_NET_BIND_SERVICE")
    # Root without CAP_NET_BIND_SERVICE (capsh from libcap2-bin when present, else setpriv).
    r = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-net_bind_service",
            "--",
            *echolab_cmd("serve", "--host", "127.0.0.1", "--port", "81"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    _assert_one_line_error(r, 4, "permission denied", "127.0.0.1:81")


def test_bad_arguments_exit_2_in_one_line() -> None:
    r = run_echolab("serve", "--max-children", "zero")
    _assert_one_line_error(r, 2, "echolab serve: error: argument --max-children", "--help")


LONG_LABEL = "x" * 64 + ".example"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["serve", "--backlog", "2147483648"], {}),
        (["serve", "--idle-timeout", "1e19"], {}),
        (["serve", "--grace", "2592000"], {}),  # 30 days: more than epoll_wait() takes
        (["serve", "--host", LONG_LABEL], {}),
        (["load", "--target", f"{LONG_LABEL}:7007", "--duration", "1"], {}),
        (["restart-check", "--host", LONG_LABEL, "--port", "0"], {}),
        (["restart-check", "--target", f"{LONG_LABEL}:7007", "--restart-cmd", "true"], {}),
        (["probe", "--timeout", "1e30"], {}),
        (["load", "--target", "127.0.0.1:1", "--timeout", "1e30", "--duration", "1"], {}),
        (["serve"], {"ECHOLAB_LOG_LEVEL": ""}),
        (["serve"], {"ECHOLAB_LOG_FORMAT": "xml"}),
        (["load", "--target", "127.0.0.1:1", "--duration", "1"], {"ECHOLAB_MODE": "bogus"}),
        (["sockets", "--port", "1", "--json", "/nonexistent/dir/x.json"], {}),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], env: dict[str, str]) -> None:
    if args[0] == "serve":  # were it accepted, it would serve: on a free port, for 30 s
        args = [*args, "--host", "127.0.0.1", "--port", "0"]
    r = run_echolab(*args, env=env, timeout=30)
    _assert_one_line_error(r, 2, f"echolab {args[0]}")


def test_a_subcommand_ignores_the_variables_of_the_others() -> None:
    r = run_echolab("sockets", "--port", "1", env={"ECHOLAB_BACKLOG": "0", "ECHOLAB_MODE": "x"})
    assert r.returncode == 0, r.stderr


def test_log_level_from_the_environment_in_capitals() -> None:
    with running_server(env={"ECHOLAB_LOG_LEVEL": "INFO"}) as srv:
        pass
    assert "Traceback" not in srv.log


def test_the_longest_grace_is_served_and_a_second_sigterm_ends_it() -> None:
    srv = start_server("--grace", "2147483")  # 24.8 days, the most a wait can take
    try:
        c = connect(srv.port)
        assert echo_once(c, b"before") == b"before"
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for_line("SIGTERM: stopping")
        time.sleep(0.3)
        assert srv.proc.poll() is None, "the parent died in its grace"
        assert echo_once(c, b"during grace") == b"during grace"
        srv.proc.send_signal(signal.SIGTERM)
        assert read_until_eof(c) == b""
        assert srv.proc.wait(10) == 0
        c.close()
    finally:
        srv.stop()
    assert "Traceback" not in srv.log
    assert exit_lines(srv.log)[0].group(3) == "closed by server shutdown"


def test_mode_from_the_environment_is_checked_before_any_worker_starts() -> None:
    with running_server() as srv:
        r = run_echolab(
            "load", "--target", f"127.0.0.1:{srv.port}", "--connections", "10",
            env={"ECHOLAB_MODE": "bogus"},
        )  # fmt: skip
        time.sleep(0.2)
    _assert_one_line_error(r, 2, "ECHOLAB_MODE='bogus'")
    assert exit_lines(srv.log) == [], "the load reached the server"


@pytest.mark.parametrize("command", ["load", "restart-check", "sockets"])
def test_an_unwritable_json_destination_fails_before_the_run(command: str, tmp_path: Path) -> None:
    with running_server() as srv:
        args = {
            "load": ["--target", f"127.0.0.1:{srv.port}", "--duration", "30"],
            "restart-check": ["--port", "0"],
            "sockets": ["--port", str(srv.port)],
        }[command]
        r = run_echolab(command, *args, "--json", str(tmp_path / "no" / "such" / "x.json"))
    _assert_one_line_error(r, 2, f"echolab {command}: cannot write --json", "No such file")
    assert exit_lines(srv.log) == [], "the run started"
    assert "listening on" not in r.stdout + r.stderr


def test_probe_reports_refused_in_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        r = run_echolab("probe", "--target", f"127.0.0.1:{port}", "--timeout", "1")
    _assert_one_line_error(r, 1, "refused")


def test_probe_round_trip() -> None:
    with running_server() as srv:
        r = run_echolab("probe", "--target", f"127.0.0.1:{srv.port}")
    assert r.returncode == 0, r.stderr
    assert "echoed intact" in r.stdout


def test_probe_reads_while_it_writes_a_payload_larger_than_every_buffer() -> None:
    with running_server() as srv:
        r = run_echolab(
            "probe", "--target", f"127.0.0.1:{srv.port}", "--payload", "16000000",
            "--timeout", "60", timeout=90,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "16000000 bytes echoed intact" in r.stdout
    (line,) = exit_lines(srv.log)
    assert line.group(5) == "16000000"


# 8. The restart under TIME_WAIT -------------------------------------------------------------


def _stop_with_clients_connected(n: int = 5) -> int:
    srv = start_server("--grace", "0")
    clients = [connect(srv.port) for _ in range(n)]
    for c in clients:
        assert echo_once(c, b"x") == b"x"
    srv.proc.send_signal(signal.SIGTERM)
    for c in clients:
        read_until_eof(c)
        c.close()
    assert srv.stop() == 0
    return srv.port


def test_restart_without_reuseaddr_fails_while_time_wait_lingers_then_with_it_binds() -> None:
    port = _stop_with_clients_connected()
    # The precondition, from /proc/net/tcp: TIME_WAIT sockets on the server's own port.
    assert tcpstate.time_wait_count(port, "local") >= 1
    r = run_echolab("serve", "--host", "127.0.0.1", "--port", str(port), "--no-reuseaddr")
    _assert_one_line_error(r, 6, f"127.0.0.1:{port} is already in use", "TIME_WAIT")
    assert tcpstate.time_wait_count(port, "local") >= 1
    started = time.monotonic()
    with running_server("--port", str(port)) as srv:
        assert time.monotonic() - started < 5
        with connect(port) as c:
            assert echo_once(c, b"after restart") == b"after restart"
    assert "SO_REUSEADDR on" in srv.log


def test_dual_stack_server() -> None:
    with running_server("--host", "::") as srv:
        for host in ("127.0.0.1", "::1"):
            with connect(srv.port, host) as c:
                assert echo_once(c, host.encode()) == host.encode()
    assert f"listening on [::]:{srv.port}" in srv.log


def test_socket_activation_serves_on_the_inherited_listener_and_keeps_it_across_a_reload() -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
            "os.execv(sys.executable, [sys.executable, '-m', 'echolab', 'serve', "
            "'--port', '1'])"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(sock.fileno())],
            pass_fds=(sock.fileno(),),
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"listening on 127.0.0.1:{port} (inherited from systemd" in line
        with connect(port) as c:
            assert echo_once(c, b"activated") == b"activated"
            proc.send_signal(signal.SIGHUP)
            while "reloaded: generation 2" not in line:
                line = proc.stderr.readline()
            line = proc.stderr.readline()
            assert f"listening on 127.0.0.1:{port} (inherited from systemd" in line
            assert echo_once(c, b"adopted") == b"adopted"
        with connect(port) as c:
            assert echo_once(c, b"reloaded") == b"reloaded"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        kill_tree(proc)
