"""load: the latency histogram, percentiles, shares and the merge of worker results."""

from __future__ import annotations

import errno
import random

import pytest

from echolab import load


@pytest.mark.parametrize("us", [0, 1, 127, 128, 129, 255, 256, 1000, 12345, 999_999, 10**9])
def test_histogram_bucket_holds_the_value_within_two_percent(us: int) -> None:
    index = load.hist_index(us)
    assert 0 <= index < load.HIST_SIZE
    assert load.hist_value(index) == pytest.approx(us, rel=0.016, abs=0.5)


def test_histogram_buckets_are_monotonic() -> None:
    indexes = [load.hist_index(us) for us in range(0, 70_000, 7)]
    assert indexes == sorted(indexes)


def test_percentiles_match_a_sorted_sample() -> None:
    rng = random.Random(7)
    samples = [int(rng.expovariate(1 / 800)) for _ in range(20_000)]
    hist = [0] * load.HIST_SIZE
    for us in samples:
        hist[load.hist_index(us)] += 1
    got = load.percentiles(hist, max(samples))
    ordered = sorted(samples)
    for name, frac in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        exact = ordered[int(frac * len(ordered)) - 1] / 1000
        assert got[name] == pytest.approx(exact, rel=0.03, abs=0.002), name
    assert got["max"] == max(samples) / 1000


def test_percentiles_without_samples_are_none() -> None:
    assert load.percentiles([0] * load.HIST_SIZE, 0) == dict.fromkeys(("p50", "p90", "p99", "max"))


def test_split_shares_everything() -> None:
    assert load.split(10, 3) == [4, 3, 3]
    assert load.split(2, 2) == [1, 1]
    assert sum(load.split(64, 5)) == 64


def test_merge_adds_workers() -> None:
    a, b = load.Stats(), load.Stats()
    a.ok, b.ok = 3, 4
    a.error("refused", "connect: ECONNREFUSED")
    b.error("refused", "second")
    b.error("wrong_echo", "byte 3")
    a.rtt_hist[5] = 2
    b.rtt_hist[5] = 1
    a.rtt_max, b.rtt_max = 10, 99
    a.elapsed, b.elapsed = 1.0, 1.5
    merged = load.merge([a.as_dict(), b.as_dict()])
    assert merged["ok"] == 7
    assert merged["errors"]["refused"] == 2
    assert merged["errors"]["wrong_echo"] == 1
    assert merged["samples"]["refused"] == "connect: ECONNREFUSED"  # the first one is kept
    assert merged["rtt_hist"][5] == 3
    assert (merged["rtt_max"], merged["elapsed"]) == (99, 1.5)


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
    assert load.classify(exc) == kind
