"""`echolab load`: drive an echo server hard and verify every byte that comes back.

Three modes:
- rate: short connections (connect, send the payload, read it all back, close); the figure
  is connections per second, the latency each connection's whole life.
- stream: `--clients` long connections streaming random data both ways at once; MiB/s.
- hold: `--clients` idle connections held open, each pinged now and then; shows how many
  sessions (processes, for a forking server) the server carries.

Closed loop by default: each next connection (or ping) starts when one ends, so a stalled
server also stalls the load and its stall hides from the percentiles. `--rate N` makes it an
open loop: N starts (rate mode) or round trips (stream, hold) a second on a fixed schedule,
whatever the server does, each timed from its scheduled start; the generator reports its own
lag against that schedule, so a slow client is never mistaken for a slow server.

The load generator must not be the bottleneck, so each worker process runs its own epoll loop
over non-blocking sockets: no asyncio futures or streams on the hot path (measured: a plain
loop makes about 3x the connections per CPU second of asyncio streams). Workers report running
counters through shared memory, a latency histogram per interval through a pipe, and their
tallies at the end; the parent merges them.

The parts: load.py (options, the parent, signals), load_core.py (what a worker is told and
counts), load_worker.py (the worker process), load_rate.py (rate mode), load_stream.py (stream
and hold), load_report.py (summary, JSON, CSV, progress), load_plot.py (--plot), hdr.py (the
histogram).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from echolab.errors import EXIT_FAILED, EXIT_OK, EXIT_OS_ERROR, EXIT_USAGE, EcholabError
from echolab.load_core import LONGEST_WAIT, N_COUNTERS, Plan, Shared
from echolab.load_report import LatencyCsv, Progress, Timeline, merge, print_summary, summarize
from echolab.load_worker import STOP_SIGNALS, fd_limit, worker_main
from echolab.netaddr import format_address
from echolab.report import write_json

DEFAULT_DURATION = 10.0
MIN_INTERVAL = 0.05  # --interval: workers flush an interval at most every 50 ms
# Rate mode keeps one payload-sized copy of its pattern per worker: bound it, so that a typo
# cannot ask for more memory than a lab container has (bulk data is what stream mode is for).
MAX_PAYLOAD = 64 << 20
# Counts beyond these are typos, not plans (and beyond 2**53 they lose precision as floats).
MAX_RATE = 10**9  # starts a second
MAX_CONNECTIONS = 2**53
START_TIMEOUT = 30.0  # seconds for the workers to get ready
STOP_GRACE = 5.0  # seconds the workers get to report after a stop signal, before SIGKILL
PLOT_SUFFIXES = (".svg", ".png")


def run(args: argparse.Namespace) -> int:
    """`echolab load`: 0 when the run passed, 1 when it did not, 128 + N after signal N."""
    host, port = args.target
    target = format_address(host, port)
    duration = check_options(args)
    check_outputs(args)
    timeout = min(args.timeout, LONGEST_WAIT)
    seed: int = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    summary_out = sys.stderr if args.json_file == "-" else sys.stdout
    with Interrupts() as intr:
        plans = make_plans(
            args, resolve(host, port, timeout), duration=duration, timeout=timeout, seed=seed
        )
        csv_out = LatencyCsv(args.latency_csv) if args.latency_csv else None
        try:
            timeline = Timeline(len(plans), args.interval, csv_out, keep=bool(args.plot))
            total = float(args.connections) if args.connections is not None else duration
            outcome = Workers(plans, intr, timeline).run(
                lambda: Progress(
                    not args.no_progress,
                    float(total or 0),
                    args.connections is not None,
                    sys.stderr,
                )
            )
        finally:
            if csv_out is not None:
                csv_out.close()
        signum = intr.signum or outcome.merged["signal"]
        summary = summarize(
            args,
            target=target,
            workers=len(plans),
            seed=seed,
            merged=outcome.merged,
            signum=signum,
            failures=outcome.failures,
        )
        if args.json_file:
            write_json(summary, args.json_file)
        print_summary(summary, summary_out)
        if summary["schedule"] is not None and not summary["schedule"]["kept"]:
            print(f"echolab load: schedule {summary['schedule']['verdict']}", file=sys.stderr)
        if args.plot:
            from echolab import load_plot

            load_plot.draw(args.plot, summary, timeline.rows)
    if signum:
        return 128 + int(signum)
    return EXIT_OK if summary["passed"] else EXIT_FAILED


# --- before the run -----------------------------------------------------------------------
def check_options(args: argparse.Namespace) -> float | None:
    """Reject what the parser cannot see (one line, exit 2); return the duration (None: rate
    mode runs for --connections)."""
    _check_sizes(args)
    _check_latency_options(args)
    if args.connections is None and args.duration is None:
        return DEFAULT_DURATION
    return args.duration  # type: ignore[no-any-return]


def _usage(text: str) -> EcholabError:
    return EcholabError(text, EXIT_USAGE)


def _check_sizes(args: argparse.Namespace) -> None:
    """How much and how long: within what a run (and this machine) can mean."""
    if args.mode != "rate" and args.connections is not None:
        raise _usage("--connections applies to --mode rate only; use --duration")
    if args.rate is not None and args.rate > MAX_RATE:
        raise _usage(f"--rate: at most {MAX_RATE:,} a second")
    if args.connections is not None and args.connections > MAX_CONNECTIONS:
        raise _usage(f"--connections: at most {MAX_CONNECTIONS:,}")
    if args.timeout <= 0:
        raise _usage("--timeout must be more than 0")
    if args.duration is not None and args.duration <= 0:
        raise _usage("--duration must be more than 0")
    if args.payload > MAX_PAYLOAD:
        raise _usage(f"--payload: at most {MAX_PAYLOAD:,} bytes (bulk data: --mode stream)")
    per_worker = split(args.clients, worker_count(args))[0]
    if per_worker + 64 > fd_limit():
        raise _usage(
            f"--clients {args.clients}: {per_worker} connections per worker need more than the "
            f"{fd_limit()} descriptors a process may open (ulimit -n); use more --workers"
        )


def _check_latency_options(args: argparse.Namespace) -> None:
    """--interval, the thresholds, --latency-csv and --plot (and the plot extra)."""
    if args.interval < MIN_INTERVAL:
        raise _usage(f"--interval {args.interval:g}s: at least {MIN_INTERVAL * 1000:g}ms")
    has_limit = args.max_p99 is not None or args.max_p999 is not None
    if has_limit and args.mode == "stream" and args.rate is None:
        raise _usage("--max-p99/--max-p999 need latencies: stream mode has them with --rate only")
    if args.latency_csv == "-":
        raise _usage("--latency-csv needs a file name")
    if args.plot and not args.plot.endswith(PLOT_SUFFIXES):
        raise _usage(f"--plot {args.plot}: the file name must end in .svg or .png")
    if args.plot:
        from echolab import load_plot

        load_plot.require()


def check_outputs(args: argparse.Namespace) -> None:
    """Every file the run will write must be writable now, not only after the whole run."""
    for flag, path in (
        ("--json", args.json_file),
        ("--latency-csv", args.latency_csv),
        ("--plot", args.plot),
    ):
        if not path or path == "-":  # not given, or empty (an unset variable): none
            continue
        p = Path(path)
        existed = p.exists()
        try:  # opening to append writes nothing; a file made only to try is removed again
            with open(p, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise EcholabError(f"{flag} {path}: cannot write: {exc.strerror}", EXIT_USAGE) from None
        if not existed:
            p.unlink(missing_ok=True)


def resolve(host: str, port: int, timeout: float) -> tuple[int, tuple[Any, ...]]:
    """Resolve the target once and check that something accepts connections there.

    Raises EcholabError (exit 2) with one line when the target is unreachable.
    """
    where = format_address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise EcholabError(f"cannot resolve {host!r}: {reason}", EXIT_USAGE) from None
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


def worker_count(args: argparse.Namespace) -> int:
    """--workers, but never more than there are clients or connections to share."""
    n: int = max(1, min(args.workers, args.clients))
    if args.connections is not None:
        n = min(n, args.connections)
    return n


def make_plans(
    args: argparse.Namespace,
    target: tuple[int, tuple[Any, ...]],
    *,
    duration: float | None,
    timeout: float,
    seed: int,
) -> list[Plan]:
    """Each worker's share: clients, connections (and so the open loop's rate) split evenly."""
    family, sockaddr = target
    n = worker_count(args)
    clients = split(args.clients, n)
    shares = split(args.connections, n) if args.connections is not None else [None] * n
    return [
        Plan(
            index=i,
            workers=n,
            mode=args.mode,
            family=family,
            sockaddr=sockaddr,
            clients=clients[i],
            connections=shares[i],
            duration=duration,
            payload=args.payload,
            timeout=timeout,
            seed=seed,
            rate=float(args.rate) if args.rate is not None else None,
            interval=args.interval,
        )
        for i in range(n)
    ]


# --- the run ------------------------------------------------------------------------------
class Interrupts:
    """SIGINT, SIGTERM and SIGHUP while `load` runs, to the parent or the whole group.

    The handler only records the first signal and raises the workers' stop flag; the parent's
    loop does the rest: it collects what the workers counted, reports it marked interrupted,
    and `run` exits 128 + the signal's number (130, 143, 129). The old handlers come back at
    the end.
    """

    def __init__(self) -> None:
        self.signum = 0
        self.at = 0.0
        self.stop_flag: Any = None
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in STOP_SIGNALS:
            self.saved[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame: object) -> None:
        if not self.signum:
            self.signum = signum
            self.at = time.monotonic()
        if self.stop_flag is not None:
            self.stop_flag.value = 1

    def attach(self, stop_flag: Any) -> None:
        """From now on a signal also stops the workers (at once, if one came already)."""
        self.stop_flag = stop_flag
        if self.signum:
            stop_flag.value = 1


@dataclass
class Outcome:
    """What the workers reported: their merged tallies, and the ones that failed."""

    merged: dict[str, Any]
    failures: list[str] = field(default_factory=list)


class Workers:
    """The worker processes of one run: forked, started together, watched, collected, reaped.

    Each worker sends interval messages while it runs and its tallies at the end through
    its own pipe (load_core.Reporter); the running counters come through shared memory.
    """

    def __init__(self, plans: list[Plan], intr: Interrupts, timeline: Timeline) -> None:
        self.ctx = multiprocessing.get_context("fork")  # the workers need nothing re-imported
        self.plans = plans
        self.intr = intr
        self.timeline = timeline
        n = len(plans)
        ctx = self.ctx
        self.shared = Shared(
            ctx.RawArray("q", n * N_COUNTERS), ctx.RawValue("b", 0), ctx.RawValue("d", 0.0)
        )
        self.ready = ctx.Semaphore(0)
        self.go = ctx.Event()
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.results: dict[int, dict[str, Any]] = {}
        self.failures: dict[int, str] = {}

    def run(self, make_progress: Callable[[], Progress]) -> Outcome:
        """The whole run; every worker is reaped (or killed and reaped) when it returns."""
        self.intr.attach(self.shared.stop_flag)
        try:
            self.start()
            self.wait_ready()
            self.shared.start_at.value = time.monotonic()
            self.go.set()
            self.collect(make_progress)
        finally:
            self.reap()
        self.timeline.close()
        for i, p in enumerate(self.procs):
            if i not in self.results and i not in self.failures:
                self.failures[i] = f"worker {i} ended without a result (exit status {p.exitcode})"
        merged = merge([self.results[i] for i in sorted(self.results)])
        return Outcome(merged, [self.failures[i] for i in sorted(self.failures)])

    def start(self) -> None:
        for plan in self.plans:
            parent_end, child_end = self.ctx.Pipe(duplex=False)
            p = self.ctx.Process(
                target=worker_main,
                args=(plan, self.shared, self.ready, self.go, child_end),
                name=f"echolab-load-{plan.index}",
                daemon=True,
            )
            try:
                p.start()
            except OSError as exc:
                raise EcholabError(f"cannot start a load worker: {exc}", EXIT_OS_ERROR) from None
            finally:
                child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(p)

    def wait_ready(self) -> None:
        """Until every worker is ready to start (or a signal came: they will stop at once)."""
        deadline = time.monotonic() + START_TIMEOUT
        for _ in self.procs:
            while not self.ready.acquire(timeout=0.2):
                if self.intr.signum:
                    return
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead or time.monotonic() > deadline:
                    what = f"exited with status {dead[0].exitcode}" if dead else "did not start"
                    raise EcholabError(f"a load worker {what}", EXIT_OS_ERROR)

    def collect(self, make_progress: Callable[[], Progress]) -> None:
        """Read the workers' messages until every pipe is closed (or they outstay a signal)."""
        pending = dict(enumerate(self.pipes))
        progress = make_progress()
        try:
            while pending:
                if self.intr.signum and time.monotonic() > self.intr.at + STOP_GRACE:
                    return  # they had their chance to report; `reap` kills the rest
                for conn in wait(list(pending.values()), timeout=0.2):
                    i = next(k for k, c in pending.items() if c is conn)
                    assert isinstance(conn, Connection)
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        del pending[i]
                        self.timeline.worker_done(i)
                        continue
                    self.receive(i, msg)
                last = self.timeline.rows[-1] if self.timeline.rows else None
                progress.update(time.monotonic() - self.shared.start_at.value, self.totals(), last)
        finally:
            progress.close()

    def receive(self, i: int, msg: tuple[Any, ...]) -> None:
        """One message of worker i: an interval, its final tallies, or why it failed."""
        if msg[0] == "interval":
            self.timeline.add(i, msg[1], msg[2])
        elif msg[0] == "final":
            self.results[i] = msg[1]
        else:
            self.failures[i] = f"worker {i}: {msg[1]}"

    def totals(self) -> list[int]:
        """The running counters of all workers added up (load_core.C_OK, ...)."""
        c, n = self.shared.counters, len(self.procs)
        return [sum(c[i * N_COUNTERS + k] for i in range(n)) for k in range(N_COUNTERS)]

    def reap(self) -> None:
        """Stop every worker and wait for it; SIGKILL one that outstays STOP_GRACE."""
        self.shared.stop_flag.value = 1
        self.go.set()
        for p in self.procs:
            p.join(STOP_GRACE)
            if p.is_alive():
                p.kill()
                p.join()
        self.intr.stop_flag = None
