"""`echolab restart-check` on loopback: every strategy, the invalid runs, managed mode, signals.

TIME_WAIT lasts 60 s, so every test uses a port of its own (port 0 asks the kernel for one).
The precondition (server-side TIME_WAIT) is checked independently with `ss` where it exists;
processes left behind are checked on the process tree (echolab.proctree).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echolab.proctree import children_of, descendants_of, kill_tree, process_state
from echolab.restartcheck.timeline import Prober, Sampler, Timeline
from echolab.tcpstate import read_sockets
from tests.support import ROOT, echolab_cmd, require, run_echolab, ss_time_wait, wait_until

KEYS = {"schema", "strategy", "reuseaddr", "time_wait_at_restart", "rebind", "restart_ms",
        "refused_during_restart", "verdict", "links", "timeline", "probes", "queue"}  # fmt: skip


def restart_check(*args: str, timeout: float = 90) -> tuple[int, dict[str, Any], str]:
    proc = run_echolab("restart-check", *args, "--json", "-", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= KEYS or "compare" in data
    return proc.returncode, data, proc.stderr


def port_of(data: dict[str, Any]) -> int:
    return int(data["target"].rsplit(":", 1)[1])


def events(data: dict[str, Any]) -> list[str]:
    return [e["event"] for e in data["timeline"]["events"]]


def test_with_reuseaddr_the_restart_binds_under_time_wait() -> None:
    status, data, _ = restart_check("--port", "0", "--clients", "5")
    assert status == 0, data["reason"]
    assert data["strategy"] == "stop-start" and data["reuseaddr"] is True
    # (a) the restart: another listening socket took the port
    assert data["listeners_before"] and data["listeners_after"]
    assert not set(data["listeners_before"]) & set(data["listeners_after"])
    assert data["server_pid_before"] != data["server_pid_after"]
    # (b) TIME_WAIT from these sessions just before and just after the bind
    assert data["time_wait_before_bind"] == data["time_wait_after_bind"] == 5
    assert data["time_wait_at_restart"] == 5
    # (c) the outcome
    assert data["rebind"] == "ok" and data["echoed_after"] is True
    assert data["restart_ms"] >= data["rebind_ms"] >= 0
    assert data["verdict"] == "pass"
    assert [link["ok"] for link in data["links"].values()] == [True, True, True]
    # the timeline: marks in order, samples every ~10 ms, probes with outcomes
    assert events(data)[:1] == ["restart"]
    order = [e for e in events(data) if e in ("stop", "old_exited", "bound", "first_echo")]
    assert order == ["stop", "old_exited", "bound", "first_echo"]
    samples = data["timeline"]["samples"]
    assert len(samples) >= 10
    assert any(s["LISTEN"] == 0 for s in samples)  # the gap between the two servers
    assert {p["outcome"] for p in data["timeline"]["probes"]} >= {"ok"}
    seen = ss_time_wait(port_of(data))  # an independent witness
    if seen is not None:
        assert seen >= 5


def test_without_reuseaddr_the_restart_gets_eaddrinuse_by_exit_status() -> None:
    status, data, _ = restart_check("--port", "0", "--clients", "3", "--no-reuseaddr")
    assert status == 0, data["reason"]
    assert data["reuseaddr"] is False
    assert data["time_wait_at_restart"] >= 3
    assert data["rebind"] == "EADDRINUSE"
    assert data["new_server_status"] == 6  # errors.EXIT_ADDR_IN_USE, not a sentence
    assert data["listeners_after"] == []
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
    assert not data["time_wait_at_restart"]
    assert data["client_side_time_wait"] == 5  # TIME_WAIT went to the clients' ports
    assert data["rebind"] == "ok"  # nothing to collide with, even without SO_REUSEADDR
    assert data["verdict"] == "invalid"


def test_table_output_reads_at_a_glance() -> None:
    proc = run_echolab("restart-check", "--port", "0", "--clients", "2")
    assert proc.returncode == 0, proc.stderr
    for label in ("restart", "TIME_WAIT", "new server", "probes", "queue", "verdict"):
        assert f"\n  {label} " in proc.stdout
    assert "PASS" in proc.stdout


def test_a_slow_start_is_reported_not_failed_unless_a_limit_is_asked() -> None:
    """The verdict never depends on the machine's speed; --rebind-limit is an opt-in."""
    status, data, _ = restart_check("--port", "0", "--clients", "2")
    assert status == 0 and data["rebind_limit_ms"] is None
    status, data, _ = restart_check("--port", "0", "--clients", "2", "--rebind-limit", "1ms")
    assert status == 1, data["reason"]  # no Python server binds within 1 ms of the stop
    assert "over --rebind-limit" in data["reason"]


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
    [
        ["--restart-cmd", "true"],
        ["--target", "127.0.0.1:7"],
        ["--clients", "0"],
        ["--strategy", "reload", "--restart-cmd", "true", "--target", "127.0.0.1:7"],
        ["--strategy", "reload", "--log-cmd", "true"],
        ["--log-cmd", "true", "--restart-cmd", "true", "--target", "127.0.0.1:7"],
        [
            "--strategy",
            "reload",
            "--log-cmd",
            " ",
            "--restart-cmd",
            "true",
            "--target",
            "127.0.0.1:7",
        ],
        ["--strategy", "reuseport", "--no-reuseaddr"],
        ["--migrate-req", "on"],
        ["--compare", "--restart-cmd", "true", "--target", "127.0.0.1:7"],
        ["--plot", "out.gif"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = run_echolab("restart-check", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("echolab restart-check"), proc.stderr


def test_an_unwritable_json_path_fails_before_the_run(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_echolab("restart-check", "--port", "0", "--json", str(tmp_path / "no/such/x.json"))
    assert proc.returncode == 2, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # nothing ran: no table
    del started


# --- the other strategies --------------------------------------------------------------------
def test_reuseport_the_new_listener_joins_before_the_old_one_goes() -> None:
    status, data, _ = restart_check("--port", "0", "--strategy", "reuseport")
    assert data["overlap"] is True, data["reason"]  # two listeners on the port at once
    assert data["links"]["restart"]["ok"] is True
    assert data["no_listener_ms"] == 0
    assert data["probes"]["refused"] == 0
    assert data["server_pid_before"] != data["server_pid_after"]
    # With tcp_migrate_req off (the host's default), whatever waited in the old queue is
    # reset; the verdict follows (pass only when nobody was turned away).
    lost = data["queue"]["reset"] + data["probes"]["reset"]
    assert (status, data["verdict"]) == ((1, "fail") if lost else (0, "pass"))


@pytest.mark.parametrize(("knob", "lost"), [("off", True), ("on", False)])
def test_reuseport_tcp_migrate_req_decides_the_fate_of_the_old_accept_queue(
    knob: str, lost: bool
) -> None:
    require(os.geteuid() == 0, "a network namespace of our own needs root")
    status, data, _ = restart_check("--strategy", "reuseport", "--migrate-req", knob)
    assert data["netns"] == {"own": True, "tcp_migrate_req": int(knob == "on")}
    q = data["queue"]
    assert q["queued"] == q["clients"] == 4  # all waited in the old listener's accept queue
    if lost:
        assert q["reset"] == 4 and q["echoed"] == 0
        assert status == 1 and data["verdict"] == "fail"
    else:
        assert q["echoed"] == 4 and q["reset"] == 0
        assert data["probes"]["reset"] == 0 and data["probes"]["refused"] == 0
        assert status == 0 and data["verdict"] == "pass", data["reason"]


def test_socket_activation_the_listener_outlives_the_server() -> None:
    require(shutil.which("systemd-socket-activate") is not None,
            "systemd-socket-activate is not installed (Debian: systemd)")  # fmt: skip
    status, data, _ = restart_check("--port", "0", "--strategy", "socket-activation")
    assert status == 0, data["reason"]
    assert data["listeners_before"] == data["listeners_after"]  # the same socket throughout
    assert data["server_pid_before"] != data["server_pid_after"]
    assert data["details"]["holder_pid"] in data["owners_before"]
    assert data["no_listener_ms"] == 0 and data["probes"]["refused"] == 0
    assert data["queue"]["echoed"] == data["queue"]["queued"] == 4  # the queue survived
    assert data["rebind"] == "inherited"
    assert data["time_wait_at_restart"] >= 1  # it lingered, and did not matter


def test_reload_keeps_the_process_and_listener_and_logs_a_new_generation() -> None:
    """The reload's evidence is a new generation in the server's log, with the same PID and
    listener; the held sessions outlive it. (A reload without a new generation, or under
    another PID, is judged invalid: the judge's table in tests/unit/test_restart_judge.py.)"""
    status, data, _ = restart_check("--port", "0", "--strategy", "reload")
    assert status == 0, data["reason"]
    assert (data["generation_before"], data["generation_after"]) == (1, 2)
    assert data["server_pid_before"] == data["server_pid_after"] is not None
    assert data["listeners_before"] == data["listeners_after"] != []
    assert data["no_listener_ms"] == 0 and data["probes"]["refused"] == 0
    assert data["sessions_survived"] == data["clients"] == 5
    assert data["rebind"] == "ok" and data["verdict"] == "pass"
    assert f"generation 1 -> 2, same PID {data['server_pid_before']}" in data["reason"]


def test_compare_runs_every_strategy_and_prints_one_table(tmp_path: Path) -> None:
    plot, json_file = tmp_path / "compare.png", tmp_path / "compare.json"
    proc = run_echolab("restart-check", "--compare", "--clients", "3", "--json", str(json_file),
                       "--plot", str(plot), timeout=240)  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(json_file.read_text())
    names = [(r["strategy"], r["reuseaddr"]) for r in data["compare"]]
    assert names[:2] == [("stop-start", True), ("stop-start", False)]
    assert ("reuseport", True) in names and ("reload", True) in names
    by = {r["strategy"] + str(r["reuseaddr"]): r for r in data["compare"]}
    assert by["stop-startTrue"]["verdict"] == "pass"
    assert by["stop-startFalse"]["rebind"] == "EADDRINUSE"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if "strategy" in line)
    for column in ("refused", "reset", "connect p99", "no listener", "TIME_WAIT at bind"):
        assert column in header
    rows = [line for line in lines if re.match(r"  stop-start(, no SO_REUSEADDR)? +PASS ", line)]
    assert len(rows) == 2, proc.stdout
    assert len(re.findall(r"restart-check \d/\d: ", proc.stderr)) == len(data["compare"])


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_plot_draws_the_timeline(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"timeline{suffix}"
    proc = run_echolab("restart-check", "--port", "0", "--plot", str(path))
    assert proc.returncode == 0, proc.stderr
    data = path.read_bytes()
    assert len(data) > 10_000
    if suffix == ".svg":
        text = data.decode()
        for words in ("TIME_WAIT", "LISTEN", "first echo", "refused", "stop"):
            assert words in text, words
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


# --- managed mode: a server run by "something else" (a pid file and a shell command) ----------
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


def serve_command(port: int, *extra: str) -> str:
    return shlex.join([sys.executable, "-m", "echolab", "serve", "--host", "127.0.0.1",
                       "--port", str(port), "--grace", "0", *extra])  # fmt: skip


def start_command(port: int, pidfile: Path, host: str, *extra: str) -> str:
    """Start a server detached (the shell exits at once, so the server is re-parented away
    from pytest: no zombie for `kill -0` to mistake for a live process); its PID to pidfile."""
    return (
        f"cd {shlex.quote(str(ROOT))}; {serve_command(port, '--host', host, *extra)} "
        "</dev/null >/dev/null 2>&1 & "
        f"echo $! > {pidfile}"
    )


def stop_command(pidfile: Path) -> str:
    """Stop the server in pidfile and wait for it to exit: a zombie counts as gone (whoever
    adopted it may be slow to reap it, and `kill -0` would still succeed)."""
    return (
        f'pid=$(cat {pidfile}); kill -TERM "$pid"; '
        f'while [ -r /proc/$pid/stat ] && [ "$(cut -d" " -f3 /proc/$pid/stat)" != Z ]; '
        f"do sleep 0.01; done; "
    )


def reporting_restart(port: int, pidfile: Path, *extra: str) -> str:
    """A restart command that reports as the role's restart-service does: stop the server,
    start the next one, exit 0 once it echoes, or with its own exit status when it exits
    first (`echolab serve` exits 6 on EADDRINUSE), as `systemctl restart` then the unit's
    ExecMainStatus do."""
    probe = shlex.join([sys.executable, "-m", "echolab", "probe", "--quiet", "--timeout", "1",
                        "--target", f"127.0.0.1:{port}"])  # fmt: skip
    return (
        f"{stop_command(pidfile)}cd {shlex.quote(str(ROOT))}; "
        f"{serve_command(port, *extra)} </dev/null >/dev/null 2>&1 & pid=$!; "
        f"echo $pid > {pidfile}; "
        # The shell may have reaped it already (no /proc entry); `wait` still has its status.
        f"until {probe}; do if [ ! -r /proc/$pid/stat ] || "
        f'[ "$(cut -d" " -f3 /proc/$pid/stat 2>/dev/null)" = Z ]; then wait "$pid"; exit $?; fi; '
        "sleep 0.05; done"
    )


@pytest.fixture(params=["127.0.0.1", "0.0.0.0"])
def managed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, str, Path]]:
    """A server started outside restart-check (detached, as a service manager would run it),
    and a shell command that restarts it; listening on loopback, or on every address as
    services do (the target stays 127.0.0.1: the wildcard listener must still be seen)."""
    port = free_port()
    pidfile = tmp_path / "server.pid"
    host: str = request.param
    start = start_command(port, pidfile, host)
    subprocess.run(["sh", "-c", start], check=True)
    wait_until(lambda: listening(port), 10, what=f"a server on port {port}")
    try:
        yield port, stop_command(pidfile) + start, pidfile
    finally:
        stop_pid(int(pidfile.read_text()))


def stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: process_state(pid) in ("", "Z"), 10, what="server exit")
    except ProcessLookupError:
        pass
    except AssertionError:
        kill_tree(pid)


def test_an_owner_scan_after_the_engines_reading_finds_the_listeners_process() -> None:
    """The engine takes the reading at the restart and asks at once who holds the listeners.
    The sampler's thread may not have taken a reading of its own by then (a loaded machine):
    the scan must look for the listeners of the engine's reading, not of none (a reload run
    then saw no holder before the SIGHUP and was invalid, 1 run in 30)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        inode = os.fstat(srv.fileno()).st_ino
        # Never started: its thread has taken no reading, as on a machine too busy to run it.
        sampler = Sampler(Timeline(), srv.getsockname()[1], "127.0.0.1")
        assert sampler.sample_now("restart").listeners == (inode,)
        assert sampler.scan_owners() == {inode: (os.getpid(),)}
        assert sampler.timeline.owners[-1][1] == {inode: (os.getpid(),)}


def start_listening(port: int, *extra: str) -> subprocess.Popen[bytes]:
    """`echolab serve` on `port` (outside restart-check), once it listens."""
    server = subprocess.Popen(
        ["sh", "-c", f"exec {serve_command(port, *extra)}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    try:
        wait_until(lambda: listening(port), 10, what=f"a server on port {port}")
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server


def test_probes_close_with_a_reset_and_leave_no_time_wait() -> None:
    """A probe must never leave TIME_WAIT, on its side or the server's: one on the server's
    port made a later bind without SO_REUSEADDR fail that this run's sessions did not block
    (SO_LINGER was {1, 1}: an orderly close, not a reset)."""
    port = free_port()
    server = start_listening(port)
    try:

        def time_wait() -> tuple[int, int]:  # (server's side, clients' side)
            return (len(read_sockets(port, "local", states=("TIME_WAIT",))),
                    len(read_sockets(port, "remote", states=("TIME_WAIT",))))  # fmt: skip

        # listening()'s own connection closes in order: let it reach TIME_WAIT first.
        wait_until(lambda: {s.state for s in read_sockets(port, "remote")} <= {"TIME_WAIT"}, 10,
                   what="the check's connection to settle")  # fmt: skip
        before = time_wait()
        timeline = Timeline()
        prober = Prober(timeline, socket.AF_INET, ("127.0.0.1", port), 5.0)
        prober.start()
        time.sleep(0.5)
        prober.stop()
        after = time_wait()
    finally:
        server.terminate()
        server.wait(10)
    outcomes = [p.outcome for p in timeline.probes]
    assert outcomes.count("ok") >= 10, outcomes
    assert after == before, f"{len(outcomes)} probes left TIME_WAIT: {before} -> {after}"


def test_managed_mode_measures_a_restart_from_the_outside(
    managed: tuple[int, str, Path],
) -> None:
    port, restart, pidfile = managed
    old_pid = pidfile.read_text()
    status, data, _ = restart_check("--restart-cmd", restart, "--target", f"127.0.0.1:{port}")
    assert status == 0, data["reason"]
    assert pidfile.read_text() != old_pid  # it really restarted
    assert data["mode"] == "managed" and data["backend"] == "command"
    assert int(old_pid) in data["owners_before"]
    assert int(pidfile.read_text()) in data["owners_after"]
    assert data["time_wait_at_restart"] >= 5
    assert data["closed_by_server"] == 5
    assert data["rebind"] == "ok" and data["verdict"] == "pass"
    assert data["restart_cmd_status"] == 0


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


def test_managed_mode_without_reuseaddr_the_failed_restart_passes_by_exit_status(
    managed: tuple[int, str, Path],
) -> None:
    """The negative control from the outside (the role's host with reuseaddr off): the next
    server, started without SO_REUSEADDR, exits 6 on EADDRINUSE and never listens. No bind
    moment to sample at: the bind attempt's window (old server gone to failure seen) is."""
    port, _, pidfile = managed
    restart = reporting_restart(port, pidfile, "--no-reuseaddr")
    status, data, _ = restart_check(
        "--restart-cmd", restart, "--target", f"127.0.0.1:{port}", "--no-reuseaddr"
    )
    assert status == 0, data["reason"]
    assert data["restart_cmd_status"] == 6  # errors.EXIT_ADDR_IN_USE, the new server's own
    assert data["rebind"] == "EADDRINUSE" and "exited 6" in data["rebind_evidence"]
    assert data["listeners_after"] == [] and not listening(port)
    assert data["time_wait_before_bind"] >= 5 and data["time_wait_after_bind"] >= 5
    assert data["time_wait_at_restart"] == 5
    window = data["details"]["bind_attempt"]
    assert window["from_ms"] <= window["to_ms"]
    assert {"restart_failed", "bind_attempt"} <= set(events(data))
    assert "at the bind attempt" in data["links"]["time_wait"]["evidence"]
    assert data["verdict"] == "pass" and data["expected"].startswith("EADDRINUSE")


def test_managed_mode_eaddrinuse_from_time_wait_not_of_this_run_is_invalid(
    tmp_path: Path,
) -> None:
    """A real EADDRINUSE (the next server exits 6), but the TIME_WAIT it collided with is an
    earlier session's, not this run's (its clients closed first): that proves nothing."""
    port = free_port()
    pidfile = tmp_path / "server.pid"
    subprocess.run(["sh", "-c", start_command(port, pidfile, "127.0.0.1", "--idle-timeout", "0.5")],
                   check=True)  # fmt: skip
    try:
        wait_until(lambda: listening(port), 10, what=f"a server on port {port}")
        # An earlier session the server ends itself (idle timeout): TIME_WAIT on its port.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as earlier:
            earlier.settimeout(5)
            assert earlier.recv(1) == b""  # the server's FIN
        wait_until(lambda: (ss_time_wait(port) or 0) >= 1 or not shutil.which("ss"), 5,
                   what="the earlier session's TIME_WAIT")  # fmt: skip
        restart = reporting_restart(port, pidfile, "--no-reuseaddr")
        status, data, _ = restart_check("--restart-cmd", restart, "--target",
                                        f"127.0.0.1:{port}", "--no-reuseaddr",
                                        "--close-first", "client")  # fmt: skip
    finally:
        stop_pid(int(pidfile.read_text()))
    assert data["restart_cmd_status"] == 6 and data["rebind"] == "EADDRINUSE"  # real, and...
    assert data["time_wait_before"] >= 1  # ...caused by the earlier session's TIME_WAIT
    assert not data["time_wait_at_restart"]
    assert data["links"]["restart"]["ok"] is True
    assert data["links"]["time_wait"]["ok"] is False
    assert status == 3, data["reason"]
    assert data["verdict"] == "invalid" and "the clients closed first" in data["reason"]


def test_managed_socket_activation_hands_the_listener_to_the_next_server(tmp_path: Path) -> None:
    """--strategy socket-activation from the outside (the role's hosts with a socket unit):
    a socket holder run by something else restarts its server when told; the listener
    outlives it and nobody is turned away."""
    require(shutil.which("systemd-socket-activate") is not None,
            "systemd-socket-activate is not installed (Debian: systemd)")  # fmt: skip
    port, pidfile = free_port(), tmp_path / "server.pid"
    serve = shlex.join([sys.executable, "-m", "echolab", "serve", "--grace", "0"])
    loop = (f'while :; do sh -c "export LISTEN_PID=\\$\\$; echo \\$\\$ > {pidfile}; '
            f'exec {serve}"; sleep 0.2; done')  # fmt: skip
    holder = subprocess.Popen(
        ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--", "sh", "-c", loop],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    restart = (f'old=$(cat {pidfile}); kill -TERM "$old"; '
               f'while [ "$(cat {pidfile})" = "$old" ]; do sleep 0.02; done')  # fmt: skip
    try:
        wait_until(lambda: listening(port) and pidfile.exists(), 10, what="the first server")
        old_pid = int(pidfile.read_text())
        status, data, _ = restart_check("--strategy", "socket-activation", "--restart-cmd",
                                        restart, "--target", f"127.0.0.1:{port}")  # fmt: skip
        new_pid = int(pidfile.read_text())
    finally:
        os.killpg(holder.pid, signal.SIGTERM)  # the holder, its loop and the server
        holder.wait(10)
        if pidfile.exists():
            stop_pid(int(pidfile.read_text()))
    assert status == 0, data["reason"]
    assert data["listeners_before"] == data["listeners_after"]  # the same socket throughout
    assert old_pid in data["owners_before"] and new_pid in data["owners_after"]
    assert old_pid not in data["owners_after"]
    assert data["no_listener_ms"] == 0 and data["probes"]["refused"] == 0
    assert data["rebind"] == "ok" and data["verdict"] == "pass"
    assert "passed from PID" in data["links"]["restart"]["evidence"]


def test_managed_mode_with_a_command_that_restarts_nothing_is_invalid(
    managed: tuple[int, str, Path],
) -> None:
    port, _, _ = managed
    status, data, _ = restart_check("--restart-cmd", "true", "--target", f"127.0.0.1:{port}")
    assert status == 3, data
    assert data["closed_by_server"] == 0
    assert "no restart observed" in data["reason"]


@pytest.fixture(params=["text", "json"])
def logging_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[int, int, Path]]:
    """A server started outside restart-check whose log goes to a file, as a service's goes to
    its journal: (port, PID, log file), in either log format."""
    port, log = free_port(), tmp_path / "server.log"
    argv = [sys.executable, "-m", "echolab", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--grace", "0", "--log-level", "info", "--log-format", request.param]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  cwd=ROOT, start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: listening(port), 10, what=f"a server on port {port}")
        yield port, server.pid, log
        assert server.poll() is None, "the server did not survive the run"
    finally:
        kill_tree(server, signal.SIGTERM)
        server.wait(10)


def test_managed_reload_is_judged_by_the_log_the_pid_and_the_listener(
    logging_server: tuple[int, int, Path],
) -> None:
    """--strategy reload from the outside (the role's `systemctl reload`): the restart command
    sends SIGHUP, --log-cmd prints the server's log, where the new generation shows; the same
    PID holds the same listener before and after, and nobody is turned away."""
    port, pid, log = logging_server
    reload_args = ["--strategy", "reload", "--restart-cmd", f"kill -HUP {pid}",
                   "--log-cmd", f"cat {log}", "--target", f"127.0.0.1:{port}"]  # fmt: skip
    status, data, _ = restart_check(*reload_args)
    assert status == 0, data["reason"]
    assert data["mode"] == "managed" and data["restart_cmd_status"] == 0
    assert (data["generation_before"], data["generation_after"]) == (1, 2)
    assert data["reload_pid"] == pid  # the reload line came from the server's own process
    assert data["owners_before"] == data["owners_after"] == [pid]
    assert data["server_pid_before"] == data["server_pid_after"] == pid
    assert data["listeners_before"] == data["listeners_after"] != []
    assert data["no_listener_ms"] == 0 and data["probes"]["refused"] == 0
    assert data["probes"]["reset"] == 0 and data["sessions_survived"] == 5
    assert data["rebind"] == "ok" and data["verdict"] == "pass"
    assert "bound" in events(data)
    assert f"generation 1 -> 2, same PID {pid}" in data["reason"]
    assert re.search(r"reloaded: generation 2, \d+ children adopted", log.read_text())
    # A second run starts from the generation the log shows now.
    status, data, _ = restart_check(*reload_args)
    assert status == 0, data["reason"]
    assert (data["generation_before"], data["generation_after"]) == (2, 3)


def test_managed_reload_whose_command_does_not_reload_is_invalid(
    logging_server: tuple[int, int, Path],
) -> None:
    """The restart command exits 0 but reloads nothing: no new generation in the log, so no
    reload was observed and the run proves nothing (exit 3), however well the server echoed."""
    port, pid, log = logging_server
    status, data, _ = restart_check("--strategy", "reload", "--restart-cmd", "true", "--log-cmd",
                                    f"cat {log}", "--target", f"127.0.0.1:{port}",
                                    "--timeout", "2")  # fmt: skip
    assert status == 3, data["reason"]
    assert data["verdict"] == "invalid" and data["links"]["restart"]["ok"] is False
    assert (data["generation_before"], data["generation_after"]) == (1, 1)
    assert data["owners_before"] == data["owners_after"] == [pid]  # the same process served on
    assert data["probes"]["refused"] == 0 and data["echoed_after"] is True
    assert "no new generation in the server's log" in data["reason"]
    assert "no_reload" in events(data)
    assert "reloaded" not in log.read_text()


def test_managed_reload_with_a_failing_log_command_is_one_line_exit_2(
    logging_server: tuple[int, int, Path],
) -> None:
    port, pid, _ = logging_server
    proc = run_echolab("restart-check", "--strategy", "reload", "--restart-cmd",
                       f"kill -HUP {pid}", "--log-cmd", "echo nope >&2; exit 4", "--target",
                       f"127.0.0.1:{port}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "echolab restart-check: the log command (--log-cmd) exited 4: nope"
    ]


def test_a_restart_that_never_happened_is_not_certified(tmp_path: Path) -> None:
    """A live server whose idle timeout closes the held clients (FIN, TIME_WAIT on its port)
    while the "restart" command only sleeps: the same listener served throughout, so the run
    is invalid (it used to PASS, "bound 3 ms after the old server was gone")."""
    port = free_port()
    server = start_listening(port, "--idle-timeout", "1")
    try:
        status, data, _ = restart_check("--restart-cmd", "sleep 2", "--target", f"127.0.0.1:{port}")
        assert server.poll() is None  # the same process served throughout
    finally:
        server.terminate()
        server.wait(10)
    assert data["closed_by_server"] == 5  # the idle timeout's FINs...
    assert data["time_wait_from_clients"] == 5  # ...left TIME_WAIT on the server's port
    assert status == 3, data["reason"]
    assert data["verdict"] == "invalid"
    assert data["links"]["restart"]["ok"] is False
    assert data["listeners_before"] == data["listeners_after"]
    assert "no restart observed" in data["reason"]


def test_a_restart_command_outliving_the_timeout_is_stopped_with_its_group(
    managed: tuple[int, str, Path], tmp_path: Path
) -> None:
    port, _, _ = managed
    marker = tmp_path / "ignoring-term"
    command = f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 30' & echo $! > {marker}; sleep 30"
    json_file = tmp_path / "r.json"
    proc = run_echolab("restart-check", "--restart-cmd", command, "--target",
                       f"127.0.0.1:{port}", "--timeout", "2", "--json", str(json_file))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not finish within 2 s" in lines[0], proc.stderr
    child = int(marker.read_text())
    assert process_state(child) in ("", "Z")  # its whole group is gone, SIGTERM-proof or not
    assert json.loads(json_file.read_text())["verdict"] == "error"  # nothing is lost


# --- signals: everything restart-check started dies with it ----------------------------------
def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        echolab_cmd("restart-check", *args),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                           (signal.SIGHUP, 129)])  # fmt: skip
def test_a_signal_mid_restart_stops_the_restart_command_and_reports(
    managed: tuple[int, str, Path], tmp_path: Path, sig: int, code: int
) -> None:
    port, _, _ = managed
    json_file = tmp_path / "r.json"
    proc = spawn("--restart-cmd", "sleep 60", "--target", f"127.0.0.1:{port}", "--timeout",
                 "120", "--json", str(json_file))  # fmt: skip
    try:
        wait_until(lambda: any(_cmdline(p) == "sleep 60" for p in descendants_of(proc.pid)), 20,
                   what="the restart command")  # fmt: skip
        tree = descendants_of(proc.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        kill_tree(proc)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert [p for p in tree if process_state(p) not in ("", "Z")] == []
    data = json.loads(json_file.read_text())
    assert data["interrupted"] is True and data["verdict"] == "interrupted"
    assert "verdict" in out and "INTERRUPTED" in out  # the summary so far


def freeze_then_terminate(proc: subprocess.Popen[str], server: int) -> tuple[str, str]:
    """SIGSTOP the server restart-check waits for, then SIGTERM restart-check."""
    os.kill(server, signal.SIGSTOP)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)


def test_sigterm_in_local_mode_leaves_no_server_behind(tmp_path: Path) -> None:
    """It used to exit 143 silently with its server still listening, re-parented to PID 1."""
    json_file = tmp_path / "r.json"
    proc = spawn("--port", "0", "--timeout", "60", "--json", str(json_file))
    try:
        # Freeze the first server before it listens: restart-check waits for it, mid-run. Only
        # once it runs `serve`: a child frozen between fork() and exec() would hold its parent
        # inside subprocess.Popen, waiting for the exec's outcome, which no user ever sees.
        def server_started() -> list[int]:
            return [p for p in children_of(proc.pid) if "serve" in _cmdline(p).split()]

        wait_until(server_started, 20, interval=0.001, what="the server")
        server = server_started()[0]
        _, err = freeze_then_terminate(proc, server)
    finally:
        kill_tree(proc)
    assert proc.returncode == 143, err
    assert process_state(server) in ("", "Z"), "the server outlived restart-check"
    assert "Traceback" not in err
    assert json.loads(json_file.read_text())["interrupted"] is True


def test_sigterm_after_the_stop_leaves_no_server_behind(tmp_path: Path) -> None:
    """The same mid-restart: held clients connected, the old server stopped, the new one
    starting (frozen here, so that restart-check is surely waiting for it)."""
    json_file = tmp_path / "r.json"
    proc = spawn("--port", "0", "--timeout", "60", "--json", str(json_file))
    try:
        first = []

        def second_server() -> int | None:
            # restart-check's own children (a server's session children are its grandchildren)
            servers = [p for p in children_of(proc.pid) if "serve" in _cmdline(p).split()]
            if not first:
                first.extend(servers[:1])
            return next((p for p in servers if p not in first), None)

        wait_until(lambda: second_server() is not None, 30, interval=0.001, what="the new server")
        new = second_server()
        assert new is not None
        out, err = freeze_then_terminate(proc, new)
    finally:
        kill_tree(proc)
    assert proc.returncode == 143, err
    assert process_state(new) in ("", "Z") and process_state(first[0]) in ("", "Z")
    assert "INTERRUPTED" in out
    data = json.loads(json_file.read_text())
    assert data["interrupted"] is True
    assert "stop" in events(data) and "bound" not in events(data)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
