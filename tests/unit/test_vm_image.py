"""vm/build-image.sh without building: the image is cached by its recipe's hash, which follows
every file that goes into the image, and bad arguments are one line and an exit status."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT


def print_dir(script: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(script), "--print-dir", "--out", "IMAGES", *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


@pytest.fixture
def vm_copy(tmp_path: Path) -> Path:
    """A copy of vm/ to change files in."""
    shutil.copytree(ROOT / "vm", tmp_path / "vm", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "vm"


def test_the_image_directory_is_named_by_suite_and_recipe(vm_copy: Path) -> None:
    script = vm_copy / "build-image.sh"
    first = print_dir(script)
    assert first.startswith("IMAGES/bookworm-")
    assert len(first.rsplit("-", 1)[1]) == 12
    assert print_dir(script) == first  # the same recipe, the same image
    assert print_dir(ROOT / "vm/build-image.sh", "--out", "IMAGES") == first  # not the path
    assert print_dir(script, "--suite", "trixie").startswith("IMAGES/trixie-")
    assert print_dir(script, "--size", "4G") != first


@pytest.mark.parametrize(
    "changed", ["guest/echolab-identity", "guest/echolab-identity.service", "build-image.sh"]
)
def test_a_change_to_what_goes_into_the_image_makes_a_new_one(vm_copy: Path, changed: str) -> None:
    before = print_dir(vm_copy / "build-image.sh")
    with (vm_copy / changed).open("a") as f:
        f.write("\n# changed\n")
    assert print_dir(vm_copy / "build-image.sh") != before


def test_files_outside_the_recipe_do_not(vm_copy: Path) -> None:
    before = print_dir(vm_copy / "build-image.sh")
    with (vm_copy / "vmctl.py").open("a") as f:
        f.write("\n# changed\n")
    assert print_dir(vm_copy / "build-image.sh") == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "Bookworm;x"], "vm-image: --suite must be a Debian code name"),
        (["--size", "lots"], "vm-image: --size must look like 3G or 2048M"),
        (["--bogus"], "vm-image: unknown argument: --bogus (see --help)"),
        (["--suite"], "vm-image: --suite must be a Debian code name such as bookworm, not ''"),
        (["--out", ""], "vm-image: --out needs a directory"),
    ],
)
def test_bad_arguments(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [str(ROOT / "vm/build-image.sh"), "--print-dir", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stdout == ""
