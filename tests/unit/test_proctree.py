"""Process-tree helpers, on real processes started for the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from echolab.proctree import (
    ProcessGroup,
    children_of,
    descendants_of,
    group_members,
    kill_tree,
    parent_of,
    process_state,
    signal_process,
)

# A parent that starts a child that starts a grandchild, all sleeping, in a session of its own.
TREE = (
    "import subprocess, sys, time\n"
    "code = 'import subprocess, sys, time; "
    'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); time.sleep(60)\'\n'
    "subprocess.Popen([sys.executable, '-c', code])\n"
    "time.sleep(60)\n"
)


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_tree_is_seen_and_killed_whole() -> None:
    proc = subprocess.Popen([sys.executable, "-c", TREE], start_new_session=True)
    try:
        _wait(lambda: len(descendants_of(proc.pid)) == 2)
        (child,) = children_of(proc.pid)
        (grandchild,) = children_of(child)
        assert descendants_of(proc.pid) == [child, grandchild]
        assert parent_of(grandchild) == child
        assert sorted(group_members(proc.pid)) == sorted([proc.pid, child, grandchild])
        kill_tree(proc)
        proc.wait(5)
        _wait(lambda: process_state(grandchild) in ("", "Z") and process_state(child) in ("", "Z"))
        _wait(lambda: not group_members(proc.pid))
    finally:
        kill_tree(proc)


def test_state_of_a_zombie_and_of_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait(lambda: process_state(proc.pid) == "Z")
    assert proc.pid in children_of(os.getpid())
    assert proc.pid not in children_of(os.getpid(), zombies=False)
    proc.wait()
    assert process_state(proc.pid) == ""
    assert parent_of(proc.pid) is None


def test_a_group_whose_id_names_another_process_is_never_signalled() -> None:
    """The recorded leader's start time is the group's identity: a process now holding the
    number with another start time (a reused PID) is left alone."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)  # fmt: skip
    try:
        group = ProcessGroup.of(proc)
        assert group.members() == [proc.pid]
        stranger = ProcessGroup(proc.pid)
        assert stranger.started is not None
        stranger.started -= 1  # as if the number had belonged to an earlier process
        assert stranger.members() == []
        assert stranger.signal(signal.SIGKILL) == 0
        assert process_state(proc.pid) not in ("", "Z")  # untouched
        assert group.signal(signal.SIGKILL) == 1
        proc.wait(5)
        assert group.members() == []
    finally:
        kill_tree(proc)


def test_kill_tree_of_a_waited_for_popen_signals_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    kill_tree(proc)  # its PID may name another process by now: nothing is sent
    assert not signal_process(proc.pid, signal.SIGKILL, None)
