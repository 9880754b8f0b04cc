"""The container lab end to end, through make: build, up, load, restart check, hardening, down.

Every test runs once per Compose implementation (tests/lab/composes.py: a modern one and
v1.29), each in a Compose project of its own (`echolabtest`, `echolabtestv1`, on a free host
port) so that a lab a person has running is left alone. What a test observes is recorded per
implementation; when the second one observes something else than the first, the test fails
with both side by side. Needs a Docker engine: without one it skips, and under CI=true it
fails. Under CI=true the server and loadgen images are removed first, so that make builds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.composes import Compose, discover, side_by_side
from tests.support import ROOT, require

pytestmark = [pytest.mark.lab, pytest.mark.slow]

COMPOSES = discover()
DOCKER = os.environ.get("DOCKER", "docker")
# What each test observed, per implementation: {what: {Compose label: observation}}.
OBSERVED: dict[str, dict[str, Any]] = {}
IMAGES_REMOVED: list[bool] = []  # under CI=true, once per run
MAX_CHILDREN = 512  # compose.yaml's default --max-children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


def wheel_files(wheelhouse: Path, tag: str) -> dict[str, bytes]:
    """The package's .py files in the echolab wheel of the wheelhouse, by path."""
    with zipfile.ZipFile(wheelhouse / f"echolab-{tag}-py3-none-any.whl") as whl:
        return {
            n: whl.read(n) for n in whl.namelist() if n.startswith("echolab/") and n.endswith(".py")
        }


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc


def engine_reachable() -> bool:
    if shutil.which(DOCKER) is None:
        return False
    return docker("info", check=False, timeout=30).returncode == 0


def same_under_every_compose(lab: Lab, what: str, observed: Any) -> None:
    """Record what this implementation produced; fail when another one produced otherwise."""
    seen = OBSERVED.setdefault(what, {})
    seen[lab.compose.label] = observed
    for other, theirs in seen.items():
        if other != lab.compose.label and theirs != observed:
            pytest.fail(
                f"{what}: {other} and {lab.compose.label} differ\n"
                + side_by_side(other, theirs, lab.compose.label, observed)
            )


class Lab:
    """Runs the lab's make targets for one Compose's test project and inspects what they made."""

    def __init__(self, compose: Compose, host_port: int) -> None:
        self.compose = compose
        self.project = compose.project
        self.host_port = host_port
        self.vars = [
            f"COMPOSE={compose.command}",
            f"COMPOSE_PROJECT_NAME={self.project}",
            f"ECHOLAB_HOST_PORT={host_port}",
        ]

    def make(
        self, target: str, *extra: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", target, *self.vars, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )

    def containers(self, service: str | None = None, all_states: bool = True) -> list[str]:
        args = ["ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            args.append("-a")
        return docker(*args).stdout.split()

    def inspect(self, ref: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", ref).stdout)
        return data[0]

    def server(self) -> str:
        ids = self.containers("server", all_states=False)
        assert len(ids) == 1, f"expected one running server container, found {ids}"
        return ids[0]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert a make run succeeded; return its output."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-4000:]}"
    return out


def remove_lab_images_once() -> None:
    """Under CI=true, start from an engine without the project's images: make must build them.
    Once per run: the second implementation uses what the first one's make built."""
    if os.environ.get("CI", "").lower() != "true" or IMAGES_REMOVED:
        return
    IMAGES_REMOVED.append(True)
    images = docker(
        "image", "ls", "-q",
        "--filter", "reference=echolab/server", "--filter", "reference=echolab/loadgen",
    ).stdout.split()  # fmt: skip
    if images:
        docker("image", "rm", "--force", *sorted(set(images)))


@pytest.fixture(scope="module", params=COMPOSES, ids=[c.test_id for c in COMPOSES])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    compose: Compose = request.param
    require(shutil.which(DOCKER) is not None, f"'{DOCKER}' is not installed")
    require(engine_reachable(), "the Docker engine is unreachable")
    require(
        bool(compose.command),
        f"no {compose.kind} Compose among ECHOLAB_TEST_COMPOSE's candidates "
        f"({os.environ.get('ECHOLAB_TEST_COMPOSE', 'unset')}): the lab tests run under both",
    )
    the_lab = Lab(compose, free_port())
    the_lab.make("lab-down")  # leftovers of an interrupted run
    remove_lab_images_once()
    try:
        yield the_lab
    finally:
        the_lab.make("lab-down")


@pytest.fixture(scope="module")
def up(lab: Lab) -> Lab:
    out = ok(lab.make("lab-up"))
    # The run says which Compose it used, by version.
    assert f"lab: Compose {lab.compose.version} " in out, out[-3000:]
    assert "the server is healthy" in out
    assert "make lab-load" in out  # what to try next
    return lab


def test_without_an_engine_every_lab_target_says_so_and_fails() -> None:
    for target in ("lab-up", "images", "lab-down", "base-image"):
        proc = subprocess.run(
            ["make", "--no-print-directory", target, "DOCKER=/nonexistent/docker"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode != 0, target
        assert "'/nonexistent/docker' not found" in proc.stderr, proc.stderr
    require(shutil.which(DOCKER) is not None, f"'{DOCKER}' is not installed")
    proc = subprocess.run(
        ["make", "--no-print-directory", "lab-up"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "the Docker engine is unreachable" in proc.stderr, proc.stderr


def test_images_hold_the_current_sources_and_run_as_non_root(up: Lab) -> None:
    tag = version()
    server = up.inspect(f"echolab/server:{tag}")
    assert server["Config"]["User"] == "10001:10001"
    assert server["Config"]["Entrypoint"] == ["echolab", "serve"]
    assert server["Config"]["StopSignal"] == "SIGTERM"
    assert "echolab probe" in " ".join(server["Config"]["Healthcheck"]["Test"])
    assert up.inspect(f"echolab/loadgen:{tag}")["Config"]["Entrypoint"] == ["echolab", "load"]
    # The installed package is byte for byte the wheel this make run built, and (in CI, where
    # nobody edits the tree meanwhile) that wheel holds the working tree's sources.
    wheel = {
        name.removeprefix("echolab/"): hashlib.sha256(data).hexdigest()
        for name, data in wheel_files(ROOT / "out" / "wheelhouse", tag).items()
    }
    script = (
        "import hashlib, json, pathlib, echolab; d = pathlib.Path(echolab.__file__).parent; "
        "print(json.dumps({str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in d.rglob('*.py')}))"
    )
    for image in ("server", "loadgen"):
        out = docker(
            "run", "--rm", "--entrypoint", "python3", f"echolab/{image}:{tag}", "-c", script
        ).stdout
        assert json.loads(out) == wheel, f"echolab/{image} does not hold the wheel make built"
    if os.environ.get("CI", "").lower() == "true":
        package = ROOT / "app" / "echolab"
        local = {
            str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in package.rglob("*.py")
        }
        assert wheel == local, "the wheel was not built from the working tree"
    out = docker(
        "run", "--rm", "--entrypoint", "python3", f"echolab/loadgen:{tag}", "-c",
        "import rich, sys; print(sys.version_info >= (3, 11))",
    ).stdout  # fmt: skip
    assert out.strip() == "True"


def test_server_is_healthy_and_published_on_loopback_only(up: Lab) -> None:
    server = up.inspect(up.server())
    assert server["State"]["Health"]["Status"] == "healthy"
    netns_id = server["HostConfig"]["NetworkMode"].removeprefix("container:")
    netns = up.inspect(netns_id)
    assert netns["Config"]["Labels"]["com.docker.compose.service"] == "netns"
    bindings = netns["HostConfig"]["PortBindings"]["7007/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(up.host_port)}]
    # An echo round trip from the host, through the published port.
    with socket.create_connection(("127.0.0.1", up.host_port), timeout=5) as sock:
        payload = os.urandom(4096)
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "the server closed before echoing everything"
            got += chunk
        assert got == payload
    same_under_every_compose(
        up,
        "health and published port",
        {"health": "healthy", "bindings": [{**b, "HostPort": "HOST_PORT"} for b in bindings]},
    )


def service_config(lab: Lab, cid: str) -> dict[str, Any]:
    """What compose.yaml and the image set on a container, as `docker inspect` reads it back:
    the fields both Compose implementations must agree on. (Names, ids and Compose's own
    labels differ by design: v1 writes `project_service_1`, v2+ `project-service-1`.)"""
    info = lab.inspect(cid)
    config, host = info["Config"], info["HostConfig"]
    network = host["NetworkMode"]
    if network.startswith("container:"):
        holder = lab.inspect(network.removeprefix("container:"))
        network = "container:" + holder["Config"]["Labels"]["com.docker.compose.service"]
    elif network.startswith(lab.project):
        network = network.replace(lab.project, "PROJECT", 1)
    return {
        "service": config["Labels"]["com.docker.compose.service"],
        "image": config["Image"],
        "user": config["User"],
        "entrypoint": config["Entrypoint"],
        "cmd": config["Cmd"],
        "env": sorted(e for e in config["Env"] if e.startswith("ECHOLAB_")),
        "healthcheck": config.get("Healthcheck"),
        "stop_signal": config.get("StopSignal"),
        "stop_timeout": config.get("StopTimeout"),
        "cap_drop": host["CapDrop"],
        "cap_add": host.get("CapAdd"),
        "read_only": host["ReadonlyRootfs"],
        "security_opt": host.get("SecurityOpt"),
        "pids_limit": host["PidsLimit"],
        "memory": host["Memory"],
        "init": host.get("Init"),
        "tmpfs": host.get("Tmpfs"),
        "network_mode": network,
        "ports": {
            port: [{**b, "HostPort": "HOST_PORT"} for b in bindings or []]
            for port, bindings in (host["PortBindings"] or {}).items()
        },
    }


def test_hardening_as_docker_inspect_and_the_kernel_see_it(up: Lab) -> None:
    cid = up.server()
    host = up.inspect(cid)["HostConfig"]
    assert up.inspect(cid)["Config"]["User"] == "10001:10001"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["PidsLimit"] > MAX_CHILDREN
    assert host["Memory"] > 0
    assert host["Init"] in (None, False)  # the server is PID 1 and reaps its children itself
    status = docker("exec", cid, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"]
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    # PID 1 is the server itself (no init in between): it alone holds the listening socket.
    report = json.loads(
        docker("exec", cid, "echolab", "sockets", "--port", "7007", "--json", "-").stdout
    )
    listeners = [x for x in report["sockets"] if x["state"] == "LISTEN"]
    assert [x["pids"] for x in listeners] == [[1]], listeners
    write = docker("exec", cid, "touch", "/opt/echolab/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    # The namespace holder, which owns the published port, is locked down the same way.
    (netns,) = up.containers("netns", all_states=False)
    held = up.inspect(netns)
    assert held["Config"]["User"] == "10001:10001"
    assert held["HostConfig"]["CapDrop"] == ["ALL"] and held["HostConfig"]["ReadonlyRootfs"]
    assert "no-new-privileges:true" in held["HostConfig"]["SecurityOpt"]
    same_under_every_compose(
        up,
        "the running services' configuration (docker inspect)",
        {"netns": service_config(up, netns), "server": service_config(up, cid)},
    )


def test_load_from_two_loadgen_containers_verifies_every_byte(up: Lab) -> None:
    out = ok(
        up.make(
            "lab-load",
            "LOAD_SCALE=2",
            "ECHOLAB_LOAD_DURATION=3s",
            "ECHOLAB_LOAD_CLIENTS=32",
            timeout=300,
        )
    )
    verdicts = [line for line in out.splitlines() if line.startswith("lab-load: ")]
    assert len(verdicts) == 2 and all(v.endswith("exited 0") for v in verdicts), out[-3000:]
    summaries = [line for line in out.splitlines() if "connections ok" in line]
    assert len(summaries) == 2, out[-3000:]
    for line in summaries:
        assert int(line.split("connections ok")[1].split()[0].replace(",", "")) > 0
    errors = [line for line in out.splitlines() if re.search(r"\|\s+errors\s", line)]
    assert len(errors) == 2 and all(re.search(r"errors\s+0 \(none\)", e) for e in errors), errors
    # PID 1 reaped every child: no zombie is left in the server's container.
    ps = docker("exec", up.server(), "ps", "-eo", "pid=,stat=,comm=").stdout
    zombies = [line for line in ps.splitlines() if line.split()[1].startswith("Z")]
    assert not zombies, ps
    loadgens = up.containers("loadgen")
    same_under_every_compose(
        up,
        "lab-load LOAD_SCALE=2",
        {
            "verdicts": sorted(v.rsplit(" ", 1)[-1] for v in verdicts),
            "summaries": len(summaries),
            "errors": [re.sub(r".*errors\s+", "", e).strip(" |") for e in errors],
            "zombies": zombies,
            "loadgen configuration": [service_config(up, c) for c in loadgens[:1]],
        },
    )


def test_a_rate_profile_runs_the_open_loop_and_its_latency_limit_can_fail_the_run(up: Lab) -> None:
    profile = ("ECHOLAB_LOAD_RATE=100", "ECHOLAB_LOAD_DURATION=2s", "ECHOLAB_LOAD_CLIENTS=8")
    out = ok(up.make("lab-load", *profile, timeout=300))
    assert "open loop: 100 connections/s on a fixed schedule" in out, out[-3000:]
    assert re.search(r"schedule\s+200 of 200 started", out), out[-3000:]
    # The same profile under a p99.9 limit of 1 ms, the lowest it takes: the slowest of 200
    # fork-per-connection round trips exceeds it, the loadgen fails the run and lab-load
    # reports its container's exit status.
    failed = up.make("lab-load", *profile, "ECHOLAB_LOAD_MAX_P999=1", timeout=300)
    tail = failed.stdout[-3000:]
    assert failed.returncode != 0, tail
    assert re.search(r"lab-load: \S+ exited 1$", failed.stdout, re.MULTILINE), tail
    assert re.search(r"max p99\.9\s+\S+ ms against 1 ms: EXCEEDED", failed.stdout), tail
    same_under_every_compose(
        up,
        "lab-load with a rate profile",
        {"passed": "result          PASS" in out, "limited": failed.returncode},
    )


def test_a_connection_flood_ends_at_the_pids_limit_and_the_server_survives(up: Lab) -> None:
    # The same mechanism as compose.yaml's pids_limit of 600 with 512 children, made small.
    cid = up.server()
    docker("update", "--pids-limit", "16", cid)
    socks: list[socket.socket] = []
    try:
        for _ in range(40):
            socks.append(socket.create_connection(("127.0.0.1", up.host_port), timeout=5))
        echoed = 0
        for sock in socks:
            sock.settimeout(2)
            try:
                sock.sendall(b"x")
                echoed += sock.recv(1) == b"x"
            except OSError:
                pass
        assert 1 <= echoed < 40, f"{echoed} of 40 echoed under a pids limit of 16"
    finally:
        for sock in socks:
            sock.close()
        docker("update", "--pids-limit", "600", cid)
    assert re.search(r"fork\(\) failed", docker("logs", "--since", "2m", cid).stderr)
    assert up.inspect(cid)["State"]["Running"] is True
    probe = docker("exec", cid, "echolab", "probe", "--target", "127.0.0.1:7007", check=False)
    assert probe.returncode == 0, probe.stderr
    # Its health check forks in the container too: during the flood it failed, and the engine may
    # call the server unhealthy. The server survived; wait until the engine sees it healthy again
    # (the next tests start from a healthy lab).
    deadline = time.monotonic() + 120
    while up.inspect(cid)["State"]["Health"]["Status"] != "healthy":
        assert time.monotonic() < deadline, "the server never became healthy again after the flood"
        time.sleep(1)
    same_under_every_compose(
        up,
        "a connection flood at a pids limit of 16",
        {"some echoed, not all": 1 <= echoed < 40, "server running": True, "probe": 0},
    )


def restart_facts(result: dict[str, Any]) -> dict[str, Any]:
    """What both Compose implementations must report alike about one restart-check run (no
    times, no inode numbers)."""
    return {
        "verdict": result["verdict"],
        "links": {name: link["ok"] for name, link in result["links"].items()},
        "strategy": result["strategy"],
        "reuseaddr": result["reuseaddr"],
        "mode": result["mode"],
        "rebind": result["rebind"],
        "restart_cmd_status": result["restart_cmd_status"],
        "clients": result["clients"],
        "closed_by_server": result["closed_by_server"],
        "time_wait_at_the_bind": (result["time_wait_at_restart"] or 0) >= 1,
        "lab": result["lab"] | {"netns_holder": "HOLDER"},
    }


def test_restart_check_rebinds_while_time_wait_lingers(up: Lab, tmp_path: Path) -> None:
    """restart-check itself, inside the lab's namespace, judges the restart and its control."""
    result_file = tmp_path / "restart.json"
    out = ok(up.make("lab-restart-check", f"LAB_JSON={result_file}", timeout=400))
    result = json.loads(result_file.read_text())
    control = json.loads((tmp_path / "restart-control.json").read_text())
    for run in (result, control):
        # The engine's result: managed mode (the server is the lab's), every link proven.
        assert run["schema"] == "echolab.restart-check/2" and run["mode"] == "managed"
        assert run["strategy"] == "stop-start" and run["sockets_visible"] is True
        assert run["verdict"] == "pass", (run["reason"], out[-4000:])
        assert list(run["links"]) == ["restart", "time_wait", "outcome"]
        assert all(link["ok"] for link in run["links"].values()), run["links"]
        # TIME_WAIT from this run's own sessions (the clients it held, each closed by the
        # stopped server) on the server's port just before and just after the bind.
        assert run["closed_by_server"] == run["clients"] == 8 and run["reset_by_server"] == 0
        assert run["time_wait_at_restart"] >= 1
        assert run["time_wait_before_bind"] >= 1 and run["time_wait_after_bind"] >= 1
        assert run["client_side_time_wait"] == 0
        assert all(0 < left <= 60 for left in run["time_wait_left_s"])
        assert run["listeners_before"], "no listener was seen when the restart began"
        # Docker's side: the same holder keeps the namespace, the server joins it, and the
        # lab is healthy again after the run.
        lab_facts = run["lab"]
        assert lab_facts["restart_requested"] is True
        assert lab_facts["netns_kept"] is True
        assert lab_facts["network_mode"] == "container:netns"
        assert lab_facts["server_container_kept"] is True and lab_facts["healthy_after"] is True
    # With SO_REUSEADDR: a new listener took the port and echoed.
    assert result["reuseaddr"] is True and result["rebind"] == "ok" and result["echoed_after"]
    assert result["restart_cmd_status"] == 0
    assert not set(result["listeners_before"]) & set(result["listeners_after"])
    assert result["listeners_after"], "no listener after the restart"
    # The control: a server without SO_REUSEADDR in its place exits 6 (EADDRINUSE).
    assert control["reuseaddr"] is False and control["rebind"] == "EADDRINUSE"
    assert control["restart_cmd_status"] == 6 and not control["echoed_after"]
    assert "already in use" in control["restart_output"]
    assert len(re.findall(r"verdict\s+PASS", out)) == 2, out[-4000:]
    assert len(re.findall(r"network namespace kept: held by", out)) == 2, out[-4000:]
    # The lab is left running and healthy.
    assert up.inspect(up.server())["State"]["Health"]["Status"] == "healthy"
    same_under_every_compose(
        up,
        "lab-restart-check (restart-check's JSON results, times left out)",
        {"restart": restart_facts(result), "control": restart_facts(control)},
    )


def test_compare_runs_every_strategy_inside_the_lab(up: Lab, tmp_path: Path) -> None:
    result_file = tmp_path / "compare.json"
    proc = up.make("lab-compare", f"LAB_JSON={result_file}", timeout=400)
    out = proc.stdout + proc.stderr
    data = json.loads(result_file.read_text())
    runs = {label(r): r for r in data["compare"]}
    # Not root in the lab: no namespaces of its own, so reuseport runs once, with the lab
    # namespace's own tcp_migrate_req; no systemd-socket-activate in the image.
    assert list(runs) == [
        "stop-start", "stop-start, no SO_REUSEADDR",
        f"reuseport, tcp_migrate_req={runs_migrate(data)}", "reload",
    ], out[-3000:]  # fmt: skip
    assert {s["strategy"] for s in data["skipped"]} == {
        "reuseport with tcp_migrate_req 0 and 1", "socket-activation",
    }  # fmt: skip
    for name in ("stop-start", "stop-start, no SO_REUSEADDR", "reload"):
        assert runs[name]["verdict"] == "pass", (name, runs[name]["reason"])
    assert runs["stop-start, no SO_REUSEADDR"]["rebind"] == "EADDRINUSE"
    # Reload: the same listener and process throughout, nobody refused or reset, every held
    # session still echoing after it.
    reload = runs["reload"]
    assert reload["generation_after"] == reload["generation_before"] + 1
    assert reload["probes"]["refused"] == 0 and reload["probes"]["reset"] == 0
    assert reload["sessions_survived"] == reload["clients"] == 8
    assert reload["owners_before"] == reload["owners_after"] == [reload["reload_pid"]]
    # The exit status is the worst verdict's: 0 when every run passed, else 1 (make says so).
    failed = any(r["verdict"] != "pass" for r in data["compare"])
    assert (proc.returncode != 0) == failed, out[-3000:]
    assert ("lab-compare] Error 1" in out) == failed, out[-3000:]
    assert "echolab restart-check --compare" in out
    same_under_every_compose(
        up,
        "lab-compare (strategies, and the verdicts that do not hang on a race)",
        {
            "runs": list(runs),
            "skipped": sorted(s["strategy"] for s in data["skipped"]),
            "verdicts": {
                n: runs[n]["verdict"]
                for n in ("stop-start", "stop-start, no SO_REUSEADDR", "reload")
            },
        },
    )


def label(run: dict[str, Any]) -> str:
    name = str(run["strategy"])
    if name == "stop-start" and not run["reuseaddr"]:
        name += ", no SO_REUSEADDR"
    if name == "reuseport":
        name += f", tcp_migrate_req={run['netns']['tcp_migrate_req']}"
    return name


def runs_migrate(data: dict[str, Any]) -> Any:
    return next(r["netns"]["tcp_migrate_req"] for r in data["compare"])


def test_reload_keeps_the_process_and_refuses_nobody(up: Lab, tmp_path: Path) -> None:
    """SIGHUP to the lab's server with clients held, judged by restart-check in the lab's
    network namespace and the server's PID namespace: a new generation logged by the process
    that held the listener before and after (the server, PID 1 in its container), the same
    listener, nobody refused or reset, every held session echoing; and Docker's side: the
    same container, not restarted, the same host PID."""
    server = up.server()
    host_pid = up.inspect(server)["State"]["Pid"]
    result_file = tmp_path / "reload.json"
    out = ok(up.make("lab-reload", f"LAB_JSON={result_file}", timeout=400))
    result = json.loads(result_file.read_text())
    assert result["strategy"] == "reload" and result["backend"] == "command"
    assert result["verdict"] == "pass", (result["reason"], out[-3000:])
    assert all(link["ok"] for link in result["links"].values())
    assert result["generation_after"] == result["generation_before"] + 1
    # The PID the reload line names is the listener's one holder, before and after.
    assert result["reload_pid"] == result["server_pid_before"] == result["server_pid_after"] == 1
    assert result["owners_before"] == result["owners_after"] == [1]
    assert result["listeners_before"] == result["listeners_after"]
    assert len(result["listeners_after"]) == 1
    probes = result["probes"]
    assert probes["attempts"] > 0 and probes["ok"] == probes["attempts"]
    assert probes["refused"] == 0 and probes["reset"] == 0
    assert result["sessions_survived"] == result["clients"] == 8
    assert result["details"]["log_cmd_runs"] >= 2  # before the SIGHUP and after it
    lab = result["lab"]
    assert lab["reload_requested"] is True
    assert lab["log_requests"] == result["details"]["log_cmd_runs"]
    assert lab["server_container_kept"] and lab["server_not_restarted"] and lab["netns_kept"]
    assert lab["network_mode"] == "container:netns" and lab["healthy_after"] is True
    assert lab["server_host_pid"] == str(host_pid)
    assert up.server() == server and up.inspect(server)["State"]["Pid"] == host_pid
    assert up.inspect(server)["State"]["Health"]["Status"] == "healthy"
    assert re.search(r"verdict\s+PASS", out) and "server container  kept:" in out
    same_under_every_compose(
        up,
        "lab-reload (restart-check's JSON facts, times and inodes left out)",
        {k: result[k] for k in ("verdict", "rebind", "reload_pid", "server_pid_before",
                                "server_pid_after", "sessions_survived", "clients")}
        | {"generations": result["generation_after"] - result["generation_before"],
           "same_inode": result["listeners_before"] == result["listeners_after"],
           "refused": probes["refused"], "reset": probes["reset"],
           "lab": {k: v for k, v in lab.items() if k in ("reload_requested", "netns_kept",
                   "server_container_kept", "server_not_restarted", "network_mode")}},
    )  # fmt: skip


def test_a_plain_docker_restart_would_wipe_time_wait(up: Lab) -> None:
    """The trap the netns holder avoids: a container's restart gets a new network namespace."""
    make_time_wait = (
        "import socket; srv = socket.create_server(('127.0.0.1', 7100)); "
        "cli = socket.create_connection(('127.0.0.1', 7100)); conn, _ = srv.accept(); "
        "conn.close(); cli.recv(1); cli.close()"  # the server's side closes first
    )
    name = f"{up.project}_restart_trap"
    docker("rm", "--force", name, check=False)
    docker(
        "run", "--detach", "--name", name, "--network", "none", "--entrypoint", "sleep",
        f"echolab/server:{version()}", "infinity",
    )  # fmt: skip
    try:
        docker("exec", name, "python3", "-c", make_time_wait)

        def time_wait() -> int:
            out = docker("exec", name, "echolab", "sockets", "--port", "7100", "--json", "-")
            count: int = json.loads(out.stdout)["server_side"].get("TIME_WAIT", 0)
            return count

        assert time_wait() == 1
        docker("restart", "--time", "1", name)
        # A new namespace: the socket is gone, though its 60 s are far from over. (Its nsfs
        # inode number may well be the same: a freed number is reused at once.)
        assert time_wait() == 0
    finally:
        docker("rm", "--force", name, check=False)


def test_sockets_view_runs_inside_the_lab(up: Lab) -> None:
    out = ok(up.make("lab-sockets"))
    assert "TCP sockets on port 7007" in out
    assert "LISTEN 1" in out
    # The summary lines; the table's rows carry addresses and timers that differ run to run,
    # and the TIME_WAIT count depends on how long ago the restart checks ran (60 s each).
    summary = [
        re.sub(r",? ?TIME_WAIT \d+", "", line.strip())
        for line in out.splitlines()
        if line.strip().startswith("server side")
    ]
    same_under_every_compose(up, "lab-sockets", summary)


def test_down_leaves_no_container_or_network(up: Lab) -> None:
    ok(up.make("lab-down"))
    assert up.containers() == []
    networks = docker(
        "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={up.project}"
    ).stdout.split()
    assert networks == []
    assert docker("network", "inspect", f"{up.project}_default", check=False).returncode != 0
    same_under_every_compose(
        up, "after lab-down", {"containers": up.containers(), "networks": networks}
    )
