"""The forking echo server: the parent listens and accepts, each client gets its own child.

The parent is single-threaded and never blocks in accept(): it waits on the listeners, a
signal wakeup pipe and the children's report pipe together (epoll + set_wakeup_fd),
because since PEP 475 a blocked accept() is retried after a signal and never returns to the
loop. Signal handlers only record the signal; the loop does the work (STYLE.md 1-3).

A child resets its signal dispositions, closes every descriptor of the parent's but its own
connection, waits for its first bytes in splice(2) and echoes them, then splices on (when
sessions outnumber CPUs) or copies through one buffer (when CPU is plentiful) — Linux only,
reports how many bytes it echoed, and always ends with os._exit().
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # see serve_child
import _socket
import errno
import fcntl
import gc
import os
import select
import struct
import sys
import time

from echolab.logs import INFO, WARNING, log
from echolab.netaddr import format_address
from echolab.ready import READY_PREFIX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace

# Tunables, each with its reason.
CHUNK = 1 << 20  # bytes asked of one splice() call; the pipe's size bounds what one call moves
PIPE_SIZE = 1 << 18  # 256 KiB pipe per streaming child: fewer splice() calls per MiB
COPY_SIZE = 1 << 16  # the copying child's buffer, allocated only once its session is active
BULK_HINT = 1 << 12  # a first chunk of a page or more is bulk data, worth a copy buffer; a short
# message (a probe, a 64-byte request) stays on splice and never zero-fills COPY_SIZE bytes
STREAM_HINT = 1 << 15  # a read this large means a bulk stream: grow the pipe (short sessions
# never do, so an idle or chatty child keeps the default 64 KiB pipe and touches no more)
ACCEPT_BATCH = 64  # accepts per wakeup before the loop looks at signals again
RETRY_PAUSE = 0.1  # s without accepting after fork() or accept() ran out of a resource
KILL_AFTER = 1.0  # s between SIGTERM to the remaining children and SIGKILL to stragglers
REAP_LIMIT = 5.0  # s to wait for SIGKILLed children before giving up on them
DRAIN_TIME = 0.5  # s a stopping child reads (and drops) after its FIN, so close() sends no RST

# How a child's session ended, as its exit status (decoded in the parent's exit log line).
CHILD_EOF = 0  # the client closed (or half-closed) and everything it sent was echoed
CHILD_ERROR = 1  # an unexpected error, logged by the child with its traceback
CHILD_RESET = 3  # the peer reset the connection or vanished (ECONNRESET, EPIPE, ETIMEDOUT)
CHILD_IDLE = 4  # the client was silent for --idle-timeout seconds
CHILD_SHUTDOWN = 5  # the server is stopping: the child closed the connection from its side
CHILD_STATUS = {
    CHILD_EOF: "closed by client",
    CHILD_ERROR: "error",
    CHILD_RESET: "reset by peer",
    CHILD_IDLE: "idle timeout",
    CHILD_SHUTDOWN: "closed by server shutdown",
}

REPORT = struct.Struct("=iQ")  # (pid, bytes echoed): 12 bytes, written atomically (< PIPE_BUF)
# The serving process imports C modules only (_signal, _socket rather than signal, socket):
# the Python wrappers pull in enum and friends, and every page of the parent is paid again
# on every fork (page tables copied by fork(), copy-on-write faults after it). In the child,
# signal.signal()'s Enum conversions alone un-shared ~130 pages (0.5 MiB) per child.
_SIGCHLD, _SIGINT, _SIGTERM, _SIGKILL = (
    _signal.SIGCHLD,
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGKILL,
)
_SIG_DFL, _SIG_IGN = _signal.SIG_DFL, _signal.SIG_IGN
_HANDLED = (_SIGCHLD, _SIGTERM, _SIGINT)
_SIGNAL_NAMES = {
    number: name
    for name, number in vars(_signal).items()
    if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(number, int)
}
_MAXFD = os.sysconf("SC_OPEN_MAX")


class _Shutdown(BaseException):
    """Raised in a child by SIGTERM: the server is stopping, close the connection in order."""


class Child:
    """What the parent remembers of one child until it reaps it."""

    __slots__ = ("addr", "nbytes", "started")

    def __init__(self, addr: tuple[str, int], started: float) -> None:
        self.addr = addr  # formatted only when the exit is logged: the parent stays lean
        self.started = started
        self.nbytes = -1  # unknown until the child's report arrives

    @property
    def peer(self) -> str:
        return format_address(self.addr[0], self.addr[1])


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
    ) -> None:
        self.listeners = listeners
        self.max_children = max_children
        self._cpus = len(os.sched_getaffinity(0)) or 1
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.origin = origin  # how the listeners came to be, for the ready line
        self.children: dict[int, Child] = {}
        self._signals: list[int] = []
        self._stopping = False
        self._accepting = False
        self._resume_at: float | None = None  # when a paused accept loop may start again
        self._at_cap_logged = False
        self._report_buf = b""
        # epoll directly rather than `selectors`: fewer objects touched per event, and every
        # page the parent writes between two forks becomes private memory of a child.
        self._epoll = select.epoll()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._report_r, self._report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
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
            self._idle_tv = struct.pack("ll", int(idle_timeout), int(idle_timeout % 1 * 1e6))

    # ----- the parent's loop -------------------------------------------------------------

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT, then shut down in order; return the exit status."""
        self.install_signal_handlers()
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
        for fd, _ in self._epoll.poll(-1 if timeout is None else timeout):
            if fd == self._wakeup_r:
                self._drain_pipe(fd)
            elif fd == self._report_r:
                self.read_reports()
            elif self._accepting:
                self.accept_clients(self._by_fd[fd])
        self.dispatch_signals()

    def install_signal_handlers(self) -> None:
        """Called once, before the loop: handlers that record, and the wakeup pipe."""
        _signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in _HANDLED:
            _signal.signal(signum, self.handle_signal)

    def handle_signal(self, signum: int, frame: object) -> None:
        """Signal handler: record the signal, nothing else (no logging, no I/O)."""
        self._signals.append(signum)

    def dispatch_signals(self) -> None:
        """Called by the loop after every wakeup: act on the signals recorded since."""
        if not self._signals:
            return
        # Swap the list, never clear it in place: a handler that runs between two bytecodes
        # here appends either to the list taken now or to the fresh one, and nothing is lost.
        taken, self._signals = self._signals, []
        pending = set(taken)
        if _SIGCHLD in pending:
            self.reap_children()
        for signum in (_SIGTERM, _SIGINT):
            if signum in pending:
                self.handle_stop(_SIGNAL_NAMES[signum])

    def handle_stop(self, name: str) -> None:
        """SIGTERM or SIGINT: stop accepting now; a second one ends the grace period."""
        if not self._stopping:
            log.info("%s: stopping", name)
            self._stopping = True
            self.close_listeners()
        else:
            log.info("%s again: ending the grace period", name)
            self.grace = 0.0

    # ----- accepting and forking -----------------------------------------------------------

    def accept_clients(self, listener: _socket.socket) -> None:
        """Called when a listener is readable: accept and fork up to ACCEPT_BATCH clients."""
        for _ in range(ACCEPT_BATCH):
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

    def process_request(self, fd: int, addr: tuple[str, int]) -> None:
        """Fork a child to serve the connection `fd`; the parent closes its copy at once.

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
            os.close(fd)
            log.warning(
                "fork() failed for %s: %s; closed that connection, pausing %.1f s",
                format_address(addr[0], addr[1]),
                exc.strerror,
                RETRY_PAUSE,
            )
            self.pause_accepting(RETRY_PAUSE)
            return
        if pid == 0:
            # This must never return into the parent's code, hence os._exit() (socketserver).
            status = CHILD_ERROR
            try:
                status = self.serve_child(fd, splice_all)
            finally:
                os._exit(status)
        os.close(fd)
        self.children[pid] = Child(addr, time.monotonic())

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
            log.warning(
                "at the cap of %d children: new clients wait in the backlog", self.max_children
            )

    def resume_accepting(self) -> None:
        """Watch the listeners again (not while stopping, at the cap, or during a pause)."""
        if (
            self._accepting
            or self._stopping
            or self._resume_at is not None
            or len(self.children) >= self.max_children
        ):
            return
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
        reaped: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # ECHILD: no children at all
                break
            if pid == 0:
                break
            reaped.append((pid, status))
        if not reaped:
            return
        self.read_reports()  # the reaped children wrote theirs before they exited
        now = time.monotonic()
        for pid, status in reaped:
            child = self.children.pop(pid, None)
            if child is None:
                log.debug("reaped pid %d (not a client's child: an orphan re-parented to us)", pid)
                continue
            self.log_child_exit(pid, child, status, now - child.started)
        self.resume_accepting()

    def log_child_exit(self, pid: int, child: Child, status: int, elapsed: float) -> None:
        """One line per child: pid, peer, how it ended, duration and bytes echoed."""
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            how = CHILD_STATUS.get(code, f"exit status {code}")
            level = WARNING if code == CHILD_ERROR else INFO
        elif os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            how = f"killed by {_SIGNAL_NAMES.get(signum, f'signal {signum}')}"
            level = WARNING
        else:
            how, level = f"status {status:#x}", WARNING
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

    # ----- stopping ----------------------------------------------------------------------

    def close_listeners(self) -> None:
        """Stop accepting and close the listening sockets: new clients are refused at once."""
        self.pause_accepting(0.0)
        self._resume_at = None
        for sock in self.listeners:
            sock.close()
        self.listeners = []
        self._by_fd = {}

    def shutdown(self) -> None:
        """After the listeners closed: grace, then SIGTERM, then SIGKILL; reap every child."""
        n = len(self.children)
        if n:
            log.info("listener closed; %d session(s) have %.1f s to finish", n, self.grace)
        self.wait_children(self.grace)
        if self.children:
            log.info("asking %d session(s) to close (SIGTERM)", len(self.children))
            self.signal_children(_SIGTERM)
            self.wait_children(KILL_AFTER)
        if self.children:
            log.warning("%d session(s) still open: SIGKILL", len(self.children))
            self.signal_children(_SIGKILL)
            self.wait_children(REAP_LIMIT)
        if self.children:
            log.error(
                "%d child(ren) could not be reaped: %s",
                len(self.children),
                " ".join(map(str, self.children)),
            )
        log.info("stopped")

    def wait_children(self, seconds: float) -> None:
        """Reap children for up to `seconds` (a second SIGTERM/SIGINT ends a grace period)."""
        deadline = time.monotonic() + seconds
        grace = self.grace
        self.reap_children()  # SIGCHLD may have come and gone before the wait began
        while self.children:
            left = deadline - time.monotonic()
            if left <= 0 or self.grace < grace:
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
            _signal.signal(signum, _SIG_DFL)
        for sock in self.listeners:
            sock.close()
        self._epoll.close()
        for fd in (self._wakeup_r, self._wakeup_w, self._report_r, self._report_w):
            os.close(fd)

    # ----- the child ---------------------------------------------------------------------

    def serve_child(self, fd: int, splice_all: bool = True) -> int:
        """In the child: drop the parent's state, echo until the session ends, report.

        The child touches as few of the parent's objects as it can, since every page it
        writes stops being shared with the parent and is copied first (a page fault): so
        the C-level _signal and _socket with plain ints, and close_range(2) on descriptors.
        SIGCHLD keeps the parent's handler: a child has no children, so it never fires.
        """
        _signal.set_wakeup_fd(-1)  # before the wakeup pipe closes: its number will be reused
        _signal.signal(_SIGINT, _SIG_IGN)  # ^C goes to the parent, which drains us
        _signal.signal(_SIGTERM, _raise_shutdown)
        # Keep stdio, the connection and the report pipe; close everything else of the
        # parent's: the listeners (only the parent holds them), epoll, the wakeup pipe.
        low = high = self._report_w
        if fd < low:
            low = fd
        else:
            high = fd
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, _MAXFD)
        # Echo with splice(2): socket -> pipe -> socket, the bytes never copied into Python.
        # Inline, not a function of its own: one code object fewer to un-share before an idle
        # client's child waits in its first splice(). The pipe grows to PIPE_SIZE once a read
        # shows a bulk stream (STREAM_HINT), worth fewer and larger moves.
        moved = 0
        try:
            try:
                r, w = os.pipe2(0)  # no O_CLOEXEC, no close(): the child never execs, exits next
                splice = os.splice
                grown = False
                n = splice(fd, w, CHUNK)  # blocks until data, EOF (0) or idle timeout (EAGAIN)
                while n:
                    if n >= STREAM_HINT and not grown:
                        grown = True
                        try:
                            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
                        except OSError:
                            pass  # over pipe-user-pages-soft: the 64 KiB default still works
                    bulk = n >= BULK_HINT
                    while n:
                        sent = splice(r, fd, n)
                        n -= sent
                        moved += sent
                    if bulk and not splice_all:
                        # Few sessions, CPU to spare: copy through one buffer from here on. On
                        # loopback one spliced stream ran at 0.6x the C server (the receiver pays
                        # for the spliced pages), a copied one at 1.0x; with sessions >= CPUs,
                        # splice ran level with C at a third of the CPU per GiB (docs/bench.md).
                        conn = _socket.socket(fileno=fd)
                        buf = bytearray(COPY_SIZE)
                        view = memoryview(buf)
                        while n := conn.recv_into(buf):
                            conn.sendall(view[:n])
                            moved += n
                        conn.detach()
                        break
                    n = splice(fd, w, CHUNK)
                # The client closed first and everything it sent is echoed: nothing unread,
                # so close() sends a plain FIN (and TIME_WAIT stays on the client's side).
                os.close(fd)
                status = CHILD_EOF
            except BlockingIOError:  # SO_RCVTIMEO/SO_SNDTIMEO, inherited from the listener
                close_in_order(_socket.socket(fileno=fd))
                status = CHILD_IDLE
            except _Shutdown:
                close_in_order(_socket.socket(fileno=fd))
                status = CHILD_SHUTDOWN
        except (ConnectionError, TimeoutError):
            status = CHILD_RESET  # ECONNRESET, EPIPE, ETIMEDOUT: nothing left to close in order
        except _Shutdown:
            status = CHILD_SHUTDOWN  # SIGTERM while closing in order
        except Exception:  # noqa: BLE001  the child's last word: logged, never a silent death
            log.exception("session with %s failed", format_address(*_peer_of(fd)))
            status = CHILD_ERROR
        try:
            os.write(self._report_w, REPORT.pack(os.getpid(), moved))
        except OSError:
            pass  # report pipe full: the parent logs '?' bytes
        return status


def _raise_shutdown(signum: int, frame: object) -> None:
    _signal.signal(_SIGTERM, _SIG_IGN)
    raise _Shutdown


def close_in_order(conn: _socket.socket) -> None:
    """Close from the server's side with a FIN, never an RST: this side then holds TIME_WAIT.

    shutdown(SHUT_WR) sends the FIN; data the client still sends is read and dropped for a
    moment, because close() with unread data would answer with an RST.
    """
    try:
        conn.shutdown(_socket.SHUT_WR)
        conn.settimeout(DRAIN_TIME)
        deadline = time.monotonic() + DRAIN_TIME
        while time.monotonic() < deadline and conn.recv(65536):
            pass
    except OSError:
        pass  # reset, timeout or already closed: nothing more to do in order
    finally:
        conn.close()


def _peer_of(fd: int) -> tuple[str, int]:
    try:
        addr = _socket.socket(fileno=os.dup(fd)).getpeername()
        return addr[0], addr[1]
    except OSError:
        return "?", 0


def run(args: Namespace) -> int:
    """`echolab serve`: open (or inherit) the listeners, then serve from a lean process.

    This process has argparse, socket, enum and re loaded; a parent that had them would pay
    for them on every fork (measured: 700 vs 490 us of CPU per fork+exit+wait). So once the
    listeners are open (errors reported here, with their exit codes), it replaces itself
    (same PID: systemd and PID 1 are unaffected) with `python -I -S` that imports C modules
    and this module only, handing over the listening sockets by descriptor number. The ready
    line comes from that process once it handles signals. Connections that arrive meanwhile wait
    in the kernel's backlog.
    """
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
                reuseport=getattr(args, "reuseport", False),
            )
        ]
    config = {
        "fds": ",".join(str(sock.fileno()) for sock in listeners),
        "max_children": args.max_children,
        "idle_timeout": args.idle_timeout,
        "grace": args.grace,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "inherited": int(inherited),
        "origin": origin,
    }
    if sys.executable:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = (  # the leading string names the process for `ps` and `pgrep -f`
            f"'echolab serve'; import sys; sys.path.insert(0, {package_root!r}); "
            "import echolab.server as s; s.lean_main()"
        )
        for sock in listeners:
            sock.set_inheritable(True)
        argv = [sys.executable, "-I", "-S", "-c", boot]
        argv += [f"{key}={value}" for key, value in config.items()]
        try:
            os.execv(sys.executable, argv)  # noqa: S606  the same interpreter, fixed arguments
        except OSError as exc:
            log.warning(
                "cannot re-execute %s (%s): serving from this process", sys.executable, exc.strerror
            )
    server = ForkingEchoServer(
        [_socket.socket(fileno=sock.detach()) for sock in listeners],
        max_children=args.max_children,
        idle_timeout=args.idle_timeout,
        grace=args.grace,
        timeouts_per_connection=inherited,
        origin=origin,
    )
    return server.serve_forever()


def lean_main() -> None:
    """Entry point of the lean serving process: `key=value` arguments from run()."""
    config = dict(arg.partition("=")[::2] for arg in sys.argv[1:])
    log.configure(config["log_level"], config["log_format"])
    listeners = []
    for fd in config["fds"].split(","):
        os.set_inheritable(int(fd), False)
        listeners.append(_socket.socket(fileno=int(fd)))
    server = ForkingEchoServer(
        listeners,
        max_children=int(config["max_children"]),
        idle_timeout=float(config["idle_timeout"]),
        grace=float(config["grace"]),
        timeouts_per_connection=config["inherited"] == "1",
        origin=config["origin"],
    )
    raise SystemExit(server.serve_forever())
