"""The roles stop at their start, with one message and before changing anything, on a host
they do not support: no systemd (echo_server), another OS family, a Python older than 3.11.

A host without systemd is real: the Molecule image with `sleep` as PID 1, reached through the
docker connection. Another OS family and an old Python are what Ansible's facts would say of
such a host, given to the roles' own preflight as facts (this machine has neither).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import ANSIBLE_BIN, ansible_env

IMAGE = "echolab/molecule:bookworm"


def playbook(workdir: Path, plays: list[dict[str, Any]], inventory: str, *args: str) -> str:
    path = workdir / "play.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [str(ANSIBLE_BIN / "ansible-playbook"), "-i", inventory, str(path), *args],
        capture_output=True,
        text=True,
        env=ansible_env(workdir),
        timeout=300,
        check=False,
    )
    assert result.returncode != 0, f"the play passed:\n{result.stdout[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture
def host_without_systemd() -> Iterator[str]:
    """A Molecule platform container whose PID 1 is `sleep`, not systemd."""
    name = f"echolab-molecule-preflight-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, IMAGE, "sleep", "600"],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


def test_echo_server_stops_without_systemd(host_without_systemd: str, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "hosts": {
                        "nosystemd": {
                            "ansible_connection": "community.docker.docker",
                            "ansible_host": host_without_systemd,
                            "ansible_python_interpreter": "auto_silent",
                        }
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    out = playbook(
        tmp_path,
        [{"name": "Install", "hosts": "server", "roles": ["echolab.lab.echo_server"]}],
        str(inventory),
    )
    assert "echo_server installs a systemd service" in out, out[-3000:]
    assert "service manager is" in out
    left = subprocess.run(
        ["docker", "exec", host_without_systemd, "test", "-e", "/opt/echolab"], check=False
    )
    assert left.returncode != 0, "the role changed the host before it stopped"


FACTS = {
    "ansible_os_family": "Debian",
    "ansible_distribution": "Debian",
    "ansible_distribution_version": "12",
    "ansible_service_mgr": "systemd",
    "ansible_python": {
        "executable": "/usr/bin/python3",
        "version": {"major": 3, "minor": 11, "micro": 2},
    },
}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"ansible_os_family": "RedHat", "ansible_distribution": "Fedora"},
            "supports Debian-family hosts (tested: Debian 12 and 13); localhost runs Fedora",
        ),
        (
            {
                "ansible_python": {
                    "executable": "/usr/bin/python3",
                    "version": {"major": 3, "minor": 9, "micro": 2},
                }
            },
            "needs Python 3.11 or later on the host; localhost's /usr/bin/python3 is 3.9",
        ),
        (
            {"ansible_service_mgr": "sysvinit"},
            "installs a systemd service; localhost's service manager is sysvinit",
        ),
    ],
    ids=["os-family", "python", "systemd"],
)
def test_preflight_says_what_the_host_lacks(
    facts: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    play = {
        "name": "Preflight",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Be the host the facts describe",
                "ansible.builtin.set_fact": {"cacheable": True, **FACTS, **facts},
            },
            {
                "name": "Check the host",
                "ansible.builtin.import_role": {
                    "name": "echolab.lab.wheel_venv",
                    "tasks_from": "preflight",
                },
                "vars": {"wheel_venv_for": "echo_server", "wheel_venv_require_systemd": True},
            },
        ],
    }
    out = " ".join(playbook(tmp_path, [play], "localhost,").split())
    assert f"echo_server {expected}" in out, out[-3000:]
