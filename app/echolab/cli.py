"""The command line: one subcommand per use, each option also read from ECHOLAB_<OPTION>.

One validation path: every option has bounds, checked by the same function for a flag and for
its variable, so a bad value is a usage error (exit 2, one line naming the subcommand) either
way. A subcommand reads only its own variables, and only where its flags leave a value unset
(a flag wins over its variable). `--json` destinations are checked before the run.

Imports stay inside the subcommands: `serve` forks once per client, and every module the
parent has loaded is paid again on every fork (see echolab.boot).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from echolab import __version__
from echolab.errors import EXIT_USAGE, EcholabError

TYPE_CHECKING = False  # `typing` is not imported at run time: `serve` forks, keep it lean
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

ENV_PREFIX = "ECHOLAB_"

# Bounds, each with its reason (README, "Options and their bounds", lists them).
MAX_SECONDS = 2_147_483.0  # 2**31-1 ms (24.8 days): the longest timeout epoll_wait(2) and
# poll(2) take; SO_RCVTIMEO, select() and socket timeouts take longer ones
MIN_SECONDS = 0.001  # a duration that is not 0: epoll and poll count milliseconds
MAX_BACKLOG = 2**31 - 1  # listen(2) takes an int (the kernel caps it at net.core.somaxconn)
MAX_CHILDREN = 4_194_304  # PID_MAX_LIMIT: a 64-bit kernel never holds more processes
MAX_CLIENTS = 65_535  # each connection to the one target needs a local port of its own
MAX_PAYLOAD = 1 << 30  # payloads are held in memory (probe: twice; load: once per worker)
MAX_WORKERS = 1024  # worker processes, a Python interpreter each; more than CPUs only share
MAX_CONNECTIONS = 10**12  # over 11 days at a million connections per second
MAX_RATE = 10_000_000  # starts per second: a hundred times what loopback carries here
MAX_SEED = 2**64 - 1  # a 64-bit seed, as the JSON records it
MAX_HOST = 253  # characters in a DNS name (RFC 1035), labels of at most 63 (IDNA checks)


def integer(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """A parser for an integer from `low` to `high` (`what` names it in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{what or 'value'} out of range {low}-{high}: {value}"
            )
        return value

    return parse


port_number = integer(0, 65535, "port")  # serve, restart-check: 0 asks the kernel for one
target_port = integer(1, 65535, "port")  # where a server listens: 0 never does
positive_int = integer(1, MAX_BACKLOG)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(text: str) -> float:
    raw = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if raw.endswith(unit):
            number, scale = raw[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = raw, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10s, 500ms, 2m)") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a valid duration: {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too long: at most {MAX_SECONDS:.0f} s (24.8 days, the longest "
            "wait epoll takes)"
        )
    return value


def duration(text: str) -> float:
    """Seconds from '10', '2.5', '10s', '500ms', '2m', '1h' or '1d': 0, or 1 ms to 24.8 days."""
    value = _seconds(text)
    if 0 < value < MIN_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: 0, or at least 1 ms")
    return value


def timeout(text: str) -> float:
    """A duration that cannot be 0: 1 ms to 24.8 days."""
    value = _seconds(text)
    if value < MIN_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: at least 1 ms")
    return value


def host_name(text: str) -> str:
    """A host name or address that can be resolved: IDNA-encodable, labels of at most 63
    characters, no NUL. The empty name (serve: every address) passes."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a host name cannot hold a NUL byte: {text!r}")
    if len(text) > MAX_HOST:
        raise argparse.ArgumentTypeError(
            f"host name longer than {MAX_HOST} characters: {text[:40]!r}..."
        )
    try:
        text.encode("idna")  # what socket.getaddrinfo() does with a name
    except UnicodeError as exc:
        reason = str(exc.__cause__ or exc).removeprefix("UnicodeError: ")
        raise argparse.ArgumentTypeError(
            f"cannot encode {text!r} as a host name: {reason}"
        ) from None
    return text


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse HOST:PORT, [V6]:PORT or V6-literal:PORT into (host, port), port 1 to 65535."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"expected [HOST]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host_name(host), target_port(port_text)


def output_path(text: str) -> str | None:
    """A file to write, '-' for stdout; empty means none (what Compose passes for `${VAR:-}`)."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL byte: {text!r}")
    return text or None


def shell_command(text: str) -> str:
    """A command line for the shell: not blank, no NUL byte."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a command cannot hold a NUL byte: {text!r}")
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty command")
    return text


def error_rate(text: str) -> float:
    """A fraction between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {value}")
    return value


def workers(text: str) -> int:
    """'auto' (the CPU count) or 1 to MAX_WORKERS."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return integer(1, MAX_WORKERS, "workers")(text)


def one_of(*names: str) -> Callable[[str], str]:
    """A parser for one of `names`, in any case (`INFO` is `info`)."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in names:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(names)}: {text!r}")
        return value

    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


class CommandParser(argparse.ArgumentParser):
    """A parser whose errors are one line naming the program, and whose options fill in
    from ECHOLAB_<OPTION> where the flags left them unset, through the same validation."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._env: dict[argparse.Action, str] = {}  # option -> its variable
        self._env_required: set[argparse.Action] = set()

    def error(self, message: str) -> Any:  # NoReturn, as argparse declares it
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def option(
        self, *flags: str, group: Any = None, required: bool = False, **kw: Any
    ) -> argparse.Action:
        """Add an option read from the command line or from ECHOLAB_<DEST>."""
        action = (group or self).add_argument(*flags, **kw)
        var = ENV_PREFIX + action.dest.upper()
        self._env[action] = var
        if required:
            self._env_required.add(action)
        shown = kw.get("default")
        text = action.help or ""
        if shown not in (None, False):
            text += f" (default: {getattr(shown, 'label', shown)})"
        action.help = f"{text}; env {var}".lstrip("; ")
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        defaults = {action: action.default for action in self._env}
        for action in self._env_required:
            action.required = self._env[action] not in os.environ
        for action in self._env:
            action.default = _UNSET
        try:
            ns, rest = super().parse_known_args(args, namespace)
        finally:
            for action, default in defaults.items():
                action.default = default
        self._fill_from_environment(ns, defaults)
        return ns, rest

    def _fill_from_environment(
        self, ns: argparse.Namespace, defaults: dict[argparse.Action, Any]
    ) -> None:
        """Values the flags left unset: from the variable when set, else the default."""
        flagged = {a for a in self._env if getattr(ns, a.dest, None) is not _UNSET}
        for group in self._mutually_exclusive_groups:
            members = [a for a in group._group_actions if a in self._env]
            from_env = [self._env[a] for a in members if self._raw(a, defaults) is not None]
            if any(a in flagged for a in members):
                flagged.update(members)  # a flag of the group wins over every variable in it
            elif len(from_env) > 1:
                self.error(f"{' and '.join(from_env)} exclude each other: set one")
        for action in self._env:
            if getattr(ns, action.dest, None) is not _UNSET:
                continue
            raw = self._raw(action, defaults) if action not in flagged else None
            if raw is None:
                value = defaults[action]
                if isinstance(value, str) and action.type is not None:
                    value = action.type(value)  # type: ignore[operator]
            else:
                value = self._from_environment(action, raw)
            setattr(ns, action.dest, value)

    def _raw(self, action: argparse.Action, defaults: dict[argparse.Action, Any]) -> str | None:
        """The option's variable, or None when it is unset — or empty for an option that is
        off by default (`--rate`, `--max-p99`): what Compose passes for `${VAR:-}`, so a file
        can name every variable and leave some empty. An option with a default value takes an
        empty variable as a value, and its validation says whether it may be empty."""
        raw = os.environ.get(self._env[action])
        if raw is not None and not raw.strip() and defaults[action] is None:
            return None
        return raw

    def _from_environment(self, action: argparse.Action, raw: str) -> Any:
        var = self._env[action]
        if isinstance(action, argparse._StoreTrueAction):
            if raw.strip().lower() not in _TRUE | _FALSE:
                self.error(f"{var}={raw!r}: expected true or false")
            return raw.strip().lower() in _TRUE
        try:
            value = action.type(raw) if action.type is not None else raw  # type: ignore[operator]
        except argparse.ArgumentTypeError as exc:
            self.error(f"{var}={raw!r}: {exc}")
        if action.choices is not None and value not in action.choices:
            self.error(f"{var}={raw!r}: expected one of {', '.join(map(str, action.choices))}")
        return value


class _Auto(str):
    label = "auto: the CPU count"


def _add_serve(sub: Any) -> None:
    p = _command(sub, "serve", raw=True)
    p.option("--host", type=host_name, default="0.0.0.0", help="address to listen on; '::' "
             "listens dual-stack")  # fmt: skip
    p.option("--port", type=port_number, default=7007, help="TCP port, 0-65535; 0 picks a free one")
    p.option("--backlog", type=positive_int, default=128, help="listen() backlog")
    p.option(
        "--no-reuseaddr",
        action="store_true",
        default=False,
        help="leave SO_REUSEADDR off (the lab's negative control)",
    )
    p.option("--reuseport", action="store_true", default=False,
             help="set SO_REUSEPORT: another server may listen beside this one")  # fmt: skip
    p.option("--max-children", type=integer(1, MAX_CHILDREN), default=512,
             help="stop accepting at this many live children")  # fmt: skip
    p.option(
        "--idle-timeout",
        type=duration,
        default=300.0,
        help="disconnect a client silent this long (0: never)",
    )
    p.option(
        "--grace",
        type=duration,
        default=5.0,
        help="on SIGTERM, let sessions finish this long before ending them",
    )
    levels = ("debug", "info", "warning", "error")
    p.option("--log-level", type=one_of(*levels), default="info", metavar="{" + ",".join(levels)
             + "}", help="log threshold")  # fmt: skip
    p.option("--log-format", type=one_of("text", "json"), default="text",
             metavar="{text,json}", help="log line format")  # fmt: skip


SERVE_DESCRIPTION = """\
The forking echo server: the parent listens and accepts, a child per client.

signals (to the server's PID; the same in a container as PID 1):
  SIGTERM, SIGINT  stop: close the listeners, let sessions finish for --grace seconds, then
                   close them from the server's side (FIN), SIGKILL a second later; each
                   further one ends the current wait at once
  SIGQUIT          stop now: the same without the grace
  SIGHUP           reload in place: same PID and listeners, the installed code re-executed
                   with the same options, live children adopted; if the installed code does
                   not start, one error line and the old code goes on serving
  SIGUSR1          log one status line (children, accepted, uptime, generation)
  SIGCHLD          reap exited children
  SIGTTIN, SIGTTOU ignored
  SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGSYS  default action (a crash, as for a real fault)
  any other        ignored, with a log line

exit status: 0 stopped by a signal; 2 usage; 4 permission denied; 5 other OS error at
start-up; 6 address in use."""


def _add_probe(sub: Any) -> None:
    p = _command(sub, "probe")
    p.option("--target", type=parse_hostport, default="127.0.0.1:7007", help="server as HOST:PORT")
    p.option("--timeout", type=timeout, default=2.0, help="give up after this long")
    p.option("--payload", type=integer(1, MAX_PAYLOAD), default=32, help="bytes to send")
    p.option("--quiet", "-q", action="store_true", default=False, help="print nothing")


def _add_load(sub: Any) -> None:
    p = _command(sub, "load")
    p.option("--target", type=parse_hostport, required=True, help="server as HOST:PORT")
    p.option(
        "--mode",
        type=one_of("rate", "stream", "hold"),
        default="rate",
        metavar="{rate,stream,hold}",
        help="rate: short connections; stream: long two-way streams; hold: idle connections",
    )
    p.option(
        "--clients",
        type=integer(1, MAX_CLIENTS),
        default=64,
        help="connections in flight (rate mode with --rate: at most this many open)",
    )
    group = p.add_mutually_exclusive_group()
    p.option(
        "--connections",
        group=group,
        type=integer(1, MAX_CONNECTIONS),
        help="rate mode: stop after this many connections",
    )
    p.option("--duration", group=group, type=timeout, help="run this long (default 10s)")
    p.option(
        "--payload",
        type=integer(1, MAX_PAYLOAD),
        default=64,
        help="bytes per connection (rate mode) or round trip (hold, --rate)",
    )
    p.option("--workers", type=workers, default=_Auto("auto"), help="worker processes")
    _json_option(p, "write the figures as JSON ('-': stdout)")
    p.option("--no-progress", action="store_true", default=False, help="no live progress")
    p.option("--seed", type=integer(0, MAX_SEED), help="seed for payloads")
    p.option(
        "--max-error-rate",
        type=error_rate,
        default=0.0,
        help="fail when the error fraction exceeds this",
    )
    p.option("--timeout", type=timeout, default=5.0, help="per-operation timeout")
    _add_load_open_loop(p)


def milliseconds(text: str) -> float:
    """A latency limit in seconds: a bare number is milliseconds ('50'), or a duration ('0.2s')."""
    bare = text.strip().replace(".", "", 1).isdigit()
    return timeout(f"{text.strip()}ms" if bare else text)


def _add_load_open_loop(p: CommandParser) -> None:
    """load's open loop, its latency thresholds and its latency outputs."""
    p.option(
        "--rate",
        type=integer(1, MAX_RATE, "rate"),
        metavar="N",
        help="open loop: start N connections (rate mode) or round trips (stream, hold) a "
        "second on a fixed schedule, each timed from its scheduled start (default: closed "
        "loop, the next start when one ends)",
    )
    p.option("--max-p99", type=milliseconds, metavar="MS",
             help="fail when the p99 latency exceeds MS milliseconds")  # fmt: skip
    p.option("--max-p999", type=milliseconds, metavar="MS",
             help="fail when the p99.9 latency exceeds MS milliseconds")  # fmt: skip
    p.option("--latency-csv", type=output_path, metavar="FILE",
             help="write latency percentiles per --interval as CSV")  # fmt: skip
    p.option(
        "--plot",
        type=output_path,
        metavar="FILE",
        help="draw latency over time and the percentile spectrum (.svg or .png; needs the "
        "'plot' extra: pip install 'echolab[plot]')",
    )
    p.option("--interval", type=timeout, default=1.0,
             help="the step of --latency-csv and --plot, and of the live p99")  # fmt: skip


def _add_restart_check(sub: Any) -> None:
    p = _command(sub, "restart-check")
    p.option("--host", type=host_name, default="127.0.0.1", help="address of the server")
    p.option("--port", type=port_number, default=7007, help="the server's port (0: a free one)")
    p.option("--clients", type=integer(1, MAX_CLIENTS), default=5,
             help="idle clients connected at the stop")  # fmt: skip
    p.option(
        "--no-reuseaddr",
        action="store_true",
        default=False,
        help="restart without SO_REUSEADDR (expected: EADDRINUSE)",
    )
    p.option(
        "--close-first",
        type=one_of("server", "client"),
        default="server",
        metavar="{server,client}",
        help="who closes the idle connections: the stopped server (the lesson) or the "
        "clients, before the stop (no server-side TIME_WAIT: the run is invalid, exit 3)",
    )
    p.option(
        "--restart-cmd",
        metavar="CMD",
        help="managed mode: command that restarts a server run by something else",
    )
    p.option("--target", type=parse_hostport, help="managed mode: the server as HOST:PORT")
    p.option(
        "--log-cmd",
        type=shell_command,
        metavar="CMD",
        help="managed mode, --strategy reload: command that prints the server's log (e.g. "
        "journalctl --unit UNIT --output cat); the reload must show a new generation there",
    )
    p.option("--timeout", type=timeout, default=10.0, help="how long the restart may take")
    _json_option(p, "write the result as JSON ('-': stdout)")
    _add_restart_strategies(p)


def _add_restart_strategies(p: CommandParser) -> None:
    """restart-check's strategies, comparison, timeline picture and opt-in latency limit."""
    p.option(
        "--strategy",
        type=one_of("stop-start", "reuseport", "socket-activation", "reload"),
        default="stop-start",
        help="how the server is restarted: stop-start, reuseport, socket-activation or reload",
    )
    p.option(
        "--compare",
        action="store_true",
        default=False,
        help="run every strategy available here and print one table",
    )
    p.option(
        "--queued",
        type=integer(0, MAX_CLIENTS, "queued clients"),
        default=4,
        help="clients left waiting in the old server's accept queue (local servers: the old "
        "one is filled to its child cap by the held clients)",
    )
    p.option(
        "--migrate-req",
        type=one_of("on", "off"),
        default=None,
        help="reuseport: set net.ipv4.tcp_migrate_req (on or off) in a network namespace of "
        "our own (root)",
    )
    p.option(
        "--rebind-limit",
        type=timeout,
        default=None,
        help="fail a stop-start that binds later than this after the old server is gone "
        "(off: times are reported, never judged)",
    )
    p.option("--plot", type=output_path, metavar="FILE",
             help="draw the timeline (.svg, .png, .pdf)")  # fmt: skip


def _add_hold(sub: Any) -> None:
    p = _command(sub, "hold")
    p.option("--target", type=parse_hostport, required=True, help="server as HOST:PORT")
    p.option(
        "--clients", type=integer(1, MAX_CLIENTS, "clients"), default=8, help="connections to hold"
    )
    p.option("--timeout", type=timeout, default=5.0, help="for each connect and its echo")
    p.option("--duration", type=duration, default=0.0, help="give up after this long (0: never)")


def _add_sockets(sub: Any) -> None:
    p = _command(sub, "sockets")
    p.option("--port", type=target_port, required=True, help="local port to show")
    _json_option(p, "write the sockets as JSON ('-': stdout)")
    p.option(
        "--watch",
        action="store_true",
        default=False,
        help="redraw until Ctrl-C (a line per interval when not on a terminal)",
    )
    p.option("--interval", type=timeout, default=0.5, help="--watch: seconds between readings")


# Each subcommand: its one line in the menu, and the description its --help opens with.
ABOUT = {
    "serve": (
        "run the forking echo server",
        SERVE_DESCRIPTION,
    ),
    "probe": (
        "one echo round trip; exit 0 when it came back intact",
        "Connect, send a random payload, read it back, compare. For health checks.",
    ),
    "load": (
        "drive a server hard and verify every echoed byte",
        "Load generator: rate, stream or hold; every byte sent is checked on return.",
    ),
    "restart-check": (
        "restart a server under TIME_WAIT and prove whether it rebinds",
        (
            "Stop a server while clients are connected, count the server-side TIME_WAIT "
            "sockets on its port, restart at once and measure the rebind."
        ),
    ),
    "hold": (
        "hold idle clients open until the server closes them",
        (
            "Connect N clients, check one echo each, wait; close each as soon as the server's "
            "FIN arrives (so TIME_WAIT lands on the server's port), never reconnect."
        ),
    ),
    "sockets": (
        "TCP sockets on a port by state, from /proc/net/tcp and tcp6",
        "The TCP sockets on a port by state (TIME_WAIT with its remaining time).",
    ),
}


def _command(sub: Any, name: str, raw: bool = False) -> CommandParser:
    """A subcommand's parser: its one-line help in the menu, its description in --help."""
    kw: dict[str, Any] = {"help": ABOUT[name][0], "description": ABOUT[name][1]}
    if raw:  # a description laid out by hand (serve's signal table)
        kw["formatter_class"] = argparse.RawDescriptionHelpFormatter
    parser: CommandParser = sub.add_parser(name, **kw)
    return parser


def _json_option(p: CommandParser, text: str) -> None:
    p.option("--json", dest="json_file", type=output_path, metavar="FILE", help=text)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (the environment is read when it parses)."""
    parser = CommandParser(
        prog="echolab",
        description="A lab for the forking TCP echo server and SO_REUSEADDR under TIME_WAIT.",
    )
    parser.add_argument("--version", action="version", version=f"echolab {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    _add_serve(sub)
    _add_probe(sub)
    _add_load(sub)
    _add_restart_check(sub)
    _add_sockets(sub)
    _add_hold(sub)
    return parser


# The module behind each subcommand (its `run(args) -> int`).
COMMANDS = {
    "serve": "boot",
    "probe": "probe",
    "load": "load",
    "restart-check": "restartcheck",
    "hold": "hold",
    "sockets": "tcpstate",
}


def _run(args: argparse.Namespace) -> int:
    command: str = args.command
    json_file = getattr(args, "json_file", None)
    if json_file not in (None, "-"):
        from echolab.report import check_writable

        check_writable(json_file)  # before the run, not after it
    # Each subcommand's module is imported only when it runs: `serve` forks once per client,
    # and every module the parent has loaded is paid again on every fork.
    from importlib import import_module

    module = import_module(f"echolab.{COMMANDS[command]}")
    status: int = module.run(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `echolab` and `python -m echolab`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except EcholabError as exc:
        print(f"echolab {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"echolab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`echolab sockets | head`): not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
