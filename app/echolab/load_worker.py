"""The entry point of an `echolab load` worker process."""

from __future__ import annotations

import os
import random
import resource
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from echolab.load_core import PATTERN_SIZE, Plan, Reporter, Shared, Stats
from echolab.load_rate import rate_loop
from echolab.load_stream import LongLived

# The signals that stop a run early, whether sent to the parent or to the whole process group
# (Ctrl-C on a terminal, `timeout`, a CI runner's cancel, a closed terminal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def worker_main(plan: Plan, shared: Shared, ready: Any, go: Any, pipe: Connection) -> None:
    """Wait for the start, run the mode's loop, report what it counted.

    A stop signal only raises the shared stop flag (and notes which signal it was): the
    loop sees the flag within 50 ms, abandons what is in flight, and the worker still sends
    its tallies, so a signal to the whole group loses nothing.
    """
    stats = Stats()

    def on_signal(signum: int, frame: object) -> None:
        stats.signal = stats.signal or signum
        shared.stop_flag.value = 1

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    parent = os.getppid()
    try:
        raise_nofile(plan.clients + 64)
        pattern = random.Random(plan.seed * 1009 + plan.index).randbytes(PATTERN_SIZE)
        ready.release()
        while not go.wait(0.5):
            if os.getppid() != parent:  # the parent died before the start
                return
        start = float(shared.start_at.value)
        rep = Reporter(plan, shared, stats, pipe)
        if plan.mode == "rate":
            rate_loop(plan, pattern, stats, rep, start)
        else:
            LongLived(plan, pattern, stats, rep, start).run()
        rep.finish(time.monotonic())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which prints one line
        try:
            pipe.send(("fatal", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        pipe.close()


def raise_nofile(needed: int) -> None:
    """Raise the soft descriptor limit towards the hard one when `needed` exceeds it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError):  # above the kernel's nr_open: keep the soft limit
        pass


def fd_limit() -> int:
    """The most descriptors a worker can get (its hard limit; the soft one is raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        return max(soft, hard)
    try:  # unlimited: the kernel's per-process ceiling decides
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
