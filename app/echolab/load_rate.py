"""`echolab load --mode rate`: short connections (connect, send the payload, read it all back,
close), in a closed loop (`--clients` in flight) or an open one (`--rate N` starts a second on
a fixed schedule, whatever the server does)."""

from __future__ import annotations

import math
import select
import socket
import time

from echolab import hdr
from echolab.load_core import (
    LATE_GRACE,
    PACED_BATCH,
    PATTERN_SIZE,
    Plan,
    Reporter,
    Stats,
    classify,
    connect_error,
    count_schedule,
    describe_mismatch,
    poll_events,
    start_connect,
)

SWEEP = 0.05  # seconds between timeout sweeps (and counter updates)
BACKOFF = 0.01  # closed loop: pause after a failed socket()/connect() before the next one
BURST = 256  # open loop: most starts between two polls

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLET = select.EPOLLET
_EPOLLERR = select.EPOLLERR | select.EPOLLHUP


class _Conn:
    __slots__ = ("got", "off", "sent", "sock", "t0", "t_start")

    def __init__(self, sock: socket.socket, t0: float, t_start: float, off: int) -> None:
        self.sock = sock
        self.t0 = t0  # its latency counts from here: the scheduled start in an open loop
        self.t_start = t_start  # the connect really began (connect latency, timeout)
        self.off = off
        self.sent = 0
        self.got = 0


def rate_loop(plan: Plan, pattern: bytes, stats: Stats, rep: Reporter, start: float) -> None:
    """Rate mode, closed or open loop, until the deadline, the budget or a stop signal."""
    RateLoop(plan, pattern, stats, rep, start).run()


class RateLoop:
    """Keep `clients` connections in flight (closed loop), or start them on the schedule of
    `plan.rate` (open loop, at most `clients` open); each echoes one payload.

    Each socket is registered once, edge-triggered for input and output: the connect's
    completion is the first output edge, the echo the input edges; closing the socket
    removes it from the epoll set. About seven system calls per connection.
    """

    def __init__(self, plan: Plan, pattern: bytes, stats: Stats, rep: Reporter, start: float):
        self.plan, self.stats, self.rep, self.start = plan, stats, rep, start
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        size = plan.payload
        if size < PATTERN_SIZE:
            self.source, self.span = pattern, PATTERN_SIZE - size + 1
        else:  # payloads over a MiB repeat the pattern
            self.source, self.span = (pattern * (size // PATTERN_SIZE + 1))[:size], 1
        self.view = memoryview(self.source)
        self.deadline = start + plan.duration if plan.duration is not None else math.inf
        self.paced = plan.rate is not None
        # Open loop: starts due before the deadline may still begin a moment after it (epoll
        # wakes in whole milliseconds), never later: a generator behind does not catch up.
        self.last_start = self.deadline + LATE_GRACE if self.paced else self.deadline
        self.first, self.period = (
            plan.schedule(max(start, time.monotonic())) if self.paced else (0.0, 0.0)
        )
        self.next_at = self.first  # open loop: when the next start is due
        self.capped_at = -1.0  # open loop: starts due by then found every connection busy
        self.started = 0
        self.backoff_until = 0.0

    def run(self) -> None:  # noqa: PLR0912, PLR0915  the hot path (see below)
        """The loop: start connections, handle their events, sweep; then count the end."""
        # Over the length rule on purpose: this is the generator's hot path (bench/loadgen.py
        # holds it to the C client's rate). What happens per event is written inline with
        # local names, because a call or an attribute lookup per event costs rate.
        conns, ep, size, source, view = (
            self.conns,
            self.ep,
            self.plan.payload,
            self.source,
            self.view,
        )
        mono, record = time.monotonic, hdr.record
        chist, lat, stop_flag = self.stats.connect, self.rep.latency, self.rep.stop_flag
        batch = PACED_BATCH if self.paced else -1  # closed loop: as many as epoll has
        ok = bytes_ok = cmax = lmax = 0
        next_sweep = self.start + SWEEP
        fail = self.fail
        while True:
            now = mono()
            if stop_flag.value:  # a signal: abandon what is in flight
                break
            if self.paced:
                if now < self.last_start:
                    self.start_due(now)
            elif now < self.deadline and now >= self.backoff_until:
                self.top_up()
            if not conns and self.finished(now):
                break
            for fd, ev in poll_events(ep, self.wait(), batch, precise=self.paced):
                c = conns[fd]
                sock = c.sock
                if c.sent < size:
                    if ev & _EPOLLERR and not c.sent:
                        failed = connect_error(sock)
                        if failed:
                            fail(fd, c, *failed)
                            continue
                    try:
                        n = sock.send(view[c.off + c.sent : c.off + size])
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        fail(fd, c, classify(exc), f"send: {exc}")
                        continue
                    if not c.sent:  # the connect completed
                        us = int((mono() - c.t_start) * 1e6)
                        record(chist, us)
                        cmax = max(cmax, us)
                    c.sent += n
                    if not ev & _EPOLLIN:
                        continue
                # Read what came back and check it against what was sent.
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        fail(fd, c, classify(exc), f"recv after {c.got} of {size} bytes: {exc}")
                        break
                    n = len(data)
                    if not n:
                        fail(fd, c, "short_echo", f"EOF after {c.got} of {size} bytes")
                        break
                    at = c.off + c.got
                    if c.got + n > c.sent or data != source[at : at + n]:
                        fail(fd, c, "wrong_echo", describe_mismatch(data, view, at, c.got, size))
                        break
                    c.got += n
                    if c.got == size:
                        us = int((mono() - c.t0) * 1e6)
                        record(lat, us)
                        lmax = max(lmax, us)
                        del conns[fd]
                        sock.close()
                        ok += 1
                        bytes_ok += size
                        break
                    if c.sent < size:  # a large payload: send more before reading on
                        try:
                            c.sent += sock.send(view[c.off + c.sent : c.off + size])
                        except BlockingIOError:
                            pass
                        except OSError as exc:
                            fail(fd, c, classify(exc), f"send: {exc}")
                            break
            now = mono()
            if now >= next_sweep:
                next_sweep = now + SWEEP
                self.sweep(now, ok, bytes_ok, cmax, lmax)
        self.finish(mono(), ok, bytes_ok, cmax, lmax)

    def start_due(self, now: float) -> None:
        """Open loop: every start now due, each timed from its schedule (at most BURST, then
        poll: a generator far behind still sees its events and the stop flag)."""
        plan, stats, conns, budget = self.plan, self.stats, self.conns, self.plan.connections
        for _ in range(BURST):
            if self.next_at > now or self.next_at >= self.deadline:
                return
            if budget is not None and self.started >= budget:
                return
            if len(conns) >= plan.clients:
                self.capped_at = now
                return
            t = time.monotonic()
            if self.next_at <= self.capped_at:
                stats.slot_waits += 1  # it waited for a free connection: the server's doing
            else:
                us = int((t - self.next_at) * 1e6)  # our own lag
                hdr.record(self.rep.lag, us)
                stats.lag_max = max(stats.lag_max, us)
            self.open_one(self.next_at, t)
            self.started += 1
            self.next_at = self.first + self.started * self.period

    def top_up(self) -> None:
        """Closed loop: back to `clients` connections in flight."""
        budget = self.plan.connections
        while len(self.conns) < self.plan.clients and (budget is None or self.started < budget):
            t = time.monotonic()
            self.started += 1
            if not self.open_one(t, t):
                break

    def open_one(self, t0: float, t: float) -> bool:
        """Start one connection, timed from `t0`; False when it failed at once (counted)."""
        sock = start_connect(self.plan, self.stats)
        if sock is None:
            self.backoff_until = t + BACKOFF
            return False
        fd = sock.fileno()
        self.conns[fd] = _Conn(sock, t0, t, (self.started * 7919) % self.span)
        self.ep.register(fd, _EPOLLIN | _EPOLLOUT | _EPOLLET)
        return True

    def fail(self, fd: int, c: _Conn, kind: str, detail: str) -> None:
        del self.conns[fd]
        c.sock.close()
        self.stats.error(kind, detail)

    def wait(self) -> float:
        """How long epoll may wait: until the next start is due, in an open loop."""
        if self.paced and len(self.conns) < self.plan.clients and self.next_at < self.deadline:
            return min(SWEEP, max(0.0, self.next_at - time.monotonic()))
        return SWEEP if self.conns else BACKOFF

    def finished(self, now: float) -> bool:
        """With nothing in flight: whether there is nothing more to start either."""
        budget = self.plan.connections
        return (
            now >= self.last_start
            or (budget is not None and self.started >= budget)
            or (self.paced and self.next_at >= self.deadline)
        )

    def sweep(self, now: float, ok: int, bytes_ok: int, cmax: int, lmax: int) -> None:
        """Every SWEEP: time out connections over --timeout, publish the tallies."""
        timeout, size = self.plan.timeout, self.plan.payload
        for fd, c in list(self.conns.items()):
            if now - c.t_start > timeout:
                what = "connect" if not c.sent else f"echo ({c.got} of {size} bytes back)"
                self.fail(fd, c, "timeout", f"{what} took over {timeout:g}s")
        self.tally(ok, bytes_ok, cmax, lmax)
        self.stats.peak_open = max(self.stats.peak_open, len(self.conns))
        self.rep.tick(now, len(self.conns))

    def tally(self, ok: int, bytes_ok: int, cmax: int, lmax: int) -> None:
        stats = self.stats
        stats.ok, stats.bytes_verified, stats.bytes_sent = ok, bytes_ok, bytes_ok
        stats.connect_max, stats.latency_max = cmax, lmax

    def finish(self, now: float, ok: int, bytes_ok: int, cmax: int, lmax: int) -> None:
        """The end: close what a signal left in flight, count the schedule, the time."""
        stats = self.stats
        stats.abandoned = len(self.conns)
        for c in self.conns.values():
            c.sock.close()
        self.tally(ok, bytes_ok, cmax, lmax)
        stats.started = self.started
        if self.paced:
            count_schedule(
                stats,
                min(now, self.deadline),
                (self.first, self.period),
                budget=self.plan.connections,
                blocked=self.next_at <= self.capped_at,
            )
        stats.elapsed = now - self.start
        self.ep.close()
