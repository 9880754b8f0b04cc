"""The collection as users get it: `make collection`'s tarball, installed offline into an
empty collections path, used from a directory outside this repository."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness import ANSIBLE_BIN, COLLECTION_DIR

OUT = COLLECTION_DIR.parent / "out"


@pytest.fixture(scope="module")
def tarball() -> Path:
    version = next(
        line.split(":", 1)[1].strip()
        for line in (COLLECTION_DIR / "galaxy.yml").read_text(encoding="utf-8").splitlines()
        if line.startswith("version:")
    )
    path = OUT / f"echolab-lab-{version}.tar.gz"
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `make collection` (make ansible-test does)")
    return path


@pytest.fixture(scope="module")
def installed(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tarball installed into an empty collections path; the environment that uses it."""
    root = tmp_path_factory.mktemp("installed")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(root / "collections"), "HOME": str(root)}
    env["PATH"] = f"{ANSIBLE_BIN}:/usr/bin:/bin"
    subprocess.run(
        [
            *(str(ANSIBLE_BIN / "ansible-galaxy"), "collection", "install", "--offline"),
            *("-p", env["ANSIBLE_COLLECTIONS_PATH"], str(tarball)),
        ],
        check=True,
        capture_output=True,
        env=env,
        cwd=root,
    )
    env["CWD"] = str(root)
    return env


def run(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "CWD"},
        cwd=env["CWD"],
        check=False,
    )
    assert result.returncode == 0, (
        f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def test_the_tarball_carries_the_hosts_wheels_and_the_tests(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    wheels = {Path(n).name.split("-")[0] for n in names if "files/wheelhouse/" in n}
    assert {"echolab", "pip", "rich"} <= wheels, wheels
    assert "extensions/molecule/tests/test_restart.py" in names
    assert not any(n.startswith(("tests/", "extensions/molecule/config.yml")) for n in names)


def test_ansible_doc_shows_the_argument_specs(installed: dict[str, str]) -> None:
    doc = json.loads(
        run(
            installed,
            str(ANSIBLE_BIN / "ansible-doc"),
            "-t",
            "role",
            "--json",
            "echolab.lab.echo_server",
            "echolab.lab.echo_loadgen",
        )
    )
    server = doc["echolab.lab.echo_server"]["entry_points"]
    assert server["main"]["options"]["echo_server_port"]["type"] == "int"
    assert server["main"]["options"]["echo_server_log_level"]["choices"]
    assert "verify_restart" in server
    loadgen = doc["echolab.lab.echo_loadgen"]["entry_points"]["main"]["options"]
    assert loadgen["echo_loadgen_mode"]["choices"] == ["rate", "stream", "hold"]


@pytest.mark.parametrize("playbook", ["echolab.lab.site", "echolab.lab.verify_restart"])
def test_the_playbooks_run_by_their_names(installed: dict[str, str], playbook: str) -> None:
    out = run(
        installed,
        str(ANSIBLE_BIN / "ansible-playbook"),
        "--syntax-check",
        "-i",
        "server-1,",
        playbook,
    )
    assert "ansible_collections/echolab/lab/playbooks/" in out


def test_no_default_points_into_a_checkout(installed: dict[str, str]) -> None:
    """Every default is a host path or empty: nothing relative to a role or a repository."""
    roles = Path(installed["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections/echolab/lab/roles"
    for defaults in roles.glob("*/defaults/main.yml"):
        text = defaults.read_text(encoding="utf-8")
        assert "role_path" not in text and "../" not in text, defaults
