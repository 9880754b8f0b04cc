"""The state echo_server leaves on a host: a hardened, running systemd service that echoes.

Every assertion reads the host's real state (systemctl, ss, /proc, a real round trip) against
what the role recorded it configured (its facts file).
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Any

from conftest import unit_properties

testinfra_hosts = ["ansible://server"]

# The figure systemd-analyze must stay at or under (0 = fully sandboxed, 10 = not at all).
MAX_EXPOSURE = 2.0


def main_pid(host: Any, server: dict[str, Any]) -> int:
    pid = int(unit_properties(host, server["unit"], "MainPID")["MainPID"])
    assert pid > 0, f"{server['unit']} has no main process"
    return pid


def test_unit_is_enabled_and_active(host: Any, server: dict[str, Any]) -> None:
    service = host.service(server["unit"])
    assert service.is_enabled
    assert service.is_running
    if server["socket_activation"]:
        socket_unit = host.service(server["socket_unit"])
        assert socket_unit.is_enabled
        assert socket_unit.is_running


def test_server_runs_as_the_system_user(host: Any, server: dict[str, Any], as_root: Any) -> None:
    user = host.user(server["user"])
    assert user.exists
    assert user.uid < 1000, "a system account"
    assert user.shell == "/usr/sbin/nologin"
    pid = main_pid(host, server)
    with as_root():
        status = host.file(f"/proc/{pid}/status").content_string
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert uids is not None
    assert {int(uids.group(1)), int(uids.group(2))} == {user.uid}
    # The kernel's view of the sandbox: no capabilities, no new privileges, a seccomp filter.
    fields = dict(re.findall(r"^(\w+):\s+(.*)$", status, re.MULTILINE))
    assert fields["CapBnd"] == "0000000000000000"
    assert fields["CapEff"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_environment_carries_every_server_option(host: Any, server: dict[str, Any]) -> None:
    """The unit's environment as systemd parsed it: every option, each value exactly once."""
    env = unit_properties(host, server["unit"], "Environment")["Environment"]
    pairs = [item.split("=", 1) for item in shlex.split(env)]
    assert len(pairs) == len(dict(pairs)), env
    assert dict(pairs) == {key: str(value) for key, value in server["environment"].items()}
    assert dict(pairs)["ECHOLAB_PORT"] == str(server["port"])
    assert dict(pairs)["ECHOLAB_NO_REUSEADDR"] == ("0" if server["reuseaddr"] else "1")


def test_unit_is_written_for_a_forking_server(host: Any, server: dict[str, Any]) -> None:
    props = unit_properties(
        host, server["unit"], "KillMode", "KillSignal", "TimeoutStopUSec", "TasksMax", "Restart"
    )
    assert props["KillMode"] == "mixed", "SIGTERM to the parent only: it drains its children"
    assert props["KillSignal"] == "15"
    assert props["Restart"] == "on-failure"
    assert int(props["TasksMax"]) > int(server["max_children"])
    # systemctl prints TimeoutStopUSec as e.g. "11s" or "1min 5s".
    stop_s = sum(
        float(n) * {"min": 60, "s": 1, "ms": 0.001}[unit]
        for n, unit in re.findall(r"([\d.]+)(min|ms|s)\b", props["TimeoutStopUSec"])
    )
    assert stop_s > float(server["grace"]) + 1


def test_unit_hardening(host: Any, server: dict[str, Any]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "RestrictAddressFamilies": "AF_INET AF_INET6",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "UMask": "0077",
    }
    props = unit_properties(host, server["unit"], *expected, "SystemCallFilter", "User")
    assert {k: props[k] for k in expected} == expected
    assert props["User"] == server["user"]
    # An allow list (no leading ~) that lets the server fork, splice and accept, not reboot.
    filt = props["SystemCallFilter"].split()
    assert filt[0] != "~"
    assert {"fork", "clone", "splice", "accept4", "wait4"} & set(filt)
    assert "reboot" not in filt and "mount" not in filt


def test_unit_runs_only_its_own_commands(host: Any, server: dict[str, Any]) -> None:
    """No input can add a command to the unit: exactly one ExecStart and one ExecStartPost,
    both the role's, and nothing run before the start (an ExecStartPre=+ would run as root)."""
    props = unit_properties(host, server["unit"], "ExecStartPre", "ExecStart", "ExecStartPost")
    assert props.get("ExecStartPre", "") == ""
    assert props["ExecStart"].count("path=") == 1
    assert f"path={server['bin']} " in props["ExecStart"]
    assert props["ExecStartPost"].count("path=") == 1
    assert f"path={server['install_dir']}/wait-ready " in props["ExecStartPost"]
    reload = unit_properties(host, server["unit"], "ExecReload")["ExecReload"]
    assert reload.count("path=") == 1 and "argv[]=/bin/kill -HUP $MAINPID " in reload, reload


def test_exposure_is_at_most_two(host: Any, server: dict[str, Any], as_root: Any) -> None:
    with as_root():
        out = host.check_output(
            f"systemd-analyze security --no-pager -- {shlex.quote(server['unit'])}"
        )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE, out


def test_listener_is_owned_by_the_main_process_only(
    host: Any, server: dict[str, Any], as_root: Any
) -> None:
    """Children close their copy of the listener: with a client connected (so one child
    exists), only the parent (and systemd, under socket activation) holds the LISTEN socket."""
    port = int(server["port"])
    hold = (
        "import socket, time; "
        f"s = socket.create_connection(('127.0.0.1', {port})); s.sendall(b'x'); s.recv(1); "
        "time.sleep(3)"
    )
    script = (
        f"python3 -c {shlex.quote(hold)} & sleep 1; "
        f"echo LISTEN; ss -Hltnp 'sport = :{port}'; "
        f"echo ESTAB; ss -Htnp state established '( sport = :{port} )'; "
        "echo PS; ps -eo pid=,ppid=; wait"
    )
    with as_root():
        out = host.check_output(f"sh -c {shlex.quote(script)}")
    listen, _, rest = out.partition("ESTAB")
    estab, _, ps = rest.partition("PS")
    ppids = dict(tuple(map(int, line.split())) for line in ps.strip().splitlines())
    parent = main_pid(host, server)
    listeners = {int(p) for p in re.findall(r"pid=(\d+)", listen)}
    expected = {parent} | ({1} if server["socket_activation"] else set())
    assert listeners == expected, out
    children = {int(p) for p in re.findall(r"pid=(\d+)", estab)}
    assert children, f"no child serving the held connection:\n{out}"
    assert parent not in children
    for child in children:
        assert ppids.get(child) == parent, f"pid {child} is not a child of the server:\n{out}"


def test_echo_round_trip(host: Any, server: dict[str, Any]) -> None:
    argv = [server["bin"], "probe", "--target", server["probe_target"], "--payload", "65536"]
    result = host.run(shlex.join(argv))
    assert result.rc == 0, result.stderr
    assert "echoed intact" in result.stdout


def test_systemctl_reload_reloads_in_place(host: Any, server: dict[str, Any], as_root: Any) -> None:
    """`systemctl reload` (ExecReload: SIGHUP to the main process): the same process, a new
    generation in the journal, and the service still echoes."""
    unit = shlex.quote(server["unit"])
    before = main_pid(host, server)
    invocation = unit_properties(host, server["unit"], "InvocationID")["InvocationID"]
    journal = f"journalctl --no-pager --output cat _SYSTEMD_INVOCATION_ID={invocation}"

    def generations() -> list[int]:
        with as_root():
            out = host.check_output(journal)
        return [int(n) for n in re.findall(r"reloaded: generation (\d+),", out)]

    seen = max(generations(), default=1)
    with as_root():
        host.run_expect([0], f"systemctl reload -- {unit}")
    deadline = time.monotonic() + 30
    while seen + 1 not in generations():
        assert time.monotonic() < deadline, f"no 'reloaded: generation {seen + 1}' in the journal"
        time.sleep(0.2)
    assert main_pid(host, server) == before, "a reload must not start another process"
    props = unit_properties(host, server["unit"], "ActiveState", "InvocationID")
    assert props == {"ActiveState": "active", "InvocationID": invocation}
    argv = [server["bin"], "probe", "--target", server["probe_target"]]
    result = host.run(shlex.join(argv))
    assert result.rc == 0 and "echoed intact" in result.stdout, result.stdout + result.stderr
