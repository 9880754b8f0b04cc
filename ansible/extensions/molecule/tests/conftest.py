"""Shared fixtures of the testinfra suite for the echolab.lab roles.

The same files run on every backend testinfra has, from this repository or from the installed
collection (`.../ansible_collections/echolab/lab/extensions/molecule/tests`):

    pytest --connection=ansible --ansible-inventory=INVENTORY TESTS     (each file picks its group)
    pytest --hosts=ssh://USER@HOST:PORT --sudo TESTS/test_echo_server.py TESTS/test_restart.py
    pytest --hosts=docker://CONTAINER TESTS/test_echo_server.py

What a test expects comes from the host itself: the facts file each role writes
(/etc/ansible/facts.d/echo_server.fact, echo_loadgen.fact: what the role configured), never
from the controller's inventory, so no backend needs Ansible's variables. Checks that need root
(`ss -p`, `systemctl restart`, restart-check) take it through sudo when the connection is not
root already.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Callable
from typing import Any

import pytest

FACTS_DIR = "/etc/ansible/facts.d"


def role_facts(host: Any, role: str) -> dict[str, Any]:
    """What `role` configured on this host; a clear failure when it never ran there."""
    path = f"{FACTS_DIR}/{role}.fact"
    facts = host.file(path)
    if not facts.exists:
        pytest.fail(
            f"{role} has not provisioned this host (no {path}): run echolab.lab.site first, "
            "or point this test file at a host of the right group"
        )
    data: dict[str, Any] = json.loads(facts.content_string)
    return data


@pytest.fixture
def as_root(host: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A context in which commands run as root: as they are (root, or --sudo), else via sudo."""
    is_root = host.run("id -u").stdout.strip() == "0"

    def context() -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if is_root else host.sudo()

    return context


@pytest.fixture
def server(host: Any) -> dict[str, Any]:
    """echo_server's settings on this host (its facts file)."""
    return role_facts(host, "echo_server")


@pytest.fixture
def loadgen(host: Any) -> dict[str, Any]:
    """echo_loadgen's settings on this host (its facts file)."""
    return role_facts(host, "echo_loadgen")


def unit_properties(host: Any, unit: str, *names: str) -> dict[str, str]:
    """`systemctl show` properties of a unit, as strings (no root needed)."""
    props = ",".join(names)
    out = host.check_output(f"systemctl show --property={props} -- {shlex.quote(unit)}")
    pairs = (line.partition("=") for line in out.splitlines())
    return {key: value for key, _, value in pairs}


def run_json(host: Any, argv: list[str], *, ok: tuple[int, ...] = (0,)) -> tuple[int, Any]:
    """Run an argument vector that prints JSON on stdout; return its exit status and document."""
    command = shlex.join(argv)
    result = host.run(command)
    assert result.rc in ok, f"{command}: exit {result.rc}\n{result.stdout}\n{result.stderr}"
    try:
        return result.rc, json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"{command}: no JSON on stdout ({exc})\n{result.stdout}\n{result.stderr}"
        ) from None
