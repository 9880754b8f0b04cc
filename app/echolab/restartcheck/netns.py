"""A network namespace of the run's own: a fresh loopback, and per-namespace sysctls set freely.

`net.ipv4.tcp_migrate_req` decides what happens to connections waiting in a closing listener's
accept queue when another listener shares the port with SO_REUSEPORT (ip-sysctl.rst: 0, they
are reset; 1, they move to another listener of the group). It belongs to the network namespace,
so the reuseport strategy sets it in one of its own instead of changing the host's.

unshare(2) with CLONE_NEWNET moves the calling thread only: call enter() from the main thread
before any thread or process of the run starts (they inherit it). Needs root (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from echolab.errors import EXIT_OS_ERROR, EXIT_PERMISSION, EcholabError

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def can_enter() -> bool:
    """Whether this process may make network namespaces (root)."""
    return os.geteuid() == 0


def enter() -> None:
    """Move this process into a new network namespace and bring its loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise EcholabError(
            f"cannot make a network namespace: {os.strerror(code)} (needs root)",
            EXIT_PERMISSION if code in (errno.EPERM, errno.EACCES) else EXIT_OS_ERROR,
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def migrate_req() -> int | None:
    """net.ipv4.tcp_migrate_req in this namespace (None when the kernel has no such knob)."""
    try:
        with open(MIGRATE_REQ, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def set_migrate_req(value: int) -> None:
    try:
        with open(MIGRATE_REQ, "w", encoding="ascii") as f:
            f.write(str(value))
    except OSError as exc:
        raise EcholabError(
            f"cannot set net.ipv4.tcp_migrate_req: {exc.strerror} (Linux 5.14 or later, root)",
            EXIT_PERMISSION,
        ) from None
