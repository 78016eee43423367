"""What installing the watcher on a host writes (pure: no pyinfra): the host's own inventory (its
data minus connection keys, secrets by reference to copies on the host), the EnvironmentFile of
secrets named by variable, the watcher's command line and the systemd service unit.

The unit holds no secret and no value from host data other than paths and names: values go
through systemd's escaping (tasks/core/quoting.py) and a control character anywhere is refused.
The service restarts on failure (``Restart=on-failure``); stopping it stops the whole control
group (``KillMode=control-group``: the streams and any pyinfra child), after the watcher's own
clean stop (SIGTERM: it ends its children's process groups within 20 s). Where systemd is not
PID 1, a supervisor loop (:func:`supervisor_script`) gives the same restart policy.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tasks.core.quoting import argv_line, check_rendered, one_line, systemd_exec_word, systemd_value, word

if TYPE_CHECKING:
    from tasks.settings.watcher import WatcherSettings

# pyinfra's connection data: the connectors' own keys and its global arguments (``_sudo``,
# ``_su_user``, ``_env``, ...). The host's own inventory is @local: none of them applies.
CONNECTION_PREFIXES = ("ssh_", "docker_", "dockerssh_", "chroot_", "winrm_", "podman_", "local_")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STOP_SECONDS = 40  # the watcher ends its children within 20 s of SIGTERM


def is_connection_key(key: str) -> bool:
    return key.startswith("_") or key.startswith(CONNECTION_PREFIXES)


def host_data(data: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The host's data for its own @local inventory: without connection keys, without the
    ``watcher`` block and the ``exclude`` blocks (nor their ``_defaults``)."""
    dropped = {"watcher", *exclude}
    dropped |= {f"{key}_defaults" for key in dropped}
    return {k: v for k, v in data.items() if not is_connection_key(k) and k not in dropped}


def _secret_ref(value: Any) -> tuple[str, str] | None:
    """``("file", path)`` or ``("env", name)`` when ``value`` is a secret reference (the one-key
    mapping tasks/settings/types.py SecretRef reads)."""
    if isinstance(value, Mapping) and len(value) == 1:
        ((kind, where),) = value.items()
        if kind in ("file", "env") and isinstance(where, str) and where:
            return kind, where
    return None


def secret_copy_name(path: str) -> str:
    """The name of a file secret's copy on the host: from its controller path, stable."""
    return "file-" + hashlib.sha256(path.encode()).hexdigest()[:16]


def localize_secrets(data: Any, secrets_dir: str) -> tuple[Any, dict[str, str], list[str]]:
    """``data`` with each file secret's path replaced by its copy's under ``secrets_dir``;
    returns (data, {copy name: controller path}, sorted variable names of env secrets)."""
    files: dict[str, str] = {}
    names: set[str] = set()

    def walk(value: Any) -> Any:
        ref = _secret_ref(value)
        if ref:
            kind, where = ref
            if kind == "file":
                copy = secret_copy_name(where)
                files[copy] = where
                return {"file": f"{secrets_dir}/{copy}"}
            if not ENV_NAME_RE.fullmatch(where):
                raise ValueError(f"env secret {where!r} is not a variable name")
            names.add(where)
            return dict(value)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        return value

    return walk(data), files, sorted(names)


def inventory_text(data: Mapping[str, Any], source: str) -> str:
    """The host's own inventory: one host, ``@local``, with ``data`` (JSON-typed values only;
    anything else is refused, naming its key)."""
    for key, value in data.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"host data {key!r} is a {type(value).__name__}: the host's own inventory takes "
                "JSON values only (exclude it: watcher.exclude)"
            ) from None
    document = json.dumps(dict(data), sort_keys=True)
    text = (
        f"# The watcher's inventory on this host, written by deploys/install_watcher.py from "
        f"{one_line(source, 'host name')}'s data\n"
        "# (connection keys left out; secrets by reference to this host's copies). Overwritten on each deploy.\n"
        "import json\n\n"
        f"hosts = [('@local', json.loads({document!r}))]\n"
    )
    return check_rendered(text, "watcher: the inventory")


def env_file_text(values: Mapping[str, str]) -> str:
    """systemd's EnvironmentFile: ``NAME="value"`` lines (``\\``, ``"`` and ``$`` escaped).
    A value holding a control character is refused, naming the variable only."""
    lines = ["# Secrets named by variable in the host's data; written by deploys/install_watcher.py."]
    for name in sorted(values):
        if not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name")
        value = one_line(values[name], f"env secret {name}")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


def paths(s: WatcherSettings) -> dict[str, str]:
    """Where the install puts things on the host."""
    return {
        "python": f"{s.install_dir}/.venv/bin/python",
        "inventory": f"{s.config_dir}/{s.name}.inventory.py",
        "secrets": f"{s.config_dir}/secrets",
        "env_file": f"{s.config_dir}/secrets/env",
        "group_data": f"{s.install_dir}/inventories/group_data",
        "unit": f"/etc/systemd/system/{s.name}.service",
    }


def watch_argv(s: WatcherSettings) -> list[str]:
    """The watcher's command line on the host: scripts/watch's program, on the host's inventory."""
    p = paths(s)
    argv = [p["python"], "-m", "tasks.watch.program", p["inventory"], "--audit", s.audit_path,
            "--group-data", p["group_data"]]  # fmt: skip
    if s.dry:
        argv.append("--dry")
    for flag, value in (
        ("--grace", s.grace),
        ("--max-concurrent", s.max_concurrent),
        ("--breaker", s.breaker),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for index, arg in enumerate(argv):
        one_line(arg, f"watcher: the command, argument {index}")
    return argv


def service_unit(s: WatcherSettings, env_file: bool) -> str:
    """The supervised service: restarted on failure, its whole control group stopped with it."""
    exec_start = " ".join(systemd_exec_word(arg, "watcher: the command") for arg in watch_argv(s))
    p = paths(s)
    environment = (
        f"EnvironmentFile={systemd_value(p['env_file'], 'watcher.config_dir')}\n" if env_file else ""
    )
    text = f"""[Unit]
Description=Quant remediation watcher ({systemd_value(s.name, "watcher.name")}; @local, deploys/install_watcher.py)
Documentation=file://{systemd_value(s.install_dir, "watcher.install_dir")}/tasks/watch/program.py
After=network-online.target docker.service

[Service]
Type=simple
WorkingDirectory={systemd_value(s.install_dir, "watcher.install_dir")}
ExecStart={exec_start}
Environment=PYTHONUNBUFFERED=1 LANG=C.UTF-8 HOME=/root
{environment}UMask=0077
StandardInput=null
Restart=on-failure
RestartSec={int(s.restart_sec)}
# SIGTERM: the watcher stops its streams and its remediations' process groups, then exits 0;
# whatever is left of the control group after {STOP_SECONDS} s is killed.
KillMode=control-group
TimeoutStopSec={STOP_SECONDS}

[Install]
WantedBy=multi-user.target
"""
    return check_rendered(text, "watcher: the service unit")


def supervisor_paths(s: WatcherSettings) -> dict[str, str]:
    """The supervised process where systemd is not PID 1: its script, pid file and log."""
    return {
        "script": f"{s.install_dir}/supervise-{s.name}.sh",
        "pid_file": f"/run/{s.name}.pid",
        "log": f"{posixpath.dirname(s.audit_path)}/{s.name}.log",
    }


def supervisor_script(s: WatcherSettings, env_file: bool) -> str:
    """The supervisor loop, for a host where systemd is not PID 1 (started in a session of its
    own, ``setsid``): runs the watcher; a non-zero exit restarts it after ``restart_sec`` (as
    ``Restart=on-failure``), a clean exit ends the loop; SIGTERM is passed on to the watcher, waited
    for (it ends its own children), then the loop exits and removes its pid file. Every value is
    one single-quoted word (no expansion)."""
    p, sp = paths(s), supervisor_paths(s)
    env = f"set -a; . {word(p['env_file'])}; set +a\n" if env_file else ""
    text = f"""#!/bin/sh
# The watcher's supervisor where systemd is not PID 1, installed by deploys/install_watcher.py.
# Restarts the watcher after a failure ({int(s.restart_sec)} s); SIGTERM stops it and then itself.
set -u
umask 077
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
LANG=C.UTF-8; HOME=/root; PYTHONUNBUFFERED=1; export LANG HOME PYTHONUNBUFFERED
{env}PIDFILE={word(sp["pid_file"])}
LOG={word(sp["log"])}
cd {word(s.install_dir)} || exit 70
echo $$ >"$PIDFILE"
child=""
sleeper=""
stopping=""
stop() {{
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
    if [ -n "$sleeper" ]; then kill -TERM "$sleeper" 2>/dev/null; fi
}}
trap stop TERM INT HUP
say() {{ printf '%s supervisor: %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }}
while [ -z "$stopping" ]; do
    {argv_line(watch_argv(s))} </dev/null >>"$LOG" 2>&1 &
    child=$!
    say "watcher started (pid $child)"
    rc=0
    while :; do
        wait "$child"; rc=$?
        # a trapped signal interrupts wait: wait again until the watcher has really ended
        if kill -0 "$child" 2>/dev/null; then continue; fi
        break
    done
    child=""
    if [ -n "$stopping" ]; then say "stopped"; break; fi
    if [ "$rc" -eq 0 ]; then say "watcher exited 0: not restarted"; break; fi
    say "watcher exited $rc: restarting in {int(s.restart_sec)} s"
    sleep {int(s.restart_sec)} &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=""
done
rm -f "$PIDFILE"
"""
    return check_rendered(text, "watcher: the supervisor script")
