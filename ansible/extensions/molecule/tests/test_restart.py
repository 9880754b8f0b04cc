"""The headline check on a host provisioned by echo_server: restart the service while clients
are connected, by the strategy the role was told to check by (echo_server_verify_strategy, from
the facts file). Stop-start with SO_REUSEADDR binds while server-side TIME_WAIT sockets linger;
without it (echo_server_reuseaddr: false) the restart fails with EADDRINUSE, and systemd goes
on trying (Restart=on-failure) until the TIME_WAIT sockets expire. That the service does come
back then (about a minute later) is echolab.lab.verify_restart's to wait for and prove; this
test leaves a negative-control host recovering on its own. Socket activation and reload
(`systemctl reload`: a new generation in the unit's journal, the same main process and
listener) turn nobody away.

`echolab restart-check` is the one judge, on the server's own host (TIME_WAIT can only be read
in the server's network namespace): its verdict and exit status (0 pass, 1 fail, 3 invalid).
It runs the same command line the role's verify_restart runs (from the facts file); nothing
here re-judges it by its timings, which are only reported.
"""

from __future__ import annotations

import shlex
from typing import Any

from conftest import run_json, unit_properties

testinfra_hosts = ["ansible://server"]


def test_restart_under_time_wait(host: Any, server: dict[str, Any], as_root: Any) -> None:
    with as_root():
        rc, report = run_json(host, [*server["restart_argv"], "--json", "-"], ok=(0, 1, 3))
    summary = (
        f"{report['verdict'].upper()} (exit {rc}): {report['reason']} "
        f"[TIME_WAIT at restart {report['time_wait_at_restart']}, rebind {report['rebind']} "
        f"after {report['rebind_ms']} ms, echo again after {report['restart_ms']} ms, "
        f"refused {report['refused_during_restart']} of {report['probe_attempts']}]"
    )
    print(summary)
    assert rc == 0 and report["verdict"] == "pass", summary
    # The strategy the role was told to check by (hosts provisioned before it had one: stop-start).
    strategy = server.get("verify_strategy", "stop-start")
    assert report["strategy"] == strategy, "restart-check ran by the wrong strategy"
    if strategy == "reload":
        # `systemctl reload`: a new generation in the journal, from the unit's main process,
        # which still holds the same listener.
        assert report["generation_after"] > report["generation_before"], summary
        main_pid = int(unit_properties(host, server["unit"], "MainPID")["MainPID"])
        assert report["server_pid_before"] == report["server_pid_after"] == main_pid, summary
        assert report["reload_pid"] == main_pid, summary
        assert report["listeners_before"] == report["listeners_after"] != [], summary
    if strategy != "stop-start":
        assert report["refused_during_restart"] == 0, summary  # its verdict says so too
        return
    assert report["reuseaddr"] == server["reuseaddr"], "restart-check ran in the wrong mode"
    if server["reuseaddr"]:
        if server["socket_activation"]:
            # systemd kept the listening socket: nobody was turned away.
            assert report["refused_during_restart"] == 0, summary
        assert host.service(server["unit"]).is_running
        probe = host.run(shlex.join([server["bin"], "probe", "--target", server["probe_target"]]))
        assert probe.rc == 0, probe.stderr
        return
    # The negative control: the unit is not failed; systemd keeps starting it until it binds.
    state = unit_properties(host, server["unit"], "ActiveState", "Restart", "Result")
    assert state["Restart"] == "on-failure", state
    assert state["ActiveState"] in ("activating", "active"), state
