"""`echolab restart-check`: restart a server while TIME_WAIT sockets linger, and measure it.

The experiment (shared/DESIGN.md): idle clients are connected; the server is stopped while
they are, so it closes the connections from its side and TIME_WAIT lands on the server's own
port (the clients answer the server's FIN at once, moving those sockets from FIN_WAIT_2 to
TIME_WAIT); the server is started again at once. With SO_REUSEADDR the new listener binds
within a second; without it, bind() fails with EADDRINUSE until the TIME_WAIT sockets expire
(60 s on Linux). A prober connects every few milliseconds throughout and counts refusals.

The run proves something only if server-side TIME_WAIT existed at the restart: when the
clients close first, TIME_WAIT lands on the clients' ports and any restart binds; when the
server is in another network namespace, its TIME_WAIT cannot be seen from here. In both cases
the check says so and exits 3 instead of calling the run valid.

Local mode starts `echolab serve` itself (`--grace 0`, so it ends the sessions at once).
Managed mode runs `--restart-cmd` through the shell against `--target`, a server run by
something else (systemd, a container), and measures the same things from the outside.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from echolab.errors import (
    EXIT_ADDR_IN_USE,
    EXIT_FAILED,
    EXIT_INVALID_RUN,
    EXIT_OK,
    EXIT_USAGE,
    EcholabError,
)
from echolab.netaddr import format_address
from echolab.probe import exchange
from echolab.ready import parse_ready
from echolab.report import print_rows, write_json
from echolab.tcpstate import plain_address, read_sockets

PROBE_INTERVAL = 0.005  # s between the prober's connection attempts ("every few ms")
PROBE_TIMEOUT = 0.25  # s a probe connect may take before it counts as a timeout
# With SO_REUSEADDR the new server must listen this soon after the old one is gone, on top of
# the interpreter's start-up (local mode measures it: the first start's time to listen; under
# a loaded CI machine a Python start alone can take over a second).
BIND_WITHIN = 1.0
SETTLE = 0.5  # s to let the last FIN/ACK exchanges land before TIME_WAIT is counted
PAYLOAD = b"echolab restart-check\n"


@dataclass
class Report:
    """The outcome of one run; `as_json()` is what --json writes."""

    mode: str  # "local" or "managed"
    target: str
    reuseaddr: bool
    close_first: str
    clients: int
    time_wait_before: int | None = None  # server-side TIME_WAIT on the port before the stop
    time_wait_at_restart: int | None = None  # None: cannot be read from here
    time_wait_from_clients: int | None = None  # of those, the ones left by our idle clients
    client_side_time_wait: int | None = None  # TIME_WAIT on our clients' own ports
    closed_by_server: int = 0  # idle clients that saw the server's FIN
    reset_by_server: int = 0  # idle clients that saw a reset (no TIME_WAIT for those)
    rebind: str = "not tried"  # "ok", an errno name such as "EADDRINUSE", or "failed"
    stop_ms: float | None = None  # stop began -> old server gone (local: exited)
    rebind_ms: float | None = None  # old server gone -> new server listening
    restart_ms: float | None = None  # stop began -> first echo through the new server
    refused_during_restart: int = 0
    probe_attempts: int = 0
    expected: str = ""
    verdict: str = "invalid"  # "pass", "fail" or "invalid"
    reason: str = ""
    restart_output: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("stop_ms", "rebind_ms", "restart_ms"):
            if data[key] is not None:
                data[key] = round(data[key], 1)
        return data


# --- pieces of the experiment -----------------------------------------------------------------
class IdleClients:
    """`n` connected clients that echo once, then stay idle until the server closes them.

    When the server's FIN arrives, a client closes at once: the server's socket then goes
    from FIN_WAIT_2 to TIME_WAIT (a client that lingered would leave it in FIN_WAIT_2).
    """

    def __init__(self, family: int, sockaddr: tuple[Any, ...], n: int, timeout: float) -> None:
        self.sel = selectors.DefaultSelector()
        self.open: dict[int, socket.socket] = {}
        self.endpoints: list[tuple[str, int]] = []  # our clients' (address, port)
        self.by_server = 0
        self.resets = 0
        self.last_close = 0.0
        try:
            for _ in range(n):
                sock = socket.socket(family, socket.SOCK_STREAM)
                self.open[sock.fileno()] = sock
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                got = exchange(sock, PAYLOAD)
                if got != PAYLOAD:
                    raise EcholabError(
                        f"the server at {format_address(*sockaddr[:2])} did not echo "
                        f"({len(got)} of {len(PAYLOAD)} bytes back)",
                        EXIT_FAILED,
                    )
                sock.setblocking(False)
                name = sock.getsockname()
                self.endpoints.append((plain_address(name[0]), name[1]))
                self.sel.register(sock, selectors.EVENT_READ)
        except OSError as exc:
            self.close_all()
            raise EcholabError(
                f"cannot connect the idle clients to {format_address(*sockaddr[:2])}: "
                f"{exc.strerror or exc}",
                EXIT_USAGE,
            ) from None

    def close_all(self) -> None:
        """Close every client from our side (the client-first case)."""
        for sock in self.open.values():
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)
            sock.close()
        self.open.clear()

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for the server to close some clients; close them in turn."""
        if not self.open:
            time.sleep(timeout)
            return
        for key, _ in self.sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                self.resets += 1
            else:
                if data:  # an echo server says nothing unasked; keep waiting for the FIN
                    continue
                self.by_server += 1
            self.sel.unregister(sock)
            del self.open[sock.fileno()]
            sock.close()
            self.last_close = time.monotonic()

    def close(self) -> None:
        self.close_all()
        self.sel.close()


class Prober(threading.Thread):
    """Connects every PROBE_INTERVAL and records (time, outcome) until stopped.

    Each successful probe is closed with a reset (SO_LINGER 0), so the prober itself never
    leaves TIME_WAIT on either side and cannot make an invalid run look valid.
    """

    def __init__(self, family: int, sockaddr: tuple[Any, ...]) -> None:
        super().__init__(name="echolab-prober", daemon=True)
        self.family = family
        self.sockaddr = sockaddr
        self.samples: list[tuple[float, str]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        linger = socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        while not self._stop_event.is_set():
            t = time.monotonic()
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.settimeout(PROBE_TIMEOUT)
            try:
                sock.connect(self.sockaddr)
                outcome = "ok"
                sock.setsockopt(*linger)
            except ConnectionRefusedError:
                outcome = "refused"
            except TimeoutError:
                outcome = "timeout"
            except OSError as exc:
                outcome = errno.errorcode.get(exc.errno or 0, "error")
            finally:
                sock.close()
            self.samples.append((t, outcome))
            self._stop_event.wait(PROBE_INTERVAL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)

    def count(self, since: float, until: float, outcome: str | None = None) -> int:
        return sum(
            1 for t, o in self.samples if since <= t <= until and (outcome is None or o == outcome)
        )

    def first_ok(self, since: float) -> float | None:
        return next((t for t, o in self.samples if t >= since and o == "ok"), None)


class ServeProcess:
    """`echolab serve` as a subprocess of ours, its stderr read by a thread."""

    def __init__(self, host: str, port: int, reuseaddr: bool) -> None:
        argv = [sys.executable, "-m", "echolab", "serve", "--host", host, "--port", str(port)]
        argv += ["--grace", "0", "--log-level", "info", "--log-format", "text"]
        if not reuseaddr:
            argv.append("--no-reuseaddr")
        # Our own flags decide: an ECHOLAB_NO_REUSEADDR=1 in the environment must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOLAB_")}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C on our terminal is ours to handle, not the server's
        )
        self.lines: list[str] = []
        self.listening = threading.Event()
        self.listen_at = 0.0
        self.port = port
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            ready = parse_ready(line)
            if ready and not self.listening.is_set():
                self.port = ready[1]
                self.listen_at = time.monotonic()
                self.listening.set()

    def wait_ready(self, timeout: float) -> int | None:
        """Wait until it listens (None) or exits (its status); raise on a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.listening.wait(0.005):
                return None
            rc = self.proc.poll()
            if rc is not None:
                self._reader.join(2)
                return rc
        raise EcholabError(f"the server did not listen within {timeout:g}s", EXIT_FAILED)

    def last_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait; SIGKILL its process group if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(2)


def bind_errno(rc: int, line: str) -> str:
    """The errno name behind a failed `echolab serve` start, from its status and its line."""
    if rc == EXIT_ADDR_IN_USE:
        return "EADDRINUSE"
    if rc == 4 or "ermission denied" in line:
        return "EACCES"
    if "annot assign" in line:
        return "EADDRNOTAVAIL"
    return f"failed (exit {rc})"


def echo_once(family: int, sockaddr: tuple[Any, ...], timeout: float) -> bool:
    """One echo round trip; True when the payload came back intact."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return exchange(sock, PAYLOAD) == PAYLOAD
    except OSError:
        return False


def wait_for_echo(
    family: int,
    sockaddr: tuple[Any, ...],
    deadline: float,
    give_up: Callable[[], bool] = lambda: False,
) -> float | None:
    """Echo until one round trip succeeds; the time it did, or None at the deadline or when
    `give_up()` says there is no point (the restart command failed)."""
    while time.monotonic() < deadline and not give_up():
        if echo_once(family, sockaddr, min(0.5, max(0.01, deadline - time.monotonic()))):
            return time.monotonic()
        time.sleep(PROBE_INTERVAL)
    return None


def interpreter_startup_ms() -> float:
    """How long a Python start-up of echolab takes on this host right now (the baseline a
    managed restart's bind time is judged against: we cannot see the manager start it)."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "echolab", "--version"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return (time.monotonic() - started) * 1000


def resolve(host: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """The first address of host:port (exit 2 when it does not resolve)."""
    try:
        family, _t, _p, _n, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, IndexError) as exc:
        raise EcholabError(f"cannot resolve {host!r}: {exc}", EXIT_USAGE) from None
    return family, tuple(sockaddr)


def is_local_address(family: int, sockaddr: tuple[Any, ...]) -> bool:
    """True when the address belongs to this host (network namespace): bind() to it works."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((sockaddr[0], 0, *sockaddr[2:]))
        return True
    except OSError:
        return False


def count_time_wait(
    port: int, clients: list[tuple[str, int]], addr: str | None = None
) -> tuple[int, int, int]:
    """(server-side TIME_WAIT on the port, those facing our clients, TIME_WAIT on our clients).

    Our clients' sockets are matched by address and port: a port number alone can also be in
    use on another address of this host. `addr`: only the server's sockets on that address
    (None: every address, as a wildcard listener's bind would face).
    """
    mine = set(clients)
    server_side = read_sockets(port, "local", states=("TIME_WAIT",), addr=addr)
    client_side = read_sockets(port, "remote", states=("TIME_WAIT",))
    return (
        len(server_side),
        sum(1 for s in server_side if (plain_address(s.remote_addr), s.remote_port) in mine),
        sum(1 for s in client_side if (plain_address(s.local_addr), s.local_port) in mine),
    )


def settle_time_wait(
    port: int, clients: list[tuple[str, int]], expect: int, addr: str | None = None
) -> tuple[int, int, int]:
    """Count TIME_WAIT once the FIN/ACK exchanges have landed (at most SETTLE seconds)."""
    deadline = time.monotonic() + SETTLE
    counts = count_time_wait(port, clients, addr)
    while counts[1] + counts[2] < expect and time.monotonic() < deadline:
        time.sleep(0.005)
        counts = count_time_wait(port, clients, addr)
    return counts


# --- the two modes ----------------------------------------------------------------------------
def run_local(args: argparse.Namespace, report: Report) -> None:
    """Start `echolab serve`, stop it under load, restart it at once, measure."""
    host: str = args.host
    timeout: float = args.timeout
    old = ServeProcess(host, args.port, reuseaddr=True)
    new: ServeProcess | None = None
    clients: IdleClients | None = None
    prober: Prober | None = None
    try:
        rc = old.wait_ready(timeout)
        if rc is not None:
            raise EcholabError(
                f"the first server did not start (exit {rc}): {old.last_line()}", EXIT_FAILED
            )
        port = old.port
        report.target = format_address(host, port)
        family, sockaddr = resolve(host, port)
        report.details["old_pid"] = old.proc.pid
        report.details["startup_ms"] = round((old.listen_at - old.started) * 1000, 1)
        clients = IdleClients(family, sockaddr, args.clients, timeout)
        if args.close_first == "client":
            clients.close_all()
            # Let the children see EOF and exit, so the stop finds no session to close.
            _wait_sessions_gone(port, clients.endpoints, timeout)
        report.time_wait_before = len(read_sockets(port, "local", states=("TIME_WAIT",)))
        prober = Prober(family, sockaddr)
        prober.start()
        t_stop = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        deadline = t_stop + timeout
        while old.proc.poll() is None and time.monotonic() < deadline:
            clients.poll(0.002)
        if old.proc.poll() is None:
            raise EcholabError(f"the server did not stop within {timeout:g}s", EXIT_FAILED)
        t_gone = time.monotonic()
        # Children end before the parent exits; their last FINs may still be in flight.
        while clients.open and time.monotonic() < t_gone + SETTLE:
            clients.poll(0.002)
        # The port is free once the last session is closed.
        t_gone = max(t_gone, clients.last_close)
        report.stop_ms = (t_gone - t_stop) * 1000
        report.closed_by_server, report.reset_by_server = clients.by_server, clients.resets
        # The restart, at once. TIME_WAIT lasts 60 s: counted once the new server has bound
        # (or failed to), the figure is the one the bind faced.
        new = ServeProcess(host, port, reuseaddr=not args.no_reuseaddr)
        report.details["new_pid"] = new.proc.pid
        rc = new.wait_ready(timeout)
        if rc is None:
            report.rebind = "ok"
            report.rebind_ms = (new.listen_at - t_gone) * 1000
            report.details["listen_ms"] = round((new.listen_at - new.started) * 1000, 1)
            t_up = wait_for_echo(family, sockaddr, time.monotonic() + timeout)
            if t_up is not None:
                report.restart_ms = (t_up - t_stop) * 1000
        else:
            report.rebind = bind_errno(rc, new.last_line())
            report.restart_output = new.last_line()
            t_up = None
        prober.stop()
        # The server's own address, unless it listens on every address.
        wildcard = host in ("0.0.0.0", "::", "")
        _count_into(report, port, clients, None if wildcard else plain_address(sockaddr[0]))
        report.refused_during_restart = prober.count(t_stop, t_up or float("inf"), "refused")
        report.probe_attempts = prober.count(t_stop, t_up or float("inf"))
    finally:
        if prober is not None:
            prober.stop()
        if clients is not None:
            clients.close()
        if new is not None:
            new.stop()
        old.stop()


def _wait_sessions_gone(port: int, clients: list[tuple[str, int]], timeout: float) -> None:
    """Wait until the server has closed its side of our (client-closed) sessions."""
    mine = set(clients)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [
            s
            for s in read_sockets(port, "local")
            if (plain_address(s.remote_addr), s.remote_port) in mine
            and s.state not in ("TIME_WAIT", "LISTEN")
        ]
        if not live:
            return
        time.sleep(0.01)


def _count_into(report: Report, port: int, clients: IdleClients, addr: str | None = None) -> None:
    at_restart, from_clients, client_side = settle_time_wait(
        port, clients.endpoints, clients.by_server or len(clients.endpoints), addr
    )
    report.time_wait_at_restart = at_restart
    report.time_wait_from_clients = from_clients
    report.client_side_time_wait = client_side


def run_managed(args: argparse.Namespace, report: Report) -> None:
    """Run --restart-cmd against --target, a server run by something else; measure outside."""
    host, port = args.target
    timeout: float = args.timeout
    family, sockaddr = resolve(host, port)
    local = is_local_address(family, sockaddr)
    report.details["target_is_local"] = local
    report.details["startup_ms"] = round(interpreter_startup_ms(), 1)
    clients = IdleClients(family, sockaddr, args.clients, min(timeout, 5.0))
    prober: Prober | None = None
    proc: subprocess.Popen[str] | None = None
    try:
        if args.close_first == "client":
            clients.close_all()
            if local:
                _wait_sessions_gone(port, clients.endpoints, timeout)
            else:
                time.sleep(SETTLE)
        if local:
            report.time_wait_before = len(read_sockets(port, "local", states=("TIME_WAIT",)))
        prober = Prober(family, sockaddr)
        prober.start()
        t_stop = time.monotonic()
        deadline = t_stop + timeout
        # The operator's own command line, run through the shell as documented.
        proc = subprocess.Popen(  # noqa: S602
            args.restart_cmd,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
        reader.start()
        # The old server closes our clients (its stop), or the command ends without doing so.
        while clients.open and time.monotonic() < deadline:
            clients.poll(0.002)
            if proc.poll() is not None and clients.open:
                # The command is done; a server that closes nothing gets one more second.
                end = min(deadline, time.monotonic() + 1.0)
                while clients.open and time.monotonic() < end:
                    clients.poll(0.01)
                break
        report.closed_by_server, report.reset_by_server = clients.by_server, clients.resets
        t_gone = clients.last_close if not clients.open and clients.last_close else None
        if t_gone is not None:
            report.stop_ms = (t_gone - t_stop) * 1000
        # A restart command that failed will not bring the server back: stop waiting.
        t_up = wait_for_echo(family, sockaddr, deadline, lambda: bool(proc.poll()))
        if local:
            _count_into(report, port, clients)
        else:
            report.details["time_wait_unreadable"] = (
                f"{format_address(host, port)} is not an address of this host, so its "
                "TIME_WAIT sockets cannot be read from here: run restart-check on the "
                "server's host"
            )
        try:
            rc = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
        reader.join(1)
        report.restart_output = "".join(output).strip()[-2000:]
        report.details["restart_cmd_status"] = rc
        prober.stop()
        since = t_gone if t_gone is not None else t_stop
        first_ok = prober.first_ok(since)
        if t_up is not None:
            report.rebind = "ok"
            listened = min(t for t in (first_ok, t_up) if t is not None)
            report.rebind_ms = max(0.0, listened - since) * 1000
            report.restart_ms = (t_up - t_stop) * 1000
        elif "already in use" in report.restart_output:
            report.rebind = "EADDRINUSE"
        else:
            report.rebind = "failed"
        report.refused_during_restart = prober.count(t_stop, t_up or float("inf"), "refused")
        report.probe_attempts = prober.count(t_stop, t_up or float("inf"))
    finally:
        if prober is not None:
            prober.stop()
        clients.close()
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)


# --- verdict and output -----------------------------------------------------------------------
def judge(report: Report) -> int:
    """Fill in verdict and reason; return the exit status (0 pass, 1 fail, 3 invalid)."""
    report.expected = (
        f"bind within {BIND_WITHIN:g} s (+ start-up)"
        if report.reuseaddr
        else "EADDRINUSE (no SO_REUSEADDR)"
    )
    tw = report.time_wait_at_restart
    # Only TIME_WAIT left by this run's own sessions counts: older sockets on the port (an
    # earlier run, or an outgoing connection that once had this port) prove nothing about it.
    ours = report.time_wait_from_clients
    if not ours:
        report.verdict = "invalid"
        older = f" ({tw} older one(s) on the port do not count)" if tw else ""
        if tw is None:
            why = report.details.get("time_wait_unreadable", "TIME_WAIT could not be read")
        elif report.close_first == "client":
            why = (
                "the clients closed first, so TIME_WAIT landed on the clients' ports "
                f"({report.client_side_time_wait or 0} there), not on the server's"
            )
        elif report.reset_by_server:
            why = (
                f"the server reset {report.reset_by_server} connection(s) instead of closing "
                "them in order (a reset leaves no TIME_WAIT)"
            )
        elif report.closed_by_server == 0:
            why = (
                "the server never closed the idle connections (did the restart stop it? "
                "is the target in another network namespace, behind a proxy?)"
            )
        else:
            why = (
                "none was visible here: the server's sockets may live in another network "
                "namespace (a container or a proxy in front of it)"
            )
        report.reason = (
            f"no TIME_WAIT from this run's sessions on the server's port at the restart{older}: "
            f"{why}; the run proves nothing"
        )
        return EXIT_INVALID_RUN
    lingering = f"{tw} TIME_WAIT socket(s) lingered on the server's port"
    if tw != ours:
        lingering += f" ({ours} from this run's sessions)"
    if report.reuseaddr:
        allowed = BIND_WITHIN * 1000 + float(report.details.get("startup_ms", 0.0))
        report.details["rebind_allowed_ms"] = round(allowed, 1)
        quick = report.rebind_ms is not None and report.rebind_ms <= allowed
        if report.rebind == "ok" and quick and report.restart_ms is not None:
            report.verdict = "pass"
            report.reason = (
                f"{lingering}, and the restart with SO_REUSEADDR bound "
                f"{report.rebind_ms or 0:.0f} ms after the old server was gone"
            )
            return EXIT_OK
        report.verdict = "fail"
        if report.rebind != "ok":
            report.reason = f"{lingering}; expected a bind, got {report.rebind}"
        elif not quick:
            report.reason = (
                f"{lingering}; bound only after {report.rebind_ms or 0:.0f} ms "
                f"(allowed: {allowed:.0f} ms)"
            )
        else:
            report.reason = f"{lingering}; it bound but never echoed"
        return EXIT_FAILED
    if report.rebind == "EADDRINUSE":
        report.verdict = "pass"
        report.reason = f"{lingering}, and the restart without SO_REUSEADDR got EADDRINUSE"
        return EXIT_OK
    report.verdict = "fail"
    report.reason = f"{lingering}; expected EADDRINUSE without SO_REUSEADDR, got {report.rebind}"
    return EXIT_FAILED


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def render_rows(r: Report) -> list[tuple[str, str]]:
    """The report as (label, value) rows."""
    tw = "cannot be read here" if r.time_wait_at_restart is None else str(r.time_wait_at_restart)
    if r.time_wait_from_clients is not None:
        tw += f" on the server's port ({r.time_wait_from_clients} from these clients"
        tw += f", {r.client_side_time_wait} on the clients' ports)"
    closed = f"{r.clients} idle; {r.closed_by_server} closed by the server"
    if r.reset_by_server:
        closed += f", {r.reset_by_server} reset"
    if r.close_first == "client":
        closed = f"{r.clients} idle; closed by the clients before the stop"
    return [
        ("target", f"{r.target} ({r.mode})"),
        ("restart", ("with" if r.reuseaddr else "without") + " SO_REUSEADDR"),
        ("clients", closed),
        ("TIME_WAIT at restart", tw),
        ("rebind", r.rebind + (f" after {_ms(r.rebind_ms)}" if r.rebind_ms is not None else "")),
        ("stop took", _ms(r.stop_ms)),
        ("echo again after", _ms(r.restart_ms) + " from the stop"),
        ("refused meanwhile", f"{r.refused_during_restart} of {r.probe_attempts} probe connects"),
        ("expected", r.expected),
        ("verdict", f"{r.verdict.upper()}: {r.reason}"),
    ]


def print_report(r: Report, out: TextIO) -> None:
    """A short table: rich on a terminal when rich is installed, aligned text otherwise."""
    colour = {"pass": "bold green", "fail": "bold red"}.get(r.verdict, "bold yellow")
    print_rows("echolab restart-check", render_rows(r), out, {"verdict": colour})


def run(args: argparse.Namespace) -> int:
    """`echolab restart-check`: exit 0 pass, 1 fail, 3 invalid run (no server-side TIME_WAIT)."""
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
    target = format_address(*args.target) if managed else format_address(args.host, args.port)
    report = Report(
        mode="managed" if managed else "local",
        target=target,
        reuseaddr=not args.no_reuseaddr,
        close_first=args.close_first,
        clients=args.clients,
    )
    if managed:
        run_managed(args, report)
    else:
        run_local(args, report)
    status = judge(report)
    if args.json_file is not None:
        write_json(report.as_json(), args.json_file)
    print_report(report, sys.stderr if args.json_file == "-" else sys.stdout)
    return status
