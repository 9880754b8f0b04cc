"""The ready line: what `echolab serve` logs is what every waiting tool parses."""

from __future__ import annotations

import pytest

from echolab.netaddr import format_address
from echolab.ready import READY_PREFIX, format_ready, parse_ready


@pytest.mark.parametrize(
    ("host", "port"),
    [("127.0.0.1", 7007), ("0.0.0.0", 1), ("::", 65535), ("::1", 0), ("fe80::1%eth0", 80)],
)
def test_format_then_parse_gives_the_address_back(host: str, port: int) -> None:
    line = "2026-11-30T05:00:00.000Z echolab[42] INFO " + format_ready(
        format_address(host, port), "backlog 128; SO_REUSEADDR on"
    )
    assert parse_ready(line) == (host, port)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "listening",
        READY_PREFIX,
        READY_PREFIX + "127.0.0.1",
        READY_PREFIX + "127.0.0.1:",
        READY_PREFIX + ":7007",
        READY_PREFIX + "127.0.0.1:70000",
        READY_PREFIX + "127.0.0.1:http",
        READY_PREFIX + "::1:7007",  # a bare IPv6 literal is ambiguous: serve brackets it
    ],
)
def test_lines_that_are_not_a_ready_line(line: str) -> None:
    assert parse_ready(line) is None


def test_the_peers_line_parses_too() -> None:
    # bench/peers/*.py and bench/c/echo_server.c print the bare words.
    assert parse_ready("listening on 127.0.0.1:40001") == ("127.0.0.1", 40001)
