"""`--plot FILE.svg|.png`: the timeline of a restart as a picture.

For each run: the port's sockets by state over time (LISTEN, ESTABLISHED, TIME_WAIT, SYN_RECV
and the accept queue), the time without a listener shaded, marks for the stop, the new
server's bind and the first echo, and every probe as a tick by its outcome. matplotlib comes
with the optional extra `plot` (`pip install 'echolab[plot]'`) and is imported here only.
"""

from __future__ import annotations

import itertools
import os
import warnings
from typing import Any

from echolab.errors import EXIT_OS_ERROR, EXIT_USAGE, EcholabError

FORMATS = (".svg", ".png", ".pdf")
STATES = (  # (key in a sample, legend, colour, line width)
    ("LISTEN", "LISTEN", "#1b7837", 2.4),
    ("ESTABLISHED", "ESTABLISHED", "#2166ac", 1.6),
    ("TIME_WAIT", "TIME_WAIT", "#b2182b", 2.0),
    ("SYN_RECV", "SYN_RECV", "#8073ac", 1.2),
    ("accept_queue", "accept queue", "#e08214", 1.2),
)
PROBE_ROWS = (  # (outcome, label, colour); other outcomes go to the last row
    ("ok", "echoed", "#1b7837"),
    ("refused", "refused", "#d73027"),
    ("reset", "reset", "#f46d43"),
    ("failed", "failed / timeout", "#762a83"),
)
MARKS = {  # event -> (label, colour); the JSON has every event, the picture these
    "stop": ("stop", "#d73027"),
    "old_exited": ("old server gone", "#777777"),
    "new_listener": ("bind", "#1b7837"),
    "takeover": ("takeover", "#1b7837"),
    "bound": ("reload done", "#1b7837"),  # shown for reload only (elsewhere: the ready line)
    "start_failed": ("new server failed", "#000000"),
    "first_echo": ("first echo", "#2166ac"),
}


def check_plot(path: str) -> None:
    """Before the run: a known format, and matplotlib installed (one line otherwise)."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise EcholabError(f"--plot {path}: give a file ending in .svg, .png or .pdf", EXIT_USAGE)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EcholabError(
            "--plot needs matplotlib: pip install 'echolab[plot]'", EXIT_USAGE
        ) from None


def _title(run: dict[str, Any]) -> str:
    name = run["strategy"]
    if name == "stop-start" and not run["reuseaddr"]:
        name += ", no SO_REUSEADDR"
    migrate = run.get("netns", {}).get("tcp_migrate_req")
    if name == "reuseport" and migrate is not None:
        name += f", tcp_migrate_req={migrate}"
    p = run["probes"]
    return (
        f"{name}: {run['verdict'].upper()} - {p['refused']} refused, {p['reset']} reset of "
        f"{p['attempts']} probes"
    )


def _sockets(ax: Any, run: dict[str, Any]) -> None:
    samples = run["timeline"].get("samples", [])
    t = [s["t_ms"] / 1000 for s in samples]
    for key, name, colour, width in STATES:
        ax.step(t, [s.get(key, 0) for s in samples], where="post", label=name, color=colour,
                linewidth=width)  # fmt: skip
    gaps = [(a["t_ms"], b["t_ms"]) for a, b in itertools.pairwise(samples)
            if a["LISTEN"] == 0 and a["t_ms"] >= 0]  # fmt: skip
    for start, end in gaps:
        ax.axvspan(start / 1000, end / 1000, color="#fddbc7", linewidth=0)
    top = max([1] + [s.get(k, 0) for s in samples for k, *_ in STATES])
    if gaps:
        middle = (gaps[0][0] + gaps[-1][1]) / 2000
        ax.text(middle, top * 0.75, f"no listener\n{run['no_listener_ms']:.0f} ms", fontsize=8,
                color="#b2182b", ha="center", va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})  # fmt: skip
    ax.set_ylabel("sockets on the port")
    ax.grid(True, axis="y", alpha=0.3)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(-0.3, top * 1.25 + 0.5)


def _marks(axes: list[Any], run: dict[str, Any]) -> None:
    seen = set()
    for event in run["timeline"].get("events", []):
        mark = MARKS.get(event["event"])
        if event["event"] == "bound" and run["strategy"] != "reload":
            continue
        if mark is None or event["event"] in seen:
            continue
        seen.add(event["event"])
        name, colour = mark
        x = event["t_ms"] / 1000
        for ax in axes:
            ax.axvline(x, color=colour, linestyle="--", linewidth=1.1, alpha=0.9)
        axes[0].annotate(
            name,
            (x, 0.98),
            xycoords=("data", "axes fraction"),
            xytext=(2, 0),
            textcoords="offset points",
            fontsize=8,
            color=colour,
            rotation=90,
            va="top",
        )


def _probes(ax: Any, run: dict[str, Any]) -> None:
    rows = {name: i for i, (name, _, _) in enumerate(PROBE_ROWS)}
    for name, _, colour in PROBE_ROWS:
        xs = [
            p["t_ms"] / 1000
            for p in run["timeline"].get("probes", [])
            if rows.get(p["outcome"], rows["failed"]) == rows[name]
        ]
        ax.plot(xs, [rows[name]] * len(xs), linestyle="none", marker="|", markersize=9,
                color=colour)  # fmt: skip
    ax.set_yticks(range(len(PROBE_ROWS)), [label for _, label, _ in PROBE_ROWS], fontsize=8)
    ax.set_ylim(len(PROBE_ROWS) - 0.5, -0.5)
    ax.set_xlabel("seconds from the start of the restart")
    ax.grid(True, axis="x", alpha=0.3)


def plot(runs: list[dict[str, Any]], path: str) -> None:
    """Draw one pair of panels (sockets, probes) per run into `path`, on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 3.9 * len(runs)), layout="constrained")
    figures = fig.subfigures(len(runs), 1, squeeze=False)
    # One time axis for every run, set on each (axes shared across subfigures redraw the whole
    # figure on every change: a minute for six runs).
    times = [p["t_ms"] / 1000 for run in runs for p in run["timeline"].get("samples", [])]
    span = (min(times, default=-0.1) - 0.02, max(times, default=1.0) + 0.02)
    for i, run in enumerate(runs):
        grid = figures[i][0].add_gridspec(2, 1, height_ratios=[3, 1])
        top = figures[i][0].add_subplot(grid[0])
        bottom = figures[i][0].add_subplot(grid[1], sharex=top)
        top.set_xlim(*span)
        _sockets(top, run)
        _probes(bottom, run)
        _marks([top, bottom], run)
        top.set_title(f"{run['target']}  {_title(run)}", loc="left", fontsize=10)
        top.tick_params(labelbottom=False)
        if i == 0:
            handles, labels = top.get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside upper center", ncol=len(STATES),
                       fontsize=8, frameon=False)  # fmt: skip
    try:
        with warnings.catch_warnings():  # constrained layout's notes on intermediate sizes
            warnings.simplefilter("ignore", UserWarning)
            fig.savefig(path, dpi=110)
    except OSError as exc:
        raise EcholabError(f"cannot write {path}: {exc.strerror}", EXIT_OS_ERROR) from None
    finally:
        plt.close(fig)
