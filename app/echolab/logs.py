"""The server's event log: one line per event, text or JSON, on stderr.

Why not the standard `logging` module: `logging` imports `threading`, and a parent that has
imported `threading` costs every forked child about 420 KiB more private memory (measured on
Linux 6.18 / CPython 3.11: 157 KiB private dirty per idle child without it, 575 KiB with it;
see README "Measured figures"). This module keeps `logging`'s calling
convention, `log.info("child %d exited", pid)` with %-arguments formatted only when emitted,
and writes each line with a single write(2), so lines from the parent and its children never
interleave (a pipe write of at most PIPE_BUF bytes is atomic).
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # `typing` itself is not imported at run time: a lean parent
if TYPE_CHECKING:
    from typing import Any

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}


class EventLog:
    """A minimal logger: level threshold, text or JSON lines, `fields` for JSON consumers."""

    def __init__(self, level: int = INFO, fmt: str = "text", fd: int | None = None) -> None:
        self.level = level
        self.json = fmt == "json"
        self.fd = fd
        self.closed = False  # the reader of our stderr went away: nobody can read us
        self._second = -1
        self._stamp = ""

    def configure(self, level: str = "info", fmt: str = "text", fd: int | None = None) -> None:
        """Set the threshold and format; called once at start-up, before any fork."""
        self.level = LEVELS[level]
        self.json = fmt == "json"
        self.fd = fd
        self.closed = False

    def is_enabled_for(self, level: int) -> bool:
        return level >= self.level

    def log(
        self,
        level: int,
        msg: str,
        *args: object,
        fields: dict[str, Any] | None = None,
        exc: bool = False,
    ) -> None:
        """Emit one event if `level` passes the threshold."""
        if level < self.level:
            return
        text = msg % args if args else msg
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int(now % 1 * 1000):03d}Z"
        trace = ""
        if exc:
            import traceback  # only when there is one to print

            trace = traceback.format_exc().rstrip()
        if self.json:
            import json  # only paid when --log-format json is chosen

            entry: dict[str, Any] = {
                "ts": stamp,
                "level": _NAMES[level].lower(),
                "pid": os.getpid(),
                "msg": text,
            }
            if fields:
                entry.update(fields)
            if trace:
                entry["exc"] = trace
            line = json.dumps(entry, separators=(",", ":"), default=str)
        else:
            line = f"{stamp} echolab[{os.getpid()}] {_NAMES[level]} {text}"
            if trace:
                line += "\n" + trace
        self._write(line + "\n")

    def _write(self, line: str) -> None:
        if self.closed:
            return
        data = line.encode("utf-8", "backslashreplace")
        fd = sys.stderr.fileno() if self.fd is None else self.fd
        try:
            while data:
                data = data[os.write(fd, data) :]
        except BrokenPipeError:
            # Nobody reads our stderr any more. Writing on would only raise SIGPIPE again,
            # which the server logs: a loop. The events are lost; the server goes on.
            self.closed = True
        except OSError:
            pass  # stderr gone: the event is lost, the server goes on

    def always(self, msg: str, *args: object, **kw: Any) -> None:
        """An INFO line whatever the threshold: the ready line tools wait for."""
        level, self.level = self.level, DEBUG
        try:
            self.log(INFO, msg, *args, **kw)
        finally:
            self.level = level

    def debug(self, msg: str, *args: object, **kw: Any) -> None:
        self.log(DEBUG, msg, *args, **kw)

    def info(self, msg: str, *args: object, **kw: Any) -> None:
        self.log(INFO, msg, *args, **kw)

    def warning(self, msg: str, *args: object, **kw: Any) -> None:
        self.log(WARNING, msg, *args, **kw)

    def error(self, msg: str, *args: object, **kw: Any) -> None:
        self.log(ERROR, msg, *args, **kw)

    def exception(self, msg: str, *args: object, **kw: Any) -> None:
        """An error with the traceback of the exception being handled."""
        self.log(ERROR, msg, *args, exc=True, **kw)


log = EventLog()
