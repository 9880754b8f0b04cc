"""`echolab serve` reloading in place on SIGHUP: same PID, same listeners, children adopted,
nobody refused or reset, nothing leaked; and a reload that cannot happen leaves it serving."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from echolab.proctree import children_of, kill_tree, process_state
from tests.integration.test_server import EXIT_LINE, read_until_eof
from tests.support import (
    ROOT,
    ServerProc,
    _pump,
    connect,
    echo_once,
    running_server,
    start_server,
    wait_until,
)


def exit_lines(log: str) -> dict[int, re.Match[str]]:
    return {int(m.group(1)): m for m in map(EXIT_LINE.search, log.splitlines()) if m}


def fd_table(pid: int) -> dict[int, str]:
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return table


def reload(srv: ServerProc, generation: int, timeout: float = 30.0) -> re.Match[str]:
    """SIGHUP, and the reload line of `generation` from the same PID."""
    start = len(srv.lines)
    srv.proc.send_signal(signal.SIGHUP)
    return srv.wait_for_line(
        rf"echolab\[{srv.pid}\] INFO reloaded: generation {generation}, (\d+) children adopted",
        timeout,
        start,
    )


class Stream(threading.Thread):
    """One long-lived connection streaming random bytes both ways, every byte checked."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = connect(port, timeout=30)
        self.sent = bytearray()
        self.got = bytearray()
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        try:
            while not self.stopping.is_set():
                chunk = rng.randbytes(rng.randint(1, 65536))
                self.sock.sendall(chunk)
                self.sent += chunk
                while len(self.got) < len(self.sent):
                    self.got += self.sock.recv(len(self.sent) - len(self.got))
                time.sleep(0.001)
            self.sock.shutdown(socket.SHUT_WR)
            self.got += read_until_eof(self.sock, 30)
        except BaseException as exc:  # noqa: BLE001  reported by the test
            self.error = exc

    def finish(self) -> None:
        self.stopping.set()
        self.join(60)
        self.sock.close()


class Hammer(threading.Thread):
    """Short connections in a loop: connect, echo 64 random bytes, close; outcomes counted."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.counts = {"ok": 0, "refused": 0, "reset": 0, "wrong": 0, "other": 0}
        self.samples: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            payload = os.urandom(64)
            try:
                with connect(self.port, timeout=30) as c:
                    got = echo_once(c, payload)
                outcome = "ok" if got == payload else "wrong"
            except ConnectionRefusedError:
                outcome = "refused"
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"
            except OSError as exc:
                outcome = "other"
                self.samples.append(repr(exc))
            self.counts[outcome] += 1
            time.sleep(0.005)  # many, not a flood: each leaves a TIME_WAIT for 60 s

    def finish(self) -> None:
        self.stopping.set()
        self.join(60)


def assert_same_descriptors(before: dict[int, str], after: dict[int, str]) -> None:
    """The same descriptors to the same sockets; the wakeup pipe is new, but still a pipe."""
    assert after.keys() == before.keys()
    for fd, target in before.items():
        same_kind = target.split(":")[0] == after[fd].split(":")[0]
        assert target == after[fd] or (same_kind and target.startswith("pipe:")), fd


def test_twenty_reloads_under_load_refuse_nobody_and_adopt_every_child() -> None:
    srv = start_server("--grace", "5")
    try:
        fds_before = fd_table(srv.pid)
        idle = [connect(srv.port, timeout=30) for _ in range(3)]
        for i, c in enumerate(idle):
            assert echo_once(c, b"idle %d" % i) == b"idle %d" % i
        wait_until(lambda: len(children_of(srv.pid)) == 3, what="3 idle sessions")
        idle_pids = set(children_of(srv.pid))
        stream = Stream(srv.port)
        stream.start()
        wait_until(lambda: len(children_of(srv.pid)) == 4, what="the stream's session")
        adopted_pids = set(children_of(srv.pid))
        (stream_child,) = adopted_pids - idle_pids
        hammers = [Hammer(srv.port) for _ in range(3)]
        for h in hammers:
            h.start()
        for generation in range(2, 22):
            m = reload(srv, generation)
            assert int(m.group(1)) >= 4, m.string  # the idle sessions and the stream, at least
            assert srv.proc.poll() is None
            time.sleep(0.05)
        for h in hammers:
            h.finish()
        stream.finish()
        assert stream.error is None, repr(stream.error)
        assert len(stream.sent) > 0 and stream.got == stream.sent, "the stream came back altered"
        totals = {k: sum(h.counts[k] for h in hammers) for k in hammers[0].counts}
        assert totals["ok"] > 20, totals
        assert totals == {**totals, "refused": 0, "reset": 0, "wrong": 0, "other": 0}, (
            totals,
            [s for h in hammers for s in h.samples],
        )
        # Still the parent of the sessions it had before the first reload.
        assert adopted_pids <= set(children_of(srv.pid)) | set(exit_lines(srv.log))
        for c in idle:
            assert echo_once(c, b"after") == b"after"
        wait_until(
            lambda: set(children_of(srv.pid)) == idle_pids, 20, what="only the idle sessions left"
        )
        assert not [k for k in children_of(srv.pid) if process_state(k) == "Z"], "a zombie"
        assert_same_descriptors(fds_before, fd_table(srv.pid))
        stopped_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for c in idle:  # ended in order at the stop: a FIN from the server
            assert read_until_eof(c, 30) == b""
            c.close()
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
        kill_tree(srv.proc)
    assert time.monotonic() - stopped_at < 30
    lines = exit_lines(srv.log)
    for pid in adopted_pids:  # every adopted child: reaped, logged once, with its bytes
        assert process_state(pid) == "", f"child {pid} outlived the server"
        assert pid in lines and lines[pid].group(5) != "?", srv.log
    assert lines[stream_child].group(3) == "closed by client"
    assert int(lines[stream_child].group(5)) == len(stream.sent)
    assert [lines[p].group(3) for p in idle_pids] == ["closed by server shutdown"] * 3
    pids = set(re.findall(r"echolab\[(\d+)\] INFO (?:reloaded|listening)", srv.log))
    assert pids == {str(srv.pid)}, "the PID changed"
    assert "Traceback" not in srv.log and " ERROR " not in srv.log


def test_signals_in_the_exec_window_are_kept_and_exits_in_it_are_logged() -> None:
    for attempt in range(5):
        srv = start_server("--grace", "5")
        try:
            clients = [connect(srv.port) for _ in range(3)]
            for c in clients:
                assert echo_once(c, b"abc") == b"abc"
            kids = children_of(srv.pid)
            srv.proc.send_signal(signal.SIGHUP)
            srv.wait_for_line("reloading in place")
            # Now the old image is in execve() or the new one starting: no handler of ours.
            for c in clients:
                c.close()
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(30) == 0, f"attempt {attempt}: died of the SIGTERM"
        finally:
            srv.stop()
        assert "SIGTERM: stopping" in srv.log
        lines = exit_lines(srv.log)
        assert sorted(lines) == sorted(kids), srv.log
        assert all(m.group(5) == "3" for m in lines.values()), srv.log
        assert all(process_state(k) == "" for k in kids)


def test_adopted_children_count_against_the_cap() -> None:
    with running_server("--max-children", "2") as srv:
        held = [connect(srv.port) for _ in range(2)]
        for c in held:
            assert echo_once(c, b"in") == b"in"
        reload(srv, 2)
        waiting = connect(srv.port)
        waiting.sendall(b"queued")
        waiting.settimeout(1.0)
        with pytest.raises(TimeoutError):
            waiting.recv(100)  # in the backlog: both slots are the adopted children's
        held[0].close()  # an adopted child exits: reaped by the new image, a slot frees
        waiting.settimeout(10)
        assert waiting.recv(100) == b"queued"
        for c in [*held[1:], waiting]:
            c.close()
        wait_until(lambda: not children_of(srv.pid), 10, what="children gone")
    lines = exit_lines(srv.log)
    assert len(lines) == 3 and all(m.group(5) != "?" for m in lines.values())


def test_the_reload_line_in_json() -> None:
    import json

    with running_server("--log-format", "json") as srv, connect(srv.port) as c:
        assert echo_once(c, b"x") == b"x"
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for_line('"event":"reload"')
    (entry,) = [e for e in map(json.loads, srv.lines) if e.get("event") == "reload"]
    assert (entry["generation"], entry["adopted"], entry["pid"]) == (2, 1, srv.pid)
    assert entry["msg"].startswith("reloaded: generation 2, 1 children adopted, echolab ")


# --- a reload that cannot happen -----------------------------------------------------------


def serve_from(root: Path, python: str = sys.executable) -> ServerProc:
    """`echolab serve` run from a copy of the package under `root` (an install we can break)."""
    boot = f"import sys; sys.path.insert(0, {str(root)!r}); from echolab.cli import main; "
    boot += "sys.exit(main())"
    proc = subprocess.Popen(
        [python, "-I", "-c", boot, "serve", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    srv = ServerProc(proc)
    srv._reader = threading.Thread(target=_pump, args=(srv,), daemon=True)
    srv._reader.start()
    m = srv.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)")
    srv.port = int(m.group(1))
    return srv


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    shutil.copytree(ROOT / "app" / "echolab", root / "echolab")
    return root


def test_a_broken_install_is_refused_in_one_line_and_a_fixed_one_is_run(installed: Path) -> None:
    srv = serve_from(installed)
    try:
        c = connect(srv.port)
        assert echo_once(c, b"before") == b"before"
        session = installed / "echolab" / "session.py"
        good = session.read_text()
        session.write_text(good + "\nthis is not python(\n")
        start = len(srv.lines)
        srv.proc.send_signal(signal.SIGHUP)
        m = srv.wait_for_line("reload failed", start=start)
        assert (
            "reload failed, the running code serves on: the installed code does not start: "
            in m.string
        )
        assert "SyntaxError" in m.string
        time.sleep(0.3)
        assert len(srv.lines) == start + 1, srv.lines[start:]  # one line, nothing else
        assert echo_once(c, b"still served") == b"still served"
        with connect(srv.port) as other:
            assert echo_once(other, b"new client") == b"new client"
        # The fix is installed, with a new version: the next reload runs it.
        session.write_text(good)
        init = installed / "echolab" / "__init__.py"
        init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+'))
        m = reload(srv, 2)
        assert m.string.endswith(", echolab 9.9.9+0.1.0")
        assert int(m.group(1)) >= 1
        assert echo_once(c, b"after") == b"after"
        c.close()
        assert srv.stop() == 0
    finally:
        kill_tree(srv.proc)
    assert "Traceback" not in srv.log


def test_a_vanished_interpreter_is_refused_in_one_line(installed: Path, tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.symlink_to(os.path.realpath(sys.executable))
    srv = serve_from(installed, str(python))
    try:
        python.unlink()
        start = len(srv.lines)
        srv.proc.send_signal(signal.SIGHUP)
        m = srv.wait_for_line("reload failed", start=start)
        assert f"cannot run {python}: No such file or directory" in m.string
        with connect(srv.port) as c:
            assert echo_once(c, b"still") == b"still"
        assert srv.stop() == 0
    finally:
        kill_tree(srv.proc)
