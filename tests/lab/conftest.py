"""Say at the top of the run which Compose implementations the lab tests use, by version."""

from __future__ import annotations

from tests.lab.composes import discover


def pytest_report_header() -> list[str]:
    return [
        "lab tests under: "
        + "; ".join(f"{c.label} ({c.command})" if c.command else c.label for c in discover())
    ]
