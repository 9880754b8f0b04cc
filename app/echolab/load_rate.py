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
    """Keep `clients` connections in flight (closed loop), or start them on the schedule of
    `plan.rate` (open loop, at most `clients` open); each echoes one payload.

    Each socket is registered once, edge-triggered for input and output: the connect's
    completion is the first output edge, the echo the input edges; closing the socket
    removes it from the epoll set. About seven system calls per connection.
    """
    # Over the length rule on purpose: this is the generator's hot path (bench/loadgen.py
    # holds it to the C client's rate). Its state lives in locals and the per-event work is
    # written inline, because a call or an attribute lookup per event costs rate.
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    size = plan.payload
    if size < PATTERN_SIZE:
        source, span = pattern, PATTERN_SIZE - size + 1
    else:  # payloads over a MiB repeat the pattern
        source, span = (pattern * (size // PATTERN_SIZE + 1))[:size], 1
    view = memoryview(source)
    budget = plan.connections  # None: run until the deadline
    deadline = start + plan.duration if plan.duration is not None else math.inf
    timeout, cap = plan.timeout, plan.clients
    mono, record = time.monotonic, hdr.record
    chist, lat, lagh = stats.connect, rep.latency, rep.lag
    stop_flag = rep.stop_flag
    events_mask = _EPOLLIN | _EPOLLOUT | _EPOLLET
    paced = plan.rate is not None
    first, period = plan.schedule(max(start, mono())) if paced else (0.0, 0.0)
    next_at = first  # open loop: when the next start is due
    # Open loop: starts due before the deadline may still begin a moment after it (epoll
    # wakes in whole milliseconds), never later: a generator behind does not catch up then.
    last_start = deadline + LATE_GRACE if paced else deadline
    capped_at = -1.0  # open loop: starts due by then found every slot busy
    started = ok = bytes_ok = cmax = lmax = gmax = slot_waits = 0
    next_sweep = start + SWEEP
    backoff_until = 0.0
    batch = PACED_BATCH if paced else -1  # closed loop: as many as epoll has

    def fail(fd: int, c: _Conn, kind: str, detail: str) -> None:
        del conns[fd]
        c.sock.close()
        stats.error(kind, detail)

    def open_one(t0: float, t: float, off: int) -> bool:
        """Start one connection; count the error and return False when that fails at once."""
        nonlocal backoff_until
        sock = start_connect(plan, stats)
        if sock is None:
            backoff_until = t + BACKOFF
            return False
        fd = sock.fileno()
        conns[fd] = _Conn(sock, t0, t, off)
        ep.register(fd, events_mask)
        return True

    while True:
        now = mono()
        if stop_flag.value:  # a signal: abandon what is in flight
            break
        if paced and now < last_start:  # every start now due, each timed from its schedule
            burst = BURST  # then poll: a generator far behind still sees events and signals
            while next_at <= now and next_at < deadline and (budget is None or started < budget):
                if len(conns) >= cap:
                    capped_at = now
                    break
                if not burst:
                    break
                burst -= 1
                t = mono()
                if next_at <= capped_at:
                    slot_waits += 1  # it waited for a free slot: the server's doing, not ours
                else:
                    us = int((t - next_at) * 1e6)  # our own lag
                    record(lagh, us)
                    gmax = max(gmax, us)
                open_one(next_at, t, (started * 7919) % span)
                started += 1
                next_at = first + started * period
        elif not paced and now < deadline and now >= backoff_until:  # top up those in flight
            while len(conns) < cap and (budget is None or started < budget):
                t = mono()
                started += 1
                if not open_one(t, t, (started * 7919) % span):
                    break
        if not conns and (
            now >= last_start
            or (budget is not None and started >= budget)
            or (paced and next_at >= deadline)
        ):
            break
        if paced and len(conns) < cap and next_at < deadline:
            wait = min(SWEEP, max(0.0, next_at - mono()))
        else:
            wait = SWEEP if conns else BACKOFF
        for fd, ev in ep.poll(wait, batch):
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
            for fd, c in list(conns.items()):
                if now - c.t_start > timeout:
                    what = "connect" if not c.sent else f"echo ({c.got} of {size} bytes back)"
                    fail(fd, c, "timeout", f"{what} took over {timeout:g}s")
            stats.ok, stats.bytes_verified, stats.bytes_sent = ok, bytes_ok, bytes_ok
            stats.connect_max, stats.latency_max, stats.lag_max = cmax, lmax, gmax
            stats.peak_open = max(stats.peak_open, len(conns))
            rep.tick(now, len(conns))
    now = mono()
    stats.abandoned = len(conns)
    for c in conns.values():
        c.sock.close()
    stats.ok, stats.bytes_verified, stats.bytes_sent = ok, bytes_ok, bytes_ok
    stats.connect_max, stats.latency_max, stats.lag_max = cmax, lmax, gmax
    stats.started, stats.slot_waits = started, slot_waits
    if paced:
        end = min(now, deadline)
        count_schedule(stats, end, (first, period), budget=budget, blocked=next_at <= capped_at)
    stats.elapsed = now - start
    ep.close()
