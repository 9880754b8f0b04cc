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
    SIGHUP to the lab's server (`compose kill -s HUP server`) while a loadgen container loads
    it: the same container, PID and listener after, a new generation in its log, nobody
    refused (the loadgen's figures), healthy after.

Exit status: restart-check's (0 pass, 1 fail, 3 invalid run); 1 when a Docker-specific link is
missing; 2 for bad usage. Run by make with the venv's Python (--plot draws with echolab's
plot module and the venv's matplotlib, `make venv`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The restart command restart-check runs inside its container: ask for the restart by a file in
# the shared directory, wait for the status file this script writes when it is done, print the
# Compose output and exit with the status (6: the server without SO_REUSEADDR hit EADDRINUSE).
RESTART_CMD = (
    "echo restart > /lab/request.tmp && mv /lab/request.tmp /lab/request; "
    'while [ ! -e /lab/status ]; do sleep 0.02; done; cat /lab/output; exit "$(cat /lab/status)"'
)
RESTART_TIMEOUT = 60.0  # s for the restart command (the server's grace is 5 s)
# The server's reload line names the reload and its generation (text or JSON log format).
GENERATION = re.compile(r"generation\D{0,3}(\d+)", re.IGNORECASE)


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

    def engine(self, args: list[str], channel: Path) -> subprocess.Popen[bytes]:
        """compose.yaml's `restart-check` service with these arguments, the channel at /lab;
        its output goes to ours."""
        return subprocess.Popen(
            [*self.compose, "--profile", "check", "run", "--rm", "--no-deps", "-T",
             "-v", f"{channel}:/lab",
             "restart-check", *args],
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


def serve_restart(lab: Lab, engine: subprocess.Popen[bytes], channel: Path,
                  reuseaddr: bool) -> bool:  # fmt: skip
    """Wait for the engine's restart request and perform it; False when none came."""
    request = channel / "request"
    while engine.poll() is None:
        if request.exists():
            status, output = restart_server(lab, reuseaddr)
            (channel / "output").write_text(output[-2000:])
            (channel / "status.tmp").write_text(f"{status}\n")
            (channel / "status.tmp").rename(channel / "status")
            return True
        time.sleep(0.02)
    return False


def check(lab: Lab, args: argparse.Namespace, engine_args: list[str]) -> int:
    server = lab.up(args.timeout)
    before = lab.holder(server)
    if before["network_mode"] != "container:netns":
        raise LabError(f"the server's network mode is {before['network_mode']}, "
                       "not the netns holder's namespace")  # fmt: skip
    with channel_dir() as channel:
        argv = [
            "--target", f"127.0.0.1:{lab.port}", "--restart-cmd", RESTART_CMD,
            "--clients", str(args.clients), "--timeout", f"{RESTART_TIMEOUT:g}",
            "--json", "/lab/result.json", *(["--no-reuseaddr"] if args.no_reuseaddr else []),
            *engine_args,
        ]  # fmt: skip
        engine = lab.engine(argv, channel)
        try:
            restarted = serve_restart(lab, engine, channel, not args.no_reuseaddr)
            status = engine.wait(RESTART_TIMEOUT * 3)
        finally:
            if engine.poll() is None:
                engine.terminate()
                engine.wait(30)
            # Leave the lab as it was found: its server up (the control left it stopped).
            # (`ps -q` lists stopped containers too under Compose v1: ask the engine.)
            if lab.inspect(server, "{{.State.Running}}") != "true":
                lab.run("start", "server")
        result_file = channel / "result.json"
        if not result_file.exists():
            raise LabError(f"restart-check exited {status} without a result")
        result: dict[str, Any] = json.loads(result_file.read_text())
    lab.wait_healthy(server, args.timeout)
    after = lab.holder(server)
    result["lab"] = {
        "restart_requested": restarted,
        "network_mode": after["network_mode"],
        "netns_holder": before["holder"],
        "netns_kept": before == after,
        "server_container_kept": lab.container("server") == server,
        "healthy_after": True,
    }
    lab_rows = [
        ("network namespace", f"{'kept' if before == after else 'NOT KEPT'}: held by "
                              f"{before['holder']}; the server joins it ({after['network_mode']})"),
        ("after the run", "the server is up and healthy again"),
    ]  # fmt: skip
    say("lab (Docker's side of it)")
    for key, value in lab_rows:
        say(f"  {key.ljust(17)} {value}")
    write_outputs(result, args)
    if before != after:
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
    with channel_dir() as channel:
        argv = ["--compare", "--host", "127.0.0.1", "--clients", str(args.clients),
                "--json", "/lab/result.json", *engine_args]  # fmt: skip
        status = lab.engine(argv, channel).wait()
        result_file = channel / "result.json"
        if not result_file.exists():
            raise LabError(f"restart-check --compare exited {status} without a result")
        data: dict[str, Any] = json.loads(result_file.read_text())
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(data, indent=2) + "\n")
    if args.plot:
        from echolab.restartcheck.plot import plot

        plot(data["compare"], args.plot)
    return status


def generation(lab: Lab, server: str, since: str) -> int:
    """The server's latest generation in its log since `since` (1: no reload line)."""
    proc = subprocess.run(
        [lab.docker, "logs", "--since", since, server], capture_output=True, text=True, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    found = [int(g) for line in lines if "reload" in line for g in GENERATION.findall(line)]
    return max(found, default=1)


def listeners(lab: Lab) -> list[int]:
    return sorted(s["inode"] for s in lab.sockets()["sockets"] if s["state"] == "LISTEN")


def reload(lab: Lab, args: argparse.Namespace) -> int:
    """SIGHUP to the lab's server while a loadgen container loads it; the proof from state."""
    server = lab.up(args.timeout)
    started = lab.inspect(server, "{{.State.StartedAt}}")
    facts_before = {
        "container": server,
        "pid": lab.inspect(server, "{{.State.Pid}}"),
        "started_at": started,
        "restart_count": lab.inspect(server, "{{.RestartCount}}"),
        "listeners": listeners(lab),
    }
    gen_before = generation(lab, server, started)
    with channel_dir() as channel:
        load = subprocess.Popen(
            [*lab.compose, "--profile", "load", "run", "--rm", "--no-deps", "-T",
             "-v", f"{channel}:/lab",
             "-e", f"ECHOLAB_DURATION={args.duration:g}s", "-e", "ECHOLAB_CLIENTS=16",
             "-e", "ECHOLAB_MAX_ERROR_RATE=0", "-e", "ECHOLAB_NO_PROGRESS=1",
             "-e", "ECHOLAB_JSON_FILE=/lab/load.json", "loadgen"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        # SIGHUP once the load runs: its first connections seen on the server's port.
        deadline = time.monotonic() + args.timeout
        while load.poll() is None and time.monotonic() < deadline:
            seen = lab.sockets()["server_side"]
            if seen.get("ESTABLISHED", 0) + seen.get("TIME_WAIT", 0):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        running_at_hup = load.poll() is None
        lab.run("kill", "-s", "HUP", "server")
        out, _ = load.communicate(timeout=args.duration + 120)
        load_file = channel / "load.json"
        figures: dict[str, Any] = json.loads(load_file.read_text()) if load_file.exists() else {}
    lab.wait_healthy(server, args.timeout)
    gen_after = generation(lab, server, started)
    facts_after = {
        "container": lab.container("server"),
        "pid": lab.inspect(server, "{{.State.Pid}}"),
        "started_at": lab.inspect(server, "{{.State.StartedAt}}"),
        "restart_count": lab.inspect(server, "{{.RestartCount}}"),
        "listeners": listeners(lab),
    }
    errors = figures.get("errors", {})
    result = {
        "strategy": "reload",
        "generation_before": gen_before,
        "generation_after": gen_after,
        "same_container": facts_before["container"] == facts_after["container"],
        "same_pid": facts_before["pid"] == facts_after["pid"],
        "pid": facts_after["pid"],
        "same_start": facts_before["started_at"] == facts_after["started_at"]
        and facts_before["restart_count"] == facts_after["restart_count"],
        "same_listener": facts_before["listeners"] == facts_after["listeners"],
        "listeners": facts_after["listeners"],
        "load_exit": load.returncode,
        "connections_ok": figures.get("connections_ok"),
        "errors_total": figures.get("errors_total"),
        "errors": errors,
        "refused": errors.get("refused", 0) if isinstance(errors, dict) else None,
        "healthy_after": True,
        "load_running_at_hup": running_at_hup,
    }
    links = [
        ("same container", result["same_container"] and result["same_start"],
         f"{server[:12]}, started {started}, not restarted"),
        ("same PID", result["same_pid"], f"host PID {facts_after['pid']}"),
        ("same listener", result["same_listener"] and bool(facts_after["listeners"]),
         f"inode {', '.join(map(str, facts_after['listeners'])) or 'none'}"),
        ("new generation", gen_after > gen_before,
         f"generation {gen_before} -> {gen_after} (the server's reload line)"),
        ("nobody refused", running_at_hup and load.returncode == 0
         and result["errors_total"] == 0,
         f"the loadgen ran across the SIGHUP and exited {load.returncode}: "
         f"{result['connections_ok']} connections ok, {result['errors_total']} errors "
         f"({', '.join(f'{k} {v}' for k, v in errors.items()) or 'no figures'})"),
    ]  # fmt: skip
    ok = all(passed for _, passed, _ in links)
    result["verdict"] = "pass" if ok else "fail"
    result["links"] = {name: {"ok": passed, "evidence": how} for name, passed, how in links}
    say(out.rstrip())
    say("\nlab reload (SIGHUP in place, under load)")
    for name, passed, how in links:
        say(f"  {name.ljust(15)} {'yes' if passed else 'NO '}  {how}")
    say(f"  {'verdict'.ljust(15)} {result['verdict'].upper()}")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
    return EXIT_OK if ok else EXIT_FAILED


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
    p.add_argument("--duration", type=float, default=6.0, help="reload: seconds of load")
    p.add_argument("--timeout", type=float, default=90.0, help="for the server to be healthy")
    p.add_argument("--json", dest="json_file", help="write the result as JSON to this file")
    p.add_argument("--plot", help="check, compare: draw the timeline (.svg or .png; matplotlib)")
    args, engine_args = p.parse_known_args(argv)
    if args.plot and args.experiment == "reload":
        p.error("--plot is for check and compare")
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
        if engine_args and args.experiment == "reload":
            p.error(f"unrecognized arguments: {' '.join(engine_args)}")
        if args.experiment == "compare":
            return compare(lab, args, engine_args)
        return reload(lab, args)
    except LabError as exc:
        err(f"lab-{args.experiment}: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
