"""What an onboarded host must pass, each check one fact about it: the deploy user and its keys,
narrow sudo, docker.io, daemon.json log rotation, the docker group, the engine reachable without
sudo, its logging driver, the stack files. Read-only, through a ``run(command) -> (ok, output)``
callable on the target host.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from tasks.checks.runner import Broken, CheckResult, NotYet, RetryPolicy, run_check
from tasks.core.sizes import docker_size

if TYPE_CHECKING:
    from tasks.settings.onboard import OnboardSettings

Runner = Callable[[str], tuple[bool, str]]

ONCE = RetryPolicy(attempts=1, seconds=10, wait=0)
ENGINE = RetryPolicy(attempts=5, seconds=20, wait=2)
ENGINE_LOGGING = "the engine uses json-file logging"


def onboard_checks(
    settings: OnboardSettings, run: Runner, expected_gid: int | None, compose: str, target: str = "host"
) -> list[CheckResult]:
    """Every check, in order; the engine's logging is skipped when the engine is not the host's."""
    user, q_user = settings.user, shlex.quote(settings.user)
    keys_file = f"{settings.home_dir}/.ssh/authorized_keys"
    max_size = docker_size(settings.log_max_size)

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
        stat = must(
            f"stat -c '%U %a' {shlex.quote(keys_file)} {shlex.quote(settings.home_dir + '/.ssh')}",
            "authorized_keys missing",
        )
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
        allowed = [
            line.strip() for line in out.splitlines() if "NOPASSWD" in line or line.startswith("    (")
        ]
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
            raise Broken("daemon.json is not valid JSON") from None
        opts = config.get("log-opts") or {}
        if (
            config.get("log-driver") != "json-file"
            or opts.get("max-size") != max_size
            or opts.get("max-file") != str(settings.log_max_file)
        ):
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
            raise Broken(
                f"docker group gid {gid}, but {settings.docker_socket} belongs to gid {socket.strip()}"
            )
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
        (f"user {user} exists", user_exists, ONCE),
        (f"{user}'s authorized keys are in place", keys_present, ONCE),
        (f"sudo for {user} is narrow and valid", sudo_narrow, ONCE),
        ("docker.io is installed", docker_installed, ONCE),
        ("daemon.json rotates container logs", log_rotation, ONCE),
        (f"{user} is in the docker group", in_docker_group, ONCE),
        (f"{user} runs docker without sudo", engine_reachable, ENGINE),
        (ENGINE_LOGGING, engine_logging, ENGINE),
        ("stack directories and compose file", stack_files, ONCE),
    ]
    results = []
    for name, probe, policy in checks:
        result = run_check(name, target, probe, policy)
        if name == ENGINE_LOGGING and settings.engine != "local":
            result.status = "skip"
        results.append(result)
    return results
