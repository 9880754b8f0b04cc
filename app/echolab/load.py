"""`echolab load`: drive an echo server hard and verify every byte that comes back.

Three modes:
- rate: short connections (connect, send the payload, read it all back, close), `--clients`
  in flight; the figure is connections per second.
- stream: `--clients` long connections streaming random data both ways at once; MiB/s.
- hold: `--clients` idle connections held open, each pinged now and then; shows how many
  sessions (processes, for a forking server) the server carries.

The load generator must not be the bottleneck, so each worker process runs its own hand-rolled
epoll loop over non-blocking sockets: no asyncio futures or streams on the hot path (measured:
a plain loop makes about 3x the connections per CPU second of asyncio streams). Workers report
running counters through shared memory and send their full results (latency histograms, error
counts) to the parent at the end, which merges them.
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import random
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TextIO

from echolab.errors import EXIT_FAILED, EXIT_OK, EXIT_OS_ERROR, EXIT_USAGE, EcholabError
from echolab.report import print_rows, write_json

DEFAULT_DURATION = 10.0
# Errors by kind; every kind always appears in the results (zero when none).
ERROR_KINDS = (
    "refused",  # ECONNREFUSED: nothing listening, or the backlog overflowed
    "reset",  # ECONNRESET / EPIPE: the server (or a middlebox) reset the connection
    "timeout",  # no progress within --timeout
    "short_echo",  # the server closed before echoing everything
    "wrong_echo",  # a byte came back different, or more bytes came back than were sent
    "no_local_port",  # EADDRNOTAVAIL: ephemeral ports exhausted (client-side TIME_WAIT)
    "other",  # any other OS error; a sample is kept in error_samples
)
_ERRNO_KIND = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "timeout",
    errno.EADDRNOTAVAIL: "no_local_port",
}

PATTERN_SIZE = 1 << 20  # random bytes each worker draws payloads and streams from
STREAM_CHUNK = 256 * 1024  # largest send/recv in stream mode
STREAM_WINDOW = 4 << 20  # stream mode: most bytes in flight (sent, not yet verified) per conn
HOLD_PING_INTERVAL = 1.0  # hold mode: mean seconds between pings on one connection
COUNTER_PERIOD = 0.1  # seconds between a worker's updates of its shared counters
# Shared counters per worker, in this order.
C_OK, C_ERRORS, C_BYTES, C_OPEN, C_PINGS = range(5)
N_COUNTERS = 5

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLET = select.EPOLLET
_EPOLLERR = select.EPOLLERR | select.EPOLLHUP


# --- latency histograms ---------------------------------------------------------------------
# Log-linear buckets over microseconds (HdrHistogram's idea): exact below 128 us, then 64
# buckets per power of two, so a percentile is within 1.6% of the truth whatever the run's
# length, and merging workers is adding lists.
HIST_SIZE = 64 * 42


def hist_index(us: int) -> int:
    """The bucket of a latency of `us` microseconds (the hot loops inline this)."""
    if us < 128:
        return max(us, 0)
    shift = us.bit_length() - 7
    return (shift << 6) + (us >> shift)


def hist_value(index: int) -> float:
    """The middle of a bucket, in microseconds."""
    if index < 128:
        return float(index)
    shift = (index >> 6) - 1
    mantissa = index - (shift << 6)
    return ((mantissa << shift) + ((mantissa + 1) << shift) - 1) / 2


def percentiles(hist: list[int], max_us: int) -> dict[str, float | None]:
    """p50, p90, p99 and max in milliseconds (None without samples)."""
    total = sum(hist)
    out: dict[str, float | None] = {"p50": None, "p90": None, "p99": None, "max": None}
    if not total:
        return out
    targets = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)]
    seen = 0
    it = iter(targets)
    name, frac = next(it)
    for index, count in enumerate(hist):
        if not count:
            continue
        seen += count
        while seen >= frac * total:
            out[name] = round(min(hist_value(index), max_us) / 1000, 3)
            try:
                name, frac = next(it)
            except StopIteration:
                out["max"] = round(max_us / 1000, 3)
                return out
    out["max"] = round(max_us / 1000, 3)
    return out


# --- what a worker is told, and what it reports ------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One worker's share of the run (picklable: it crosses into the worker process)."""

    index: int
    mode: str
    family: int
    sockaddr: tuple[Any, ...]
    clients: int
    connections: int | None  # rate mode with --connections: this worker's share
    duration: float | None
    payload: int
    timeout: float
    seed: int


class Stats:
    """A worker's tallies; sent to the parent as a dict when the worker ends."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.samples: dict[str, str] = {}
        self.bytes_sent = 0
        self.bytes_verified = 0
        self.pings = 0
        self.connect_hist = [0] * HIST_SIZE
        self.rtt_hist = [0] * HIST_SIZE
        self.connect_max = 0
        self.rtt_max = 0
        self.elapsed = 0.0
        self.peak_open = 0

    def error(self, kind: str, detail: str) -> None:
        """Count one failed connection (or ping) of `kind`; keep the first detail per kind."""
        self.errors[kind] += 1
        self.samples.setdefault(kind, detail)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def classify(exc: OSError) -> str:
    """The error kind of an OS error raised by connect/send/recv."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return _ERRNO_KIND.get(exc.errno or 0, "other")


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


# --- the worker process -----------------------------------------------------------------------
@dataclass(frozen=True)
class Shared:
    """What the parent and its workers share: counters, the stop flag, the start time."""

    counters: Any  # RawArray('q'): N_COUNTERS per worker
    stop_flag: Any  # RawValue('b'): set to stop early (Ctrl-C)
    start_at: Any  # RawValue('d'): time.monotonic() of the start, set before `go`


def _worker_main(plan: Plan, shared: Shared, ready: Any, go: Any, conn: Connection) -> None:
    """Entry point of a worker process: wait for the start, run the mode's loop, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through stop_flag
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stats = Stats()
    try:
        _raise_nofile(plan.clients + 64)
        rng = random.Random(plan.seed * 1009 + plan.index)
        pattern = rng.randbytes(PATTERN_SIZE)
        ready.release()
        go.wait()
        loop = {"rate": _rate_loop, "stream": _stream_loop, "hold": _hold_loop}[plan.mode]
        loop(plan, pattern, stats, shared, shared.start_at.value)
        conn.send(stats.as_dict())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints one line
        conn.send({"fatal": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def _raise_nofile(needed: int) -> None:
    """Raise the soft descriptor limit towards the hard one when `needed` exceeds it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class _Publisher:
    """Copies a worker's running tallies into shared memory every COUNTER_PERIOD."""

    def __init__(self, shared: Shared, index: int, stats: Stats) -> None:
        self.shared = shared
        self.parent = os.getppid()
        self.counters = shared.counters
        self.base = index * N_COUNTERS
        self.stats = stats
        self.next_at = 0.0

    def __call__(self, now: float, open_conns: int, force: bool = False) -> None:
        if now < self.next_at and not force:
            return
        self.next_at = now + COUNTER_PERIOD
        if os.getppid() != self.parent:  # the parent is gone (killed): stop, don't load on
            self.shared.stop_flag.value = 1
        s, c, b = self.stats, self.counters, self.base
        c[b + C_OK] = s.ok
        c[b + C_ERRORS] = sum(s.errors.values())
        c[b + C_BYTES] = s.bytes_verified
        c[b + C_OPEN] = open_conns
        c[b + C_PINGS] = s.pings


def _new_socket(plan: Plan) -> tuple[socket.socket, int]:
    """A non-blocking socket with a connect started; returns it and connect_ex's errno."""
    sock = socket.socket(plan.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    return sock, sock.connect_ex(plan.sockaddr)


class _RateConn:
    __slots__ = ("got", "off", "sent", "sock", "t0", "t_send")

    def __init__(self, sock: socket.socket, t0: float, off: int) -> None:
        self.sock = sock
        self.t0 = t0
        self.t_send = 0.0
        self.off = off
        self.sent = 0
        self.got = 0


def _rate_loop(plan: Plan, pattern: bytes, stats: Stats, shared: Shared, start: float) -> None:
    """Rate mode: keep `clients` short connections in flight; each echoes one payload.

    Each socket is registered once, edge-triggered for input and output: the connect's
    completion is the first output edge, the echo the input edges; closing the socket
    removes it from the epoll set. About seven system calls per connection.
    """
    ep = select.epoll()
    conns: dict[int, _RateConn] = {}
    size = plan.payload
    if size < PATTERN_SIZE:
        source, span = pattern, PATTERN_SIZE - size + 1
    else:  # payloads over a MiB repeat the pattern
        source, span = (pattern * (size // PATTERN_SIZE + 1))[:size], 1
    view = memoryview(source)
    budget = plan.connections  # None: run until the deadline
    deadline = start + plan.duration if plan.duration is not None else float("inf")
    timeout = plan.timeout
    mono = time.monotonic
    chist, rhist = stats.connect_hist, stats.rtt_hist
    publish = _Publisher(shared, plan.index, stats)
    stop_flag = shared.stop_flag
    events_mask = _EPOLLIN | _EPOLLOUT | _EPOLLET
    started = 0
    next_sweep = start + 0.05
    stopping = False
    backoff_until = 0.0
    ok = 0
    bytes_ok = 0

    def fail(fd: int, c: _RateConn, kind: str, detail: str) -> None:
        del conns[fd]
        c.sock.close()
        stats.error(kind, detail)

    while True:
        now = mono()
        if not stopping and (now >= deadline or stop_flag.value):
            stopping = True
        # Top up the connections in flight.
        if not stopping and now >= backoff_until:
            while len(conns) < plan.clients and (budget is None or started < budget):
                off = (started * 7919) % span
                started += 1
                t0 = mono()
                try:
                    sock, err = _new_socket(plan)
                except OSError as exc:  # EMFILE and friends: count, back off a moment
                    stats.error(classify(exc), f"socket: {exc}")
                    backoff_until = t0 + 0.01
                    break
                if err and err != errno.EINPROGRESS:
                    sock.close()
                    stats.error(_ERRNO_KIND.get(err, "other"), f"connect: {_errno_text(err)}")
                    backoff_until = t0 + 0.01
                    break
                fd = sock.fileno()
                conns[fd] = _RateConn(sock, t0, off)
                ep.register(fd, events_mask)
        if not conns and (stopping or (budget is not None and started >= budget)):
            break
        for fd, ev in ep.poll(0.05 if conns else 0.01):
            c = conns[fd]
            sock = c.sock
            if c.sent < size:
                if ev & _EPOLLERR and not c.sent:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        kind = _ERRNO_KIND.get(err, "other")
                        fail(fd, c, kind, f"connect: {_errno_text(err)}")
                        continue
                try:
                    n = sock.send(view[c.off + c.sent : c.off + size])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(fd, c, classify(exc), f"send: {exc}")
                    continue
                if not c.sent:
                    t = mono()
                    c.t_send = t
                    us = int((t - c.t0) * 1e6)
                    if us < 128:
                        chist[us] += 1
                    else:
                        sh = us.bit_length() - 7
                        chist[(sh << 6) + (us >> sh)] += 1
                    stats.connect_max = max(stats.connect_max, us)
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
                start_at = c.off + c.got
                if c.got + n > c.sent or data != source[start_at : start_at + n]:
                    fail(fd, c, "wrong_echo", _describe_mismatch(data, view, start_at, c.got, size))
                    break
                c.got += n
                if c.got == size:
                    t = mono()
                    us = int((t - c.t_send) * 1e6)
                    if us < 128:
                        rhist[us] += 1
                    else:
                        sh = us.bit_length() - 7
                        rhist[(sh << 6) + (us >> sh)] += 1
                    stats.rtt_max = max(stats.rtt_max, us)
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
            next_sweep = now + 0.05
            for fd, c in list(conns.items()):
                if now - c.t0 > timeout:
                    what = "connect" if not c.sent else f"echo ({c.got} of {size} bytes back)"
                    fail(fd, c, "timeout", f"{what} took over {timeout:g}s")
            stats.ok, stats.bytes_verified = ok, bytes_ok
            stats.bytes_sent = bytes_ok
            publish(now, len(conns))
    stats.ok, stats.bytes_verified = ok, bytes_ok
    stats.bytes_sent = bytes_ok
    stats.elapsed = mono() - start
    publish(mono(), 0, force=True)
    ep.close()


def _describe_mismatch(data: bytes, view: memoryview, start_at: int, got: int, size: int) -> str:
    expected = bytes(view[start_at : start_at + len(data)])
    if got + len(data) > size:
        return f"{got + len(data)} bytes came back for {size} sent"
    for i, (a, b) in enumerate(zip(data, expected, strict=False)):
        if a != b:
            return f"byte {got + i} of {size}: sent 0x{b:02x}, got 0x{a:02x}"
    return f"{len(data)} bytes at offset {got} differ"


class _StreamConn:
    __slots__ = ("due", "mask", "sent", "sock", "t0", "t_ping", "target", "verified")

    def __init__(self, sock: socket.socket, t0: float) -> None:
        self.sock = sock
        self.t0 = t0  # connect started; then the last progress (for the timeout)
        self.sent = 0  # stream position sent
        self.verified = 0  # stream position received and checked
        self.target = -1  # hold: the position a ping waits for; -1 while connecting
        self.t_ping = 0.0
        self.due = 0.0  # hold: when to ping next
        self.mask = 0


def _stream_loop(plan: Plan, pattern: bytes, stats: Stats, shared: Shared, start: float) -> None:
    """Stream mode: long connections, reading while writing, every byte checked."""
    _long_lived_loop(plan, pattern, stats, shared, start, hold=False)


def _hold_loop(plan: Plan, pattern: bytes, stats: Stats, shared: Shared, start: float) -> None:
    """Hold mode: idle connections kept open, each pinged about once a second."""
    _long_lived_loop(plan, pattern, stats, shared, start, hold=True)


def _long_lived_loop(
    plan: Plan, pattern: bytes, stats: Stats, shared: Shared, start: float, *, hold: bool
) -> None:
    """Stream and hold modes: `clients` connections for the duration, replaced when one fails.

    Connection k's byte stream is the worker's random pattern repeated from a random offset;
    what comes back is compared with the same positions. Level-triggered epoll: output
    interest only while there is something to send and room in the window.
    """
    ep = select.epoll()
    conns: dict[int, _StreamConn] = {}
    offsets: dict[int, int] = {}
    rng = random.Random(plan.seed * 7 + plan.index)
    doubled = pattern + pattern[:STREAM_CHUNK]
    view = memoryview(doubled)
    deadline = start + (plan.duration if plan.duration is not None else DEFAULT_DURATION)
    mono = time.monotonic
    publish = _Publisher(shared, plan.index, stats)
    stop_flag = shared.stop_flag
    chist, rhist = stats.connect_hist, stats.rtt_hist
    ping = min(plan.payload, STREAM_CHUNK)
    next_sweep = start
    next_pings = start
    backoff_until = 0.0

    def record(hist: list[int], us: int) -> None:
        hist[hist_index(us)] += 1

    def close(fd: int) -> None:
        c = conns.pop(fd)
        offsets.pop(fd, None)
        ep.unregister(fd)
        c.sock.close()

    def fail(fd: int, kind: str, detail: str) -> None:
        close(fd)
        stats.error(kind, detail)

    def want(fd: int, c: _StreamConn, mask: int) -> None:
        if mask != c.mask:
            c.mask = mask
            ep.modify(fd, mask)

    def out_mask(c: _StreamConn) -> int:
        if hold:
            return _EPOLLIN | (_EPOLLOUT if c.sent < c.target else 0)
        return _EPOLLIN | (_EPOLLOUT if c.sent - c.verified < STREAM_WINDOW else 0)

    while True:
        now = mono()
        stopping = now >= deadline or bool(stop_flag.value)
        if stopping:
            break
        if now >= backoff_until:
            while len(conns) < plan.clients:
                try:
                    sock, err = _new_socket(plan)
                except OSError as exc:
                    stats.error(classify(exc), f"socket: {exc}")
                    backoff_until = now + 0.05
                    break
                if err and err != errno.EINPROGRESS:
                    sock.close()
                    stats.error(_ERRNO_KIND.get(err, "other"), f"connect: {_errno_text(err)}")
                    backoff_until = now + 0.05
                    break
                fd = sock.fileno()
                new = _StreamConn(sock, mono())
                new.mask = _EPOLLOUT
                conns[fd] = new
                offsets[fd] = rng.randrange(PATTERN_SIZE)
                ep.register(fd, _EPOLLOUT)
        for fd, ev in ep.poll(min(0.05, max(0.0, deadline - now))):
            c = conns.get(fd)
            if c is None:
                continue
            sock = c.sock
            t = mono()
            if c.target < 0:  # the connect finished, or failed
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(fd, _ERRNO_KIND.get(err, "other"), f"connect: {_errno_text(err)}")
                    # Pause before replacing it: a flood of refused connects from recycled
                    # ports would make the kernel discard the server's TIME_WAIT sockets.
                    backoff_until = t + 0.05
                    continue
                us = int((t - c.t0) * 1e6)
                record(chist, us)
                stats.connect_max = max(stats.connect_max, us)
                c.t0 = t
                c.target = 0
                c.due = t + (rng.random() * HOLD_PING_INTERVAL if hold else 0.0)
                want(fd, c, out_mask(c))
                continue
            off = offsets[fd]
            if ev & _EPOLLIN or ev & _EPOLLERR:
                try:
                    data = sock.recv(STREAM_CHUNK)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    fail(fd, classify(exc), f"recv: {exc}")
                    continue
                if data is not None:
                    n = len(data)
                    if not n:
                        fail(fd, "short_echo", f"EOF with {c.sent - c.verified} bytes unechoed")
                        continue
                    if c.verified + n > c.sent:
                        fail(fd, "wrong_echo", f"{c.verified + n} bytes came back, {c.sent} sent")
                        continue
                    p = (off + c.verified) % PATTERN_SIZE
                    if data != doubled[p : p + n]:
                        fail(
                            fd, "wrong_echo", _describe_mismatch(data, view, p, c.verified, c.sent)
                        )
                        continue
                    c.verified += n
                    c.t0 = t
                    stats.bytes_verified += n
                    if hold and c.verified == c.target:
                        us = int((t - c.t_ping) * 1e6)
                        record(rhist, us)
                        stats.rtt_max = max(stats.rtt_max, us)
                        stats.pings += 1
            if ev & _EPOLLOUT:
                limit = c.target if hold else c.verified + STREAM_WINDOW
                room = min(limit - c.sent, STREAM_CHUNK)
                if room > 0:
                    p = (off + c.sent) % PATTERN_SIZE
                    try:
                        n = sock.send(view[p : p + room])
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        fail(fd, classify(exc), f"send: {exc}")
                        continue
                    c.sent += n
                    stats.bytes_sent += n
            want(fd, c, out_mask(c))
        now = mono()
        if hold and now >= next_pings:  # start the pings that are due (a 10 ms tick)
            next_pings = now + 0.01
            for fd, c in conns.items():
                if c.target >= 0 and c.verified == c.target and now >= c.due:
                    c.target = c.sent + ping
                    c.t_ping = now
                    c.t0 = now
                    c.due = now + HOLD_PING_INTERVAL * (0.5 + rng.random())
                    want(fd, c, out_mask(c))
        if now >= next_sweep:
            next_sweep = now + 0.1
            for fd, c in list(conns.items()):
                waiting = c.target < 0 or c.sent > c.verified
                if waiting and now - c.t0 > plan.timeout:
                    what = "connect" if c.target < 0 else f"echo ({c.sent - c.verified} bytes due)"
                    fail(fd, "timeout", f"{what}: no progress for {plan.timeout:g}s")
            stats.peak_open = max(stats.peak_open, len(conns))
            publish(now, len(conns))
    # The end: stop sending, let the bytes in flight come back, then close cleanly.
    stats.elapsed = mono() - start
    drain_deadline = mono() + plan.timeout
    for fd, c in list(conns.items()):
        if c.target < 0:  # still connecting: not a finished session, not an error
            close(fd)
        else:
            want(fd, c, _EPOLLIN)
    while any(c.sent > c.verified for c in conns.values()) and mono() < drain_deadline:
        for fd, _ev in ep.poll(0.05):
            c2: _StreamConn | None = conns.get(fd)
            if c2 is None:
                continue
            try:
                data = c2.sock.recv(STREAM_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                fail(fd, classify(exc), f"recv: {exc}")
                continue
            if not data:
                fail(fd, "short_echo", f"EOF with {c2.sent - c2.verified} bytes unechoed")
                continue
            p = (offsets[fd] + c2.verified) % PATTERN_SIZE
            if c2.verified + len(data) > c2.sent or data != doubled[p : p + len(data)]:
                fail(fd, "wrong_echo", _describe_mismatch(data, view, p, c2.verified, c2.sent))
                continue
            c2.verified += len(data)
            stats.bytes_verified += len(data)
            if hold and c2.verified == c2.target:
                stats.pings += 1
    for fd, c in list(conns.items()):
        if c.sent > c.verified:
            fail(fd, "timeout", f"{c.sent - c.verified} bytes never came back")
        else:
            stats.ok += 1
            close(fd)
    publish(mono(), 0, force=True)
    ep.close()


# --- the parent: plan, start, watch, merge, report --------------------------------------------
def resolve(host: str, port: int, timeout: float) -> tuple[int, tuple[Any, ...]]:
    """Resolve the target once and check that something accepts connections there.

    Raises EcholabError (exit 2) with one line when the target is unreachable.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EcholabError(f"cannot resolve {host!r}: {exc.strerror}", EXIT_USAGE) from None
    last: OSError | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            return family, tuple(sockaddr)
        except OSError as exc:
            last = exc
    reason = (
        "timed out"
        if isinstance(last, TimeoutError)
        else (last.strerror if last is not None and last.strerror else str(last))
    )
    raise EcholabError(f"cannot reach {where}: {reason}", EXIT_USAGE)


def split(total: int, parts: int) -> list[int]:
    """`total` divided into `parts` shares as equal as can be (larger first)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the workers' tallies together."""
    merged: dict[str, Any] = {
        "ok": 0,
        "errors": dict.fromkeys(ERROR_KINDS, 0),
        "samples": {},
        "bytes_sent": 0,
        "bytes_verified": 0,
        "pings": 0,
        "connect_hist": [0] * HIST_SIZE,
        "rtt_hist": [0] * HIST_SIZE,
        "connect_max": 0,
        "rtt_max": 0,
        "elapsed": 0.0,
        "peak_open": 0,
    }
    for r in results:
        for key in ("ok", "bytes_sent", "bytes_verified", "pings", "peak_open"):
            merged[key] += r[key]
        for kind, n in r["errors"].items():
            merged["errors"][kind] += n
        for kind, text in r["samples"].items():
            merged["samples"].setdefault(kind, text)
        for key in ("connect_hist", "rtt_hist"):
            merged[key] = [a + b for a, b in zip(merged[key], r[key], strict=True)]
        for key in ("connect_max", "rtt_max", "elapsed"):
            merged[key] = max(merged[key], r[key])
    return merged


def summarize(
    args: argparse.Namespace,
    *,
    target: str,
    workers: int,
    seed: int,
    merged: dict[str, Any],
    interrupted: bool,
) -> dict[str, Any]:
    """The figures of the run, as --json writes them."""
    elapsed = merged["elapsed"] or 1e-9
    errors_total = sum(merged["errors"].values())
    units = merged["ok"] + errors_total
    error_rate = errors_total / units if units else 0.0
    passed = (
        merged["ok"] > 0
        and merged["errors"]["wrong_echo"] == 0
        and error_rate <= args.max_error_rate
        and not interrupted
    )
    return {
        "mode": args.mode,
        "target": target,
        "duration_s": round(merged["elapsed"], 3),
        "workers": workers,
        "clients": args.clients,
        "payload": args.payload,
        "seed": seed,
        "connections_ok": merged["ok"],
        "errors": merged["errors"],
        "errors_total": errors_total,
        "error_rate": round(error_rate, 6),
        "error_samples": merged["samples"],
        "conn_per_s": round(merged["ok"] / elapsed, 1),
        "mib_per_s": round(merged["bytes_verified"] / elapsed / (1 << 20), 3),
        "latency_ms": percentiles(merged["rtt_hist"], merged["rtt_max"]),
        "connect_latency_ms": percentiles(merged["connect_hist"], merged["connect_max"]),
        "bytes_sent": merged["bytes_sent"],
        "bytes_verified": merged["bytes_verified"],
        "pings_ok": merged["pings"],
        "peak_open": merged["peak_open"],
        "max_error_rate": args.max_error_rate,
        "interrupted": interrupted,
        "passed": passed,
    }


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_summary(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (label, value) rows, shared by the plain and the rich table."""
    err = s["errors"]
    detail = ", ".join(f"{k} {v}" for k, v in err.items() if v) or "none"
    lat, con = s["latency_ms"], s["connect_latency_ms"]
    rows = [
        ("target", f"{s['target']} ({s['mode']}, {s['clients']} clients, {s['workers']} workers)"),
        ("duration", f"{s['duration_s']:.2f} s" + (" (interrupted)" if s["interrupted"] else "")),
        ("connections ok", f"{s['connections_ok']:,}"),
        ("connections/s", f"{s['conn_per_s']:,.1f}"),
        ("verified", f"{s['bytes_verified']:,} bytes ({s['mib_per_s']:,.2f} MiB/s)"),
        ("errors", f"{s['errors_total']:,} ({detail}); rate {s['error_rate']:.4%}"),
    ]
    if s["mode"] == "hold":
        rows.append(("pings ok", f"{s['pings_ok']:,} (peak {s['peak_open']:,} open)"))
    label = "ping round trip ms" if s["mode"] == "hold" else "round trip ms"
    if s["mode"] != "stream":
        rows.append((label, _pct_text(lat)))
    rows.append(("connect ms", _pct_text(con)))
    for kind, text in s["error_samples"].items():
        rows.append((f"first {kind}", text))
    rows.append(("result", "PASS" if s["passed"] else "FAIL"))
    return rows


def _pct_text(p: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {_fmt_ms(p[k])}" for k in ("p50", "p90", "p99", "max"))


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """A table at the end: rich on a terminal when rich is installed, aligned text otherwise."""
    rows = render_summary(summary)
    verdict = dict(rows).get("result", "")
    print_rows(
        "echolab load", rows, out, {"result": "bold green" if verdict == "PASS" else "bold red"}
    )


class _Progress:
    """Live progress: a rich bar on a terminal, a plain line now and then otherwise."""

    def __init__(self, enabled: bool, total: float, by_count: bool, out: TextIO) -> None:
        self.enabled = enabled
        self.total = total
        self.by_count = by_count
        self.out = out
        self.rich: Any = None
        self.task: Any = None
        self.next_line = 0.0
        self.period = 1.0 if total <= 60 or by_count else 10.0
        if enabled and out.isatty():
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:
                pass
            else:
                self.rich = Progress(
                    TextColumn("[bold]load"),
                    BarColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[figures]}"),
                    console=Console(file=out),
                    transient=False,
                )
                self.task = self.rich.add_task("load", total=total, figures="")
                self.rich.start()

    def update(self, elapsed: float, totals: list[int]) -> None:
        if not self.enabled:
            return
        ok, errs, nbytes, open_, pings = totals
        rate = ok / elapsed if elapsed > 0 else 0.0
        mib = nbytes / elapsed / (1 << 20) if elapsed > 0 else 0.0
        figures = (
            f"ok {ok:,}  {rate:,.0f} conn/s  {mib:,.1f} MiB/s  errors {errs:,}  open {open_:,}"
        )
        if pings:
            figures += f"  pings {pings:,}"
        if self.rich is not None:
            done = ok + errs if self.by_count else min(elapsed, self.total)
            self.rich.update(self.task, completed=done, figures=figures)
            return
        if elapsed >= self.next_line:
            self.next_line = elapsed + self.period
            print(f"load: {elapsed:6.1f}s  {figures}", file=self.out, flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def run(args: argparse.Namespace) -> int:
    """`echolab load`: returns 0 when the run passed, 1 when it did not (see the module doc)."""
    host, port = args.target
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mode: str = args.mode
    if mode != "rate" and args.connections is not None:
        raise EcholabError("--connections applies to --mode rate only; use --duration", EXIT_USAGE)
    duration: float | None = args.duration
    if args.connections is None and duration is None:
        duration = DEFAULT_DURATION
    seed: int = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    family, sockaddr = resolve(host, port, args.timeout)

    # More workers than connections would only idle.
    n_workers = max(1, min(args.workers, args.clients))
    if args.connections is not None:
        n_workers = min(n_workers, args.connections)
    client_shares = split(args.clients, n_workers)
    conn_shares = split(args.connections, n_workers) if args.connections is not None else None
    plans = [
        Plan(
            index=i,
            mode=mode,
            family=family,
            sockaddr=sockaddr,
            clients=client_shares[i],
            connections=conn_shares[i] if conn_shares is not None else None,
            duration=duration,
            payload=args.payload,
            timeout=args.timeout,
            seed=seed,
        )
        for i in range(n_workers)
    ]
    # SIGTERM ends a run like Ctrl-C: the workers stop, the figures so far are reported.
    signal.signal(signal.SIGTERM, _interrupt)
    summary_out = sys.stderr if args.json_file == "-" else sys.stdout
    progress_out = sys.stderr
    merged, interrupted = _drive(
        plans,
        lambda: _Progress(
            not args.no_progress,
            float(args.connections) if args.connections is not None else float(duration or 0),
            args.connections is not None,
            progress_out,
        ),
    )
    summary = summarize(
        args, target=target, workers=n_workers, seed=seed, merged=merged, interrupted=interrupted
    )
    if args.json_file is not None:
        write_json(summary, args.json_file)
    print_summary(summary, summary_out)
    if interrupted:
        return 130
    return EXIT_OK if summary["passed"] else EXIT_FAILED


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drive(
    plans: list[Plan], make_progress: Callable[[], _Progress]
) -> tuple[dict[str, Any], bool]:
    """Fork the workers, start them together, show progress, collect and merge results."""
    ctx = multiprocessing.get_context("fork")  # the workers need nothing re-imported
    n = len(plans)
    shared = Shared(ctx.RawArray("q", n * N_COUNTERS), ctx.RawValue("b", 0), ctx.RawValue("d", 0.0))
    counters, stop_flag, start_at = shared.counters, shared.stop_flag, shared.start_at
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    pipes: list[Connection] = []
    procs = []
    for plan in plans:
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker_main,
            args=(plan, shared, ready, go, child_end),
            name=f"echolab-load-{plan.index}",
            daemon=True,
        )
        p.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(p)
    results: dict[int, dict[str, Any]] = {}
    interrupted = False
    progress: _Progress | None = None
    try:
        for _ in plans:
            if not ready.acquire(timeout=30):
                raise EcholabError("a load worker did not start", EXIT_OS_ERROR)
        start_at.value = time.monotonic()
        go.set()
        progress = make_progress()
        pending = dict(enumerate(pipes))
        while pending:
            try:
                for ready_conn in wait(list(pending.values()), timeout=0.2):
                    index = next(i for i, c in pending.items() if c is ready_conn)
                    assert isinstance(ready_conn, Connection)
                    try:
                        results[index] = ready_conn.recv()
                    except EOFError:
                        results[index] = {"fatal": "worker exited without a result"}
                    del pending[index]
                totals = [
                    sum(counters[i * N_COUNTERS + k] for i in range(n)) for k in range(N_COUNTERS)
                ]
                progress.update(time.monotonic() - start_at.value, totals)
            except KeyboardInterrupt:
                interrupted = True
                stop_flag.value = 1
    finally:
        if progress is not None:
            progress.close()
        stop_flag.value = 1
        go.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    fatal = [r["fatal"] for r in results.values() if "fatal" in r]
    if fatal:
        raise EcholabError(f"load worker failed: {fatal[0]}", EXIT_FAILED)
    return merge([results[i] for i in sorted(results)]), interrupted
