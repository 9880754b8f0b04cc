"""`echolab load` stopped by a signal, sent to its parent or to its whole process group (what
`timeout`, CI runners and a terminal send): the figures so far are written, marked
interrupted, the exit status is 128 + the signal's number, and no worker is left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from echolab.proctree import ProcessGroup, children_of
from tests.support import ROOT, echolab_cmd, running_server, wait_until

PROGRESS = re.compile(r"^load: +[\d.]+s +ok ([\d,]+) .* open ([\d,]+)")


def start_load(port: int, json_path: Path, *args: str) -> subprocess.Popen[str]:
    """`echolab load` for 30 s in a process group of its own (it is the group's leader)."""
    return subprocess.Popen(
        echolab_cmd(
            "load", "--target", f"127.0.0.1:{port}", "--duration", "30s",
            "--json", str(json_path), *args,
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip


def wait_for_load(proc: subprocess.Popen[str]) -> int:
    """Read progress lines until the workers have counted something (connections done, or
    open: short connections to a fast server are rarely open at the moment of a sample);
    return the ok count so far."""
    assert proc.stderr is not None
    for line in proc.stderr:
        m = PROGRESS.match(line)
        if m:
            ok, open_ = (int(m.group(k).replace(",", "")) for k in (1, 2))
            if ok or open_:
                return ok
    raise AssertionError(f"load ended before it ran: {proc.wait()}")


def assert_interrupted(data: dict[str, Any], out: str, sig: signal.Signals) -> None:
    assert data["interrupted"] is True
    assert data["signal"] == sig.name
    assert data["passed"] is False
    assert data["worker_failures"] == []
    assert f"interrupted by {sig.name}" in out  # the summary so far, on stdout


def assert_nothing_left(group: ProcessGroup) -> None:
    assert group.members() == [], "processes of the load's group outlived it"


@pytest.mark.parametrize(
    ("sig", "to_group", "args"),
    [
        (signal.SIGTERM, True, ["--clients", "16"]),
        (signal.SIGINT, True, ["--mode", "stream", "--clients", "2"]),
        (signal.SIGHUP, True, ["--mode", "hold", "--clients", "20"]),
        (signal.SIGTERM, False, ["--mode", "hold", "--clients", "20"]),
        (signal.SIGINT, False, ["--clients", "16"]),
        (signal.SIGTERM, True, ["--rate", "300", "--clients", "64"]),
        (signal.SIGHUP, False, ["--mode", "stream", "--rate", "200", "--clients", "4"]),
    ],
)
def test_a_stop_signal_keeps_the_figures_so_far(
    tmp_path: Path, sig: signal.Signals, to_group: bool, args: list[str]
) -> None:
    out_json = tmp_path / "load.json"
    with running_server() as srv:
        proc = start_load(srv.port, out_json, *args)
        group = ProcessGroup.of(proc)  # before any wait
        try:
            ok_before = wait_for_load(proc)
            workers = children_of(proc.pid)
            assert workers, "no worker processes"
            if to_group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    data = json.loads(out_json.read_text())
    assert_interrupted(data, out, sig)
    assert data["connections_ok"] >= ok_before  # nothing counted before the signal is lost
    if "--mode" not in args:
        assert data["connections_ok"] > 0 and data["latency_samples"] == data["connections_ok"]
    else:
        assert data["peak_open"] > 0
    if "--rate" in args:
        assert data["schedule"]["started"] > 0
    assert_nothing_left(group)
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_timeout_sends_sigterm_to_the_group_and_the_results_survive(tmp_path: Path) -> None:
    """What CI does: `timeout -s TERM 3 echolab load ... --duration 30s --json F`. On the code
    before this test, the workers died of the SIGTERM and the run wrote nothing (exit 1)."""
    timeout = shutil.which("timeout")
    assert timeout, "coreutils timeout is needed"
    out_json = tmp_path / "load.json"
    with running_server() as srv:
        proc = subprocess.Popen(
            [
                timeout, "--preserve-status", "-s", "TERM", "3",
                *echolab_cmd(
                    "load", "--target", f"127.0.0.1:{srv.port}", "--duration", "30s",
                    "--json", str(out_json),
                ),
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        group = ProcessGroup.of(proc)  # before any wait
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    data = json.loads(out_json.read_text())
    assert_interrupted(data, out, signal.SIGTERM)
    seen = [int(m.group(1).replace(",", "")) for m in map(PROGRESS.match, err.splitlines()) if m]
    assert data["connections_ok"] >= max(seen, default=0)
    assert data["connections_ok"] > 0
    assert_nothing_left(group)


def test_a_worker_killed_outright_fails_the_run_but_the_others_figures_remain(
    tmp_path: Path,
) -> None:
    out_json = tmp_path / "load.json"
    with running_server() as srv:
        proc = start_load(srv.port, out_json, "--duration", "4s", "--workers", "2")
        group = ProcessGroup.of(proc)  # before any wait
        try:
            wait_for_load(proc)
            victim, survivor = sorted(children_of(proc.pid))
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: not Path(f"/proc/{victim}/status").exists() or _zombie(victim))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 1, err
    data = json.loads(out_json.read_text())
    assert data["passed"] is False and data["interrupted"] is False
    assert len(data["worker_failures"]) == 1
    assert "without a result (exit status -9)" in data["worker_failures"][0]
    assert data["connections_ok"] > 0  # the survivor's
    assert "worker failed" in out
    assert_nothing_left(group)
    assert not Path(f"/proc/{survivor}").exists()


def _zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
