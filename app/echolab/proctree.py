"""Processes as /proc shows them: children, state, descriptors, and ending a whole tree.

One place for what restart-check, the load generator, the tests and the benchmark need to know
about the processes they start (no zombie, no leaked descriptor, nothing left behind).
Linux only; standard library only.

PID numbers are reused, and soon: pid_max is 32,768 on the machines this was built on and a test
run forks tens of thousands of processes. A signal sent to a number whose process is gone can
hit a stranger (a VM, the Docker daemon, the CI runner). So nothing here signals a bare number:
`kill_tree` pins each process with a pidfd and checks its start time before signalling it, and
`ProcessGroup` signals a group only while the group is still the one that was created.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone.

    The command name may hold spaces and parentheses: split after the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (/proc/PID/stat field 22), or None.

    With the PID it names one process for ever: a reused PID has a later start time.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_state(pid: int) -> str:
    """The one-letter state of a process ('Z' for a zombie), or '' when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else ""


def parent_of(pid: int) -> int | None:
    """The parent PID of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def process_group_of(pid: int) -> int | None:
    """The process group of a process, or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children_of(pid: int, *, zombies: bool = True) -> list[int]:
    """PIDs whose parent is `pid` (without zombies when `zombies` is false)."""
    found = []
    for child in _all_pids():
        fields = _stat_fields(child)
        if fields and int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            found.append(child)
    return found


def descendants_of(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), parents before children."""
    by_parent: dict[int, list[int]] = {}
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields:
            by_parent.setdefault(int(fields[1]), []).append(other)
    out: list[int] = []
    todo = list(by_parent.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(by_parent.get(child, []))
    return out


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (zombies excluded)."""
    members = []
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(other)
    return members


def open_fds(pid: int) -> list[str]:
    """Targets of a process's open descriptors (socket:[inode], pipe:[...], paths)."""
    out: list[str] = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def signal_process(pid: int, sig: int, started: int | None) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `started` (pinned by a
    pidfd while checking, so it cannot be swapped in between). True when sent; None for
    `started` (the process was already gone when it was looked at) sends nothing."""
    if started is None:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if start_time(pid) != started:
            return False  # the number now names another process
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def kill_tree(proc: int | subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to a process and every process below it, children first.

    Give the Popen when there is one: once it has been waited for, its PID may already name
    another process, and its orphans have new parents, so there is nothing left to reach.
    A bare PID must be one the caller knows to be alive (read from /proc or a cgroup just now).
    """
    if isinstance(proc, subprocess.Popen):
        if proc.returncode is not None:
            return
        pid = proc.pid
    else:
        pid = proc
    root_started = start_time(pid)
    if root_started is None:
        return
    tree = [(child, start_time(child)) for child in descendants_of(pid)]
    for child, started in reversed(tree):
        signal_process(child, sig, started)
    signal_process(pid, sig, root_started)


class ProcessGroup:
    """A process group this program created (a Popen with start_new_session=True): signalled
    as a whole, and only while it is still that group.

    Wait for the leader and its number may go to a new process that makes a group of its own
    with the same ID. So the leader's start time is recorded at once (the Popen has not been
    waited for: its PID cannot be reused yet), and a leader with another start time means the
    group is gone. While any member of the old group lives, the kernel keeps its ID from
    being reused, so members without a leader are still ours.
    """

    def __init__(self, leader: int) -> None:
        self.pgid = leader
        self.started = start_time(leader)

    @classmethod
    def of(cls, proc: subprocess.Popen[Any]) -> ProcessGroup:
        """The group led by a Popen started with start_new_session=True, before any wait."""
        return cls(proc.pid)

    def members(self) -> list[int]:
        """The live members, or [] when the group is gone (or its ID names another group)."""
        if self.started is None:
            return []
        now = start_time(self.pgid)
        if now is not None and now != self.started:
            return []
        return group_members(self.pgid)

    def signal(self, sig: int) -> int:
        """Send `sig` to every member; how many there were."""
        members = self.members()
        if members:
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                return 0
        return len(members)
