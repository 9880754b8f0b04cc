"""The command line: one subcommand per use, each option also read from ECHOLAB_<OPTION>.

Imports stay inside the subcommands: `serve` forks once per client, and every module the
parent has loaded is paid again on every fork (shared/DESIGN.md: 0.53 ms vs 1.7 ms).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from echolab import __version__
from echolab.errors import EcholabError

TYPE_CHECKING = False  # `typing` is not imported at run time: `serve` forks, keep it lean
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

ENV_PREFIX = "ECHOLAB_"


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse HOST:PORT, [V6]:PORT or V6-literal:PORT into (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"expected [HOST]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, port_number(port_text)


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0 asks the kernel for a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from '10', '2.5', '10s', '500ms', '2m' or '1h'; never negative."""
    raw = text.strip().lower()
    for unit in ("ms", "s", "m", "h"):
        if raw.endswith(unit):
            number, scale = raw[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = raw, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 10s, 500ms, 2m)") from None
    if value < 0 or math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"not a valid duration: {text!r}")
    return value


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
    """'auto' (the CPU count) or a positive integer."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return positive_int(text)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _EnvDefaults:
    """Collects ECHOLAB_<OPTION> defaults and reports a bad one as a usage error."""

    def __init__(self, parser: argparse.ArgumentParser, target: Any = None) -> None:
        self.parser = parser
        self.target = parser if target is None else target

    def add(self, *flags: str, type: Callable[[str], Any] | None = None, **kw: Any) -> None:
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        var = ENV_PREFIX + dest.upper()
        action = kw.get("action")
        raw = os.environ.get(var)
        if raw is not None:
            if action == "store_true":
                if raw.strip().lower() not in _TRUE | _FALSE:
                    self.parser.error(f"{var}={raw!r}: expected true or false")
                kw["default"] = raw.strip().lower() in _TRUE
            else:
                try:
                    kw["default"] = type(raw) if type is not None else raw
                except argparse.ArgumentTypeError as exc:
                    self.parser.error(f"{var}={raw!r}: {exc}")
        if action is None and type is not None:
            kw["type"] = type
        help_text = kw.get("help", "")
        if "default" in kw and kw["default"] not in (None, False) and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        kw["help"] = f"{help_text}; env {var}".lstrip("; ")
        self.target.add_argument(*flags, **kw)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the forking echo server",
        description="The forking echo server: the parent listens and accepts, a child per client.",
    )
    e = _EnvDefaults(p)
    e.add("--host", default="0.0.0.0", help="address to listen on; '::' listens dual-stack")
    e.add("--port", type=port_number, default=7007, help="TCP port; 0 picks a free one")
    e.add("--backlog", type=positive_int, default=128, help="listen() backlog")
    e.add(
        "--no-reuseaddr",
        action="store_true",
        default=False,
        help="leave SO_REUSEADDR off (the lab's negative control)",
    )
    e.add(
        "--max-children",
        type=positive_int,
        default=512,
        help="stop accepting at this many live children",
    )
    e.add(
        "--idle-timeout",
        type=duration,
        default=300.0,
        help="disconnect a client silent this long (0: never)",
    )
    e.add(
        "--grace",
        type=duration,
        default=5.0,
        help="on SIGTERM, let sessions finish this long before ending them",
    )
    e.add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log threshold",
    )
    e.add("--log-format", default="text", choices=["text", "json"], help="log line format")


def _add_probe(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="one echo round trip; exit 0 when it came back intact",
        description="Connect, send a random payload, read it back, compare. For health checks.",
    )
    e = _EnvDefaults(p)
    e.add(
        "--target",
        type=parse_hostport,
        default=parse_hostport("127.0.0.1:7007"),
        help="server as HOST:PORT",
    )
    e.add("--timeout", type=duration, default=2.0, help="give up after this long")
    e.add("--payload", type=positive_int, default=32, help="bytes to send")
    e.add("--quiet", "-q", action="store_true", default=False, help="print nothing")


def _add_load(sub: Any) -> None:
    p = sub.add_parser(
        "load",
        help="drive a server hard and verify every echoed byte",
        description="Load generator: rate, stream or hold; every byte sent is checked on return.",
    )
    e = _EnvDefaults(p)
    e.add(
        "--target",
        type=parse_hostport,
        default=None,
        required="ECHOLAB_TARGET" not in os.environ,
        help="server as HOST:PORT",
    )
    e.add(
        "--mode",
        default="rate",
        choices=["rate", "stream", "hold"],
        help="rate: short connections; stream: long two-way streams; hold: idle connections",
    )
    e.add(
        "--clients",
        type=positive_int,
        default=64,
        help="connections in flight (rate mode with --rate: at most this many open)",
    )
    group = p.add_mutually_exclusive_group()
    ge = _EnvDefaults(p, group)
    ge.add(
        "--connections",
        type=positive_int,
        default=None,
        help="rate mode: stop after this many connections",
    )
    ge.add("--duration", type=duration, default=None, help="run this long (default 10s)")
    e.add(
        "--payload",
        type=positive_int,
        default=64,
        help="bytes per connection (rate mode) or round trip (hold, --rate)",
    )
    e.add("--workers", type=workers, default="auto", help="worker processes ('auto': CPU count)")
    e.add(
        "--json",
        dest="json_file",
        default=None,
        metavar="FILE",
        help="write the figures as JSON ('-': stdout)",
    )
    e.add("--no-progress", action="store_true", default=False, help="no live progress")
    e.add("--seed", type=non_negative_int, default=None, help="seed for payloads")
    e.add(
        "--max-error-rate",
        type=error_rate,
        default=0.0,
        help="fail when the error fraction exceeds this",
    )
    e.add("--timeout", type=duration, default=5.0, help="per-operation timeout")
    e.add(
        "--rate",
        type=positive_int,
        default=None,
        metavar="N",
        help="open loop: start N connections (rate mode) or round trips (stream, hold) a "
        "second on a fixed schedule, each timed from its scheduled start (default: closed "
        "loop, the next start when one ends)",
    )

    def milliseconds(text: str) -> float:
        """A latency limit: a bare number is milliseconds ('50'), or a duration ('0.2s')."""
        bare = text.strip().replace(".", "", 1).isdigit()
        return duration(f"{text.strip()}ms" if bare else text)

    e.add(
        "--max-p99",
        type=milliseconds,
        default=None,
        metavar="MS",
        help="fail when the p99 latency exceeds MS milliseconds",
    )
    e.add(
        "--max-p999",
        type=milliseconds,
        default=None,
        metavar="MS",
        help="fail when the p99.9 latency exceeds MS milliseconds",
    )
    e.add(
        "--latency-csv",
        default=None,
        metavar="FILE",
        help="write latency percentiles per --interval as CSV",
    )
    e.add(
        "--plot",
        default=None,
        metavar="FILE",
        help="draw latency over time and the percentile spectrum (.svg or .png; needs the "
        "'plot' extra: pip install 'echolab[plot]')",
    )
    e.add(
        "--interval",
        type=duration,
        default=1.0,
        help="the step of --latency-csv and --plot, and of the live p99",
    )


def _add_restart_check(sub: Any) -> None:
    p = sub.add_parser(
        "restart-check",
        help="restart a server under TIME_WAIT and prove whether it rebinds",
        description=(
            "Stop a server while clients are connected, count the server-side TIME_WAIT "
            "sockets on its port, restart at once and measure the rebind."
        ),
    )
    e = _EnvDefaults(p)
    e.add("--host", default="127.0.0.1", help="address of the server")
    e.add("--port", type=port_number, default=7007, help="the server's port")
    e.add("--clients", type=positive_int, default=5, help="idle clients connected at the stop")
    e.add(
        "--no-reuseaddr",
        action="store_true",
        default=False,
        help="restart without SO_REUSEADDR (expected: EADDRINUSE)",
    )
    e.add(
        "--close-first",
        default="server",
        choices=["server", "client"],
        help="who closes the idle connections: the stopped server (the lesson) or the "
        "clients, before the stop (no server-side TIME_WAIT: the run is invalid, exit 3)",
    )
    e.add(
        "--restart-cmd",
        default=None,
        metavar="CMD",
        help="managed mode: command that restarts a server run by something else",
    )
    e.add(
        "--target", type=parse_hostport, default=None, help="managed mode: the server as HOST:PORT"
    )
    e.add("--timeout", type=duration, default=10.0, help="how long the restart may take")
    e.add(
        "--json",
        dest="json_file",
        default=None,
        metavar="FILE",
        help="write the result as JSON ('-': stdout)",
    )


def _add_sockets(sub: Any) -> None:
    p = sub.add_parser(
        "sockets",
        help="TCP sockets on a port by state, from /proc/net/tcp and tcp6",
        description="The TCP sockets on a port by state (TIME_WAIT with its remaining time).",
    )
    e = _EnvDefaults(p)
    e.add(
        "--port",
        type=port_number,
        required="ECHOLAB_PORT" not in os.environ,
        default=None,
        help="local port to show",
    )
    e.add(
        "--json",
        dest="json_file",
        default=None,
        metavar="FILE",
        help="write the sockets as JSON ('-': stdout)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built on each call (the environment is read now)."""
    parser = argparse.ArgumentParser(
        prog="echolab",
        description="A lab for the forking TCP echo server and SO_REUSEADDR under TIME_WAIT.",
    )
    parser.add_argument("--version", action="version", version=f"echolab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(sub)
    _add_probe(sub)
    _add_load(sub)
    _add_restart_check(sub)
    _add_sockets(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "serve":
        from echolab import server

        return server.run(args)
    if command == "probe":
        from echolab import probe

        return probe.run(args)
    if command == "load":
        from echolab import load

        return load.run(args)
    if command == "restart-check":
        from echolab import restartcheck

        return restartcheck.run(args)
    if command == "sockets":
        from echolab import tcpstate

        return tcpstate.run(args)
    raise AssertionError(command)


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
