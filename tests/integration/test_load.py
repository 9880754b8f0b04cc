"""`echolab load` on loopback: against `echolab serve`, and against broken echo servers that it
must catch (a wrong byte, a short echo, resets, silence)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from echolab import tcpstate
from echolab.proctree import children_of
from tests.support import ROOT, echolab_cmd, run_echolab, running_server

ERROR_KINDS = {"refused", "reset", "timeout", "short_echo", "wrong_echo"}

# A deliberately broken echo server (one thread per client), in one of these modes:
#   wrong: flips byte 10 of every connection's stream; short: echoes half, then closes;
#   reset: answers with a reset; flaky: resets every other connection, echoes the rest;
#   silent: reads and never answers.
BROKEN_SERVER = r"""
import socket, struct, sys, threading
mode = sys.argv[1]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)

def serve(conn, index):
    seen = 0
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            if mode == "silent":
                continue
            if mode == "reset" or (mode == "flaky" and index % 2):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            if mode == "short":
                conn.sendall(data[: len(data) // 2])
                break
            if mode == "wrong" and seen <= 10 < seen + len(data):
                flipped = bytearray(data)
                flipped[10 - seen] ^= 0xFF
                data = bytes(flipped)
            seen += len(data)
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()

index = 0
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn, index), daemon=True).start()
    index += 1
"""


@contextmanager
def broken_server(mode: str) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BROKEN_SERVER, mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, f"broken server said {line!r}"
        yield int(m.group(1))
    finally:
        proc.kill()
        proc.wait(5)


def load_json(*args: str, timeout: float = 60.0) -> tuple[int, dict[str, Any], str]:
    """Run `echolab load ARGS --json -`; return (status, the JSON, stderr)."""
    proc = run_echolab("load", *args, "--json", "-", "--no-progress", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def assert_schema(data: dict[str, Any], mode: str) -> None:
    assert data["mode"] == mode
    assert re.fullmatch(r"127\.0\.0\.1:\d+", data["target"])
    for key in ("duration_s", "conn_per_s", "mib_per_s"):
        assert isinstance(data[key], float | int) and data[key] >= 0, key
    for key in ("connections_ok", "bytes_verified", "errors_total"):
        assert isinstance(data[key], int) and data[key] >= 0, key
    assert set(data["errors"]) >= ERROR_KINDS
    assert all(isinstance(n, int) for n in data["errors"].values())
    assert sum(data["errors"].values()) == data["errors_total"]
    percentiles = {"p50", "p90", "p99", "p99.9", "p99.99", "max"}
    assert set(data["latency_ms"]) == percentiles
    assert set(data["connect_latency_ms"]) == percentiles
    buckets = data["latency_histogram"]["buckets"]
    assert sum(n for _, _, n in buckets) == data["latency_samples"]
    assert all(lo <= hi for lo, hi, _ in buckets)
    assert data["loop"] == "closed" and data["schedule"] is None
    assert isinstance(data["passed"], bool)
    assert data["interrupted"] is False and data["signal"] is None


# --- against echolab serve ------------------------------------------------------------------
def test_rate_mode_verifies_every_connection() -> None:
    with running_server() as srv:
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{srv.port}",
            "--connections", "400", "--clients", "16", "--payload", "100", "--seed", "5",
        )  # fmt: skip
    assert status == 0, data
    assert_schema(data, "rate")
    assert data["connections_ok"] == 400
    assert data["errors_total"] == 0
    assert data["bytes_verified"] == 400 * 100
    assert data["seed"] == 5
    lat = data["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert data["latency_samples"] == 400  # one per connection: connect + echo
    assert data["connect_latency_ms"]["p50"] <= lat["max"]
    assert data["conn_per_s"] == pytest.approx(400 / data["duration_s"], rel=0.01)
    assert data["passed"] is True


def test_rate_mode_large_payload_is_read_while_written() -> None:
    """A payload larger than the socket buffers only completes if reads overlap the writes."""
    with running_server() as srv:
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{srv.port}", "--connections", "6", "--clients", "3",
            "--payload", str(8 << 20),
        )  # fmt: skip
    assert status == 0, data
    assert data["bytes_verified"] == 6 * (8 << 20)


def test_stream_mode_moves_and_checks_data() -> None:
    with running_server() as srv:
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{srv.port}", "--mode", "stream", "--clients", "2",
            "--duration", "1",
        )  # fmt: skip
    assert status == 0, data
    assert_schema(data, "stream")
    assert data["connections_ok"] == 2
    assert data["bytes_verified"] > 10 << 20
    assert data["mib_per_s"] > 10


def test_hold_mode_holds_every_connection_open_and_pings() -> None:
    with running_server() as srv:
        proc = subprocess.Popen(
            echolab_cmd(
                "load", "--target", f"127.0.0.1:{srv.port}", "--mode", "hold",
                "--clients", "24", "--duration", "4", "--json", "-", "--no-progress",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        # While it runs, the server carries 24 sessions (the window leaves room for the
        # workers' start-up on a busy machine, and ends before the hold does).
        # Counted exactly: server-side sessions whose peer is a socket of the load's own
        # processes (a port number can be shared with sockets of anything else on the host).
        deadline = time.monotonic() + 3.5
        established = 0
        while time.monotonic() < deadline and established < 24:
            load_pids = {proc.pid, *children_of(proc.pid)}
            clients = tcpstate.with_owners(
                tcpstate.read_sockets(srv.port, "remote", ("ESTABLISHED",), addr="127.0.0.1")
            )
            ports = {c.local_port for c in clients if load_pids & set(c.pids)}
            sessions = tcpstate.read_sockets(srv.port, "local", ("ESTABLISHED",), "127.0.0.1")
            established = sum(1 for x in sessions if x.remote_port in ports)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    assert established == 24
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert_schema(data, "hold")
    assert data["connections_ok"] == 24
    assert data["peak_open"] == 24
    assert data["pings_ok"] >= 24  # each connection pinged at least once in 4 s
    assert data["latency_samples"] == data["pings_ok"]
    assert data["latency_ms"]["p50"] is not None


def test_progress_lines_when_not_a_terminal_and_none_with_no_progress() -> None:
    with running_server() as srv:
        target = f"127.0.0.1:{srv.port}"
        chatty = run_echolab("load", "--target", target, "--duration", "2.3", "--clients", "4")
        quiet = run_echolab(
            "load", "--target", target, "--duration", "0.5", "--clients", "4", "--no-progress"
        )
    assert chatty.returncode == 0, chatty.stderr
    lines = [line for line in chatty.stderr.splitlines() if line.startswith("load:")]
    assert len(lines) >= 2, chatty.stderr
    assert re.search(r"ok [\d,]+ +[\d,]+ conn/s", lines[-1])
    assert "connections ok" in chatty.stdout and "PASS" in chatty.stdout
    assert quiet.returncode == 0
    assert quiet.stderr == ""


def test_rich_progress_and_table_on_a_terminal() -> None:
    pytest.importorskip("rich")
    with running_server() as srv:
        pid, fd = pty.fork()
        if pid == 0:  # the child: run echolab load on the pty
            os.chdir(ROOT)
            os.environ["COLUMNS"] = "120"
            os.execv(
                sys.executable,
                echolab_cmd("load", "--target", f"127.0.0.1:{srv.port}", "--duration", "1"),
            )
        output = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "conn/s" in text  # the live figures
    assert "━" in text  # rich's progress bar
    assert "│" in text or "┃" in text  # the summary table's frame
    assert "PASS" in text


def test_empty_output_variables_mean_none() -> None:
    """What Compose passes for an unset `${VAR:-}`: no file, not the current directory."""
    with running_server() as srv:
        proc = run_echolab(
            "load", "--target", f"127.0.0.1:{srv.port}", "--connections", "20", "--no-progress",
            env={"ECHOLAB_PLOT": "", "ECHOLAB_LATENCY_CSV": "", "ECHOLAB_JSON_FILE": ""},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout


def test_json_to_a_file_and_target_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    with running_server() as srv:
        proc = run_echolab(
            "load", "--connections", "50", "--json", str(out), "--no-progress",
            env={"ECHOLAB_TARGET": f"127.0.0.1:{srv.port}"},
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert_schema(data, "rate")
    assert data["connections_ok"] == 50
    assert "connections ok" in proc.stdout  # the table still goes to stdout


# --- against broken servers -----------------------------------------------------------------
def test_a_wrong_echo_is_caught_and_fails_the_run_whatever_the_error_rate() -> None:
    with broken_server("wrong") as port:
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{port}", "--connections", "30", "--clients", "4",
            "--max-error-rate", "1",
        )  # fmt: skip
    assert status == 1
    assert data["errors"]["wrong_echo"] == 30
    assert data["connections_ok"] == 0
    assert re.search(r"byte 10 of 64: sent 0x[0-9a-f]{2}, got 0x[0-9a-f]{2}",
                     data["error_samples"]["wrong_echo"])  # fmt: skip
    assert data["passed"] is False


def test_a_wrong_byte_in_a_stream_is_caught() -> None:
    with broken_server("wrong") as port:
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{port}", "--mode", "stream", "--clients", "1",
            "--duration", "0.5",
        )  # fmt: skip
    assert status == 1
    assert data["errors"]["wrong_echo"] >= 1


def test_a_short_echo_is_caught() -> None:
    with broken_server("short") as port:
        status, data, _ = load_json("--target", f"127.0.0.1:{port}", "--connections", "20")
    assert status == 1
    assert data["errors"]["short_echo"] == 20
    assert "EOF after 32 of 64 bytes" in data["error_samples"]["short_echo"]


def test_resets_count_and_max_error_rate_decides() -> None:
    with broken_server("reset") as port:
        target = f"127.0.0.1:{port}"
        strict, data, _ = load_json("--target", target, "--connections", "20")
        lenient, data2, _ = load_json(
            "--target", target, "--connections", "20", "--max-error-rate", "1"
        )
    assert strict == 1
    assert data["errors"]["reset"] + data["errors"]["short_echo"] == 20
    assert data["errors"]["reset"] >= 1
    # Every connection failed, so nothing was verified: still a failure, even at rate 1.
    assert lenient == 1
    assert data2["error_rate"] == 1.0


def test_a_silent_server_times_out() -> None:
    with broken_server("silent") as port:
        started = time.monotonic()
        status, data, _ = load_json(
            "--target", f"127.0.0.1:{port}", "--connections", "4", "--clients", "4",
            "--timeout", "0.4",
        )  # fmt: skip
    assert status == 1
    assert data["errors"]["timeout"] == 4
    assert time.monotonic() - started < 10


def test_error_rate_within_the_limit_passes_and_above_it_fails() -> None:
    """Every other connection is reset: an error rate of 0.5."""
    with broken_server("flaky") as port:
        target = f"127.0.0.1:{port}"
        above, data, _ = load_json(
            "--target", target, "--connections", "40", "--max-error-rate", "0.4"
        )
        within, data2, _ = load_json(
            "--target", target, "--connections", "40", "--max-error-rate", "0.6"
        )
    assert data["error_rate"] == data2["error_rate"] == 0.5
    assert data2["connections_ok"] == 20
    assert (above, within) == (1, 0)


# --- bad input ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_target_is_one_line_and_exit_2() -> None:
    port = free_port()
    proc = run_echolab("load", "--target", f"127.0.0.1:{port}", "--connections", "5")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"cannot reach 127.0.0.1:{port}" in lines[0]
    assert "refused" in lines[0].lower()


@pytest.mark.parametrize(
    "args",
    [
        ["--mode", "hold", "--connections", "5"],
        ["--connections", "0"],
        ["--connections", "5", "--duration", "1"],
        ["--mode", "bogus"],
        ["--max-error-rate", "2"],
        ["--duration", "ten"],
        ["--rate", "0"],
        ["--rate", "1.5x"],
        ["--max-p99", "fast"],
        ["--max-p999", "-1"],
        ["--interval", "1ms"],
        ["--plot", "picture.pdf"],
        ["--latency-csv", "-"],
        ["--mode", "stream", "--max-p99", "5"],  # closed-loop streams have no latencies
        ["--payload", str(1 << 30)],
        ["--clients", "100000000"],  # more descriptors than a process may open
        ["--json", "/nonexistent-dir/out.json"],
        ["--latency-csv", "/proc/out.csv"],
        ["--plot", "/nonexistent-dir/out.svg"],
        ["--rate", "1" + "0" * 400],  # beyond a float: was an OverflowError traceback
        ["--connections", "1" + "0" * 400],
        ["--timeout", "0", "--connections", "5"],
        ["--duration", "0"],
        ["--timeout", "1e30", "--connections", "5"],  # beyond epoll's longest wait (24.8 days)
        ["--interval", "1e30", "--connections", "5"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    """Rejected in one line before anything runs: the target (port 9) is never even tried."""
    proc = run_echolab("load", "--target", "127.0.0.1:9", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot reach" not in proc.stderr
    assert not Path("/nonexistent-dir").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "24d", "--connections", "50"],
        ["--timeout", "24d", "--mode", "hold", "--clients", "4", "--duration", "1"],
        ["--timeout", "24d", "--mode", "stream", "--clients", "2", "--duration", "0.5"],
        ["--timeout", "24d", "--rate", "100", "--duration", "0.5"],
        ["--interval", "24d", "--connections", "20"],
    ],
)
def test_huge_timeouts_are_only_long_waits(args: list[str]) -> None:
    """The longest timeouts the command line takes (epoll's 24.8 days) run like long waits."""
    with running_server() as srv:
        status, data, _ = load_json("--target", f"127.0.0.1:{srv.port}", *args)
    assert status == 0, data
    assert data["errors_total"] == 0
