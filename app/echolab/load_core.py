"""What an `echolab load` worker is told (Plan), what it counts (Stats), and how it reports to
the parent while it runs (Reporter); shared by the rate loop (load_rate.py) and the stream/hold
state machine (load_stream.py)."""

from __future__ import annotations

import errno
import math
import os
import select
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from echolab import hdr

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
ERRNO_KIND = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EPIPE: "reset",
    errno.ECONNABORTED: "reset",
    errno.ETIMEDOUT: "timeout",
    errno.EADDRNOTAVAIL: "no_local_port",
}

PATTERN_SIZE = 1 << 20  # random bytes each worker draws payloads and streams from
STREAM_CHUNK = 256 * 1024  # largest send/recv of a long-lived connection
COUNTER_PERIOD = 0.1  # seconds between a worker's updates of its shared counters
# epoll_wait takes whole milliseconds in an int: 2**31 - 1 ms (24.8 days) is the longest wait
# the loops can ask for, and so the longest --timeout that means anything.
LONGEST_WAIT = (2**31 - 1) / 1000
# Open loop: an event due before the deadline may still start this long after it (epoll
# wakes in whole milliseconds); a generator further behind does not catch up after the end.
LATE_GRACE = 0.01
# Open loop: most events handled between two looks at the schedule (epoll's default is 1,023,
# which at ~50 us an event can hold a due start back by tens of milliseconds).
PACED_BATCH = 16
# Shared counters per worker, in this order.
C_OK, C_ERRORS, C_BYTES, C_OPEN, C_PINGS = range(5)
N_COUNTERS = 5


@dataclass(frozen=True)
class Plan:
    """One worker's share of the run (it crosses into the worker process at fork)."""

    index: int
    workers: int
    mode: str
    family: int
    sockaddr: tuple[Any, ...]
    clients: int  # connections in flight (closed loop), or at most open (open-loop rate mode)
    connections: int | None  # rate mode with --connections: this worker's share
    duration: float | None
    payload: int
    timeout: float
    seed: int
    rate: float | None  # open loop: the whole run's starts (or round trips) per second
    interval: float  # seconds per latency-over-time interval

    def schedule(self, start: float) -> tuple[float, float]:
        """Open loop: (when this worker's first event is due, seconds between its events).

        Event k of the whole run is due at start + k / rate; worker i of W takes the events
        k = i, i + W, i + 2W, ..., so together the workers keep the run's rate. `start` is
        when the worker woke up to run (a moment after the parent's start, on a busy machine):
        the schedule begins there, not in the worker's past.
        """
        assert self.rate is not None
        return start + self.index / self.rate, self.workers / self.rate


@dataclass(frozen=True)
class Shared:
    """What the parent and its workers share: counters, the stop flag, the start time."""

    counters: Any  # RawArray('q'): N_COUNTERS per worker
    stop_flag: Any  # RawValue('b'): set by a signal (in any process): stop now
    start_at: Any  # RawValue('d'): time.monotonic() of the start, set before `go`


class Stats:
    """A worker's tallies; sent to the parent when the worker ends.

    Latency histograms (microseconds, echolab.hdr): `latency` is what the summary reports
    (rate mode: the whole connection; hold and paced stream: each round trip), measured from
    the scheduled start in an open loop; `connect` the TCP handshakes; `lag` how late the
    open loop's starts were against their schedule while a slot was free (the generator's own
    delay). The live per-interval counts are in the Reporter until each interval ends.
    """

    def __init__(self) -> None:
        self.ok = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.samples: dict[str, str] = {}
        self.bytes_sent = 0
        self.bytes_verified = 0
        self.pings = 0
        self.connect = hdr.new()
        self.connect_max = 0
        self.latency = hdr.new()
        self.latency_max = 0
        self.lag = hdr.new()
        self.lag_max = 0
        self.scheduled = 0  # open loop: events due before the end
        self.started = 0  # open loop: events started
        self.slot_waits = 0  # open loop: events that waited for a free connection
        self.behind = 0  # open loop: events due but never started, the generator being late
        self.abandoned = 0  # in flight when a signal stopped the run
        self.elapsed = 0.0
        self.peak_open = 0
        self.signal = 0  # a stop signal this worker received

    def error(self, kind: str, detail: str) -> None:
        """Count one failed connection (or round trip) of `kind`; keep the first detail."""
        self.errors[kind] += 1
        self.samples.setdefault(kind, detail)

    def as_dict(self) -> dict[str, Any]:
        """The tallies for the parent, histograms as sparse {bucket: count}."""
        out = dict(vars(self))
        for key in ("connect", "latency", "lag"):
            out[key] = hdr.sparse(out[key])
        return out


class Reporter:
    """A worker's line to the parent while it runs.

    Every COUNTER_PERIOD: the running counters into shared memory (the parent's progress).
    Every --interval: the interval's latency and lag counts through the pipe (latency over
    time), moved into the run's totals. At the end: the last interval, then the tallies.
    The loops record into `latency` and `lag`, the live interval's histograms.
    """

    def __init__(self, plan: Plan, shared: Shared, stats: Stats, pipe: Connection) -> None:
        self.stats = stats
        self.pipe = pipe
        self.stop_flag = shared.stop_flag
        self.counters = shared.counters
        self.base = plan.index * N_COUNTERS
        self.parent = os.getppid()
        self.start = float(shared.start_at.value)
        self.step = plan.interval
        self.k = 0  # the live interval
        self.next_flush = self.start + self.step
        self.next_publish = 0.0
        self.latency = hdr.new()
        self.lag = hdr.new()
        self.sent = (0, 0, 0)  # ok, errors, bytes verified as of the last interval sent

    def tick(self, now: float, open_conns: int) -> None:
        """Called by the loops at least every 0.1 s: flush an ended interval, publish."""
        if now >= self.next_flush:
            self.flush(now, final=False)
        if now >= self.next_publish:
            self.publish(now, open_conns)

    def publish(self, now: float, open_conns: int) -> None:
        self.next_publish = now + COUNTER_PERIOD
        if os.getppid() != self.parent:  # the parent is gone (killed): stop, don't load on
            self.stop_flag.value = 1
        s, c, b = self.stats, self.counters, self.base
        c[b + C_OK] = s.ok
        c[b + C_ERRORS] = sum(s.errors.values())
        c[b + C_BYTES] = s.bytes_verified
        c[b + C_OPEN] = open_conns
        c[b + C_PINGS] = s.pings

    def flush(self, now: float, *, final: bool) -> None:
        """Send the live interval (ended, or the last one cut short) and start the next."""
        s = self.stats
        latency, lag = hdr.take(self.latency), hdr.take(self.lag)
        hdr.add(s.latency, latency)
        hdr.add(s.lag, lag)
        counts = (s.ok, sum(s.errors.values()), s.bytes_verified)
        self.pipe.send(
            (
                "interval",
                self.k,
                {
                    "end": now - self.start if final else (self.k + 1) * self.step,
                    "latency": latency,
                    "lag": lag,
                    "ok": counts[0] - self.sent[0],
                    "errors": counts[1] - self.sent[1],
                    "bytes": counts[2] - self.sent[2],
                },
            )
        )
        self.sent = counts
        # The interval `now` falls in (a stalled loop may have skipped some: they stay empty).
        self.k = max(self.k + 1, int((now - self.start) / self.step))
        self.next_flush = self.start + (self.k + 1) * self.step

    def finish(self, now: float, open_conns: int = 0) -> None:
        """The last interval and the tallies, once the loop has ended."""
        self.flush(now, final=True)
        self.publish(now, open_conns)
        self.pipe.send(("final", self.stats.as_dict()))


def count_schedule(
    stats: Stats, end: float, schedule: tuple[float, float], *, budget: int | None, blocked: bool
) -> None:
    """Open loop, at the end: how many events were due before `end`, and why any of them
    never started (`blocked`: the next one was waiting for a free connection, the server's
    doing; otherwise the generator was behind)."""
    first, period = schedule
    due = math.ceil((end - first) / period) if end > first else 0
    if budget is not None:
        due = min(due, budget)
    unstarted = max(0, due - stats.started)
    stats.scheduled = stats.started + unstarted
    if blocked:
        stats.slot_waits += unstarted
    else:
        stats.behind = unstarted


def poll_events(
    ep: select.epoll, timeout: float, batch: int, *, precise: bool
) -> list[tuple[int, int]]:
    """epoll's ready events, waiting at most `timeout` seconds.

    epoll_wait counts whole milliseconds, rounded up: an open loop waiting for its next start
    would begin it up to a millisecond late, which on loopback is ten times an echo's round
    trip. `precise` waits in select() on the epoll descriptor (readable when it has events),
    whose timeout is in microseconds, then collects the events without waiting.
    """
    if precise and timeout > 0:
        select.select([ep.fileno()], [], [], timeout)
        timeout = 0
    return ep.poll(timeout, batch)


def classify(exc: OSError) -> str:
    """The error kind of an OS error raised by connect/send/recv."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return ERRNO_KIND.get(exc.errno or 0, "other")


def errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def start_connect(plan: Plan, stats: Stats) -> socket.socket | None:
    """A non-blocking socket with its connect under way; None when that failed at once
    (EMFILE, a refusal on loopback...), counted as an error of its kind."""
    try:
        sock = socket.socket(plan.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as exc:
        stats.error(classify(exc), f"socket: {exc}")
        return None
    err = sock.connect_ex(plan.sockaddr)
    if err and err != errno.EINPROGRESS:
        sock.close()
        stats.error(ERRNO_KIND.get(err, "other"), f"connect: {errno_text(err)}")
        return None
    return sock


def connect_error(sock: socket.socket) -> tuple[str, str] | None:
    """After a connect's completion event: (error kind, detail) when it failed, else None."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if not err:
        return None
    return ERRNO_KIND.get(err, "other"), f"connect: {errno_text(err)}"


def describe_mismatch(data: bytes, view: memoryview, start_at: int, got: int, size: int) -> str:
    """One line on how an echo differs from what was sent (`got` bytes were already right)."""
    expected = bytes(view[start_at : start_at + len(data)])
    if got + len(data) > size:
        return f"{got + len(data)} bytes came back for {size} sent"
    for i, (a, b) in enumerate(zip(data, expected, strict=False)):
        if a != b:
            return f"byte {got + i} of {size}: sent 0x{b:02x}, got 0x{a:02x}"
    return f"{len(data)} bytes at offset {got} differ"
