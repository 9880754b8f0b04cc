"""Run role inputs through the roles' own validation and templates, on the controller only.

Each case becomes one play on `localhost`: the role's argument spec (ansible.builtin.
validate_argument_spec with the role's meta/argument_specs.yml), then the role's bound checks
(tasks/validate.yml, when the role has one), then the role's unit templates and argument
vectors rendered. A case ends in exactly one of: a failure of the spec or of the bound checks
(a clean validation failure, with its message), a failure anywhere else (a bug), or rendered
output. Every string a case sets is tagged !unsafe, so Ansible never evaluates it as a
template: it arrives as text, the way an inventory's hostile value would. (Strings without a
template marker go untagged: Ansible never evaluates those.)

The roles come from ECHOLAB_COLLECTION_DIR (default: this repository's ansible/), so the same
tests can be pointed at another tree, e.g. an older checkout's, to show what it lets through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
COLLECTION_DIR = Path(os.environ.get("ECHOLAB_COLLECTION_DIR", HERE.parent)).resolve()
ANSIBLE_BIN = Path(sys.executable).parent
VALIDATION_TASKS = ("Validate the arguments", "Check the inputs against their bounds")

# What each role renders, by the variable or template that renders it.
RENDERED = {
    "echo_server": {
        "service": "templates/echolab.service.j2",
        "socket": "templates/echolab.socket.j2",
    },
    "echo_loadgen": {},
}
RENDERED_VARS = {
    "echo_server": ["__echo_server_restart_argv", "__echo_server_environment"],
    "echo_loadgen": ["__echo_loadgen_argv"],
}


@dataclass
class Outcome:
    """How one case ended."""

    case: dict[str, Any]
    failed_task: str | None
    message: str
    rendered: dict[str, Any]

    @property
    def rejected(self) -> bool:
        """Ended in a clean validation failure (the spec or the bound checks)."""
        return self.failed_task in VALIDATION_TASKS


class Unsafe(str):
    """A case's string: dumped as `!unsafe`, so Ansible takes it as data, never a template."""

    __slots__ = ()


def _unsafe(dumper: yaml.SafeDumper, value: Unsafe) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", str(value), style='"')


def _mark_unsafe(value: Any) -> Any:
    """Every string inside a case's value, marked Unsafe (dict keys stay plain)."""
    if isinstance(value, str):
        # Only text with a template marker needs the tag (Ansible's loader also mistakes some
        # tagged scalars for other YAML types: `!unsafe ""` loads as null, `!unsafe "="` fails).
        return Unsafe(value) if any(m in value for m in ("{{", "{%", "{#")) else value
    if isinstance(value, list):
        return [_mark_unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: _mark_unsafe(v) for k, v in value.items()}
    return value


class PlaybookDumper(yaml.SafeDumper):
    """The harness's playbook: its own templates plain, the cases' strings !unsafe."""


PlaybookDumper.add_representer(Unsafe, _unsafe)


def role_dir(role: str) -> Path:
    return COLLECTION_DIR / "roles" / role


def role_defaults(role: str) -> dict[str, Any]:
    with (role_dir(role) / "defaults" / "main.yml").open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f) or {}
    return data


def _playbook(role: str, out: Path) -> list[dict[str, Any]]:
    """One play over every case (each an inventory host on the local connection)."""
    rd = role_dir(role)
    render = {
        name: f"{{{{ lookup('ansible.builtin.template', '{rd / path}') }}}}"
        for name, path in RENDERED[role].items()
    }
    # A variable the roles under test lack renders as null: the properties then say what is
    # missing, instead of the whole rendering failing.
    render.update({name: f"{{{{ {name} | default(none) }}}}" for name in RENDERED_VARS[role]})
    block: list[dict[str, Any]] = [
        {
            "name": "Validate the arguments",
            "ansible.builtin.validate_argument_spec": {
                "argument_spec": f"{{{{ (lookup('ansible.builtin.file', "
                f"'{rd / 'meta' / 'argument_specs.yml'}') | from_yaml)"
                ".argument_specs.main.options }}",
            },
        },
    ]
    if (rd / "tasks" / "validate.yml").exists():
        block.append(
            {
                "name": "Run the role's bound checks",
                "ansible.builtin.include_tasks": str(rd / "tasks" / "validate.yml"),
            }
        )
    block.append({"name": "Render", "ansible.builtin.set_fact": {"__case_rendered": render}})
    failed = {
        "task": "{{ ansible_failed_task.name }}",
        "msg": "{{ ansible_failed_result.msg | default('') }}",
    }
    outcomes = (
        "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='__case_outcome',"
        " default={'failed': {'task': 'unknown', 'msg': 'no outcome'}, 'rendered': {}})"
        " | list | to_json }}"
    )
    return [
        {
            "name": "Validate and render every case",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Load the role's internal variables",
                    "ansible.builtin.include_vars": {"file": str(rd / "vars" / "main.yml")},
                },
                {
                    "name": "Validate and render",
                    "block": [
                        *block,
                        {
                            "name": "Record the rendering",
                            "ansible.builtin.set_fact": {
                                "__case_outcome": {
                                    "failed": {},
                                    "rendered": "{{ __case_rendered }}",
                                }
                            },
                        },
                    ],
                    "rescue": [
                        {
                            "name": "Record the failure",
                            "ansible.builtin.set_fact": {
                                "__case_outcome": {"failed": failed, "rendered": {}}
                            },
                        }
                    ],
                },
                {
                    "name": "Write the outcomes",
                    "ansible.builtin.copy": {"content": outcomes, "dest": str(out), "mode": "0600"},
                    "run_once": True,
                },
            ],
        }
    ]


def _message(msg: str | list[str]) -> str:
    """A failure's message; the bound checks give a list, one line per input."""
    return "\n".join(msg) if isinstance(msg, list) else msg


def run_cases(role: str, cases: list[dict[str, Any]], workdir: Path) -> list[Outcome]:
    """Run every case in one ansible-playbook process; one Outcome per case, in order."""
    out = workdir / "outcomes.json"
    names = [f"case{i:04d}" for i in range(len(cases))]
    inventory = {
        "all": {
            # role_path: what a role's own tasks see (defaults may refer to it).
            "vars": {
                **role_defaults(role),
                "ansible_connection": "local",
                "role_path": str(role_dir(role)),
            },
            "hosts": {name: _mark_unsafe(case) for name, case in zip(names, cases, strict=True)},
        }
    }
    (workdir / "inventory.yml").write_text(
        yaml.dump(inventory, Dumper=PlaybookDumper, sort_keys=False), encoding="utf-8"
    )
    playbook = workdir / "cases.yml"
    playbook.write_text(
        yaml.dump(_playbook(role, out), Dumper=PlaybookDumper, sort_keys=False), encoding="utf-8"
    )
    result = subprocess.run(
        [
            str(ANSIBLE_BIN / "ansible-playbook"),
            "-i",
            str(workdir / "inventory.yml"),
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=ansible_env(workdir),
        timeout=600,
        check=False,
    )
    assert out.exists(), f"the harness wrote no outcome:\n{result.stdout[-3000:]}\n{result.stderr}"
    raw = json.loads(out.read_text(encoding="utf-8"))
    assert len(raw) == len(cases), result.stdout[-3000:]
    return [
        Outcome(
            case=case,
            failed_task=item["failed"].get("task"),
            message=_message(item["failed"].get("msg", "")),
            rendered=item["rendered"],
        )
        for case, item in zip(cases, raw, strict=True)
    ]


def ansible_env(workdir: Path) -> dict[str, str]:
    """An environment with the roles under test as the collection echolab.lab."""
    collections = workdir / "collections"
    link = collections / "ansible_collections" / "echolab" / "lab"
    if not link.exists():
        link.parent.mkdir(parents=True)
        link.symlink_to(COLLECTION_DIR)
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_FORKS="8",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
        ANSIBLE_HOME=str(workdir / "home"),
        PATH=f"{ANSIBLE_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env
