"""
Can this host be onboarded as asked? The answer from the ``OnboardProbe`` fact's values
(tasks/facts/onboard.py), before anything is changed. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings are handed in; core imports no settings layer
    from tasks.settings.onboard import OnboardSettings


def wanted_gid(settings: OnboardSettings, probe: Mapping[str, Any]) -> int | None:
    """The docker group's gid to pin: the setting, or the socket's gid for ``"socket"``."""
    if settings.docker_gid == "socket":
        return probe.get("socket_gid")
    return settings.docker_gid


def preflight_problems(
    settings: OnboardSettings, probe: Mapping[str, Any], gid_holder: str | None = None
) -> list[str]:
    """Why this host cannot be onboarded as asked (empty: it can)."""
    problems = []
    if probe.get("uid") != "0":
        problems.append(
            f"commands run as uid {probe.get('uid')}, not root: connect as root, or as a "
            "sudo user with _sudo=True"
        )
    if not probe.get("apt_get") or not probe.get("dpkg"):
        problems.append(
            f"no apt-get/dpkg (os {probe.get('os_id')!r}): onboarding installs Debian's "
            "docker.io and knows Debian and Ubuntu only"
        )
    if settings.engine == "local" and probe.get("systemd") != "yes":
        problems.append(
            f"engine 'local' runs dockerd under systemd, but systemd is not PID 1 here "
            f"(PID 1 is {probe.get('pid1')!r}); for a host that uses another engine's "
            "socket, set onboard.engine to 'socket'"
        )
    if settings.engine == "socket":
        if probe.get("socket_kind") != "socket":
            problems.append(
                f"engine 'socket' needs a Docker socket at {settings.docker_socket}, "
                f"found {probe.get('socket_kind') or 'nothing'}"
            )
        if probe.get("systemd") == "yes" or (
            probe.get("sbin_init") == "yes" and probe.get("policy_rc_d") != "yes"
        ):
            problems.append(
                "engine 'socket' is for hosts without an init system (containers): "
                "installing docker.io here would start a second dockerd; use engine 'local'"
            )
    gid = wanted_gid(settings, probe)
    if gid is not None and gid_holder not in (None, "docker"):
        problems.append(f"docker_gid {gid} is already the group {gid_holder!r}'s id")
    return problems
