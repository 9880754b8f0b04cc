"""Logging for the server's events: one line per event, text or JSON, on stderr.

The CLI's user gets print(); the server's events go through `logging` with %-arguments, so a
line is only formatted when it is emitted (STYLE.md 7).
"""

from __future__ import annotations

import logging
import os
import sys
import time

LOGGER_NAME = "echolab"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, pid, msg, plus the record's `fields` if any."""

    def format(self, record: logging.LogRecord) -> str:
        import json  # only paid when --log-format json is chosen

        entry: dict[str, object] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`2026-11-27T02:40:00.123Z echolab[1234] INFO message`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} echolab[{record.process}] {record.levelname} "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


def setup(level: str = "info", fmt: str = "text") -> logging.Logger:
    """Configure the `echolab` logger once, at start-up, before any fork."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # Forked children inherit this logger; they log only what the parent cannot see.
    logging.logProcesses = True
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return logger
