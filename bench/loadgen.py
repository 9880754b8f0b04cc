#!/usr/bin/env python3
"""The load generator's own benchmark: `echolab load` against the C epoll client, both on the C
fork server, and whether the open-loop generator holds its schedule.

Per round, on a fresh C server (bench/c/echo_server.c):
  1. the C client (bench/c/echo_load.c): CONNECTIONS connections of 64 B, CLIENTS in flight;
  2. `echolab load --mode rate` with the same settings, closed loop: its maximum rate R;
  3. for each FRACTION f: `echolab load --rate f*R` (open loop) for SECONDS, and whether it
     kept its schedule (its own JSON verdict `schedule.kept`, with the lag figures behind it).
Rounds alternate the clients, so a busy moment of the shared machine hits both; medians are
reported. Step 3 is skipped for an echolab without `--rate`; `--baseline OTHER_ECHOLAB` adds
step 2 for another build (older code) in the same rounds: before and after, side by side.

    python3 bench/loadgen.py --echolab .venv-bench/bin/echolab --bin bench/bin

`bench/run.py` runs the 80% check once per round beside its own comparison (`make bench`).
Standard library only; the helpers come from bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import HERE, PAYLOAD, Peer, Server, clean_env, progress, run_client

OPEN_FRACTION = 0.8  # the target: the open loop holds its schedule at 80% of the closed max
OPEN_CAP = 512  # --clients for the open-loop runs: room for bursts, never the limit


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every child process waited for so far, with theirs."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def echolab_load(echolab: str, args: list[str], timeout: float) -> dict[str, object]:
    """Run `echolab load ARGS --json FILE --no-progress`; its JSON (with 'exit' added)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        proc = subprocess.run(
            [echolab, "load", *args, "--no-progress", "--json", tmp.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            check=False,
        )
        text = Path(tmp.name).read_text()
    if not text.strip():
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
        raise RuntimeError(f"echolab load exited {proc.returncode}: {msg[0]}")
    data: dict[str, object] = json.loads(text)
    data["exit"] = proc.returncode
    return data


def supports_rate(echolab: str) -> bool:
    """Whether this echolab has the open-loop option (older code does not)."""
    out = subprocess.run(
        [echolab, "load", "--help"], capture_output=True, text=True, env=clean_env(), check=False
    ).stdout
    return "--rate" in out


def open_loop_run(echolab: str, target: str, rate: float, seconds: float) -> dict[str, object]:
    """One open-loop run at `rate` conn/s; the figures that say whether it kept its schedule."""
    data = echolab_load(
        echolab,
        [
            "--target", target, "--mode", "rate", "--rate", str(max(1, round(rate))),
            "--duration", f"{seconds}s", "--clients", str(OPEN_CAP), "--payload", str(PAYLOAD),
        ],
        timeout=seconds + 120,
    )  # fmt: skip
    pressure = cpu_pressure()  # the last 10 s: the run just made
    sched = data.get("schedule")
    if not isinstance(sched, dict):
        raise RuntimeError("echolab load wrote no schedule figures for --rate")
    lag = sched["lag_ms"]
    assert isinstance(lag, dict)
    return {
        "rate": max(1, round(rate)),
        "achieved_per_s": sched["achieved_per_s"],
        "lag_p99_ms": lag["p99"],
        "lag_max_ms": lag["max"],
        "slot_waits": sched["slot_waits"],
        "kept": sched["kept"],
        "verdict": sched["verdict"],
        "latency_p99_ms": data["latency_ms"]["p99"],  # type: ignore[index]
        "errors_total": data["errors_total"],
        "exit": data["exit"],
        "cpu_pressure": pressure,
    }


def closed_rate(args: argparse.Namespace, echolab: str, target: str) -> tuple[float, float]:
    """`echolab load --mode rate` in a closed loop, as the C client runs: its conn/s, and the
    CPU microseconds per connection of its processes (steadier than rates on a busy machine)."""
    cpu = children_cpu_s()
    data = echolab_load(
        echolab,
        [
            "--target", target, "--mode", "rate", "--clients", str(args.clients),
            "--connections", str(args.connections), "--payload", str(PAYLOAD),
        ],
        timeout=600,
    )  # fmt: skip
    per_conn = (children_cpu_s() - cpu) * 1e6 / args.connections
    return float(data["conn_per_s"]), per_conn  # type: ignore[arg-type]


def one_round(args: argparse.Namespace, rnd: str, logdir: Path, out: dict[str, list]) -> None:
    """Steps 1-3 on a fresh C server."""
    server = Server(
        Peer("c-for-loadgen", "C server", [str(Path(args.bin) / "echo_server"), "0", "128"]),
        logdir,
    )
    try:
        cpu = children_cpu_s()
        c = run_client(
            [
                str(Path(args.bin) / "echo_load"), "rate", server.target,
                str(args.connections), str(args.clients), str(PAYLOAD),
            ],
            timeout=600,
        )  # fmt: skip
        c_cpu = (children_cpu_s() - cpu) * 1e6 / args.connections
        c_rate = float(c["conn_per_s"])  # type: ignore[arg-type]
        e_rate, e_cpu = closed_rate(args, args.echolab, server.target)
        out["c_client"].append(c_rate)
        out["echolab_closed"].append(e_rate)
        out["cpu_c_client"].append(c_cpu)
        out["cpu_echolab_closed"].append(e_cpu)
        progress(
            f"{rnd} C client {c_rate:,.0f} conn/s ({c_cpu:.0f} us CPU/conn), echolab load "
            f"(closed loop) {e_rate:,.0f} conn/s ({e_cpu:.0f} us CPU/conn; {e_rate / c_rate:.2f}x)"
        )
        if args.baseline:
            b_rate, b_cpu = closed_rate(args, args.baseline, server.target)
            out["baseline_closed"].append(b_rate)
            out["cpu_baseline_closed"].append(b_cpu)
            progress(
                f"{rnd} baseline echolab load {b_rate:,.0f} conn/s ({b_cpu:.0f} us CPU/conn; "
                f"{b_rate / c_rate:.2f}x)"
            )
        if not args.open:
            return
        for frac in args.fractions:
            run = open_loop_run(args.echolab, server.target, frac * e_rate, args.seconds)
            run["fraction"] = frac
            out["open"].append(run)
            progress(
                f"{rnd} open loop at {frac:.0%} of that ({run['rate']:,} conn/s): achieved "
                f"{run['achieved_per_s']:,.0f}/s, generator lag p99 {run['lag_p99_ms']} ms, "
                f"max {run['lag_max_ms']} ms: {run['verdict']}"
            )
    finally:
        server.stop()


def render(args: argparse.Namespace, out: dict[str, list]) -> str:
    c, e = out["c_client"], out["echolab_closed"]

    def cpu(key: str) -> str:
        return f"{statistics.median(out[key]):,.0f}" if out[key] else "—"

    lines = [
        f"# echolab load benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"C fork server; {args.connections} connections of {PAYLOAD} B, {args.clients} in "
        f"flight; medians of {len(c)} round(s).",
        "",
        "| client | conn/s (median) | client CPU us/conn (median) | conn/s, every round |",
        "|---|---:|---:|---|",
        f"| C epoll client | {statistics.median(c):,.0f} | {cpu('cpu_c_client')} | "
        f"{' / '.join(f'{v:,.0f}' for v in c)} |",
        f"| echolab load, closed loop | {statistics.median(e):,.0f} | "
        f"{cpu('cpu_echolab_closed')} | {' / '.join(f'{v:,.0f}' for v in e)} |",
        "",
        f"echolab load / C client: {statistics.median(e) / statistics.median(c):.2f}x",
    ]
    if out["baseline_closed"]:
        b = out["baseline_closed"]
        lines[-3:-3] = [
            f"| baseline ({args.baseline}) | {statistics.median(b):,.0f} | "
            f"{cpu('cpu_baseline_closed')} | {' / '.join(f'{v:,.0f}' for v in b)} |"
        ]
        lines.append(f"baseline / C client: {statistics.median(b) / statistics.median(c):.2f}x")
    if out["open"]:
        lines += [
            "",
            f"Open loop (`--rate`, {args.seconds} s, `--clients {OPEN_CAP}`), as a fraction of "
            "the same round's closed-loop maximum (CPU pressure: the share of the last 10 s in "
            "which a runnable task waited for a CPU, /proc/pressure/cpu; above a few percent, "
            "other jobs were competing):",
            "",
            "| fraction | rate | achieved/s | lag p99 ms | lag max ms | latency p99 ms | kept "
            "| CPU pressure |",
            "|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for r in out["open"]:
            lines.append(
                f"| {r['fraction']:.0%} | {r['rate']:,} | {r['achieved_per_s']:,.0f} | "
                f"{r['lag_p99_ms']} | {r['lag_max_ms']} | {r['latency_p99_ms']} | "
                f"{'yes' if r['kept'] else 'NO'} | {r['cpu_pressure']}% |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--echolab", default=str(HERE.parent / ".venv-bench" / "bin" / "echolab"))
    p.add_argument("--bin", default=str(HERE / "bin"), help="where echo_server/echo_load are")
    p.add_argument("--out", default=str(HERE / "results"), help="results directory")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--clients", type=int, default=64, help="in flight (closed loop)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="each open-loop run")
    p.add_argument(
        "--fractions", default=str(OPEN_FRACTION), help="open-loop rates, of the closed max"
    )
    p.add_argument("--no-open", dest="open", action="store_false", help="skip the open loop")
    p.add_argument(
        "--baseline", default=None, help="another echolab (older code): its closed loop too"
    )
    args = p.parse_args(argv)
    args.fractions = [float(x) for x in args.fractions.split(",") if x]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("echo_server", "echo_load"):
        if not (Path(args.bin) / tool).exists():
            print(f"loadgen: {Path(args.bin) / tool} missing: `make bench-tools`", file=sys.stderr)
            return 2
    if args.open and not supports_rate(args.echolab):
        progress(f"{args.echolab} has no --rate: closed loop only")
        args.open = False
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = Path(args.out) / "logs" / f"loadgen-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    keys = ("c_client", "echolab_closed", "baseline_closed", "open")
    out: dict[str, list] = {k: [] for k in keys + tuple(f"cpu_{k}" for k in keys[:3])}
    for r in range(1, args.rounds + 1):
        one_round(args, f"round {r}/{args.rounds}", logdir, out)
    md = render(args, out)
    (Path(args.out) / f"loadgen-{stamp}.md").write_text(md)
    (Path(args.out) / f"loadgen-{stamp}.json").write_text(
        json.dumps({"settings": vars(args), "results": out}, indent=2) + "\n"
    )
    print()
    print(md)
    kept = [r["kept"] for r in out["open"] if r["fraction"] == OPEN_FRACTION]
    if kept and not all(kept):
        print(f"the open loop did NOT hold its schedule at {OPEN_FRACTION:.0%} in every round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
