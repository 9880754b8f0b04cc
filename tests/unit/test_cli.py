"""The command line's parsing: one validation path for flags and ECHOLAB_* variables, bounds,
usage errors (exit 2, one line naming the subcommand)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from echolab import cli
from echolab.errors import EcholabError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("ECHOLAB_"):
            monkeypatch.delenv(var)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Parse `argv`; expect exit 2 and one line on stderr, and return that line."""
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0),
     ("1d", 86400.0), ("0", 0.0), ("2147483", 2147483.0)],
)  # fmt: skip
def test_duration_accepts_units(text: str, seconds: float) -> None:
    assert cli.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "abc", "-1", "nan", "inf", "10x", "1e19", "2147484", "30d", "0.0001", "1e-300"]
)
def test_duration_rejects_nonsense_and_what_no_wait_can_take(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.duration(text)


@pytest.mark.parametrize("text", ["0", "0ms", "0.0009", "1e30"])
def test_timeout_is_never_zero_nor_endless(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.timeout(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7007", ("127.0.0.1", 7007)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:80", ("::1", 80)),
        ("::1:80", ("::1", 80)),
        ("bücher.example:65535", ("bücher.example", 65535)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert cli.parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    ["7007", ":7007", "[]:7007", "host:", "host:70000", "host:0", "[::1]7007", "h:x", "a..b:1",
     "x" * 64 + ".example:1", "a\x00b:1", "\udcff:1", "x" * 254 + ":1"],
)  # fmt: skip
def test_hostport_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_hostport(text)


def test_serve_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.backlog, args.no_reuseaddr) == ("0.0.0.0", 7007, 128, False)
    assert (args.max_children, args.idle_timeout, args.grace) == (512, 300.0, 5.0)
    assert (args.log_level, args.log_format) == ("info", "text")


def test_environment_gives_defaults_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOLAB_PORT", "7100")
    monkeypatch.setenv("ECHOLAB_NO_REUSEADDR", "true")
    monkeypatch.setenv("ECHOLAB_IDLE_TIMEOUT", "30s")
    monkeypatch.setenv("ECHOLAB_LOG_LEVEL", "WARNING")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.port, args.no_reuseaddr, args.idle_timeout) == (7100, True, 30.0)
    assert args.log_level == "warning"
    args = cli.build_parser().parse_args(["serve", "--port", "7200"])
    assert args.port == 7200


# Every bounded option, with a value out of bounds: a usage error by flag and by variable
# alike, naming the subcommand.
BAD_VALUES = [
    ("serve", "--port", "65536"),
    ("serve", "--backlog", "0"),
    ("serve", "--backlog", "2147483648"),
    ("serve", "--max-children", "4194305"),
    ("serve", "--idle-timeout", "1e19"),
    ("serve", "--grace", "25d"),
    ("serve", "--grace", "-1"),
    ("serve", "--log-level", ""),
    ("serve", "--log-level", "verbose"),
    ("serve", "--log-format", "xml"),
    ("serve", "--host", "x" * 64 + ".example"),
    ("serve", "--host", "a\x00b"),
    ("probe", "--target", "localhost:0"),
    ("probe", "--timeout", "1e30"),
    ("probe", "--timeout", "0"),
    ("probe", "--payload", "1073741825"),
    ("load", "--mode", "bogus"),
    ("load", "--clients", "65536"),
    ("load", "--connections", "0"),
    ("load", "--duration", "0"),
    ("load", "--payload", "0"),
    ("load", "--workers", "1025"),
    ("load", "--seed", "-1"),
    ("load", "--max-error-rate", "nan"),
    ("load", "--timeout", "1e30"),
    ("load", "--target", "ab\u00ad\u200b..:1"),
    ("restart-check", "--host", "x" * 64 + ".example"),
    ("restart-check", "--port", "-1"),
    ("restart-check", "--clients", "0"),
    ("restart-check", "--close-first", "nobody"),
    ("restart-check", "--timeout", "25d"),
    ("restart-check", "--log-cmd", "cat\x00x"),
    ("sockets", "--port", "0"),
]
REQUIRED = {"load": ["--target", "127.0.0.1:7"], "sockets": ["--port", "1"]}


@pytest.mark.parametrize(("command", "flag", "value"), BAD_VALUES)
def test_a_bad_value_is_the_same_usage_error_by_flag_and_by_variable(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    flag: str,
    value: str,
) -> None:
    base = [command] + [x for k, v in REQUIRED.items() if k == command for x in v]
    if flag in base:
        base = [command]
    by_flag = usage_error(capsys, [*base, f"{flag}={value}"])
    assert by_flag.startswith(f"echolab {command}: error: argument {flag}: ")
    if "\x00" in value:
        return  # the environment cannot hold a NUL byte
    var = "ECHOLAB_" + flag.lstrip("-").upper().replace("-", "_")
    monkeypatch.setenv(var, value)
    by_var = usage_error(capsys, base)
    assert by_var.startswith(f"echolab {command}: error: {var}={value!r}: ")
    # The same check said the same thing.
    assert by_flag.split(": ", 3)[3] == by_var.split(": ", 3)[3]


@pytest.mark.parametrize(
    ("var", "value"), [("ECHOLAB_NO_REUSEADDR", "maybe"), ("ECHOLAB_LOG_FORMAT", "xml")]
)
def test_bad_environment_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    line = usage_error(capsys, ["serve"])
    assert line.startswith(f"echolab serve: error: {var}=")


@pytest.mark.parametrize(
    ("var", "value"),
    [("ECHOLAB_BACKLOG", "0"), ("ECHOLAB_MODE", "bogus"), ("ECHOLAB_GRACE", "-3"),
     ("ECHOLAB_LOG_FORMAT", "xml"), ("ECHOLAB_JSON_FILE", "/nonexistent/x.json")],
)  # fmt: skip
def test_a_subcommand_reads_only_its_own_variables(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    if var != "ECHOLAB_JSON_FILE":  # that one is sockets' own
        assert cli.build_parser().parse_args(["sockets", "--port", "1"]).port == 1
    assert cli.build_parser().parse_args(["probe"]).target == ("127.0.0.1", 7007)


def test_a_flag_wins_and_its_variable_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOLAB_PORT", "not a port")
    assert cli.build_parser().parse_args(["serve", "--port", "1"]).port == 1


def test_a_required_option_can_come_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOLAB_TARGET", "[::1]:7007")
    assert cli.build_parser().parse_args(["load"]).target == ("::1", 7007)
    monkeypatch.setenv("ECHOLAB_PORT", "9")
    assert cli.build_parser().parse_args(["sockets"]).port == 9


def test_a_missing_required_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["load"])
    assert line.startswith("echolab load: error: the following arguments are required: --target")


def test_exclusive_options_exclude_their_variables_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ECHOLAB_CONNECTIONS", "5")
    args = cli.build_parser().parse_args(["load", "--target", "h:1", "--duration", "1"])
    assert (args.connections, args.duration) == (None, 1.0)  # the flag wins for the group
    monkeypatch.setenv("ECHOLAB_DURATION", "1")
    line = usage_error(capsys, ["load", "--target", "h:1"])
    assert "ECHOLAB_CONNECTIONS and ECHOLAB_DURATION exclude each other" in line


def test_workers_default_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["load", "--target", "h:1"])
    assert args.workers == len(os.sched_getaffinity(0))
    monkeypatch.setenv("ECHOLAB_WORKERS", "3")
    assert cli.build_parser().parse_args(["load", "--target", "h:1"]).workers == 3


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "99999"], ["serve", "--backlog", "0"], ["serve", "--bogus"], ["nope"], []],
)
def test_bad_arguments_exit_2_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("echolab") and "--help" in line


def test_help_names_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for var in ("HOST", "PORT", "BACKLOG", "NO_REUSEADDR", "MAX_CHILDREN", "IDLE_TIMEOUT",
                "GRACE", "LOG_LEVEL", "LOG_FORMAT"):  # fmt: skip
        assert f"ECHOLAB_{var}" in out
    assert "SIGHUP" in out and "<unset>" not in out


def test_json_destination_is_checked_before_the_run(tmp_path: Path) -> None:
    from echolab.report import check_writable

    check_writable(str(tmp_path / "new.json"))
    assert not (tmp_path / "new.json").exists()  # checked, not left behind
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    check_writable(str(existing))
    assert existing.read_text() == "keep"  # not truncated by the check
    for bad in (str(tmp_path / "missing" / "x.json"), str(tmp_path), "", "a\x00b"):
        with pytest.raises(EcholabError) as exc:
            check_writable(bad)
        assert exc.value.code == 2


def test_an_option_and_its_variable_take_the_same_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = cli.CommandParser(prog="echolab demo")
    p.option("--interval", type=cli.timeout, default=1.0, help="how often")
    assert p.parse_args([]).interval == 1.0
    monkeypatch.setenv("ECHOLAB_INTERVAL", "0")
    with pytest.raises(SystemExit) as exc:
        p.parse_args([])
    assert exc.value.code == 2
    assert "echolab demo: error: ECHOLAB_INTERVAL='0'" in capsys.readouterr().err


def test_an_empty_variable_leaves_an_option_that_is_off_by_default_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Compose passes for an unset `${VAR:-}`: the open loop stays off, no limit is set."""
    for var in ("ECHOLAB_RATE", "ECHOLAB_MAX_P99", "ECHOLAB_MAX_P999", "ECHOLAB_CONNECTIONS"):
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("ECHOLAB_DURATION", "2s")  # excludes --connections: an empty one is unset
    args = cli.build_parser().parse_args(["load", "--target", "127.0.0.1:7007"])
    assert args.rate is None and args.max_p99 is None and args.max_p999 is None
    assert args.connections is None and args.duration == 2.0


def test_an_empty_variable_for_an_option_with_a_default_is_still_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ECHOLAB_LOG_LEVEL", "")
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["serve"])
    assert exc.value.code == 2
    assert "ECHOLAB_LOG_LEVEL=''" in capsys.readouterr().err


def test_a_blank_log_command_is_an_error_and_a_blank_variable_leaves_it_unset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = usage_error(capsys, ["restart-check", "--log-cmd", "  "])
    assert line == (
        "echolab restart-check: error: argument --log-cmd: an empty command "
        "(see `echolab restart-check --help`)"
    )
    monkeypatch.setenv("ECHOLAB_LOG_CMD", "")  # Compose's unset `${VAR:-}`
    assert cli.build_parser().parse_args(["restart-check"]).log_cmd is None
    monkeypatch.setenv("ECHOLAB_LOG_CMD", "journalctl --unit echolab --output cat")
    args = cli.build_parser().parse_args(["restart-check"])
    assert args.log_cmd == "journalctl --unit echolab --output cat"
