"""Property-based runs of every subcommand: random flags and ECHOLAB_* values, valid or not.

Whatever the input, a run ends with a documented exit code, a short stderr (one line for a
usage or start-up error), no traceback, and nothing left behind: each run is a subprocess in
a session of its own whose group must be empty afterwards, and this process is made a child
subreaper meanwhile, so anything the run orphaned (in any session) comes back to us and
counts as left behind. Valid values are drawn small (tiny durations, a few clients, servers
stopped once ready), so the whole module runs in about a minute; FUZZ_SCALE=N runs N times
as many examples.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echolab import cli
from echolab.proctree import ProcessGroup, children_of, kill_tree
from echolab.ready import READY_PREFIX
from tests.support import ROOT, running_server

PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
# README's exit-code table, per subcommand.
DOCUMENTED = {
    "serve": {0, 2, 4, 5, 6},
    "probe": {0, 1, 2},
    "load": {0, 1, 2, 5},
    "restart-check": {0, 1, 2, 3, 5},
    "sockets": {0, 2, 5},
}
ONE_LINE = {2, 4, 5, 6}  # errors: exactly one line on stderr (3 and 1 are verdicts too)
RUN_LIMIT = 60.0  # s: a run still going by then has hung


def fuzz_settings(examples: int) -> settings:
    """Bounded for `make test`; FUZZ_SCALE=10 in the environment runs ten times as many."""
    return settings(
        max_examples=examples * int(os.environ.get("FUZZ_SCALE", "1")),
        deadline=timedelta(seconds=RUN_LIMIT + 30),  # a hang, not a slow machine
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# --- the world the runs happen in ----------------------------------------------------------


@dataclass
class World:
    port: int  # an echo server of our own, for probe, load and managed restart-check
    closed_port: int  # bound, never listening: connections are refused
    tmp: Path
    ours: set[int] = field(default_factory=set)  # children of this process before the runs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        with running_server("--grace", "0", "--host", "::") as srv, socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            w = World(srv.port, closed.getsockname()[1], tmp_path_factory.mktemp("fuzz"))
            w.ours = set(children_of(os.getpid()))
            yield w
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# --- values: each option's valid values (kept small) and invalid ones ----------------------

Values = tuple[st.SearchStrategy[str], st.SearchStrategy[str]]  # (valid, invalid)

text = st.text(st.characters(blacklist_characters="\x00"), max_size=12)  # argv holds no NUL
junk = st.sampled_from(["", " ", "-", "0x10", "١٢", "NaN", "inf", "-inf", "1e400", "+"]) | text


def ints(low: int, high: int, limit: int) -> Values:
    """Integers from low to high (valid, kept small), or outside low..limit, the option's real
    bounds (a huge valid count would make a long run), or junk."""
    huge = st.integers(limit + 1, limit + 2**70) | st.integers(max_value=low - 1)
    return st.integers(low, high).map(str), huge.map(str) | junk


def seconds(low: float, high: float) -> Values:
    """Short durations, or durations no wait can take, or junk."""
    valid = st.floats(low, high).map(lambda s: f"{s:.3f}") | st.sampled_from(["50ms", "0.1s"])
    invalid = st.sampled_from(["-1", "nan", "1e19", "2147484", "25d", "1e-9", "10x", "0.0001"])
    return valid, invalid | junk


def choice(*names: str) -> Values:
    cased = st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()]))
    return cased, junk.filter(lambda t: t.strip().lower() not in names)


SWITCH: Values = (st.sampled_from(["1", "true", "no", "off", "", "TRUE"]), st.just("maybe"))
good_hosts = st.sampled_from(["127.0.0.1", "::1", "localhost"])
bad_hosts = st.sampled_from(
    ["x" * 64 + ".example", "a..b", "x" * 254, "-" * 300, "\udcff", "[::1]", "ä" * 70]
) | text.map(lambda t: t + "..x")
HOSTS: Values = (good_hosts, bad_hosts)


def join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def targets(world: World) -> Values:
    ports = st.sampled_from([*[world.port] * 4, world.closed_port]).map(str)
    valid = st.builds(join, good_hosts, ports)
    invalid = st.builds(join, bad_hosts, ports) | st.builds(join, good_hosts, ints(1, 1, 65535)[1])
    return valid, invalid | junk


def json_paths(world: World) -> Values:
    valid = st.sampled_from([str(world.tmp / "out.json"), "-"])
    return valid, st.sampled_from([str(world.tmp / "no" / "x.json"), str(world.tmp), ""])


@st.composite
def options(draw: st.DrawFn, table: dict[str, Values]) -> dict[str, str]:
    """Some of `table`'s options, each as a flag or as its variable; in two runs of three
    every value is valid, in the third each one is invalid one time in three."""
    broken = draw(st.integers(0, 2)) == 0
    chosen: dict[str, str] = {}
    for flag, (valid, invalid) in table.items():
        how = draw(st.sampled_from(["absent", "flag", "env"]))
        if how != "absent":
            bad = broken and draw(st.integers(0, 2)) == 0
            chosen[f"{how}:{flag}"] = draw(invalid if bad else valid)
    return chosen


SWITCHES = {"--no-reuseaddr", "--quiet", "--no-progress"}
VARIABLES = {"--json": "ECHOLAB_JSON_FILE"}  # named after the option's dest, json_file


def command_line(command: str, chosen: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    argv, env = [command], {}
    for key, value in chosen.items():
        how, flag = key.split(":", 1)
        if how == "env":
            name = "ECHOLAB_" + flag.lstrip("-").upper().replace("-", "_")
            env[VARIABLES.get(flag, name)] = value
        elif flag not in SWITCHES:
            argv.append(f"{flag}={value}")
        elif value.lower() in ("1", "true"):
            argv.append(flag)
    return argv, env


# --- one run -------------------------------------------------------------------------------


def run(world: World, argv: list[str], env: dict[str, str], serves: bool = False) -> None:
    """Run `echolab ARGV` with `env`; check how it ended and that nothing was left behind."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECHOLAB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "echolab", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**base, **env},
        cwd=ROOT,
        start_new_session=True,
    )
    group = ProcessGroup.of(proc)  # before any wait: its ID may be reused once it is empty
    try:
        early = wait_ready_then_stop(proc) if serves else b""
        out, err = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        proc.communicate()
        pytest.fail(f"hung: echolab {argv} with {env}")
    finally:
        leftovers = settle_leftovers(world, group)
    stderr = (early + err).decode(errors="replace")
    what = f"echolab {argv} with {env}: exit {proc.returncode}\n{stderr}"
    assert proc.returncode in DOCUMENTED[argv[0]], what
    assert "Traceback" not in stderr, what
    lines = [x for x in stderr.splitlines() if x.strip()]
    if proc.returncode in ONE_LINE:
        assert len(lines) == 1, what
    assert len(lines) <= 40 and len(stderr) < 8000, what
    assert not leftovers, f"left behind: {leftovers}; {what}"
    del out


def wait_ready_then_stop(proc: subprocess.Popen[bytes]) -> bytes:
    """A server: wait until it listens (or exits), then SIGTERM; returns what it logged."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + RUN_LIMIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                return seen  # it exited (an error, or it never listened)
            seen += chunk
            if READY_PREFIX.encode() in seen:
                proc.send_signal(signal.SIGTERM)
                return seen
    return seen


def settle_leftovers(world: World, group: ProcessGroup) -> list[int]:
    """Processes the run left: its group's, and orphans re-parented to us (then ended)."""
    leftovers = group.members()
    for child in children_of(os.getpid(), zombies=True):
        if child in world.ours or child == group.pgid:
            continue
        if child in children_of(os.getpid(), zombies=False):
            leftovers.append(child)
            kill_tree(child)
        try:
            os.waitpid(child, 0)  # an orphan of the run: ours to reap
        except ChildProcessError:
            pass
    for straggler in leftovers:
        kill_tree(straggler)
    return sorted(set(leftovers))


# --- the properties, one per subcommand ----------------------------------------------------

SERVE: dict[str, Values] = {
    "--host": (good_hosts | st.just(""), bad_hosts),
    "--port": (st.just("0"), st.sampled_from(["65536", "-1", "99999999999", "http"]) | junk),
    "--backlog": ints(1, 256, cli.MAX_BACKLOG),
    "--no-reuseaddr": SWITCH,
    "--max-children": ints(1, 64, cli.MAX_CHILDREN),
    "--idle-timeout": seconds(0, 5),
    "--grace": seconds(0, 5),
    "--log-level": choice("debug", "info", "warning", "error"),
    "--log-format": choice("text", "json"),
}


@given(chosen=options(SERVE))
@fuzz_settings(30)
def test_serve_ends_well_whatever_its_input(world: World, chosen: dict[str, str]) -> None:
    argv, env = command_line("serve", chosen)
    if not any(k.endswith(":--port") for k in chosen):
        argv += ["--port", "0"]  # never the default 7007, which someone else may be using
    if not any(k.endswith(":--host") for k in chosen):
        argv += ["--host", "127.0.0.1"]
    run(world, argv, env, serves=True)


@given(data=st.data())
@fuzz_settings(30)
def test_probe_ends_well_whatever_its_input(world: World, data: st.DataObject) -> None:
    chosen = data.draw(
        options(
            {
                "--target": targets(world),
                "--timeout": seconds(0.001, 2),
                "--payload": ints(1, 100_000, cli.MAX_PAYLOAD),
                "--quiet": SWITCH,
            }
        )
    )
    argv, env = command_line("probe", chosen)
    if not any(k.endswith(":--target") for k in chosen):
        argv += ["--target", f"127.0.0.1:{world.closed_port}"]
    run(world, argv, env)


@given(data=st.data())
@fuzz_settings(30)
def test_load_ends_well_whatever_its_input(world: World, data: st.DataObject) -> None:
    chosen = data.draw(
        options(
            {
                "--target": targets(world),
                "--mode": choice("rate", "stream", "hold"),
                "--clients": ints(1, 4, cli.MAX_CLIENTS),
                "--connections": ints(1, 50, cli.MAX_CONNECTIONS),
                "--duration": seconds(0.01, 0.2),
                "--payload": ints(1, 65536, cli.MAX_PAYLOAD),
                "--workers": (
                    st.sampled_from(["1", "2", "auto", "AUTO"]),
                    ints(1, 1, cli.MAX_WORKERS)[1],
                ),
                "--json": json_paths(world),
                "--no-progress": SWITCH,
                "--seed": (st.integers(0, 2**64 - 1).map(str), st.just("-1") | junk),
                "--max-error-rate": (st.floats(0, 1).map(str), st.just("1.5") | junk),
                "--timeout": seconds(0.05, 2),
            }
        )
    )
    argv, env = command_line("load", chosen)
    if not any(k.endswith((":--connections", ":--duration")) for k in chosen):
        argv += ["--duration", "0.1"]  # the default, 10 s, is not short
    if not any(k.endswith(":--target") for k in chosen):
        argv += ["--target", f"127.0.0.1:{world.port}"]
    run(world, argv, env)


@given(data=st.data())
@fuzz_settings(10)
def test_restart_check_ends_well_whatever_its_input(world: World, data: st.DataObject) -> None:
    table = {
        "--host": HOSTS,
        "--port": (st.just("0"), st.sampled_from(["65536", "-1", "x"])),
        "--clients": ints(1, 3, cli.MAX_CLIENTS),
        "--no-reuseaddr": SWITCH,
        "--close-first": choice("server", "client"),
        "--timeout": seconds(1, 3),
        "--json": json_paths(world),
    }
    if data.draw(st.booleans()):  # managed mode: a restart command and its target, together
        table["--restart-cmd"] = (st.sampled_from(["true", "false", "sleep 0.1"]), st.just(""))
        table["--target"] = targets(world)
        table["--log-cmd"] = (st.sampled_from(["true", "cat /dev/null"]), st.just(" "))
        table["--strategy"] = choice("stop-start", "reload")
    chosen = data.draw(options(table))
    argv, env = command_line("restart-check", chosen)
    if not any(k.endswith(":--port") for k in chosen):
        argv += ["--port", "0"]
    run(world, argv, env)


@given(data=st.data())
@fuzz_settings(20)
def test_sockets_ends_well_whatever_its_input(world: World, data: st.DataObject) -> None:
    chosen = data.draw(options({"--port": ints(1, 65535, 65535), "--json": json_paths(world)}))
    argv, env = command_line("sockets", chosen)
    if not any(k.endswith(":--port") for k in chosen):
        argv += ["--port", str(world.port)]
    run(world, argv, env)
