#!/usr/bin/env python3
"""Restart the lab's server under TIME_WAIT and prove that it rebinds (`make lab-restart-check`).

The lab's server shares the network namespace of the `netns` holder container, so stopping and
starting it keeps the namespace and the TIME_WAIT sockets in it (a `docker restart` of a
container with its own network would wipe them and prove nothing). The check, step by step:

1. `hold` clients (compose.yaml's `hold` service, in the loadgen image) connect and wait;
2. the server is stopped with them connected: it ends their sessions from the server side, so
   TIME_WAIT lands on the server's port; the sockets are read inside the namespace;
3. control: a second server with SO_REUSEADDR off tries the port and must fail (EADDRINUSE);
4. the real server is started again; its `listening on` line proves the bind; the sockets are
   read again, and the TIME_WAIT sockets seen both before the start and after the bind (same
   addresses and ports) are the ones that lingered at the moment the new server bound (only
   those of the sessions this stop ended count: TIME_WAIT of an earlier run is left out);
5. the namespace's holder (its process, which keeps the namespace alive) is the same before and
   after, and the server's network mode is still `container:<holder>`.

Exit 0 when the server rebound with TIME_WAIT present, 1 when it did not, 3 when the run proved
nothing (no server-side TIME_WAIT at the restart). Standard library only; runs on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 3


class Lab:
    """The Compose command line and the few Docker calls the check needs."""

    def __init__(self, compose: str, docker: str, port: int) -> None:
        self.compose = shlex.split(compose)
        self.docker = docker
        self.port = port

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a Compose subcommand; raise SystemExit with its output when `check` and it fails."""
        proc = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            fail(f"`{' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return proc

    def container(self, service: str) -> str:
        """The id of the service's (single) container, or ''."""
        return self.run("ps", "-q", service).stdout.strip()

    def inspect(self, cid: str, fmt: str) -> str:
        proc = subprocess.run(
            [self.docker, "inspect", "-f", fmt, cid], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def wait_healthy(self, cid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.inspect(cid, "{{.State.Health.Status}}")
            if status == "healthy":
                return
            if time.monotonic() > deadline or status in ("", "unhealthy"):
                fail(f"the server is not healthy ({status or 'gone'}); try `make lab-up`")
            time.sleep(0.5)

    def sockets(self) -> dict[str, Any]:
        """`echolab sockets --json -`, run inside the lab's network namespace (the holder)."""
        proc = self.run(
            "exec", "-T", "netns", "echolab", "sockets", "--port", str(self.port), "--json", "-"
        )
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def netns_holder(self, server: str) -> str:
        """Who holds the server's network namespace: the holder's id, host PID and start time.

        A namespace lives as long as a process in it, so the same holder process before and
        after the restart means the same namespace. (Its nsfs inode number alone proves
        nothing: a freed number is handed to the next new namespace at once.)
        """
        holder = self.container("netns")
        if self.inspect(server, "{{.HostConfig.NetworkMode}}") != f"container:{holder}":
            fail("the server does not share the netns holder's network namespace")
        return self.inspect(holder, "{{.Name}} pid {{.State.Pid}} up since {{.State.StartedAt}}")

    def logs_since(self, cid: str, since: float) -> list[str]:
        """The container's log lines since `since` (epoch s), each after Docker's timestamp."""
        proc = subprocess.run(
            [self.docker, "logs", "--timestamps", "--since", f"{since:.3f}", cid],
            capture_output=True,
            text=True,
            check=False,
        )
        return (proc.stdout + proc.stderr).splitlines()


def docker_time(text: str) -> datetime:
    """Docker's RFC 3339 timestamps (nanoseconds, Z) as an aware datetime."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def fail(message: str) -> None:
    sys.stderr.write(f"lab-restart-check: {message}\n")
    raise SystemExit(EXIT_FAILED)


def server_time_wait(report: dict[str, Any]) -> set[tuple[str, str]]:
    """The server-side TIME_WAIT sockets of a sockets report, as (local, remote) pairs."""
    return {
        (s["local"], s["remote"])
        for s in report["sockets"]
        if s["side"] == "server" and s["state"] == "TIME_WAIT"
    }


def wait_established(lab: Lab, clients: int, timeout: float) -> dict[str, Any]:
    """Wait until the server side of the port has `clients` ESTABLISHED sessions."""
    deadline = time.monotonic() + timeout
    while True:
        report = lab.sockets()
        if report["server_side"].get("ESTABLISHED", 0) >= clients:
            return report
        if time.monotonic() > deadline:
            fail(
                f"only {report['server_side'].get('ESTABLISHED', 0)} of {clients} hold clients "
                f"connected after {timeout:g} s"
            )
        time.sleep(0.3)


def control_without_reuseaddr(lab: Lab, timeout: float) -> tuple[str, str]:
    """Try the port with SO_REUSEADDR off while only TIME_WAIT holds it: (outcome, its line)."""
    name = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'echolab')}_control_noreuse"
    try:
        proc = lab.run(
            "run", "--rm", "--no-deps", "-T", "--name", name,
            "-e", "ECHOLAB_NO_REUSEADDR=1", "server",
            check=False, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        subprocess.run([lab.docker, "rm", "-f", name], capture_output=True, check=False)
        return "bound", "the server without SO_REUSEADDR bound and kept running"
    out = (proc.stdout + proc.stderr).strip().splitlines()
    line = next((x for x in out if "in use" in x), out[-1] if out else "")
    if proc.returncode == 6:  # echolab serve: EXIT_ADDR_IN_USE
        return "EADDRINUSE", line.strip()
    return f"exit {proc.returncode}", line.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--compose",
        default="docker-compose -p echolab -f compose.yaml",
        help="the Compose command line, with project and file",
    )
    p.add_argument("--docker", default=os.environ.get("DOCKER", "docker"))
    p.add_argument("--port", type=int, default=7007, help="the server's port in the namespace")
    p.add_argument("--clients", type=int, default=8, help="hold clients connected at the stop")
    p.add_argument("--no-control", action="store_true", help="skip the SO_REUSEADDR-off control")
    p.add_argument("--timeout", type=float, default=30.0, help="for each step")
    p.add_argument("--json", dest="json_file", help="write the result as JSON ('-': stdout)")
    args = p.parse_args(argv)
    lab = Lab(args.compose, args.docker, args.port)
    out = sys.stderr if args.json_file == "-" else sys.stdout

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    lab.run("up", "-d", "server")
    server = lab.container("server")
    lab.wait_healthy(server, args.timeout)
    netns_before = lab.netns_holder(server)
    result: dict[str, Any] = {"port": args.port, "clients": args.clients, "reuseaddr": True}
    try:
        say(f"1. connecting {args.clients} hold clients (the `hold` service, loadgen image)")
        lab.run("--profile", "check", "up", "-d", "hold")
        before = wait_established(lab, args.clients, args.timeout)
        result["established_before_stop"] = before["server_side"].get("ESTABLISHED", 0)
        # TIME_WAIT left by an earlier run (it lasts 60 s) is told apart from this stop's.
        tw_earlier = server_time_wait(before)
        result["time_wait_before_stop"] = len(tw_earlier)

        say("2. stopping the server with them connected (SIGTERM, grace, FIN from the server)")
        t0 = time.monotonic()
        lab.run("stop", "-t", str(int(args.timeout)), "server", timeout=args.timeout + 30)
        result["stop_s"] = round(time.monotonic() - t0, 2)
        stopped = lab.sockets()
        # Only this stop's TIME_WAIT counts: the sessions it ended, not an earlier run's.
        tw_stopped = server_time_wait(stopped) - tw_earlier
        result["listen_after_stop"] = stopped["server_side"].get("LISTEN", 0)
        result["time_wait_after_stop"] = len(tw_stopped)
        say(f"   server side now: {stopped['server_side'] or 'no sockets'}")

        if args.no_control:
            result["control_no_reuseaddr"] = "skipped"
        else:
            say("3. control: a server without SO_REUSEADDR tries the port")
            outcome, line = control_without_reuseaddr(lab, args.timeout)
            result["control_no_reuseaddr"] = outcome
            result["control_line"] = line
            say(f"   {outcome}: {line}")

        say("4. starting the server again (same network namespace)")
        t_start = time.time()
        t1 = time.monotonic()
        lab.run("start", "server")
        listening = ""
        while not listening:
            lines = lab.logs_since(server, t_start - 1)
            listening = next((x for x in lines if "listening on" in x), "")
            state = lab.inspect(server, "{{.State.Status}}")
            if not listening and (state != "running" or time.monotonic() - t1 > args.timeout):
                error = next((x for x in lines if "in use" in x), lines[-1] if lines else state)
                result["rebind"] = "failed"
                result["rebind_error"] = error.strip()
                break
            time.sleep(0.02)
        if listening:
            stamp, _, line = listening.strip().partition(" ")
            started = docker_time(lab.inspect(server, "{{.State.StartedAt}}"))
            result["rebind"] = "ok"
            # From the container's start to the server's `listening on` line (Docker's clock).
            result["listening_after_ms"] = round(
                (docker_time(stamp) - started).total_seconds() * 1000
            )
            result["start_cmd_ms"] = round((time.monotonic() - t1) * 1000)
            result["listening_line"] = line
        after = lab.sockets()
        tw_after = server_time_wait(after)
        lingered = tw_stopped & tw_after
        result["listen_after_start"] = after["server_side"].get("LISTEN", 0)
        result["time_wait_after_bind"] = len(tw_after)
        result["time_wait_at_restart"] = len(lingered)
        result["time_wait_left_s"] = sorted(
            s["timer_s"]
            for s in after["sockets"]
            if s["side"] == "server" and (s["local"], s["remote"]) in lingered
        )
        netns_after = lab.netns_holder(server)
        result["netns"] = netns_before
        result["netns_kept"] = netns_before == netns_after
    finally:
        lab.run("--profile", "check", "rm", "-fsv", "hold", check=False)

    if result["time_wait_at_restart"] < 1:
        result["verdict"] = "INVALID"
        why = (
            "no server-side TIME_WAIT lingered at the restart: the clients closed first, or the "
            "network namespace was not kept"
        )
        result["reason"] = why
        code = EXIT_INVALID
    elif (
        result["rebind"] == "ok"
        and result["listen_after_start"] >= 1
        and result["netns_kept"]
        and result["control_no_reuseaddr"] in ("EADDRINUSE", "skipped")
    ):
        result["verdict"] = "PASS"
        code = EXIT_OK
    else:
        result["verdict"] = "FAIL"
        code = EXIT_FAILED
    if result["rebind"] == "ok":  # leave the lab as it was found: up and healthy
        lab.wait_healthy(server, args.timeout)

    left = result["time_wait_left_s"]
    rows = [
        ("network namespace", f"kept: {'yes' if result['netns_kept'] else 'NO'}, held by "
                              f"{netns_before.lstrip('/')}"),
        ("hold clients", f"{result['established_before_stop']} ESTABLISHED before the stop "
                         f"(TIME_WAIT {result['time_wait_before_stop']} from earlier runs)"),
        ("stop took", f"{result['stop_s']:.1f} s (server grace included)"),
        ("after the stop", f"LISTEN {result['listen_after_stop']}, "
                           f"TIME_WAIT {result['time_wait_after_stop']} on :{args.port}"),
        ("control, no SO_REUSEADDR", result["control_no_reuseaddr"]),
        ("rebind, SO_REUSEADDR", result["rebind"]
         + (f", listening {result['listening_after_ms']} ms after the container started"
            if listening else "")),
        ("TIME_WAIT at the bind", f"{result['time_wait_at_restart']} (seen before the start and "
                                  "still there after the bind"
                                  + (f"; {left[0]:.1f}-{left[-1]:.1f} s left)" if left else ")")),
        ("verdict", result["verdict"] + (f": {result['reason']}" if "reason" in result else "")),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    say("\nlab restart check")
    for key, value in rows:
        say(f"  {key.ljust(width)}  {value}")
    if args.json_file:
        text = json.dumps(result, indent=2) + "\n"
        if args.json_file == "-":
            sys.stdout.write(text)
        else:
            with open(args.json_file, "w", encoding="utf-8") as f:
                f.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
