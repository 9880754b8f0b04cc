"""Backends: where the server runs and how a strategy restarts it.

- LocalBackend: `echolab serve` started by us (stop-start, reuseport, reload);
- SocketActivationBackend: `systemd-socket-activate` holds the listening socket and a shell loop
  under it starts one `echolab serve` after another on it (what systemd does with a .socket
  unit: the socket outlives each server);
- CommandBackend: `--restart-cmd` restarts a server run by something else (managed mode); for
  a reload, `--log-cmd` prints the server's log, where the new generation shows.

Each records its moments in the timeline (stop, old_exited, bound, ...) and its machine-readable
facts (exit statuses) in the Result; none of them judges. The Compose lab and systemd through
the role are further backends of the same shape (engine.Backend).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from echolab.errors import (
    EXIT_ADDR_IN_USE,
    EXIT_FAILED,
    EXIT_PERMISSION,
    EXIT_USAGE,
    EcholabError,
)
from echolab.netaddr import format_address
from echolab.proctree import ProcessGroup, process_state, signal_process, start_time
from echolab.ready import parse_ready
from echolab.restartcheck.engine import Context, Plan
from echolab.restartcheck.result import Result
from echolab.tcpstate import read_sockets

PID_IN_LINE = re.compile(r"echolab\[(\d+)\]")
# serve's reload line names the reload and its generation, in either order: "... reload ...
# generation 2 ..." (text) or "generation": 2 (json). The first generation is 1.
GENERATION = re.compile(r"generation\D{0,3}(\d+)", re.IGNORECASE)
# The PID in a log line: text (`echolab[PID]`) or json (`"pid": PID`).
PID_OF_LINE = re.compile(r'echolab\[(\d+)\]|"pid"\s*:\s*(\d+)')
LOG_POLL = 0.2  # s between two runs of --log-cmd while waiting for a reload's line
LOG_CMD_TIMEOUT = 30.0  # s one run of --log-cmd may take
STOP_WAIT = 10.0  # s for a process group to end after SIGTERM before SIGKILL
OUTPUT_TAIL = 2000  # characters of a restart command's output kept in the result


def reload_lines(lines: list[str]) -> list[tuple[int, int | None]]:
    """(generation, PID or None) of each reload line of `echolab serve` in a log, in order."""
    found: list[tuple[int, int | None]] = []
    for line in lines:
        generation = GENERATION.search(line) if "reload" in line.lower() else None
        if generation is None:
            continue
        pid = PID_OF_LINE.search(line)
        found.append((int(generation.group(1)), int(pid.group(1) or pid.group(2)) if pid else None))
    return found


def _only(pids: list[int]) -> int | None:
    """The one PID of a list, None when there are none or several."""
    return pids[0] if len(pids) == 1 else None


def stop_group(group: ProcessGroup, grace: float) -> int:
    """SIGTERM a process group, SIGKILL what is left after `grace`; how many were left."""
    members = group.signal(signal.SIGTERM)
    end = time.monotonic() + grace
    while members and group.members() and time.monotonic() < end:
        time.sleep(0.01)
    if members:
        group.signal(signal.SIGKILL)
    return members


def _clean_env() -> dict[str, str]:
    # Our own flags decide: an ECHOLAB_NO_REUSEADDR=1 in the environment must not leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("ECHOLAB_")}


def serve_argv(
    host: str, port: int, reuseaddr: bool, reuseport: bool = False, cap: int | None = None
) -> list[str]:
    """`echolab serve` as restart-check runs it: --grace 0 ends the sessions at once, from the
    server's side; --max-children fills it with the held clients (queue clients then wait)."""
    argv = [sys.executable, "-m", "echolab", "serve", "--host", host, "--port", str(port)]
    argv += ["--grace", "0", "--log-level", "info", "--log-format", "text"]
    if not reuseaddr:
        argv.append("--no-reuseaddr")
    if reuseport:
        argv.append("--reuseport")
    if cap is not None:
        argv += ["--max-children", str(cap)]
    return argv


class ServeProcess:
    """A process tree of ours (its own session) whose stderr carries `echolab serve` lines."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
            start_new_session=True,  # Ctrl-C on our terminal is ours to handle, not the server's
        )
        self.group = ProcessGroup.of(self.proc)  # now, before anything waits for the leader
        self.lines: list[str] = []
        self.ready: list[tuple[float, int, int]] = []  # (time, PID, port) of each ready line
        self.generations: list[tuple[float, int]] = []  # (time, generation) of reload lines
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.rstrip("\n")
            self.lines.append(line)
            pid = PID_IN_LINE.search(line)
            ready = parse_ready(line)
            if ready and pid:
                self.ready.append((time.monotonic(), int(pid.group(1)), ready[1]))
            generation = GENERATION.search(line) if "reload" in line.lower() else None
            if generation:
                self.generations.append((time.monotonic(), int(generation.group(1))))

    def wait_ready(self, deadline: float, count: int = 1) -> int | None:
        """Wait for the count-th ready line (None) or the exit (its status); raise at the
        deadline."""
        while time.monotonic() < deadline:
            if len(self.ready) >= count:
                return None
            rc = self.proc.poll()
            if rc is not None:
                self._reader.join(2)
                return None if len(self.ready) >= count else rc
            time.sleep(0.005)
        raise EcholabError("the server did not listen in time (--timeout)", EXIT_FAILED)

    def wait_exit(self, deadline: float) -> int | None:
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.002)
        return None

    def last_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "")

    def stop(self) -> None:
        """SIGTERM the tree's leader and wait; then end whatever is left of its group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
                self.proc.send_signal(signal.SIGCONT)  # a stopped process acts on it only so
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_WAIT)
        stop_group(self.group, 1.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(2)


def port_sockets(port: int) -> list[str]:
    """Every socket on the server's port now, in every state (what a failed bind met)."""
    return sorted(
        f"{s.state} {s.local} {s.remote_addr}:{s.remote_port}" for s in read_sockets(port)
    )


def describe(status: int) -> str:
    """An exit status as a person reads it (Popen: -N for a signal)."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited {status}"


def rebind_of(status: int, line: str) -> tuple[str, str]:
    """What a failed `echolab serve` start means, by its exit status (never its sentence)."""
    if status == EXIT_ADDR_IN_USE:
        return "EADDRINUSE", f"the new server exited {status}, EXIT_ADDR_IN_USE"
    if status == EXIT_PERMISSION:
        return "EACCES", f"the new server exited {status} (permission denied)"
    return f"failed (exit {status})", line


class LocalBackend:
    """`echolab serve` started by us: stop-start, reuseport and reload."""

    name = "local"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.fills_to_cap = (
            plan.queued > 0 and plan.close_first == "server" and (plan.strategy != "reload")
        )
        self.old: ServeProcess | None = None
        self.new: ServeProcess | None = None
        self.failed_status: int | None = None
        self.port_at_failure: list[str] = []
        self.generation_before = 1

    def start(self, ctx: Context) -> tuple[str, int]:
        p = self.plan
        cap = p.clients if self.fills_to_cap else None
        argv = serve_argv(p.host, p.port, True, p.strategy == "reuseport", cap)
        self.old = ServeProcess(argv)
        rc = self.old.wait_ready(time.monotonic() + p.timeout)
        if rc is not None:
            raise EcholabError(
                f"the first server did not start (exit {rc}): {self.old.last_line()}", EXIT_FAILED
            )
        return p.host, self.old.ready[0][2]

    def restart(self, ctx: Context) -> None:
        if self.plan.strategy == "reload":
            self.reload(ctx)
        elif self.plan.strategy == "reuseport":
            if self.start_new(ctx, reuseport=True):
                self.stop_old(ctx)
        else:
            self.stop_old(ctx)
            ctx.settle_held()
            self.start_new(ctx, reuseport=False)

    def stop_old(self, ctx: Context) -> None:
        assert self.old is not None
        ctx.timeline.mark("stop", f"SIGTERM to PID {self.old.pid}")
        self.old.proc.send_signal(signal.SIGTERM)
        rc = self.old.wait_exit(ctx.deadline)
        if rc is None:
            raise EcholabError("the old server did not stop in time (--timeout)", EXIT_FAILED)
        ctx.timeline.mark("old_exited", f"exit {rc}")

    def start_new(self, ctx: Context, reuseport: bool) -> bool:
        """Start the new server; True once it listens."""
        p = self.plan
        port = self.old.ready[0][2] if self.old else p.port
        ctx.sample_now("before-bind")
        self.new = ServeProcess(serve_argv(p.host, port, p.reuseaddr, reuseport))
        ctx.timeline.mark("new_started", f"PID {self.new.pid}")
        rc = self.new.wait_ready(ctx.deadline)
        if rc is None:
            ctx.timeline.mark("bound", f"PID {self.new.pid} listening", t=self.new.ready[0][0])
        else:
            self.failed_status = rc
            ctx.timeline.mark("start_failed", f"exit {rc}: {self.new.last_line()}")
            self.port_at_failure = port_sockets(port)
        ctx.sample_now("after-bind")
        return rc is None

    def reload(self, ctx: Context) -> None:
        """SIGHUP in place; wait for the server's next generation (or its death)."""
        assert self.old is not None
        seen = len(self.old.generations)
        self.generation_before = max((g for _, g in self.old.generations), default=1)
        ctx.timeline.mark("stop", f"SIGHUP to PID {self.old.pid}")
        self.old.proc.send_signal(signal.SIGHUP)
        while time.monotonic() < ctx.deadline and self.old.proc.poll() is None:
            if len(self.old.generations) > seen:
                t, generation = self.old.generations[-1]
                ctx.timeline.mark("bound", f"generation {generation}", t=t)
                return
            time.sleep(0.005)
        rc = self.old.proc.poll()
        if rc is not None:
            self.failed_status = rc
            ctx.timeline.mark("old_exited", f"exit {rc} on SIGHUP")

    def gave_up(self) -> bool:
        if self.plan.strategy == "reload":
            return self.old is not None and self.old.proc.poll() is not None
        return self.failed_status is not None

    def finish(self, ctx: Context, r: Result) -> None:
        if self.old is None or not self.old.ready:
            return
        r.startup_ms = round((self.old.ready[0][0] - self.old.started) * 1000, 1)
        r.server_pid_before = self.old.pid
        if self.plan.strategy == "reload":
            self.finish_reload(r)
            return
        if self.new is None:
            return
        if self.new.ready:
            r.rebind, r.server_pid_after = "ok", self.new.pid
        elif self.failed_status is not None:
            r.new_server_status = self.failed_status
            r.rebind, r.rebind_evidence = rebind_of(self.failed_status, self.new.last_line())
            r.restart_output = self.new.last_line()
            r.details["port_at_failure"] = self.port_at_failure

    def finish_reload(self, r: Result) -> None:
        assert self.old is not None
        r.generation_before = self.generation_before
        r.generation_after = max((g for _, g in self.old.generations), default=1)
        seen = reload_lines(self.old.lines)
        r.reload_pid = seen[-1][1] if seen else None
        # The server survived the reload unless it died on the SIGHUP (finish runs after
        # close(), which has stopped it by now: its state then says nothing).
        r.server_pid_after = self.old.pid if self.failed_status is None else None
        if self.failed_status is not None:
            r.rebind = f"failed (SIGHUP: the server {describe(self.failed_status)})"
            r.restart_output = self.old.last_line()
        elif r.generation_after > r.generation_before:
            r.rebind = "ok"
        else:
            r.rebind = "failed (no reload line with a new generation in the server's log)"

    def close(self) -> None:
        for proc in (self.new, self.old):
            if proc is not None:
                proc.stop()


# The socket holder under systemd-socket-activate: it keeps the listening socket (descriptor
# 3) open and starts one server after another on it, each told by LISTEN_FDS/LISTEN_PID that
# the socket is its own (sd_listen_fds(3): LISTEN_PID must be the server's PID, and `exec`
# keeps the inner shell's). A server that fails is restarted after a second, like systemd's
# Restart= with RestartSec=1.
HOLDER = (
    'while :; do sh -c \'export LISTEN_PID=$$; exec "$@"\' serve "$@"; status=$?; '
    'echo "holder: the server exited $status" >&2; [ "$status" -eq 0 ] || sleep 1; done'
)


def free_port(host: str) -> int:
    """A port nobody uses on `host` now (bound without SO_REUSEADDR: none in TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SocketActivationBackend:
    """The listening socket is held by a parent that outlives each server (systemd's .socket
    unit; locally `systemd-socket-activate` and a shell loop)."""

    name = "local"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.fills_to_cap = plan.queued > 0 and plan.close_first == "server"
        self.tool = shutil.which("systemd-socket-activate")
        self.tree: ServeProcess | None = None
        self.server_pid = 0
        self.server_started: int | None = None  # its start time: a PID alone may be reused
        self.before_pid = 0

    def start(self, ctx: Context) -> tuple[str, int]:
        p = self.plan
        if self.tool is None:
            raise EcholabError(
                "--strategy socket-activation needs systemd-socket-activate (Debian: the "
                "systemd package)",
                EXIT_FAILED,
            )
        port = p.port or free_port(p.host)
        cap = p.clients if self.fills_to_cap else None
        serve = serve_argv(p.host, port, True, False, cap)
        argv = [self.tool, "-l", format_address(p.host, port), "--", "sh", "-c", HOLDER]
        self.tree = ServeProcess([*argv, "holder", *serve])
        deadline = time.monotonic() + p.timeout
        while not any(line.startswith("Listening on") for line in self.tree.lines):
            if self.tree.proc.poll() is not None or time.monotonic() > deadline:
                raise EcholabError(
                    f"systemd-socket-activate did not listen: {self.tree.last_line()}",
                    EXIT_FAILED,
                )
            time.sleep(0.005)
        # It starts the holder on the first connection: make one, and wait for the server.
        with socket.create_connection((p.host, port), timeout=p.timeout):
            if self.tree.wait_ready(deadline) is not None:
                raise EcholabError(f"the server did not start: {self.tree.last_line()}")
        self.server_pid = self.before_pid = self.tree.ready[0][1]
        self.server_started = start_time(self.server_pid)
        return p.host, port

    def restart(self, ctx: Context) -> None:
        assert self.tree is not None
        old = self.server_pid
        ctx.timeline.mark("stop", f"SIGTERM to PID {old}")
        signal_process(old, signal.SIGTERM, self.server_started)
        seen = len(self.tree.ready)
        exited = False
        while time.monotonic() < ctx.deadline and not self.gave_up():
            if not exited and process_state(old) in ("", "Z"):
                exited = True
                ctx.timeline.mark("old_exited", f"PID {old}")
                ctx.settle_held()
                ctx.sample_now("before-bind")
            if exited and len(self.tree.ready) > seen:
                t, self.server_pid, _ = self.tree.ready[seen]
                self.server_started = start_time(self.server_pid)
                ctx.timeline.mark("bound", f"PID {self.server_pid} took over the listener", t=t)
                ctx.sample_now("after-bind")
                return
            time.sleep(0.002)
        raise EcholabError("the next server did not start in time (--timeout)", EXIT_FAILED)

    def gave_up(self) -> bool:
        return self.tree is None or self.tree.proc.poll() is not None

    def finish(self, ctx: Context, r: Result) -> None:
        if self.tree is None or not self.tree.ready:
            return
        r.startup_ms = round((self.tree.ready[0][0] - self.tree.started) * 1000, 1)
        r.server_pid_before, r.server_pid_after = self.before_pid, self.server_pid
        r.details["holder_pid"] = self.tree.pid
        if self.server_pid != self.before_pid:
            r.rebind = "inherited"

    def close(self) -> None:
        """The holder first (so it starts no further server), then the server, then the rest."""
        if self.tree is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.tree.proc.send_signal(signal.SIGTERM)  # a Popen: never a waited-for PID
        if self.server_pid:
            signal_process(self.server_pid, signal.SIGTERM, self.server_started)
        self.tree.stop()


def shell_command(command: str, *, stderr: int) -> subprocess.Popen[str]:
    """The operator's own command line (--restart-cmd, --log-cmd), run through the shell as
    documented, in a process group of its own (stopped as a whole if need be), output read as
    text with undecodable bytes replaced."""
    return subprocess.Popen(  # noqa: S602
        command,
        shell=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        errors="replace",
        start_new_session=True,
    )


class CommandBackend:
    """`--restart-cmd CMD` against `--target HOST:PORT`: a server run by something else."""

    name = "command"
    fills_to_cap = False

    def __init__(
        self, plan: Plan, command: str, target: tuple[str, int], log_command: str | None = None
    ) -> None:
        self.plan = plan
        self.command = command
        self.target = target
        self.log_command = log_command  # reload: prints the server's log (--log-cmd)
        self.proc: subprocess.Popen[str] | None = None
        self.group: ProcessGroup | None = None
        self.output: list[str] = []
        self.status: int | None = None
        self._reader: threading.Thread | None = None
        self.generation_before = 1  # the server starts at generation 1 and logs each reload
        self.generation_last: int | None = None  # the highest in the log's last reading
        self.reloaded: tuple[int, int | None] | None = None  # (generation, PID) of the new line
        self.log_runs = 0

    def start(self, ctx: Context) -> tuple[str, int]:
        if self.log_command is not None:
            seen = reload_lines(self.read_log())
            self.generation_before = max((g for g, _ in seen), default=1)
        return self.target

    def read_log(self) -> list[str]:
        """The server's log lines as --log-cmd prints them now (the operator's command, through
        the shell). A command that fails or hangs is an error: the reload could not be seen."""
        assert self.log_command is not None
        self.log_runs += 1
        proc = shell_command(self.log_command, stderr=subprocess.PIPE)
        group = ProcessGroup.of(proc)  # now, before anything waits for the leader
        try:
            out, err = proc.communicate(timeout=LOG_CMD_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_group(group, 1.0)
            proc.communicate(timeout=5)
            raise EcholabError(
                f"the log command (--log-cmd) did not finish within {LOG_CMD_TIMEOUT:g} s",
                EXIT_USAGE,
            ) from None
        except BaseException:  # a signal (Interrupted) cut the wait short: leave nothing behind
            stop_group(group, 1.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            raise
        if proc.returncode:
            last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "no output")
            raise EcholabError(
                f"the log command (--log-cmd) exited {proc.returncode}: {last.strip()[:200]}",
                EXIT_USAGE,
            )
        return out.splitlines()

    def wait_reloaded(self, ctx: Context) -> None:
        """Reload: read the server's log until a generation above the one before shows (the
        restart command, `systemctl reload` or `kill -HUP`, returns before the server has
        re-executed itself), or until the deadline."""
        while True:
            seen = reload_lines(self.read_log())
            self.generation_last = max((g for g, _ in seen), default=self.generation_before)
            new = [(g, pid) for g, pid in seen if g > self.generation_before]
            if new:
                self.reloaded = new[-1]
                generation, pid = self.reloaded
                ctx.timeline.mark("bound", f"generation {generation} in the log, PID {pid}")
                return
            if time.monotonic() + LOG_POLL >= ctx.deadline:
                ctx.timeline.mark("no_reload", "no new generation in the log by the deadline")
                return
            time.sleep(LOG_POLL)

    def restart(self, ctx: Context) -> None:
        ctx.timeline.mark("stop", "the restart command began")
        self.proc = shell_command(self.command, stderr=subprocess.STDOUT)
        self.group = ProcessGroup.of(self.proc)  # now, before anything waits for the leader
        proc = self.proc
        self._reader = threading.Thread(target=lambda: self.output.extend(proc.stdout or []))
        self._reader.daemon = True
        self._reader.start()
        while proc.poll() is None and time.monotonic() < ctx.deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            n = stop_group(self.group, 1.0)
            proc.wait(5)
            raise EcholabError(
                f"the restart command did not finish within {self.plan.timeout:g} s "
                f"(--timeout): stopped its process group ({n} process(es))",
                EXIT_FAILED,
            )
        self.status = proc.returncode
        ctx.timeline.mark("restart_cmd_exited", f"exit {self.status}")
        if self.status:
            # The failure is seen now: a new server that tried to bind has tried by now. The
            # engine takes this reading as the end of the bind attempt's window.
            ctx.timeline.mark("restart_failed", f"the restart command exited {self.status}")
            ctx.sample_now("restart-failed")
        elif self.plan.strategy == "reload" and self.log_command is not None:
            self.wait_reloaded(ctx)

    def gave_up(self) -> bool:
        return bool(self.status)

    def finish(self, ctx: Context, r: Result) -> None:
        if self._reader is not None:
            self._reader.join(1)
        r.restart_cmd_status = self.status
        r.restart_output = "".join(self.output).strip()[-OUTPUT_TAIL:]
        if self.plan.strategy == "reload":
            self.finish_reload(r)
            return
        after = set(r.listeners_after) - set(r.listeners_before)
        restarted = bool(after) or bool(set(r.owners_after) - set(r.owners_before))
        self.classify(r, restarted, after)

    def finish_reload(self, r: Result) -> None:
        """Reload from the outside: the generations the log showed, and the server's PID as the
        process holding the listener (its socket inode's owner in /proc/*/fd) before and after."""
        r.generation_before = self.generation_before
        r.generation_after = self.reloaded[0] if self.reloaded else self.generation_last
        r.reload_pid = self.reloaded[1] if self.reloaded else None
        r.details["log_cmd_runs"] = self.log_runs
        r.server_pid_before = _only(r.owners_before)
        r.server_pid_after = _only(r.owners_after)
        if self.status:
            r.rebind = f"failed (exit {self.status})"
        elif self.reloaded is None:
            r.rebind = "failed (no reload line with a new generation in the server's log)"
        elif not r.listeners_after:
            r.rebind = "failed (no listener after the reload)"
        else:
            r.rebind = "ok"

    def classify(self, r: Result, restarted: bool, after: set[int]) -> None:
        """The outcome from the command's status and the port's listeners."""
        if r.echoed_after and restarted:
            r.rebind = "ok"
        elif self.status == EXIT_ADDR_IN_USE and not after:
            # By status only, never by a sentence in its output: the command passes on the new
            # server's exit status (the role's restart-service: the unit's ExecMainStatus).
            r.rebind = "EADDRINUSE"
            r.rebind_evidence = (
                f"the restart command exited {self.status}, EXIT_ADDR_IN_USE, and no new "
                "listener took the port"
            )
        elif self.status:
            r.rebind = f"failed (exit {self.status})"
        elif r.echoed_after and not after:
            r.rebind = "same listener"
        else:
            r.rebind = "no listener"

    def close(self) -> None:
        """A command still running (interrupted) is stopped with its whole process group; one
        that finished may have started the new server in that group: that one stays."""
        if self.proc is not None and self.group is not None and self.proc.poll() is None:
            stop_group(self.group, 1.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
