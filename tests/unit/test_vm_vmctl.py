"""vm/vmctl.py without booting a VM: the VM set, qemu's command line (the network rules), the
identity, the inventory, the console parsing, and finding and ending processes by tag (on real
processes). Booting real VMs is tests/vm/."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, require

# isort: split
# vm/ is a directory of scripts, first-party or not depending on how ruff is invoked.
from vm import vmctl


def settings_in(tmp_path: Path) -> vmctl.Settings:
    key = tmp_path / "ssh" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("private\n")
    key.with_suffix(".pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST echolab-vm\n")
    return vmctl.Settings(state_dir=tmp_path / "run", image_dir=tmp_path / "image", key=key)


def two_vms() -> list[vmctl.VM]:
    vms = vmctl.parse_vm_specs(["server1:server", "loadgen1:loadgen"])
    for port, vm in zip((41001, 41002), vms, strict=True):
        vm.ssh_port = port
    return vms


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


# --- the set -------------------------------------------------------------------------------


def test_specs_give_names_groups_and_distinct_addresses() -> None:
    vms = vmctl.parse_vm_specs(["server1:server", "loadgen1:loadgen", "web"])
    assert [(v.name, v.group, v.index) for v in vms] == [
        ("server1", "server", 0),
        ("loadgen1", "loadgen", 1),
        ("web", "ungrouped", 2),
    ]
    assert [v.link_address for v in vms] == ["10.77.0.10", "10.77.0.11", "10.77.0.12"]
    macs = [v.mgmt_mac for v in vms] + [v.link_mac for v in vms]
    assert len(set(macs)) == len(macs)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "no VM to start"),
        (["Server"], "a name is"),
        (["srv:Bad-Group"], "a group is"),
        (["a:x", "a:y"], "given twice"),
        (["a;rm -rf /"], "a name is"),
        (["a:x,Bad"], "a group is"),
        (["a:x,x"], "a group is given twice"),
        (["server:server"], "named like a group"),
        (["web:x", "lg:loadgen,web"], "named like a group"),
    ],
)
def test_bad_specs_are_usage_errors(specs: list[str], message: str) -> None:
    with pytest.raises(vmctl.VMError, match=message) as err:
        vmctl.parse_vm_specs(specs)
    assert err.value.code == vmctl.EXIT_USAGE


# --- qemu's command line: the network rules -------------------------------------------------


def test_ssh_is_forwarded_on_loopback_only_and_nothing_is_routed_out(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    vms = two_vms()
    for vm in vms:
        argv = vmctl.qemu_argv(vm, vms, settings)
        user = [n for n in option_values(argv, "-netdev") if n.startswith("user,")]
        assert user == [f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22"]
        netdevs = option_values(argv, "-netdev")
        # No tap, bridge, multicast or TCP socket: the private link is unix sockets only.
        kinds = {n.split(",")[0] for n in netdevs}
        assert kinds <= {"user", "hubport", "stream"}, netdevs
        for stream in (n for n in netdevs if n.startswith("stream,")):
            assert "addr.type=unix" in stream, stream
        assert "0.0.0.0" not in " ".join(argv)


def test_the_first_vm_hosts_the_hub_and_the_others_join_it(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    vms = vmctl.parse_vm_specs(["s1:server", "s2:server", "lg:loadgen"])
    hub = option_values(vmctl.qemu_argv(vms[0], vms, settings), "-netdev")
    for peer in vms[1:]:
        path = settings.hub_socket(peer)
        assert f"stream,id=peer{peer.index},server=on,addr.type=unix,addr.path={path}" in hub
        assert f"hubport,id=hub{peer.index},hubid=0,netdev=peer{peer.index}" in hub
        joined = option_values(vmctl.qemu_argv(peer, vms, settings), "-netdev")
        assert f"stream,id=link,server=off,addr.type=unix,addr.path={path}" in joined
    assert "hubport,id=link,hubid=0" in hub


def test_every_qemu_carries_the_state_directorys_tag(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    other = vmctl.Settings(state_dir=tmp_path / "other", image_dir=tmp_path, key=settings.key)
    assert settings.tag != other.tag
    vms = two_vms()
    names = [option_values(vmctl.qemu_argv(vm, vms, settings), "-name")[0] for vm in vms]
    assert names == [f"echolab-{settings.tag}-server1,process=qemu-server1",
                     f"echolab-{settings.tag}-loadgen1,process=qemu-loadgen1"]  # fmt: skip


def test_the_accelerator_and_cpu_reach_qemu(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    vms = two_vms()
    tcg = vmctl.qemu_argv(vms[0], vms, settings)
    assert option_values(tcg, "-accel") == ["tcg,thread=multi"]
    assert option_values(tcg, "-cpu") == ["max"]
    settings.accel, settings.cpu = "kvm", "host,-arch-capabilities"
    kvm = vmctl.qemu_argv(vms[0], vms, settings)
    assert option_values(kvm, "-accel") == ["kvm"]
    assert option_values(kvm, "-cpu") == ["host,-arch-capabilities"]


# --- identity and inventory -----------------------------------------------------------------


def test_identity_carries_what_the_guest_unit_reads(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.user = "ops"
    vm = two_vms()[1]
    lines = dict(line.split("=", 1) for line in vmctl.identity_text(vm, settings).splitlines())
    assert lines == {
        "hostname": "loadgen1",
        "user": "ops",
        "ssh_authorized_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST echolab-vm",
        "mgmt_mac": vm.mgmt_mac,
        "link_mac": vm.link_mac,
        "link_address": "10.77.0.11/24",
    }
    # Every key the host sends is one the guest script knows.
    guest = (ROOT / "vm/guest/echolab-identity").read_text()
    for key in lines:
        assert f"id[{key}]" in guest, key


def test_inventory_reaches_each_vm_on_its_forwarded_port_as_the_user(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.user = "ops"
    inventory = yaml.safe_load(vmctl.inventory_text(two_vms(), settings))
    common = inventory["all"]["vars"]
    assert common["ansible_user"] == "ops"
    assert common["ansible_become"] is True
    assert common["ansible_ssh_private_key_file"] == str(settings.key.resolve())
    args = common["ansible_ssh_common_args"]
    assert f"UserKnownHostsFile={(settings.state_dir / 'known_hosts').resolve()}" in args
    assert "StrictHostKeyChecking=yes" in args
    groups = inventory["all"]["children"]
    assert groups["server"]["hosts"]["server1"] == {
        "ansible_host": "127.0.0.1",
        "ansible_port": 41001,
        "echolab_link_address": "10.77.0.10",
    }
    assert groups["loadgen"]["hosts"]["loadgen1"]["ansible_port"] == 41002
    # The loadgen targets the server where it can reach it: its private-link address.
    assert groups["loadgen"]["vars"]["echo_loadgen_target_host"] == "10.77.0.10"


def test_a_vm_in_two_groups_with_host_vars_as_ansible_reads_it(tmp_path: Path) -> None:
    """The loadgen VM doubling as the negative-control server: in both groups, its variables
    once; read back by ansible-inventory itself, not just a YAML parser."""
    vms = vmctl.parse_vm_specs(["server1:server", "loadgen1:loadgen,server"])
    vmctl.apply_host_vars(
        vms, ["loadgen1:echo_server_reuseaddr=false", "loadgen1:echo_loadgen_clients=8",
              "server1:note=plain text"],
    )  # fmt: skip
    for port, vm in zip((41001, 41002), vms, strict=True):
        vm.ssh_port = port
    path = tmp_path / "inventory.yml"
    path.write_text(vmctl.inventory_text(vms, settings_in(tmp_path)))
    tool = ROOT / ".venv/bin/ansible-inventory"
    require(tool.exists(), "ansible-inventory in .venv (make venv-infra)")
    out = subprocess.run(
        [str(tool), "-i", str(path), "--list"], capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out)
    assert seen["server"]["hosts"] == ["server1", "loadgen1"]
    assert seen["loadgen"]["hosts"] == ["loadgen1"]
    loadgen = seen["_meta"]["hostvars"]["loadgen1"]
    assert loadgen["ansible_port"] == 41002
    assert loadgen["echo_server_reuseaddr"] is False
    assert loadgen["echo_loadgen_clients"] == 8
    assert loadgen["echo_loadgen_target_host"] == "10.77.0.10"
    assert seen["_meta"]["hostvars"]["server1"]["note"] == "plain text"
    assert "echo_server_reuseaddr" not in seen["_meta"]["hostvars"]["server1"]


@pytest.mark.parametrize(
    "spec", ["nobody:x=1", "server1:x", "server1:Bad=1", "server1=1", "server1:=1"]
)
def test_bad_host_vars_are_usage_errors(spec: str) -> None:
    vms = vmctl.parse_vm_specs(["server1:server"])
    with pytest.raises(vmctl.VMError, match="--host-var") as err:
        vmctl.apply_host_vars(vms, [spec])
    assert err.value.code == vmctl.EXIT_USAGE


def test_state_round_trips(tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    settings.state_dir.mkdir()
    vms = two_vms()
    vms[0].pid = 1234
    vmctl.save_state(vms, settings)
    loaded, saved = vmctl.load_state(settings.state_dir)
    assert loaded == vms
    assert saved["user"] == "debian"
    assert vmctl.load_state(tmp_path / "nothing") == ([], {})


# --- the console ----------------------------------------------------------------------------

CONSOLE = (
    "\x1b[0;32m  OK  \x1b[0m] Started foo\r\n"
    "M\x1b[K[\x1b[0;31m*     \x1b[0m] A start job is running\r\n"
    "echolab-identity: hostkey ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBf7B2AM07l5oOg+/=\r\n"
    "echolab-identity: ready hostname=server user=debian link=10.77.0.10/24\r\n"
)


def test_the_host_key_and_milestones_are_read_through_terminal_escapes(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(CONSOLE)
    text = vmctl.read_text(log)
    assert "\x1b" not in text and "\r" not in text
    match = vmctl.HOSTKEY_RE.search(text)
    assert match
    assert match.group(1) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBf7B2AM07l5oOg+/="
    assert vmctl.MILESTONES[-1][0].search(text)
    assert vmctl.read_text(tmp_path / "missing.log") == ""


def test_the_banner_check_tells_a_listening_sshd_from_a_bare_forward() -> None:
    """qemu's forward accepts every connection; only the SSH banner proves sshd is there."""
    import socket
    import threading

    with socket.socket() as silent, socket.socket() as sshd:
        for s in (silent, sshd):
            s.bind(("127.0.0.1", 0))
            s.listen()

        def serve() -> None:
            conn, _ = sshd.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        assert vmctl.ssh_banner(sshd.getsockname()[1])
        thread.join()
        assert not vmctl.ssh_banner(silent.getsockname()[1])
    assert not vmctl.ssh_banner(vmctl.free_port())


# --- processes ------------------------------------------------------------------------------


def sleeper(marker: str) -> subprocess.Popen[bytes]:
    """A real process whose command line carries `marker`, as qemu's -name does."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", marker],
        start_new_session=True,
    )


def test_down_ends_exactly_the_processes_of_its_state_directory(tmp_path: Path) -> None:
    mine = settings_in(tmp_path)
    other = vmctl.Settings(state_dir=tmp_path / "other", image_dir=tmp_path, key=mine.key)
    ours = [sleeper(f"echolab-{mine.tag}-server,process=x"), sleeper(f"echolab-{mine.tag}-lg")]
    theirs = sleeper(f"echolab-{other.tag}-server")
    try:
        # Right after exec, /proc/PID/cmdline can read empty for a moment.
        deadline = time.monotonic() + 10
        while len(vmctl.qemu_pids(mine.tag)) < 2 or not vmctl.qemu_pids(other.tag):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert vmctl.qemu_pids(mine.tag) == {ours[0].pid: "server", ours[1].pid: "lg"}
        mine.state_dir.mkdir()
        assert vmctl.down(mine, quiet=True) == 2
        # Gone, and reaped by down() (they are this process's children, as qemu is up's).
        for proc in ours:
            assert not Path(f"/proc/{proc.pid}").exists()
        assert vmctl.qemu_pids(mine.tag) == {}
        assert theirs.poll() is None
        assert vmctl.qemu_pids(other.tag) == {theirs.pid: "server"}
    finally:
        theirs.kill()
        theirs.wait()


def test_a_process_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, "echolab-x-y"], start_new_session=True)
    time.sleep(0.3)  # let it install the handler
    assert not vmctl.gone(proc.pid)
    vmctl.end_processes([proc.pid], grace=0.5)
    assert not Path(f"/proc/{proc.pid}").exists()


# --- the command line -----------------------------------------------------------------------


def run_vmctl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "vm/vmctl.py"), "--state", str(tmp_path / "run"),
         "--image", str(tmp_path / "image"), "--key", str(tmp_path / "key"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["up", "--vm", "Bad"], 2, "vm: --vm 'Bad': a name is"),
        (["up", "--smp", "0"], 2, "vm: --smp >= 1"),
        (["ssh", "server"], 1, "vm: no running VM named 'server'"),
        (["check"], 1, "vm: no VM is up: run `make vm-up`"),
        (["probe-accel"], 1, "vm: no VM image in"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    proc = run_vmctl(*args, tmp_path=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_up_says_what_is_missing(tmp_path: Path) -> None:
    proc = run_vmctl("up", tmp_path=tmp_path)
    assert proc.returncode == 1
    if vmctl.shutil.which(vmctl.QEMU) is None:
        expected = f"vm: {vmctl.QEMU} not found: run `make vm-host-packages`"
    else:
        expected = f"vm: no VM image in {tmp_path / 'image'}: run `make vm-image`"
    assert proc.stderr.startswith(expected), proc.stderr
    assert not (tmp_path / "key").exists()  # nothing made before the checks


def test_status_and_down_with_nothing_up(tmp_path: Path) -> None:
    status = run_vmctl("status", tmp_path=tmp_path)
    assert (status.returncode, status.stdout) == (0, "vm: no VM is up\n")
    down = run_vmctl("down", tmp_path=tmp_path)
    assert (down.returncode, down.stdout) == (0, "vm: no VM was running\n")
