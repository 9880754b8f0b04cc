"""The state echo_loadgen leaves on a host: the client installed offline, able to reach and
load the server across the network, and the last run's figures on disk."""

from __future__ import annotations

import json
from typing import Any

from conftest import run_json

testinfra_hosts = ["ansible://loadgen"]


def target(loadgen: dict[str, Any], host: Any) -> str:
    """The first host of the target group, as the role resolves it by default."""
    group = loadgen["echo_loadgen_target_group"]
    servers = loadgen["groups"].get(group, [])
    assert servers, f"no host in group {group}"
    variables = host.ansible.get_variables()
    explicit = variables.get("echo_loadgen_target_host")
    name = explicit or servers[0]
    port = variables.get("echo_loadgen_target_port", 7007)
    return f"{name}:{port}"


def test_client_is_installed_with_its_extra(host: Any, loadgen: dict[str, Any]) -> None:
    assert host.file(loadgen["bin"]).is_file
    version = host.run(f"{loadgen['bin']} --version")
    assert version.rc == 0 and version.stdout.startswith("echolab ")
    rich = host.run(f"{loadgen['echo_loadgen_install_dir']}/venv/bin/python -c 'import rich'")
    assert rich.rc == 0, "the load extra (rich) is missing"


def test_last_run_passed(host: Any, loadgen: dict[str, Any]) -> None:
    result = host.file(f"{loadgen['echo_loadgen_install_dir']}/last-load.json")
    assert result.is_file
    summary = json.loads(result.content_string)
    assert summary["passed"] is True
    assert summary["errors_total"] == 0
    assert summary["connections_ok"] > 0


def test_load_across_the_network(host: Any, loadgen: dict[str, Any]) -> None:
    rc, summary = run_json(
        host,
        f"{loadgen['bin']} load --target {target(loadgen, host)} --mode rate --clients 16 "
        "--connections 500 --no-progress --json -",
    )
    assert rc == 0
    assert summary["connections_ok"] == 500
    assert summary["errors_total"] == 0
    assert summary["bytes_verified"] == 500 * summary["payload"]
