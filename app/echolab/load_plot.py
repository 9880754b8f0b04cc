"""`echolab load --plot FILE.svg|.png`: latency over time beside the percentile spectrum.

Needs matplotlib, the optional `plot` extra (`pip install 'echolab[plot]'`). It is imported
here only, and only when --plot is given: nothing else in echolab imports this module.
"""

from __future__ import annotations

import math
from typing import Any

from echolab import hdr
from echolab.errors import EXIT_OS_ERROR, EXIT_USAGE, EcholabError

MISSING = "--plot needs matplotlib, the 'plot' extra: pip install 'echolab[plot]'"
# Percentile axis of the spectrum: x = 1 / (1 - q), labelled as q.
_TICKS = [(1, "0%"), (10, "90%"), (100, "99%"), (1e3, "99.9%"), (1e4, "99.99%"), (1e5, "99.999%")]


def require() -> None:
    """Fail before the run, in one line, when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EcholabError(MISSING, EXIT_USAGE) from None


def draw(path: str, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write the picture of a run: its summary (the JSON's figures) and its interval rows."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise EcholabError(MISSING, EXIT_OS_ERROR) from None
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    over_time, spectrum = fig.subplots(1, 2, width_ratios=[3, 2])
    _over_time(over_time, summary, rows)
    _spectrum(spectrum, summary)
    lat = summary["latency_ms"]
    p = "  ".join(f"{k} {v:.3g} ms" for k, v in lat.items() if v is not None)
    fig.suptitle(
        f"echolab load {summary['target']}: {summary['mode']} mode, {_load_label(summary)}"
        f"{'  (interrupted)' if summary['interrupted'] else ''}\n{p}",
        fontsize=10,
    )
    try:
        fig.savefig(path)
    except OSError as exc:
        raise EcholabError(f"cannot write {path}: {exc.strerror or exc}", EXIT_OS_ERROR) from None


def _load_label(summary: dict[str, Any]) -> str:
    if summary["loop"] == "open":
        unit = "connections" if summary["mode"] == "rate" else "round trips"
        return f"open loop, {summary['rate']:,} {unit}/s, latency from the schedule"
    return f"closed loop, {summary['clients']} clients"


def _over_time(ax: Any, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Per interval: p50, p99, max (log scale), the generator's lag, errors; and the rate."""
    rate_ax = ax.twinx()
    xs = [r["t_s"] for r in rows]
    rate_ax.fill_between(
        xs, [r["per_s"] or r["mib_per_s"] for r in rows], step="post", color="0.85", lw=0
    )
    rate_ax.set_ylabel("per second" if summary["latency_samples"] else "MiB/s", color="0.5")
    rate_ax.set_ylim(bottom=0)
    ax.set_zorder(rate_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    drawn = False
    for key, label, style in (
        ("p50_ms", "p50", {"color": "tab:blue"}),
        ("p99_ms", "p99", {"color": "tab:orange"}),
        ("max_ms", "max", {"color": "tab:red", "lw": 0.8}),
        ("lag_max_ms", "generator lag (max)", {"color": "0.3", "ls": "--", "lw": 0.8}),
    ):
        values = [r[key] if r[key] else math.nan for r in rows]  # an empty interval: a gap
        if not all(math.isnan(v) for v in values):
            ax.step(xs, values, where="post", label=label, **style)
            drawn = True
    errors = [r["t_s"] for r in rows if r["errors"]]
    if errors:
        ax.plot(errors, [1.0] * len(errors), "x", color="red", transform=ax.get_xaxis_transform(),
                clip_on=False, label="errors")  # fmt: skip
    if drawn:
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"seconds since the start ({summary['interval_s']:g} s intervals)")
    ax.set_ylabel("latency, ms")
    ax.set_title("latency over time", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def _spectrum(ax: Any, summary: dict[str, Any]) -> None:
    """The whole distribution: latency at each percentile, HdrHistogram's way."""
    hist = {hdr.index_of(lo): n for lo, _hi, n in summary["latency_histogram"]["buckets"]}
    max_us = round((summary["latency_ms"]["max"] or 0) * 1000)
    points = [(q, ms) for q, ms in hdr.spectrum(hist, max_us) if q < 100]
    ax.set_title("percentile spectrum", fontsize=10)
    if not points:
        ax.text(0.5, 0.5, "no latency samples", ha="center", transform=ax.transAxes)
        return
    ax.plot([1 / (1 - q / 100) for q, _ in points], [ms for _, ms in points], color="tab:blue")
    ax.axhline(max_us / 1000, color="tab:red", lw=0.8, ls="--", label="max")
    ax.set_xscale("log")
    top = max(1 / (1 - q / 100) for q, _ in points)
    ticks = [(x, label) for x, label in _TICKS if x <= top * 10]
    ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
