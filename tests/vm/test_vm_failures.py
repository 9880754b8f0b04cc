"""A `make vm-boot` that fails leaves nothing running: a boot past VM_BOOT_TIMEOUT, and one
interrupted by Ctrl-C while its VMs start. Neither waits for a whole boot (a few seconds each),
so `make test` runs these (the whole set is booted by the Molecule scenario `vm`).

A state directory of its own (out/vm/test-fail). Without qemu and the rights to install it this
skips; under CI=true it fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support import ROOT, require
from tests.vm.test_vm import can_run_vms, run_make

# isort: split
# vm/ is a directory of scripts, first-party or not depending on how ruff is invoked.
from vm import vmctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STATE = ROOT / "out/vm/test-fail"


def make(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return run_make(STATE, *args, timeout=timeout)


def tag() -> str:
    settings = vmctl.Settings(
        state_dir=STATE,
        image_dir=ROOT / "out/vm/images/bookworm",
        key=ROOT / "out/vm/ssh/id_ed25519",
    )
    return settings.tag


@pytest.fixture
def no_vms() -> Iterator[None]:
    """The image built (vm-image), no VM of this state directory running before or after."""
    require(can_run_vms(), "qemu and a VM image, or root/sudo -n to install and build them")
    image = make("vm-image", timeout=1800)
    assert image.returncode == 0, image.stdout + image.stderr
    make("vm-down")
    yield
    assert make("vm-down").returncode == 0
    assert vmctl.qemu_pids(tag()) == {}


def test_a_boot_that_times_out_leaves_nothing_running(no_vms: None) -> None:
    proc = make("vm-boot", "VM_BOOT_TIMEOUT=3")
    assert proc.returncode != 0
    assert "no SSH login within 3 s (VM_BOOT_TIMEOUT)" in proc.stderr
    assert "ending the VMs this `up` started" in proc.stdout
    assert vmctl.qemu_pids(tag()) == {}


def test_an_interrupted_up_leaves_nothing_running(no_vms: None) -> None:
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "vm-boot", f"VM_STATE={STATE}"],
        cwd=ROOT, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(vmctl.qemu_pids(tag())) < 2:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "ending the VMs this `up` started" in out
    assert vmctl.qemu_pids(tag()) == {}
