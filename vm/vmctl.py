#!/usr/bin/env python3
"""Real Linux VMs under qemu for echolab: boot, wait for SSH, write an inventory, tear down.

    vm/vmctl.py up [--vm NAME:GROUP]... [--suite bookworm] [--smp 2] [--memory 1024] ...
    vm/vmctl.py status | down | ssh NAME [COMMAND...] | probe-accel

Each VM boots the cached image (vm/build-image.sh) through a qcow2 overlay of its own, so the
image is never written and a VM starts fresh every time. Its identity (hostname, login user,
SSH key, addresses) reaches it through qemu's fw_cfg and is applied at boot by
vm/guest/echolab-identity, as cloud-init does on a cloud image.

Networks (docs/vm.md): a management NIC on qemu's user-mode network with `restrict=on` (no
route anywhere; SSH only, through a `hostfwd` on 127.0.0.1), and a private link between the
VMs that stays inside qemu: the first VM's qemu is an Ethernet hub (`-netdev hubport`) and
every other VM joins it over a unix stream socket in the state directory.

Every qemu started here carries `-name echolab-TAG-NAME`, TAG derived from the state
directory, so `down` finds and ends exactly these processes (by pid, after reading their
command line), even when the state file was never written. A failed `up` ends what it
started. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")

# Exit codes, as in app/echolab/errors.py: 1 failed, 2 usage, 5 an operating-system error.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OS = 5

# The private link's subnet: VM i (0-based, in --vm order) gets .(10 + i).
LINK_PREFIX = "10.77.0"
LINK_FIRST_HOST = 10
# MAC addresses, unique within one set of VMs: 52:54:00 is qemu's prefix; ec = echolab.
MGMT_MAC = "52:54:00:ec:00:{:02x}"
LINK_MAC = "52:54:00:ec:01:{:02x}"
# Ports tried for each VM's SSH forward before giving up (another process may take a free one
# between our probe and qemu's bind).
PORT_ATTEMPTS = 5
# Console lines that mark the boot's progress, in order, with what they mean.
MILESTONES = (
    (re.compile(r"Linux version \d"), "kernel started"),
    (re.compile(r"Run /init as init process"), "initrd running"),
    (
        re.compile(
            r"Welcome to Debian|systemd\[1\]: .*(running in system mode|Detected virtualization)"
        ),
        "systemd started",
    ),
    (re.compile(r"echolab-identity: ready"), "identity applied"),
)
HOSTKEY_RE = re.compile(r"echolab-identity: hostkey (ssh-ed25519 [A-Za-z0-9+/=]+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\r\x07]")


class VMError(Exception):
    """A failure reported in one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """One progress line for the person running make (flushed: make buffers nothing)."""
    sys.stdout.write(f"vm: {message}\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# What to run: the VMs of a set and their qemu command lines
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VM:
    """One VM of the set: its name, inventory groups (comma-separated), place in the set,
    forwarded SSH port and the host variables of its inventory entry."""

    name: str
    group: str
    index: int
    ssh_port: int = 0
    pid: int = 0
    host_vars: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def groups(self) -> list[str]:
        return self.group.split(",")

    @property
    def link_address(self) -> str:
        return f"{LINK_PREFIX}.{LINK_FIRST_HOST + self.index}"

    @property
    def mgmt_mac(self) -> str:
        return MGMT_MAC.format(self.index)

    @property
    def link_mac(self) -> str:
        return LINK_MAC.format(self.index)


@dataclasses.dataclass
class Settings:
    """What every VM of a set shares."""

    state_dir: Path
    image_dir: Path
    key: Path
    user: str = "debian"
    smp: int = 2
    memory: int = 1024
    accel: str = "tcg"
    # qemu's -cpu; empty: `host` under KVM, `max` under TCG (every feature TCG emulates).
    cpu: str = ""
    boot_timeout: float = 600.0

    @property
    def tag(self) -> str:
        """A short name for this state directory, carried in every qemu's -name."""
        return hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:8]

    def vm_dir(self, vm: VM) -> Path:
        return self.state_dir / vm.name

    def hub_socket(self, vm: VM) -> Path:
        """The unix socket on which VM `vm` (index >= 1) joins the first VM's hub."""
        return self.state_dir / f"link-{vm.index}.sock"


def parse_vm_specs(specs: Sequence[str]) -> list[VM]:
    """`NAME:GROUP[,GROUP...]` (or `NAME`: Ansible's group `ungrouped`) -> VMs; names must make
    valid host names."""
    vms: list[VM] = []
    for index, spec in enumerate(specs):
        name, _, group = spec.partition(":")
        group = group or "ungrouped"
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
            raise VMError(f"--vm {spec!r}: a name is lower-case letters, digits, '-'", EXIT_USAGE)
        groups = group.split(",")
        if not all(re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", g) for g in groups):
            raise VMError(f"--vm {spec!r}: a group is lower-case letters, digits, '_'", EXIT_USAGE)
        if len(set(groups)) != len(groups):
            raise VMError(f"--vm {spec!r}: a group is given twice", EXIT_USAGE)
        if any(v.name == name for v in vms):
            raise VMError(f"--vm {spec!r}: the name {name!r} is given twice", EXIT_USAGE)
        vms.append(VM(name=name, group=group, index=index))
    if not vms:
        raise VMError("no VM to start (--vm NAME:GROUP)", EXIT_USAGE)
    # Ansible resolves a pattern that names both a host and a group to the host alone: a play
    # for `hosts: server` would miss every other member of the group.
    for vm in vms:
        if any(vm.name in v.groups for v in vms):
            raise VMError(
                f"--vm {vm.name}: a VM named like a group of the set (`hosts: {vm.name}` would "
                f"reach that VM alone): name it e.g. {vm.name}1",
                EXIT_USAGE,
            )
    if len(vms) > 200:
        raise VMError("at most 200 VMs share one private link", EXIT_USAGE)
    return vms


def apply_host_vars(vms: Sequence[VM], specs: Sequence[str]) -> None:
    """`NAME:KEY=VALUE` -> a host variable of VM NAME in the inventory. VALUE is read as JSON
    when it is JSON (false, 8, "x"), else taken as a string."""
    for spec in specs:
        name, _, assignment = spec.partition(":")
        key, eq, value = assignment.partition("=")
        match = [vm for vm in vms if vm.name == name]
        if not match or not eq or not re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", key):
            raise VMError(
                f"--host-var {spec!r}: NAME:KEY=VALUE, NAME one of the --vm names, KEY a variable",
                EXIT_USAGE,
            )
        try:
            parsed: object = json.loads(value)
        except ValueError:
            parsed = value
        match[0].host_vars[key] = parsed


def identity_text(vm: VM, settings: Settings) -> str:
    """The `key=value` lines vm/guest/echolab-identity reads from fw_cfg."""
    pubkey = settings.key.with_suffix(".pub").read_text().strip()
    return (
        f"hostname={vm.name}\nuser={settings.user}\nssh_authorized_key={pubkey}\n"
        f"mgmt_mac={vm.mgmt_mac}\nlink_mac={vm.link_mac}\nlink_address={vm.link_address}/24\n"
    )


def link_args(vm: VM, vms: Sequence[VM], settings: Settings) -> list[str]:
    """The private link: the first VM hosts an Ethernet hub, the others join it by socket."""
    nic = ["-device", f"virtio-net-pci,netdev=link,mac={vm.link_mac}"]
    if vm.index > 0:
        path = settings.hub_socket(vm)
        return ["-netdev", f"stream,id=link,server=off,addr.type=unix,addr.path={path}", *nic]
    args = ["-netdev", "hubport,id=link,hubid=0", *nic]
    for peer in vms[1:]:
        path = settings.hub_socket(peer)
        args += [
            "-netdev", f"stream,id=peer{peer.index},server=on,addr.type=unix,addr.path={path}",
            "-netdev", f"hubport,id=hub{peer.index},hubid=0,netdev=peer{peer.index}",
        ]  # fmt: skip
    return args


def qemu_argv(vm: VM, vms: Sequence[VM], settings: Settings) -> list[str]:
    """The qemu command line of one VM."""
    run = settings.vm_dir(vm)
    image = settings.image_dir
    accel = "kvm" if settings.accel == "kvm" else "tcg,thread=multi"
    append = "root=/dev/vda rw console=ttyS0 panic=-1"
    return [
        QEMU,
        "-name", f"echolab-{settings.tag}-{vm.name},process=qemu-{vm.name}",
        "-machine", "q35", "-accel", accel,
        "-cpu", settings.cpu or ("host" if settings.accel == "kvm" else "max"),
        "-smp", str(settings.smp), "-m", str(settings.memory),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", append,
        "-drive", f"file={run / 'disk.qcow2'},format=qcow2,if=virtio,discard=unmap",
        "-netdev",
        f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={vm.mgmt_mac}",
        *link_args(vm, vms, settings),
        "-device", "virtio-rng-pci",
        "-fw_cfg", f"name=opt/echolab/identity,file={run / 'identity'}",
        "-serial", f"file:{run / 'console.log'}",
        "-pidfile", str(run / "qemu.pid"),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Processes: find, start and end the qemu processes of a state directory
# --------------------------------------------------------------------------------------------


def qemu_pids(tag: str) -> dict[int, str]:
    """Running qemu processes whose -name carries TAG: pid -> VM name."""
    found: dict[int, str] = {}
    marker = f"echolab-{tag}-"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if text.startswith(marker):
                found[int(entry.name)] = text[len(marker) :].split(",")[0]
                break
    return found


def end_processes(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM (qemu quits at once), then SIGKILL what is left after `grace` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not gone(p)]
        time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while any(not gone(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether the process has exited: reaped here when it is our child (qemu started by this
    `up`), else no longer in /proc or a zombie its own parent has yet to collect."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        return is_zombie(pid)  # not ours: its parent reaps it
    if not is_zombie(pid):
        return False
    # Ours, and it exited between waitpid() and the read of /proc: reap it now (a zombie's
    # waitpid returns at once), or it would stay behind as one.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def is_zombie(pid: int) -> bool:
    """True also when the process no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log, cleaned of terminal escapes, for an error message."""
    kept = [line for line in read_text(path).splitlines() if line.strip()]
    return "\n".join("    " + line for line in kept[-lines:])


def start_qemu(
    vm: VM, vms: Sequence[VM], settings: Settings, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """Start one VM's qemu in a session of its own; retry with another port if its is taken.
    Every pid goes into `started` at once, so that a failure or a signal ends it."""
    run = settings.vm_dir(vm)
    for _ in range(PORT_ATTEMPTS):
        vm.ssh_port = free_port()
        log = run / "qemu.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                qemu_argv(vm, vms, settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        # qemu sets up its netdevs before it writes the pid file; a taken port ends it first.
        deadline = time.monotonic() + 30
        while proc.poll() is None and not (run / "qemu.pid").exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            vm.pid = proc.pid
            return proc
        message = log.read_text(errors="replace").strip()
        if "host forwarding" not in message:
            raise VMError(f"{vm.name}: qemu exited at start ({proc.returncode}): {message}")
    raise VMError(f"{vm.name}: no free loopback port for SSH after {PORT_ATTEMPTS} tries")


# --------------------------------------------------------------------------------------------
# Waiting for the VMs: the console's milestones, the SSH banner, a login with sudo
# --------------------------------------------------------------------------------------------


def ssh_base(settings: Settings, port: int, batch: bool = True) -> list[str]:
    """ssh with this set's key and known_hosts, to the user on 127.0.0.1:PORT."""
    return [
        "ssh", "-p", str(port), "-i", str(settings.key.resolve()),
        *ssh_options(settings), *(["-o", "BatchMode=yes"] if batch else []),
        f"{settings.user}@127.0.0.1",
    ]  # fmt: skip


def ssh_options(settings: Settings) -> list[str]:
    """Options that pin the host keys read from the consoles: no trust on first use."""
    known_hosts = (settings.state_dir / "known_hosts").resolve()
    return [
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20",
    ]  # fmt: skip


def ssh_banner(port: int) -> bool:
    """True when an SSH server answers on the port. qemu's forward accepts every connection
    at once, whether or not the guest listens: only the banner tells."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.settimeout(3)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@dataclasses.dataclass
class Boot:
    """One VM's way from qemu's start to a login with sudo."""

    vm: VM
    proc: subprocess.Popen[bytes] | None
    started: float
    reached: int = 0
    hostkey: str = ""
    banner: bool = False
    ready: bool = False
    last_note: float = dataclasses.field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def read_text(path: Path) -> str:
    """A log's text so far, cleaned of terminal escapes; empty before it exists."""
    try:
        return ANSI_RE.sub("", path.read_text(errors="replace"))
    except OSError:
        return ""


def console_text(settings: Settings, vm: VM) -> str:
    return read_text(settings.vm_dir(vm) / "console.log")


def step(boot: Boot, boots: Sequence[Boot], settings: Settings) -> None:
    """Advance one VM's boot by what can be seen now; say each milestone once."""
    vm = boot.vm
    if boot.proc is not None and boot.proc.poll() is not None:
        raise VMError(
            f"{vm.name}: qemu exited ({boot.proc.returncode}) after {boot.elapsed():.0f} s; "
            f"last console lines:\n{tail(settings.vm_dir(vm) / 'console.log')}\n"
            f"{tail(settings.vm_dir(vm) / 'qemu.log', 3)}"
        )
    text = console_text(settings, vm)
    while boot.reached < len(MILESTONES) and MILESTONES[boot.reached][0].search(text):
        say(f"{vm.name}: {MILESTONES[boot.reached][1]} ({boot.elapsed():.0f} s)")
        boot.reached += 1
        boot.last_note = time.monotonic()
    if not boot.hostkey and (m := HOSTKEY_RE.search(text)):
        boot.hostkey = m.group(1)
        write_known_hosts(boots, settings)
    if boot.hostkey and not boot.banner and ssh_banner(vm.ssh_port):
        boot.banner = True
        say(f"{vm.name}: SSH answers on 127.0.0.1:{vm.ssh_port} ({boot.elapsed():.0f} s)")
    if boot.banner and not boot.ready:
        probe = subprocess.run(
            [*ssh_base(settings, vm.ssh_port), "-o", "LogLevel=ERROR", "sudo -n true"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if probe.returncode == 0:
            boot.ready = True
            say(f"{vm.name}: {settings.user} logs in, sudo works ({boot.elapsed():.0f} s)")
    if not boot.ready and time.monotonic() - boot.last_note >= 20:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1].strip()[:90] if lines else "(no console output yet)"
        say(f"{vm.name}: booting, {boot.elapsed():.0f} s; console: {last}")
        boot.last_note = time.monotonic()


def wait_for_boots(boots: Sequence[Boot], settings: Settings) -> None:
    """Until every VM logs in with sudo, or one fails, or the timeout passes."""
    deadline = time.monotonic() + settings.boot_timeout
    while not all(b.ready for b in boots):
        for boot in boots:
            if not boot.ready:
                step(boot, boots, settings)
        if time.monotonic() > deadline:
            late = [b.vm for b in boots if not b.ready]
            raise VMError(
                f"{', '.join(v.name for v in late)}: no SSH login within "
                f"{settings.boot_timeout:.0f} s (VM_BOOT_TIMEOUT); last console lines of "
                f"{late[0].name}:\n{tail(settings.vm_dir(late[0]) / 'console.log')}"
            )
        time.sleep(0.5)


def write_known_hosts(boots: Sequence[Boot], settings: Settings) -> None:
    """The host keys read from the consoles so far, for ssh and Ansible to check."""
    lines = [f"[127.0.0.1]:{b.vm.ssh_port} {b.hostkey}\n" for b in boots if b.hostkey]
    (settings.state_dir / "known_hosts").write_text("".join(lines))


# --------------------------------------------------------------------------------------------
# The inventory and the state file
# --------------------------------------------------------------------------------------------


def inventory_text(vms: Sequence[VM], settings: Settings) -> str:
    """An Ansible inventory for the set (YAML; scalars written as JSON strings, valid YAML)."""
    q = json.dumps
    common = " ".join([*ssh_options(settings), "-o", "ServerAliveInterval=30"])
    out = [
        f"# Written by vm/vmctl.py up ({settings.state_dir}): VMs under qemu ({settings.accel}),",
        "# reached over SSH on forwarded loopback ports as a non-root user with sudo. The",
        "# servers' private-link addresses are what other VMs reach them at (127.0.0.1 is each",
        "# VM's own loopback). Rewritten by every `up`; removed by `down`.",
        "all:",
        "  vars:",
        f"    ansible_user: {q(settings.user)}",
        f"    ansible_ssh_private_key_file: {q(str(settings.key.resolve()))}",
        f"    ansible_ssh_common_args: {q(common)}",
        "    ansible_ssh_pipelining: true",
        "    ansible_become: true",
        "    ansible_python_interpreter: /usr/bin/python3",
        "  children:",
    ]
    servers = [v for v in vms if "server" in v.groups]
    for group in dict.fromkeys(g for v in vms for g in v.groups):
        out += [f"    {group}:"]
        if group == "loadgen" and servers:
            out += [
                "      vars:",
                "        # echo_loadgen's target: the first server, on the private link.",
                f"        echo_loadgen_target_host: {q(servers[0].link_address)}",
            ]
        out += ["      hosts:"]
        # A VM in several groups has the same variables in each.
        for vm in (v for v in vms if group in v.groups):
            out += [
                f"        {vm.name}:",
                "          ansible_host: 127.0.0.1",
                f"          ansible_port: {vm.ssh_port}",
                f"          echolab_link_address: {q(vm.link_address)}",
                *(f"          {k}: {q(v)}" for k, v in vm.host_vars.items()),
            ]
    return "\n".join(out) + "\n"


def save_state(vms: Sequence[VM], settings: Settings) -> None:
    state = {
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        },
        "vms": [dataclasses.asdict(vm) | {"link_address": vm.link_address} for vm in vms],
    }
    path = settings.state_dir / "state.json"
    path.write_text(json.dumps(state, indent=2) + "\n")


def load_state(state_dir: Path) -> tuple[list[VM], dict[str, object]]:
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return [], {}
    fields = {f.name for f in dataclasses.fields(VM)}
    vms = [VM(**{k: v for k, v in raw.items() if k in fields}) for raw in state.get("vms", [])]
    return vms, state.get("settings", {})


# --------------------------------------------------------------------------------------------
# KVM or TCG
# --------------------------------------------------------------------------------------------


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


# CPU models tried under KVM, in order: `host` aborts on some nested hosts on an MSR it cannot
# set (0x10a, arch-capabilities), which the second leaves out.
KVM_CPUS = ("host", "host,-arch-capabilities")


def probe_kvm(image_dir: Path, timeout: float) -> tuple[str, str]:
    """The -cpu model with which a guest boots under KVM ('' when none does), and why.

    A guest must get as far as systemd starting the identity unit within `timeout` s: /dev/kvm
    may exist and answer its ioctls while guests hang before their first line (a nested VM
    without vmx/svm)."""
    if not Path("/dev/kvm").exists():
        return "", "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "", "/dev/kvm is not readable and writable by this user"
    reasons = []
    for cpu in KVM_CPUS:
        booted, reason = boot_under_kvm(image_dir, cpu, timeout)
        if booted:
            return cpu, f"a guest booted under KVM with -cpu {cpu}"
        reasons.append(f"-cpu {cpu}: {reason}")
    return "", "; ".join(reasons)


def boot_under_kvm(image_dir: Path, cpu: str, timeout: float) -> tuple[bool, str]:
    """Boot the image once under KVM: a throw-away snapshot, no network."""
    with tempfile.TemporaryDirectory(prefix="echolab-kvm-probe.") as tmp:
        console = Path(tmp) / "console.log"
        argv = [
            QEMU, "-machine", "q35", "-accel", "kvm", "-cpu", cpu, "-smp", "1", "-m", "512",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-snapshot",
            "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
            "-append", "root=/dev/vda ro console=ttyS0 panic=-1",
            "-drive", f"file={image_dir / 'disk.img'},format=raw,if=virtio",
            "-nic", "none", "-serial", f"file:{console}",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if "echolab-identity: ready" in read_text(console):
                    return True, "booted"
                time.sleep(0.5)
            if proc.poll() is not None:
                out = (proc.stdout.read().decode(errors="replace") if proc.stdout else "").strip()
                first = out.splitlines()[0] if out else f"exit status {proc.returncode}"
                return False, f"qemu failed: {first}"
            shown = "it stalled" if read_text(console).strip() else "no console output"
            return False, f"no boot within {timeout:.0f} s ({shown})"
        finally:
            end_processes([proc.pid], grace=3)
            proc.wait()


def choose_accel(requested: str, image_dir: Path, cache: Path, timeout: float) -> tuple[str, str]:
    """The accelerator and its -cpu model ('' for the default). 'auto' probes KVM once per
    qemu version and host kernel (cached: a probe that fails costs its whole timeout) and says
    in one line which it is and why."""
    if requested in ("kvm", "tcg"):
        return requested, ""
    key = f"{qemu_version()} | {os.uname().release} | /dev/kvm {Path('/dev/kvm').exists()}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            say(f"accelerator: {cached['accel'].upper()} ({cached['reason']}; probed earlier)")
            return str(cached["accel"]), str(cached["cpu"])
    say(f"accelerator: probing KVM (a guest must boot within {timeout:.0f} s)")
    cpu, reason = probe_kvm(image_dir, timeout)
    accel = "kvm" if cpu else "tcg"
    say(f"accelerator: {accel.upper()}" + (f" (-cpu {cpu})" if cpu else f", not KVM: {reason}"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel, "cpu": cpu, "reason": reason}) + "\n")
    return accel, cpu


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGINT while VMs were starting."""


def on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def ensure_key(key: Path) -> None:
    """The SSH key of this checkout (made once, under out/, never committed)."""
    if key.exists() and key.with_suffix(".pub").exists():
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    key.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "echolab-vm", "-f", str(key)],
        check=True,
    )
    say(f"made the SSH key {key}")


def prepare(vms: Sequence[VM], settings: Settings) -> None:
    """A fresh state directory: an overlay on the image and the identity, per VM."""
    base = (settings.image_dir / "disk.img").resolve()
    for vm in vms:
        run = settings.vm_dir(vm)
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        subprocess.run(
            [
                QEMU_IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                "raw",
                str(run / "disk.qcow2"),
            ],
            check=True,
        )
        (run / "identity").write_text(identity_text(vm, settings))
    for stale in (
        "known_hosts",
        "inventory.yml",
        *(f.name for f in settings.state_dir.glob("*.sock")),
    ):
        (settings.state_dir / stale).unlink(missing_ok=True)


def start_all(
    vms: Sequence[VM], settings: Settings, started: list[subprocess.Popen[bytes]]
) -> list[Boot]:
    """Start the hub VM, wait until its sockets exist, then the others."""
    boots = []
    for vm in vms:
        proc = start_qemu(vm, vms, settings, started)
        boots.append(Boot(vm=vm, proc=proc, started=time.monotonic()))
        save_state(vms, settings)
        say(
            f"{vm.name}: qemu started (pid {vm.pid}, SSH on 127.0.0.1:{vm.ssh_port}, "
            f"link {vm.link_address})"
        )
        if vm.index == 0:
            deadline = time.monotonic() + 30
            while not all(settings.hub_socket(p).exists() for p in vms[1:]):
                if time.monotonic() > deadline:
                    raise VMError(f"{vm.name}: qemu made no hub socket within 30 s")
                time.sleep(0.05)
    return boots


def answering(vms: Sequence[VM], settings: Settings) -> bool:
    """Whether a set recorded in the state directory runs and lets its user in."""
    running = set(qemu_pids(settings.tag))
    if not vms or any(vm.pid not in running for vm in vms):
        return False
    for vm in vms:
        check = subprocess.run(
            [*ssh_base(settings, vm.ssh_port), "true"], capture_output=True, timeout=60, check=False
        )
        if check.returncode != 0:
            return False
    return True


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    vms = parse_vm_specs(args.vm)
    apply_host_vars(vms, args.host_var)
    if shutil.which(QEMU) is None:
        raise VMError(f"{QEMU} not found: run `make vm-host-packages` (Debian: qemu-system-x86)")
    if not (settings.image_dir / "complete").exists():
        raise VMError(f"no VM image in {settings.image_dir}: run `make vm-image`")
    ensure_key(settings.key)
    # The image itself, not the link to the newest: a rebuilt image makes a new set.
    settings.image_dir = settings.image_dir.resolve()
    old, old_settings = load_state(settings.state_dir)
    wanted = {"image_dir": str(settings.image_dir), "user": settings.user,
              "smp": settings.smp, "memory": settings.memory}  # fmt: skip
    if (
        [(v.name, v.group, v.host_vars) for v in old]
        == [(v.name, v.group, v.host_vars) for v in vms]
        and all(old_settings.get(k) == v for k, v in wanted.items())
        and answering(old, settings)
    ):
        settings.accel = str(old_settings.get("accel", settings.accel))
        args.inventory.write_text(inventory_text(old, settings))
        say(f"{', '.join(v.name for v in old)} already up; inventory {args.inventory}")
        print_table(old, settings)
        return 0
    if qemu_pids(settings.tag):
        say("ending the VMs of an earlier `up` first")
        down(settings)
    settings.accel, probed_cpu = choose_accel(
        args.accel, settings.image_dir, args.accel_cache, args.kvm_probe_timeout
    )
    settings.cpu = settings.cpu or probed_cpu
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    prepare(vms, settings)
    began = time.monotonic()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started: list[subprocess.Popen[bytes]] = []
    try:
        boots = start_all(vms, settings, started)
        wait_for_boots(boots, settings)
    except BaseException:
        say("ending the VMs this `up` started")
        # By pid only while unreaped: a reaped pid may belong to another process by now.
        end_processes([proc.pid for proc in started if proc.poll() is None])
        down(settings, quiet=True)
        raise
    save_state(vms, settings)
    args.inventory.parent.mkdir(parents=True, exist_ok=True)
    args.inventory.write_text(inventory_text(vms, settings))
    say(
        f"{len(vms)} VM(s) up in {time.monotonic() - began:.0f} s "
        f"({settings.accel.upper()}, -smp {settings.smp}, {settings.memory} MiB each); "
        f"inventory {args.inventory}"
    )
    print_table(vms, settings)
    return 0


def print_table(vms: Sequence[VM], settings: Settings) -> None:
    running = qemu_pids(settings.tag)
    rows = [("NAME", "GROUP", "SSH", "LINK ADDRESS", "PID", "STATE")]
    for vm in vms:
        state = "running" if vm.pid in running else "not running"
        rows.append(
            (vm.name, vm.group, f"127.0.0.1:{vm.ssh_port}", vm.link_address, str(vm.pid), state)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(f"  {cells.rstrip()}\n")


def down(settings: Settings, quiet: bool = False) -> int:
    """End every qemu of this state directory and remove what they ran on. Returns how many."""
    pids = sorted(qemu_pids(settings.tag))
    end_processes(pids)
    for path in [
        *settings.state_dir.glob("*/disk.qcow2"),
        *settings.state_dir.glob("*.sock"),
        *settings.state_dir.glob("*/qemu.pid"),
    ]:
        path.unlink(missing_ok=True)
    for name in ("state.json", "known_hosts"):
        (settings.state_dir / name).unlink(missing_ok=True)
    left = qemu_pids(settings.tag)
    if left:
        raise VMError(f"qemu processes still running after SIGKILL: {sorted(left)}", EXIT_OS)
    if not quiet:
        say(f"ended {len(pids)} VM(s)" if pids else "no VM was running")
    return len(pids)


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    down(settings)
    args.inventory.unlink(missing_ok=True)
    return 0


def cmd_status(_args: argparse.Namespace, settings: Settings) -> int:
    vms, _ = load_state(settings.state_dir)
    if not vms:
        strays = qemu_pids(settings.tag)
        say(
            f"no VM set recorded; {len(strays)} stray qemu process(es)" if strays else "no VM is up"
        )
        return 1 if strays else 0
    print_table(vms, settings)
    return 0


def cmd_ssh(args: argparse.Namespace, settings: Settings) -> int:
    vms, saved = load_state(settings.state_dir)
    match = [vm for vm in vms if vm.name == args.name]
    if not match or match[0].pid not in qemu_pids(settings.tag):
        names = ", ".join(v.name for v in vms) or "none"
        raise VMError(f"no running VM named {args.name!r} (up: {names}); run `make vm-up`")
    settings.user = str(saved.get("user", settings.user))
    argv = ssh_base(settings, match[0].ssh_port, batch=False)
    if sys.stdin.isatty() and not args.remote:
        argv.insert(1, "-t")
    os.execvp(argv[0], [*argv, *args.remote])  # noqa: S606 (ssh replaces this process)


def check_vm(vm: VM, vms: Sequence[VM], settings: Settings) -> list[str]:
    """What is wrong with one running VM (empty: nothing)."""
    peers = " ".join(v.link_address for v in vms if v is not vm)
    proc = subprocess.run(
        [*ssh_base(settings, vm.ssh_port), f"PEERS='{peers}' bash -s"],
        input=(Path(__file__).parent / "check-vm.sh").read_text(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        return [f"no SSH login as {settings.user}: {proc.stderr.strip() or proc.returncode}"]
    seen = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    problems = []
    if seen.get("sudo") != "0":
        problems.append(f"sudo -n as {seen.get('user')} did not give root")
    if seen.get("hostname") != vm.name:
        problems.append(f"hostname is {seen.get('hostname')!r}, not {vm.name!r}")
    if seen.get("systemd") != "running":
        problems.append(f"systemd is {seen.get('systemd')!r}; failed: {seen.get('failed_units')}")
    major, _, minor = seen.get("python", "").partition(".")
    if not (major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= (3, 11)):
        problems.append(f"python3 is {seen.get('python') or 'missing'}, not >= 3.11")
    if f"{vm.link_address}/24" not in seen.get("addresses", "").split():
        problems.append(f"{vm.link_address}/24 is not on any interface ({seen.get('addresses')})")
    if seen.get("default_route"):
        problems.append(f"a default route exists: {seen['default_route']}")
    for peer in peers.split():
        if not seen.get(f"peer_{peer}", "").startswith("SSH-"):
            problems.append(f"no SSH answer from {peer} over the private link")
    return problems


def cmd_check(_args: argparse.Namespace, settings: Settings) -> int:
    vms, saved = load_state(settings.state_dir)
    running = qemu_pids(settings.tag)
    if not vms:
        raise VMError("no VM is up: run `make vm-up`")
    settings.user = str(saved.get("user", settings.user))
    failed = 0
    for vm in vms:
        problems = check_vm(vm, vms, settings) if vm.pid in running else ["its qemu is not running"]
        verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
        say(f"{vm.name}: {verdict}")
        failed += bool(problems)
    if failed:
        return EXIT_FAILED
    say(
        f"{len(vms)} VM(s): {settings.user} logs in with sudo, systemd running, python3 >= 3.11,"
        " every peer answers on the private link, no default route"
    )
    return 0


def cmd_probe_accel(args: argparse.Namespace, settings: Settings) -> int:
    if not (settings.image_dir / "complete").exists():
        raise VMError(f"no VM image in {settings.image_dir}: run `make vm-image`")
    args.accel_cache.unlink(missing_ok=True)
    choose_accel("auto", settings.image_dir, args.accel_cache, args.kvm_probe_timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vm/vmctl.py", description="Real Linux VMs under qemu for echolab (docs/vm.md)."
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=ROOT / "out/vm/run",
        help="state directory of this set of VMs (default: out/vm/run)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=ROOT / "out/vm/images/bookworm",
        help="image directory from vm/build-image.sh",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=ROOT / "out/vm/ssh/id_ed25519",
        help="SSH private key (made when missing)",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        default=None,
        help="Ansible inventory to write (default: STATE/inventory.yml)",
    )
    parser.add_argument("--accel-cache", type=Path, default=ROOT / "out/vm/accel.json")
    parser.add_argument("--kvm-probe-timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="boot the VMs, wait for SSH, write the inventory")
    up.add_argument(
        "--vm",
        action="append",
        metavar="NAME[:GROUP]",
        help="a VM and its inventory groups (comma-separated), repeatable "
        "(default: --vm server1:server --vm loadgen1:loadgen)",
    )
    up.add_argument(
        "--host-var",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="a host variable of VM NAME in the inventory (VALUE read as JSON when it is), "
        "repeatable",
    )
    up.add_argument("--user", default="debian", help="login user made at boot, sudo rights")
    up.add_argument("--smp", type=int, default=2, help="virtual CPUs per VM")
    up.add_argument("--memory", type=int, default=1024, help="MiB per VM")
    up.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    up.add_argument(
        "--cpu", default="", help="qemu -cpu model (default: host under KVM, max under TCG)"
    )
    up.add_argument(
        "--boot-timeout", type=float, default=600.0, help="seconds for every VM to let its user in"
    )
    sub.add_parser("down", help="end every VM of the state directory")
    sub.add_parser("status", help="the VMs of the state directory")
    sub.add_parser("check", help="check the running VMs over SSH (login, sudo, systemd, link)")
    ssh = sub.add_parser("ssh", help="SSH into a VM as its user")
    ssh.add_argument("name")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="a command to run instead of a shell")
    sub.add_parser("probe-accel", help="probe KVM again (a guest must boot), else TCG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.inventory = args.inventory or args.state / "inventory.yml"
    settings = Settings(state_dir=args.state, image_dir=args.image, key=args.key)
    if args.action == "up":
        args.vm = args.vm or ["server1:server", "loadgen1:loadgen"]
        if args.smp < 1 or args.memory < 256 or args.boot_timeout <= 0:
            raise VMError("--smp >= 1, --memory >= 256 (MiB), --boot-timeout > 0", EXIT_USAGE)
        settings = dataclasses.replace(
            settings,
            user=args.user,
            smp=args.smp,
            memory=args.memory,
            cpu=args.cpu,
            boot_timeout=args.boot_timeout,
        )
    commands = {
        "check": cmd_check,
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "ssh": cmd_ssh,
        "probe-accel": cmd_probe_accel,
    }
    return commands[args.action](args, settings)


def run() -> int:
    """main() with its errors as one line on stderr and an exit status."""
    try:
        return main()
    except VMError as exc:
        message, code = str(exc), exc.code
    except Interrupted as exc:
        message, code = f"interrupted ({exc}); the VMs this run started are gone", 130
    except subprocess.CalledProcessError as exc:
        message = f"{' '.join(map(str, exc.cmd))} failed with status {exc.returncode}"
        code = EXIT_FAILED
    sys.stderr.write(f"vm: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(run())
