"""
The files onboarding writes, as text: ``/etc/docker/daemon.json`` (log rotation merged into what
the file holds), the deploy user's sudoers rule, and the stack's compose file.

Pure: settings are handed in, nothing here reads a host.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from tasks.core.mlflow_server import VERSION_LABEL
from tasks.core.quoting import check_rendered, one_line
from tasks.core.sizes import docker_size

if TYPE_CHECKING:  # settings are handed in; core imports no settings layer
    from tasks.core.mlflow_server import ServerSpec
    from tasks.settings.mlflow import MlflowSettings
    from tasks.settings.onboard import OnboardSettings

SUDOERS_HEADER = "# Managed by deploys/onboard_host.py: the deploy user's sudo, these commands only.\n"
COMPOSE_HEADER = "# Rendered by deploys/onboard_host.py from the host's onboard and mlflow settings.\n"


def daemon_json(current_text: str | None, max_size: str, max_file: int) -> tuple[str, bool]:
    """The daemon.json text with log rotation set, other keys kept; (text, changed).

    Another driver's ``log-opts`` are dropped (they would not apply to json-file).
    Raises ValueError when the existing file is not a JSON object."""
    current: dict[str, Any] = {}
    if current_text is not None and current_text.strip():
        current = json.loads(current_text)
        if not isinstance(current, dict):
            raise ValueError("daemon.json is not a JSON object")
    wanted = dict(current)
    wanted["log-driver"] = "json-file"
    opts = dict(current.get("log-opts") or {}) if current.get("log-driver") in (None, "json-file") else {}
    opts.update({"max-size": max_size, "max-file": str(max_file)})
    wanted["log-opts"] = opts
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    return text, wanted != current or current_text is None


# Where a sudo rule's program may live: root-owned system directories (a program the deploy
# user can replace, in its home or the stack folder, would be root for the asking).
SUDO_PROGRAM_DIRS = (
    "/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin", "/usr/lib", "/usr/libexec",
)  # fmt: skip
# Programs that are a root shell (or any command, or any file written) for whoever may run them
# with sudo: shells, privilege tools and command runners, editors and pagers (they shell out),
# interpreters, and file writers. A denylist of the known ways out; review what else you list.
_ESCAPES = {
    "a shell": "sh bash dash zsh ksh ksh93 mksh pdksh csh tcsh fish ash rbash busybox screen tmux",
    "a privilege or command-running tool": "su sudo sudoedit doas pkexec runuser setpriv nsenter "
    "chroot unshare env nohup nice ionice timeout stdbuf xargs find flock watch script expect "
    "strace ltrace gdb setsid taskset chrt capsh start-stop-daemon systemd-run make ssh scp "
    "sftp git crontab at batch",
    "an editor": "vi vim nvim view vimdiff rvim rview ex ed red nano rnano pico emacs emacs-nox "
    "joe jed mcedit micro sensible-editor editor select-editor visudo",
    "a pager": "less more most pg man info sensible-pager pager w3m lynx",
    "an interpreter": "perl ruby irb node nodejs php lua luajit tclsh wish awk gawk mawk nawk "
    "rscript r sqlite3 psql mysql jrunscript java jshell guile bc dc",
    "a program that writes files": "tee dd cp mv install rsync tar zip unzip cpio chmod chown "
    "chgrp ln sed mount umount truncate",
}
_ESCAPE_OF = {name: what for what, names in _ESCAPES.items() for name in names.split()}
_VERSIONED_INTERPRETER = re.compile(r"(python|perl|php|lua|ruby|pypy|node)[0-9.]*(-config)?")
_SUDO_SPECIAL = re.compile(r"[*?\[\]!,:=\\#\"'`$(){}<>|;&]")


def sudo_command_problem(command: str) -> str | None:
    """Why ``command`` is not a narrow sudo rule, or None.

    Narrow: an absolute program in a root-owned system directory (:data:`SUDO_PROGRAM_DIRS`),
    not a shell, editor, pager, interpreter or other known way to a root shell, with its exact
    arguments: at least one (sudo reads a command without arguments as "any arguments"), no
    wildcards (``*``, ``?``, ``[``), no ``ALL``, no sudoers or shell specials, no control
    characters."""
    if not isinstance(command, str) or not command.strip():
        return "must be an absolute command line"
    if any(ord(c) < 32 or ord(c) == 127 for c in command):
        return f"{command!r} holds a control character"
    words = command.split()
    program, args = words[0], words[1:]
    if not program.startswith("/"):
        return f"{command!r} must start with an absolute path"
    if posixpath.normpath(program) != program or program.startswith("//"):
        return f"{command!r}: the program's path must be normalized (no '.', '..' or '//')"
    if posixpath.dirname(program) not in SUDO_PROGRAM_DIRS:
        return (
            f"{command!r}: the program must be in a root-owned system directory "
            f"({', '.join(SUDO_PROGRAM_DIRS)})"
        )
    if "ALL" in words:
        return f"{command!r} is too wide (ALL): sudo stays narrow"
    special = _SUDO_SPECIAL.search(command)
    if special:
        what = "a wildcard" if special.group() in "*?[]" else f"{special.group()!r}"
        return f"{command!r} holds {what}: sudo rules take exact arguments, no wildcards or specials"
    name = posixpath.basename(program).lower()
    escape = _ESCAPE_OF.get(name) or ("an interpreter" if _VERSIONED_INTERPRETER.fullmatch(name) else None)
    if escape:
        return f"{command!r}: {name} is {escape}, a root shell for whoever may run it with sudo"
    if name == "systemctl" and args and args[0] in ("edit", "link", "set-environment", "import-environment"):
        return f"{command!r}: systemctl {args[0]} runs an editor or changes the service environment"
    if not args:
        return (
            f"{command!r} has no arguments, which sudo reads as any arguments: give the exact "
            "arguments allowed"
        )
    return None


def sudoers_text(user: str, commands: tuple[str, ...]) -> str:
    """One NOPASSWD rule for ``user`` listing exactly ``commands`` (none: a comment only)."""
    # A control character in a user or command would start a new rule: refused in each value
    # and in the whole text (the settings refuse it first; this holds for any caller).
    one_line(user, "sudoers: the user")
    for index, command in enumerate(commands):
        one_line(command, f"sudoers: command {index}")
    lines = [SUDOERS_HEADER]
    if commands:
        lines.append(f"{user} ALL=(root) NOPASSWD: " + ", ".join(commands) + "\n")
    return check_rendered("".join(lines), "sudoers")


def default_compose(settings: OnboardSettings, mlflow: MlflowSettings, mlflow_spec: ServerSpec) -> dict:
    """The quant stack's compose document: PostgreSQL, MinIO, Redis and MLflow with the fix.
    Secrets appear only as ${VAR}, read by compose from its environment at `up` time."""
    env = {**mlflow.env, **mlflow_spec.env}
    env.update({name: "${" + name + ":?set " + name + "}" for name in mlflow.secret_env})
    service: dict[str, Any] = {
        "image": mlflow.image,
        "command": list(mlflow_spec.command),
        "environment": env,
        "restart": mlflow.restart_policy,
        # As deploys/fix_mlflow.py writes it: its first run then finds the file as it wants it.
        "labels": {**mlflow.labels, VERSION_LABEL: settings.mlflow_version},
        "depends_on": ["postgres", "minio"],
        "deploy": {
            "resources": {
                "limits": {"memory": docker_size(mlflow.memory_limit)},
                "reservations": {"memory": docker_size(mlflow.memory_reservation)},
            }
        },
    }
    if mlflow.init is not None:
        service["init"] = mlflow.init  # the server under Docker's init, as fix_mlflow sets it
    if mlflow.ports:
        service["ports"] = list(mlflow.ports)
    return {
        "services": {
            "postgres": {
                "image": "postgres:15",
                "restart": "unless-stopped",
                "environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"},
                "volumes": ["./data/postgres:/var/lib/postgresql/data"],
            },
            "minio": {
                "image": "minio/minio:latest",
                "restart": "unless-stopped",
                "command": ["server", "/data"],
                "environment": {
                    "MINIO_ROOT_USER": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}",
                    "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}",
                },
                "volumes": ["./data/minio:/data"],
            },
            "redis": {
                "image": "redis:7",
                "restart": "unless-stopped",
                "command": ["redis-server", "--appendonly", "yes"],
                "volumes": ["./data/redis:/data"],
            },
            mlflow.compose_service: service,
        },
    }


def compose_text(document: Mapping) -> str:
    body = yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return COMPOSE_HEADER + body
