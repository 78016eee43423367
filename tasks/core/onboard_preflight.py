"""
Can this host be onboarded as asked? The answer from the ``OnboardProbe`` fact's values
(tasks/facts/onboard.py), before anything is changed. Pure.

Also the rule for the paths onboarding creates and hands to the deploy user
(:func:`outside_roots`): strictly below an allowed root, never in a system directory; checked
on the settings (the paths as written) and here on the host (the paths as they resolve, so a
symlink cannot lead a ``chown`` into ``/etc``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings are handed in; core imports no settings layer
    from tasks.settings.onboard import OnboardSettings


# Trees no onboarding path may be in (nor an allowed root be): the system's own, and the
# world-writable ones. "/", "/home" and "/var" themselves are refused as roots too.
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root",
    "/run", "/sbin", "/sys", "/usr", "/tmp", "/var/tmp", "/var/run", "/var/lock", "/var/lib/dpkg",
    "/var/lib/apt", "/var/lib/docker", "/var/log", "/var/spool", "/var/cache", "/var/mail",
)  # fmt: skip
NOT_A_ROOT = ("/", "/home", "/var", "/var/lib")
# The deploys' own folder under /var/lib: the one place outside the allowed roots where onboarding
# gives the deploy user's group a folder (remediate.record_path's; /var/lib holds system folders).
STATE_DIR = "/var/lib/quantlab"


def normal_path(path: str) -> bool:
    """Absolute, and written the way it resolves textually (no ``.``, ``..``, ``//``, trailing ``/``)."""
    return path.startswith("/") and posixpath.normpath(path) == path and not path.startswith("//")


def below(path: str, root: str) -> bool:
    """``path`` is strictly inside ``root`` (both normal)."""
    return path.startswith(root.rstrip("/") + "/") and path != root


def in_system_tree(path: str) -> str | None:
    return next((tree for tree in SYSTEM_TREES if path == tree or below(path, tree)), None)


def root_problem(root: str) -> str | None:
    """Why ``root`` cannot be an allowed root, or None."""
    if not normal_path(root):
        return f"{root!r} is not a normalized absolute path"
    if root in NOT_A_ROOT:
        return f"{root!r} is too wide to be an allowed root"
    tree = in_system_tree(root)
    if tree:
        return f"{root!r} is in the system directory {tree}"
    return None


def outside_roots(path: str, roots: Iterable[str]) -> str | None:
    """Why onboarding must not create ``path`` and give it to the deploy user, or None: it must
    be a normalized absolute path strictly below one of ``roots``, outside every system tree."""
    roots = tuple(roots)
    if not normal_path(path):
        return f"{path!r} is not a normalized absolute path (no '.', '..', '//' or trailing '/')"
    tree = in_system_tree(path)
    if tree:
        return f"{path!r} is in the system directory {tree}"
    if not any(below(path, root) for root in roots):
        return (
            f"{path!r} is not below an allowed root ({', '.join(roots)}): onboarding creates it "
            "and makes the deploy user its owner; list its parent in allowed_roots if that is meant"
        )
    return None


def resolved_path_problems(settings: OnboardSettings, resolved: Mapping[str, str]) -> list[str]:
    """The onboarding paths as they resolve on the host (``realpath -m``): a symlink on the way
    must not lead outside the allowed roots."""
    if not resolved:
        return [
            "the paths onboarding creates could not be resolved on this host (realpath -m): "
            "it cannot tell where they lead"
        ]
    problems = []
    for key, path in settings.owned_paths():
        real = resolved.get(path)
        if real is None:
            problems.append(f"{key} {path}: could not be resolved on this host")
            continue
        why = outside_roots(real, settings.path_roots(key))
        if real != path and why:
            problems.append(f"{key} {path} resolves to {real} on this host (a symlink): {why}")
    return problems


def wanted_gid(settings: OnboardSettings, probe: Mapping[str, Any]) -> int | None:
    """The docker group's gid to pin: the setting, or the socket's gid for ``"socket"``."""
    if settings.docker_gid == "socket":
        return probe.get("socket_gid")
    return settings.docker_gid


def preflight_problems(
    settings: OnboardSettings,
    probe: Mapping[str, Any],
    gid_holder: str | None = None,
    resolved: Mapping[str, str] | None = None,
    record_dir: str | None = None,
) -> list[str]:
    """Why this host cannot be onboarded as asked (empty: it can). ``resolved``: the
    onboarding paths as they resolve on the host (:func:`resolved_path_problems`);
    ``record_dir``: the remediation record's folder (:func:`record_dir_problems`)."""
    problems = []
    if probe.get("uid") != "0" and probe.get("user") == settings.user:
        problems.append(
            f"logged in as {settings.user}, the deploy user onboarding makes, without root: its sudo "
            "is narrow by design (onboard.sudo_commands); run onboarding as root or as a user with "
            "full sudo (_sudo=True), as the first time"
        )
    elif probe.get("uid") != "0":
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
    if resolved is not None:
        problems += resolved_path_problems(settings, resolved)
    if record_dir is not None:
        problems += record_dir_problems(settings, record_dir, resolved)
    return problems


def record_dir_problems(
    settings: OnboardSettings, folder: str, resolved: Mapping[str, str] | None = None
) -> list[str]:
    """The folder of the remediation record (``remediate.record_path``), which onboarding makes
    ``root:<deploy user's group>`` 2770 so that the deploy user writes the record without sudo:
    :data:`STATE_DIR` (or below it) or a folder strictly below an allowed root, never a system
    directory, as written and as it resolves on the host."""
    where = f"remediate.record_path's folder {folder}"

    def why_not(path: str) -> str | None:
        if normal_path(path) and (path == STATE_DIR or below(path, STATE_DIR)):
            return None
        why = outside_roots(path, settings.allowed_roots)
        return why and (
            f"onboarding makes it writable by {settings.user}'s group, so it must be {STATE_DIR} "
            f"(or below it) or a folder below an allowed root: {why}"
        )

    why = why_not(folder)
    if why:
        return [f"{where}: {why}"]
    real = (resolved or {}).get(folder)
    if resolved is not None and real is None:
        return [f"{where}: could not be resolved on this host"]
    why = why_not(real) if real and real != folder else None
    if why:
        return [f"{where} resolves to {real} on this host (a symlink): {why}"]
    return []
