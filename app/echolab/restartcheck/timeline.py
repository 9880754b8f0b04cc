"""What happened on the port, and when: socket samples, probe outcomes and the run's events.

Every time is `time.monotonic()`; the JSON gives each as milliseconds from the moment the
restart began (negative before it). /proc/net/tcp describes the reader's network namespace
only: the sampler sees the server's sockets when the server runs in the same namespace.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from echolab.tcpstate import TcpSocket, plain_address, read_sockets, socket_owners

SAMPLE_INTERVAL = 0.01  # s between two readings of the port's sockets ("every ~10 ms")
OWNER_INTERVAL = 0.1  # s between two scans of /proc/*/fd for the listeners' processes (dearer)
PROBE_INTERVAL = 0.005  # s between two probe connections (a steady arrival rate)
# Probes open at once at most; beyond, a tick is skipped (and counted). The probes must never
# become the load: on a slow host (a VM under emulation forks a session in tens of ms) hundreds
# of waiting probes kept a new server busy forking for them until its start timed out.
PROBE_INFLIGHT = 32
PROBE_DRAIN = 1.0  # s the probes in flight when probing stops may take to finish
PROBE_PAYLOAD = b"echolab restart-check probe\n"
# States counted per sample; NEW_SYN_RECV (a request socket) is counted as SYN_RECV.
COUNTED = ("LISTEN", "ESTABLISHED", "TIME_WAIT", "SYN_RECV")
OUTCOMES = ("ok", "refused", "reset", "timeout", "echo_failed", "other")
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


@dataclass
class Sample:
    """One reading of the port's sockets (server side)."""

    t: float
    counts: dict[str, int]
    listeners: tuple[int, ...]  # inodes of the LISTEN sockets
    accept_queue: int  # connections waiting in the listeners' accept queues
    ours: frozenset[tuple[str, int]]  # TIME_WAIT facing the held clients' (address, port)
    label: str = ""  # set for a reading the engine asked for at a given moment
    began: float = 0.0  # when the reading began (`t` is when it ended: /proc takes a while)


@dataclass
class Probe:
    """One probe connection: connect, echo a few bytes, reset (so it leaves no TIME_WAIT)."""

    t: float
    outcome: str = ""
    connect_s: float | None = None
    echo_s: float | None = None


@dataclass
class Event:
    t: float
    name: str
    detail: str = ""


@dataclass
class Timeline:
    """Samples, probes and events of one run; shared by the engine's threads (appends only)."""

    samples: list[Sample] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    owners: list[tuple[float, dict[int, tuple[int, ...]]]] = field(default_factory=list)
    probe_skipped: int = 0
    t0: float = field(default_factory=time.monotonic)  # the restart began (set by the engine)

    def mark(self, name: str, detail: str = "", t: float | None = None) -> float:
        """Record an event now (or at `t`); return its time."""
        at = time.monotonic() if t is None else t
        self.events.append(Event(at, name, detail))
        return at

    def event(self, name: str) -> Event | None:
        """The first event called `name`."""
        return next((e for e in self.events if e.name == name), None)

    def as_json(self) -> dict[str, Any]:
        def ms(t: float) -> float:
            return round((t - self.t0) * 1000, 1)

        return {
            "t0": "the restart began",
            "sample_interval_ms": SAMPLE_INTERVAL * 1000,
            "samples": [
                {
                    "t_ms": ms(s.t),
                    **{state: s.counts.get(state, 0) for state in COUNTED},
                    "time_wait_ours": len(s.ours),
                    "accept_queue": s.accept_queue,
                    "listeners": list(s.listeners),
                    **({"label": s.label} if s.label else {}),
                }
                for s in list(self.samples)
            ],
            "probes": [
                {
                    "t_ms": ms(p.t),
                    "outcome": p.outcome,
                    "connect_ms": None if p.connect_s is None else round(p.connect_s * 1000, 2),
                    "echo_ms": None if p.echo_s is None else round(p.echo_s * 1000, 2),
                }
                for p in list(self.probes)
                if p.outcome
            ],
            "probe_ticks_skipped": self.probe_skipped,
            "events": [
                {"t_ms": ms(e.t), "event": e.name, "detail": e.detail}
                for e in sorted(self.events, key=lambda e: e.t)
            ],
            "listener_owners": [
                {"t_ms": ms(t), "owners": {str(inode): list(pids) for inode, pids in o.items()}}
                for t, o in list(self.owners)
            ],
        }


class Sampler(threading.Thread):
    """Reads the port's server-side sockets every SAMPLE_INTERVAL, and who holds the
    listeners every OWNER_INTERVAL (and whenever the set of listeners changes)."""

    def __init__(self, timeline: Timeline, port: int, addr: str | None) -> None:
        super().__init__(name="echolab-sampler", daemon=True)
        self.timeline = timeline
        self.port = port
        self.addr = addr  # None: every local address (a wildcard listener)
        self.clients: frozenset[tuple[str, int]] = frozenset()  # set once they are connected
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # one reading at a time (the thread's and sample_now's)
        self._listeners_changed = threading.Event()
        self._last_listeners: tuple[int, ...] = ()

    def read(self, label: str = "") -> Sample:
        began = time.monotonic()
        sockets = read_sockets(self.port, "local", addr=self.addr)
        sample = self._summarise(time.monotonic(), sockets, label)
        sample.began = began
        return sample

    def _summarise(self, t: float, sockets: list[TcpSocket], label: str) -> Sample:
        counts: Counter[str] = Counter()
        listeners = []
        queue = 0
        ours = set()
        for s in sockets:
            state = "SYN_RECV" if s.state == "NEW_SYN_RECV" else s.state
            counts[state] += 1
            if state == "LISTEN":
                listeners.append(s.inode)
                queue += s.rx_queue
            elif state == "TIME_WAIT":
                peer = (plain_address(s.remote_addr), s.remote_port)
                if peer in self.clients:
                    ours.add(peer)
        return Sample(t, dict(counts), tuple(sorted(listeners)), queue, frozenset(ours), label)

    def sample_now(self, label: str) -> Sample:
        """Take a reading at once (the engine's marks: just before a bind, just after)."""
        with self._lock:
            sample = self.read(label)
            self._record(sample)
        return sample

    def _record(self, sample: Sample) -> None:
        """Keep a reading, and the listeners it saw for the next owner scan. A reading of the
        engine's counts as much as the thread's: the thread may not have taken one yet when the
        engine asks who holds the listeners (a loaded machine), and a scan for the listeners of
        no reading would find nobody (reload: no holder before, an invalid run)."""
        self.timeline.samples.append(sample)
        if sample.listeners != self._last_listeners:
            self._last_listeners = sample.listeners
            self._listeners_changed.set()

    def scan_owners(
        self, inodes: Iterable[int] | None = None, attempts: int = 1
    ) -> dict[int, tuple[int, ...]]:
        """Who holds each listener (the last reading's, or `inodes`) now, PIDs from /proc/*/fd;
        recorded in the timeline. A process in execve() hides its descriptors for a moment
        (the server re-executes itself at start and on reload): with `attempts` > 1 a listener
        found without a holder is looked for again, 10 ms apart."""
        wanted = tuple(self._last_listeners if inodes is None else inodes)
        owners: dict[int, tuple[int, ...]] = {}
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(0.01)
            found = socket_owners(wanted)
            owners = {i: tuple(sorted(p for p, _ in o)) for i, o in found.items()}
            if all(owners.get(i) for i in wanted):
                break
        self.timeline.owners.append((time.monotonic(), owners))
        return owners

    def run(self) -> None:
        """Sample on a fixed schedule; scan the owners in a thread of their own (a scan of
        /proc/*/fd takes ~15 ms on a busy host: it must not stretch the sampling interval)."""
        owners = threading.Thread(target=self._scan_loop, name="echolab-owners", daemon=True)
        owners.start()
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            with self._lock:
                self._record(self.read())
            next_at = max(next_at + SAMPLE_INTERVAL, time.monotonic())
            self._stop_event.wait(next_at - time.monotonic())
        self._listeners_changed.set()
        owners.join(5)

    def _scan_loop(self) -> None:
        while not self._stop_event.is_set():
            self.scan_owners()
            self._listeners_changed.wait(OWNER_INTERVAL)
            self._listeners_changed.clear()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class Prober(threading.Thread):
    """A new probe connection every PROBE_INTERVAL, each on its own (non-blocking): connect,
    send a few bytes, read them back, then close with a reset (SO_LINGER 0) so that a probe
    never leaves TIME_WAIT on either side and cannot make an invalid run look valid.

    A steady arrival rate, not one probe after another: a probe that waits (in a full accept
    queue, or for a SYN to be retransmitted) does not hold the others back.
    """

    def __init__(
        self, timeline: Timeline, family: int, sockaddr: tuple[Any, ...], timeout: float
    ) -> None:
        super().__init__(name="echolab-prober", daemon=True)
        self.timeline = timeline
        self.family = family
        self.sockaddr = sockaddr
        self.timeout = timeout
        self._stop_event = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._live: dict[socket.socket, tuple[Probe, bytearray]] = {}

    def run(self) -> None:
        next_at = time.monotonic()
        drain_until = float("inf")
        try:
            while self._live or not self._stop_event.is_set():
                now = time.monotonic()
                if self._stop_event.is_set():  # no new probe; the ones in flight may finish
                    drain_until = min(drain_until, now + PROBE_DRAIN)
                    next_at = now + PROBE_INTERVAL
                    if now >= drain_until:
                        break
                elif now >= next_at:
                    next_at = now + PROBE_INTERVAL
                    if len(self._live) < PROBE_INFLIGHT:
                        self._start(now)
                    else:
                        self.timeline.probe_skipped += 1
                for key, events in self._sel.select(max(0.0, next_at - time.monotonic())):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    self._step(sock, events)
                self._expire(time.monotonic())
        finally:
            for sock in list(self._live):
                self._finish(sock, "timeout")
            self._sel.close()

    def _start(self, now: float) -> None:
        probe = Probe(now)
        self.timeline.probes.append(probe)
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.sockaddr)
        if code not in (0, errno.EINPROGRESS):
            probe.outcome = "refused" if code == errno.ECONNREFUSED else "other"
            sock.close()
            return
        self._live[sock] = (probe, bytearray())
        self._sel.register(sock, selectors.EVENT_WRITE)

    def _step(self, sock: socket.socket, events: int) -> None:
        probe, got = self._live[sock]
        now = time.monotonic()
        if probe.connect_s is None:  # the connect finished, one way or the other
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._finish(sock, "refused" if code == errno.ECONNREFUSED else _name(code))
                return
            probe.connect_s = now - probe.t
            try:
                sock.send(PROBE_PAYLOAD)
            except OSError as exc:
                self._finish(sock, _name(exc.errno))
                return
            self._sel.modify(sock, selectors.EVENT_READ)
            return
        try:
            chunk = sock.recv(len(PROBE_PAYLOAD) - len(got))
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(sock, _name(exc.errno))
            return
        if not chunk:
            self._finish(sock, "echo_failed")
            return
        got += chunk
        if len(got) == len(PROBE_PAYLOAD):
            probe.echo_s = now - probe.t
            self._finish(sock, "ok" if bytes(got) == PROBE_PAYLOAD else "echo_failed")

    def _expire(self, now: float) -> None:
        for sock, (probe, _) in list(self._live.items()):
            if now - probe.t > self.timeout:
                self._finish(sock, "timeout")

    def _finish(self, sock: socket.socket, outcome: str) -> None:
        probe, _ = self._live.pop(sock)
        probe.outcome = outcome
        self._sel.unregister(sock)
        try:
            # struct linger {l_onoff = 1, l_linger = 0}: close() resets. (Linger 1 s would
            # close in order, FIN first: TIME_WAIT on the probe's side, or on the server's
            # port when the server closed at the same moment, blocking a bind without
            # SO_REUSEADDR that this run's sessions did not block.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
        sock.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def _name(code: int | None) -> str:
    if code in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    if code == errno.ECONNREFUSED:
        return "refused"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "other"
