"""The Compose implementations the lab tests run under: one modern (v2 or later), one v1.29.

`make test-lab` passes the candidates in ECHOLAB_TEST_COMPOSE, `|` between commands (default:
the Compose make itself would use, the venv's modern Compose, `docker-compose`). The first
candidate of each kind that answers `version --short` fills its slot; a slot nobody fills is
skipped by the tests, or fails them under CI=true.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from tests.support import ROOT

VENV_BIN = ROOT / ".venv" / "bin"
DEFAULT_CANDIDATES = f"{VENV_BIN / 'docker-compose'}|docker-compose"


@dataclass(frozen=True)
class Compose:
    """One slot: `kind` is "modern" or "v1"; `command` is empty when nothing filled it."""

    kind: str
    command: str = ""
    version: str = ""

    @property
    def project(self) -> str:
        """The Compose project the tests run under this implementation (one each)."""
        return "echolabtest" if self.kind == "modern" else "echolabtestv1"

    @property
    def label(self) -> str:
        return f"Compose {self.version}" if self.version else f"Compose {self.kind} (missing)"

    @property
    def test_id(self) -> str:
        return f"compose-{self.version or self.kind + '-missing'}"


def resolve(command: str) -> str:
    """A bare program name found on PATH, leaving out this project's venv (where a modern
    Compose is also called `docker-compose`); anything else as given."""
    words = shlex.split(command)
    if not words or "/" in words[0]:
        return command
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != str(VENV_BIN)
    )
    found = shutil.which(words[0], path=path)
    return shlex.join([found, *words[1:]]) if found else ""


def version_of(command: str) -> str:
    """`COMMAND version --short` without a leading v, or '' when it does not answer."""
    try:
        proc = subprocess.run(
            [*shlex.split(command), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return ""
    out = proc.stdout.strip()
    return out.removeprefix("v") if proc.returncode == 0 and out[:1].isdigit() else ""


def discover() -> list[Compose]:
    """The modern slot, then the v1 slot, each filled by the first candidate of its kind."""
    found: dict[str, Compose] = {}
    for candidate in os.environ.get("ECHOLAB_TEST_COMPOSE", DEFAULT_CANDIDATES).split("|"):
        command = resolve(candidate.strip())
        version = version_of(command) if command else ""
        if not version:
            continue
        kind = "v1" if version.startswith("1.") else "modern"
        found.setdefault(kind, Compose(kind, command, version))
    return [found.get(kind, Compose(kind)) for kind in ("modern", "v1")]


def side_by_side(left_title: str, left: Any, right_title: str, right: Any) -> str:
    """Two observations as JSON in two columns, differing lines marked with `!`."""
    a = json.dumps(left, indent=1, sort_keys=True, default=str).splitlines()
    b = json.dumps(right, indent=1, sort_keys=True, default=str).splitlines()
    width = max(len(line) for line in [left_title, *a])
    rows = [f"  {left_title:<{width}} | {right_title}"]
    for x, y in itertools.zip_longest(a, b, fillvalue=""):
        rows.append(f"{'!' if x != y else ' '} {x:<{width}} | {y}")
    return "\n".join(rows)
