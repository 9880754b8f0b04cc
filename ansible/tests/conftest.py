"""Fixtures of the role input tests (see harness.py): they run on the controller, no host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Outcome, run_cases


@pytest.fixture
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[Outcome]]:
    """Run cases through a role's validation and templates: render(role, cases)."""

    def run(role: str, cases: list[dict[str, Any]]) -> list[Outcome]:
        workdir: Path = tmp_path_factory.mktemp(role)
        return run_cases(role, cases, workdir)

    return run
