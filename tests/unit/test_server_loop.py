"""The parent's logic, driven directly: signal dispatch, reaping, the accept pause, the reload
state. No sockets and no forks: fake listeners are pipes, fork() and waitpid() are fakes."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from echolab import server as srv
from echolab.logs import log
from echolab.server import Child, ForkingEchoServer, Lineage


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Callable[[], list[str]]]:
    """The server's log lines so far (debug and up)."""
    path = tmp_path / "log"
    with open(path, "w") as f:
        log.configure("debug", "text", fd=f.fileno())
        try:
            yield lambda: path.read_text().splitlines()
        finally:
            log.configure()


class FakeListener:
    """A listening socket as the server sees it: a pipe to watch, and connections to accept
    (pipe descriptors stand in for them)."""

    def __init__(self, pending: int = 0) -> None:
        self._r, self._w = os.pipe()
        self.queue = [self._conn() for _ in range(pending)]
        self.accepts = 0

    @staticmethod
    def _conn() -> tuple[int, tuple[str, int]]:
        r, w = os.pipe()
        os.close(w)
        return r, ("127.0.0.1", 40000 + r)

    def fileno(self) -> int:
        return self._r

    def setblocking(self, flag: bool) -> None:
        pass

    def _accept(self) -> tuple[int, tuple[str, int]]:
        self.accepts += 1
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "no connection waiting")
        return self.queue.pop(0)

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def make_server() -> Iterator[Callable[..., tuple[ForkingEchoServer, FakeListener]]]:
    made: list[ForkingEchoServer] = []

    def make(pending: int = 0, **kw: object) -> tuple[ForkingEchoServer, FakeListener]:
        listener = FakeListener(pending)
        server = ForkingEchoServer([listener], **kw)  # type: ignore[list-item,arg-type]
        made.append(server)
        return server, listener

    yield make
    for server in made:
        server.close_listeners()
        server._epoll.close()
        for fd in (server._wakeup_r, server._wakeup_w, server._report_r, server._report_w):
            os.close(fd)


def fake_forks(monkeypatch: pytest.MonkeyPatch, results: list[int | OSError]) -> list[int]:
    """os.fork() returns (or raises) `results` in turn; returns the list of pids handed out."""
    given: list[int] = []

    def fork() -> int:
        result = results.pop(0)
        if isinstance(result, OSError):
            raise result
        given.append(result)
        return result

    monkeypatch.setattr(srv.os, "fork", fork)
    return given


EAGAIN = OSError(errno.EAGAIN, "Resource temporarily unavailable")
# How an observer (restart-check --strategy reload) recognises a reload: a line with "reload"
# and a generation number. Only the new image's line after a reload may match.
GENERATION = re.compile(r"generation\D{0,3}(\d+)", re.IGNORECASE)


def claims_a_generation(line: str) -> bool:
    return "reload" in line.lower() and GENERATION.search(line) is not None


# --- signal dispatch -----------------------------------------------------------------------


def test_the_handler_only_records(make_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.handle_signal(signal.SIGTERM, None)
    server.handle_signal(signal.SIGUSR1, None)
    assert server._signals == [signal.SIGTERM, signal.SIGUSR1]
    assert not server._stopping


def test_sigterm_stops_and_closes_the_listeners(make_server, logged) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.resume_accepting()
    server._signals = [signal.SIGTERM]
    server.dispatch_signals()
    assert server._stopping and server.listeners == [] and not server._accepting
    assert server._cuts == 0
    assert logged()[-1].endswith("SIGTERM: stopping")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_a_second_stop_signal_in_the_same_wakeup_still_cuts_the_grace(  # type: ignore[no-untyped-def]
    make_server, logged, second: int
) -> None:
    server, _ = make_server()
    server._signals = [signal.SIGTERM, second]  # both arrived before the loop woke up
    server.dispatch_signals()
    assert server._stopping
    assert server._cuts == 1
    assert "again: ending the grace period" in logged()[-1]


def test_every_further_stop_signal_ends_one_more_wait(make_server, logged) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    for expected_cuts in range(4):
        server._signals = [signal.SIGINT]
        server.dispatch_signals()
        assert server._cuts == expected_cuts
    assert "ending the wait for the children" in logged()[-1]


def test_sigquit_stops_without_grace(make_server, logged) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server._signals = [signal.SIGQUIT]
    server.dispatch_signals()
    assert server._stopping and server._cuts == 1
    assert logged()[-1].endswith("SIGQUIT: stopping now, no grace")


def test_a_cut_grace_wait_returns_at_once_with_children_left(make_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.children[4242] = Child(("127.0.0.1", 1), time.monotonic())
    server._stopping, server._cuts = True, 1
    started = time.monotonic()
    server.wait_children(3600.0, 0)  # the grace, already cut: must not wait
    assert time.monotonic() - started < 60
    assert 4242 in server.children


def test_sigusr1_logs_one_status_line(make_server, logged) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server(max_children=7)
    server.children[11] = Child(("127.0.0.1", 1), time.monotonic())
    server.lineage.finished = 5
    server.resume_accepting()
    server._signals = [signal.SIGUSR1]
    server.dispatch_signals()
    (line,) = logged()
    assert "SIGUSR1: status: 1 children (cap 7), accepting, 6 accepted, 5 finished" in line
    assert "generation 1" in line and "uptime" in line
    assert not server._stopping


def test_other_signals_are_ignored_with_one_line_each(make_server, logged) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.resume_accepting()
    server._signals = [signal.SIGUSR2, signal.SIGALRM, signal.SIGUSR2, signal.SIGPIPE, 40]
    server.dispatch_signals()
    messages = [line.split(" INFO ", 1)[1] for line in logged()]
    assert sorted(messages) == sorted(
        ["SIGUSR2 ignored (2 times)", "SIGALRM ignored", "SIGPIPE ignored", "SIGRTMIN+6 ignored"]
    )
    assert server._accepting and not server._stopping


def test_every_catchable_signal_has_a_meaning() -> None:
    catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    meant = set(srv._HANDLED) | set(srv._KERNEL_IGNORED) | set(srv._DEFAULT)
    assert catchable <= meant
    assert set(srv._ACTIONS) <= set(srv._HANDLED)
    assert not set(srv._HANDLED) & {signal.SIGSEGV, signal.SIGTTOU, signal.SIGKILL}
    assert {signal.SIGABRT, signal.SIGTRAP, signal.SIGUSR2} <= set(srv._HANDLED) - set(srv._ACTIONS)


def test_reaping_comes_first_and_the_reload_last(make_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    order: list[str] = []
    monkeypatch.setattr(server, "reap_children", lambda: order.append("reap"))
    monkeypatch.setattr(server, "handle_reload", lambda name: order.append("reload"))
    monkeypatch.setattr(server, "handle_status", lambda name: order.append("status"))
    server._signals = [signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD, signal.SIGCHLD]
    server.dispatch_signals()
    assert order == ["reap", "status", "reload"]


def test_a_reload_with_a_stop_in_the_same_wakeup_does_not_happen(  # type: ignore[no-untyped-def]
    make_server, logged, monkeypatch
) -> None:
    server, _ = make_server(exec_argv=["/nonexistent"])
    monkeypatch.setattr(server, "exec_in_place", lambda fd: pytest.fail("re-executed"))
    server._signals = [signal.SIGHUP, signal.SIGTERM]
    server.dispatch_signals()
    assert server._stopping
    assert logged()[-1].endswith("SIGHUP: stopping, not reloading")


# --- reaping with a fake waitpid -----------------------------------------------------------


def exited(code: int) -> int:
    return code << 8


def fake_waitpid(
    monkeypatch: pytest.MonkeyPatch, results: list[tuple[int, int] | type[Exception]]
) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        calls.append((pid, options))
        result = results.pop(0)
        if isinstance(result, type):
            raise result()
        return result

    monkeypatch.setattr(srv.os, "waitpid", waitpid)
    return calls


def test_reaps_several_children_at_once_through_eintr(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    now = time.monotonic()
    server.children.update({101: Child(("127.0.0.1", 5001), now), 102: Child(("::1", 5002), now)})
    server.children[101].nbytes = 64
    calls = fake_waitpid(
        monkeypatch, [(101, exited(0)), InterruptedError, (102, signal.SIGKILL), (0, 0)]
    )
    server.reap_children()
    assert calls == [(-1, os.WNOHANG)] * 4
    assert server.children == {}
    assert server.lineage.finished == 2
    lines = logged()
    assert "child 101 127.0.0.1:5001: closed by client after" in lines[0]
    assert lines[0].endswith("64 bytes echoed")
    assert "child 102 [::1]:5002: killed by SIGKILL" in lines[1]
    assert lines[1].endswith("? bytes echoed")


def test_echild_ends_the_reaping(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.children[7] = Child(("127.0.0.1", 1), time.monotonic())
    fake_waitpid(monkeypatch, [ChildProcessError])
    server.reap_children()
    assert 7 in server.children and logged() == []


def test_unknown_pids_are_reaped_as_orphans_not_counted(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.children[7] = Child(("127.0.0.1", 1), time.monotonic())
    fake_waitpid(monkeypatch, [(999, exited(0)), (7, exited(4)), ChildProcessError])
    server.reap_children()
    assert server.children == {} and server.lineage.finished == 1
    lines = logged()
    assert "reaped pid 999 (not a client's child" in lines[0]
    assert "child 7 127.0.0.1:1: idle timeout" in lines[1]


def test_reaping_below_the_cap_resumes_accepting(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server(max_children=1)
    server.children[7] = Child(("127.0.0.1", 1), time.monotonic())
    server.pause_accepting(None)
    server.resume_accepting()
    assert not server._accepting  # still at the cap
    fake_waitpid(monkeypatch, [(7, exited(0)), (0, 0)])
    server.reap_children()
    assert server._accepting
    assert logged()[-1].endswith("below the cap again: accepting")


def test_reports_give_the_bytes_even_split_across_reads(make_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.children[55] = Child(("127.0.0.1", 1), time.monotonic())
    report = srv.REPORT.pack(55, 12345)
    os.write(server._report_w, report[:5])
    server.read_reports()
    assert server.children[55].nbytes == -1
    os.write(server._report_w, report[5:])
    server.read_reports()
    assert server.children[55].nbytes == 12345


# --- the accept pause ----------------------------------------------------------------------


def test_at_the_cap_the_batch_stops_and_clients_stay_in_the_backlog(  # type: ignore[no-untyped-def]
    make_server, logged, monkeypatch
) -> None:
    server, listener = make_server(pending=5, max_children=2)
    fake_forks(monkeypatch, [1001, 1002])
    server.resume_accepting()
    server.accept_clients(listener)  # type: ignore[arg-type]
    assert sorted(server.children) == [1001, 1002]
    assert listener.accepts == 2 and len(listener.queue) == 3
    assert not server._accepting and server._resume_at is None
    assert logged() == [logged()[0]] and "at the cap of 2 children" in logged()[0]


def test_a_failed_fork_holds_the_connection_and_stops_the_batch(  # type: ignore[no-untyped-def]
    make_server, logged, monkeypatch
) -> None:
    server, listener = make_server(pending=2)
    fake_forks(monkeypatch, [EAGAIN, EAGAIN, 2001, 2002])
    server.resume_accepting()
    server.accept_clients(listener)  # type: ignore[arg-type]
    assert listener.accepts == 1, "accepted on while fork() failed"
    assert server.lineage.held is not None and server.lineage.fork_failures == 1
    assert not server._accepting and server._resume_at is not None
    assert server._resume_at - time.monotonic() <= srv.RETRY_PAUSE
    (warning,) = logged()
    assert "fork() failed for 127.0.0.1:" in warning and "holding that connection" in warning
    # The pause ends: the held connection is tried first, fails again, is held again.
    server._resume_at = None
    server.resume_accepting()
    assert server.lineage.held is not None and server.lineage.fork_failures == 2
    assert not server._accepting and listener.accepts == 1
    assert len(logged()) == 1, "a failure run is logged once"
    # Next time fork() works: the held connection is served first, then accepting resumes.
    server._resume_at = None
    server.resume_accepting()
    assert server.lineage.held is None and list(server.children) == [2001]
    assert server._accepting and listener.accepts == 1
    assert "fork() works again after" in logged()[-1]
    server.accept_clients(listener)  # type: ignore[arg-type]
    assert list(server.children) == [2001, 2002]


def test_no_accepting_while_a_pause_lasts(make_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    server.pause_accepting(srv.RETRY_PAUSE)
    server.resume_accepting()  # e.g. a child exited meanwhile
    assert not server._accepting
    assert 0 < server._pause_left() <= srv.RETRY_PAUSE  # type: ignore[operator]


def test_stopping_closes_a_held_connection(make_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, listener = make_server(pending=1)
    fake_forks(monkeypatch, [EAGAIN])
    server.resume_accepting()
    server.accept_clients(listener)  # type: ignore[arg-type]
    assert server.lineage.held is not None
    fd = server.lineage.held[0]
    server.close_listeners()
    assert server.lineage.held is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_no_wait_is_longer_than_epoll_takes(make_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server()
    waits: list[float] = []

    class FakeEpoll:
        def poll(self, timeout: float) -> list[tuple[int, int]]:
            waits.append(timeout)
            return []

        def close(self) -> None:
            pass

    real, server._epoll = server._epoll, FakeEpoll()
    try:
        server.wait_for_events(30 * 86400.0)  # a grace of 30 days
        server.wait_for_events(None)
    finally:
        server._epoll = real
    assert waits == [srv.LONGEST_WAIT, -1.0]
    assert srv.LONGEST_WAIT * 1000 < 2**31 - 1


# --- the reload's state and its failure paths ----------------------------------------------


def test_the_lineage_survives_its_encoding() -> None:
    lin = Lineage()
    lin.generation, lin.finished, lin.fork_failures = 4, 1234, 2
    lin.report, lin.held, lin.signals = (7, 8), (9, ("::ffff:10.0.0.1", 41000)), [15, 17]
    lin.children[321] = Child(("fe80::1%lo", 5000), 12.5, 99)
    lin.children[322] = Child(("127.0.0.1", 5001), 13.25)
    back = Lineage.decode(lin.encode())
    assert (back.generation, back.finished, back.fork_failures) == (4, 1234, 2)
    assert (back.report, back.held, back.signals, back.started) == (
        lin.report, lin.held, lin.signals, lin.started,
    )  # fmt: skip
    assert {p: (c.addr, c.started, c.nbytes) for p, c in back.children.items()} == {
        321: (("fe80::1%lo", 5000), 12.5, 99),
        322: (("127.0.0.1", 5001), 13.25, -1),
    }


@pytest.mark.parametrize("data", [b"", b"something else\n", b"echolab-lineage 1\nbogus 1\n"])
def test_a_foreign_lineage_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Lineage.decode(data)


def test_a_failed_execve_leaves_the_server_as_it_was(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, listener = make_server(exec_argv=["/nonexistent/python", "-c", "pass"])
    server.resume_accepting()
    server._signals = [signal.SIGUSR1]  # recorded, not yet acted on: must not be lost

    def execv(path: str, argv: list[str]) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert {signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP} <= blocked
        assert os.get_inheritable(listener.fileno()) and os.get_inheritable(server._report_w)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(srv.os, "execv", execv)
    monkeypatch.setattr(server, "check_new_code", lambda fd: "")
    server.handle_reload("SIGHUP")
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert not os.get_inheritable(listener.fileno())
    assert not os.get_inheritable(server._report_r)
    assert server.lineage.generation == 1 and server._signals == [signal.SIGUSR1]
    assert server._accepting and not server._stopping
    assert "cannot execute /nonexistent/python: No such file or directory" in logged()[-1]
    assert "reload failed, the running code serves on" in logged()[-1]
    assert not any(map(claims_a_generation, logged())), logged()


def test_a_failed_check_means_no_execve(make_server, logged, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server(exec_argv=[sys.executable])
    monkeypatch.setattr(srv.os, "execv", lambda *a: pytest.fail("re-executed"))
    monkeypatch.setattr(server, "check_new_code", lambda fd: "SyntaxError: invalid syntax")
    server.handle_reload("SIGHUP")
    (line,) = logged()
    assert not claims_a_generation(line)
    assert line.endswith(
        "SIGHUP: reload failed, the running code serves on: the installed code does not "
        "start: SyntaxError: invalid syntax"
    )


@pytest.mark.parametrize(
    ("argv", "answer"),
    [
        ([sys.executable, "-c", "pass"], ""),
        ([sys.executable, "-c", "import sys; print('one'); sys.exit('the last line')"],
         "the last line"),
        ([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], "killed by SIGKILL"),
        (["/nonexistent/python"], "cannot run /nonexistent/python: No such file or directory"),
    ],
)  # fmt: skip
def test_the_check_run_of_the_installed_code(make_server, argv: list[str], answer: str) -> None:  # type: ignore[no-untyped-def]
    server, _ = make_server(exec_argv=argv)
    fd = os.memfd_create("test", 0)
    try:
        assert server.check_new_code(fd) == answer
    finally:
        os.close(fd)


def test_a_check_that_hangs_is_killed(make_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(srv, "CHECK_LIMIT", 0.3)
    server, _ = make_server(exec_argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    fd = os.memfd_create("test", 0)
    try:
        assert server.check_new_code(fd) == "no answer within 0.3 s"
    finally:
        os.close(fd)
