"""How `echolab serve` becomes its lean serving process, and the one place a server is built.

run() gets the CLI's parsed options: it opens (or inherits) the listeners, so their errors
are reported here with their exit codes, then replaces itself (same PID: systemd and PID 1
see no change) with `python -I -S -c BOOT key=value...`. That process imports C modules and
the server's own modules only (boot, server, session, logs, netaddr, ready): the CLI process
has argparse, socket, enum and re loaded, and a parent that had them would pay for them on
every fork (measured: 700 vs 490 us of CPU per fork+exit+wait). The listening sockets are
handed over by descriptor number; connections that arrive meanwhile wait in the backlog.

lean_main() is that process's entry. A reload (SIGHUP) runs the same command line twice
more: first with `check=1` (the installed code must import and read these options and this
state, or the reload is refused), then in place with `lineage=FD`, an anonymous file holding
the server's state (server.Lineage): its children, counters and report pipe.
"""

from __future__ import annotations

import _socket
import os
import sys

from echolab.logs import log
from echolab.server import ForkingEchoServer, Lineage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace


class Options:
    """The serving process's options, as `key=value` words that cross execve()."""

    __slots__ = (
        "fds",
        "grace",
        "idle_timeout",
        "inherited",
        "log_format",
        "log_level",
        "max_children",
        "origin",
    )

    def __init__(
        self,
        fds: list[int],
        *,
        max_children: int,
        idle_timeout: float,
        grace: float,
        log_level: str,
        log_format: str,
        inherited: bool,
        origin: str,
    ) -> None:
        self.fds = fds
        self.max_children = max_children
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.log_level = log_level
        self.log_format = log_format
        self.inherited = inherited  # listeners from systemd: idle timeouts set per connection
        self.origin = origin  # how the listeners came to be, for the ready line

    def words(self) -> list[str]:
        return [
            f"fds={','.join(map(str, self.fds))}",
            f"max_children={self.max_children}",
            f"idle_timeout={self.idle_timeout!r}",
            f"grace={self.grace!r}",
            f"log_level={self.log_level}",
            f"log_format={self.log_format}",
            f"inherited={int(self.inherited)}",
            f"origin={self.origin}",
        ]

    @classmethod
    def parse(cls, words: dict[str, str]) -> Options:
        return cls(
            [int(fd) for fd in words["fds"].split(",")],
            max_children=int(words["max_children"]),
            idle_timeout=float(words["idle_timeout"]),
            grace=float(words["grace"]),
            log_level=words["log_level"],
            log_format=words["log_format"],
            inherited=words["inherited"] == "1",
            origin=words["origin"],
        )


def lean_argv(options: Options) -> list[str]:
    """The command line of the lean serving process for `options`."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    boot = (  # the leading string names the process for `ps` and `pgrep -f`
        f"'echolab serve'; import sys; sys.path.insert(0, {package_root!r}); "
        "import echolab.boot as b; b.lean_main()"
    )
    return [sys.executable, "-I", "-S", "-c", boot, *options.words()]


def build_server(
    options: Options, exec_argv: list[str] | None, lineage: Lineage | None = None
) -> ForkingEchoServer:
    """The one place a server is built: from its options, on the descriptors they name."""
    inherited = list(options.fds)
    if lineage is not None:
        inherited += lineage.report or ()
        inherited += [lineage.held[0]] if lineage.held else []
    for fd in inherited:
        os.set_inheritable(fd, False)
    return ForkingEchoServer(
        [_socket.socket(fileno=fd) for fd in options.fds],
        max_children=options.max_children,
        idle_timeout=options.idle_timeout,
        grace=options.grace,
        timeouts_per_connection=options.inherited,
        origin=options.origin,
        exec_argv=exec_argv,
        lineage=lineage,
    )


def run(args: Namespace) -> int:
    """`echolab serve`: open (or inherit) the listeners, then serve from a lean process."""
    from echolab.listener import inherited_listeners, open_listener

    log.configure(args.log_level, args.log_format)
    listeners = inherited_listeners()
    inherited = bool(listeners)
    origin = "inherited from systemd" if listeners else f"backlog {args.backlog}"
    if not listeners:
        listeners = [
            open_listener(
                args.host,
                args.port,
                args.backlog,
                not args.no_reuseaddr,
                args.idle_timeout,
                reuseport=args.reuseport,
            )
        ]
    same = ("max_children", "idle_timeout", "grace", "log_level", "log_format")
    options = Options(
        [sock.detach() for sock in listeners],
        inherited=inherited,
        origin=origin,
        **{name: getattr(args, name) for name in same},
    )
    argv = lean_argv(options) if sys.executable else None
    if argv:
        for fd in options.fds:
            os.set_inheritable(fd, True)
        try:
            os.execv(argv[0], argv)  # noqa: S606  the same interpreter, fixed arguments
        except OSError as exc:
            log.warning(
                "cannot re-execute %s (%s): serving from this process", argv[0], exc.strerror
            )
    return build_server(options, argv).serve_forever()


def lean_main() -> None:
    """Entry point of the lean serving process: `key=value` words from lean_argv()."""
    words = dict(arg.partition("=")[::2] for arg in sys.argv[1:])
    options = Options.parse(words)
    log.configure(options.log_level, options.log_format)
    lineage = None
    if "lineage" in words:
        fd = int(words["lineage"])
        lineage = Lineage.decode(os.pread(fd, os.fstat(fd).st_size, 0))
        if words.get("check") != "1":
            os.close(fd)
    if words.get("check") == "1":
        raise SystemExit(0)  # this code imports and reads these options and this state
    server = build_server(options, lean_argv(options), lineage)
    raise SystemExit(server.serve_forever())
