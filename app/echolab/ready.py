"""The ready line: the one contract between `echolab serve` and everything that waits for it.

`echolab serve` logs `listening on HOST:PORT (details)` once its signal handlers are installed
and its listeners are watched; tools wait for that line before they connect, signal the server
or count its descriptors (restart-check, the tests, the benchmark, the lab). The benchmark's
peer servers print the same words. This module formats and parses it; it imports nothing, so
the lean serving process can use it too.
"""

READY_PREFIX = "listening on "


def format_ready(address: str, details: str = "") -> str:
    """The ready line for HOST:PORT (as netaddr.format_address writes it) and its details."""
    return f"{READY_PREFIX}{address}" + (f" ({details})" if details else "")


def parse_ready(line: str) -> tuple[str, int] | None:
    """(host, port) from a line holding the ready line, else None.

    The host comes back without the brackets of an IPv6 literal: `listening on [::]:7007` gives
    ("::", 7007). A log prefix before the words (a timestamp, a PID) is allowed.
    """
    at = line.find(READY_PREFIX)
    if at < 0:
        return None
    words = line[at + len(READY_PREFIX) :].split(None, 1)
    if not words:
        return None
    host, sep, port = words[0].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 literal without brackets is not what serve writes
    return host, int(port)
