#!/usr/bin/env python3
"""The lab's restart experiments, judged by `echolab restart-check` inside the lab's namespace.

The lab's server shares the network namespace of the `netns` holder container, so stopping and
starting it keeps the namespace and the TIME_WAIT sockets in it (a `docker restart` of a
container with its own network would wipe them and prove nothing). This script holds only what
is Docker's; the experiment and the verdict are restart-check's:

check (`make lab-restart-check`)
    runs compose.yaml's `restart-check` service (`echolab restart-check` in managed mode, in
    the lab's network namespace: it holds the clients, samples the port and probes it) with a
    restart command that asks this script, through a directory both see, to restart the
    server: `compose stop server`, then `compose start server` (or, with --no-reuseaddr, a
    one-off server with SO_REUSEADDR off, whose exit status 6 is EADDRINUSE). Around it: the
    server runs in the holder's namespace (network mode `container:<holder>`), the holder is
    the same process before and after, and the lab is healthy again at the end.
compare (`make lab-compare`)
    `echolab restart-check --compare` in the lab's namespace: every strategy available there.
reload (`make lab-reload`)
    compose.yaml's `reload-check` service: the same, in the server's PID namespace too, with
    `--strategy reload`: its restart command asks this script for `compose kill -s HUP
    server`, its log command for the server's log since the container started (`docker logs
    --since`, the current run's generations only); restart-check judges the new generation,
    the same PID on the listener (the server's own PID 1, named by its reload line), the same
    listener inode, nobody refused or reset and every held session still echoing. Around it:
    the same container, not restarted, the same host PID, the same network namespace, healthy
    after.

Exit status: restart-check's (0 pass, 1 fail, 3 invalid run); 1 when a Docker-specific link is
missing; 2 for bad usage. Run by make with the venv's Python (--plot draws with echolab's
plot module and the venv's matplotlib, `make venv`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The commands restart-check runs inside its container ask this script for a Compose or Docker
# call by a request file in the shared directory (its name carries the shell's PID, its content
# the verb), wait for the status file this script writes when it is done, print the output and
# exit with the status (6: the server without SO_REUSEADDR hit EADDRINUSE).
CHANNEL_CMD = (
    'echo {verb} > "/lab/.request.$$" && mv "/lab/.request.$$" "/lab/request.$$"; '
    'while [ ! -e "/lab/status.$$" ]; do sleep 0.02; done; cat "/lab/output.$$"; '
    'status=$(cat "/lab/status.$$"); rm -f "/lab/output.$$" "/lab/status.$$"; exit "$status"'
)
OUTPUT_LIMIT = 1_000_000  # characters of a request's output handed back (a log's tail)
RESTART_TIMEOUT = 60.0  # s for the restart command (the server's grace is 5 s)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


class LabError(Exception):
    """A Docker-specific step failed: one line, exit 1."""


class Lab:
    """The Compose command line and the few Docker calls the lab's experiments need."""

    def __init__(self, compose: str, docker: str, port: int) -> None:
        self.compose = shlex.split(compose)
        self.docker = docker
        self.port = port

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """A Compose subcommand, its output captured; LabError when `check` and it fails."""
        proc = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"`{' '.join(args)}` exited {proc.returncode}: "
                           f"{proc.stderr.strip()[-600:]}")  # fmt: skip
        return proc

    def container(self, service: str) -> str:
        """The id of the service's (single) running container, or ''."""
        return self.run("ps", "-q", service).stdout.strip()

    def inspect(self, ref: str, fmt: str) -> str:
        proc = subprocess.run(
            [self.docker, "inspect", "-f", fmt, ref], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def up(self, timeout: float) -> str:
        """The server running and healthy (started when it is not): its container id."""
        self.run("up", "-d", "server", timeout=timeout + 60)
        server = self.container("server")
        self.wait_healthy(server, timeout)
        return server

    def wait_healthy(self, cid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.inspect(cid, "{{.State.Health.Status}}")
            if status == "healthy":
                return
            if time.monotonic() > deadline or status in ("", "unhealthy"):
                raise LabError(f"the server is not healthy ({status or 'gone'}): see make lab-logs")
            time.sleep(0.5)

    def holder(self, server: str) -> dict[str, str]:
        """Who holds the server's network namespace, and how the server joins it.

        A namespace lives as long as a process in it, so the same holder process (host PID and
        start time) before and after the restart means the same namespace. (Its nsfs inode
        number alone proves nothing: a freed number is handed to the next namespace at once.)
        """
        holder = self.container("netns")
        mode = self.inspect(server, "{{.HostConfig.NetworkMode}}")
        return {
            "network_mode": "container:netns" if mode == f"container:{holder}" else mode,
            "holder": self.inspect(holder, "{{.Name}} pid {{.State.Pid}} up since "
                                           "{{.State.StartedAt}}").lstrip("/"),
        }  # fmt: skip

    def sockets(self) -> dict[str, Any]:
        """`echolab sockets --json -` inside the lab's network namespace (in the holder)."""
        proc = self.run(
            "exec", "-T", "netns", "echolab", "sockets", "--port", str(self.port), "--json", "-"
        )
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def engine(
        self, args: list[str], channel: Path, service: str = "restart-check"
    ) -> subprocess.Popen[bytes]:
        """compose.yaml's `restart-check` service (or `reload-check`) with these arguments, the
        channel at /lab; its output goes to ours."""
        return subprocess.Popen(
            [*self.compose, "--profile", "check", "run", "--rm", "--no-deps", "-T",
             "-v", f"{channel}:/lab",
             service, *args],
            stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr,
        )  # fmt: skip


@contextlib.contextmanager
def channel_dir() -> Iterator[Path]:
    """A directory shared with the container, which runs as its image's user (10001, never
    root: as root restart-check would try to make namespaces of its own): writable by it."""
    with tempfile.TemporaryDirectory(prefix="echolab-lab-") as tmp:
        os.chmod(tmp, 0o777)  # noqa: S103  a fresh private name, for the length of one run
        yield Path(tmp)


def restart_server(lab: Lab, reuseaddr: bool) -> tuple[int, str]:
    """Stop the server and start it again (or try a server without SO_REUSEADDR in its place):
    the status and output the restart command hands to restart-check."""
    stop = lab.run("stop", "-t", "30", "server", check=False, timeout=RESTART_TIMEOUT)
    if stop.returncode != 0:
        return stop.returncode, stop.stderr
    if reuseaddr:
        start = lab.run("start", "server", check=False)
        return start.returncode, start.stderr
    control = lab.run(
        "run", "--rm", "--no-deps", "-T", "-e", "ECHOLAB_NO_REUSEADDR=1", "server",
        check=False, timeout=RESTART_TIMEOUT,
    )  # fmt: skip
    return control.returncode, (control.stdout + control.stderr)


Handlers = dict[str, Callable[[], tuple[int, str]]]


def serve_requests(engine: subprocess.Popen[bytes], channel: Path, handlers: Handlers) -> list[str]:
    """Perform the engine's requests (CHANNEL_CMD) until it exits: the verbs served, in order.
    A verb without a handler is answered with status 2."""
    served: list[str] = []
    while engine.poll() is None:
        for request in sorted(channel.glob("request.*")):
            ident = request.name.split(".", 1)[1]
            verb = request.read_text().strip()
            request.unlink()
            handler = handlers.get(verb)
            status, output = handler() if handler else (EXIT_USAGE, f"lab: no request {verb!r}\n")
            served.append(verb)
            (channel / f"output.{ident}").write_text(output[-OUTPUT_LIMIT:])
            (channel / f".status.{ident}").write_text(f"{status}\n")
            (channel / f".status.{ident}").rename(channel / f"status.{ident}")
        time.sleep(0.02)
    return served


def holder_of(lab: Lab, server: str) -> dict[str, str]:
    """Who holds the server's network namespace; a LabError unless it is the netns holder."""
    holder = lab.holder(server)
    if holder["network_mode"] != "container:netns":
        raise LabError(f"the server's network mode is {holder['network_mode']}, "
                       "not the netns holder's namespace")  # fmt: skip
    return holder


def run_engine(
    lab: Lab, service: str, argv: list[str], handlers: Handlers,
    tidy: Callable[[], None] | None = None,
) -> tuple[int, list[str], dict[str, Any]]:  # fmt: skip
    """Run restart-check (the compose service, its result in the channel as /lab/result.json),
    serving its requests: its exit status, the verbs served, its result. `tidy` runs after it
    in any case."""
    with channel_dir() as channel:
        engine = lab.engine([*argv, "--json", "/lab/result.json"], channel, service)
        try:
            served = serve_requests(engine, channel, handlers)
            status = engine.wait(RESTART_TIMEOUT * 3)
        finally:
            if engine.poll() is None:
                engine.terminate()
                engine.wait(30)
            if tidy is not None:
                tidy()
        result_file = channel / "result.json"
        if not result_file.exists():
            raise LabError(f"restart-check exited {status} without a result")
        result: dict[str, Any] = json.loads(result_file.read_text())
    return status, served, result


def report_lab(rows: list[tuple[str, str]], before: dict[str, str], after: dict[str, str]) -> bool:
    """Print Docker's side of the run (these rows, then the namespace's); False when the
    namespace was not kept."""
    kept = before == after
    say("lab (Docker's side of it)")
    for key, value in [
        *rows,
        ("network namespace", f"{'kept' if kept else 'NOT KEPT'}: held by {before['holder']}; "
                              f"the server joins it ({after['network_mode']})"),
        ("after the run", "the server is up and healthy again"),
    ]:  # fmt: skip
        say(f"  {key.ljust(17)} {value}")
    return kept


def check(lab: Lab, args: argparse.Namespace, engine_args: list[str]) -> int:
    server = lab.up(args.timeout)
    before = holder_of(lab, server)
    reuseaddr = not args.no_reuseaddr

    def tidy() -> None:
        # Leave the lab as it was found: its server up (the control left it stopped).
        # (`ps -q` lists stopped containers too under Compose v1: ask the engine.)
        if lab.inspect(server, "{{.State.Running}}") != "true":
            lab.run("start", "server")

    argv = [
        "--target", f"127.0.0.1:{lab.port}", "--restart-cmd", CHANNEL_CMD.format(verb="restart"),
        "--clients", str(args.clients), "--timeout", f"{RESTART_TIMEOUT:g}",
        *(["--no-reuseaddr"] if args.no_reuseaddr else []), *engine_args,
    ]  # fmt: skip
    status, served, result = run_engine(
        lab, "restart-check", argv, {"restart": lambda: restart_server(lab, reuseaddr)}, tidy
    )
    lab.wait_healthy(server, args.timeout)
    after = lab.holder(server)
    result["lab"] = {
        "restart_requested": "restart" in served,
        "network_mode": after["network_mode"],
        "netns_holder": before["holder"],
        "netns_kept": before == after,
        "server_container_kept": lab.container("server") == server,
        "healthy_after": True,
    }
    kept = report_lab([], before, after)
    write_outputs(result, args)
    if not kept:
        err("lab: the network namespace was not kept")
        return EXIT_FAILED
    return status


def write_outputs(result: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        from echolab.restartcheck.plot import plot

        plot([result], args.plot)


def compare(lab: Lab, args: argparse.Namespace, engine_args: list[str]) -> int:
    """restart-check --compare on a loopback port of its own inside the lab's namespace."""
    lab.up(args.timeout)
    argv = ["--compare", "--host", "127.0.0.1", "--clients", str(args.clients), *engine_args]
    status, _, data = run_engine(lab, "restart-check", argv, {})
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(data, indent=2) + "\n")
    if args.plot:
        from echolab.restartcheck.plot import plot

        plot(data["compare"], args.plot)
    return status


def server_log(lab: Lab, server: str, since: str) -> tuple[int, str]:
    """The server's log since its container started (the current run's lines only: a log
    spanning a stop and start would hold an older server's generations), both streams."""
    proc = subprocess.run(
        [lab.docker, "logs", "--since", since, server],
        capture_output=True, text=True, errors="replace", timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode:
        return proc.returncode, proc.stderr
    return 0, proc.stdout + proc.stderr


def hup(lab: Lab) -> tuple[int, str]:
    proc = lab.run("kill", "-s", "HUP", "server", check=False)
    return proc.returncode, proc.stdout + proc.stderr


def server_facts(lab: Lab, server: str) -> dict[str, str]:
    """What a restart of the server's container would change (its PID 1's host PID among)."""
    return {
        "container": lab.container("server"),
        "host_pid": lab.inspect(server, "{{.State.Pid}}"),
        "started_at": lab.inspect(server, "{{.State.StartedAt}}"),
        "restart_count": lab.inspect(server, "{{.RestartCount}}"),
    }


def reload(lab: Lab, args: argparse.Namespace, engine_args: list[str]) -> int:
    """restart-check --strategy reload in the lab's network namespace and in the server's PID
    namespace (compose.yaml's reload-check); SIGHUP and the log through the channel."""
    server = lab.up(args.timeout)
    before = holder_of(lab, server)
    facts_before = server_facts(lab, server)
    started = facts_before["started_at"]
    argv = [
        "--strategy", "reload", "--target", f"127.0.0.1:{lab.port}",
        "--restart-cmd", CHANNEL_CMD.format(verb="reload"),
        "--log-cmd", CHANNEL_CMD.format(verb="logs"),
        "--clients", str(args.clients), "--timeout", f"{RESTART_TIMEOUT:g}", *engine_args,
    ]  # fmt: skip
    status, served, result = run_engine(
        lab, "reload-check", argv,
        {"reload": lambda: hup(lab), "logs": lambda: server_log(lab, server, started)},
    )  # fmt: skip
    lab.wait_healthy(server, args.timeout)
    after = lab.holder(server)
    facts_after = server_facts(lab, server)
    same = facts_before == facts_after
    result["lab"] = {
        "reload_requested": "reload" in served,
        "log_requests": served.count("logs"),
        "network_mode": after["network_mode"],
        "netns_holder": before["holder"],
        "netns_kept": before == after,
        "server_container_kept": facts_before["container"] == facts_after["container"],
        "server_not_restarted": same,
        "server_host_pid": facts_after["host_pid"],
        "server_started_at": started,
        "healthy_after": True,
    }
    container = (
        f"{'kept' if same else 'NOT KEPT'}: {server[:12]}, up since {started}, host PID "
        f"{facts_after['host_pid']}, {facts_after['restart_count']} restarts"
    )
    kept = report_lab([("server container", container)], before, after)
    write_outputs(result, args)
    if not same:
        err(f"lab: the server's container was restarted or replaced: {facts_before} -> "
            f"{facts_after}")  # fmt: skip
        return EXIT_FAILED
    if not kept:
        err("lab: the network namespace was not kept")
        return EXIT_FAILED
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=("check", "compare", "reload"))
    p.add_argument("--compose", default="docker-compose -p echolab -f compose.yaml",
                   help="the Compose command line, with project and file")  # fmt: skip
    p.add_argument("--docker", default=os.environ.get("DOCKER", "docker"))
    p.add_argument("--port", type=int, default=7007, help="the server's port in the namespace")
    p.add_argument("--clients", type=int, default=8, help="clients held across the restart")
    p.add_argument(
        "--no-reuseaddr",
        action="store_true",
        help="check: the control, a server without SO_REUSEADDR (expect EADDRINUSE)",
    )
    p.add_argument("--timeout", type=float, default=90.0, help="for the server to be healthy")
    p.add_argument("--json", dest="json_file", help="write the result as JSON to this file")
    p.add_argument("--plot", help="draw the timeline (.svg or .png; matplotlib)")
    args, engine_args = p.parse_known_args(argv)
    if args.plot:  # before the run, not after it: a known format, matplotlib installed
        from echolab.errors import EcholabError
        from echolab.restartcheck.plot import check_plot

        try:
            check_plot(args.plot)
        except EcholabError as exc:
            hint = " (make venv)" if "matplotlib" in str(exc) else ""
            err(f"lab-{args.experiment}: {exc}{hint}")
            return EXIT_USAGE
    lab = Lab(args.compose, args.docker, args.port)
    try:
        if args.experiment == "check":
            return check(lab, args, engine_args)
        if args.experiment == "compare":
            return compare(lab, args, engine_args)
        return reload(lab, args, engine_args)
    except LabError as exc:
        err(f"lab-{args.experiment}: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
