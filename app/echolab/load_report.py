"""What `echolab load` reports: the workers' tallies merged, latency over time, the summary
(the table, the JSON), the thresholds and the live progress."""

from __future__ import annotations

import csv
import signal
import sys
from typing import Any, TextIO

from echolab import hdr
from echolab.errors import EXIT_OS_ERROR, EcholabError
from echolab.load_core import ERROR_KINDS
from echolab.report import print_rows

# The open loop kept its schedule when 99% of its events started within this much of their
# scheduled time (epoll waits in whole milliseconds, so about 1 ms is the floor here) and
# fewer than SCHEDULE_BEHIND_SHARE of them were still unstarted at the end.
SCHEDULE_LAG_P99_MS = 5.0
SCHEDULE_BEHIND_SHARE = 0.01
CSV_COLUMNS = (
    "t_s", "seconds", "samples", "per_s", "errors", "mib_per_s",
    "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms", "lag_max_ms",
)  # fmt: skip
_SUMS = ("ok", "bytes_sent", "bytes_verified", "pings", "peak_open")
_SCHEDULE_SUMS = ("scheduled", "started", "slot_waits", "behind", "abandoned")


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the workers' tallies together (histograms bucket by bucket)."""
    merged: dict[str, Any] = dict.fromkeys(_SUMS + _SCHEDULE_SUMS, 0)
    merged.update(errors=dict.fromkeys(ERROR_KINDS, 0), samples={}, signal=0, elapsed=0.0)
    for key in ("connect", "latency", "lag"):
        merged[key] = {}
        merged[f"{key}_max"] = 0
    for r in results:
        for key in _SUMS + _SCHEDULE_SUMS:
            merged[key] += r[key]
        for kind, n in r["errors"].items():
            merged["errors"][kind] += n
        for kind, text in r["samples"].items():
            merged["samples"].setdefault(kind, text)
        for key in ("connect", "latency", "lag"):
            into = merged[key]
            for index, n in r[key].items():
                into[index] = into.get(index, 0) + n
            merged[f"{key}_max"] = max(merged[f"{key}_max"], r[f"{key}_max"])
        merged["elapsed"] = max(merged["elapsed"], r["elapsed"])
        merged["signal"] = merged["signal"] or r["signal"]
    return merged


class Timeline:
    """Latency over time: the workers' per-interval histograms merged into one row per
    interval, as soon as every worker has reported that interval (rows go to `sink`, the
    --latency-csv writer, as they come)."""

    def __init__(
        self, workers: int, step: float, sink: LatencyCsv | None = None, *, keep: bool = True
    ) -> None:
        self.step = step
        self.keep = keep  # every row (for --plot), or only the last (for the progress line)
        self.seen = [-1] * workers  # the last interval each worker reported
        self.parts: dict[int, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.next_k = 0
        self.sink = sink

    def add(self, worker: int, k: int, part: dict[str, Any]) -> None:
        acc = self.parts.setdefault(
            k, {"latency": {}, "lag": {}, "ok": 0, "errors": 0, "bytes": 0, "end": 0.0}
        )
        for key in ("latency", "lag"):
            for index, n in part[key].items():
                acc[key][index] = acc[key].get(index, 0) + n
        for key in ("ok", "errors", "bytes"):
            acc[key] += part[key]
        acc["end"] = max(acc["end"], part["end"])
        self.seen[worker] = k
        self._emit(min(self.seen))

    def worker_done(self, worker: int) -> None:
        """A worker has ended (its intervals are all in, or it died)."""
        self.seen[worker] = sys.maxsize
        self._emit(min(self.seen))

    def close(self) -> None:
        """Emit whatever is left (the intervals of workers that died unannounced)."""
        self._emit(sys.maxsize)

    def _emit(self, upto: int) -> None:
        last = min(upto, max(self.parts, default=-1))
        for k in range(self.next_k, last + 1):
            row = self._row(k, self.parts.pop(k, None))
            if not self.keep:
                self.rows.clear()
            self.rows.append(row)
            if self.sink is not None:
                self.sink.write(row)
        self.next_k = max(self.next_k, last + 1)

    def _row(self, k: int, acc: dict[str, Any] | None) -> dict[str, Any]:
        start = k * self.step
        acc = acc or {"latency": {}, "lag": {}, "ok": 0, "errors": 0, "bytes": 0, "end": 0.0}
        seconds = max((acc["end"] or start + self.step) - start, 1e-9)
        lat = acc["latency"]
        values = hdr.values_at(lat, [0.5, 0.9, 0.99, 0.999])
        samples = hdr.total(lat)
        return {
            "t_s": round(start, 3),
            "seconds": round(seconds, 3),
            "samples": samples,
            "per_s": round(samples / seconds, 1),
            "errors": acc["errors"],
            "mib_per_s": round(acc["bytes"] / seconds / (1 << 20), 3),
            "p50_ms": _ms(values[0]),
            "p90_ms": _ms(values[1]),
            "p99_ms": _ms(values[2]),
            "p99.9_ms": _ms(values[3]),
            "max_ms": _ms(hdr.highest_of(max(lat)) if lat else None),
            "lag_max_ms": _ms(hdr.highest_of(max(acc["lag"])) if acc["lag"] else None),
        }


class LatencyCsv:
    """--latency-csv: one row per interval, flushed as it comes (a cut-short run keeps its
    rows so far)."""

    def __init__(self, path: str) -> None:
        try:
            self.file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:  # it could be written a moment ago (load.check_outputs)
            raise EcholabError(f"cannot write {path}: {exc.strerror}", EXIT_OS_ERROR) from None
        self.writer = csv.DictWriter(self.file, CSV_COLUMNS)
        self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def schedule_figures(merged: dict[str, Any], rate: int) -> dict[str, Any]:
    """Open loop: how well the generator kept its schedule, and the verdict.

    Kept: 99% of the events began within SCHEDULE_LAG_P99_MS of their time (among those that
    found a free connection: the generator's own lag) and nearly all of them began at all.
    Events that waited for a free connection are the server's doing (all --clients were
    busy): their wait is in their latency; too many never beginning still breaks the schedule.
    """
    scheduled, started, behind = merged["scheduled"], merged["started"], merged["behind"]
    lag = hdr.summary_ms(merged["lag"], merged["lag_max"])
    span = scheduled / rate
    unstarted = scheduled - started
    lagging = (lag["p99"] is not None and lag["p99"] > SCHEDULE_LAG_P99_MS) or (
        behind > SCHEDULE_BEHIND_SHARE * scheduled
    )
    if lagging:
        never = f", {behind:,} never began" if behind else ""
        verdict = (
            f"NOT KEPT: the generator itself fell behind (lag p99 {fmt_ms(lag['p99'])} ms"
            f"{never}), and its delay is in the latencies: use more --workers or a lower --rate"
        )
    elif unstarted > SCHEDULE_BEHIND_SHARE * scheduled:
        verdict = (
            f"NOT KEPT: {unstarted:,} never began for want of a free connection (--clients): "
            "the server did not keep up with this rate"
        )
    else:
        verdict = f"kept: 99% of the starts within {SCHEDULE_LAG_P99_MS:g} ms of schedule"
    return {
        "rate_per_s": rate,
        "scheduled": scheduled,
        "started": started,
        "achieved_per_s": round(started / span, 1) if span else 0.0,
        "behind": behind,
        "slot_waits": merged["slot_waits"],
        "lag_ms": lag,
        "kept": verdict.startswith("kept"),
        "verdict": verdict,
    }


def check_thresholds(
    latency: dict[str, float | None], limits: dict[str, float | None]
) -> dict[str, dict[str, Any]]:
    """--max-p99 / --max-p999 (seconds): each limit, the value, and whether it held."""
    out: dict[str, dict[str, Any]] = {}
    for name, limit_s in limits.items():
        if limit_s is None:
            continue
        value = latency[name]
        limit_ms = round(limit_s * 1000, 3)
        out[name] = {"max_ms": limit_ms, "ms": value, "ok": value is not None and value <= limit_ms}
    return out


def summarize(
    args: Any,
    *,
    target: str,
    workers: int,
    seed: int,
    merged: dict[str, Any],
    signum: int,
    failures: list[str],
) -> dict[str, Any]:
    """The figures of the run, as --json writes them."""
    elapsed = merged["elapsed"] or 1e-9
    errors_total = sum(merged["errors"].values())
    units = merged["ok"] + errors_total
    error_rate = errors_total / units if units else 0.0
    latency = hdr.summary_ms(merged["latency"], merged["latency_max"])
    thresholds = check_thresholds(latency, {"p99": args.max_p99, "p99.9": args.max_p999})
    interrupted = bool(signum)
    passed = (
        merged["ok"] > 0
        and merged["errors"]["wrong_echo"] == 0
        and error_rate <= args.max_error_rate
        and all(t["ok"] for t in thresholds.values())
        and not failures
        and not interrupted
    )
    return {
        "mode": args.mode,
        "target": target,
        "loop": "closed" if args.rate is None else "open",
        "rate": args.rate,
        "duration_s": round(merged["elapsed"], 3),
        "workers": workers,
        "clients": args.clients,
        "payload": args.payload,
        "seed": seed,
        "connections_ok": merged["ok"],
        "errors": merged["errors"],
        "errors_total": errors_total,
        "error_rate": round(error_rate, 6),
        "error_samples": merged["samples"],
        "conn_per_s": round(merged["ok"] / elapsed, 1),
        "mib_per_s": round(merged["bytes_verified"] / elapsed / (1 << 20), 3),
        "latency_ms": latency,
        "latency_samples": hdr.total(merged["latency"]),
        "latency_from": "schedule" if args.rate is not None else "start",
        "latency_histogram": {
            "unit": "us",
            "sub_buckets": hdr.SUB_BUCKETS,
            "buckets": hdr.buckets(merged["latency"]),
        },
        "connect_latency_ms": hdr.summary_ms(merged["connect"], merged["connect_max"]),
        "schedule": schedule_figures(merged, args.rate) if args.rate is not None else None,
        "interval_s": args.interval,
        "bytes_sent": merged["bytes_sent"],
        "bytes_verified": merged["bytes_verified"],
        "pings_ok": merged["pings"],
        "peak_open": merged["peak_open"],
        "max_error_rate": args.max_error_rate,
        "thresholds": thresholds,
        "abandoned": merged["abandoned"],
        "worker_failures": failures,
        "signal": signal.Signals(signum).name if signum else None,
        "interrupted": interrupted,
        "passed": passed,
    }


# --- for people ---------------------------------------------------------------------------
def render_summary(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as (label, value) rows, shared by the plain and the rich table."""
    err = s["errors"]
    detail = ", ".join(f"{k} {v}" for k, v in err.items() if v) or "none"
    cut = f" (interrupted by {s['signal']})" if s["interrupted"] else ""
    rows = [
        ("target", f"{s['target']} ({s['mode']}, {s['clients']} clients, {s['workers']} workers)"),
        ("load", _load_text(s)),
        ("duration", f"{s['duration_s']:.2f} s{cut}"),
        ("connections ok", f"{s['connections_ok']:,}"),
        ("connections/s", f"{s['conn_per_s']:,.1f}"),
        ("verified", f"{s['bytes_verified']:,} bytes ({s['mib_per_s']:,.2f} MiB/s)"),
        ("errors", f"{s['errors_total']:,} ({detail}); rate {s['error_rate']:.4%}"),
    ]
    round_trips = s["mode"] == "hold" or (s["mode"] == "stream" and s["loop"] == "open")
    if round_trips:
        rows.append(("round trips ok", f"{s['pings_ok']:,} (peak {s['peak_open']:,} open)"))
    if s["mode"] == "rate":
        rows.append(("connection ms", pct_text(s["latency_ms"])))
    elif round_trips:
        rows.append(("round trip ms", pct_text(s["latency_ms"])))
    rows.append(("connect ms", pct_text(s["connect_latency_ms"])))
    if s["schedule"] is not None:
        rows.append(("schedule", _schedule_text(s["schedule"], s["clients"])))
    for name, t in s["thresholds"].items():
        shown = "no samples" if t["ms"] is None else f"{t['ms']:.2f} ms"
        verdict = "ok" if t["ok"] else "EXCEEDED"
        rows.append((f"max {name}", f"{shown} against {t['max_ms']:g} ms: {verdict}"))
    if s["abandoned"]:
        rows.append(("abandoned", f"{s['abandoned']:,} in flight at the signal"))
    for text in s["worker_failures"]:
        rows.append(("worker failed", text))
    for kind, text in s["error_samples"].items():
        rows.append((f"first {kind}", text))
    rows.append(("result", "PASS" if s["passed"] else "FAIL"))
    return rows


def _load_text(s: dict[str, Any]) -> str:
    if s["loop"] == "open":
        unit = "connections" if s["mode"] == "rate" else "round trips"
        return f"open loop: {s['rate']:,} {unit}/s on a fixed schedule, timed from it"
    if s["mode"] == "rate":
        return "closed loop: the next connection when one ends (a stalled server stalls it too)"
    if s["mode"] == "hold":
        return "closed loop: each connection pinged about once a second after its last echo"
    return "closed loop: every connection streaming both ways"


def _schedule_text(sched: dict[str, Any], clients: int) -> str:
    lag = sched["lag_ms"]
    text = (
        f"{sched['started']:,} of {sched['scheduled']:,} started "
        f"({sched['achieved_per_s']:,.1f}/s); generator lag p99 {fmt_ms(lag['p99'])} ms, "
        f"max {fmt_ms(lag['max'])} ms; {sched['verdict']}"
    )
    if sched["slot_waits"]:
        text += f"; {sched['slot_waits']:,} waited for a free connection (--clients {clients})"
    return text


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def pct_text(p: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {fmt_ms(p[k])}" for k in p)


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """A table at the end: rich on a terminal when rich is installed, aligned text otherwise."""
    rows = render_summary(summary)
    verdict = dict(rows).get("result", "")
    print_rows(
        "echolab load", rows, out, {"result": "bold green" if verdict == "PASS" else "bold red"}
    )


class Progress:
    """Live progress: a rich bar on a terminal, a plain line now and then otherwise."""

    def __init__(self, enabled: bool, total: float, by_count: bool, out: TextIO) -> None:
        self.enabled = enabled
        self.total = total
        self.by_count = by_count
        self.out = out
        self.rich: Any = None
        self.task: Any = None
        self.next_line = 0.0
        self.period = 1.0 if total <= 60 or by_count else 10.0
        if enabled and out.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                pass
            else:
                self.rich = Progress(
                    TextColumn("[bold]load"),
                    BarColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[figures]}"),
                    console=Console(file=out),
                    transient=False,
                )
                self.task = self.rich.add_task("load", total=total, figures="")
                self.rich.start()

    def update(self, elapsed: float, totals: list[int], last: dict[str, Any] | None) -> None:
        """Show the running counters and the p99 of the last finished interval."""
        if not self.enabled:
            return
        ok, errs, nbytes, open_, pings = totals
        rate = ok / elapsed if elapsed > 0 else 0.0
        mib = nbytes / elapsed / (1 << 20) if elapsed > 0 else 0.0
        figures = (
            f"ok {ok:,}  {rate:,.0f} conn/s  {mib:,.1f} MiB/s  errors {errs:,}  open {open_:,}"
        )
        if pings:
            figures += f"  round trips {pings:,}"
        if last is not None and last["p99_ms"] is not None:
            figures += f"  p99 {last['p99_ms']:.2f} ms"
        if self.rich is not None:
            done = ok + errs if self.by_count else min(elapsed, self.total)
            self.rich.update(self.task, completed=done, figures=figures)
            return
        if elapsed >= self.next_line:
            self.next_line = elapsed + self.period
            print(f"load: {elapsed:6.1f}s  {figures}", file=self.out, flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
