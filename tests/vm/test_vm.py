"""Real VMs end to end, through make as a user runs it: image, two VMs booted under qemu, SSH
on loopback forwards, the private link, isolation from the host, Ansible through the written
inventory, and nothing left running after vm-down (a failed boot and an interrupt:
test_vm_failures.py).

Uses a state directory of its own (out/vm/test-run), so a set a person has up is left alone;
the image in out/vm/images is shared (built when missing: needs root or sudo -n). Slow: a VM
boots in about 40 s under TCG. Without qemu and the rights to install it this skips; under
CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, require

# isort: split
# vm/ is a directory of scripts, first-party or not depending on how ruff is invoked.
from vm import vmctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STATE = ROOT / "out/vm/test-run"


def run_make(state: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`make ARGS` from the repository on the set of VMs kept in `state`."""
    return subprocess.run(
        ["make", "--no-print-directory", *args, f"VM_STATE={state}"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def make(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return run_make(STATE, *args, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def settings() -> vmctl.Settings:
    return vmctl.Settings(
        state_dir=STATE,
        image_dir=ROOT / "out/vm/images/bookworm",
        key=ROOT / "out/vm/ssh/id_ed25519",
    )


def tag() -> str:
    return settings().tag


def can_run_vms() -> bool:
    rooted = os.geteuid() == 0 or (
        shutil.which("sudo") is not None
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    )
    image = (ROOT / "out/vm/images/bookworm/complete").exists()
    return rooted or (shutil.which(vmctl.QEMU) is not None and image)


def ssh(port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*vmctl.ssh_base(settings(), port), command],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc/net/tcp (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture(scope="module")
def vms() -> Iterator[dict[str, Any]]:
    require(can_run_vms(), "qemu and a VM image, or root/sudo -n to install and build them")
    make("vm-down")
    started = time.monotonic()
    out = ok(make("vm-boot"))
    assert "logs in, sudo works" in out
    inventory = yaml.safe_load((STATE / "inventory.yml").read_text())
    yield {"inventory": inventory, "up_s": time.monotonic() - started, "stdout": out}
    ok(make("vm-down"))


def hosts(inventory: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = inventory["all"]["children"]
    return {name: h for g in groups.values() for name, h in g["hosts"].items()}


def test_two_vms_boot_and_ssh_is_forwarded_on_loopback_only(vms: dict[str, Any]) -> None:
    found = hosts(vms["inventory"])
    assert set(found) == {"server1", "loadgen1"}
    running = vmctl.qemu_pids(tag())
    assert sorted(running.values()) == ["loadgen1", "server1"]
    for name, host in found.items():
        assert host["ansible_host"] == "127.0.0.1"
        assert listening_addresses(host["ansible_port"]) == {"127.0.0.1"}, name
        login = ssh(host["ansible_port"], "hostname; sudo -n id -un; systemctl is-active dbus")
        assert login.stdout.split() == [name, "root", "active"], login.stderr
    state = json.loads((STATE / "state.json").read_text())
    assert {vm["pid"] for vm in state["vms"]} == set(running)


def test_up_again_keeps_the_running_set(vms: dict[str, Any]) -> None:
    before = vmctl.qemu_pids(tag())
    out = ok(make("vm-boot", timeout=600))
    assert "vm: server1, loadgen1 already up" in out
    assert vmctl.qemu_pids(tag()) == before
    assert yaml.safe_load((STATE / "inventory.yml").read_text()) == vms["inventory"]


def test_vm_check_passes(vms: dict[str, Any]) -> None:
    out = ok(make("vm-check", timeout=600))
    assert "vm: server1: ok" in out and "vm: loadgen1: ok" in out


# Guest-side programs, sent on ssh's stdin.
ONE_GREETING = """
import pathlib, socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as s:
    pathlib.Path("/tmp/prog.listening").touch()
    conn, peer = s.accept()
    conn.sendall(b"from-server " + peer[0].encode())
    conn.close()
"""
CONNECT = """
import socket, sys
for address in sys.argv[2:]:
    try:
        with socket.create_connection((address, int(sys.argv[1])), timeout=5) as s:
            print(address, "connected", s.recv(64).decode())
    except OSError as exc:
        print(address, type(exc).__name__)
"""


def guest_python(port: int, program: str, *args: str, background: bool = False) -> str:
    """Run a Python program on the VM whose SSH is forwarded from `port`; its output. In the
    background: until it has made /tmp/prog.listening (at most 5 minutes)."""
    run = f"python3 /tmp/prog.py {' '.join(args)}"
    if background:
        run = (
            f"rm -f /tmp/prog.listening; nohup {run} >/dev/null 2>&1 & "
            "for i in $(seq 3000); do [ -e /tmp/prog.listening ] && exit 0; sleep 0.1; done; exit 1"
        )
    proc = subprocess.run(
        [*vmctl.ssh_base(settings(), port), f"cat >/tmp/prog.py && {run}"],
        input=program, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_loadgen_reaches_the_server_on_the_private_link(vms: dict[str, Any]) -> None:
    found = hosts(vms["inventory"])
    server = found["server1"]["echolab_link_address"]
    loadgen_vars = vms["inventory"]["all"]["children"]["loadgen"]["vars"]
    assert loadgen_vars["echo_loadgen_target_host"] == server
    # A listener on the server's link address only, a client on the loadgen: a real exchange.
    guest_python(found["server1"]["ansible_port"], ONE_GREETING, server, "7999", background=True)
    reply = guest_python(found["loadgen1"]["ansible_port"], CONNECT, "7999", server)
    loadgen = found["loadgen1"]["echolab_link_address"]
    assert reply.strip() == f"{server} connected from-server {loadgen}"


def test_a_vm_reaches_nothing_on_the_host(vms: dict[str, Any]) -> None:
    """restrict=on: no connection from a guest arrives at a listener on the host, whatever
    address the guest tries (qemu's gateway and DNS addresses, its own address)."""
    arrived: list[Any] = []
    done = threading.Event()
    with socket.create_server(("0.0.0.0", 0)) as listener:
        port = listener.getsockname()[1]
        listener.settimeout(1)

        def watch() -> None:
            while not done.is_set():
                try:
                    arrived.append(listener.accept()[1])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=watch)
        thread.start()
        try:
            tried = ("10.0.2.2", "10.0.2.3", "10.0.2.15")
            out = guest_python(
                hosts(vms["inventory"])["loadgen1"]["ansible_port"], CONNECT, str(port), *tried
            )
        finally:
            done.set()
            thread.join()
    assert len(out.splitlines()) == 3, out
    assert "connected" not in out
    assert arrived == []


def test_ansible_drives_both_vms_through_the_inventory(vms: dict[str, Any]) -> None:
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_FORCE_COLOR": "0"}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/ansible"), "all", "-i", str(STATE / "inventory.yml"), "-m",
         "ansible.builtin.command", "-a", "id -un", "-o"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["loadgen1", "server1"]
    assert all("(stdout) root" in line for line in lines), lines  # become through sudo


def test_vm_ssh_runs_a_command_on_the_named_vm(vms: dict[str, Any]) -> None:
    out = ok(make("vm-ssh", "VM=loadgen1", "VM_CMD=hostname"))
    assert out.strip() == "loadgen1"


def test_vm_down_leaves_nothing_running(vms: dict[str, Any]) -> None:
    ok(make("vm-down"))
    assert vmctl.qemu_pids(tag()) == {}
    assert not (STATE / "inventory.yml").exists()
    assert list(STATE.glob("*/disk.qcow2")) == []
    assert ok(make("vm-status")).strip() == "vm: no VM is up"
