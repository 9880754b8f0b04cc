#!/usr/bin/env python3
"""Draw a benchmark result (bench/results/latest.json) as one PNG: a panel per figure.

Optional: needs matplotlib, which the benchmark's own venv must not carry (it would change
what every Python server imports); `make bench-plot` installs it into a venv of its own.

Usage: python bench/plot.py [RESULTS.json] [OUT.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else HERE / "results" / "latest.json"
    dst = Path(argv[1]) if len(argv) > 1 else src.with_suffix(".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/plot.py: matplotlib is not installed (try `make bench-plot`)", file=sys.stderr)
        return 2
    data = json.loads(src.read_text())
    peers = data["peers"]
    medians = data["medians"]
    panels = [
        (key, label)
        for key, label in (
            *[(f"rate_{k}", f"conn/s, {k} in flight") for k in data["settings"]["inflight"]],
            *[(f"stream_{s}", f"MiB/s, {s} stream(s)") for s in data["settings"]["streams"]],
            ("pss", "PSS KiB per connection (lower is better)"),
        )
        if any(medians[p].get(key) is not None for p in peers)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        names = [peers[p]["label"] for p in peers]
        values = [medians[p].get(key) or 0 for p in peers]
        colours = ["tab:red" if p == "echolab" else "tab:gray" for p in peers]
        ax.barh(names, values, color=colours)
        ax.set_title(label, fontsize=10)
        ax.invert_yaxis()
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.margins(x=0.25)
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.suptitle(f"echolab benchmark: medians of {data['settings']['repeats']} round(s)")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    print(f"written: {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
