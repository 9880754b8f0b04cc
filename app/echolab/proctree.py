"""Processes as /proc shows them: children, state, descriptors, and killing a whole tree.

One place for what restart-check, the load generator, the tests and the benchmark need to know
about the processes they start (no zombie, no leaked descriptor, nothing left behind).
Linux only; standard library only.
"""

from __future__ import annotations

import os
import signal


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


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to a process and every process below it, children first."""
    for child in reversed(descendants_of(pid)):
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
