"""Onboarding a fresh Debian host: make it a managed member of the fleet.

    pyinfra -y inventories/production.py deploys/onboard_host.py

On a host pyinfra reaches as root (or as a sudo user with ``_sudo``), from the host's ``onboard``
data (defaults: group_data/all.py ``onboard_defaults``):

1. **Preflight** (one fact, one round trip): apt-get and dpkg present, root reachable, and for the
   chosen Docker engine what it needs (``engine: local`` - systemd as PID 1 to run dockerd;
   ``engine: socket`` - a Docker socket already at ``docker_socket`` and no init system that
   would start a second dockerd). A host that fails preflight gets *only* one failing operation
   naming every problem: nothing else is planned for it, so it is never left half-done, and the
   other hosts proceed.
2. The ``docker`` group (with ``docker_gid``; ``"socket"`` = the gid of the socket, so members
   can use an engine socket shared with the host), then Debian's ``docker.io`` package
   (``apt-get update`` only when a package is missing, no recommends).
3. ``/etc/docker/daemon.json`` with log rotation (``log-driver json-file``, ``log-opts
   max-size/max-file``), merged into what the file already holds; with ``engine: local`` dockerd
   is enabled, running, and restarted when the file changed. Rotation applies to containers
   created after the engine read the file.
4. The deploy user (``server.user``): its authorized keys, in the ``docker`` group, password
   field ``*`` (no password can match, yet the account is not "locked", which sshd with
   ``UsePAM no`` would refuse even for a key).
5. Narrow sudo: ``/etc/sudoers.d/<sudoers_name>`` listing only ``sudo_commands``, uploaded under a
   name sudo ignores, checked with ``visudo -cf``, then moved in place (a bad file never
   becomes active).
6. The stack's directories under ``stack_dir`` and its compose file rendered from settings (the
   MLflow service from the host's ``mlflow`` settings exactly as deploys/fix_mlflow.py computes
   it, so that deploy finds the file already in step; secrets only as ``${VAR}``).
7. **Verification** (read-only, at execution; never counted as a change): the user, keys,
   sudoers, package, daemon.json, group, the user reaching the engine without sudo, the engine's
   logging driver (``engine: local``), the stack files.

A second run reports no changes. With ``engine: socket`` the daemon serving the host is not the
host's own (a container with the engine's socket mounted, a host using a remote engine):
daemon.json is written for when it runs its own, and verification says it cannot prove it.
"""
from __future__ import annotations

import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
from pyinfra import host, logger
from pyinfra.api import FactBase, FileUploadCommand, FunctionCommand, OperationError, StringCommand, deploy, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd

from tasks.checks.runner import Broken, CheckResult, NotYet, RetryPolicy, format_table, run_check

ENGINES = ("local", "socket")
_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SUDOERS_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")  # sudo skips names with '.' or ending in '~'
_KEY_RE = re.compile(r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)"
                     r"@openssh\.com) [A-Za-z0-9+/]+=*( [^\n\r]*)?")
_SIZE_RE = re.compile(r"[1-9][0-9]*[kmg]")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?")
_SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY", re.IGNORECASE)
# sudoers specials that would widen a rule: a command list, aliases, a user/runas spec, escapes.
_SUDO_BAD_RE = re.compile(r"[,:=\\\n\r#]|^ALL$|\bALL\b")

KNOWN_KEYS = (
    "user", "authorized_keys", "exclusive_keys", "shell", "home", "sudo_commands", "sudoers_name",
    "engine", "docker_socket", "docker_gid", "packages", "log_max_size", "log_max_file",
    "stack_dir", "stack_owner", "directories", "compose_file", "compose_project", "compose",
    "mlflow_version", "verify",
)


class OnboardSettingsError(PyinfraError, ValueError):
    def __init__(self, host_name: str, problems: list[str]):
        self.host_name, self.problems = host_name, problems
        super().__init__("\n".join(f"host '{host_name}': onboard.{p}" for p in problems))


@dataclass(frozen=True)
class OnboardSettings:
    authorized_keys: tuple[str, ...]
    user: str = "deploy"
    exclusive_keys: bool = False
    shell: str = "/bin/bash"
    home: str | None = None
    sudo_commands: tuple[str, ...] = ()
    sudoers_name: str = "quant-deploy"
    engine: str = "local"
    docker_socket: str = "/var/run/docker.sock"
    docker_gid: int | str | None = None
    packages: tuple[str, ...] = ("docker.io",)
    log_max_size: str = "10m"
    log_max_file: int = 3
    stack_dir: str = "/opt/quant-stack"
    stack_owner: str | None = None
    directories: tuple[str, ...] = ()
    compose_file: str = "docker-compose.yml"
    compose_project: str = "quant"
    compose: Mapping | None = None
    mlflow_version: str = "2.9.2"
    verify: bool = True

    @property
    def home_dir(self) -> str:
        return self.home or f"/home/{self.user}"

    @property
    def compose_path(self) -> str:
        return self.compose_file if self.compose_file.startswith("/") else f"{self.stack_dir}/{self.compose_file}"

    @property
    def sudoers_path(self) -> str:
        return f"/etc/sudoers.d/{self.sudoers_name}"

    @property
    def owner(self) -> str:
        return self.stack_owner or self.user


def _read_key_source(item: Any, where: str, problems: list[str],
                     read_file: Callable[[str], str]) -> list[str]:
    if isinstance(item, Mapping) and set(item) == {"file"} and isinstance(item["file"], str):
        try:
            text = read_file(item["file"])
        except OSError as exc:
            problems.append(f"{where}: cannot read {item['file']}: {exc.strerror or exc}")
            return []
        keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not keys:
            problems.append(f"{where}: {item['file']} holds no public key")
        return keys
    if isinstance(item, str):
        return [item.strip()]
    problems.append(f'{where}: expected a public key line or {{"file": "/path/on/controller.pub"}}')
    return []


def onboard_settings(host_name: str, data: Mapping[str, Any] | None,
                     read_file: Callable[[str], str] | None = None) -> OnboardSettings:
    """Validate ``onboard_defaults`` merged with the host's ``onboard`` data; every problem at once."""
    data = dict(data or {})
    read_file = read_file or (lambda path: Path(path).expanduser().read_text(encoding="utf-8"))
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in KNOWN_KEYS:
            problems.append(f"{key}: unknown setting (known: {', '.join(KNOWN_KEYS)})")

    user = data.get("user", "deploy")
    if not isinstance(user, str) or not _NAME_RE.fullmatch(user) or user == "root":
        problems.append(f"user: {user!r} is not a valid non-root user name")
    values["user"] = user

    keys: list[str] = []
    raw_keys = data.get("authorized_keys")
    if not raw_keys or not isinstance(raw_keys, (list, tuple)):
        problems.append("authorized_keys: at least one public key is required (a line, or "
                        '{"file": "/path/on/controller.pub"})')
    else:
        for index, item in enumerate(raw_keys):
            for key in _read_key_source(item, f"authorized_keys[{index}]", problems, read_file):
                if "PRIVATE KEY" in key:
                    problems.append(f"authorized_keys[{index}]: is a private key; give the public one")
                elif not _KEY_RE.fullmatch(key):
                    problems.append(f"authorized_keys[{index}]: not an OpenSSH public key line "
                                    f"({key[:30]!r}...)")
                else:
                    keys.append(key)
    values["authorized_keys"] = tuple(dict.fromkeys(keys))

    for key in ("exclusive_keys", "verify"):
        if key in data and not isinstance(data[key], bool):
            problems.append(f"{key}: {data[key]!r} is not true/false")
        elif key in data:
            values[key] = data[key]

    for key in ("shell", "home", "stack_dir", "docker_socket"):
        if key in data and data[key] is not None:
            if not isinstance(data[key], str) or not data[key].startswith("/") or any(
                    c.isspace() or c in "'\"$`\\" for c in data[key]):
                problems.append(f"{key}: {data[key]!r} is not an absolute path without spaces or quotes")
            else:
                values[key] = data[key].rstrip("/") or "/"
    if data.get("home") is None:
        values.pop("home", None)

    commands = data.get("sudo_commands", [])
    if not isinstance(commands, (list, tuple)) or not all(isinstance(c, str) for c in commands):
        problems.append("sudo_commands: expected a list of command lines")
    else:
        for command in commands:
            if not command.startswith("/"):
                problems.append(f"sudo_commands: {command!r} must start with an absolute path")
            elif _SUDO_BAD_RE.search(command):
                problems.append(f"sudo_commands: {command!r} is too wide or not a single command "
                                "(no ALL, no ',', ':', '=', '\\', '#'): sudo stays narrow")
        values["sudo_commands"] = tuple(commands)
    name = data.get("sudoers_name", "quant-deploy")
    if not isinstance(name, str) or not _SUDOERS_NAME_RE.fullmatch(name):
        problems.append(f"sudoers_name: {name!r} must be letters, digits, '-' or '_' "
                        "(sudo ignores files with '.' in their name)")
    values["sudoers_name"] = name

    engine = data.get("engine", "local")
    if engine not in ENGINES:
        problems.append(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    values["engine"] = engine
    gid = data.get("docker_gid")
    if gid is None and engine == "socket":
        gid = "socket"  # a shared socket is usable only by a group with its gid
    if gid is not None and gid != "socket" and (isinstance(gid, bool) or not isinstance(gid, int)
                                                 or not 1 <= gid < 65534):
        problems.append(f"docker_gid: {gid!r} must be a group id, \"socket\" or null")
    values["docker_gid"] = gid

    packages = data.get("packages", ["docker.io"])
    if not isinstance(packages, (list, tuple)) or not packages or not all(
            isinstance(p, str) and _PACKAGE_RE.fullmatch(p) for p in packages):
        problems.append(f"packages: {packages!r} is not a list of Debian package names")
    elif not any(p.split("=")[0] == "docker.io" for p in packages):
        problems.append("packages: must include docker.io (the engine and CLI from Debian)")
    else:
        values["packages"] = tuple(packages)

    size = data.get("log_max_size", "10m")
    if not isinstance(size, str) or not _SIZE_RE.fullmatch(size):
        problems.append(f"log_max_size: {size!r} is not a size like 10m (k, m or g)")
    values["log_max_size"] = size
    count = data.get("log_max_file", 3)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
        problems.append(f"log_max_file: {count!r} must be a whole number from 1 to 100")
    values["log_max_file"] = count

    directories = data.get("directories", [])
    if not isinstance(directories, (list, tuple)) or not all(isinstance(d, str) for d in directories):
        problems.append("directories: expected a list of paths relative to stack_dir")
    else:
        for folder in directories:
            parts = folder.split("/")
            if folder.startswith("/") or ".." in parts or not folder or any(
                    c.isspace() or c in "'\"$`\\" for c in folder):
                problems.append(f"directories: {folder!r} must be a plain relative path inside stack_dir")
        values["directories"] = tuple(directories)

    for key in ("stack_owner",):
        if data.get(key) is not None:
            if not isinstance(data[key], str) or not _NAME_RE.fullmatch(data[key]):
                problems.append(f"{key}: {data[key]!r} is not a user name")
            else:
                values[key] = data[key]
    for key in ("compose_file", "compose_project", "mlflow_version"):
        if key in data:
            if not isinstance(data[key], str) or not re.fullmatch(r"[A-Za-z0-9_./-]+", data[key]) \
                    or ".." in data[key].split("/"):
                problems.append(f"{key}: {data[key]!r} is not valid")
            else:
                values[key] = data[key]
    if data.get("compose") is not None:
        problems.extend(compose_problems(data["compose"]))
        values["compose"] = data["compose"]

    if problems:
        raise OnboardSettingsError(host_name, problems)
    return OnboardSettings(**values)


def compose_problems(document: Any) -> list[str]:
    """A compose document in settings: services as mappings; secret-looking env values only as ${VAR}."""
    if not isinstance(document, Mapping) or not isinstance(document.get("services"), Mapping) \
            or not document["services"]:
        return ["compose: expected a mapping with a non-empty 'services' mapping"]
    problems = []
    for name, service in document["services"].items():
        if not isinstance(service, Mapping):
            problems.append(f"compose.services.{name}: expected a mapping")
            continue
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, Mapping) else (
            (str(e).partition("=")[0], str(e).partition("=")[2]) for e in env)
        for key, value in items:
            if _SECRET_NAME_RE.search(str(key)) and value not in (None, "") and not str(value).startswith("${"):
                problems.append(f"compose.services.{name}.environment.{key}: looks like a secret; "
                                "write ${VAR} and let compose read it from its environment")
    return problems


# -- pure renderings ---------------------------------------------------------------------------

def daemon_json(current_text: str | None, max_size: str, max_file: int) -> tuple[str, bool]:
    """The daemon.json text with log rotation set, other keys kept; (text, changed).
    Raises ValueError when the existing file is not a JSON object."""
    current: dict = {}
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


def sudoers_text(user: str, commands: tuple[str, ...]) -> str:
    lines = ["# Managed by deploys/onboard_host.py: the deploy user's sudo, these commands only.\n"]
    if commands:
        lines.append(f"{user} ALL=(root) NOPASSWD: " + ", ".join(commands) + "\n")
    return "".join(lines)


def default_compose(settings: OnboardSettings, mlflow, mlflow_spec) -> dict:
    """The quant stack's compose document: PostgreSQL, MinIO, Redis and MLflow with the fix.
    Secrets appear only as ${VAR}, read by compose from its environment at `up` time."""
    env = {**mlflow.env, **mlflow_spec.env}
    env.update({name: "${" + name + ":?set " + name + "}" for name in mlflow.secret_env})
    service = {
        "image": mlflow.image,
        "command": list(mlflow_spec.command),
        "environment": env,
        "restart": mlflow.restart_policy,
        "depends_on": ["postgres", "minio"],
        "deploy": {"resources": {"limits": {"memory": _size(mlflow.memory_limit)},
                                 "reservations": {"memory": _size(mlflow.memory_reservation)}}},
    }
    if mlflow.ports:
        service["ports"] = list(mlflow.ports)
    return {
        "name": settings.compose_project,
        "services": {
            "postgres": {"image": "postgres:15", "restart": "unless-stopped",
                         "environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"},
                         "volumes": ["./data/postgres:/var/lib/postgresql/data"]},
            "minio": {"image": "minio/minio:latest", "restart": "unless-stopped",
                      "command": ["server", "/data"],
                      "environment": {"MINIO_ROOT_USER": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}",
                                      "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"},
                      "volumes": ["./data/minio:/data"]},
            "redis": {"image": "redis:7", "restart": "unless-stopped",
                      "command": ["redis-server", "--appendonly", "yes"],
                      "volumes": ["./data/redis:/data"]},
            mlflow.compose_service: service,
        },
    }


def _size(num_bytes: int) -> str:
    from tasks.core.sizes import docker_size
    return docker_size(num_bytes)


def compose_text(document: Mapping) -> str:
    body = yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "# Rendered by deploys/onboard_host.py from the host's onboard and mlflow settings.\n" + body


# -- preflight ---------------------------------------------------------------------------------

class OnboardProbe(FactBase):
    """What onboarding needs to know before it changes anything, in one round trip."""

    def command(self, socket: str):
        q = shlex.quote(socket)
        return "; ".join([
            "echo uid=$(id -u)",
            "echo os_id=$(. /etc/os-release 2>/dev/null; echo ${ID:-unknown})",
            "echo os_like=$(. /etc/os-release 2>/dev/null; echo ${ID_LIKE:-})",
            "echo apt_get=$(command -v apt-get || true)",
            "echo dpkg=$(command -v dpkg || true)",
            "echo pid1=$(cat /proc/1/comm 2>/dev/null || echo unknown)",
            "echo systemd=$([ -d /run/systemd/system ] && echo yes || echo no)",
            "echo sbin_init=$([ -e /sbin/init ] && echo yes || echo no)",
            "echo policy_rc_d=$([ -x /usr/sbin/policy-rc.d ] && echo yes || echo no)",
            f"echo socket=$(stat -c '%F|%g' {q} 2>/dev/null || echo missing)",
            "echo docker_group=$(getent group docker | cut -d: -f3)",
        ])

    def process(self, output):
        values = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        kind, _, gid = values.get("socket", "missing").partition("|")
        values["socket_kind"] = kind
        values["socket_gid"] = int(gid) if gid.isdigit() else None
        values["docker_group_gid"] = int(values["docker_group"]) if values.get("docker_group", "").isdigit() else None
        return values


class GroupByGid(FactBase):
    """The name of the group holding a gid, or None."""

    def command(self, gid: int):
        return f"getent group {int(gid)} | cut -d: -f1 || true"

    def process(self, output):
        name = "".join(output).strip()
        return name or None


def preflight_problems(settings: OnboardSettings, probe: Mapping[str, Any],
                       gid_holder: str | None = None) -> list[str]:
    """Why this host cannot be onboarded as asked (empty: it can). Pure."""
    problems = []
    if probe.get("uid") != "0":
        problems.append(f"commands run as uid {probe.get('uid')}, not root: connect as root, or as a "
                        "sudo user with _sudo=True")
    if not probe.get("apt_get") or not probe.get("dpkg"):
        problems.append(f"no apt-get/dpkg (os {probe.get('os_id')!r}): onboarding installs Debian's "
                        "docker.io and knows Debian and Ubuntu only")
    if settings.engine == "local" and probe.get("systemd") != "yes":
        problems.append(f"engine 'local' runs dockerd under systemd, but systemd is not PID 1 here "
                        f"(PID 1 is {probe.get('pid1')!r}); for a host that uses another engine's "
                        "socket, set onboard.engine to 'socket'")
    if settings.engine == "socket":
        if probe.get("socket_kind") != "socket":
            problems.append(f"engine 'socket' needs a Docker socket at {settings.docker_socket}, "
                            f"found {probe.get('socket_kind') or 'nothing'}")
        if probe.get("systemd") == "yes" or (probe.get("sbin_init") == "yes" and probe.get("policy_rc_d") != "yes"):
            problems.append("engine 'socket' is for hosts without an init system (containers): "
                            "installing docker.io here would start a second dockerd; use engine 'local'")
    gid = wanted_gid(settings, probe)
    if gid is not None and gid_holder not in (None, "docker"):
        problems.append(f"docker_gid {gid} is already the group {gid_holder!r}'s id")
    return problems


def wanted_gid(settings: OnboardSettings, probe: Mapping[str, Any]) -> int | None:
    if settings.docker_gid == "socket":
        return probe.get("socket_gid")
    return settings.docker_gid


# -- operations --------------------------------------------------------------------------------

def _fail(state, host, message: str) -> bool:
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


@operation()
def refuse(problems: list[str]):
    """
    Fail this host with every reason it cannot be onboarded; nothing is changed on it.

    **Example:**

    .. code:: python

        onboard.refuse(problems=["systemd is not PID 1"])
    """
    message = "cannot onboard this host, nothing was changed:\n  " + "\n  ".join(problems)
    if not host.state.is_executing:
        host.log_styled(message, fg="red", log_func=logger.error)
    yield FunctionCommand(_fail, (message,), {})


class GroupGid(FactBase):
    def command(self, group: str):
        return f"getent group {shlex.quote(group)} | cut -d: -f3 || true"

    def process(self, output):
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None


@operation()
def group_gid(group: str, gid: int):
    """
    A group with this gid: created (``groupadd -r``) when missing, ``groupmod -g`` when another.

    **Example:**

    .. code:: python

        onboard.group_gid(group="docker", gid=105)
    """
    current = host.get_fact(GroupGid, group=group)
    if current == gid:
        host.noop(f"group {group} has gid {gid}")
        return
    if current is None:
        yield StringCommand("groupadd", "-r", "--gid", str(gid), shlex.quote(group))
    else:
        yield StringCommand("groupmod", "--gid", str(gid), shlex.quote(group))


@operation()
def docker_daemon_json(max_size: str, max_file: int, path: str = "/etc/docker/daemon.json"):
    """
    Log rotation in the Docker daemon's config, other keys kept.

    **Example:**

    .. code:: python

        onboard.docker_daemon_json(max_size="10m", max_file=3)
    """
    lines = host.get_fact(FileContents, path=path)
    current = None if lines is None else "\n".join(lines) + "\n"
    try:
        text, changed = daemon_json(current, max_size, max_file)
    except ValueError as exc:
        raise OperationError(f"{path}: {exc}; fix or remove it first") from None
    if not changed:
        host.noop(f"{path} rotates logs ({max_size} x {max_file})")
        return
    yield StringCommand("install", "-d", "-m", "0755", str(Path(path).parent))
    yield FileUploadCommand(io.BytesIO(text.encode()), path)
    yield StringCommand("chmod", "0644", path)


@operation()
def sudoers(filename: str, text: str):
    """
    A sudoers.d file, checked with ``visudo -cf`` before it takes effect.

    **Example:**

    .. code:: python

        onboard.sudoers(filename="quant-deploy", text="deploy ALL=(root) NOPASSWD: /usr/bin/true\\n")
    """
    path = f"/etc/sudoers.d/{filename}"
    lines = host.get_fact(FileContents, path=path)
    if lines is not None and "\n".join(lines) + "\n" == text:
        host.noop(f"{path} is as wanted")
        return
    staged = f"/etc/sudoers.d/.{filename}.staged"  # a name with '.' is never read by sudo
    yield FileUploadCommand(io.BytesIO(text.encode()), staged)
    yield StringCommand(
        f"chown root:root {staged} && chmod 0440 {staged} && "
        f"(visudo -cf {staged} || (rm -f {staged}; echo 'sudoers text rejected by visudo' >&2; exit 1)) "
        f"&& mv -f {staged} {path}")


# -- verification (read-only) -------------------------------------------------------------------

def _runner(target) -> Callable[[str], tuple[bool, str]]:
    """Run on the host with the operation's connector arguments (its _sudo etc.)."""
    arguments = {key: value for key, value in (target.current_op_global_arguments or {}).items()
                 if key in CONNECTOR_ARGUMENT_KEYS}

    def run(command: str) -> tuple[bool, str]:
        try:
            ok, output = target.run_shell_command(StringCommand(f"timeout 20 sh -c {shlex.quote(command)}"),
                                                  print_output=False, print_input=False, **arguments)
        except (TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return ok, output.stdout if ok else output.output
    return run


def onboard_checks(settings: OnboardSettings, run: Callable[[str], tuple[bool, str]],
                   expected_gid: int | None, compose: str) -> list[CheckResult]:
    """The checks an onboarded host passes, each one fact about it."""
    user, q_user = settings.user, shlex.quote(settings.user)
    once = RetryPolicy(attempts=1, seconds=10, wait=0)
    engine = RetryPolicy(attempts=5, seconds=20, wait=2)
    keys_file = f"{settings.home_dir}/.ssh/authorized_keys"

    def must(command: str, what: str) -> str:
        ok, out = run(command)
        if not ok:
            raise Broken(f"{what}: {out.strip()[:160]}")
        return out.strip()

    def user_exists():
        out = must(f"getent passwd {q_user}", "no such user")
        fields = out.split(":")
        if fields[5] != settings.home_dir or fields[6] != settings.shell:
            raise Broken(f"home {fields[5]}, shell {fields[6]}")
        return f"{user}: home {fields[5]}, shell {fields[6]}"

    def keys_present():
        stat = must(f"stat -c '%U %a' {shlex.quote(keys_file)} {shlex.quote(settings.home_dir + '/.ssh')}",
                    "authorized_keys missing")
        owners = stat.split()
        if owners[0] != user or owners[2] != user or owners[1] not in ("600", "400") or owners[3] != "700":
            raise Broken(f"ownership/modes {stat!r}")
        lines = must(f"cat {shlex.quote(keys_file)}", "cannot read authorized_keys").splitlines()
        missing = [k for k in settings.authorized_keys if k not in lines]
        if missing:
            raise Broken(f"{len(missing)} key(s) missing")
        return f"{len(settings.authorized_keys)} key(s), 0600, owned by {user}"

    def sudo_narrow():
        must("visudo -c -q", "visudo -c rejects the sudo configuration")
        out = must(f"sudo -l -n -U {q_user}", "sudo -l failed")
        allowed = [line.strip() for line in out.splitlines() if "NOPASSWD" in line or line.startswith("    (")]
        if re.search(r"\)\s*(NOPASSWD:\s*)?ALL\b", out):
            raise Broken(f"{user} may run ALL: {' '.join(allowed)[:120]}")
        for command in settings.sudo_commands:
            if command not in out:
                raise Broken(f"{command!r} not allowed")
        return f"{len(settings.sudo_commands)} command(s), none ALL"

    def docker_installed():
        out = must("dpkg-query -W -f '${Status} ${Version}' docker.io", "docker.io not installed")
        if not out.startswith("install ok installed"):
            raise Broken(out)
        return f"docker.io {out.split()[-1]}, " + must("docker --version", "no docker CLI")[:40]

    def log_rotation():
        text = must("cat /etc/docker/daemon.json", "no /etc/docker/daemon.json")
        try:
            config = json.loads(text)
        except ValueError:
            raise Broken("daemon.json is not valid JSON")
        opts = config.get("log-opts") or {}
        if config.get("log-driver") != "json-file" or opts.get("max-size") != settings.log_max_size \
                or opts.get("max-file") != str(settings.log_max_file):
            raise Broken(f"log-driver {config.get('log-driver')}, log-opts {opts}")
        return f"json-file, max-size {opts['max-size']}, max-file {opts['max-file']}"

    def in_docker_group():
        groups = must(f"id -nG {q_user}", "no such user").split()
        if "docker" not in groups:
            raise Broken(f"groups: {' '.join(groups)}")
        gid = int(must("getent group docker | cut -d: -f3", "no docker group"))
        if expected_gid is not None and gid != expected_gid:
            raise Broken(f"docker group gid {gid}, settings want {expected_gid}")
        ok, socket = run(f"stat -c %g {shlex.quote(settings.docker_socket)}")
        if ok and socket.strip().isdigit() and int(socket.strip()) != gid:
            raise Broken(f"docker group gid {gid}, but {settings.docker_socket} belongs to gid {socket.strip()}")
        return f"{user} in docker (gid {gid}" + (", the socket's" if ok else "") + ")"

    def engine_reachable():
        ok, out = run(f"runuser -u {q_user} -- docker version --format '{{{{.Server.Version}}}}'")
        if not ok:
            raise NotYet(f"as {user}: {out.strip()[-160:]}")
        ok, listing = run(f"runuser -u {q_user} -- docker ps --format '{{{{.Names}}}}'")
        if not ok:
            raise NotYet(f"docker ps as {user}: {listing.strip()[-160:]}")
        return f"as {user}, no sudo: engine {out.strip()}, docker ps answers"

    def engine_logging():
        if settings.engine != "local":
            return "the engine is not this host's (engine 'socket'): daemon.json applies when it runs its own"
        out = must("docker info --format '{{.LoggingDriver}}'", "docker info failed")
        if out != "json-file":
            raise NotYet(f"engine logs with {out}")
        return "dockerd logs json-file"

    def stack_files():
        q_dirs = " ".join(shlex.quote(f"{settings.stack_dir}/{d}") for d in ("", *settings.directories))
        owners = must(f"stat -c '%U %n' {q_dirs}", "stack directories missing").splitlines()
        wrong = [line for line in owners if not line.startswith(settings.owner + " ")]
        if wrong:
            raise Broken(f"not owned by {settings.owner}: {wrong[0]}")
        text = must(f"cat {shlex.quote(settings.compose_path)}", "no compose file")
        if text.strip() != compose.strip():
            raise Broken(f"{settings.compose_path} differs from the settings")
        return f"{len(owners)} dir(s), {settings.compose_path}"

    checks = [
        (f"user {user} exists", user_exists, once),
        (f"{user}'s authorized keys are in place", keys_present, once),
        (f"sudo for {user} is narrow and valid", sudo_narrow, once),
        ("docker.io is installed", docker_installed, once),
        ("daemon.json rotates container logs", log_rotation, once),
        (f"{user} is in the docker group", in_docker_group, once),
        (f"{user} runs docker without sudo", engine_reachable, engine),
        ("the engine uses json-file logging", engine_logging, engine),
        ("stack directories and compose file", stack_files, once),
    ]
    results = []
    for name, probe, policy in checks:
        result = run_check(name, host_label(), probe, policy)
        if name == "the engine uses json-file logging" and settings.engine != "local":
            result.status = "skip"
        results.append(result)
    return results


def host_label() -> str:
    try:
        return host.name
    except Exception:  # noqa: BLE001 - outside a pyinfra context (unit tests)
        return "host"


def _report(state, host, failed: list[str]) -> bool:
    host.log_styled("onboarding verification failed:\n  " + "\n  ".join(failed), fg="red",
                    log_func=logger.error)
    return False


@operation()
def verify(settings: OnboardSettings, expected_gid: int | None, compose: str):
    """
    Check the onboarded host; read-only, never counted as a change (runs at execution only).

    **Example:**

    .. code:: python

        onboard.verify(settings=settings, expected_gid=105, compose=text)
    """
    if not host.state.is_executing:
        host.noop("onboarding checks run when the deploy executes (read-only; none with --dry)")
        return
    results = onboard_checks(settings, _runner(host), expected_gid, compose)
    for line in format_table(results).splitlines():
        host.log(f"verify: {line}")
    failed = [f"{r.name}: {r.evidence}" for r in results if r.status == "fail"]
    if failed:
        yield FunctionCommand(_report, (failed,), {})


# -- the packaged deploy -----------------------------------------------------------------------

def host_onboard_settings() -> OnboardSettings:
    merged = {**(host.data.get("onboard_defaults") or {}), **(host.data.get("onboard") or {})}
    return onboard_settings(host.name, merged)


def render_compose(settings: OnboardSettings) -> str:
    if settings.compose is not None:
        return compose_text(settings.compose)
    from tasks.core.mlflow_server import server_spec
    from tasks.operations.mlflow import host_mlflow_settings
    mlflow = host_mlflow_settings()
    return compose_text(default_compose(settings, mlflow, server_spec(mlflow, settings.mlflow_version)))


@deploy("Onboard the host")
def onboard(settings: OnboardSettings | None = None):
    settings = settings or host_onboard_settings()
    compose = render_compose(settings)
    probe = host.get_fact(OnboardProbe, socket=settings.docker_socket)
    gid = wanted_gid(settings, probe)
    holder = host.get_fact(GroupByGid, gid=gid) if gid is not None else None
    problems = preflight_problems(settings, probe, holder)
    if problems:
        refuse(name="Preflight: can this host be onboarded?", problems=problems)
        return

    if gid is not None:
        group_gid(name=f"Group docker with gid {gid}", group="docker", gid=gid)
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in settings.packages if p.split("=")[0] not in installed]
    apt.packages(name="Docker engine and CLI from Debian's packages", packages=list(settings.packages),
                 update=bool(missing), cache_time=3600, no_recommends=True)
    daemon = docker_daemon_json(name="Docker daemon.json: container log rotation",
                                max_size=settings.log_max_size, max_file=settings.log_max_file)
    if settings.engine == "local":
        systemd.service(name="dockerd enabled and running", service="docker.service", running=True,
                        enabled=True)
        systemd.service(name="Restart dockerd for the new daemon.json", service="docker.service",
                        restarted=True, _if=daemon.did_change)

    server.user(name=f"Deploy user {settings.user}", user=settings.user, home=settings.home_dir,
                shell=settings.shell, groups=["docker"], append=True,
                public_keys=list(settings.authorized_keys), delete_keys=settings.exclusive_keys,
                password="*", ensure_home=True)
    sudoers(name=f"Narrow sudo for {settings.user} ({settings.sudoers_path})",
            filename=settings.sudoers_name, text=sudoers_text(settings.user, settings.sudo_commands))

    for folder in ("", *settings.directories):
        path = f"{settings.stack_dir}/{folder}".rstrip("/")
        files.directory(name=f"Stack directory {path}", path=path, user=settings.owner,
                        group=settings.owner, mode="0750")
    files.put(name=f"Compose file {settings.compose_path}", src=io.BytesIO(compose.encode()),
              dest=settings.compose_path, user=settings.owner, group=settings.owner, mode="0640")
    if settings.verify:
        verify(name="Verify the onboarded host", settings=settings, expected_gid=gid, compose=compose)
