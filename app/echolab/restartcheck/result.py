"""The result of one restart experiment: what the engine observed and what the judge decided.

`Result.as_json()` is what `--json` writes (SCHEMA names its version); every surface (local,
managed, later the lab and the role) fills the same fields and hands them to the same judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "echolab.restart-check/2"
STRATEGIES = ("stop-start", "reuseport", "socket-activation", "reload")


@dataclass
class ProbeFigures:
    """Probe connections made from the start of the restart until 0.3 s after the first echo."""

    attempts: int = 0
    ok: int = 0
    refused: int = 0
    reset: int = 0
    timeout: int = 0
    echo_failed: int = 0
    other: int = 0
    connect_p50_ms: float | None = None
    connect_p99_ms: float | None = None
    echo_p99_ms: float | None = None  # connect + echo: how long a client waited to be served


@dataclass
class QueueFigures:
    """Clients that were waiting in the old listener's accept queue when the restart began."""

    clients: int = 0  # queue clients connected (0: not measured)
    queued: int = 0  # seen in the accept queue just before the restart (/proc/net/tcp rx_queue)
    echoed: int = 0  # served in the end (by the new server, or the same listener's next owner)
    reset: int = 0  # reset when the listener they waited in was closed
    failed: int = 0  # closed without an echo, or still waiting at the end


@dataclass
class Result:
    """Everything one run observed. None means "not observed" (not zero)."""

    strategy: str
    backend: str  # "local" (servers we start) or "command" (--restart-cmd, --log-cmd)
    target: str
    reuseaddr: bool
    close_first: str
    clients: int
    schema: str = SCHEMA
    mode: str = "local"  # "local" or "managed" (the backend's older name)
    netns: dict[str, Any] = field(default_factory=dict)  # {"own": bool, "tcp_migrate_req": n}
    sockets_visible: bool = False  # the server's sockets are readable from here
    # (a) the restart: listeners and the processes holding them, before and after
    listeners_before: list[int] = field(default_factory=list)
    listeners_after: list[int] = field(default_factory=list)
    owners_before: list[int] = field(default_factory=list)
    owners_after: list[int] = field(default_factory=list)
    overlap: bool = False  # a new listener was seen while the old one still listened
    no_listener_ms: float | None = None  # sampled time without any listener on the port
    server_pid_before: int | None = None
    server_pid_after: int | None = None
    generation_before: int | None = None  # reload: the server's generation (its log)
    generation_after: int | None = None
    reload_pid: int | None = None  # reload: the PID its log line with the new generation names
    # (b) TIME_WAIT from this run's sessions on the server's port
    time_wait_before: int | None = None  # on the port before the stop (older runs': not ours)
    time_wait_before_bind: int | None = None  # ours, just before the bind (or takeover)
    time_wait_after_bind: int | None = None  # ours, just after it
    time_wait_at_restart: int | None = None  # ours, seen both before and after: at the bind
    time_wait_from_clients: int | None = None  # ours at their peak (the stop's doing)
    client_side_time_wait: int | None = None  # TIME_WAIT on the held clients' own ports
    time_wait_left_s: list[float] = field(default_factory=list)
    closed_by_server: int = 0  # held clients that saw the server's FIN
    reset_by_server: int = 0  # held clients that saw a reset (no TIME_WAIT for those)
    sessions_survived: int | None = None  # reload: held clients that still echoed after it
    # (c) the outcome
    rebind: str = "not tried"  # "ok", "EADDRINUSE", "inherited", "failed (exit N)", ...
    rebind_evidence: str = ""  # how EADDRINUSE (or another failure) was told
    new_server_status: int | None = None  # exit status of a new server that did not start
    restart_cmd_status: int | None = None
    restart_output: str = ""
    echoed_after: bool = False
    # figures (reported, never judged unless --rebind-limit asks)
    startup_ms: float | None = None  # the first server's start: an interpreter's start-up here
    stop_ms: float | None = None  # restart began -> old listener gone
    rebind_ms: float | None = None  # old listener gone -> new one listening (or taking over)
    restart_ms: float | None = None  # restart began -> first echo through the new server
    rebind_limit_ms: float | None = None
    probes: ProbeFigures = field(default_factory=ProbeFigures)
    refused_during_restart: int = 0
    probe_attempts: int = 0
    queue: QueueFigures = field(default_factory=QueueFigures)
    # the judge
    expected: str = ""
    verdict: str = "invalid"  # "pass", "fail", "invalid", "interrupted", "error"
    reason: str = ""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, Any] = field(default_factory=dict)

    def as_json(self, timeline: bool = True) -> dict[str, Any]:
        data = asdict(self)
        for key in ("stop_ms", "rebind_ms", "restart_ms", "no_listener_ms", "startup_ms"):
            if data[key] is not None:
                data[key] = round(data[key], 1)
        if not timeline:
            data.pop("timeline")
        return data
