"""Helpers for tests that run real servers as subprocesses on loopback.

Servers are started as subprocesses (forking inside a threaded pytest process warns on 3.12+)
on port 0; the real port is read from the server's `listening on HOST:PORT` line.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from echolab.proctree import kill_tree
from echolab.ready import READY_PREFIX, parse_ready

ROOT = Path(__file__).resolve().parent.parent


def echolab_cmd(*args: str) -> list[str]:
    """The command line that runs echolab with this interpreter (same venv as the tests)."""
    return [sys.executable, "-m", "echolab", *args]


@dataclass
class ServerProc:
    """A running `echolab serve` subprocess and the lines it logged so far."""

    proc: subprocess.Popen[str]
    port: int = 0
    host: str = ""
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait until a logged line (from index `start`) matches `pattern`; return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} in {timeout}s; log:\n{self.log}"
                )
            if self.proc.poll() is not None and (
                self._reader is None or not self._reader.is_alive()
            ):
                raise AssertionError(f"server exited {self.proc.returncode}; log:\n{self.log}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc)
            rc = self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return rc


def _pump(sp: ServerProc) -> None:
    assert sp.proc.stderr is not None
    for line in sp.proc.stderr:
        sp.lines.append(line.rstrip("\n"))


def start_server(
    *args: str,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 10.0,
    preexec_fn: Callable[[], None] | None = None,
) -> ServerProc:
    """Start `echolab serve ARGS` (default --host 127.0.0.1 --port 0) and wait until it listens."""
    argv = list(args)
    if "--host" not in argv:
        argv += ["--host", "127.0.0.1"]
    if "--port" not in argv:
        argv += ["--port", "0"]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        echolab_cmd("serve", *argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
        preexec_fn=preexec_fn,
    )
    sp = ServerProc(proc)
    sp._reader = threading.Thread(target=_pump, args=(sp,), daemon=True)
    sp._reader.start()
    if wait:
        m = sp.wait_for_line(re.escape(READY_PREFIX), timeout)
        ready = parse_ready(m.string)
        assert ready is not None, f"unparsable ready line: {m.string!r}"
        sp.host, sp.port = ready
    return sp


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProc]:
    """A server for the length of a `with` block; stopped with SIGTERM and checked for exit 0."""
    sp = start_server(*args, env=env)
    try:
        yield sp
    finally:
        rc = sp.stop()
        assert rc == 0, f"server exited {rc}; log:\n{sp.log}"


def connect(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A connected client socket with a timeout."""
    s = socket.create_connection((host, port), timeout=timeout)
    return s


def echo_once(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload` and read exactly len(payload) bytes back."""
    sock.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = sock.recv(min(1 << 20, len(payload) - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` until it is true, else fail with `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def run_echolab(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an echolab subcommand to completion and capture its output."""
    return subprocess.run(
        echolab_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
        cwd=ROOT,
    )


def ss_time_wait(port: int) -> int | None:
    """TIME_WAIT sockets on local port `port` as `ss` counts them (None without ss)."""
    try:
        out = subprocess.run(
            ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(1 for line in out.splitlines() if line.strip())


def require(condition: bool, reason: str) -> None:
    """Skip a test whose precondition this machine lacks; under CI=true that is a failure."""
    import pytest

    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)  # only outside CI: with CI=true the line above fails instead


@contextmanager
def pids_cgroup(limit: int) -> Iterator[str]:
    """A cgroup v1 pids cgroup holding at most `limit` tasks; yields its cgroup.procs path."""
    root = "/sys/fs/cgroup/pids"
    require(
        os.geteuid() == 0 and os.access(root, os.W_OK),
        "needs root and a writable cgroup v1 pids controller",
    )
    path = f"{root}/echolab-test-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(path)
    try:
        with open(f"{path}/pids.max", "w") as f:
            f.write(str(limit))
        yield f"{path}/cgroup.procs"
    finally:
        with open(f"{path}/cgroup.procs") as f:
            for pid in f.read().split():
                kill_tree(int(pid))
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
