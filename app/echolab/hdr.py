"""A latency histogram with fixed relative precision (HdrHistogram's bucket layout).

Values are whole microseconds. Below 256 us every value has its own bucket; above, each power
of two is cut into 128 buckets, so a bucket is never wider than 1/128 (0.78%) of the values it
holds, from a quarter of a millisecond up to 2**42 us (51 days; larger values land in the
last bucket). That is 4,608 counters: a histogram is a plain list of ints, recording is one
index computation and one increment, and merging the histograms of several processes or
intervals is adding them.

A percentile is reported as the highest value of its bucket (HdrHistogram's "highest
equivalent value"), capped at the exact maximum: never below the truth, at most 0.78% above.
"""

from __future__ import annotations

import math

SUB_BITS = 7
SUB_BUCKETS = 1 << SUB_BITS  # buckets per power of two
EXACT_BELOW = SUB_BUCKETS << 1  # 256: values below this have a bucket each
TOP_BITS = 42  # values below 2**TOP_BITS us have buckets of their own
SIZE = (TOP_BITS - SUB_BITS + 1) << SUB_BITS  # 4,608 buckets

# The percentiles the summary shows, as (name, fraction).
SUMMARY = (
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
)


def new() -> list[int]:
    """An empty histogram."""
    return [0] * SIZE


def index_of(us: int) -> int:
    """The bucket of a value of `us` microseconds."""
    if us < EXACT_BELOW:
        return max(us, 0)
    if us.bit_length() > TOP_BITS:
        return SIZE - 1
    shift = us.bit_length() - SUB_BITS - 1
    return (shift << SUB_BITS) + (us >> shift)


def lowest_of(index: int) -> int:
    """The smallest value that falls in bucket `index`."""
    if index < EXACT_BELOW:
        return index
    shift = (index >> SUB_BITS) - 1
    return (index - (shift << SUB_BITS)) << shift


def highest_of(index: int) -> int:
    """The largest value that falls in bucket `index`."""
    if index < EXACT_BELOW:
        return index
    shift = (index >> SUB_BITS) - 1
    return ((index - (shift << SUB_BITS) + 1) << shift) - 1


def record(hist: list[int], us: int) -> None:
    """Count one value of `us` microseconds."""
    hist[index_of(us)] += 1


def sparse(hist: list[int]) -> dict[int, int]:
    """The non-empty buckets as {index: count} (what crosses between processes)."""
    return {i: n for i, n in enumerate(hist) if n}


def take(hist: list[int]) -> dict[int, int]:
    """The non-empty buckets, and the histogram emptied in place (the same list object)."""
    out = sparse(hist)
    for i in out:
        hist[i] = 0
    return out


def add(into: list[int], part: dict[int, int]) -> None:
    """Add sparse counts into a histogram."""
    for i, n in part.items():
        into[int(i)] += n


def total(hist: list[int] | dict[int, int]) -> int:
    """The number of values counted."""
    return sum(hist.values()) if isinstance(hist, dict) else sum(hist)


def values_at(
    hist: dict[int, int], fractions: list[float], max_us: int | None = None
) -> list[int | None]:
    """The value at each fraction (0-1, ascending) of the counted values, in microseconds.

    The value at fraction q is the highest value of the first bucket at which at least
    q of the values have been counted (at least one), capped at `max_us`. None without values.
    """
    count = total(hist)
    if not count:
        return [None] * len(fractions)
    out: list[int | None] = []
    seen = 0
    items = iter(sorted(hist.items()))
    index = -1
    for q in fractions:
        need = max(1, math.ceil(q * count - 1e-9))  # the float product may overshoot
        while seen < need:
            index, n = next(items)
            seen += n
        value = highest_of(index)
        out.append(value if max_us is None else min(value, max_us))
    return out


def summary_ms(hist: dict[int, int], max_us: int) -> dict[str, float | None]:
    """p50, p90, p99, p99.9, p99.99 and max in milliseconds (None without values)."""
    values = values_at(hist, [q for _, q in SUMMARY], max_us)
    out = {name: _ms(v) for (name, _), v in zip(SUMMARY, values, strict=True)}
    out["max"] = _ms(max_us) if values[0] is not None else None
    return out


def spectrum(hist: dict[int, int], max_us: int) -> list[tuple[float, float]]:
    """(percentile, ms) along HdrHistogram's ladder: 0, 50, 75, 87.5, ... (halving the rest
    each step, five points per halving) up to the maximum; what a percentile plot draws."""
    count = total(hist)
    if not count:
        return []
    fractions = []
    rest = 1.0
    while 1 - rest < 1 - 1 / count:
        for step in range(5):
            fractions.append(1 - rest * 2 ** (-step / 5))
        rest /= 2
    values = values_at(hist, fractions, max_us)
    points = [(round(q * 100, 6), v / 1000) for q, v in zip(fractions, values, strict=True) if v]
    points.append((100.0, max_us / 1000))
    return points


def buckets(hist: dict[int, int]) -> list[list[int]]:
    """The distribution for JSON: [lowest us, highest us, count] per non-empty bucket."""
    return [[lowest_of(i), highest_of(i), n] for i, n in sorted(hist.items())]


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000, 3)
