#!/usr/bin/env python3
"""The benchmark behind `make bench`: `echolab serve` against its peers, on one machine, in one run.

Peers: a C fork-per-connection server (bench/c/echo_server.c), the minimal Python os.fork()
server (bench/peers/minimal_fork.py), the stdlib ForkingTCPServer with backlog 128 and no
child cap (bench/peers/forking_tcpserver.py), an asyncio server in one process
(bench/peers/asyncio_echo.py), and the subject, `echolab serve`. Every Python server runs on
the SAME interpreter and venv (--python/--echolab), because start-up imports change the cost
of every fork (docs/architecture.md, "The three process roles").

The load comes from a C epoll client (bench/c/echo_load.c) that checks every echoed byte:
  rate     connections per second: connect, 64 B echo, close; 8 and 64 in flight
  stream   MiB/s echoed: 1 and 8 long streams, each writing and reading at once
  memory   PSS of a server child while N idle clients are held (one process: PSS growth / N)
and `echolab load --mode rate` against the C server beside the C client (closed loop), plus
its open loop at 80% of that rate (does it keep its schedule?).

Each figure is measured --repeats times, in rounds (every peer once per round, so a busy
moment of the machine hits all peers alike), and the median is reported. Results go to
bench/results/ as JSON and a markdown table. Standard library only; any python3 runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The driver runs on any Python 3.11 (not the benchmark's venv): it takes the shared process
# helpers and the ready line's parser from the source tree (both standard library only).
sys.path.insert(0, str(ROOT / "app"))
from echolab.proctree import ProcessGroup, children_of  # noqa: E402
from echolab.ready import parse_ready  # noqa: E402

START_TIMEOUT = 15.0  # s for a server to log its "listening on" line
STOP_TIMEOUT = 10.0  # s for a server to exit after SIGTERM before SIGKILL
PAYLOAD = 64  # bytes per connection in rate mode: a small request, so the fork is the cost

# The targets echolab holds itself to (docs/bench.md says why each): a ratio against a peer
# measured in the same run, or a limit.
TARGETS_RATE_MIN = 1.0  # conn rate >= 1.0x the minimal Python server: no dearer fork
TARGETS_RATE_FORKING = 1.5  # conn rate >= 1.5x ForkingTCPServer, the stdlib's answer
TARGET_STREAM_C = 0.9  # 1 and 8 streams >= 0.9x the C server: bytes stay out of Python
TARGET_PSS_KIB = 400  # PSS per idle connection <= 400 KiB (a lean parent)
TARGET_LOAD_C = 0.6  # echolab load >= 60% of the C client's rate: not the bottleneck
TARGET_OPEN_LOOP = 0.8  # the open loop holds its schedule at 80% of the closed-loop max


@dataclass
class Peer:
    """One server to measure: how to start it, and whether it forks per connection."""

    key: str
    label: str
    argv: list[str]
    forks: bool = True


@dataclass
class Results:
    """Every run of every figure, by peer and metric; notes; the load generators' comparison."""

    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    details: dict[str, dict[str, list[dict[str, object]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    load_compare: dict[str, list[float]] = field(default_factory=dict)

    def add(self, peer: str, metric: str, value: float, detail: dict[str, object]) -> None:
        self.runs.setdefault(peer, {}).setdefault(metric, []).append(value)
        self.details.setdefault(peer, {}).setdefault(metric, []).append(detail)

    def median(self, peer: str, metric: str) -> float | None:
        values = self.runs.get(peer, {}).get(metric)
        return statistics.median(values) if values else None


# ----- output ------------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(text: str) -> None:
    """One progress line, with the seconds since the start."""
    print(f"[{time.monotonic() - _T0:5.0f}s] {text}", flush=True)


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "—"
    if metric.startswith("pss"):
        return f"{value:,.0f}"
    return f"{value:,.0f}"


# ----- processes ---------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The environment for servers and clients: no ECHOLAB_* or PYTHON* settings leak in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ECHOLAB_", "PYTHON", "LISTEN_")) and k != "VIRTUAL_ENV"
    }


class CpuGroup:
    """CPU time used by a server and every child it forks, from a cgroup of its own.

    cgroup v1 `cpuacct.usage` or v2 `cpu.stat` usage_usec. Needs root; without it, figures
    are None. CPU time per connection holds steady on a busy machine, where rates do not.
    """

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        v1 = Path("/sys/fs/cgroup/cpuacct")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpuacct.usage").exists():
                self.path, self.v1 = v1 / name, True
            elif (v2 / "cgroup.controllers").exists():
                self.path, self.v1 = v2 / name, False
            if self.path is not None:
                self.path.mkdir()
        except OSError:
            self.path = None

    def add(self, pid: int) -> None:
        if self.path is None:
            return
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError:
            self.remove()
            self.path = None

    def usage_us(self) -> float | None:
        """CPU microseconds used so far by the processes in the group, dead ones included."""
        if self.path is None:
            return None
        try:
            if self.v1:
                return int((self.path / "cpuacct.usage").read_text()) / 1000
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return float(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def remove(self) -> None:
        if self.path is None:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)  # the last processes are still exiting


class Server:
    """A running peer: started in its own session, in its own CPU cgroup, output in a log."""

    def __init__(self, peer: Peer, logdir: Path) -> None:
        self.peer = peer
        self.log_path = logdir / f"{peer.key}.log"
        self.log = self.log_path.open("ab")
        self.log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(peer.argv)}\n".encode())
        self.log.flush()
        start_at = self.log.tell()
        self.proc = subprocess.Popen(
            peer.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
        self.group = ProcessGroup.of(self.proc)  # before any wait: its ID may be reused after
        # Before it forks any child: children join their parent's cgroup.
        self.cpu = CpuGroup(f"echolab-bench-{os.getpid()}-{peer.key}")
        self.cpu.add(self.proc.pid)
        self.port = self._wait_listening(start_at)

    def _wait_listening(self, offset: int) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            ready = next(filter(None, map(parse_ready, text.splitlines())), None)
            if ready:
                return ready[1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"{self.peer.label} did not start: " + " | ".join(tail))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after STOP_TIMEOUT; close the log."""
        if self.proc.poll() is None:
            self.group.signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.group.signal(signal.SIGKILL)
                self.proc.wait()
        # Children that outlived their parent (the minimal server's) are in the same group.
        self.group.signal(signal.SIGKILL)
        self.cpu.remove()
        self.log.close()


def run_client(argv: list[str], timeout: float) -> dict[str, object]:
    """Run the C load client; return its JSON (with 'exit' added)."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=clean_env(), check=False
    )
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    data: dict[str, object] = json.loads(proc.stdout)
    data["exit"] = proc.returncode
    return data


def error_count(data: dict[str, object]) -> int:
    errors = data.get("errors", {})
    return sum(errors.values()) if isinstance(errors, dict) else 0


# ----- memory ------------------------------------------------------------------------------


def own_cpu_us(pid: int) -> float | None:
    """CPU microseconds used by one process itself (utime + stime, not its children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int | None:
    """Proportional set size of a process in KiB (smaps_rollup), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def private_dirty_by_region(pid: int) -> dict[str, int]:
    """Private_Dirty KiB of one process by kind of mapping (from /proc/PID/smaps).

    'anon' is mostly the interpreter's object arenas; 'libpython data' its static objects
    (type objects, whose reference counts every fork un-shares); 'heap' is malloc's.
    """
    out: dict[str, int] = {}
    region = "?"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5].strip() if len(head) > 5 else ""
            if not path:
                region = "anon"
            elif path.startswith("["):
                region = path.strip("[]")
            elif "libpython" in path:
                region = "libpython data"
            else:
                region = "other files"
        elif line.startswith("Private_Dirty:"):
            kib = int(line.split()[1])
            if kib:
                out[region] = out.get(region, 0) + kib
    return out


def hold_clients(port: int, n: int) -> list[socket.socket]:
    """Connect n clients and make one echo round trip on each, so each is being served."""
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            ping = b"ping%06d" % i
            s.sendall(ping)
            got = b""
            while len(got) < len(ping):
                chunk = s.recv(len(ping) - len(got))
                if not chunk:
                    raise RuntimeError("the server closed an idle client")
                got += chunk
            if got != ping:
                raise RuntimeError("wrong echo while holding idle clients")
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def measure_memory(server: Server, n: int) -> dict[str, object]:
    """PSS per connection with n idle clients held.

    Fork-per-connection: the median PSS of the server's children (what the target
    means). One process: the growth of the server's PSS, divided by n. Both are recorded.
    """
    pid = server.proc.pid
    deadline = time.monotonic() + 10
    while server.peer.forks and children_of(pid, zombies=False) and time.monotonic() < deadline:
        time.sleep(0.05)  # children of earlier connections still exiting
    before = pss_kib(pid) or 0
    socks = hold_clients(server.port, n)
    try:
        kids: list[int] = []
        if server.peer.forks:
            while time.monotonic() < deadline:
                kids = children_of(pid, zombies=False)
                if len(kids) >= n:
                    break
                time.sleep(0.05)
        time.sleep(0.2)
        parent_after = pss_kib(pid) or 0
        child_pss = [p for p in (pss_kib(k) for k in kids) if p is not None]
        total = parent_after + sum(child_pss)
        growth = (total - before) / n
        result: dict[str, object] = {
            "clients": n,
            "children": len(child_pss),
            "parent_before_kib": before,
            "parent_after_kib": parent_after,
            "growth_per_conn_kib": round(growth, 1),
        }
        if child_pss:
            result["child_pss_kib_median"] = statistics.median(child_pss)
            result["child_pss_kib_min"] = min(child_pss)
            result["child_pss_kib_max"] = max(child_pss)
        result["pss_kib"] = (
            result["child_pss_kib_median"] if server.peer.forks and child_pss else growth
        )
        if kids:
            # Where one child's own pages are: what the parent or the child wrote after fork.
            kids.sort()  # fork order, but for a wrap of the pid counter
            result["child_private_dirty_kib"] = private_dirty_by_region(kids[len(kids) // 2])
            # The last child forked has seen no parent writes since its fork; the middle one
            # has: the difference is what the parent's work between two forks costs a child.
            result["private_dirty_kib_middle_child"] = sum(
                result["child_private_dirty_kib"].values()
            )
            result["private_dirty_kib_last_child"] = sum(private_dirty_by_region(kids[-1]).values())
        return result
    finally:
        for s in socks:
            s.close()


# ----- the interpreter ---------------------------------------------------------------------

FORK_PROBE = """
import os, sys, time
for name in sys.argv[1:]:
    __import__(name)
n = 300
t = time.perf_counter()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print((time.perf_counter() - t) / n * 1e3)
"""


def interpreter_facts(python: str) -> dict[str, object]:
    """What the benchmark's interpreter imports at start, and what a fork costs it."""
    env = clean_env()
    out = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stderr
    modules = [
        ln.split("|")[-1].strip() for ln in out.splitlines() if ln.startswith("import time:")
    ]
    modules = [m for m in modules if m and m != "imported package"]
    info = subprocess.run(
        [
            python,
            "-c",
            "import sys, site; print(sys.version.split()[0]); print(sys.prefix);"
            "print(';'.join(site.getsitepackages()))",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.splitlines()
    pth = sorted(
        p.name for sp in info[2].split(";") if Path(sp).is_dir() for p in Path(sp).glob("*.pth")
    )
    stdlib_site = {
        "site",
        "os",
        "stat",
        "_stat",
        "posixpath",
        "genericpath",
        "_collections_abc",
        "_sitebuiltins",
        "sitecustomize",
        "usercustomize",
        "abc",
        "_abc",
        "io",
        "codecs",
        "_codecs",
        "encodings",
        "encodings.aliases",
        "encodings.utf_8",
        "_signal",
        "_io",
        "marshal",
        "posix",
        "_frozen_importlib_external",
        "time",
        "zipimport",
        "_distutils_system_mod",
    }
    extra = [m for m in modules if m not in stdlib_site]

    def fork_ms(*imports: str) -> float:
        res = subprocess.run(
            [python, "-c", FORK_PROBE, *imports],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return round(float(res.stdout), 3)

    facts: dict[str, object] = {
        "python": python,
        "version": info[0],
        "prefix": info[1],
        "pth_files": pth,
        "startup_modules": len(modules),
        "startup_extra_modules": extra,
        "fork_ms_bare": fork_ms(),
    }
    return facts


# ----- the run -----------------------------------------------------------------------------


def make_peers(args: argparse.Namespace) -> list[Peer]:
    py, bindir = args.python, Path(args.bin)
    every = {
        "c": Peer("c", "C fork per connection", [str(bindir / "echo_server"), "0", "128"]),
        "minimal": Peer(
            "minimal",
            "minimal Python os.fork()",
            [py, str(HERE / "peers" / "minimal_fork.py"), "0"],
        ),
        "forking": Peer(
            "forking",
            "stdlib ForkingTCPServer",
            [py, str(HERE / "peers" / "forking_tcpserver.py"), "0"],
        ),
        "asyncio": Peer(
            "asyncio",
            "asyncio, one process",
            [py, str(HERE / "peers" / "asyncio_echo.py"), "0"],
            forks=False,
        ),
        "echolab": Peer(
            "echolab",
            "echolab serve",
            [
                args.echolab,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--grace",
                "1",
                *args.echolab_arg,
            ],
        ),
    }
    wanted = [k.strip() for k in args.peers.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in every]
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)} (known: {', '.join(every)})")
    return [every[k] for k in wanted]


def measure_peer(
    peer: Peer, args: argparse.Namespace, res: Results, rnd: str, logdir: Path
) -> None:
    """Start one peer, take every figure once, stop it."""
    try:
        server = Server(peer, logdir)
    except RuntimeError as exc:
        res.errors.append(str(exc))
        progress(f"{rnd} {peer.label}: {exc}")
        return
    run = PeerRun(peer, args, res, rnd, server)
    try:
        if args.idle_clients and not peer.forks:
            # One process: its growth per client, measured before load grows its heap.
            record_memory(server, args, res, rnd)
        # Warm-up, not recorded: first page faults in the parent, the first children.
        run_client(
            [run.client, "rate", server.target, str(args.warmup), "8", str(PAYLOAD)], timeout=120
        )
        for k in args.inflight:
            run.rate(k)
        for n in args.streams:
            run.streams(n)
        if args.idle_clients and peer.forks:
            record_memory(server, args, res, rnd)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        res.errors.append(f"{peer.label}: {exc}")
        progress(f"{rnd} {peer.label}: FAILED: {exc}")
    finally:
        server.stop()


@dataclass
class PeerRun:
    """One peer's measurements in one round, against its running server."""

    peer: Peer
    args: argparse.Namespace
    res: Results
    rnd: str
    server: Server

    @property
    def client(self) -> str:
        return str(Path(self.args.bin) / "echo_load")

    def rate(self, k: int) -> None:
        """Connections per second with `k` in flight, and the server's CPU per connection."""
        server, n, key = self.server, self.args.connections, self.peer.key
        cpu0, parent0 = server.cpu.usage_us(), own_cpu_us(server.proc.pid)
        data = run_client(
            [self.client, "rate", server.target, str(n), str(k), str(PAYLOAD)], timeout=600
        )
        cpu1, parent1 = server.cpu.usage_us(), own_cpu_us(server.proc.pid)
        if parent0 is not None and parent1 is not None:
            # The parent accepts and forks serially: its CPU per connection caps the rate.
            cpu = parent1 - parent0
            self.res.add(key, f"parent_cpu_rate_{k}", cpu / n, {"cpu_us": cpu})
        value = float(data["conn_per_s"])
        self.res.add(key, f"rate_{k}", value, data)
        cpu_text = ""
        if cpu0 is not None and cpu1 is not None:
            per_conn = (cpu1 - cpu0) / n
            self.res.add(key, f"cpu_rate_{k}", per_conn, {"cpu_us": cpu1 - cpu0})
            cpu_text = f"  server CPU {per_conn:,.0f} us/conn"
        latency = data["latency_ms"]
        p99 = latency["p99"] if isinstance(latency, dict) else "?"
        self.report(
            data,
            f"rate, {k} in flight",
            f"rate {k:>3} in flight  {value:>9,.0f} conn/s  p99 {p99} ms{cpu_text}",
        )

    def streams(self, n: int) -> None:
        """MiB/s echoed over `n` streams, and the server's CPU per GiB."""
        a, server = self.args, self.server
        cpu0 = server.cpu.usage_us()
        argv = [self.client, "stream", server.target, str(n)]
        argv += [str(a.stream_seconds), str(a.stream_warmup)]
        data = run_client(argv, timeout=a.stream_seconds + a.stream_warmup + 60)
        cpu1 = server.cpu.usage_us()
        value = float(data["mib_per_s"])
        self.res.add(self.peer.key, f"stream_{n}", value, data)
        cpu_text = ""
        verified = float(data.get("bytes_verified") or 0)
        if cpu0 is not None and cpu1 is not None and verified:
            per_gib = (cpu1 - cpu0) / 1000 / (verified / 2**30)
            self.res.add(self.peer.key, f"cpu_stream_{n}", per_gib, {"cpu_us": cpu1 - cpu0})
            cpu_text = f"  server CPU {per_gib:,.0f} ms/GiB"
        self.report(
            data, f"{n} streams", f"{n:>2} stream(s)          {value:>9,.0f} MiB/s{cpu_text}"
        )

    def report(self, data: dict[str, object], what: str, line: str) -> None:
        """One progress line; the run's errors, if any, recorded."""
        bad = error_count(data)
        if bad:
            self.res.errors.append(f"{self.peer.label}: {what}: {data['errors']}")
        progress(
            f"{self.rnd} {self.peer.label:<26} {line}"
            + (f"  ERRORS {data['errors']}" if bad else "")
        )


def record_memory(server: Server, args: argparse.Namespace, res: Results, rnd: str) -> None:
    mem = measure_memory(server, args.idle_clients)
    value = float(mem["pss_kib"])
    res.add(server.peer.key, "pss", value, mem)
    how = (
        f"median child PSS, {mem['children']} children"
        if server.peer.forks and mem["children"]
        else "PSS growth / clients"
    )
    progress(
        f"{rnd} {server.peer.label:<26} {args.idle_clients} idle clients   "
        f"{value:>9,.0f} KiB/conn ({how})"
    )


def compare_load(args: argparse.Namespace, res: Results, rnd: str, logdir: Path) -> None:
    """Issue 3: `echolab load --mode rate` and the C client, one after the other, on the C
    server, same connections, clients in flight and payload."""
    try:
        server = Server(
            Peer(
                "c-for-load",
                "C server (load comparison)",
                [str(Path(args.bin) / "echo_server"), "0", "128"],
            ),
            logdir,
        )
    except RuntimeError as exc:
        res.errors.append(f"load comparison: {exc}")
        return
    k = args.load_clients
    try:
        data = run_client(
            [
                str(Path(args.bin) / "echo_load"),
                "rate",
                server.target,
                str(args.connections),
                str(k),
                str(PAYLOAD),
            ],
            timeout=600,
        )
        c_rate = float(data["conn_per_s"])
        res.load_compare.setdefault("c_client", []).append(c_rate)
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            proc = subprocess.run(
                [
                    args.echolab,
                    "load",
                    "--target",
                    server.target,
                    "--mode",
                    "rate",
                    "--clients",
                    str(k),
                    "--connections",
                    str(args.connections),
                    "--payload",
                    str(PAYLOAD),
                    "--no-progress",
                    "--json",
                    tmp.name,
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env=clean_env(),
                check=False,
            )
            text = Path(tmp.name).read_text()
        if proc.returncode != 0 or not text.strip():
            msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            raise RuntimeError(f"echolab load exited {proc.returncode}: {msg[0]}")
        ours = json.loads(text)
        e_rate = float(ours["conn_per_s"])
        res.load_compare.setdefault("echolab_load", []).append(e_rate)
        progress(
            f"{rnd} load comparison on the C server, {k} in flight: C client "
            f"{c_rate:,.0f} conn/s, echolab load {e_rate:,.0f} conn/s "
            f"({e_rate / c_rate:.2f}x)"
        )
        if args.open_seconds:
            compare_open_loop(args, res, rnd, server.target, e_rate)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
        res.errors.append(f"load comparison: {exc}")
        progress(f"{rnd} load comparison: FAILED: {exc}")
    finally:
        server.stop()


def compare_open_loop(
    args: argparse.Namespace, res: Results, rnd: str, target: str, closed_rate: float
) -> None:
    """Issue 14: `echolab load --rate` at TARGET_OPEN_LOOP of the closed loop's rate just
    measured, on the same server; whether it kept its schedule, by its own verdict."""
    from loadgen import open_loop_run  # bench/loadgen.py, which imports this module's helpers

    run = open_loop_run(args.echolab, target, TARGET_OPEN_LOOP * closed_rate, args.open_seconds)
    res.load_compare.setdefault("open_loop_kept", []).append(1.0 if run["kept"] else 0.0)
    res.load_compare.setdefault("open_loop_lag_p99_ms", []).append(float(run["lag_p99_ms"] or 0))
    res.load_compare.setdefault("open_loop_rate", []).append(float(run["rate"]))
    progress(
        f"{rnd} open loop at {TARGET_OPEN_LOOP:.0%} of that ({run['rate']:,} conn/s): "
        f"achieved {run['achieved_per_s']:,.0f}/s, its own lag p99 {run['lag_p99_ms']} ms: "
        f"{run['verdict']}"
    )


# ----- report ------------------------------------------------------------------------------


def metric_names(args: argparse.Namespace) -> list[tuple[str, str]]:
    names = [(f"rate_{k}", f"conn/s, {k} in flight") for k in args.inflight]
    names += [(f"stream_{s}", f"MiB/s, {s} stream{'s' if s > 1 else ''}") for s in args.streams]
    if args.idle_clients:
        names.append(("pss", f"PSS KiB/conn, {args.idle_clients} idle"))
    return names


def evaluate_targets(args: argparse.Namespace, res: Results) -> list[dict[str, object]]:
    """Each target of the benchmark: the figure, the bar, met or missed."""
    out: list[dict[str, object]] = []
    for k in args.inflight:
        for peer, factor, name in (
            ("minimal", TARGETS_RATE_MIN, "minimal Python"),
            ("forking", TARGETS_RATE_FORKING, "ForkingTCPServer"),
        ):
            label = f"conn/s, {k} in flight >= {factor}x {name}"
            out.append(ratio_target(res, f"rate_{k}", peer, factor, label))
    for n in args.streams:
        label = f"MiB/s, {n} stream{'s' if n > 1 else ''} >= {TARGET_STREAM_C}x C"
        out.append(ratio_target(res, f"stream_{n}", "c", TARGET_STREAM_C, label))
    if args.idle_clients:
        pss = res.median("echolab", "pss")
        met = pss is not None and pss <= TARGET_PSS_KIB
        out.append(
            target(f"PSS per connection <= {TARGET_PSS_KIB} KiB", pss, TARGET_PSS_KIB, "max", met)
        )
    out += load_targets(args, res)
    return out


def target(
    label: str, value: float | None, bar: float, kind: str, met: bool, **more: object
) -> dict[str, object]:
    """One row of the targets table (`met` is None without a figure)."""
    row: dict[str, object] = {"target": label, "value": value, "bar": bar, "kind": kind}
    row["met"] = None if value is None else met
    return {**row, **more}


def ratio_target(
    res: Results, metric: str, peer: str, factor: float, label: str
) -> dict[str, object]:
    """echolab's metric against a peer's, and the same comparison by server CPU per unit of
    work (theirs / ours: higher is better, like the target): what an idle machine would show."""
    ours, theirs = res.median("echolab", metric), res.median(peer, metric)
    value = ours / theirs if ours is not None and theirs else None
    cpu_ours = res.median("echolab", f"cpu_{metric}")
    cpu_theirs = res.median(peer, f"cpu_{metric}")
    by_cpu = cpu_theirs / cpu_ours if cpu_ours and cpu_theirs is not None else None
    met = value is not None and value >= factor
    return target(label, value, factor, "ratio", met, by_cpu=by_cpu)


def load_targets(args: argparse.Namespace, res: Results) -> list[dict[str, object]]:
    """The load generator's targets: its rate against the C client's, and the open loop."""
    out: list[dict[str, object]] = []
    if args.load_compare:
        c, e = res.load_compare.get("c_client"), res.load_compare.get("echolab_load")
        value = statistics.median(e) / statistics.median(c) if c and e else None
        label = (
            f"echolab load >= {TARGET_LOAD_C:.0%} of the C client "
            f"(C server, {args.load_clients} in flight)"
        )
        out.append(target(label, value, TARGET_LOAD_C, "ratio", (value or 0) >= TARGET_LOAD_C))
    kept = res.load_compare.get("open_loop_kept")
    if kept:
        share = sum(kept) / len(kept)
        label = (
            f"echolab load --rate holds its schedule at {TARGET_OPEN_LOOP:.0%} "
            "of its closed-loop rate (rounds kept)"
        )
        out.append(target(label, share, 0.5, "share", share > 0.5))  # in the median round
    return out


def cpu_metric_names(args: argparse.Namespace) -> list[tuple[str, str]]:
    names = [(f"cpu_rate_{k}", f"CPU us/conn, {k} in flight") for k in args.inflight]
    names += [
        (f"parent_cpu_rate_{k}", f"parent alone us/conn, {k} in flight") for k in args.inflight
    ]
    names += [
        (f"cpu_stream_{s}", f"CPU ms/GiB, {s} stream{'s' if s > 1 else ''}") for s in args.streams
    ]
    return names


def render_table(
    args: argparse.Namespace,
    res: Results,
    peers: list[Peer],
    names: list[tuple[str, str]] | None = None,
) -> str:
    """The markdown table: peers x medians, then echolab's ratio to each reference peer."""
    names = metric_names(args) if names is None else names
    lines = [
        "| server | " + " | ".join(label for _, label in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for peer in peers:
        cells = [fmt(res.median(peer.key, m), m) for m, _ in names]
        lines.append(f"| {peer.label} | " + " | ".join(cells) + " |")
    keys = {p.key for p in peers}
    if "echolab" in keys:
        for ref, label in (
            ("minimal", "minimal Python"),
            ("forking", "ForkingTCPServer"),
            ("c", "C"),
        ):
            if ref not in keys:
                continue
            cells = []
            for m, _ in names:
                ours, theirs = res.median("echolab", m), res.median(ref, m)
                cells.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "—")
            lines.append(f"| *echolab ÷ {label}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_targets(targets: list[dict[str, object]]) -> str:
    lines = [
        "| target | echolab | verdict | same ratio by server CPU |",
        "|---|---:|---|---:|",
    ]
    for t in targets:
        value = t["value"]
        bar = float(t["bar"])
        if value is None:
            shown, verdict = "—", "not measured"
        elif t["kind"] == "share":
            shown = f"{float(value):.0%}"
            verdict = "met" if t["met"] else "MISSED"
        elif t["kind"] == "ratio":
            v = float(value)
            shown = f"{v:.2f}x"
            short = (bar - v) / bar
            if t["met"]:
                verdict = "met"
            else:
                verdict = f"MISSED by {short:.1%}" if short < 0.1 else f"MISSED by {short:.0%}"
        else:
            v = float(value)
            shown = f"{v:,.0f} KiB"
            verdict = "met" if t["met"] else f"MISSED by {v - bar:,.0f} KiB"
        by_cpu = t.get("by_cpu")
        cpu_shown = f"{float(by_cpu):.2f}x" if isinstance(by_cpu, float) else "—"
        lines.append(f"| {t['target']} | {shown} | {verdict} | {cpu_shown} |")
    return "\n".join(lines)


def render_spread(args: argparse.Namespace, res: Results, peers: list[Peer]) -> str:
    names = metric_names(args)
    lines = [
        "| server | " + " | ".join(label for _, label in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for peer in peers:
        cells = []
        for m, _ in names:
            values = res.runs.get(peer.key, {}).get(m, [])
            cells.append(" / ".join(f"{v:,.0f}" for v in values) or "—")
        lines.append(f"| {peer.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_facts() -> dict[str, object]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "app"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_start": read("/proc/loadavg"),
        "tcp_tw_reuse": read("/proc/sys/net/ipv4/tcp_tw_reuse"),
        "git_commit": commit,
        "app_uncommitted_changes": bool(dirty),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--python",
        default=str(ROOT / ".venv-bench" / "bin" / "python"),
        help="interpreter for every Python peer (the bench venv's)",
    )
    p.add_argument(
        "--echolab",
        default=None,
        help="the echolab script of the same venv (default: beside --python)",
    )
    p.add_argument(
        "--echolab-arg",
        action="append",
        default=[],
        help="extra argument for `echolab serve` (repeatable)",
    )
    p.add_argument("--bin", default=str(HERE / "bin"), help="where echo_server/echo_load are")
    p.add_argument("--out", default=str(HERE / "results"), help="results directory")
    p.add_argument("--peers", default="c,minimal,forking,asyncio,echolab")
    p.add_argument("--connections", type=int, default=10000, help="per rate run")
    p.add_argument("--warmup", type=int, default=500, help="unrecorded connections first")
    p.add_argument("--inflight", default="8,64", help="rate runs: connections in flight")
    p.add_argument("--streams", default="1,8", help="stream runs: concurrent streams")
    p.add_argument("--stream-seconds", type=float, default=3.0)
    p.add_argument("--stream-warmup", type=float, default=0.5)
    p.add_argument("--idle-clients", type=int, default=200, help="for PSS (0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    p.add_argument(
        "--load-clients", type=int, default=64, help="load comparison: connections in flight"
    )
    p.add_argument("--no-load-compare", dest="load_compare", action="store_false")
    p.add_argument(
        "--open-seconds",
        type=float,
        default=5.0,
        help="seconds of each open-loop run beside the load comparison (0: skip)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny sizes, one round (figures are meaningless)",
    )
    p.add_argument(
        "--fail-on-missed", action="store_true", help="exit 3 when echolab misses a target"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.connections, args.warmup, args.repeats = 300, 50, 1
        args.stream_seconds, args.stream_warmup = 0.5, 0.1
        args.idle_clients = min(args.idle_clients, 20)
        args.open_seconds = min(args.open_seconds, 1.0)
    args.inflight = [int(x) for x in args.inflight.split(",") if x]
    args.streams = [int(x) for x in args.streams.split(",") if x]
    if args.echolab is None:
        args.echolab = str(Path(args.python).parent / "echolab")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(args)
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    peers = make_peers(args)
    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = out / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    machine, interp = machine_facts(), interpreter_facts(args.python)
    announce(args, peers, machine, interp)
    res = Results()
    for r in range(1, args.repeats + 1):
        rnd = f"round {r}/{args.repeats}"
        for peer in peers:
            measure_peer(peer, args, res, rnd, logdir)
        if args.load_compare:
            compare_load(args, res, rnd, logdir)
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    report = Report(args, res, peers, machine=machine, interp=interp, argv=argv)
    report.write(out, stamp)
    report.print(out, stamp, logdir)
    if res.errors:
        print(f"\n{len(res.errors)} error(s):", *res.errors, sep="\n  ")
        return 1
    if args.fail_on_missed and any(t["met"] is False for t in report.targets):
        return 3
    return 0


def missing_tools(args: argparse.Namespace) -> str:
    """What the run lacks (one line), or ''."""
    for tool in ("echo_server", "echo_load"):
        if not os.access(Path(args.bin) / tool, os.X_OK):
            return f"{Path(args.bin) / tool} missing: run `make bench` (it builds them)"
    if not os.access(args.python, os.X_OK):
        return f"no interpreter at {args.python}: run `make bench`"
    return ""


def announce(
    args: argparse.Namespace,
    peers: list[Peer],
    machine: dict[str, object],
    interp: dict[str, object],
) -> None:
    """The run's conditions, before it starts: machine, interpreter, peers, sizes."""
    progress(
        f"machine: {machine['cpus']} CPUs ({machine['cpu']}), kernel {machine['kernel']}, "
        f"load average {machine['loadavg_start']}"
    )
    extra = cast("list[str]", interp["startup_extra_modules"])
    progress(
        f"interpreter for every Python peer: {interp['python']} (Python {interp['version']})"
        f"; {interp['startup_modules']} modules at start-up; .pth files: "
        f"{', '.join(cast('list[str]', interp['pth_files'])) or 'none'}; extra start-up "
        f"modules: {', '.join(extra) or 'none'}"
    )
    progress(f"fork()+_exit()+waitpid() of that interpreter, bare: {interp['fork_ms_bare']} ms")
    if extra:
        progress(
            "WARNING: the interpreter imports modules beyond the standard library's site "
            "at start-up; every fork pays for them"
        )
    load1 = float(str(machine["loadavg_start"]).split()[0] or 0)
    if load1 > 0.5:
        progress(
            f"WARNING: load average {load1} at the start: something else is running, "
            "figures will be noisy"
        )
    progress(
        f"peers: {', '.join(p.label for p in peers)}; {args.repeats} round(s) of "
        f"{args.connections} connections x {args.inflight} in flight, streams "
        f"{args.streams} for {args.stream_seconds} s, {args.idle_clients} idle clients"
    )


class Report:
    """The run's results as markdown and JSON (bench/results/) and on the terminal."""

    def __init__(
        self,
        args: argparse.Namespace,
        res: Results,
        peers: list[Peer],
        *,
        machine: dict[str, object],
        interp: dict[str, object],
        argv: list[str] | None,
    ) -> None:
        self.args, self.res, self.peers = args, res, peers
        self.machine, self.interp = machine, interp
        words = [Path(sys.executable).name, "bench/run.py", *(argv or sys.argv[1:])]
        self.command = " ".join(words)
        self.targets = evaluate_targets(args, res)
        self.table = render_table(args, res, peers)
        self.target_table = render_targets(self.targets)
        cpu_names = [
            (m, label)
            for m, label in cpu_metric_names(args)
            if any(res.median(p.key, m) is not None for p in peers)
        ]
        cpu_table = render_table(args, res, peers, cpu_names) if cpu_names else ""
        self.cpu_block = (
            "Server CPU per unit of work (the server and all its children, from a cgroup; lower "
            "is better; steadier than rates when the machine is busy):\n\n" + cpu_table + "\n\n"
            if cpu_table
            else ""
        )
        self.load_line = load_lines(args, res)

    def markdown(self) -> str:
        a, m, i = self.args, self.machine, self.interp
        quick = " (QUICK: sizes too small to mean anything)" if a.quick else ""
        dirty = " with uncommitted changes in app/" if m["app_uncommitted_changes"] else ""
        md = (
            f"# echolab benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"Command: `{self.command}`{quick}\n\n"
            f"Machine: {m['cpus']} CPUs ({m['cpu']}), Linux {m['kernel']}, "
            f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}. "
            f"Interpreter for every Python server: Python {i['version']} in "
            f"{i['prefix']} (fork+exit+wait {i['fork_ms_bare']} ms). "
            f"Subject at commit {m['git_commit']}{dirty}.\n\n"
            f"Medians of {a.repeats} round(s); rate = {a.connections} connections of 64 B "
            f"(connect, echo, close) by the C epoll client; streams = {a.stream_seconds} s "
            f"after {a.stream_warmup} s warm-up, echoed MiB/s; PSS = median child PSS with "
            f"{a.idle_clients} idle clients held (one process: PSS growth / clients).\n\n"
            f"{self.table}\n\n{self.target_table}\n\n{self.load_line}{self.cpu_block}"
            f"Every run (in round order):\n\n{render_spread(a, self.res, self.peers)}\n"
        )
        if self.res.errors:
            md += "\nErrors:\n\n" + "\n".join(f"- {e}" for e in self.res.errors) + "\n"
        return md

    def payload(self) -> dict[str, object]:
        a, res, peers = self.args, self.res, self.peers
        metrics = metric_names(a) + cpu_metric_names(a)
        return {
            "command": self.command,
            "quick": a.quick,
            "settings": {k: v for k, v in vars(a).items() if k != "quick"},
            "machine": self.machine,
            "interpreter": self.interp,
            "peers": {p.key: {"label": p.label, "argv": p.argv, "forks": p.forks} for p in peers},
            "medians": {p.key: {m: res.median(p.key, m) for m, _ in metrics} for p in peers},
            "runs": res.runs,
            "details": res.details,
            "load_compare": res.load_compare,
            "targets": self.targets,
            "errors": res.errors,
        }

    def write(self, out: Path, stamp: str) -> None:
        """bench/results/STAMP.{json,md} and latest.{json,md}."""
        out.mkdir(parents=True, exist_ok=True)
        md, data = self.markdown(), json.dumps(self.payload(), indent=2) + "\n"
        for name in (stamp, "latest"):
            (out / f"{name}.json").write_text(data)
            (out / f"{name}.md").write_text(md)

    def print(self, out: Path, stamp: str, logdir: Path) -> None:
        print()
        print(self.table)
        if self.cpu_block:
            print()
            print(self.cpu_block.strip())
        print()
        print(self.target_table)
        if self.load_line:
            print()
            print(self.load_line.strip())
        print(
            f"\nwritten: {out / (stamp + '.json')}, {out / (stamp + '.md')} (and latest.*); "
            f"server logs in {logdir}"
        )


def load_lines(args: argparse.Namespace, res: Results) -> str:
    """The load generators' comparison and the open loop's schedule, as text ('' when not run)."""
    text = ""
    if res.load_compare.get("c_client") and res.load_compare.get("echolab_load"):
        c = statistics.median(res.load_compare["c_client"])
        e = statistics.median(res.load_compare["echolab_load"])
        text = (
            f"Load generators on the C server ({args.connections} connections, "
            f"{args.load_clients} in flight, 64 B): C client {c:,.0f} conn/s, "
            f"`echolab load --mode rate` {e:,.0f} conn/s ({e / c:.2f}x).\n\n"
        )
    if res.load_compare.get("open_loop_kept"):
        kept, lags = res.load_compare["open_loop_kept"], res.load_compare["open_loop_lag_p99_ms"]
        text += (
            f"Open loop (`echolab load --rate`, {args.open_seconds:g} s at "
            f"{TARGET_OPEN_LOOP:.0%} of each round's closed-loop rate): schedule kept in "
            f"{sum(kept):.0f} of {len(kept)} rounds; its own lag p99 "
            f"{' / '.join(f'{v:.1f}' for v in lags)} ms.\n\n"
        )
    return text


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
