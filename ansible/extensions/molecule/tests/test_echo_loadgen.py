"""The state echo_loadgen leaves on a host: the client installed offline, able to reach and
load the server across the network at the address the role resolved, and the last run's
figures on disk."""

from __future__ import annotations

import json
import shlex
from typing import Any

from conftest import run_json

testinfra_hosts = ["ansible://loadgen"]


def test_client_is_installed_with_its_extra(host: Any, loadgen: dict[str, Any]) -> None:
    assert host.file(loadgen["bin"]).is_file
    version = host.run(shlex.join([loadgen["bin"], "--version"]))
    assert version.rc == 0 and version.stdout.startswith("echolab ")
    rich = host.run(shlex.join([loadgen["python"], "-c", "import rich"]))
    assert rich.rc == 0, "the load extra (rich) is missing"


def test_last_run_passed(host: Any, loadgen: dict[str, Any]) -> None:
    result = host.file(loadgen["result_file"])
    assert result.is_file
    summary = json.loads(result.content_string)
    assert summary["passed"] is True
    assert summary["errors_total"] == 0
    assert summary["connections_ok"] > 0
    assert summary["target"] == loadgen["target"]


def test_load_across_the_network(host: Any, loadgen: dict[str, Any]) -> None:
    argv = [loadgen["bin"], "load", "--target", loadgen["target"], "--mode", "rate"]
    argv += ["--clients", "16", "--connections", "500", "--no-progress", "--json", "-"]
    rc, summary = run_json(host, argv)
    assert rc == 0
    assert summary["connections_ok"] == 500
    assert summary["errors_total"] == 0
    assert summary["bytes_verified"] == 500 * summary["payload"]
