"""`echolab restart-check`: restart a server with clients connected, and prove what happened.

The experiment (engine.py) holds idle clients, fills the accept queue, probes and samples the
port every ~10 ms while a backend (backends.py) restarts the server by one strategy:

- stop-start: stop, then start a new server; TIME_WAIT from the stopped sessions lingers on the
  port, so the new server binds only with SO_REUSEADDR (`--no-reuseaddr` is the control);
- reuseport: a new server joins the port with SO_REUSEPORT before the old one stops;
- socket-activation: the listening socket is held by a parent that outlives each server;
- reload: SIGHUP, the same process and listener, a new generation.

One judge (judge.py) decides every run, from state, never from speed. `--compare` runs every
strategy available here and prints one table; `--plot` draws the timeline (plot.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from echolab.errors import EXIT_FAILED, EXIT_INVALID_RUN, EXIT_OK, EXIT_USAGE, EcholabError
from echolab.netaddr import format_address
from echolab.report import write_json
from echolab.restartcheck import netns
from echolab.restartcheck.backends import CommandBackend, LocalBackend, SocketActivationBackend
from echolab.restartcheck.engine import Backend, Experiment, Plan
from echolab.restartcheck.judge import judge
from echolab.restartcheck.render import label, print_compare, print_report
from echolab.restartcheck.result import Result

__all__ = ["Interrupted", "run"]


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived during a run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP end the run: the first one raises Interrupted in the main
    thread (like KeyboardInterrupt); later ones, while everything started is being stopped,
    are only recorded, so that the clean-up itself is never cut short."""

    SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.armed = True
        self._saved: dict[int, object] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Clean-up that a signal must not cut short: a signal arriving meanwhile is raised
        once it is done (if it is the first)."""
        was, self.armed = self.armed, False
        try:
            yield
        finally:
            self.armed = was and not self.received
        if was and self.received:
            raise Interrupted(self.received[0])

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        for signum in self.SIGNALS:
            self._saved[signum] = signal.signal(signum, self.handle)
        try:
            yield self
        finally:
            for signum, handler in self._saved.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]


def check_destination(path: str | None, what: str) -> None:
    """Fail before the run, not after it, when an output file cannot be written."""
    if path is None or path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise EcholabError(f"cannot write {what} {path}: no writable directory there", EXIT_USAGE)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise EcholabError(f"cannot write {what} {path}: permission denied", EXIT_USAGE)


def validate(args: argparse.Namespace) -> None:
    """Combinations the parser cannot see; each a one-line usage error (exit 2)."""
    managed = args.restart_cmd is not None
    if managed and args.target is None:
        raise EcholabError(
            "--restart-cmd needs --target HOST:PORT (the managed server)", EXIT_USAGE
        )
    if args.target is not None and not managed:
        raise EcholabError(
            "--target is for managed mode: give --restart-cmd too (local mode uses --host/--port)",
            EXIT_USAGE,
        )
    if args.compare and managed:
        raise EcholabError("--compare starts its own servers: drop --restart-cmd", EXIT_USAGE)
    if args.log_cmd is not None and not managed:
        raise EcholabError(
            "--log-cmd is for managed mode: give --restart-cmd and --target too (a local "
            "server's log is read directly)",
            EXIT_USAGE,
        )
    if args.log_cmd is not None and args.strategy != "reload":
        raise EcholabError("--log-cmd is for --strategy reload", EXIT_USAGE)
    if managed and args.strategy == "reload" and args.log_cmd is None:
        raise EcholabError(
            "--strategy reload is judged by the server's new generation in its log: in managed "
            "mode give --log-cmd CMD, which prints that log (e.g. journalctl --unit UNIT "
            "--output cat)",
            EXIT_USAGE,
        )
    if args.no_reuseaddr and args.strategy != "stop-start" and not args.compare:
        raise EcholabError("--no-reuseaddr is the control of --strategy stop-start", EXIT_USAGE)
    if args.migrate_req is not None and args.strategy != "reuseport" and not args.compare:
        raise EcholabError("--migrate-req is for --strategy reuseport", EXIT_USAGE)
    if args.migrate_req is not None and managed:
        raise EcholabError(
            "--migrate-req needs a namespace of our own: not in managed mode", EXIT_USAGE
        )
    check_destination(args.json_file, "the JSON to")
    check_destination(args.plot, "the plot to")
    if args.plot is not None:
        from echolab.restartcheck.plot import check_plot

        check_plot(args.plot)


def make_plan(args: argparse.Namespace, strategy: str, reuseaddr: bool) -> Plan:
    return Plan(
        strategy=strategy,
        reuseaddr=reuseaddr,
        clients=args.clients,
        queued=args.queued,
        close_first=args.close_first,
        timeout=args.timeout,
        rebind_limit=args.rebind_limit,
        host=args.host,
        port=args.port,
    )


def make_backend(args: argparse.Namespace, plan: Plan) -> Backend:
    if args.restart_cmd is not None:
        return CommandBackend(plan, args.restart_cmd, args.target, args.log_cmd)
    if plan.strategy == "socket-activation":
        return SocketActivationBackend(plan)
    return LocalBackend(plan)


def run_one(
    args: argparse.Namespace,
    plan: Plan,
    namespace: bool,
    migrate: int | None,
    interrupts: Interrupts,
) -> tuple[Result, int]:
    """One experiment, judged; (result, exit status). Interrupted propagates with the partial
    result attached."""
    managed = args.restart_cmd is not None
    host, port = args.target if managed else (plan.host, plan.port)
    result = Result(
        strategy=plan.strategy,
        backend="command" if managed else "local",
        mode="managed" if managed else "local",
        target=format_address(host, port),
        reuseaddr=plan.reuseaddr,
        close_first=plan.close_first,
        clients=plan.clients,
    )
    if plan.rebind_limit is not None:
        result.rebind_limit_ms = plan.rebind_limit * 1000
    if namespace:
        netns.enter()
        if migrate is not None:
            netns.set_migrate_req(migrate)
    result.netns = {"own": namespace, "tcp_migrate_req": netns.migrate_req()}
    exp = Experiment(plan, make_backend(args, plan), result)
    try:
        try:
            exp.execute()
        finally:
            with interrupts.deferred():
                exp.close()
        with interrupts.deferred():
            exp.collect()
            return result, judge(result)
    except (Interrupted, EcholabError) as exc:
        interrupts.armed = False  # what follows is reporting: signals are only recorded now
        # What was seen so far goes into the result; a run cut short at any point may leave
        # pieces unset, and nothing here may hide the error or the signal that cut it.
        with contextlib.suppress(Exception):
            exp.collect()
        judge(result)
        result.details["verdict_so_far"] = f"{result.verdict}: {result.reason}"
        if isinstance(exc, Interrupted):
            result.interrupted = True
            result.verdict, result.reason = "interrupted", f"{exc} during the run"
        else:
            result.verdict, result.reason = "error", str(exc)
        setattr(exc, "result", result)  # noqa: B010  the partial result, for output()
        raise


def compare_plans(
    args: argparse.Namespace,
) -> tuple[list[tuple[Plan, int | None]], list[tuple[str, str]]]:
    """Every strategy this machine can run, and the ones it cannot (with the reason)."""
    plans: list[tuple[Plan, int | None]] = [
        (make_plan(args, "stop-start", True), None),
        (make_plan(args, "stop-start", False), None),
    ]
    skipped: list[tuple[str, str]] = []
    if netns.can_enter() and netns.migrate_req() is not None:
        plans += [(make_plan(args, "reuseport", True), m) for m in (0, 1)]
    else:
        plans.append((make_plan(args, "reuseport", True), None))
        skipped.append(("reuseport with tcp_migrate_req 0 and 1", "needs root (a namespace)"))
    if shutil.which("systemd-socket-activate"):
        plans.append((make_plan(args, "socket-activation", True), None))
    else:
        skipped.append(("socket-activation", "systemd-socket-activate is not installed"))
    plans.append((make_plan(args, "reload", True), None))
    return plans, skipped


def run(args: argparse.Namespace) -> int:
    """`echolab restart-check`: exit 0 pass, 1 fail, 3 invalid run, 128+N on signal N."""
    validate(args)
    interrupts = Interrupts()
    results: list[Result] = []
    skipped: list[tuple[str, str]] = []
    with interrupts.installed():
        status = _run_all(args, interrupts, results, skipped)
        interrupts.armed = False  # from here on, signals are only recorded
        output(args, results, skipped, status)
    return status


def _run_all(
    args: argparse.Namespace,
    interrupts: Interrupts,
    results: list[Result],
    skipped: list[tuple[str, str]],
) -> int:
    """The run (one strategy or the comparison); its status, 128+N after signal N."""
    try:
        if args.compare:
            return run_compare(args, results, skipped, interrupts)
        migrate = None if args.migrate_req is None else int(args.migrate_req == "on")
        plan = make_plan(args, args.strategy, not args.no_reuseaddr)
        result, status = run_one(args, plan, migrate is not None, migrate, interrupts)
        results.append(result)
        return status
    except Interrupted as exc:
        _keep_partial(exc, results)
        return 128 + exc.signum
    except EcholabError as exc:
        _keep_partial(exc, results)
        interrupts.armed = False
        output(args, results, skipped, exc.code, table=False)  # the error itself is one line
        raise


def _keep_partial(exc: Exception, results: list[Result]) -> None:
    partial = getattr(exc, "result", None)
    if isinstance(partial, Result) and partial not in results:
        results.append(partial)


def run_compare(
    args: argparse.Namespace,
    results: list[Result],
    skipped: list[tuple[str, str]],
    interrupts: Interrupts,
) -> int:
    """Each strategy in turn (each in a namespace of its own when we may make one)."""
    plans, skipped[:] = compare_plans(args)
    own = netns.can_enter()
    worst = EXIT_OK
    for i, (plan, migrate) in enumerate(plans, 1):
        if not own:
            plan.port = 0  # one port each: an earlier run's TIME_WAIT would muddle the next
        result, status = run_one(args, plan, own, migrate, interrupts)
        print(f"restart-check {i}/{len(plans)}: {label(result)}: {result.verdict}",
              file=sys.stderr, flush=True)  # fmt: skip
        results.append(result)
        if status == EXIT_FAILED or (status == EXIT_INVALID_RUN and worst == EXIT_OK):
            worst = status
    return worst


def output(
    args: argparse.Namespace,
    results: list[Result],
    skipped: list[tuple[str, str]],
    status: int,
    table: bool = True,
) -> None:
    """JSON, plot and the table; with an interrupted run, what there is so far."""
    if not results:
        return
    if args.json_file is not None:
        if args.compare:
            data = {
                "schema": results[0].schema,
                "compare": [r.as_json() for r in results],
                "skipped": [{"strategy": s, "why": w} for s, w in skipped],
                "interrupted": status > 128,
            }
        else:
            data = results[0].as_json()
        write_json(data, args.json_file)
    if args.plot is not None:
        from echolab.restartcheck.plot import plot

        plot([r.as_json() for r in results], args.plot)
    out = sys.stderr if args.json_file == "-" else sys.stdout
    if not table:
        return
    if args.compare:
        print_compare(results, skipped, out)
    else:
        print_report(results[0], out)
