"""`echolab load --mode stream|hold`: long-lived connections, each a small state machine
(connecting -> open -> closed) with one path that reads and verifies what comes back.

- stream, closed loop: every connection streams random data both ways at once (up to
  STREAM_WINDOW bytes in flight), every echoed byte checked; the figure is MiB/s.
- hold, closed loop: idle connections, each pinged about once a second, the next ping only
  after the last one came back.
- stream or hold with `--rate N` (open loop): N round trips of `--payload` bytes a second on
  a fixed schedule, dealt round-robin to the open connections and pipelined (a round trip
  never waits for the one before it); each is timed from its scheduled start.

A connection's bytes are the worker's random pattern repeated from a random offset, so what
comes back is checked against the same positions of the pattern.
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections import deque

from echolab import hdr
from echolab import load_core as core
from echolab.load_core import Plan, Reporter, Stats

STREAM_WINDOW = 4 << 20  # stream: most bytes in flight (sent, not yet verified) per connection
HOLD_PING_INTERVAL = 1.0  # hold: mean seconds between pings on one connection
TICK = 0.1  # seconds between timeout sweeps and counter updates
PING_TICK = 0.01  # hold: how often the pings that are due get started
POLL = 0.05  # the longest wait in epoll, so that the stop flag is seen soon
BURST = 256  # open loop: most round trips dealt between two polls
# Pause before replacing a connection whose connect failed: a flood of refused connects from
# recycled ports would make the kernel discard the server's TIME_WAIT sockets.
CONNECT_BACKOFF = 0.05

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP

CONNECTING = "connecting"
OPEN = "open"


class Session:
    """One long-lived connection and where its byte stream stands.

    `sent` and `verified` are positions in the connection's stream; `target` is how far the
    round trips asked for so far reach (stream mode's closed loop has none); each round trip
    in flight waits in `pending` as (the stream position that completes it, its start).
    """

    __slots__ = (
        "due", "fd", "mask", "offset", "pending", "sent", "sock", "state", "t_connect",
        "t_progress", "target", "verified",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, offset: int, t: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.offset = offset
        self.sent = 0
        self.verified = 0
        self.target = 0
        self.pending: deque[tuple[int, float]] = deque()
        self.t_connect = t
        self.t_progress = t  # the last progress, for --timeout
        self.due = 0.0  # hold: when to ping next
        self.mask = _OUT


class LongLived:
    """Stream and hold modes: `clients` connections for the duration, replaced when one fails.

    Level-triggered epoll; output interest only while there is something to send.
    """

    def __init__(self, plan: Plan, pattern: bytes, stats: Stats, rep: Reporter, start: float):
        assert plan.duration is not None
        self.plan = plan
        self.stats = stats
        self.rep = rep
        self.start = start
        self.deadline = start + plan.duration
        self.ep = select.epoll()
        self.sessions: dict[int, Session] = {}
        self.rng = random.Random(plan.seed * 7 + plan.index)
        self.doubled = pattern + pattern[: core.STREAM_CHUNK]  # any chunk's bytes are contiguous
        self.view = memoryview(self.doubled)
        self.streaming = plan.mode == "stream" and plan.rate is None
        self.pinging = plan.mode == "hold" and plan.rate is None
        self.paced = plan.rate is not None
        self.first, self.period = (
            plan.schedule(max(start, time.monotonic())) if self.paced else (0.0, 0.0)
        )
        self.next_at = self.first  # open loop: when the next round trip is due
        self.capped_at = -1.0  # open loop: round trips due by then found no open connection
        self.order: list[Session] = []  # open loop: the open connections, dealt in turn
        self.order_stale = True
        self.turn = 0
        self.backoff_until = 0.0
        self.draining = False
        self.batch = core.PACED_BATCH if self.paced else -1

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Until the deadline or a stop signal; then drain (or, on a signal, abandon)."""
        mono = time.monotonic
        stop_flag = self.rep.stop_flag
        next_tick = next_pings = 0.0
        while not stop_flag.value:
            now = mono()
            if self.paced and now < self.deadline + core.LATE_GRACE:
                self.deal_round_trips()
            if now >= self.deadline:
                break
            if now >= self.backoff_until:
                self.open_sessions()
            events = core.poll_events(self.ep, self.wait(now), self.batch, precise=self.paced)
            for fd, ev in events:
                s = self.sessions.get(fd)
                if s is not None:
                    self.on_event(s, ev, mono())
            now = mono()
            if self.pinging and now >= next_pings:
                next_pings = now + PING_TICK
                self.start_due_pings(now)
            if now >= next_tick:
                next_tick = now + TICK
                self.sweep(now)
        self.finish(mono())

    def finish(self, now: float) -> None:
        """The end: count the schedule; drain, or on a stop signal abandon; close."""
        self.stats.elapsed = now - self.start
        if self.paced:
            end = min(now, self.deadline)
            blocked = self.next_at <= self.capped_at
            schedule = (self.first, self.period)
            core.count_schedule(self.stats, end, schedule, budget=None, blocked=blocked)
        if self.rep.stop_flag.value:
            self.abandon()
        else:
            self.drain()
        self.ep.close()

    def wait(self, now: float) -> float:
        """How long epoll may wait: until the next scheduled round trip at the latest, unless
        those due are waiting for a connection to open (that is an event to wait for)."""
        until = self.deadline
        if self.paced and self.next_at > self.capped_at:
            until = min(until, self.next_at)
        return max(0.0, min(POLL, until - now))

    def on_event(self, s: Session, ev: int, t: float) -> None:
        """One epoll event of one connection: the state machine's transitions."""
        if s.state is CONNECTING:
            self.on_connected(s, t)
            return
        if ev & (_IN | _ERR) and not self.on_readable(s, t):
            return
        if ev & _OUT and not self.on_writable(s):
            return
        self.want(s)

    # --- transitions --------------------------------------------------------------------
    def open_sessions(self) -> None:
        """Top up to `clients` connections; on a failure, count it and back off."""
        while len(self.sessions) < self.plan.clients:
            t = time.monotonic()
            sock = core.start_connect(self.plan, self.stats)
            if sock is None:
                self.backoff_until = t + CONNECT_BACKOFF
                return
            # Each round trip leaves when it is due: with Nagle's algorithm a small request
            # would wait for the ACK of the one before it (up to the peer's delayed ACK, 40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = Session(sock, self.rng.randrange(core.PATTERN_SIZE), t)
            self.sessions[s.fd] = s
            self.ep.register(s.fd, _OUT)

    def on_connected(self, s: Session, t: float) -> None:
        """connecting -> open, or -> closed when the connect failed."""
        failed = core.connect_error(s.sock)
        if failed:
            self.fail(s, *failed)
            self.backoff_until = t + CONNECT_BACKOFF
            return
        us = int((t - s.t_connect) * 1e6)
        hdr.record(self.stats.connect, us)
        self.stats.connect_max = max(self.stats.connect_max, us)
        s.state = OPEN
        s.t_progress = t
        s.due = t + self.rng.random() * HOLD_PING_INTERVAL
        self.order_stale = True
        self.want(s)

    def on_readable(self, s: Session, t: float) -> bool:
        """Read once, check the bytes against the stream, complete the round trips they end.

        The one read-and-verify path (the loop and the drain both use it). False when the
        connection failed and is gone.
        """
        try:
            data = s.sock.recv(core.STREAM_CHUNK)
        except BlockingIOError:
            return True
        except OSError as exc:
            self.fail(s, core.classify(exc), f"recv: {exc}")
            return False
        n = len(data)
        if not n:
            self.fail(s, "short_echo", f"EOF with {s.sent - s.verified} bytes unechoed")
            return False
        p = (s.offset + s.verified) % core.PATTERN_SIZE
        if s.verified + n > s.sent or data != self.doubled[p : p + n]:
            self.fail(
                s, "wrong_echo", core.describe_mismatch(data, self.view, p, s.verified, s.sent)
            )
            return False
        s.verified += n
        s.t_progress = t
        stats = self.stats
        stats.bytes_verified += n
        pending = s.pending
        while pending and pending[0][0] <= s.verified:
            us = int((t - pending.popleft()[1]) * 1e6)
            hdr.record(self.rep.latency, us)
            stats.latency_max = max(stats.latency_max, us)
            stats.pings += 1
        return True

    def on_writable(self, s: Session) -> bool:
        """Send what the connection may send now. False when it failed and is gone."""
        room = min(self.limit(s) - s.sent, core.STREAM_CHUNK)
        if room <= 0:
            return True
        p = (s.offset + s.sent) % core.PATTERN_SIZE
        try:
            n = s.sock.send(self.view[p : p + room])
        except BlockingIOError:
            return True
        except OSError as exc:
            self.fail(s, core.classify(exc), f"send: {exc}")
            return False
        s.sent += n
        self.stats.bytes_sent += n
        return True

    def limit(self, s: Session) -> int:
        """How far the connection may send: a window ahead (stream; at the end, no further),
        or as far as its round trips reach."""
        if self.streaming:
            return s.sent if self.draining else s.verified + STREAM_WINDOW
        return s.target

    @staticmethod
    def outstanding(s: Session) -> bool:
        """Whether the connection still waits for echoes (sent, or asked for and not sent)."""
        return s.verified < max(s.sent, s.target)

    def want(self, s: Session, mask: int | None = None) -> None:
        """Input interest always; output interest only while there is something to send."""
        if mask is None:
            mask = _IN | (_OUT if s.sent < self.limit(s) else 0)
        if mask != s.mask:
            s.mask = mask
            self.ep.modify(s.fd, mask)

    def add_round_trip(self, s: Session, t_start: float, now: float) -> None:
        """Ask `s` for one more round trip of --payload bytes, timed from `t_start`."""
        if s.target == s.verified:  # it was idle: its timeout counts from now
            s.t_progress = now
        s.target += self.plan.payload
        s.pending.append((s.target, t_start))
        self.want(s)

    def close(self, s: Session) -> None:
        """-> closed."""
        del self.sessions[s.fd]
        self.ep.unregister(s.fd)
        s.sock.close()
        self.order_stale = True

    def fail(self, s: Session, kind: str, detail: str) -> None:
        """-> closed, counting one error (its round trips in flight are lost with it)."""
        self.close(s)
        self.stats.error(kind, detail)

    # --- round trips ----------------------------------------------------------------------
    def start_due_pings(self, now: float) -> None:
        """Hold, closed loop: ping every idle open connection whose time has come."""
        for s in self.sessions.values():
            if s.state is OPEN and not s.pending and now >= s.due:
                s.due = now + HOLD_PING_INTERVAL * (0.5 + self.rng.random())
                self.add_round_trip(s, now, now)

    def deal_round_trips(self) -> None:
        """Open loop: hand every round trip now due to the next open connection in turn."""
        stats = self.stats
        now = time.monotonic()
        for _ in range(BURST):  # then poll: a generator far behind still sees its events
            if self.next_at > now or self.next_at >= self.deadline:
                return
            s = self.next_open()
            if s is None:  # none open (the server is not accepting): it waits, timed from due
                self.capped_at = now
                return
            if self.next_at <= self.capped_at:
                stats.slot_waits += 1
            else:
                us = int((now - self.next_at) * 1e6)  # our own lag
                hdr.record(self.rep.lag, us)
                stats.lag_max = max(stats.lag_max, us)
            self.add_round_trip(s, self.next_at, now)
            stats.started += 1
            self.next_at = self.first + stats.started * self.period

    def next_open(self) -> Session | None:
        if self.order_stale:
            self.order = [s for s in self.sessions.values() if s.state is OPEN]
            self.order_stale = False
        if not self.order:
            return None
        self.turn = (self.turn + 1) % len(self.order)
        return self.order[self.turn]

    # --- housekeeping and the end -----------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Time out connections that made no progress for --timeout; report."""
        timeout = self.plan.timeout
        for s in list(self.sessions.values()):
            connecting = s.state is CONNECTING
            if (connecting or self.outstanding(s)) and now - s.t_progress > timeout:
                what = "connect" if connecting else f"echo ({s.sent - s.verified} bytes due)"
                self.fail(s, "timeout", f"{what}: no progress for {timeout:g}s")
        self.stats.peak_open = max(self.stats.peak_open, len(self.sessions))
        self.rep.tick(now, len(self.sessions))

    def drain(self) -> None:
        """The end: send only what was already asked for, let it all come back, close.

        The same transitions as the run (on_event); only `limit` changes: a stream stops
        where it is, the round trips already dealt still go out.
        """
        self.draining = True
        for s in list(self.sessions.values()):
            if s.state is CONNECTING:  # not a finished session, not an error
                self.close(s)
            else:
                self.want(s)
        end = time.monotonic() + self.plan.timeout
        stop_flag = self.rep.stop_flag
        while any(self.outstanding(s) for s in self.sessions.values()):
            now = time.monotonic()
            if now >= end or stop_flag.value:
                break
            for fd, ev in self.ep.poll(POLL):
                drained = self.sessions.get(fd)
                if drained is not None:
                    self.on_event(drained, ev, time.monotonic())
            self.rep.tick(now, len(self.sessions))
        for s in list(self.sessions.values()):
            if not self.outstanding(s):
                self.stats.ok += 1
                self.close(s)
            elif stop_flag.value:
                self.stats.abandoned += 1
                self.close(s)
            else:
                due = max(s.sent, s.target) - s.verified
                self.fail(s, "timeout", f"{due} bytes never came back")

    def abandon(self) -> None:
        """A stop signal: close every connection now. One with echoes outstanding counts as
        abandoned; an open one with none was fine to the end (ok)."""
        for s in list(self.sessions.values()):
            if s.state is OPEN and self.outstanding(s):
                self.stats.abandoned += 1
            elif s.state is OPEN:
                self.stats.ok += 1
            self.close(s)
