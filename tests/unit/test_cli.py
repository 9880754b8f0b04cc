"""The command line's parsing: types, environment defaults, usage errors (exit 2)."""

from __future__ import annotations

import argparse

import pytest

from echolab import cli


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)],
)
def test_duration_accepts_units(text: str, seconds: float) -> None:
    assert cli.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1", "nan", "inf", "10x"])
def test_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7007", ("127.0.0.1", 7007)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:80", ("::1", 80)),
        ("::1:80", ("::1", 80)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert cli.parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["7007", ":7007", "host:", "host:70000", "[::1]7007", "h:x"])
def test_hostport_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_hostport(text)


def test_serve_defaults_match_the_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(__import__("os").environ):
        if var.startswith("ECHOLAB_"):
            monkeypatch.delenv(var)
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.backlog, args.no_reuseaddr) == ("0.0.0.0", 7007, 128, False)
    assert (args.max_children, args.idle_timeout, args.grace) == (512, 300.0, 5.0)
    assert (args.log_level, args.log_format) == ("info", "text")


def test_environment_gives_defaults_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOLAB_PORT", "7100")
    monkeypatch.setenv("ECHOLAB_NO_REUSEADDR", "true")
    monkeypatch.setenv("ECHOLAB_IDLE_TIMEOUT", "30s")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.port, args.no_reuseaddr, args.idle_timeout) == (7100, True, 30.0)
    args = cli.build_parser().parse_args(["serve", "--port", "7200"])
    assert args.port == 7200


@pytest.mark.parametrize(
    ("var", "value"),
    [("ECHOLAB_PORT", "seventy"), ("ECHOLAB_NO_REUSEADDR", "maybe"), ("ECHOLAB_GRACE", "-3")],
)
def test_bad_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert var in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "99999"], ["serve", "--backlog", "0"], ["serve", "--bogus"], ["nope"], []],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: echolab" in capsys.readouterr().err
