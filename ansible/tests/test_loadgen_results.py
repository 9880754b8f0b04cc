"""echo_loadgen never reports the figures of an earlier run.

The role's run tasks (`--tags echo_loadgen_run`) run for real on this machine against
`localhost`, with the project's own `echolab` (the venv running these tests) as the client: a
run against a port where nothing listens writes no result, and must fail as such while the
previous run's figures, left on the "host" and on the "controller", are gone; a run against a
real server on loopback must report its own fresh figures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import ANSIBLE_BIN, ansible_env

STALE = {
    "mode": "rate",
    "target": "127.0.0.1:1",
    "connections_ok": 424242,
    "conn_per_s": 4242.0,
    "mib_per_s": 42.0,
    "latency_ms": {"p99": 4.2},
    "errors_total": 0,
    "errors": {},
    "passed": True,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def host_dirs(tmp_path: Path) -> dict[str, Path]:
    """An install dir whose venv is this test's venv, and results left by an earlier run."""
    install, results = tmp_path / "install", tmp_path / "results"
    install.mkdir()
    results.mkdir()
    (install / "venv").symlink_to(Path(sys.prefix))
    for path in (install / "last-load.json", results / "localhost.json"):
        path.write_text(json.dumps(STALE), encoding="utf-8")
    return {"install": install, "results": results, "work": tmp_path}


def run_role(dirs: dict[str, Path], port: int) -> subprocess.CompletedProcess[str]:
    play = [
        {
            "name": "Run the load profile",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "become": False,
            "vars": {
                "echo_loadgen_install_dir": str(dirs["install"]),
                "echo_loadgen_results_dir": str(dirs["results"]),
                "echo_loadgen_target_host": "127.0.0.1",
                "echo_loadgen_target_port": port,
                "echo_loadgen_connections": 50,
                "echo_loadgen_clients": 4,
                "echo_loadgen_workers": "1",
                "echo_loadgen_timeout": "2s",
            },
            "roles": [{"role": "echolab.lab.echo_loadgen"}],
        }
    ]
    playbook = dirs["work"] / "run.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        [
            *(str(ANSIBLE_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)),
            *("--tags", "echo_loadgen_run"),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(dirs["work"]),
        timeout=300,
        check=False,
    )


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A real `echolab serve` on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [str(ANSIBLE_BIN / "echolab"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"echolab serve exited {proc.wait()} before it listened")
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_run_without_result_fails_and_shows_no_stale_figures(host_dirs: Any) -> None:
    with socket.socket() as closed:
        # Bound, not listening: connections to it are refused, and no one else takes the port.
        closed.bind(("127.0.0.1", 0))
        result = run_role(host_dirs, closed.getsockname()[1])
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "wrote no result" in out, out[-3000:]
    assert "424242" not in out, "the previous run's figures were reported"
    assert not (host_dirs["install"] / "last-load.json").exists()
    assert not (host_dirs["results"] / "localhost.json").exists()


def test_a_run_reports_its_own_figures(host_dirs: Any, echo_server: int) -> None:
    result = run_role(host_dirs, echo_server)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "424242" not in out
    for path in (host_dirs["install"] / "last-load.json", host_dirs["results"] / "localhost.json"):
        summary = json.loads(path.read_text(encoding="utf-8"))
        assert summary["connections_ok"] == 50
        assert summary["target"] == f"127.0.0.1:{echo_server}"
        assert summary["passed"] is True
