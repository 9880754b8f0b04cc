"""load: the latency histogram, percentiles, the merge of worker results, latency over time,
the schedule's verdict, thresholds, and the signal handler (driven directly, no sockets)."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest

from echolab import cli, hdr, load, load_core, load_report
from tests.support import ROOT


# --- the histogram --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "us", [0, 1, 127, 255, 256, 257, 511, 512, 1000, 12345, 999_999, 10**9, 2**42 - 1]
)
def test_a_bucket_holds_its_value_within_its_relative_precision(us: int) -> None:
    index = hdr.index_of(us)
    assert 0 <= index < hdr.SIZE
    low, high = hdr.lowest_of(index), hdr.highest_of(index)
    assert low <= us <= high
    assert high - low + 1 <= max(1, low / hdr.SUB_BUCKETS)  # 1/128: 0.78%


def test_buckets_tile_the_values_without_gaps_or_overlaps() -> None:
    previous_high = -1
    for index in range(hdr.SIZE):
        assert hdr.lowest_of(index) == previous_high + 1, index
        assert hdr.index_of(hdr.lowest_of(index)) == index
        assert hdr.index_of(hdr.highest_of(index)) == index
        previous_high = hdr.highest_of(index)


def test_values_beyond_the_top_land_in_the_last_bucket() -> None:
    assert hdr.index_of(2**50) == hdr.SIZE - 1
    assert hdr.index_of(-5) == 0


def test_percentiles_are_never_below_the_truth_and_at_most_a_bucket_above() -> None:
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(7, 1.5)) for _ in range(50_000)]
    hist = hdr.new()
    for us in samples:
        hdr.record(hist, us)
    ordered = sorted(samples)
    got = hdr.summary_ms(hdr.sparse(hist), max(samples))
    for name, q in hdr.SUMMARY:
        exact = ordered[-(-int(q * len(ordered) * 10**6) // 10**6) - 1]
        value = got[name]
        assert value is not None
        assert exact / 1000 <= value <= exact * (1 + 1 / 128) / 1000 + 0.001, name
    assert got["max"] == max(samples) / 1000
    assert list(got) == ["p50", "p90", "p99", "p99.9", "p99.99", "max"]


def test_percentiles_without_samples_are_none() -> None:
    assert set(hdr.summary_ms({}, 0).values()) == {None}


def test_the_spectrum_climbs_to_the_maximum() -> None:
    hist = hdr.new()
    for us in range(1, 10_001):
        hdr.record(hist, us)
    points = hdr.spectrum(hdr.sparse(hist), 10_000)
    assert points[0] == (0.0, 0.001)
    assert points[-1] == (100.0, 10.0)
    assert [q for q, _ in points] == sorted(q for q, _ in points)
    assert [ms for _, ms in points] == sorted(ms for _, ms in points)
    assert any(99.9 <= q < 100 for q, _ in points)  # it reaches the tail


def test_take_empties_the_same_list() -> None:
    hist = hdr.new()
    hdr.record(hist, 5)
    hdr.record(hist, 5000)
    same = hist
    assert hdr.take(hist) == {5: 1, hdr.index_of(5000): 1}
    assert same is hist and not any(hist)


# --- merging workers, latency over time -------------------------------------------------------
def worker_result(**changes: Any) -> dict[str, Any]:
    stats = load_core.Stats()
    for key, value in changes.items():
        setattr(stats, key, value)
    return stats.as_dict()


def test_merge_adds_workers() -> None:
    a, b = load_core.Stats(), load_core.Stats()
    a.ok, b.ok = 3, 4
    a.error("refused", "connect: ECONNREFUSED")
    b.error("refused", "second")
    b.error("wrong_echo", "byte 3")
    hdr.record(a.latency, 300)
    hdr.record(b.latency, 300)
    hdr.record(b.latency, 9000)
    a.latency_max, b.latency_max = 300, 9000
    a.elapsed, b.elapsed = 1.0, 1.5
    a.scheduled, b.scheduled = 10, 11
    b.signal = signal.SIGTERM
    merged = load_report.merge([a.as_dict(), b.as_dict()])
    assert merged["ok"] == 7
    assert merged["errors"]["refused"] == 2
    assert merged["errors"]["wrong_echo"] == 1
    assert merged["samples"]["refused"] == "connect: ECONNREFUSED"  # the first one is kept
    assert merged["latency"] == {hdr.index_of(300): 2, hdr.index_of(9000): 1}
    assert (merged["latency_max"], merged["elapsed"]) == (9000, 1.5)
    assert merged["scheduled"] == 21
    assert merged["signal"] == signal.SIGTERM


def interval(end: float, *lat_us: int, ok: int = 0) -> dict[str, Any]:
    hist = hdr.new()
    for us in lat_us:
        hdr.record(hist, us)
    return {"end": end, "latency": hdr.sparse(hist), "lag": {}, "ok": ok, "errors": 0, "bytes": 0}


def test_an_interval_is_emitted_once_every_worker_has_reported_it() -> None:
    rows: list[dict[str, Any]] = []

    class Sink:
        def write(self, row: dict[str, Any]) -> None:
            rows.append(row)

    timeline = load_report.Timeline(2, 0.5, Sink())  # type: ignore[arg-type]
    timeline.add(0, 0, interval(0.5, 1000, 2000))
    timeline.add(0, 1, interval(1.0, 3000))
    assert rows == []  # worker 1 has reported nothing yet
    timeline.add(1, 0, interval(0.5, 4000))
    assert [r["t_s"] for r in rows] == [0.0]
    assert rows[0]["samples"] == 3 and rows[0]["per_s"] == 6.0
    assert rows[0]["max_ms"] == pytest.approx(4.0, rel=0.01)
    timeline.add(1, 3, interval(1.8, 5000))  # worker 1 skipped interval 1 and 2 (stalled)
    assert [r["t_s"] for r in rows] == [0.0, 1.0 * 0.5]
    timeline.worker_done(0)
    assert [r["t_s"] for r in rows] == [0.0, 0.5, 1.0, 1.5]
    assert rows[2]["samples"] == 0 and rows[2]["p50_ms"] is None  # an empty interval stays
    assert rows[3]["seconds"] == pytest.approx(0.3)  # the last one was cut short
    assert sum(r["samples"] for r in rows) == 5
    assert timeline.rows == rows  # kept for --plot


def test_without_a_plot_the_timeline_keeps_only_the_last_row() -> None:
    timeline = load_report.Timeline(1, 1.0, keep=False)
    for k in range(5):
        timeline.add(0, k, interval(k + 1.0, 1000 * (k + 1)))
    assert [r["t_s"] for r in timeline.rows] == [4.0]


# --- the schedule, thresholds -------------------------------------------------------------------
def schedule(**counts: Any) -> dict[str, Any]:
    merged = load_report.merge([worker_result(**counts)])
    return load_report.schedule_figures(merged, rate=100)


def lag_hist(*lag_us: int) -> list[int]:
    hist = hdr.new()
    for us in lag_us:
        hdr.record(hist, us)
    return hist


def test_the_schedule_is_kept_when_starts_are_on_time() -> None:
    s = schedule(scheduled=1000, started=1000, lag=lag_hist(*[500] * 1000), lag_max=500)
    assert s["kept"] is True
    assert s["achieved_per_s"] == 100.0


def test_the_generator_falling_behind_is_its_own_verdict() -> None:
    late = lag_hist(*[500] * 900, *[50_000] * 100)
    s = schedule(scheduled=1000, started=1000, lag=late, lag_max=50_000)
    assert s["kept"] is False
    assert "generator itself fell behind" in s["verdict"]
    s = schedule(scheduled=1000, started=900, behind=100, lag=lag_hist(500), lag_max=500)
    assert s["kept"] is False and "100 never began" in s["verdict"]


def test_waiting_for_the_server_is_not_the_generators_lag() -> None:
    kept = schedule(scheduled=1000, started=1000, slot_waits=300, lag=lag_hist(500), lag_max=500)
    assert kept["kept"] is True and kept["slot_waits"] == 300
    starved = schedule(scheduled=1000, started=500, slot_waits=700, lag=lag_hist(500))
    assert starved["kept"] is False
    assert "for want of a free connection" in starved["verdict"]


def test_count_schedule_counts_what_never_began_and_why() -> None:
    stats = load_core.Stats()
    stats.started = 7
    load_core.count_schedule(stats, 1.0, (0.0, 0.1), budget=None, blocked=False)
    assert (stats.scheduled, stats.behind, stats.slot_waits) == (10, 3, 0)
    stats = load_core.Stats()
    stats.started = 7
    load_core.count_schedule(stats, 1.0, (0.0, 0.1), budget=8, blocked=True)
    assert (stats.scheduled, stats.behind, stats.slot_waits) == (8, 0, 1)


def test_the_workers_schedules_interleave_into_the_runs_rate() -> None:
    plans = [
        load_core.Plan(i, 3, "rate", 2, ("127.0.0.1", 1), 1, None, 1.0, 64, 1.0, 0, 100.0, 1.0)
        for i in range(3)
    ]
    times = []
    for plan in plans:
        first, period = plan.schedule(10.0)
        times += [first + k * period for k in range(50)]
    assert sorted(times) == pytest.approx([10.0 + k / 100 for k in range(150)])


def test_thresholds_hold_or_are_exceeded() -> None:
    latency = {"p99": 12.0, "p99.9": 40.0}
    got = load_report.check_thresholds(latency, {"p99": 0.05, "p99.9": 0.02})
    assert got["p99"] == {"max_ms": 50.0, "ms": 12.0, "ok": True}
    assert got["p99.9"]["ok"] is False
    assert load_report.check_thresholds({"p99": None}, {"p99": 1.0})["p99"]["ok"] is False
    assert load_report.check_thresholds(latency, {"p99": None}) == {}


# --- the parent's signal handler ---------------------------------------------------------------
class Flag:
    value = 0


def test_the_handler_only_records_the_first_signal_and_raises_the_stop_flag() -> None:
    intr = load.Interrupts()
    intr.handle(signal.SIGTERM, None)
    assert intr.signum == signal.SIGTERM
    flag = Flag()
    intr.attach(flag)  # a signal before the workers existed stops them at once
    assert flag.value == 1
    flag.value = 0
    intr.handle(signal.SIGINT, None)
    assert intr.signum == signal.SIGTERM  # the first one decides the exit status
    assert flag.value == 1


def test_the_handlers_are_installed_for_the_run_and_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with load.Interrupts() as intr:
        for sig in before:
            assert signal.getsignal(sig) == intr.handle
        os.kill(os.getpid(), signal.SIGHUP)  # would end pytest with the default disposition
        assert intr.signum == signal.SIGHUP
    assert {s: signal.getsignal(s) for s in before} == before


# --- small helpers and the command line ---------------------------------------------------------
def test_split_shares_everything() -> None:
    assert load.split(10, 3) == [4, 3, 3]
    assert load.split(2, 2) == [1, 1]
    assert sum(load.split(64, 5)) == 64


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "reset"),
        (BrokenPipeError(errno.EPIPE, "pipe"), "reset"),
        (TimeoutError(), "timeout"),
        (OSError(errno.EADDRNOTAVAIL, "no port"), "no_local_port"),
        (OSError(errno.EMFILE, "too many"), "other"),
    ],
)
def test_classify(exc: OSError, kind: str) -> None:
    assert load_core.classify(exc) == kind


@pytest.mark.parametrize(
    ("text", "seconds"), [("50", 0.05), ("2.5", 0.0025), ("0.2s", 0.2), ("500ms", 0.5)]
)
def test_latency_limits_are_milliseconds_unless_a_unit_says_otherwise(
    text: str, seconds: float
) -> None:
    args = cli.build_parser().parse_args(["load", "--target", "h:1", "--max-p99", text])
    assert args.max_p99 == pytest.approx(seconds)


def test_serve_and_the_load_generator_never_import_the_plotting_code() -> None:
    code = (
        "import sys; from echolab import cli, server, load; cli.build_parser();"
        "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'echolab.load_plot'))];"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
