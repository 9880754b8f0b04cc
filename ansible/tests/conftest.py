"""Shared fixtures for the testinfra tests of the echolab roles.

The same files run under Molecule (its verifier passes --connection=ansible and its inventory)
and against real hosts:

    pytest --connection=ansible --ansible-inventory=ansible/inventories/example/hosts.yml \
        ansible/tests/

Each test module names its inventory group in ``testinfra_hosts``; the settings a test expects
are the role's defaults/main.yml overlaid with the host's inventory variables, exactly what
the role itself saw (as long as the playbook set nothing on top: site.yml does not).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"


def role_defaults(role: str) -> dict[str, Any]:
    """The role's defaults/main.yml (templated values stay unrendered strings)."""
    with (ROLES / role / "defaults" / "main.yml").open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def settings_for(host: Any, role: str) -> dict[str, Any]:
    """The role's inputs as the role saw them on this host."""
    merged = role_defaults(role)
    inventory = host.ansible.get_variables()
    merged.update({k: v for k, v in inventory.items() if k.startswith(role + "_")})
    merged["inventory_hostname"] = inventory.get("inventory_hostname")
    merged["groups"] = inventory.get("groups", {})
    return merged


@pytest.fixture
def server(host: Any) -> dict[str, Any]:
    """echo_server's inputs for this host, plus the unit names and the venv's echolab."""
    s = settings_for(host, "echo_server")
    s["unit"] = f"{s['echo_server_service_name']}.service"
    s["socket_unit"] = f"{s['echo_server_service_name']}.socket"
    s["bin"] = f"{s['echo_server_install_dir']}/venv/bin/echolab"
    wildcard = s["echo_server_host"] in ("0.0.0.0", "::", "")
    probe_host = "127.0.0.1" if wildcard else s["echo_server_host"]
    if ":" in probe_host:
        probe_host = f"[{probe_host}]"
    s["target"] = f"{probe_host}:{s['echo_server_port']}"
    return s


@pytest.fixture
def loadgen(host: Any) -> dict[str, Any]:
    """echo_loadgen's inputs for this host, plus the venv's echolab."""
    s = settings_for(host, "echo_loadgen")
    s["bin"] = f"{s['echo_loadgen_install_dir']}/venv/bin/echolab"
    return s


def unit_properties(host: Any, unit: str, *names: str) -> dict[str, str]:
    """`systemctl show` properties of a unit, as strings."""
    props = ",".join(names)
    out = host.check_output(f"systemctl show --property={props} {shlex.quote(unit)}")
    pairs = (line.partition("=") for line in out.splitlines())
    return {key: value for key, _, value in pairs}


def run_json(host: Any, command: str, *, ok: tuple[int, ...] = (0,)) -> tuple[int, Any]:
    """Run a command that prints JSON on stdout; return its exit status and the document."""
    result = host.run(command)
    assert result.rc in ok, f"{command}: exit {result.rc}\n{result.stdout}\n{result.stderr}"
    try:
        return result.rc, json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{command}: no JSON on stdout ({exc})\n{result.stdout}\n{result.stderr}"
        ) from None
