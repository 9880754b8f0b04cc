"""The restart experiment: one engine for every strategy and every backend.

In order: the backend brings up (or finds) the server; held clients connect and echo once;
queue clients, where the backend can fill the server to its child cap, wait in its accept
queue; the sampler reads the port's sockets every ~10 ms and the prober opens a connection
every 5 ms; the backend restarts the server its way; the engine waits for the first echo after
it, lets the last FIN/ACK exchanges land, and turns what it saw into a Result for the judge.
The held clients close on the server's FIN (hold.py), so a stop leaves TIME_WAIT on the
server's port, as a real stop with clients connected does.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from echolab.hold import HeldClients, resolve
from echolab.netaddr import format_address
from echolab.probe import exchange
from echolab.restartcheck.result import ProbeFigures, QueueFigures, Result
from echolab.restartcheck.timeline import (
    PROBE_PAYLOAD,
    Prober,
    Sample,
    Sampler,
    Timeline,
)
from echolab.tcpstate import plain_address, read_sockets

SETTLE = 0.5  # s for the last FIN/ACK exchanges to land (TIME_WAIT is counted after them)
AFTER = 0.3  # s the sampler and prober go on after the first echo (the "after" of the picture)
PROBE_TIMEOUT = 5.0  # s a probe may wait for its echo (in a queue, behind a slow start)
QUEUE_WAIT = 2.0  # s for queue clients to show in the accept queue, and to be served at the end
WILDCARDS = ("0.0.0.0", "::", "")
# Scans of /proc/*/fd for the listeners' holders just before and after the restart, 10 ms apart,
# until each listener has one (a process in execve() hides its descriptors for a moment).
OWNER_ATTEMPTS = 20


@dataclass
class Plan:
    """What to run: the strategy and its knobs (from the command line)."""

    strategy: str = "stop-start"
    reuseaddr: bool = True
    clients: int = 5
    queued: int = 0  # queue clients (0: none)
    close_first: str = "server"
    timeout: float = 10.0
    rebind_limit: float | None = None  # s; None: times are reported, never judged
    host: str = "127.0.0.1"
    port: int = 7007


class Context(Protocol):
    """What a backend may ask of the engine while it restarts the server."""

    timeline: Timeline
    deadline: float

    def sample_now(self, label: str) -> Sample | None: ...

    def settle_held(self) -> None: ...


class Backend(Protocol):
    """Where the server runs and how it is restarted (local processes, a command; later the
    Compose lab and systemd through the role). The engine calls start(), restart(), then
    finish(); close() at any point, more than once, must stop everything it started."""

    name: str
    fills_to_cap: bool  # the old server is ours and full at `clients`: queue clients wait

    def start(self, ctx: Context) -> tuple[str, int]: ...

    def restart(self, ctx: Context) -> None: ...

    def gave_up(self) -> bool: ...

    def finish(self, ctx: Context, result: Result) -> None: ...

    def close(self) -> None: ...


class QueueClients:
    """Clients that connect to a server at its child cap: the kernel completes their
    handshakes and they wait in the listener's accept queue, each with its request sent. A
    thread reads their echoes and closes each one served at once, so that they do not hold
    the next server's child slots (it runs with the same cap under socket activation)."""

    def __init__(self, family: int, sockaddr: tuple[Any, ...], n: int) -> None:
        self.figures = QueueFigures(clients=n)
        self.sel = selectors.DefaultSelector()
        self.got: dict[socket.socket, bytes] = {}
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(QUEUE_WAIT)
            try:
                sock.connect(sockaddr)
                sock.sendall(PROBE_PAYLOAD)
                sock.setblocking(False)
            except OSError:
                sock.close()
                self.figures.failed += 1
                continue
            self.got[sock] = b""
            self.sel.register(sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="echolab-queue", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self.got and not self._stop.is_set():
            for key, _ in self.sel.select(0.01):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                self._read(ready)

    def _read(self, sock: socket.socket) -> None:
        f = self.figures
        try:
            chunk = sock.recv(len(PROBE_PAYLOAD))
        except BlockingIOError:
            return
        except OSError:
            f.reset += 1
            self._forget(sock)
            return
        if chunk:
            self.got[sock] += chunk
            if len(self.got[sock]) < len(PROBE_PAYLOAD):
                return
            if self.got[sock] == PROBE_PAYLOAD:
                f.echoed += 1
            else:
                f.failed += 1
        else:
            f.failed += 1  # closed without the echo
        self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        del self.got[sock]
        sock.close()

    def outcome(self, figures: QueueFigures, deadline: float) -> None:
        """Wait until `deadline` for the rest to be served; the figures into `figures`."""
        while self.got and time.monotonic() < deadline:
            time.sleep(0.01)
        self.close()
        f = self.figures
        figures.echoed, figures.reset, figures.failed = f.echoed, f.reset, f.failed

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in list(self.got):
            self.figures.failed += 1
            self._forget(sock)
        self.sel.close()


def echo_once(family: int, sockaddr: tuple[Any, ...], timeout: float) -> bool:
    """One echo round trip; True when the payload came back intact."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return exchange(sock, PROBE_PAYLOAD) == PROBE_PAYLOAD
    except OSError:
        return False


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Experiment:
    """One run: its state lives here, each step is a short method (setup, restart, collect)."""

    def __init__(self, plan: Plan, backend: Backend, result: Result) -> None:
        self.plan = plan
        self.backend = backend
        self.result = result
        self.timeline = Timeline()
        self.deadline = float("inf")
        self.sampler: Sampler | None = None
        self.prober: Prober | None = None
        self.held: HeldClients | None = None
        self.queue: QueueClients | None = None
        self.family: int = socket.AF_INET
        self.sockaddr: tuple[Any, ...] = ()
        self.port = 0
        self.t_up: float | None = None
        self.t_gone: float | None = None  # the old server's sessions ended (stop-start)

    # ----- what backends may ask (Context) ---------------------------------------------------

    def sample_now(self, label: str) -> Sample | None:
        return self.sampler.sample_now(label) if self.sampler else None

    def settle_held(self) -> None:
        """After a stop: wait (at most SETTLE) until the held clients have closed on the FINs."""
        assert self.held is not None
        end = time.monotonic() + SETTLE
        while self.held.open and time.monotonic() < end:
            time.sleep(0.002)
        self.t_gone = max(time.monotonic() if self.held.open else 0.0, self.held.last_close)

    # ----- the run -----------------------------------------------------------------------

    def execute(self) -> None:
        """Set up, restart, wait for the first echo after it, let the port settle."""
        self.setup()
        self.restart()
        self.settle()

    def setup(self) -> None:
        plan, r = self.plan, self.result
        host, self.port = self.backend.start(self)
        r.target = format_address(host, self.port)
        self.family, self.sockaddr = resolve(host, self.port)
        self.start_sampler(host)
        self.held = HeldClients(self.family, self.sockaddr, plan.clients, min(plan.timeout, 5.0))
        if self.sampler is not None:
            self.sampler.clients = frozenset(self.held.endpoints)
        self.held.start_watching()
        if plan.close_first == "client":
            self.held.close_all()
            self.wait_sessions_gone()
        if plan.queued and self.backend.fills_to_cap:
            self.fill_queue()
        r.time_wait_before = sum(
            1
            for s in read_sockets(self.port, "local", states=("TIME_WAIT",))
            if (plain_address(s.remote_addr), s.remote_port) not in set(self.held.endpoints)
        )
        if self.sampler is not None:
            before = self.sampler.sample_now("restart")
            r.listeners_before = list(before.listeners)
            owners = self.sampler.scan_owners(before.listeners, attempts=OWNER_ATTEMPTS)
            r.owners_before = sorted({p for o in owners.values() for p in o})

    def start_sampler(self, host: str) -> None:
        """Sample the port if the server's sockets are visible here (same host and namespace)."""
        addr = None if host in WILDCARDS else plain_address(str(self.sockaddr[0]))
        listening = read_sockets(self.port, "local", states=("LISTEN",))
        visible = [s for s in listening if addr is None or plain_address(s.local_addr) in
                   (addr, *WILDCARDS)]  # fmt: skip
        self.result.sockets_visible = bool(visible)
        if not visible:
            self.result.details["sockets_unreadable"] = (
                f"no listener on port {self.port} is visible in this host's network namespace: "
                "the server runs elsewhere (another host, a container); run restart-check where "
                "the server's sockets are"
            )
            return
        if any(plain_address(s.local_addr) in WILDCARDS for s in visible):
            # A wildcard listener holds the port on every address: sample them all, or the
            # listener itself (0.0.0.0 or ::) would never match the target's address.
            addr = None
        self.sampler = Sampler(self.timeline, self.port, addr)
        self.sampler.start()

    def wait_sessions_gone(self) -> None:
        """Client-first: wait until the server has closed its side of our sessions."""
        assert self.held is not None
        mine = set(self.held.endpoints)
        end = time.monotonic() + self.plan.timeout
        while time.monotonic() < end:
            live = [
                s
                for s in read_sockets(self.port, "local")
                if (plain_address(s.remote_addr), s.remote_port) in mine
                and s.state not in ("TIME_WAIT", "LISTEN")
            ]
            if not live:
                return
            time.sleep(0.01)

    def fill_queue(self) -> None:
        """Queue clients, once the server is full: they wait in its accept queue."""
        self.queue = QueueClients(self.family, self.sockaddr, self.plan.queued)
        self.result.queue.clients = self.plan.queued
        end = time.monotonic() + QUEUE_WAIT
        while self.sampler is not None and time.monotonic() < end:
            queued = self.sampler.read().accept_queue
            self.result.queue.queued = queued
            if queued >= self.plan.queued:
                return
            time.sleep(0.01)

    def restart(self) -> None:
        self.prober = Prober(self.timeline, self.family, self.sockaddr, PROBE_TIMEOUT)
        self.timeline.t0 = self.timeline.mark("restart", self.plan.strategy)
        self.deadline = self.timeline.t0 + self.plan.timeout
        self.prober.start()
        self.backend.restart(self)
        self.t_up = self.wait_for_echo()
        if self.t_up is not None:
            self.timeline.mark("first_echo", t=self.t_up)

    def wait_for_echo(self) -> float | None:
        """Echo until one round trip succeeds; its time, or None at the deadline or when the
        backend says the new server cannot come."""
        while True:
            left = self.deadline - time.monotonic()
            # At least one round trip, given half a second, even when the restart itself took
            # the whole --timeout (a reload waited for in the log): whether the server echoes
            # after it is a fact about the server, not about how fast this machine is.
            wait = 0.5 if left <= 0 else min(0.5, max(0.01, left))
            if echo_once(self.family, self.sockaddr, wait):
                return time.monotonic()
            if time.monotonic() >= self.deadline or self.backend.gave_up():
                return None
            time.sleep(0.005)

    def settle(self) -> None:
        """Let the last FIN/ACKs land and the picture show what came after the restart."""
        end = time.monotonic() + AFTER
        assert self.held is not None
        while time.monotonic() < end or (
            self.held.open and time.monotonic() < end + SETTLE and self.plan.strategy != "reload"
        ):
            time.sleep(0.01)
        if self.prober is not None:
            self.prober.stop()
        if self.plan.strategy == "reload":
            self.check_sessions()
        if self.queue is not None:
            self.queue.outcome(self.result.queue, time.monotonic() + QUEUE_WAIT)
        if self.sampler is not None:
            last = self.sampler.sample_now("end")
            owners = self.sampler.scan_owners(last.listeners, attempts=OWNER_ATTEMPTS)
            self.result.owners_after = sorted({p for o in owners.values() for p in o})
            self.sampler.stop()

    def check_sessions(self) -> None:
        """Reload: the held sessions must outlive it (their server adopted them): echo on each."""
        assert self.held is not None
        n = self.held.send_all(PROBE_PAYLOAD)
        end = time.monotonic() + QUEUE_WAIT
        while self.held.echoed(len(PROBE_PAYLOAD)) < n and time.monotonic() < end:
            time.sleep(0.01)
        self.result.sessions_survived = self.held.echoed(len(PROBE_PAYLOAD))

    def close(self) -> None:
        """Stop everything this run started; safe at any point, and more than once."""
        for part in (self.prober, self.sampler):
            if part is not None and part.is_alive():
                part.stop()
        if self.held is not None:
            self.held.close()
        if self.queue is not None:
            self.queue.close()
        self.backend.close()

    # ----- from observations to a Result -------------------------------------------------

    def collect(self) -> Result:
        """Fill the result from the timeline and the backend (also after an interruption)."""
        r = self.result
        if self.held is not None:
            r.closed_by_server, r.reset_by_server = self.held.by_server, self.held.resets
        r.echoed_after = self.t_up is not None
        t0 = self.timeline.t0
        if self.t_up is not None:
            r.restart_ms = (self.t_up - t0) * 1000
        self.collect_probes()
        if self.sampler is not None and self.timeline.event("restart") is not None:
            self.collect_listeners()
            self.collect_time_wait()
        self.backend.finish(self, r)
        r.timeline = self.timeline.as_json()
        return r

    def collect_probes(self) -> None:
        # From the start of the restart to the end of probing (AFTER past the first echo): a
        # zero-downtime strategy must not turn anyone away just after its restart either.
        r, t0 = self.result, self.timeline.t0
        window = [p for p in list(self.timeline.probes) if t0 <= p.t and p.outcome]
        f = ProbeFigures(attempts=len(window))
        for p in window:
            name = p.outcome if p.outcome in ("ok", "refused", "reset", "timeout") else None
            name = name or ("echo_failed" if p.outcome == "echo_failed" else "other")
            setattr(f, name, getattr(f, name) + 1)
        connects = [p.connect_s * 1000 for p in window if p.connect_s is not None]
        echoes = [p.echo_s * 1000 for p in window if p.echo_s is not None]
        f.connect_p50_ms = _round(percentile(connects, 50))
        f.connect_p99_ms = _round(percentile(connects, 99))
        f.echo_p99_ms = _round(percentile(echoes, 99))
        r.probes = f
        r.refused_during_restart, r.probe_attempts = f.refused, f.attempts

    def collect_listeners(self) -> None:
        """Listeners at the end, overlap and time without a listener, from the samples."""
        r, t0 = self.result, self.timeline.t0
        samples = [s for s in list(self.timeline.samples) if s.t >= t0]
        if not samples:
            return
        r.listeners_after = list(samples[-1].listeners)
        old = set(r.listeners_before)
        r.overlap = any(old & set(s.listeners) and set(s.listeners) - old for s in samples)
        gap = 0.0
        for a, b in itertools.pairwise(samples):
            if not a.listeners:
                gap += b.t - a.t
        r.no_listener_ms = gap * 1000
        gone = next((s.t for s in samples if not old & set(s.listeners)), None)
        if gone is not None:
            r.stop_ms = (gone - t0) * 1000
        bind = next((s.t for s in samples if set(s.listeners) - old), None)
        if bind is not None:
            self.timeline.mark("new_listener", "first reading with a new listening socket", t=bind)
        takeover = self.takeover_time()
        if takeover is not None and bind is None:
            self.timeline.mark("takeover", "a new process holds the listener", t=takeover)

    def collect_time_wait(self) -> None:
        """TIME_WAIT of our sessions just before and just after the bind (or the takeover)."""
        r = self.result
        samples = list(self.timeline.samples)
        before, after = self.bind_samples(samples)
        peak = max((len(s.ours) for s in samples), default=0)
        r.time_wait_from_clients = peak
        if self.held is not None:
            mine = set(self.held.endpoints)
            r.client_side_time_wait = sum(
                1
                for s in read_sockets(self.port, "remote", states=("TIME_WAIT",))
                if (plain_address(s.local_addr), s.local_port) in mine
            )
            r.time_wait_left_s = sorted(
                round(s.timer_s, 1)
                for s in read_sockets(self.port, "local", states=("TIME_WAIT",))
                if (plain_address(s.remote_addr), s.remote_port) in mine
            )
        if before is None or after is None:
            return
        r.time_wait_before_bind, r.time_wait_after_bind = len(before.ours), len(after.ours)
        r.time_wait_at_restart = len(before.ours & after.ours)
        bound = self._event_time("bound") or after.t
        gone = self.t_gone or self._event_time("old_exited")
        if gone is None and r.stop_ms is not None:
            gone = self.timeline.t0 + r.stop_ms / 1000
        if gone is not None and (
            set(after.listeners) - set(r.listeners_before) or bound != after.t
        ):
            r.rebind_ms = max(0.0, bound - gone) * 1000

    def _event_time(self, name: str) -> float | None:
        event = self.timeline.event(name)
        return event.t if event else None

    def bind_samples(self, samples: list[Sample]) -> tuple[Sample | None, Sample | None]:
        """The readings just before and just after the bind: the backend's own marks when it
        knows the moment (a server it started), else the first reading with a new listener,
        or a new process holding the old one (a takeover)."""
        marked_before = next((s for s in samples if s.label == "before-bind"), None)
        marked_after = next((s for s in samples if s.label == "after-bind"), None)
        if marked_before is not None and marked_after is not None:
            return marked_before, marked_after
        t0, old = self.timeline.t0, set(self.result.listeners_before)
        later = [s for s in samples if s.t >= t0]
        for i, s in enumerate(later):
            if set(s.listeners) - old:
                return (later[i - 1] if i else None), s
        takeover = self.takeover_time()
        if takeover is None:
            return self.failed_bind_samples(later)
        before = [s for s in later if s.t < takeover]
        after = [s for s in later if s.t >= takeover]
        return (before[-1] if before else None), (after[0] if after else None)

    def failed_bind_samples(self, later: list[Sample]) -> tuple[Sample | None, Sample | None]:
        """A restart whose new server never listened (EADDRINUSE), seen from the outside: its
        bind attempt lies after the old server had let go of the port (its listener gone and
        the held sessions closed by it: a service manager starts the next server only then)
        and before the failure was seen (the backend's "restart_failed" mark and its reading).
        The readings at both ends of that window; TIME_WAIT of our sessions in both was there
        throughout, since a held session's TIME_WAIT never comes back once it has expired."""
        failed = self._event_time("restart_failed")
        old = set(self.result.listeners_before)
        gone = next((s.t for s in later if not old & set(s.listeners)), None)
        if failed is None or gone is None or gone > failed:
            return None, None
        opened = gone
        if self.held is not None and self.held.by_server:
            opened = max(opened, self.held.last_close)
        before = next((s for s in later if opened <= s.began and s.t <= failed), None)
        after = next((s for s in later if s.label == "restart-failed"), None)
        after = after or next((s for s in later if s.t >= failed), None)
        if before is None or after is None:
            return None, None
        self.result.details["bind_attempt"] = {
            "from_ms": round((before.t - self.timeline.t0) * 1000, 1),
            "to_ms": round((after.t - self.timeline.t0) * 1000, 1),
            "why": "the new server never listened: it tried to bind between the old server "
            "letting go of the port and the failure being seen",
        }
        self.timeline.mark("bind_attempt", "the old server had let go of the port", t=before.t)
        return before, after

    def takeover_time(self) -> float | None:
        """When a process that did not hold the listener at the start first held it."""
        first = set(self.result.owners_before)
        # Only a process that still holds it at the end took it over: a session child of the
        # old server holds the listener too, between its fork() and its close of it, and a scan
        # that lands in between must not be read as a new server (a failed restart was once
        # judged as a takeover so).
        last = set(self.result.owners_after)
        for t, owners in list(self.timeline.owners):
            came = {p for o in owners.values() for p in o} - first
            if t >= self.timeline.t0 and came & last:
                return t
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
