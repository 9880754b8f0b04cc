"""The open loop (`echolab load --rate N`) against a server that stalls: latency measured from
each scheduled start shows the stall that the closed loop hides (coordinated omission); on a
healthy server both agree; the generator's own lag is reported as its own; latency over time
as CSV and as a picture; thresholds fail the run."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from echolab.load_report import CSV_COLUMNS
from echolab.proctree import children_of
from tests.support import ROOT, echolab_cmd, run_echolab, running_server

# An echo server (one thread, selectors) that stalls: for STALL seconds of every PERIOD,
# counted from its start, it accepts nothing and echoes nothing (the kernel still completes
# handshakes into its backlog, so clients connect and wait, as they would on a frozen server).
STALL_SERVER = r"""
import selectors, socket, sys, time
period, stall = float(sys.argv[1]), float(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
t0 = time.monotonic()
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
while True:
    phase = (time.monotonic() - t0) % period
    if stall and phase >= period - stall:
        time.sleep(period - phase)  # the stall: nothing accepted, nothing echoed
        continue
    for key, _ in sel.select(period - stall - phase if stall else None):
        if key.fileobj is listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.setblocking(True)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delays
                sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
            if data:
                conn.sendall(data)
                continue
        except OSError:
            pass
        sel.unregister(conn)
        conn.close()
"""
STALL_PERIOD, STALL = 5.0, 1.0
RUN = "7s"  # any 7 s window holds at least one whole stall, and overlaps at most two


@contextmanager
def stall_server(stall: float) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL_SERVER, str(STALL_PERIOD), str(stall)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, "the stall server did not start"
        yield int(m.group(1))
    finally:
        proc.kill()
        proc.wait(5)


def start_json_load(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        echolab_cmd("load", *args, "--json", "-", "--no-progress"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc.returncode, json.loads(out)


def load_json(*args: str) -> tuple[int, dict[str, Any]]:
    return finish(start_json_load(*args))


def against_serve(*args: str) -> tuple[int, dict[str, Any]]:
    """`echolab load ARGS` against a healthy `echolab serve`."""
    with running_server() as srv:
        return load_json("--target", f"127.0.0.1:{srv.port}", *args)


def slow_samples(data: dict[str, Any], at_least_ms: float) -> int:
    """Latency samples of at least `at_least_ms`, from the JSON's whole distribution."""
    buckets = data["latency_histogram"]["buckets"]
    return sum(n for low_us, _high, n in buckets if low_us >= at_least_ms * 1000)


def test_the_open_loop_sees_a_stall_that_the_closed_loop_hides() -> None:
    """1 s stalls every 5 s: open-loop p99.9 >= 0.9 s; the closed loop keeps them out of p99.

    The three runs share the same 7 s, so they meet the same stalls. The closed loop's bound
    is structural, not statistical: each of its 2 clients waits through a stall once (its
    next connection starts only after), so at most 2 slow samples per stall, 2 stalls at
    most in 7 s.
    """
    with stall_server(STALL) as port:
        target = f"127.0.0.1:{port}"
        open_rate = start_json_load(
            "--target", target, "--rate", "200", "--clients", "400", "--duration", RUN,
            "--max-p999", "500",
        )  # fmt: skip
        open_stream = start_json_load(
            "--target", target, "--mode", "stream", "--rate", "200", "--clients", "4",
            "--duration", RUN,
        )  # fmt: skip
        closed = start_json_load("--target", target, "--clients", "2", "--duration", RUN)
        (rate_status, rate), (stream_status, stream), (closed_status, shut) = map(
            finish, (open_rate, open_stream, closed)
        )
    for data in (rate, stream, shut):
        assert data["errors_total"] == 0, data["error_samples"]
    # The open loop: every start on its schedule, the stall in its tail.
    for data in (rate, stream):
        assert data["loop"] == "open" and data["latency_from"] == "schedule"
        sched = data["schedule"]
        assert sched["scheduled"] >= 1200
        assert sched["started"] >= 0.99 * sched["scheduled"]  # the stall did not stop it
        assert data["latency_ms"]["p99.9"] >= 900, data["latency_ms"]
        assert slow_samples(data, 500) >= 50  # about 100 per whole stall at 200/s
    assert rate["schedule"]["slot_waits"] == 0  # 400 connections: room for a stall's 200
    assert stream_status == 0 and stream["pings_ok"] == stream["schedule"]["started"]
    # --max-p999 500 ms cannot hold across a 1 s stall: the run fails on it.
    assert rate_status == 1 and rate["passed"] is False
    assert rate["thresholds"]["p99.9"] == {"max_ms": 500.0, "ms": rate["latency_ms"]["p99.9"],
                                           "ok": False}  # fmt: skip
    # The closed loop: the stall shows in max, hides from p99.
    assert closed_status == 0
    assert shut["latency_ms"]["max"] >= 500
    assert slow_samples(shut, 500) <= 2 * 2
    assert shut["latency_samples"] >= 100 * 2 * 2, "too few samples for p99 to mean anything"
    assert shut["latency_ms"]["p99"] < 500, shut["latency_ms"]


def test_open_and_closed_loop_agree_on_a_healthy_server() -> None:
    """The same server without stalls: both loops measure the same latencies, within noise.

    The tolerance: 25 ms at p50 and 250 ms at p99, plus the open loop's own lag at that
    percentile. On this 2-core machine shared with other builds and TCG VMs (CPU pressure
    above 90%), a runnable process waits tens of milliseconds for a CPU now and then: the
    server's latencies move by that much from run to run, and the open loop's latencies also
    carry the generator's own lag (measured up to 175 ms at p99 here, under load average
    15), which the run reports and which is therefore added, not guessed. The stall the other
    test must see is 1,000 ms: the bounds stay above the noise and below the effect.
    """
    with stall_server(0) as port:
        target = f"127.0.0.1:{port}"
        closed_status, shut = load_json("--target", target, "--clients", "2", "--duration", "3s")
        open_status, opened = load_json(
            "--target", target, "--rate", "200", "--duration", "3s", "--max-p99", "5000"
        )
    assert (closed_status, open_status) == (0, 0)
    assert shut["errors_total"] == opened["errors_total"] == 0
    lag = opened["schedule"]["lag_ms"]
    for name, tolerance in (("p50", 25), ("p99", 250)):
        a, b = shut["latency_ms"][name], opened["latency_ms"][name]
        assert abs(a - b) <= tolerance + lag[name], (name, shut["latency_ms"], opened)
    assert opened["thresholds"]["p99"]["ok"] is True
    assert slow_samples(opened, 900) == 0 or lag["max"] >= 900  # no stall unless our own


def test_the_generators_own_lag_is_reported_not_blamed_on_the_server() -> None:
    """Freeze the load's workers for a second (SIGSTOP): a slow client, a healthy server.
    The run must say that the generator fell behind, with a lag of at least that second."""
    with running_server() as srv:
        proc = subprocess.Popen(
            echolab_cmd(
                "load", "--target", f"127.0.0.1:{srv.port}", "--rate", "200", "--duration", "4s",
                "--json", "-",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("load:")  # the workers are running
        workers = children_of(proc.pid)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1.0)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    data = json.loads(out)
    sched = data["schedule"]
    assert sched["kept"] is False
    assert "generator itself fell behind" in sched["verdict"]
    assert sched["lag_ms"]["max"] >= 990
    assert "NOT KEPT" in err  # said on stderr too, beside the table
    assert data["errors_total"] == 0
    assert proc.returncode == 0  # the server was fine: no error, no threshold broken


def test_an_impossible_rate_is_reported_as_not_kept() -> None:
    status, data = against_serve("--rate", "1000000", "--duration", "1s", "--workers", "1")
    sched = data["schedule"]
    assert sched["kept"] is False
    assert sched["started"] < sched["scheduled"] <= 1_000_000  # from the worker's start
    assert status == 0  # every connection that ran was fine


def test_an_open_loop_with_a_connection_budget() -> None:
    status, data = against_serve("--rate", "400", "--connections", "300")
    assert status == 0
    assert data["connections_ok"] == data["latency_samples"] == 300
    assert data["schedule"]["scheduled"] == data["schedule"]["started"] == 300


def test_latency_over_time_as_csv_adds_up_to_the_run(tmp_path: Path) -> None:
    out = tmp_path / "latency.csv"
    status, data = against_serve(
        "--rate", "100", "--duration", "2.5s", "--interval", "500ms", "--latency-csv", str(out)
    )
    assert status == 0
    with out.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) >= 5
    assert [float(r["t_s"]) for r in rows] == [i * 0.5 for i in range(len(rows))]
    assert sum(int(r["samples"]) for r in rows) == data["latency_samples"]
    assert data["latency_samples"] == data["connections_ok"] == data["schedule"]["started"]
    for r in rows:
        if r["samples"] != "0":
            assert float(r["p50_ms"]) <= float(r["p99_ms"]) <= float(r["max_ms"])


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".png", b"\x89PNG")])
def test_a_picture_of_the_run(tmp_path: Path, suffix: str, magic: bytes) -> None:
    picture = tmp_path / f"load{suffix}"
    status, _ = against_serve(
        "--rate", "200", "--duration", "1.5s", "--interval", "250ms", "--plot", str(picture)
    )
    assert status == 0
    content = picture.read_bytes()
    assert content.startswith(magic)
    assert len(content) > 10_000  # two panels with curves, not an empty canvas


def test_without_the_plot_extra_the_error_is_one_line_before_the_run(tmp_path: Path) -> None:
    """matplotlib missing (an ImportError, as without the extra): exit 2 at once, before the
    target is even tried (port 9 has nothing listening)."""
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = run_echolab(
        "load", "--target", "127.0.0.1:9", "--plot", str(tmp_path / "x.svg"), env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "echolab load: --plot needs matplotlib, the 'plot' extra: pip install 'echolab[plot]'"
    )
    assert not (tmp_path / "x.svg").exists()
