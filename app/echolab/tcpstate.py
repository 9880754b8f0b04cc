"""TCP sockets on a port by state, read from /proc/net/tcp and /proc/net/tcp6.

This is what `ss -tan` shows, without needing `ss` in the image: the lab uses it to show the
TIME_WAIT sockets a stopped server leaves on its port, and restart-check uses it to prove the
precondition of its experiment. /proc/net/tcp describes the reader's network namespace only.
For one port, the kernel's sock_diag interface (inetdiag.py) answers the same question without
listing every socket of the host (30,000 on a busy machine), and is used when it is available.

The format (Documentation/networking/proc_net_tcp.rst): one line per socket,
`sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
Addresses are hex words in host byte order; `tm->when` is in clock ticks (USER_HZ). For a
TIME_WAIT socket, `tr` is 3 and `tm->when` is the time left before the kernel reaps it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

from echolab.errors import EXIT_OS_ERROR, EXIT_USAGE, EcholabError
from echolab.netaddr import format_address
from echolab.report import write_json

PROC_FILES = (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6))

# include/net/tcp_states.h; underscores as in the kernel, FIN_WAIT split for readability.
STATE_NAMES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT_1",
    0x05: "FIN_WAIT_2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}
# The order `echolab sockets` lists states in: the listener, live sessions, then the closings.
STATE_ORDER = (
    "LISTEN",
    "SYN_SENT",
    "SYN_RECV",
    "NEW_SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "CLOSE_WAIT",
    "CLOSING",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
)
# `tr` values of the timer column (proc_net_tcp.rst).
TIMER_NAMES = {0: "", 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "probe"}

Side = Literal["local", "remote", "any"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_INTERVAL = 0.05  # s: --watch faster than this would only burn CPU
WATCH_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class TcpSocket:
    """One line of /proc/net/tcp{,6}: a socket, its state, and its timer."""

    family: str  # "ipv4" or "ipv6"
    state: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    timer: str  # "", "retransmit", "keepalive", "time_wait", "probe"
    timer_s: float  # seconds left on that timer (TIME_WAIT: until the kernel reaps it)
    uid: int
    inode: int  # 0 for TIME_WAIT sockets: no process holds them any more
    # For a LISTEN socket: connections waiting in its accept queue (handshake done, not yet
    # accepted); for others: bytes received and not yet read.
    rx_queue: int = 0
    pids: tuple[int, ...] = field(default=())

    @property
    def local(self) -> str:
        """The local end as HOST:PORT ([V6]:PORT)."""
        return format_address(self.local_addr, self.local_port)

    @property
    def remote(self) -> str:
        """The remote end as HOST:PORT ([V6]:PORT)."""
        return format_address(self.remote_addr, self.remote_port)


def _ipv4(word: str) -> str:
    return socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(word, 16)))


def _ipv6(text: str) -> str:
    raw = b"".join(struct.pack("=I", int(text[i : i + 8], 16)) for i in range(0, 32, 8))
    addr = socket.inet_ntop(socket.AF_INET6, raw)
    return addr


def parse_line(line: str, family: int = socket.AF_INET) -> TcpSocket | None:
    """Parse one /proc/net/tcp{,6} line; None for the header or a malformed line."""
    fields = line.split()
    if len(fields) < 10 or fields[0] == "sl":
        return None
    try:
        local_hex, local_port_hex = fields[1].split(":")
        remote_hex, remote_port_hex = fields[2].split(":")
        state = STATE_NAMES.get(int(fields[3], 16), f"UNKNOWN_{fields[3]}")
        tr_hex, when_hex = fields[5].split(":")
        rx_queue = int(fields[4].split(":")[1], 16)
        tr = int(tr_hex, 16)
        parse_addr = _ipv4 if family == socket.AF_INET else _ipv6
        return TcpSocket(
            family="ipv4" if family == socket.AF_INET else "ipv6",
            state=state,
            local_addr=parse_addr(local_hex),
            local_port=int(local_port_hex, 16),
            remote_addr=parse_addr(remote_hex),
            remote_port=int(remote_port_hex, 16),
            timer=TIMER_NAMES.get(tr, str(tr)),
            timer_s=int(when_hex, 16) / _CLK_TCK if tr else 0.0,
            uid=int(fields[7]),
            inode=int(fields[9]),
            rx_queue=rx_queue,
        )
    except (ValueError, OSError, struct.error):
        return None


def _lines(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="ascii") as f:
            yield from f
    except FileNotFoundError:  # no IPv6 in this kernel or namespace
        return


def plain_address(addr: str) -> str:
    """An address as a client sees it: an IPv4-mapped IPv6 address (a dual-stack server's view
    of an IPv4 client, ::ffff:127.0.0.1) becomes the IPv4 address."""
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def _end_matches(addr: str, port: int, want_port: int, want_addr: str | None) -> bool:
    return port == want_port and (want_addr is None or plain_address(addr) == want_addr)


def _match(sock: TcpSocket, port: int | None, side: Side, addr: str | None) -> bool:
    if port is None:
        return True
    local = _end_matches(sock.local_addr, sock.local_port, port, addr)
    if side == "local":
        return local
    remote = _end_matches(sock.remote_addr, sock.remote_port, port, addr)
    if side == "remote":
        return remote
    return local or remote


def _from_diag(port: int, side: Side) -> list[TcpSocket] | None:
    """The sockets on `port` from sock_diag (inetdiag.py), or None when it is unavailable."""
    from echolab import inetdiag

    try:
        rows = inetdiag.dump(port, local=side != "remote")
        if side == "any":
            rows += inetdiag.dump(port, local=False)
    except OSError:
        return None
    out, seen = [], set()
    for fam, state, timer, laddr, lport, raddr, rport, expires, rqueue, uid, inode in rows:
        key = (fam, state, laddr, lport, raddr, rport, inode)
        if key in seen:  # both ends on `port` (side="any"): listed by both dumps
            continue
        seen.add(key)
        out.append(
            TcpSocket(
                family="ipv4" if fam == socket.AF_INET else "ipv6",
                state=STATE_NAMES.get(state, f"UNKNOWN_{state:02X}"),
                local_addr=laddr,
                local_port=lport,
                remote_addr=raddr,
                remote_port=rport,
                timer=TIMER_NAMES.get(timer, str(timer)),
                timer_s=expires / 1000 if timer else 0.0,
                uid=uid,
                inode=inode,
                rx_queue=rqueue,
            )
        )
    return out


def _from_proc(port: int | None) -> Iterator[TcpSocket]:
    # The kernel prints the table in pieces while it changes: under churn a socket can come
    # twice (or not at all). A socket is one (family, state, ends, inode): list it once.
    seen = set()
    for path, family in PROC_FILES:
        for line in _lines(path):
            sock = parse_line(line, family)
            if sock is None:
                continue
            key = (sock.family, sock.state, sock.local, sock.remote, sock.inode)
            if key not in seen:
                seen.add(key)
                yield sock


def read_sockets(
    port: int | None = None,
    side: Side = "local",
    states: Iterable[str] | None = None,
    addr: str | None = None,
    source: Literal["auto", "proc"] = "auto",
) -> list[TcpSocket]:
    """TCP sockets (IPv4 and IPv6) whose `side` port is `port` (all when None), in `states`.

    `side="local"` is the server's view of its own port (its listener, sessions and their
    TIME_WAIT); `"remote"` is the clients' view (their sockets connected to that port).
    `addr` narrows it to that address on the same side: one port number can be in use at
    once on different local addresses (another program's outgoing connection from a
    container bridge, say), and those sockets are not the server's.
    """
    wanted = set(states) if states is not None else None
    want_addr = plain_address(addr) if addr is not None else None
    found = _from_diag(port, side) if port is not None and source == "auto" else None
    candidates = _from_proc(port) if found is None else iter(found)
    return [
        sock
        for sock in candidates
        if _match(sock, port, side, want_addr) and (wanted is None or sock.state in wanted)
    ]


def count_states(
    port: int | None = None, side: Side = "local", addr: str | None = None
) -> dict[str, int]:
    """Number of sockets per state on `port` (only states that occur)."""
    return dict(Counter(s.state for s in read_sockets(port, side, addr=addr)))


def time_wait_count(port: int, side: Side = "local", addr: str | None = None) -> int:
    """TIME_WAIT sockets on `port`: side="local" counts the server side, "remote" the clients'."""
    return len(read_sockets(port, side, states=("TIME_WAIT",), addr=addr))


def socket_owners(inodes: Iterable[int]) -> dict[int, list[tuple[int, str]]]:
    """Map socket inodes to the (pid, command name) of every process holding them.

    Scans /proc/*/fd like `ss -p`; processes we may not inspect are skipped silently.
    """
    wanted = {f"socket:[{i}]": i for i in inodes if i}
    owners: dict[int, list[tuple[int, str]]] = {}
    if not wanted:
        return owners
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is None:
                continue
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            pair = (int(entry), comm)
            if pair not in owners.setdefault(inode, []):
                owners[inode].append(pair)
    return owners


def with_owners(sockets: list[TcpSocket]) -> list[TcpSocket]:
    """The same sockets with `pids` filled in from /proc/*/fd."""
    owners = socket_owners(s.inode for s in sockets)
    out = []
    for s in sockets:
        pids = tuple(pid for pid, _ in owners.get(s.inode, []))
        out.append(TcpSocket(**{**asdict(s), "pids": pids}))
    return out


def _sort_key(s: TcpSocket) -> tuple[int, str, int, str, int]:
    order = STATE_ORDER.index(s.state) if s.state in STATE_ORDER else len(STATE_ORDER)
    return (order, s.local_addr, s.local_port, s.remote_addr, s.remote_port)


def port_report(port: int) -> dict[str, Any]:
    """Everything `echolab sockets` shows: sockets on the port from either side, by state."""
    local = read_sockets(port, "local")
    local_ids = {(s.local_addr, s.local_port, s.remote_addr, s.remote_port) for s in local}
    # Clients on this host connected to the port: their sockets have it as the remote port.
    remote = [
        s
        for s in read_sockets(port, "remote")
        if (s.local_addr, s.local_port, s.remote_addr, s.remote_port) not in local_ids
    ]
    sockets = sorted(with_owners(local), key=_sort_key)
    clients = sorted(with_owners(remote), key=_sort_key)
    return {
        "port": port,
        "server_side": dict(sorted(Counter(s.state for s in sockets).items(), key=_state_rank)),
        "client_side": dict(sorted(Counter(s.state for s in clients).items(), key=_state_rank)),
        "sockets": [_as_json(s, "server") for s in sockets]
        + [_as_json(s, "client") for s in clients],
    }


def _state_rank(item: tuple[str, int]) -> int:
    return STATE_ORDER.index(item[0]) if item[0] in STATE_ORDER else len(STATE_ORDER)


def _as_json(s: TcpSocket, side: str) -> dict[str, Any]:
    return {
        "side": side,
        "state": s.state,
        "family": s.family,
        "local": s.local,
        "remote": s.remote,
        "timer": s.timer,
        "timer_s": round(s.timer_s, 2),
        "uid": s.uid,
        "inode": s.inode,
        "rx_queue": s.rx_queue,
        "pids": list(s.pids),
    }


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in counts.items()) or "none"


TIME_WAIT_S = 60.0  # how long Linux keeps TIME_WAIT (fixed): the full length of a countdown bar
BAR = 10  # characters in a countdown bar


def countdown(seconds: float) -> str:
    """A TIME_WAIT countdown as a bar: full at 60 s left, empty when the kernel reaps it."""
    full = max(0, min(BAR, round(seconds / TIME_WAIT_S * BAR)))
    return "█" * full + "░" * (BAR - full)


def render_text(report: dict[str, Any], max_rows: int = 20, bars: bool = False) -> str:
    """The report as aligned text, at most `max_rows` sockets per side and state listed
    (`bars`: a countdown bar beside each TIME_WAIT socket's time left)."""
    port = report["port"]
    lines = [
        f"TCP sockets on port {port}",
        f"  server side (local port {port}): {_summary(report['server_side'])}",
        f"  client side (remote port {port}): {_summary(report['client_side'])}",
    ]
    rows = [("SIDE", "STATE", "LOCAL", "REMOTE", "TIMER", "PIDS")]
    shown: Counter[tuple[str, str]] = Counter()
    hidden: Counter[tuple[str, str]] = Counter()
    for s in report["sockets"]:
        key = (s["side"], s["state"])
        if shown[key] >= max_rows:
            hidden[key] += 1
            continue
        shown[key] += 1
        timer = ""
        if s["state"] == "TIME_WAIT":
            timer = f"{s['timer_s']:4.1f}s left" + (f" {countdown(s['timer_s'])}" if bars else "")
        elif s["timer"]:
            timer = f"{s['timer']} {s['timer_s']:.1f}s"
        pids = ",".join(str(p) for p in s["pids"])
        rows.append((s["side"], s["state"], s["local"], s["remote"], timer, pids))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        for r in rows:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
    for (side, state), n in hidden.items():
        lines.append(f"  ... and {n} more {side}-side {state} (all of them in --json)")
    return "\n".join(lines)


class _StopWatching(Exception):
    """Raised by the signal handler: the watch ends where it is, and cleans up."""


def _stop_watching(signum: int, frame: object) -> None:
    raise _StopWatching(signum)


def summary_line(report: dict[str, Any]) -> str:
    """One reading as one line (the watch without a terminal)."""
    left = sorted(s["timer_s"] for s in report["sockets"]
                  if s["side"] == "server" and s["state"] == "TIME_WAIT")  # fmt: skip
    expiry = f" (TIME_WAIT expires in {left[0]:.1f}-{left[-1]:.1f} s)" if left else ""
    return (
        f"{time.strftime('%H:%M:%S')} port {report['port']}: server "
        f"{_summary(report['server_side'])}{expiry}; client {_summary(report['client_side'])}"
    )


def screen(report: dict[str, Any], interval: float) -> str:
    """One reading as a full screen: home, the table with countdowns, clear the rest."""
    rows = shutil.get_terminal_size((100, 30)).lines
    head = (
        f"echolab sockets --watch: every {interval:g} s, {time.strftime('%H:%M:%S')} (Ctrl-C ends)"
    )
    lines = [head, *render_text(report, max_rows=max(1, rows - 8), bars=True).splitlines()]
    body = "\x1b[K\n".join(lines[: rows - 1])
    return "\x1b[H" + body + "\x1b[K\n\x1b[J"


def watch(port: int, interval: float, out: TextIO) -> int:
    """Redraw (terminal) or print a line (otherwise) every `interval` s until a signal; 0."""
    tty = out.isatty()
    saved = {sig: signal.signal(sig, _stop_watching) for sig in WATCH_SIGNALS}
    try:
        if tty:
            out.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear once
        while True:
            report = port_report(port)
            out.write(screen(report, interval) if tty else summary_line(report) + "\n")
            out.flush()
            time.sleep(interval)
    except _StopWatching:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is not cut short
        if tty:
            out.write("\x1b[?25h\n")
        out.flush()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return 0


def run(args: argparse.Namespace) -> int:
    """`echolab sockets`: print the sockets on --port by state; --json for machines; --watch
    to redraw them until Ctrl-C or SIGTERM."""
    port: int = args.port
    if not os.path.exists(PROC_FILES[0][0]):
        raise EcholabError("/proc/net/tcp is not readable here (is /proc mounted?)", EXIT_OS_ERROR)
    if args.watch:
        if args.json_file is not None:
            raise EcholabError("--watch draws for people: drop --json", EXIT_USAGE)
        if args.interval < MIN_INTERVAL:
            raise EcholabError(f"--interval must be at least {MIN_INTERVAL:g} s", EXIT_USAGE)
        return watch(port, args.interval, sys.stdout)
    report = port_report(port)
    json_file: str | None = args.json_file
    if json_file is not None:
        write_json(report, json_file)
    if json_file != "-":
        print(render_text(report))
    return 0
