"""The restart judge's table of cases: each link of the claim, per strategy (no sockets)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from echolab.restartcheck.judge import judge
from echolab.restartcheck.result import ProbeFigures, QueueFigures, Result

OLD, NEW = 1001, 2002  # listener inodes
SERVER_A, SERVER_B, HOLDER = 11, 22, 33  # PIDs


def stop_start(**changes: Any) -> Result:
    """A stop-start that proved everything: the base every case changes one thing of."""
    base = Result(
        strategy="stop-start",
        backend="local",
        target="127.0.0.1:7007",
        reuseaddr=True,
        close_first="server",
        clients=5,
        sockets_visible=True,
        listeners_before=[OLD],
        listeners_after=[NEW],
        owners_before=[SERVER_A],
        owners_after=[SERVER_B],
        no_listener_ms=90.0,
        time_wait_before_bind=5,
        time_wait_after_bind=5,
        time_wait_at_restart=5,
        time_wait_from_clients=5,
        closed_by_server=5,
        rebind="ok",
        rebind_ms=85.0,
        echoed_after=True,
        probes=ProbeFigures(attempts=40, ok=30, refused=10),
    )
    return replace(base, **changes)


def zero_downtime(strategy: str, **changes: Any) -> Result:
    """reuseport / socket-activation / reload, nobody turned away."""
    shape: dict[str, Any] = {
        "reuseport": {"overlap": True, "no_listener_ms": 0.0},
        "socket-activation": {
            "listeners_after": [OLD],
            "owners_before": [HOLDER, SERVER_A],
            "owners_after": [HOLDER, SERVER_B],
            "no_listener_ms": 0.0,
            "rebind": "inherited",
        },
        "reload": {
            "listeners_after": [OLD],
            "owners_after": [SERVER_A],
            "no_listener_ms": 0.0,
            "generation_before": 1,
            "generation_after": 2,
            "sessions_survived": 5,
        },
    }[strategy]
    base = stop_start(strategy=strategy, probes=ProbeFigures(attempts=40, ok=40), **shape)
    return replace(base, **changes)


CASES = [
    # (name, result, exit status, verdict, words in the reason)
    ("stop-start proved", stop_start(), 0, "pass", "bound 85 ms after"),
    ("a slow machine still passes", stop_start(rebind_ms=4000.0), 0, "pass", "4000 ms"),
    ("the opt-in limit fails a slow bind",
     stop_start(rebind_limit_ms=1000.0, rebind_ms=4000.0), 1, "fail", "--rebind-limit"),
    ("the same listener throughout is no restart",
     stop_start(listeners_after=[OLD], owners_after=[SERVER_A], no_listener_ms=0.0),
     3, "invalid", "no restart observed"),
    ("a listener that never went away",
     stop_start(listeners_after=[OLD, NEW], no_listener_ms=0.0), 3, "invalid", "never went away"),
    ("another process took a held listener (systemd's socket)",
     stop_start(listeners_after=[OLD], owners_before=[1, SERVER_A], owners_after=[1, SERVER_B],
                no_listener_ms=0.0), 0, "pass", "passed from PID 11 to 22"),
    ("sockets not visible", stop_start(sockets_visible=False), 3, "invalid", "cannot be observed"),
    ("no TIME_WAIT at the bind", stop_start(time_wait_at_restart=0), 3, "invalid", "no TIME_WAIT"),
    ("TIME_WAIT only after the bind",
     stop_start(time_wait_at_restart=0, time_wait_before_bind=0), 3, "invalid",
     "not on both sides of the bind"),
    ("clients closed first", stop_start(close_first="client", time_wait_at_restart=0,
                                        client_side_time_wait=5), 3, "invalid", "clients' ports"),
    ("resets leave no TIME_WAIT", stop_start(time_wait_at_restart=0, reset_by_server=5,
                                             closed_by_server=0), 3, "invalid", "reset 5"),
    ("no echo after the bind", stop_start(echoed_after=False), 1, "fail", "never echoed"),
    ("EADDRINUSE expected and got",
     stop_start(reuseaddr=False, listeners_after=[], rebind="EADDRINUSE",
                rebind_evidence="exit 6"), 0, "pass", "got EADDRINUSE"),
    ("managed EADDRINUSE: TIME_WAIT over the bind attempt's window",
     stop_start(reuseaddr=False, backend="command", mode="managed", listeners_after=[],
                owners_after=[], rebind="EADDRINUSE", restart_cmd_status=6,
                rebind_evidence="the restart command exited 6, EXIT_ADDR_IN_USE",
                details={"bind_attempt": {"from_ms": 40.0, "to_ms": 900.0}}), 0, "pass",
     "5 TIME_WAIT socket(s) from this run's sessions on the server's port at the bind attempt"),
    ("managed EADDRINUSE without this run's TIME_WAIT proves nothing",
     stop_start(reuseaddr=False, backend="command", mode="managed", listeners_after=[],
                owners_after=[], rebind="EADDRINUSE", restart_cmd_status=6, close_first="client",
                time_wait_before=1, time_wait_at_restart=0, time_wait_before_bind=0,
                time_wait_after_bind=0, client_side_time_wait=5,
                details={"bind_attempt": {"from_ms": 40.0, "to_ms": 900.0}}), 3, "invalid",
     "the clients closed first"),
    ("managed EADDRINUSE, no reading in the bind attempt's window",
     stop_start(reuseaddr=False, backend="command", mode="managed", listeners_after=[],
                owners_after=[], rebind="EADDRINUSE", restart_cmd_status=6,
                time_wait_at_restart=None, time_wait_before_bind=None, time_wait_after_bind=None),
     3, "invalid", "no TIME_WAIT from this run's sessions at the bind"),
    ("EADDRINUSE expected, it bound", stop_start(reuseaddr=False), 1, "fail",
     "expected EADDRINUSE"),
    ("EADDRINUSE expected, another failure",
     stop_start(reuseaddr=False, listeners_after=[], rebind="failed (exit 5)"), 1, "fail",
     "got failed (exit 5)"),
    ("reuseport proved", zero_downtime("reuseport"), 0, "pass", "both listened"),
    ("reuseport without overlap", zero_downtime("reuseport", overlap=False, no_listener_ms=30.0),
     1, "fail", "never seen beside"),
    ("reuseport losing the queue",
     zero_downtime("reuseport", queue=QueueFigures(clients=4, queued=4, reset=4)), 1, "fail",
     "4 of 4 queued"),
    ("reuseport with resets", zero_downtime("reuseport", probes=ProbeFigures(40, 30, 0, 10)),
     1, "fail", "10 of 40 probe connections reset"),
    ("socket activation proved", zero_downtime("socket-activation"), 0, "pass", "same listener"),
    ("socket activation, refused", zero_downtime(
        "socket-activation", probes=ProbeFigures(attempts=40, ok=35, refused=5)), 1, "fail",
     "5 of 40 probe connects refused"),
    ("reload proved", zero_downtime("reload"), 0, "pass", "generation 1 -> 2"),
    ("reload without a new generation", zero_downtime("reload", generation_after=1), 3,
     "invalid", "no new generation"),
    ("reload under a new PID is no reload",
     zero_downtime("reload", owners_after=[SERVER_B]), 3, "invalid",
     "the listener or its process changed"),
    ("reload with the listener replaced is no reload",
     zero_downtime("reload", listeners_after=[NEW]), 3, "invalid",
     "the listener or its process changed"),
    ("reload whose listener's process cannot be seen proves nothing",
     zero_downtime("reload", owners_before=[], owners_after=[]), 3, "invalid",
     "the listener or its process changed"),
    ("managed reload proved (the log's line names the listener's PID)",
     zero_downtime("reload", backend="command", mode="managed", reload_pid=SERVER_A), 0, "pass",
     f"generation 1 -> 2, same PID {SERVER_A}"),
    ("managed reload whose new generation came from another process",
     zero_downtime("reload", backend="command", mode="managed", reload_pid=SERVER_B), 3,
     "invalid", f"logged by PID {SERVER_B}, not the listener's holder"),
    ("managed reload whose command reloaded nothing",
     zero_downtime("reload", backend="command", mode="managed", generation_before=2,
                   generation_after=2, rebind="failed (no reload line with a new generation "
                   "in the server's log)"), 3, "invalid", "generation 2 -> 2"),
    ("managed reload whose log was never read",
     zero_downtime("reload", backend="command", mode="managed", generation_after=None,
                   rebind="failed (exit 1)"), 3, "invalid", "no new generation"),
    ("managed reload that refused connections",
     zero_downtime("reload", backend="command", mode="managed", reload_pid=SERVER_A,
                   probes=ProbeFigures(attempts=40, ok=38, refused=2)), 1, "fail",
     "2 of 40 probe connects refused"),
    ("managed reload that reset connections",
     zero_downtime("reload", backend="command", mode="managed", reload_pid=SERVER_A,
                   probes=ProbeFigures(attempts=40, ok=39, reset=1)), 1, "fail",
     "1 of 40 probe connections reset"),
    ("reload that killed the server",
     zero_downtime("reload", rebind="failed (SIGHUP: the server was killed by SIGHUP)",
                   listeners_after=[], owners_after=[], echoed_after=False), 1, "fail",
     "did not survive"),
    ("reload that dropped held sessions", zero_downtime("reload", sessions_survived=3), 1, "fail",
     "only 3 of 5"),
    ("no probes during a zero-downtime restart",
     zero_downtime("reuseport", probes=ProbeFigures()), 3, "invalid", "no probe"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "result", "status", "verdict", "words"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_judge(name: str, result: Result, status: int, verdict: str, words: str) -> None:
    assert judge(result) == status, result.reason
    assert result.verdict == verdict
    assert words in result.reason, result.reason
    assert result.expected


def test_links_are_reported_in_order_and_stop_at_the_first_missing_one() -> None:
    r = stop_start()
    judge(r)
    assert list(r.links) == ["restart", "time_wait", "outcome"]
    assert all(link["ok"] for link in r.links.values())
    r = stop_start(listeners_after=[OLD], owners_after=[SERVER_A], no_listener_ms=0.0)
    judge(r)
    assert list(r.links) == ["restart"] and r.links["restart"]["ok"] is False


def test_json_has_the_schema_and_rounds_times() -> None:
    r = stop_start(rebind_ms=85.04321)
    judge(r)
    data = r.as_json()
    assert data["schema"] == "echolab.restart-check/2"
    assert data["rebind_ms"] == 85.0
    assert data["probes"]["attempts"] == 40 and data["queue"]["clients"] == 0
    assert "timeline" not in r.as_json(timeline=False)


def _experiment(result: Result, scans: list[tuple[float, tuple[int, ...]]]) -> Any:
    """An Experiment with the owner scans of a run (time after the restart, holders of OLD)."""
    from echolab.restartcheck.engine import Experiment

    exp = Experiment(plan=Any, backend=Any, result=result)  # type: ignore[arg-type]
    exp.timeline.t0 = 100.0
    exp.timeline.owners = [(100.0 + t, {OLD: pids}) for t, pids in scans]
    return exp


def test_a_session_child_caught_holding_the_listener_is_no_takeover() -> None:
    """Between a session child's fork() and its close of the listener, a scan sees it holding
    the old listener; it is gone at the end: no new server took the listener over."""
    result = stop_start(owners_before=[SERVER_A], owners_after=[], listeners_after=[])
    child = 4242
    exp = _experiment(result, [(0.05, (SERVER_A, child)), (0.2, (SERVER_A,)), (0.4, ())])
    assert exp.takeover_time() is None


def test_a_new_server_holding_the_inherited_listener_at_the_end_took_it_over() -> None:
    """Socket activation: the holder of the socket (HOLDER) passes it to the next server."""
    result = stop_start(owners_before=[HOLDER, SERVER_A], owners_after=[HOLDER, SERVER_B])
    scans = [(0.05, (HOLDER, SERVER_A)), (0.3, (HOLDER,)), (0.6, (HOLDER, SERVER_B))]
    assert _experiment(result, scans).takeover_time() == pytest.approx(100.6)
