"""Output shared by the instruments: a label/value table for people, JSON for machines."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from echolab.errors import EXIT_OS_ERROR, EXIT_USAGE, EcholabError


def check_writable(path: str) -> None:
    """Fail now, with a usage error, if `write_json` could not write `path` after the run.

    Opens an existing file for writing without truncating it, or creates the file and
    removes it again: the same permission checks the real write will meet.
    """
    try:
        if os.path.lexists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.unlink(path)
    except OSError as exc:
        raise EcholabError(f"cannot write --json {path}: {exc.strerror}", EXIT_USAGE) from None
    except ValueError as exc:  # a NUL byte in the name
        raise EcholabError(f"cannot write --json {path!r}: {exc}", EXIT_USAGE) from None


def write_json(data: dict[str, Any], path: str) -> None:
    """Write `data` as JSON to `path`, or to stdout for '-'; a failure is one line, exit 5."""
    text = json.dumps(data, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise EcholabError(f"cannot write {path}: {exc.strerror}", EXIT_OS_ERROR) from None


def print_rows(
    title: str, rows: list[tuple[str, str]], out: TextIO, styles: dict[str, str] | None = None
) -> None:
    """A two-column table: rich on a terminal when rich is installed, aligned text otherwise.

    `styles` maps a row's label to a rich style (e.g. the verdict in green or red).
    """
    if out.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title, show_header=False, title_justify="left")
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            for label, value in rows:
                table.add_row(label, value, style=(styles or {}).get(label, ""))
            Console(file=out).print(table)
            return
    width = max(len(label) for label, _ in rows)
    print(title, file=out)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}", file=out)
    out.flush()
