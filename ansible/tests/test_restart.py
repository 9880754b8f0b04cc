"""The headline check on a host provisioned by echo_server: restart the service while clients
are connected. With SO_REUSEADDR it binds at once while server-side TIME_WAIT sockets linger;
without it (echo_server_reuseaddr: false) the restart fails with EADDRINUSE, and the service
comes back by itself (Restart=on-failure) once the TIME_WAIT sockets expire.

`echolab restart-check` does the measuring, on the server's own host (TIME_WAIT can only be
read in the server's network namespace). The precondition, TIME_WAIT >= 1 at the restart, is
asserted before the outcome.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from conftest import run_json

testinfra_hosts = ["ansible://server"]

REBIND_WITHIN_MS = 1000.0  # the new server echoes within a second of the old one being gone
RECOVER_WITHIN_S = 150.0  # TIME_WAIT lasts 60 s on Linux; Restart=on-failure retries every 5 s


def restart_check(host: Any, server: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    unit = server["unit"]
    restart_cmd = (
        f"systemctl restart {unit} || "
        f"{{ journalctl --unit {unit} --lines 20 --output cat --no-pager; exit 1; }}"
    )
    command = [
        server["bin"],
        "restart-check",
        "--restart-cmd",
        restart_cmd,
        "--target",
        server["target"],
        "--clients",
        "5",
        "--timeout",
        str(float(server["echo_server_grace"]) + 20),
        "--json",
        "-",
    ]
    if not server["echo_server_reuseaddr"]:
        command.append("--no-reuseaddr")
    return run_json(host, shlex.join(command), ok=(0, 1, 3))


def test_restart_under_time_wait(host: Any, server: dict[str, Any]) -> None:
    rc, report = restart_check(host, server)
    # The precondition first: without server-side TIME_WAIT the run proves nothing.
    assert report["time_wait_at_restart"] >= 1, report["reason"]
    assert report["closed_by_server"] >= 1, report
    if server["echo_server_reuseaddr"]:
        assert report["rebind"] == "ok", report["reason"]
        assert report["rebind_ms"] <= REBIND_WITHIN_MS, report
        assert report["verdict"] == "pass", report["reason"]
        assert rc == 0
        if server["echo_server_socket_activation"]:
            # systemd kept the listening socket: nobody was turned away.
            assert report["refused_during_restart"] == 0, report
        assert host.service(server["unit"]).is_running
        probe = host.run(f"{server['bin']} probe --target {server['target']}")
        assert probe.rc == 0, probe.stderr
        return
    # The negative control: the restart could not bind while TIME_WAIT lingered.
    assert report["rebind"] == "EADDRINUSE", report
    assert report["verdict"] == "pass", report["reason"]
    assert rc == 0
    # ... and the service comes back by itself once the TIME_WAIT sockets expire.
    deadline = time.monotonic() + RECOVER_WITHIN_S
    while True:
        probe = host.run(f"{server['bin']} probe --quiet --target {server['target']}")
        if probe.rc == 0:
            break
        assert time.monotonic() < deadline, "the service did not come back after TIME_WAIT"
        time.sleep(5)
    assert host.service(server["unit"]).is_running
