"""What a person reads: one run as label/value rows, several as one table (--compare)."""

from __future__ import annotations

from typing import TextIO

from echolab.report import print_rows
from echolab.restartcheck.result import Result

COLOURS = {"pass": "bold green", "fail": "bold red"}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def label(r: Result) -> str:
    """The run's name in a table: strategy, and the knob that sets it apart."""
    name = r.strategy
    if r.strategy == "stop-start" and not r.reuseaddr:
        name += ", no SO_REUSEADDR"
    migrate = r.netns.get("tcp_migrate_req")
    if r.strategy == "reuseport" and migrate is not None:
        name += f", tcp_migrate_req={migrate}"
    return name


def _time_wait(r: Result) -> str:
    if r.strategy == "reuseport" and r.time_wait_from_clients is not None:
        return (
            f"{r.time_wait_from_clients} from these clients after the stop; none at the bind, "
            "which came before it"
        )
    if r.time_wait_at_restart is None:
        if not r.sockets_visible:
            return "cannot be read here"
        return f"{r.time_wait_from_clients or 0} from these clients (no bind to face them)"
    if "bind_attempt" in r.details:
        text = f"{r.time_wait_at_restart} at the bind attempt"
        text += f" ({r.time_wait_before_bind} once the old server let go of the port,"
        text += f" {r.time_wait_after_bind} when the failure was seen)"
    else:
        text = f"{r.time_wait_at_restart} at the bind"
        text += f" ({r.time_wait_before_bind} just before, {r.time_wait_after_bind} just after)"
    if r.time_wait_before:
        text += f"; {r.time_wait_before} older"
    return text + f"; {r.client_side_time_wait or 0} on the clients' ports"


def _clients(r: Result) -> str:
    if r.close_first == "client":
        return f"{r.clients} held; closed by the clients before the stop"
    text = f"{r.clients} held; {r.closed_by_server} closed by the server"
    if r.reset_by_server:
        text += f", {r.reset_by_server} reset"
    if r.sessions_survived is not None:
        text += f"; {r.sessions_survived} still echoing after the reload"
    return text


def _queue(r: Result) -> str:
    q = r.queue
    if not q.clients:
        return "not measured"
    return (
        f"{q.queued} of {q.clients} waited in the old accept queue: {q.echoed} echoed, "
        f"{q.reset} reset, {q.failed} unanswered"
    )


def _probes(r: Result) -> str:
    p = r.probes
    text = f"{p.attempts} from the restart on: {p.refused} refused, {p.reset} reset"
    text += f", {p.echo_failed + p.timeout + p.other} failed echo"
    return text + f"; connect p99 {_ms(p.connect_p99_ms)}, echo p99 {_ms(p.echo_p99_ms)}"


def render_rows(r: Result) -> list[tuple[str, str]]:
    """One run as (label, value) rows."""
    rebind = r.rebind + (
        f", ready {_ms(r.rebind_ms)} after the old server was gone"
        if r.rebind_ms is not None
        else ""
    )
    where = f"{r.target} ({r.backend}" + (", own network namespace" if r.netns.get("own") else "")
    rows = [
        ("target", where + ")"),
        ("strategy", label(r)),
        ("clients", _clients(r)),
        ("restart", (r.links.get("restart") or {}).get("evidence", "-")),
        ("TIME_WAIT", _time_wait(r)),
        ("new server", rebind),
        ("no listener", _ms(r.no_listener_ms) + " (sampled every 10 ms)"),
        ("first echo after", _ms(r.restart_ms) + " from the start of the restart"),
        ("probes", _probes(r)),
        ("queue", _queue(r)),
        ("expected", r.expected),
        ("verdict", f"{r.verdict.upper()}: {r.reason}"),
    ]
    return rows


def print_report(r: Result, out: TextIO) -> None:
    """A short table: rich on a terminal when rich is installed, aligned text otherwise."""
    colour = COLOURS.get(r.verdict, "bold yellow")
    print_rows("echolab restart-check", render_rows(r), out, {"verdict": colour})


COMPARE_HEADER = (
    "strategy",
    "verdict",
    "refused",
    "reset",
    "failed echo",
    "connect p99",
    "echo p99",
    "no listener",
    "TIME_WAIT at bind",
    "queue lost",
)


def compare_row(r: Result) -> tuple[str, ...]:
    p, q = r.probes, r.queue
    tw = "-" if r.time_wait_at_restart is None else str(r.time_wait_at_restart)
    lost = f"{q.reset + q.failed} of {q.queued}" if q.clients else "-"
    return (
        label(r),
        r.verdict.upper(),
        f"{p.refused}/{p.attempts}",
        str(p.reset),
        str(p.echo_failed + p.timeout + p.other),
        _ms(p.connect_p99_ms),
        _ms(p.echo_p99_ms),
        _ms(r.no_listener_ms),
        tw,
        lost,
    )


def print_compare(results: list[Result], skipped: list[tuple[str, str]], out: TextIO) -> None:
    """Every strategy in one table, then each verdict's reason."""
    rows = [COMPARE_HEADER, *(compare_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COMPARE_HEADER))]
    print("echolab restart-check --compare", file=out)
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip(), file=out)
    for name, why in skipped:
        print(f"  {name}: skipped: {why}", file=out)
    print("", file=out)
    for r in results:
        print(f"  {label(r)}: {r.verdict.upper()}: {r.reason}", file=out)
    out.flush()
