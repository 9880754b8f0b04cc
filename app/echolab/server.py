"""The forking echo server's parent: listen, accept, fork, reap, reload in place, stop.

The parent is single-threaded and never blocks in accept(): it waits on the listeners, a
signal wakeup pipe and the children's report pipe together (epoll + set_wakeup_fd), because
since PEP 475 a blocked accept() is retried after a signal and never returns to the loop.
Signal handlers only record the signal; the loop acts on it (dispatch_signals):

    SIGTERM, SIGINT   stop: close the listeners, let sessions finish for --grace seconds,
                      then end them in order (SIGTERM: FIN from the server), SIGKILL after
                      KILL_AFTER; every further one ends the current wait at once
    SIGQUIT           stop now: the same without the grace
    SIGHUP            reload in place: re-execute the installed code with the same options,
                      same PID, same listeners, adopting the live children
    SIGUSR1           log one status line
    SIGCHLD           reap (a WNOHANG loop; orphans too, as PID 1)
    SIGTTIN, SIGTTOU  ignored by the kernel (a handler would make a background log write loop)
    fault signals     SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGSYS keep their default, a crash: the
                      kernel sends them for an instruction that cannot go on (a handler would
                      re-run it forever) or a system call the sandbox refused
    every other one   ignored, with a log line

The child's side of a connection is echolab.session; how `echolab serve` becomes this lean
process, and the one place where the server is built from its options, is echolab.boot.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C modules only: see below
import _socket
import errno
import gc
import os
import select
import struct
import time

from echolab import __version__
from echolab.logs import INFO, WARNING, log
from echolab.netaddr import format_address
from echolab.ready import READY_PREFIX
from echolab.session import CHILD_ERROR, CHILD_STATUS, REPORT, serve_child

# Tunables, each with its reason.
ACCEPT_BATCH = 64  # accepts per wakeup before the loop looks at signals again
RETRY_PAUSE = 0.1  # s without accepting after fork() or accept() ran out of a resource
KILL_AFTER = 1.0  # s between SIGTERM to the remaining children and SIGKILL to stragglers
REAP_LIMIT = 5.0  # s to wait for SIGKILLed children before giving up on them
LONGEST_WAIT = 3600.0  # s in one epoll wait; longer waits loop (epoll_wait takes int ms)
MFD_NOEXEC_SEAL = 0x0008  # memfd_create(2) flag, Linux 6.3 (the os module has no name for it)
CHECK_LIMIT = 60.0  # s the installed code may take to show it starts, before a reload
# (Python starts in 0.05 s natively, 0.5-3 s under emulation)

# The serving process imports C modules only (_signal, _socket rather than signal, socket):
# the Python wrappers pull in enum and friends, and every page of the parent is paid again
# on every fork (page tables copied by fork(), copy-on-write faults after it). In the child,
# signal.signal()'s Enum conversions alone un-shared ~130 pages (0.5 MiB) per child.
_SIGNAL_NAMES = {
    number: name
    for name, number in vars(_signal).items()
    if name.startswith("SIG")
    and not name.startswith("SIG_")
    and name not in ("SIGCLD", "SIGPOLL", "SIGIOT")  # aliases of SIGCHLD, SIGIO, SIGABRT
    and isinstance(number, int)
}
for _n in range(_signal.SIGRTMIN + 1, _signal.SIGRTMAX):
    _SIGNAL_NAMES[_n] = f"SIGRTMIN+{_n - _signal.SIGRTMIN}"
_SIGCHLD, _SIGTERM, _SIGKILL = _signal.SIGCHLD, _signal.SIGTERM, _signal.SIGKILL
_SIG_DFL, _SIG_IGN = _signal.SIG_DFL, _signal.SIG_IGN
# What each signal means (the module docstring, README and `serve --help` say the same).
_ACTIONS = {
    _signal.SIGTERM: "stop",
    _signal.SIGINT: "stop",
    _signal.SIGQUIT: "quit",
    _signal.SIGHUP: "reload",
    _signal.SIGUSR1: "status",
    _SIGCHLD: "reap",
}
_KERNEL_IGNORED = (_signal.SIGTTIN, _signal.SIGTTOU)
_DEFAULT = (
    _SIGKILL,
    _signal.SIGSTOP,  # neither can be caught
    _signal.SIGSEGV,
    _signal.SIGBUS,
    _signal.SIGFPE,
    _signal.SIGILL,
    _signal.SIGSYS,
    # not SIGABRT: abort() dies after the handler anyway; not SIGTRAP: a trap resumes
)
_HANDLED = tuple(sorted(set(_signal.valid_signals()) - set(_DEFAULT) - set(_KERNEL_IGNORED)))


class Child:
    """What the parent remembers of one child until it reaps it."""

    __slots__ = ("addr", "nbytes", "started")

    def __init__(self, addr: tuple[str, int], started: float, nbytes: int = -1) -> None:
        self.addr = addr  # formatted only when the exit is logged: the parent stays lean
        self.started = started
        self.nbytes = nbytes  # unknown (-1) until the child's report arrives

    @property
    def peer(self) -> str:
        return format_address(self.addr[0], self.addr[1])


class Lineage:
    """What a server hands to the image that replaces it at a reload (and the first image's).

    Written to an anonymous file (memfd) whose descriptor crosses execve() with the
    listeners and the report pipe; the text is line-based so no parser needs importing.
    """

    MAGIC = "echolab-lineage 1"

    def __init__(self) -> None:
        self.generation = 1
        self.started = time.monotonic()  # CLOCK_MONOTONIC is system-wide: survives execve
        self.finished = 0  # clients whose child was reaped
        self.fork_failures = 0
        self.report: tuple[int, int] | None = None  # the report pipe (read end, write end)
        self.held: tuple[int, tuple[str, int]] | None = None  # a connection awaiting fork()
        self.children: dict[int, Child] = {}
        self.signals: list[int] = []  # recorded, not yet acted on

    def encode(self) -> bytes:
        lines = [
            self.MAGIC,
            f"generation {self.generation}",
            f"started {self.started!r}",
            f"finished {self.finished}",
            f"fork_failures {self.fork_failures}",
            f"signals {' '.join(map(str, self.signals))}",
        ]
        if self.report is not None:
            lines.append(f"report {self.report[0]} {self.report[1]}")
        if self.held is not None:
            fd, (host, port) = self.held
            lines.append(f"held {fd} {host} {port}")
        for pid, c in self.children.items():
            lines.append(f"child {pid} {c.started!r} {c.nbytes} {c.addr[0]} {c.addr[1]}")
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> Lineage:
        """The inverse of encode(); ValueError for anything else."""
        lines = data.decode().splitlines()
        if not lines or lines[0] != cls.MAGIC:
            raise ValueError(f"not a {cls.MAGIC!r} record")
        new = cls()
        for line in lines[1:]:
            key, _, rest = line.partition(" ")
            words = rest.split()
            if key in ("generation", "finished", "fork_failures"):
                setattr(new, key, int(words[0]))
            elif key == "started":
                new.started = float(words[0])
            elif key == "signals":
                new.signals = [int(w) for w in words]
            elif key == "report":
                new.report = (int(words[0]), int(words[1]))
            elif key == "held":
                new.held = (int(words[0]), (words[1], int(words[2])))
            elif key == "child":
                pid, started, nbytes, host, port = words
                new.children[int(pid)] = Child((host, int(port)), float(started), int(nbytes))
            else:
                raise ValueError(f"unknown line {line!r}")
        return new


class ForkingEchoServer:
    """A fork-per-connection echo server on one or more listening sockets."""

    def __init__(
        self,
        listeners: list[_socket.socket],
        *,
        max_children: int = 512,
        idle_timeout: float = 300.0,
        grace: float = 5.0,
        timeouts_per_connection: bool = False,
        origin: str = "",
        exec_argv: list[str] | None = None,
        lineage: Lineage | None = None,
    ) -> None:
        self.listeners = listeners
        self.max_children = max_children
        self._cpus = len(os.sched_getaffinity(0)) or 1
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.origin = origin  # how the listeners came to be, for the ready line
        self.exec_argv = exec_argv  # how to start this server's code afresh (a reload)
        self.lineage = lineage if lineage is not None else Lineage()
        self.children = self.lineage.children
        self._signals: list[int] = self.lineage.signals
        self._stopping = False
        self._cuts = 0  # stop signals after the first: each ends one wait of the shutdown
        self._accepting = False
        self._resume_at: float | None = None  # when a paused accept loop may start again
        self._at_cap_logged = False
        self._failing_since: float | None = None  # fork() failing since (monotonic)
        self._report_buf = b""
        # epoll directly rather than `selectors`: fewer objects touched per event, and every
        # page the parent writes between two forks becomes private memory of a child.
        self._epoll = select.epoll()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.lineage.report is None:
            self.lineage.report = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._report_r, self._report_w = self.lineage.report
        self._epoll.register(self._wakeup_r, select.EPOLLIN)
        self._epoll.register(self._report_r, select.EPOLLIN)
        self._by_fd: dict[int, _socket.socket] = {}
        for sock in listeners:
            sock.setblocking(False)
            self._by_fd[sock.fileno()] = sock
        # The idle timeout is enforced by the kernel on every blocking splice() of a session
        # (SO_RCVTIMEO/SO_SNDTIMEO: EAGAIN after that long without a byte in or room out).
        # Our own listener carries both options from before listen(), and accepted sockets
        # inherit them. A listener inherited from systemd may hold connections queued before
        # we started, so then the parent sets them on each connection it accepts.
        self._idle_tv = b""
        if timeouts_per_connection and idle_timeout > 0:
            self._idle_tv = timeval(idle_timeout)

    # ----- the parent's loop -------------------------------------------------------------

    def serve_forever(self) -> int:
        """Run until SIGTERM, SIGINT or SIGQUIT, then shut down in order; return exit status."""
        self.install_signal_handlers()
        if self.lineage.generation > 1:
            self.log_reloaded()
        self.reap_children()  # children of an earlier image may have exited in between
        self.dispatch_signals()  # those an earlier image recorded but did not act on
        self.resume_accepting()
        self.announce()
        # Move every object made so far out of the collector's reach: a collection in the
        # parent would otherwise touch (and so un-share) all of them after each fork.
        gc.freeze()
        try:
            while not self._stopping:
                self.wait_for_events(self._pause_left())
                if self._resume_at is not None and time.monotonic() >= self._resume_at:
                    self._resume_at = None
                    self.resume_accepting()
            self.shutdown()
        finally:
            self.server_close()
        return 0

    def announce(self) -> None:
        """The ready line, once signals are handled and the listeners watched: tools wait for
        `listening on HOST:PORT` before they connect, signal or count descriptors."""
        for sock in self.listeners:
            host, port = sock.getsockname()[:2]
            reuse = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR)
            log.always(
                READY_PREFIX + "%s (%s; SO_REUSEADDR %s, up to %d children, idle timeout %g s, "
                "grace %g s%s)",
                format_address(host, port),
                self.origin,
                "on" if reuse else "off",
                self.max_children,
                self.idle_timeout,
                self.grace,
                ", PID 1: reaping orphans too" if os.getpid() == 1 else "",
            )

    def wait_for_events(self, timeout: float | None) -> None:
        """Wait once on listeners, wakeup and reports; accept, reap and dispatch signals."""
        wait = -1.0 if timeout is None else min(timeout, LONGEST_WAIT)
        for fd, _ in self._epoll.poll(wait):
            if fd == self._wakeup_r:
                self._drain_pipe(fd)
            elif fd == self._report_r:
                self.read_reports()
            elif self._accepting:
                self.accept_clients(self._by_fd[fd])
        self.dispatch_signals()

    # ----- signals -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Called once, before the loop: handlers that record, the wakeup pipe, and the
        signals blocked across a reload's execve() unblocked (pending ones arrive now)."""
        _signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            try:
                _signal.signal(signum, self.handle_signal)
            except (OSError, ValueError):
                pass  # not catchable here (e.g. reserved by the C library)
        for signum in _KERNEL_IGNORED:
            _signal.signal(signum, _SIG_IGN)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _HANDLED)

    def handle_signal(self, signum: int, frame: object) -> None:
        """Signal handler: record the signal, nothing else (no logging, no I/O)."""
        self._signals.append(signum)

    def dispatch_signals(self) -> None:
        """Called by the loop after every wakeup: act on the signals recorded since, in order
        (reaping first, a reload last: it replaces this image)."""
        if not self._signals:
            return
        # Swap the list, never clear it in place: a handler that runs between two bytecodes
        # here appends either to the list taken now or to the fresh one, and nothing is lost.
        taken, self._signals = self._signals, []
        if _SIGCHLD in taken:
            self.reap_children()
        ignored: dict[int, int] = {}
        reload = False
        for signum in taken:
            action = _ACTIONS.get(signum)
            if action is None:
                ignored[signum] = ignored.get(signum, 0) + 1
            elif action == "reload":
                reload = True
            elif action != "reap":
                getattr(self, "handle_" + action)(_SIGNAL_NAMES[signum])
        for signum, count in ignored.items():
            self.handle_ignored(_SIGNAL_NAMES.get(signum, f"signal {signum}"), count)
        if reload:
            self.handle_reload("SIGHUP")

    def handle_stop(self, name: str) -> None:
        """SIGTERM or SIGINT: stop accepting now; every further one ends the current wait."""
        if not self._stopping:
            log.info("%s: stopping", name)
            self._stopping = True
            self.close_listeners()
            return
        self._cuts += 1
        if self._cuts == 1:
            log.info("%s again: ending the grace period", name)
        else:
            log.info("%s again: ending the wait for the children", name)

    def handle_quit(self, name: str) -> None:
        """SIGQUIT: stop now, without the grace (children still end in order and are reaped)."""
        if self._stopping:
            self.handle_stop(name)
            return
        log.info("%s: stopping now, no grace", name)
        self._stopping = True
        self._cuts = 1
        self.close_listeners()

    def handle_status(self, name: str) -> None:
        """SIGUSR1: one line saying how the server is doing."""
        lin = self.lineage
        state = (
            "stopping"
            if self._stopping
            else "accepting"
            if self._accepting
            else "at the cap"
            if len(self.children) >= self.max_children
            else "paused after a failed fork()"
        )
        accepted = lin.finished + len(self.children) + (lin.held is not None)
        uptime = time.monotonic() - lin.started
        log.info(
            "%s: status: %d children (cap %d), %s, %d accepted, %d finished, "
            "%d fork() failures, uptime %.1f s, generation %d",
            name,
            len(self.children),
            self.max_children,
            state,
            accepted,
            lin.finished,
            lin.fork_failures,
            uptime,
            lin.generation,
            fields={
                "event": "status",
                "children": len(self.children),
                "max_children": self.max_children,
                "state": state,
                "accepted": accepted,
                "finished": lin.finished,
                "fork_failures": lin.fork_failures,
                "uptime_s": round(uptime, 3),
                "generation": lin.generation,
            },
        )

    def handle_ignored(self, name: str, count: int) -> None:
        """Any other catchable signal: ignored, and said so (once per signal and wakeup)."""
        log.info("%s ignored%s", name, f" ({count} times)" if count > 1 else "")

    # ----- accepting and forking -----------------------------------------------------------

    def accept_clients(self, listener: _socket.socket) -> None:
        """Called when a listener is readable: accept and fork up to ACCEPT_BATCH clients.

        Stops early when accepting pauses (the cap, or a failed fork()): the rest wait in the
        kernel's backlog.
        """
        for _ in range(ACCEPT_BATCH):
            if not self._accepting:
                return
            if len(self.children) >= self.max_children:
                self.pause_accepting(None)
                return
            try:
                fd, addr = listener._accept()  # type: ignore[attr-defined]  # a bare descriptor: no socket object to build
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up while in the backlog
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept() failed: %s; pausing %.1f s", exc.strerror, RETRY_PAUSE)
                    self.pause_accepting(RETRY_PAUSE)
                    return
                raise
            if self._idle_tv:
                conn = _socket.socket(fileno=fd)
                conn.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, self._idle_tv)
                conn.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, self._idle_tv)
                conn.detach()
            self.process_request(fd, addr)

    def process_request(self, fd: int, addr: tuple[str, int]) -> bool:
        """Fork a child to serve the connection `fd`; the parent closes its copy at once.

        When fork() fails (EAGAIN under a pids limit), the connection is held, not closed:
        accepting pauses for RETRY_PAUSE, then the fork is tried again for it first.
        Signals are not blocked across fork(): until the child installs its own handlers, a
        signal only lands in its copy of `_signals`, which it never reads. SIGTERM cannot be
        lost that way: the parent signals children only after it has stopped forking.
        """
        # CPU is scarce when sessions outnumber CPUs: then the child echoes with splice()
        # throughout (least CPU per byte); otherwise it copies after its first chunk (less
        # latency per byte). Decided here, at fork time, where the count is known.
        splice_all = len(self.children) >= self._cpus
        try:
            pid = os.fork()
        except OSError as exc:
            self.fork_failed(fd, addr, exc)
            return False
        if pid == 0:
            # This must never return into the parent's code, hence os._exit() (socketserver).
            status = CHILD_ERROR
            try:
                status = serve_child(fd, self._report_w, splice_all)
            finally:
                os._exit(status)
        os.close(fd)
        self.children[pid] = Child(addr, time.monotonic())
        return True

    def fork_failed(self, fd: int, addr: tuple[str, int], exc: OSError) -> None:
        """Hold the connection and pause; logged once per run of failures, not per attempt."""
        self.lineage.held = (fd, addr)
        self.lineage.fork_failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "fork() failed for %s: %s; holding that connection and pausing accepts, "
                "retrying every %.1f s",
                format_address(addr[0], addr[1]),
                exc.strerror,
                RETRY_PAUSE,
            )
        self.pause_accepting(RETRY_PAUSE)

    def pause_accepting(self, seconds: float | None) -> None:
        """Stop watching the listeners: at the child cap (None) or for `seconds` after a failure.

        Clients keep arriving in the kernel's backlog and are served when accepting resumes.
        """
        if self._accepting:
            for sock in self.listeners:
                self._epoll.unregister(sock)
            self._accepting = False
        if seconds is not None:
            self._resume_at = time.monotonic() + seconds
        elif not self._at_cap_logged:
            self._at_cap_logged = True
            log.info(
                "at the cap of %d children: new clients wait in the backlog", self.max_children
            )

    def resume_accepting(self) -> None:
        """Watch the listeners again, unless stopping, paused or still at the cap; a
        connection held after a failed fork() is served first."""
        if (
            self._accepting
            or self._stopping
            or self._resume_at is not None
            or len(self.children) >= self.max_children
        ):
            return
        if self.lineage.held is not None:
            fd, addr = self.lineage.held
            self.lineage.held = None
            if not self.process_request(fd, addr):
                return  # failed again: held, paused
            if self._failing_since is not None:
                log.info(
                    "fork() works again after %.1f s: serving the held connection",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
        for sock in self.listeners:
            self._epoll.register(sock, select.EPOLLIN)
        self._accepting = True
        if self._at_cap_logged:
            self._at_cap_logged = False
            log.info("below the cap again: accepting")

    def _pause_left(self) -> float | None:
        if self._resume_at is None:
            return None
        return max(0.0, self._resume_at - time.monotonic())

    # ----- reaping -----------------------------------------------------------------------

    def reap_children(self) -> None:
        """Called on SIGCHLD: reap every exited child (orphans too, as PID 1), log each once."""
        reaped = collect_exits()
        if not reaped:
            return
        self.read_reports()  # the reaped children wrote theirs before they exited
        now = time.monotonic()
        known = 0
        for pid, status in reaped:
            child = self.children.pop(pid, None)
            if child is None:
                log.debug("reaped pid %d (not a client's child: an orphan re-parented to us)", pid)
                continue
            known += 1
            self.log_child_exit(pid, child, status, now - child.started)
        self.lineage.finished += known
        self.resume_accepting()

    def log_child_exit(self, pid: int, child: Child, status: int, elapsed: float) -> None:
        """One line per child: pid, peer, how it ended, duration and bytes echoed."""
        how, level = describe_status(status)
        nbytes = child.nbytes
        log.log(
            level,
            "child %d %s: %s after %.3f s, %s bytes echoed",
            pid,
            child.peer,
            how,
            elapsed,
            nbytes if nbytes >= 0 else "?",
            fields={
                "event": "child_exit",
                "child_pid": pid,
                "peer": child.peer,
                "status": how,
                "duration_s": round(elapsed, 6),
                "bytes": nbytes if nbytes >= 0 else None,
            },
        )

    def read_reports(self) -> None:
        """Read the children's (pid, bytes) reports from the report pipe."""
        data = self._report_buf + self._drain_pipe(self._report_r)
        usable = len(data) - len(data) % REPORT.size
        for pid, nbytes in REPORT.iter_unpack(data[:usable]):
            child = self.children.get(pid)
            if child is not None:
                child.nbytes = nbytes
        self._report_buf = data[usable:]

    @staticmethod
    def _drain_pipe(fd: int) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    # ----- reloading in place ------------------------------------------------------------

    def handle_reload(self, name: str) -> None:
        """SIGHUP: re-execute the installed code in place, same PID, same listeners, adopting
        the children; if it cannot start, say why in one line and go on serving."""
        if self._stopping:
            log.info("%s: stopping, not reloading", name)
            return
        if not self.exec_argv:
            log.error("%s: reload failed: no command to re-execute; still serving", name)
            return
        self.reap_children()
        lin = self.lineage
        try:
            state_fd = state_file()
        except OSError as exc:
            log.error(
                "%s: reload failed, the running code serves on: no anonymous file for the "
                "state (memfd_create: %s)",
                name,
                exc.strerror,
            )
            return
        try:
            # A check run of the installed code, reading these very options and state: an
            # image that cannot start must not replace this one (execve() cannot be undone).
            os.pwrite(state_fd, lin.encode(), 0)
            failure = self.check_new_code(state_fd)
            if failure:
                log.error(
                    "%s: reload failed, the running code serves on: the installed code does not "
                    "start: %s",
                    name,
                    failure,
                )
                return
            log.info(
                "%s: reloading in place: the installed code takes over %d children",
                name,
                len(self.children),
            )
            self.exec_in_place(state_fd)  # returns only when execve() failed
        finally:
            os.close(state_fd)

    def check_new_code(self, state_fd: int) -> str:
        """Run the installed code in check mode on our options and state: '' when it starts,
        else its last line of output (or why it did not run)."""
        assert self.exec_argv
        argv = [*self.exec_argv, f"lineage={state_fd}", "check=1"]
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.posix_spawn(
                argv[0],
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2)],
            )
        except OSError as exc:
            os.close(r)
            return f"cannot run {argv[0]}: {exc.strerror}"
        finally:
            os.close(w)
        out, complete = read_until_eof(r, CHECK_LIMIT)
        os.close(r)
        if not complete:
            os.kill(pid, _SIGKILL)
        _, status = os.waitpid(pid, 0)
        if complete and status == 0:
            return ""
        last = next((x for x in reversed(out.decode(errors="replace").splitlines()) if x), "")
        if not complete:
            return f"no answer within {CHECK_LIMIT:g} s"
        return last or describe_status(status)[0]

    def exec_in_place(self, state_fd: int) -> None:
        """execve() this process with the state in `state_fd`; returns only if that failed.

        The handled signals are blocked first: execve() resets their handlers to the default
        (for SIGTERM: death), and a blocked signal stays pending across it until the new
        image has its own handlers and unblocks them. Signals recorded but not yet acted on
        travel in the state.
        """
        assert self.exec_argv
        lin = self.lineage
        passed = [state_fd, self._report_r, self._report_w, *self._by_fd]
        if lin.held is not None:
            passed.append(lin.held[0])
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _HANDLED)  # runs pending handlers first
        lin.signals, self._signals = self._signals, []
        lin.generation += 1
        state = lin.encode()
        os.pwrite(state_fd, state, 0)
        os.ftruncate(state_fd, len(state))
        for fd in passed:
            os.set_inheritable(fd, True)
        argv = [*self.exec_argv, f"lineage={state_fd}"]
        try:
            os.execv(argv[0], argv)  # noqa: S606  our own interpreter and boot line
        except OSError as exc:
            error = exc.strerror
        for fd in passed:
            os.set_inheritable(fd, False)
        lin.generation -= 1
        self._signals = lin.signals + self._signals
        lin.signals = []
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _HANDLED)
        log.error(
            "SIGHUP: reload failed, the running code serves on: cannot execute %s: %s",
            argv[0],
            error,
        )

    def log_reloaded(self) -> None:
        """The reload line, from the new image once it handles signals: proof of a reload."""
        lin = self.lineage
        log.info(
            "reloaded: generation %d, %d children adopted, echolab %s",
            lin.generation,
            len(self.children),
            __version__,
            fields={
                "event": "reload",
                "generation": lin.generation,
                "adopted": len(self.children),
                "version": __version__,
            },
        )

    # ----- stopping ----------------------------------------------------------------------

    def close_listeners(self) -> None:
        """Stop accepting and close the listening sockets: new clients are refused at once."""
        self.pause_accepting(0.0)
        self._resume_at = None
        for sock in self.listeners:
            sock.close()
        self.listeners = []
        self._by_fd = {}
        if self.lineage.held is not None:
            os.close(self.lineage.held[0])  # never served: fork() kept failing
            self.lineage.held = None

    def shutdown(self) -> None:
        """After the listeners closed: grace, then SIGTERM, then SIGKILL; reap every child.

        Each wait ends early on a further stop signal (the grace on the first, and so on).
        """
        n = len(self.children)
        if n and not self._cuts:
            log.info("listener closed; %d session(s) have %.1f s to finish", n, self.grace)
        self.wait_children(self.grace, 0)
        if self.children:
            log.info("asking %d session(s) to close (SIGTERM)", len(self.children))
            self.signal_children(_SIGTERM)
            self.wait_children(KILL_AFTER, 1)
        if self.children:
            log.warning("%d session(s) still open: SIGKILL", len(self.children))
            self.signal_children(_SIGKILL)
            self.wait_children(REAP_LIMIT, 2)
        if self.children:
            log.error(
                "%d child(ren) could not be reaped: %s",
                len(self.children),
                " ".join(map(str, self.children)),
            )
        log.info("stopped")

    def wait_children(self, seconds: float, phase: int) -> None:
        """Reap children for up to `seconds`, or until more than `phase` cuts were asked."""
        deadline = time.monotonic() + seconds
        self.reap_children()  # SIGCHLD may have come and gone before the wait began
        while self.children and self._cuts <= phase:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wait_for_events(left)

    def signal_children(self, signum: int) -> None:
        """Send `signum` to every live child."""
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # exited; SIGCHLD will reap it

    def server_close(self) -> None:
        """Release the parent's descriptors and restore default signal handling."""
        _signal.set_wakeup_fd(-1)
        for signum in _HANDLED:
            try:
                _signal.signal(signum, _SIG_DFL)
            except (OSError, ValueError):
                pass
        for sock in self.listeners:
            sock.close()
        self._epoll.close()
        for fd in (self._wakeup_r, self._wakeup_w, self._report_r, self._report_w):
            os.close(fd)


def collect_exits() -> list[tuple[int, int]]:
    """Every exited child as (pid, status), by waitpid(-1, WNOHANG) until none is left."""
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # ECHILD: no children at all
            break
        except InterruptedError:
            continue  # a signal arrived in the call (PEP 475 retries too; a fake may not)
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def describe_status(status: int) -> tuple[str, int]:
    """How a child ended, from its wait status, and the log level that deserves."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return CHILD_STATUS.get(code, f"exit status {code}"), (
            WARNING if code == CHILD_ERROR else INFO
        )
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"killed by {_SIGNAL_NAMES.get(signum, f'signal {signum}')}", WARNING
    return f"status {status:#x}", WARNING


def read_until_eof(fd: int, seconds: float) -> tuple[bytes, bool]:
    """Read a pipe until EOF or `seconds` pass: (what came, whether EOF came)."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        if poller.poll(min(left, LONGEST_WAIT) * 1000):
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)


def state_file() -> int:
    """An anonymous file (memfd) for a reload's state, inheritable across execve().

    Sealed against execution where the kernel knows how (MFD_NOEXEC_SEAL, Linux 6.3; hosts
    with vm.memfd_noexec=2 refuse any other memfd), plain before that.
    """
    try:
        fd = os.memfd_create("echolab-lineage", MFD_NOEXEC_SEAL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.memfd_create("echolab-lineage", 0)
    os.set_inheritable(fd, True)  # for the check run and the new image
    return fd


def timeval(seconds: float) -> bytes:
    """A struct timeval for SO_RCVTIMEO/SO_SNDTIMEO."""
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
