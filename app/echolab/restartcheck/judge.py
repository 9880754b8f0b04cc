"""The one judge of a restart experiment: every surface hands it a Result, nothing else decides.

A verdict proves each link of its claim, in order, or says which link is missing:

(a) a restart happened — what counts as evidence depends on the strategy:
    stop-start         the old listener went away and a new one took the port (another socket
                       inode, or a moment with no listener), or another process took the
                       listener (a socket held by a service manager);
    reuseport          a new listener joined the old one, then the old one went away;
    socket-activation  the same listener throughout, passed to another server process;
    reload             the same listener and process, and a new generation in the server's log
                       (its own output locally; `--log-cmd` in managed mode), logged by the
                       process that held the listener before and after.
(b) for stop-start: TIME_WAIT from this run's own sessions was on the server's port at the bind
    (seen just before it and just after it; for a new server that never listened, seen from the
    outside, at both ends of its bind attempt's window: from the old server letting go of the
    port to the failure being seen). Without it any restart binds: the run is invalid.
(c) the outcome the strategy promises: with SO_REUSEADDR the new server bound and echoed,
    without it EADDRINUSE (a status, never only a sentence); the zero-downtime strategies refuse
    no connection.

Times are reported, never judged, unless the user asked for a limit (`--rebind-limit`).
"""

from __future__ import annotations

from typing import Any

from echolab.errors import EXIT_FAILED, EXIT_INVALID_RUN, EXIT_OK
from echolab.restartcheck.result import Result

EXPECTED = {
    "stop-start": "the new server binds under TIME_WAIT and echoes",
    "stop-start/no-reuseaddr": "EADDRINUSE (no SO_REUSEADDR) while TIME_WAIT lingers",
    "reuseport": "a new listener joins before the old one closes: nobody refused or reset",
    "socket-activation": "the listener outlives the server: nobody refused or reset",
    "reload": "same process, same listener, new generation: nothing refused or reset",
}


def expected_outcome(r: Result) -> str:
    key = r.strategy + ("/no-reuseaddr" if r.strategy == "stop-start" and not r.reuseaddr else "")
    return EXPECTED[key]


def _pids(pids: list[int]) -> str:
    return ",".join(map(str, pids)) or "none"


def restart_link(r: Result) -> tuple[bool, str]:
    """(a): was a restart observed, and how (or why not)."""
    before, after = set(r.listeners_before), set(r.listeners_after)
    new, old_gone = after - before, bool(before) and not before & after
    gap = bool(r.no_listener_ms)
    left = set(r.owners_before) - set(r.owners_after)
    came = set(r.owners_after) - set(r.owners_before)
    handed_over = bool(before) and before == after and bool(left) and bool(came)
    inodes = f"inode {_pids(sorted(before))}"
    if not before:
        return False, "no listener on the port when the restart began"
    if r.strategy == "reload":
        if r.rebind.startswith("failed (SIGHUP"):
            return True, f"{r.rebind[8:-1]}: it went away instead of reloading"
        return reload_link(r, before, after, inodes)
    if new and not old_gone:
        return False, (
            f"a new listener ({_pids(sorted(new))}) appeared, but the old one ({inodes}) "
            "never went away"
        )
    if new:
        how = f"listener {inodes} replaced by {_pids(sorted(new))}"
        if r.overlap:
            how += " (both listened for a while)"
        elif gap:
            how += f" (no listener for {r.no_listener_ms:.0f} ms)"
        return True, how
    if handed_over:
        return True, (
            f"the same listener ({inodes}) passed from PID {_pids(sorted(left))} to "
            f"{_pids(sorted(came))}"
        )
    if old_gone or gap:
        return True, f"the old listener ({inodes}) went away; no new one bound"
    return False, (
        f"the same listener ({inodes}, PID {_pids(r.owners_after)}) was there throughout and "
        "never went away"
    )


def reload_link(r: Result, before: set[int], after: set[int], inodes: str) -> tuple[bool, str]:
    """(a) for reload: a new generation in the server's log, logged by the process that held
    the listener before and after (when the line names its PID), the same listener throughout."""
    g0, g1, pid = r.generation_before, r.generation_after, r.reload_pid
    held = set(r.owners_before) & set(r.owners_after)
    same_pid = bool(held) and set(r.owners_before) <= set(r.owners_after)
    if pid is not None and pid not in held:
        same_pid = False
    if g0 is not None and g1 is not None and g1 > g0 and before == after and same_pid:
        return True, f"generation {g0} -> {g1}, same PID {_pids(r.owners_after)}, same {inodes}"
    if g0 is None or g1 is None or g1 <= g0:
        why = f"no new generation in the server's log (generation {g0} -> {g1})"
    elif pid is not None and pid not in held:
        why = f"the new generation {g1} was logged by PID {pid}, not the listener's holder"
    else:
        why = f"a new generation {g1} was logged, but the listener or its process changed"
    return False, (
        f"{why}; listener {inodes} -> {_pids(sorted(after))}, PIDs "
        f"{_pids(r.owners_before)} -> {_pids(r.owners_after)}"
    )


def time_wait_link(r: Result) -> tuple[bool, str]:
    """(b): TIME_WAIT from this run's sessions on the server's port at the bind."""
    at = r.time_wait_at_restart
    if at:
        older = (
            f"; {r.time_wait_before} older one(s) on the port do not count"
            if (r.time_wait_before)
            else ""
        )
        if "bind_attempt" in r.details:  # a new server that never listened, seen from outside
            return True, (
                f"{at} TIME_WAIT socket(s) from this run's sessions on the server's port at the "
                f"bind attempt ({r.time_wait_before_bind} once the old server had let go of the "
                f"port, {r.time_wait_after_bind} when the failure was seen)" + older
            )
        return True, (
            f"{at} TIME_WAIT socket(s) from this run's sessions on the server's port at the bind "
            f"({r.time_wait_before_bind} just before it, {r.time_wait_after_bind} just after)"
            + older
        )
    if r.close_first == "client":
        why = (
            "the clients closed first, so TIME_WAIT landed on the clients' ports "
            f"({r.client_side_time_wait or 0} there), not on the server's"
        )
    elif r.reset_by_server:
        why = (
            f"the server reset {r.reset_by_server} connection(s) instead of closing them in "
            "order (a reset leaves no TIME_WAIT)"
        )
    elif r.closed_by_server == 0:
        why = "the server never closed the held connections"
    elif r.time_wait_from_clients:
        why = (
            f"{r.time_wait_from_clients} appeared, but not on both sides of the bind "
            f"({r.time_wait_before_bind} just before it, {r.time_wait_after_bind} just after)"
        )
    else:
        why = "none appeared on the server's port"
    return False, f"no TIME_WAIT from this run's sessions at the bind: {why}"


def outcome_link(r: Result) -> tuple[bool, str]:
    """(c): did the strategy deliver what it promises."""
    if r.strategy == "stop-start" and not r.reuseaddr:
        if r.rebind == "EADDRINUSE":
            return True, f"the restart without SO_REUSEADDR got EADDRINUSE ({r.rebind_evidence})"
        return False, f"expected EADDRINUSE without SO_REUSEADDR, got {r.rebind}"
    if r.rebind not in ("ok", "inherited"):
        if r.strategy == "reload":
            return False, "the server did not survive the reload"
        return False, f"the new server did not start: {r.rebind}"
    if not r.echoed_after:
        return False, "the new server never echoed"
    if r.strategy == "stop-start":
        limit = r.rebind_limit_ms
        if limit is not None and (r.rebind_ms is None or r.rebind_ms > limit):
            return False, f"bound after {r.rebind_ms or 0:.0f} ms, over --rebind-limit {limit:g} ms"
        took = f" {r.rebind_ms:.0f} ms after the old server was gone" if r.rebind_ms else ""
        return True, f"the new server bound{took} and echoed"
    return zero_downtime_outcome(r)


def zero_downtime_outcome(r: Result) -> tuple[bool, str]:
    """(c) for reuseport, socket activation and reload, which promise that nobody is turned
    away: no connect refused, none reset, every probe and every queued client echoed."""
    p = r.probes
    if p.refused:
        return False, f"{p.refused} of {p.attempts} probe connects refused during the restart"
    lost = p.reset + p.echo_failed + p.timeout + p.other
    if lost:
        return False, f"{lost} of {p.attempts} probe connections reset or unanswered"
    if r.queue.reset + r.queue.failed:
        return False, (
            f"{r.queue.reset + r.queue.failed} of {r.queue.queued} queued connection(s) lost "
            "when the old listener closed"
        )
    survived = r.sessions_survived
    if r.strategy == "reload" and survived is not None and survived < r.clients:
        return False, f"only {survived} of {r.clients} held sessions echoed after"
    if r.strategy == "socket-activation" and set(r.listeners_before) != set(r.listeners_after):
        return False, "the listener was replaced, so it did not outlive the server"
    if r.strategy == "reuseport" and not r.overlap:
        return False, "the new listener was never seen beside the old one"
    return True, f"nobody turned away (0 refused, 0 reset of {p.attempts} probes); it echoed"


def _note(r: Result) -> str:
    q = r.queue
    if not q.queued:
        return ""
    lost = q.reset + q.failed
    migrate = r.netns.get("tcp_migrate_req")
    knob = "" if migrate is None or r.strategy != "reuseport" else f", tcp_migrate_req={migrate}"
    return f"; of {q.queued} connection(s) waiting in the old accept queue, {lost} lost{knob}"


def judge(r: Result) -> int:
    """Fill in expected, links, verdict and reason; return the exit status (0, 1 or 3)."""
    r.expected = expected_outcome(r)
    links: dict[str, dict[str, Any]] = {}
    r.links = links
    if not r.sockets_visible:
        links["restart"] = {"ok": None, "evidence": "the server's sockets cannot be read here"}
        why = r.details.get("sockets_unreadable", "its sockets cannot be read from here")
        return _invalid(r, f"the restart cannot be observed: {why}")
    ok, how = restart_link(r)
    links["restart"] = {"ok": ok, "evidence": how}
    if not ok:
        return _invalid(r, f"no restart observed: {how}")
    if r.strategy == "stop-start":
        ok, how = time_wait_link(r)
        links["time_wait"] = {"ok": ok, "evidence": how}
        if not ok:
            return _invalid(r, how)
    elif not r.probes.attempts:
        return _invalid(r, "no probe connection was made during the restart")
    ok, how = outcome_link(r)
    links["outcome"] = {"ok": ok, "evidence": how}
    r.verdict = "pass" if ok else "fail"
    r.reason = "; ".join(link["evidence"] for link in links.values()) + _note(r)
    return EXIT_OK if ok else EXIT_FAILED


def _invalid(r: Result, reason: str) -> int:
    r.verdict = "invalid"
    r.reason = f"{reason}; the run proves nothing"
    return EXIT_INVALID_RUN
