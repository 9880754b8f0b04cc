"""Role inputs that must be refused, and inputs that must render exactly what they say.

Each case goes through the role's own argument spec, bound checks and templates (harness.py).
A refused case must fail in validation with a message naming the input; an accepted one must
render a unit (or an argument vector) that properties.py reads back as systemd would.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import Outcome, role_defaults, run_cases
from properties import as_bool, check_loadgen, check_server, unit_settings

INJECT = "\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'"

# (case, the input its message must name)
SERVER_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"echo_server_port": 0}, "echo_server_port"),
    ({"echo_server_port": 70000}, "echo_server_port"),
    ({"echo_server_port": -1}, "echo_server_port"),
    ({"echo_server_grace": -1}, "echo_server_grace"),
    ({"echo_server_grace": float("nan")}, "echo_server_grace"),
    ({"echo_server_grace": float("inf")}, "echo_server_grace"),
    ({"echo_server_grace": 3e6}, "echo_server_grace"),
    ({"echo_server_backlog": 0}, "echo_server_backlog"),
    ({"echo_server_backlog": 2147483648}, "echo_server_backlog"),
    ({"echo_server_max_children": 0}, "echo_server_max_children"),
    ({"echo_server_idle_timeout": 1e19}, "echo_server_idle_timeout"),
    ({"echo_server_idle_timeout": -5}, "echo_server_idle_timeout"),
    ({"echo_server_ready_timeout": 0}, "echo_server_ready_timeout"),
    ({"echo_server_restart_sec": -1}, "echo_server_restart_sec"),
    ({"echo_server_limit_nofile": 0}, "echo_server_limit_nofile"),
    ({"echo_server_verify_clients": 0}, "echo_server_verify_clients"),
    ({"echo_server_verify_max_rebind_ms": -1}, "echo_server_verify_max_rebind_ms"),
    ({"echo_server_verify_recover_timeout": 0}, "echo_server_verify_recover_timeout"),
    ({"echo_server_verify_strategy": "restart"}, "echo_server_verify_strategy"),
    ({"echo_server_verify_strategy": "socket-activation"}, "echo_server_verify_strategy"),
    ({"echo_server_host": "0.0.0.0" + INJECT}, "echo_server_host"),
    ({"echo_server_host": "0.0.0.0\r\nUser=root"}, "echo_server_host"),
    ({"echo_server_host": '0.0.0.0" "ECHOLAB_PORT=1'}, "echo_server_host"),
    ({"echo_server_host": "a" * 64 + ".example"}, "echo_server_host"),
    ({"echo_server_host": "300.1.1.1"}, "echo_server_host"),
    ({"echo_server_host": ""}, "echo_server_host"),
    ({"echo_server_user": "echolab" + INJECT}, "echo_server_user"),
    ({"echo_server_user": "root user"}, "echo_server_user"),
    ({"echo_server_group": "echolab\nGroup=root"}, "echo_server_group"),
    ({"echo_server_service_name": "echolab" + INJECT}, "echo_server_service_name"),
    ({"echo_server_service_name": "echo lab; reboot"}, "echo_server_service_name"),
    ({"echo_server_install_dir": "/opt/echo lab"}, "echo_server_install_dir"),
    ({"echo_server_install_dir": "/opt/echolab" + INJECT}, "echo_server_install_dir"),
    ({"echo_server_install_dir": "opt/echolab"}, "echo_server_install_dir"),
    ({"echo_server_install_dir": "/opt/../etc"}, "echo_server_install_dir"),
    ({"echo_server_install_dir": "/opt/$(reboot)"}, "echo_server_install_dir"),
    ({"echo_server_install_dir": "/opt/%h"}, "echo_server_install_dir"),
    ({"echo_server_wheelhouse": "/srv/wheels\n"}, "echo_server_wheelhouse"),
    ({"echo_server_verify_results_dir": "results"}, "echo_server_verify_results_dir"),
    ({"echo_server_log_level": "INFO"}, "echo_server_log_level"),
    ({"echo_server_log_format": "xml"}, "echo_server_log_format"),
    ({"echo_server_service_state": "restarted"}, "echo_server_service_state"),
    ({"echo_server_port": "7007\nExecStartPre=/bin/true"}, "echo_server_port"),
]

SERVER_ACCEPTED: list[dict[str, Any]] = [
    {},
    {"echo_server_socket_activation": True},
    {"echo_server_host": "::", "echo_server_socket_activation": True},
    {"echo_server_host": "::1"},
    {"echo_server_host": "127.0.0.1", "echo_server_port": 1},
    {"echo_server_host": "server-1.example.net", "echo_server_port": 65535},
    {"echo_server_port": "7100", "echo_server_backlog": "1"},
    # Argument validation reads "1e3" as the integer 1000; the unit must say 1000 too.
    {"echo_server_port": "1e3"},
    {"echo_server_grace": 0, "echo_server_idle_timeout": 0},
    {"echo_server_grace": 0.25, "echo_server_idle_timeout": 86400},
    {"echo_server_reuseaddr": "no"},
    {"echo_server_reuseaddr": "yes", "echo_server_private_users": "false"},
    {"echo_server_reuseaddr": False, "echo_server_socket_activation": "off"},
    {"echo_server_service_name": "echolab-7100", "echo_server_install_dir": "/srv/echo_lab+1"},
    {"echo_server_user": "_echo-lab", "echo_server_group": "net_lab"},
    {"echo_server_verify_strategy": "reload"},
    {
        "echo_server_verify_strategy": "reload",
        "echo_server_reuseaddr": False,
        "echo_server_service_name": "echolab-7100",
        "echo_server_install_dir": "/srv/echo_lab+1",
    },
    {"echo_server_verify_strategy": "socket-activation", "echo_server_socket_activation": True},
]

LOADGEN_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"echo_loadgen_clients": 0}, "echo_loadgen_clients"),
    ({"echo_loadgen_payload": 0}, "echo_loadgen_payload"),
    ({"echo_loadgen_connections": -1}, "echo_loadgen_connections"),
    ({"echo_loadgen_duration": "0"}, "echo_loadgen_duration"),
    ({"echo_loadgen_duration": "-1s"}, "echo_loadgen_duration"),
    ({"echo_loadgen_duration": "1e30"}, "echo_loadgen_duration"),
    ({"echo_loadgen_duration": "10 s"}, "echo_loadgen_duration"),
    ({"echo_loadgen_timeout": "0"}, "echo_loadgen_timeout"),
    ({"echo_loadgen_timeout": "2h"}, "echo_loadgen_timeout"),
    ({"echo_loadgen_workers": "0"}, "echo_loadgen_workers"),
    ({"echo_loadgen_workers": "many"}, "echo_loadgen_workers"),
    ({"echo_loadgen_max_error_rate": 1.5}, "echo_loadgen_max_error_rate"),
    ({"echo_loadgen_max_error_rate": float("nan")}, "echo_loadgen_max_error_rate"),
    ({"echo_loadgen_seed": -1}, "echo_loadgen_seed"),
    ({"echo_loadgen_rate": -1}, "echo_loadgen_rate"),
    ({"echo_loadgen_rate": 10000001}, "echo_loadgen_rate"),
    ({"echo_loadgen_max_p99_ms": -5}, "echo_loadgen_max_p99_ms"),
    ({"echo_loadgen_max_p999_ms": float("nan")}, "echo_loadgen_max_p999_ms"),
    ({"echo_loadgen_target_port": 70000}, "echo_loadgen_target_port"),
    ({"echo_loadgen_target_host": "server --json /etc/passwd"}, "echo_loadgen_target_host"),
    ({"echo_loadgen_target_host": "server\n"}, "echo_loadgen_target_host"),
    ({"echo_loadgen_mode": "flood"}, "echo_loadgen_mode"),
    ({"echo_loadgen_install_dir": "/opt/load gen"}, "echo_loadgen_install_dir"),
]

LOADGEN_ACCEPTED: list[dict[str, Any]] = [
    {},
    {"echo_loadgen_connections": 0, "echo_loadgen_duration": "500ms"},
    {"echo_loadgen_mode": "stream", "echo_loadgen_duration": "2m", "echo_loadgen_workers": "4"},
    {"echo_loadgen_target_host": "::1", "echo_loadgen_target_port": 7100, "echo_loadgen_seed": 7},
    {"echo_loadgen_timeout": "1.5", "echo_loadgen_max_error_rate": "0.01"},
    {"echo_loadgen_rate": 200, "echo_loadgen_max_p99_ms": 50, "echo_loadgen_max_p999_ms": 2.5},
]


REFUSED = [("echo_server", case, name) for case, name in SERVER_REFUSED] + [
    ("echo_loadgen", case, name) for case, name in LOADGEN_REFUSED
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Outcome]]:
    """Every case of each role, run once per role and keyed by the case's repr."""
    by_role = {}
    for role, cases in (
        ("echo_server", [case for case, _ in SERVER_REFUSED] + SERVER_ACCEPTED),
        ("echo_loadgen", [case for case, _ in LOADGEN_REFUSED] + LOADGEN_ACCEPTED),
    ):
        results = run_cases(role, cases, tmp_path_factory.mktemp(role))
        by_role[role] = {repr(c): o for c, o in zip(cases, results, strict=True)}
    return by_role


def reference_keys(outcomes: dict[str, Outcome], socket_activation: bool) -> list[tuple[str, str]]:
    base = outcomes[repr({"echo_server_socket_activation": True} if socket_activation else {})]
    return [(s, k) for s, k, _ in unit_settings(base.rendered["service"])]


@pytest.mark.parametrize(("role", "case", "name"), REFUSED, ids=[n for _, _, n in REFUSED])
def test_refuses(outcomes: Any, role: str, case: dict[str, Any], name: str) -> None:
    outcome = outcomes[role][repr(case)]
    assert outcome.rejected, f"{case!r} was accepted: {outcome.rendered}"
    assert name in outcome.message, outcome.message


@pytest.mark.parametrize("case", SERVER_ACCEPTED, ids=map(repr, SERVER_ACCEPTED))
def test_server_renders_what_it_is_given(outcomes: Any, case: dict[str, Any]) -> None:
    server = outcomes["echo_server"]
    socket = as_bool(case.get("echo_server_socket_activation", False))
    check_server(server[repr(case)], role_defaults("echo_server"), reference_keys(server, socket))


def test_environment_values_are_quoted(outcomes: Any) -> None:
    """systemd.syntax(7): each Environment= assignment one double-quoted word."""
    settings = unit_settings(outcomes["echo_server"][repr({})].rendered["service"])
    env = [value for _, key, value in settings if key == "Environment"]
    assert len(env) == 9
    assert all(v.startswith('"ECHOLAB_') and v.endswith('"') for v in env), env


@pytest.mark.parametrize("case", LOADGEN_ACCEPTED, ids=map(repr, LOADGEN_ACCEPTED))
def test_loadgen_runs_what_it_is_given(outcomes: Any, case: dict[str, Any]) -> None:
    check_loadgen(outcomes["echo_loadgen"][repr(case)], role_defaults("echo_loadgen"))


def test_loadgen_open_loop_and_latency_limits_reach_the_command(outcomes: Any) -> None:
    case = next(c for c in LOADGEN_ACCEPTED if "echo_loadgen_rate" in c)
    argv = outcomes["echo_loadgen"][repr(case)].rendered["__echo_loadgen_argv"]
    joined = " ".join(argv)
    assert "--rate 200" in joined and "--max-p99 50.0" in joined and "--max-p999 2.5" in joined
    default = outcomes["echo_loadgen"][repr({})].rendered["__echo_loadgen_argv"]
    assert not {"--rate", "--max-p99", "--max-p999"} & set(default), default
