"""What every role input must come to: a clean validation failure, or output that says exactly
what the inputs say and nothing more.

`check_server` reads a rendered echolab.service the way systemd does (systemd.syntax(7): one
setting per line, double-quoted words with backslash escapes, `%%` for a literal `%`, and on
command lines `$$` for a literal `$`) and holds it to the inputs; `check_loadgen` does the same
for the load run's argument vector.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from ansible.module_utils.common.validation import check_type_int
from ansible.module_utils.parsing.convert_bool import boolean
from harness import Outcome

ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "s": " "}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def as_bool(value: Any) -> bool:
    """What argument validation and `| bool` make of a boolean input (Ansible's own rule)."""
    return boolean(value, strict=True)


def as_int(value: Any) -> int:
    """What argument validation makes of an integer input ("1e3" is 1000 to it)."""
    return int(check_type_int(value))


def systemd_words(value: str, *, command: bool) -> list[str]:
    """Split a unit setting's value into words as systemd does (quotes, escapes, specifiers)."""
    words: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        word, quote = [], value[i] if value[i] == '"' else ""
        i += 1 if quote else 0
        while i < len(value) and (value[i] != quote if quote else value[i] != " "):
            ch = value[i]
            if ch == "\\":
                assert i + 1 < len(value), f"a dangling backslash in {value!r}"
                assert value[i + 1] in ESCAPES, f"an unknown escape in {value!r}"
                word.append(ESCAPES[value[i + 1]])
                i += 2
                continue
            if ch in "%$" and (ch == "%" or command):
                assert value[i + 1 : i + 2] == ch, f"an unescaped {ch} in {value!r}"
                i += 1
            word.append(ch)
            i += 1
        if quote:
            assert i < len(value), f"an unterminated quote in {value!r}"
            i += 1
        words.append("".join(word))
    return words


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting of a unit file, in order."""
    assert not CONTROL.search(text), f"a control character in the unit:\n{text}"
    settings, section = [], ""
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert re.fullmatch(r"\[[A-Za-z]+\]", line), f"a broken section line: {line!r}"
            section = line
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z0-9]+", key), f"not a setting: {line!r}"
        assert not line.endswith("\\"), f"a continued line: {line!r}"
        settings.append((section, key, value))
    return settings


def check_outcome(outcome: Outcome) -> None:
    """A case ends in validation (spec or bound checks) or in rendered output, nothing else."""
    assert outcome.failed_task is None or outcome.rejected, (
        f"{outcome.case!r} failed outside validation, at {outcome.failed_task!r}: {outcome.message}"
    )
    if outcome.rejected:
        assert outcome.message.strip(), f"{outcome.case!r}: a validation failure without a message"
        assert len(outcome.message) < 4000, f"{outcome.case!r}: an unreadable message"


def effective(case: dict[str, Any], defaults: dict[str, Any], name: str) -> Any:
    return case.get(name, defaults[name])


def check_server(outcome: Outcome, defaults: dict[str, Any], reference: list[Any]) -> None:
    """A rendered echo_server unit holds exactly the reference's settings, with the inputs'
    values; `reference` is the key sequence of a default rendering with the same socket mode."""
    check_outcome(outcome)
    if outcome.rejected:
        return
    case = outcome.case
    v = {name: effective(case, defaults, name) for name in defaults}
    settings = unit_settings(outcome.rendered["service"])
    assert [(s, k) for s, k, _ in settings] == reference, (
        f"{case!r}: the unit's settings differ from the template's:\n{outcome.rendered['service']}"
    )
    values: dict[str, list[str]] = {}
    for _, key, value in settings:
        values.setdefault(key, []).append(value)
    words = [systemd_words(item, command=False) for item in values["Environment"]]
    assert all(len(w) == 1 for w in words), values["Environment"]
    env = dict(w[0].split("=", 1) for w in words)
    assert len(env) == len(words) == 9, values["Environment"]
    install = str(v["echo_server_install_dir"])
    port = as_int(v["echo_server_port"])
    assert 1 <= port <= 65535
    assert env["ECHOLAB_HOST"] == str(v["echo_server_host"])
    assert env["ECHOLAB_PORT"] == str(port)
    assert env["ECHOLAB_NO_REUSEADDR"] == ("0" if as_bool(v["echo_server_reuseaddr"]) else "1")
    assert 1 <= int(env["ECHOLAB_BACKLOG"]) <= 65535
    assert 1 <= int(env["ECHOLAB_MAX_CHILDREN"]) <= 65536
    for name in ("ECHOLAB_IDLE_TIMEOUT", "ECHOLAB_GRACE"):
        seconds = float(env[name])
        assert math.isfinite(seconds) and 0 <= seconds <= 86400, (name, env[name])
    assert env["ECHOLAB_LOG_LEVEL"] in {"debug", "info", "warning", "error"}
    assert env["ECHOLAB_LOG_FORMAT"] in {"text", "json"}
    bin_ = f"{install}/venv/bin/echolab"
    assert systemd_words(values["ExecStart"][0], command=True) == [bin_, "serve"]
    post = systemd_words(values["ExecStartPost"][0], command=True)
    assert post[:2] == [f"{install}/wait-ready", bin_] and len(post) == 4, post
    assert 1 <= int(post[3]) <= 3600
    # The restart command restart-check runs through the shell: the static script and the unit,
    # or for a reload `systemctl reload` and the unit, with the journal's reader as its log.
    restart = outcome.rendered["__echo_server_restart_argv"]
    command = restart[restart.index("--restart-cmd") + 1]
    unit = f"{v['echo_server_service_name']}.service"
    strategy = restart[restart.index("--strategy") + 1]
    assert strategy == str(v["echo_server_verify_strategy"]), restart
    if strategy == "reload":
        assert shlex.split(command) == ["systemctl", "reload", "--", unit], command
        log = restart[restart.index("--log-cmd") + 1]
        assert shlex.split(log) == [f"{install}/service-log", unit], log
    else:
        assert shlex.split(command) == [f"{install}/restart-service", unit], command
        assert "--log-cmd" not in restart, restart
    assert values["User"] == [str(v["echo_server_user"])]
    assert values["Group"] == [str(v["echo_server_group"])]
    assert values["PrivateUsers"] == ["yes" if as_bool(v["echo_server_private_users"]) else "no"]
    if as_bool(v["echo_server_socket_activation"]):
        socket = unit_settings(outcome.rendered["socket"])
        listen = [value for _, key, value in socket if key == "ListenStream"]
        assert len(listen) == 1 and listen[0].endswith(f":{port}"), listen


def check_loadgen(outcome: Outcome, defaults: dict[str, Any]) -> None:
    """A load run's argument vector says what the inputs say, within their bounds."""
    check_outcome(outcome)
    if outcome.rejected:
        return
    argv = outcome.rendered["__echo_loadgen_argv"]
    assert all(isinstance(a, str) and not CONTROL.search(a) for a in argv), argv
    assert argv[1] == "load" and argv.count("--no-progress") == 1, argv
    rest = [a for a in argv[2:] if a != "--no-progress"]
    assert all(flag.startswith("--") for flag in rest[::2]) and len(rest) % 2 == 0, argv
    opts = dict(zip(rest[::2], rest[1::2], strict=True))
    assert len(opts) == len(rest) // 2, f"a repeated option: {argv}"
    host, _, port = opts["--target"].rpartition(":")
    assert host and 1 <= int(port) <= 65535, argv
    assert opts["--mode"] in {"rate", "stream", "hold"}
    assert 1 <= int(opts["--clients"]) <= 65536
    assert 1 <= int(opts["--payload"]) <= 16777216
    assert 0 <= float(opts["--max-error-rate"]) <= 1
    assert opts["--workers"] == "auto" or 1 <= int(opts["--workers"]) <= 1024
    for flag, most in (("--timeout", 3600.0), ("--duration", 86400.0)):
        if flag in opts:
            match = DURATION.match(opts[flag])
            assert match, (flag, opts[flag])
            assert 0 < float(match.group(1)) * UNITS[match.group(2)] <= most, (flag, opts[flag])
    assert ("--connections" in opts) != ("--duration" in opts), argv
    assert "--rate" not in opts or 1 <= int(opts["--rate"]) <= 10_000_000, argv
    for flag in ("--max-p99", "--max-p999"):
        assert flag not in opts or 0 < float(opts[flag]) <= 3_600_000, argv
