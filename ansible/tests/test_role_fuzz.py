"""Property-based tests of the role inputs (Hypothesis): any value of any input, hostile text
included, ends in a clean validation failure or in a unit (an argument vector) that says
exactly what the inputs say — never in a line the template did not write, a control character,
a value the server would reject at start, or a failure outside validation.

Each example is a batch of cases run by one ansible-playbook process (harness.py); examples and
batch sizes are bounded so that `make ansible-test` stays within about a minute. The inputs
that matter most for injection (host, names, paths) draw from hostile text on purpose.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import role_defaults, run_cases
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from properties import as_bool, check_loadgen, check_server, unit_settings

BATCH = 40
SETTINGS = settings(
    max_examples=2,
    deadline=None,
    derandomize=False,
    database=None,
    # A failing batch names its case; shrinking would re-run ansible-playbook for minutes.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text that tries to break out of a unit line, a quoted word, a specifier or a shell word.
HOSTILE = st.sampled_from(
    [
        "\n",
        "\r",
        "\x00",
        "\t",
        " ",
        '"',
        "'",
        "\\",
        "%",
        "%h",
        "$",
        "${PATH}",
        ";",
        "|",
        "`",
        "$(id)",
        "\nExecStartPre=+/bin/sh -c id",
        "[Service]",
        "#",
        "=",
        "\u2028",
        "é",
    ]
)
TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(HOSTILE, st.text(max_size=8)), max_size=5).map("".join),
)
NUMBER = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["0", "1", "7007", "1e3", "0x10", "-1", " 5", "5\n"]),
    st.booleans(),
)
BOOL = st.one_of(
    st.booleans(),
    st.sampled_from(["yes", "no", "true", "false", "on", "off", "1", "0", "maybe", ""]),
    st.integers(min_value=-1, max_value=2),
)


def prefixed(value: st.SearchStrategy[Any], *valid: Any) -> st.SearchStrategy[Any]:
    """Valid values often (so that rendering is exercised), anything else as often."""
    return st.one_of(st.sampled_from(valid), value) if valid else value


SERVER = {
    "echo_server_host": prefixed(TEXT, "0.0.0.0", "::", "127.0.0.1", "::1", "srv-1.example"),
    "echo_server_port": prefixed(NUMBER, 1, 7007, 65535),
    "echo_server_backlog": prefixed(NUMBER, 1, 128),
    "echo_server_max_children": prefixed(NUMBER, 1, 512),
    "echo_server_idle_timeout": prefixed(NUMBER, 0, 300, 0.5),
    "echo_server_grace": prefixed(NUMBER, 0, 5, 1.25),
    "echo_server_reuseaddr": BOOL,
    "echo_server_socket_activation": BOOL,
    "echo_server_private_users": BOOL,
    "echo_server_user": prefixed(TEXT, "echolab", "_svc-1"),
    "echo_server_group": prefixed(TEXT, "echolab", "net"),
    "echo_server_service_name": prefixed(TEXT, "echolab", "echo-2.lab"),
    "echo_server_install_dir": prefixed(TEXT, "/opt/echolab", "/srv/a_b+c"),
    "echo_server_log_level": prefixed(TEXT, "debug", "error"),
    "echo_server_log_format": prefixed(TEXT, "text", "json"),
    "echo_server_ready_timeout": prefixed(NUMBER, 1, 10),
    "echo_server_restart_sec": prefixed(NUMBER, 0, 5),
    "echo_server_verify_clients": prefixed(NUMBER, 5),
}

LOADGEN = {
    "echo_loadgen_target_host": prefixed(TEXT, "", "10.0.0.2", "srv.example", "::1"),
    "echo_loadgen_target_port": prefixed(NUMBER, 0, 7007),
    "echo_loadgen_mode": prefixed(TEXT, "rate", "stream", "hold"),
    "echo_loadgen_clients": prefixed(NUMBER, 1, 64),
    "echo_loadgen_connections": prefixed(NUMBER, 0, 2000),
    "echo_loadgen_duration": prefixed(TEXT, "10s", "500ms", "2m", "1"),
    "echo_loadgen_timeout": prefixed(TEXT, "5s", "0.5"),
    "echo_loadgen_workers": prefixed(TEXT, "auto", "2"),
    "echo_loadgen_payload": prefixed(NUMBER, 64),
    "echo_loadgen_max_error_rate": prefixed(NUMBER, 0, 0.5),
    "echo_loadgen_seed": prefixed(NUMBER, 0, 7),
    "echo_loadgen_rate": prefixed(NUMBER, 0, 200),
    "echo_loadgen_max_p99_ms": prefixed(NUMBER, 0, 50),
    "echo_loadgen_max_p999_ms": prefixed(NUMBER, 0, 2.5),
}


def cases(inputs: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A case sets one to four inputs; the others keep their defaults."""
    return st.lists(st.sampled_from(sorted(inputs)), min_size=1, max_size=4, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: inputs[name] for name in names})
    )


@pytest.fixture(scope="module")
def server_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, list[Any]]:
    """The setting keys of a default unit, without and with socket activation."""
    outcomes = run_cases(
        "echo_server",
        [{}, {"echo_server_socket_activation": True}],
        tmp_path_factory.mktemp("reference"),
    )
    return {
        mode: [(s, k) for s, k, _ in unit_settings(o.rendered["service"])]
        for mode, o in zip((False, True), outcomes, strict=True)
    }


@SETTINGS
@given(batch=st.lists(cases(SERVER), min_size=BATCH, max_size=BATCH))
def test_server_inputs_never_inject(
    batch: list[dict[str, Any]],
    server_reference: dict[bool, list[Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    defaults = role_defaults("echo_server")
    for outcome in run_cases("echo_server", batch, tmp_path_factory.mktemp("fuzz")):
        if outcome.rejected or outcome.failed_task is not None:
            check_server(outcome, defaults, [])
            continue
        mode = as_bool(outcome.case.get("echo_server_socket_activation", False))
        check_server(outcome, defaults, server_reference[mode])


@SETTINGS
@given(batch=st.lists(cases(LOADGEN), min_size=BATCH, max_size=BATCH))
def test_loadgen_inputs_stay_in_bounds(
    batch: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    defaults = role_defaults("echo_loadgen")
    for outcome in run_cases("echo_loadgen", batch, tmp_path_factory.mktemp("fuzz")):
        check_loadgen(outcome, defaults)
