"""`echolab sockets --port P` against what `ss` shows for the same port."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from echolab import tcpstate
from tests.support import (
    connect,
    echolab_cmd,
    run_echolab,
    running_server,
    ss_time_wait,
    wait_until,
)

SS_STATES = {
    "ESTAB": "ESTABLISHED",
    "TIME-WAIT": "TIME_WAIT",
    "FIN-WAIT-1": "FIN_WAIT_1",
    "FIN-WAIT-2": "FIN_WAIT_2",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECV",
    "CLOSING": "CLOSING",
}

needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")


LOOPBACK = ("127.0.0.1:", "[::1]:")


def on_loopback(local: str, remote: str) -> bool:
    """Only loopback sockets are the test's own: the same port number may be in use on
    another address of this host at the same time (another program's outgoing connection)."""
    return local.startswith(LOOPBACK) or remote.startswith(LOOPBACK)


def ss_sockets(port: int) -> Counter[tuple[str, str, str]]:
    """(state, local, remote) of the loopback TCP sockets with `port` at either end, per ss."""
    out = subprocess.run(
        ["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    seen: Counter[tuple[str, str, str]] = Counter()
    for line in out.splitlines():
        fields = line.split()
        state, local, remote = fields[0], fields[3], fields[4]
        remote = re.sub(r":\*$", ":0", remote)
        if on_loopback(local, remote):
            seen[(SS_STATES.get(state, state), local, remote)] += 1
    return seen


def ours(port: int) -> tuple[Counter[tuple[str, str, str]], dict[str, object]]:
    proc = run_echolab("sockets", "--port", str(port), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    sockets = [s for s in report["sockets"] if on_loopback(s["local"], s["remote"])]
    report["server_side"] = dict(Counter(s["state"] for s in sockets if s["side"] == "server"))
    report["client_side"] = dict(Counter(s["state"] for s in sockets if s["side"] == "client"))
    report["sockets"] = sockets
    return Counter((s["state"], s["local"], s["remote"]) for s in sockets), report


@pytest.fixture
def states_zoo() -> Iterator[int]:
    """A port with LISTEN (v4 and v6), ESTABLISHED, server-side TIME_WAIT and CLOSE_WAIT, and
    the client-side FIN_WAIT_2 that goes with the CLOSE_WAIT."""
    keep: list[socket.socket] = []
    # No SO_REUSEADDR: port 0 then never picks a port where other tests left TIME_WAIT.
    for _ in range(20):
        v4 = socket.socket()
        v4.bind(("127.0.0.1", 0))
        port = v4.getsockname()[1]
        v6 = socket.socket(socket.AF_INET6)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            v6.bind(("::1", port))
        except OSError:  # taken on ::1: try another port
            v4.close()
            v6.close()
            continue
        if tcpstate.read_sockets(port, side="any"):
            # Sockets of an earlier test's server on this port number (its clients' TIME_WAIT)
            # would expire during the comparison: take a port nobody has used lately.
            v4.close()
            v6.close()
            continue
        break
    v4.listen()
    v6.listen()
    keep += [v4, v6]
    for listener, host in ((v4, "127.0.0.1"), (v6, "::1")):  # ESTABLISHED both ways
        c = socket.create_connection((host, port))
        a, _ = listener.accept()
        keep += [c, a]
    for _ in range(2):  # the server closes first, the client answers: server-side TIME_WAIT
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = v4.accept()
        a.close()
        assert c.recv(1) == b""
        c.close()
    c = socket.create_connection(("127.0.0.1", port))  # the client closes, the server not yet
    a, _ = v4.accept()
    c.close()
    keep.append(a)
    states = lambda: tcpstate.count_states(port, addr="127.0.0.1")  # noqa: E731
    wait_until(lambda: states().get("TIME_WAIT", 0) == 2, 5, what="TIME_WAIT")
    wait_until(lambda: states().get("CLOSE_WAIT", 0) == 1, 5, what="CLOSE_WAIT")
    try:
        yield port
    finally:
        for s in keep:
            s.close()


@needs_ss
def test_json_view_matches_ss_socket_for_socket(states_zoo: int) -> None:
    port = states_zoo
    mine, report = ours(port)
    assert mine == ss_sockets(port)
    assert report["server_side"] == {
        "LISTEN": 2,
        "ESTABLISHED": 2,
        "CLOSE_WAIT": 1,
        "TIME_WAIT": 2,
    }
    assert report["client_side"] == {"ESTABLISHED": 2, "FIN_WAIT_2": 1}


def test_json_fields_and_time_wait_timer(states_zoo: int) -> None:
    _, report = ours(states_zoo)
    tw = [s for s in report["sockets"] if s["state"] == "TIME_WAIT"]
    assert len(tw) == 2
    for s in tw:
        assert s["side"] == "server" and s["timer"] == "time_wait"
        assert 50 < s["timer_s"] <= 60
        assert s["pids"] == []  # nobody holds a TIME_WAIT socket
    listeners = [s for s in report["sockets"] if s["state"] == "LISTEN"]
    assert {s["family"] for s in listeners} == {"ipv4", "ipv6"}
    assert all(s["pids"] == [os.getpid()] for s in listeners)


def test_text_view_lists_states_and_time_left(states_zoo: int) -> None:
    proc = run_echolab("sockets", "--port", str(states_zoo))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"TCP sockets on port {states_zoo}" in out
    summary = next(line for line in out.splitlines() if "server side" in line)
    for part in ("LISTEN 2", "CLOSE_WAIT 1", "TIME_WAIT 2"):
        assert part in summary
    row = rf"server +TIME_WAIT +127\.0\.0\.1:{states_zoo} +127\.0\.0\.1:\d+ +\d+\.\ds left"
    assert re.search(row, out)
    assert re.search(r"client +FIN_WAIT_2 ", out)


@needs_ss
def test_after_a_server_stop_with_clients_connected() -> None:
    """The lab's lesson seen through `echolab sockets`: stop the server while clients are
    connected and TIME_WAIT sits on the server's port, as `ss` confirms."""
    with running_server("--grace", "0") as srv:
        port = srv.port
        clients = [connect(port) for _ in range(3)]
        for c in clients:
            c.sendall(b"hi")
            assert c.recv(2) == b"hi"
        client_ports = {f"127.0.0.1:{c.getsockname()[1]}" for c in clients}
        srv.proc.terminate()
        for c in clients:
            assert c.recv(1) == b""  # the server's FIN
            c.close()
        srv.proc.wait(10)
    deadline = time.monotonic() + 5
    while tcpstate.time_wait_count(port, addr="127.0.0.1") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    _, report = ours(port)
    # The server (SO_REUSEADDR, port 0) may have been given a port where earlier tests left
    # TIME_WAIT: ours are the ones facing our clients' ports.
    mine = [
        s
        for s in report["sockets"]
        if s["side"] == "server" and s["state"] == "TIME_WAIT" and s["remote"] in client_ports
    ]
    assert len(mine) == 3
    assert set(report["server_side"]) == {"TIME_WAIT"}
    assert ss_time_wait(port) is not None
    assert ss_sockets(port) == ours(port)[0]


def test_empty_port_and_bad_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: not in /proc/net/tcp as LISTEN
        proc = run_echolab("sockets", "--port", str(port))
    assert proc.returncode == 0
    assert f"server side (local port {port}): none" in proc.stdout
    bad = run_echolab("sockets", "--port", "70000")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


# --- the live view -----------------------------------------------------------------------------
def read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side of the terminal is closed
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_watch_on_a_terminal_redraws_with_countdowns(states_zoo: int, sig: int) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        echolab_cmd("sockets", "--port", str(states_zoo), "--watch", "--interval", "0.1"),
        stdin=child, stdout=child, stderr=child,
    )  # fmt: skip
    os.close(child)
    try:
        screen = b""
        while screen.count(b"\x1b[H") < 3:  # three frames drawn
            screen += os.read(main, 65536)
        proc.send_signal(sig)
        assert proc.wait(10) == 0  # the way to end a watch: not an error
        screen += read_all(main)
    finally:
        proc.kill()
        os.close(main)
    text = screen.decode()
    frame = text.rsplit("\x1b[H", 1)[1]
    assert f"TCP sockets on port {states_zoo}" in frame
    assert re.search(r"TIME_WAIT .+ \d+\.\ds left [█░]{10}", frame), frame
    assert text.endswith(
        "\x1b[?25h\r\n"
    )  # the cursor is given back (the terminal turns \\n into \\r\\n)
    assert "Traceback" not in text


def test_watch_without_a_terminal_prints_one_line_per_reading() -> None:
    with running_server("--grace", "0") as srv:
        proc = subprocess.Popen(
            echolab_cmd("sockets", "--port", str(srv.port), "--watch", "--interval", "0.05"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        proc.terminate()
        rest, err = proc.communicate(10)
    assert proc.returncode == 0, err
    for line in lines:
        assert re.match(rf"\d\d:\d\d:\d\d port {srv.port}: server LISTEN 1; client none$", line)
    assert "\x1b" not in "".join(lines) + rest
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [["--json", "-"], ["--interval", "0"]])
def test_watch_bad_combinations_exit_2(args: list[str]) -> None:
    proc = run_echolab("sockets", "--port", "7", "--watch", *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
