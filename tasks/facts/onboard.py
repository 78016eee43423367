"""Facts onboarding reads: what a fresh host can do (one round trip) and its groups' ids.

Read-only: they never change a host.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class OnboardProbe(FactBase):
    """
    What onboarding needs to know before it changes anything, in one round trip: who runs the
    commands, the package tools, the init system, the Docker socket and the docker group.

    Returns ``{"uid", "user", "os_id", "apt_get", "dpkg", "pid1", "systemd", ..., "socket_kind",
    "socket_gid", "docker_group_gid"}`` (strings; the gids ints or None).
    """

    def command(self, socket: str):
        q = shlex.quote(socket)
        return "; ".join(
            [
                "echo uid=$(id -u)",
                "echo user=$(id -un)",
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
            ]
        )

    def process(self, output):
        values = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        kind, _, gid = values.get("socket", "missing").partition("|")
        values["socket_kind"] = kind
        values["socket_gid"] = int(gid) if gid.isdigit() else None
        values["docker_group_gid"] = (
            int(values["docker_group"]) if values.get("docker_group", "").isdigit() else None
        )
        return values


class GroupByGid(FactBase):
    """The name of the group holding a gid, or None."""

    def command(self, gid: int):
        return f"getent group {int(gid)} | cut -d: -f1 || true"

    def process(self, output):
        name = "".join(output).strip()
        return name or None


class GroupGid(FactBase):
    """A group's gid, or None when there is no such group."""

    def command(self, group: str):
        return f"getent group {shlex.quote(group)} | cut -d: -f3 || true"

    def process(self, output):
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None


class RealPaths(FactBase):
    """
    Each path as it resolves on the host (``realpath -m``: symlinks followed, missing parts
    kept), so onboarding never follows a symlink out of its allowed roots. Returns
    ``{path: resolved}``; a path that cannot be resolved is left out.
    """

    def command(self, paths):
        lines = [
            f"printf '%s\\t%s\\n' {shlex.quote(p)} \"$(realpath -m -- {shlex.quote(p)} 2>/dev/null)\""
            for p in paths
        ]
        return "; ".join(lines) or "true"

    def process(self, output):
        resolved = {}
        for line in output:
            path, sep, real = line.partition("\t")
            if sep and real.startswith("/"):
                resolved[path] = real
        return resolved
