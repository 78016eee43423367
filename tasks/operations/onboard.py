"""Onboarding a fresh Debian host: make it a managed member of the fleet.

    pyinfra -y inventories/production.py deploys/onboard_host.py

On a host pyinfra reaches as root (or as a sudo user with ``_sudo``), from the host's ``onboard``
data (tasks/settings/onboard.py):

1. **Preflight** (before any change): apt-get and dpkg present, root reachable (logged in as the
   deploy user itself, whose sudo is narrow, it says so: onboarding runs as root or a user with
   full sudo), the remediation record's folder one onboarding may give the deploy user's group, the paths
   onboarding creates and hands to the deploy user resolving (``realpath -m``) below the allowed
   roots, not through a symlink into a system directory, and for the
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
   ``UsePAM no`` would refuse even for a key). The ``docker`` group is root-equivalent (its
   members can run a container with the host's ``/`` mounted): the plan says so in a note line.
5. Narrow sudo: ``/etc/sudoers.d/<sudoers_name>`` listing only ``sudo_commands``, uploaded under a
   name sudo ignores, checked with ``visudo -cf``, then moved in place (a bad file never
   becomes active).
6. The remediation record's folder (``remediate.record_path``'s, default ``/var/lib/quantlab``):
   ``root:<user>`` 2770, so the deploy user writes the record without sudo and root keeps the
   folder (it must be ``/var/lib/quantlab`` or below it, or below an allowed root).
7. The stack's directories under ``stack_dir`` and its compose file rendered from settings (the
   MLflow service from the host's ``mlflow`` settings exactly as deploys/fix_mlflow.py computes
   it, so that deploy finds the file already in step; secrets only as ``${VAR}``).
8. **Verification** (read-only, at execution; never counted as a change): tasks/checks/onboard.py.

A second run reports no changes. With ``engine: socket`` the daemon serving the host is not the
host's own (a container with the engine's socket mounted, a host using a remote engine):
daemon.json is written for when it runs its own, and verification says it cannot prove it.
"""

from __future__ import annotations

import io
import posixpath
import shlex
from collections.abc import Callable
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, OperationError, StringCommand
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Directory, FileContents
from pyinfra.operations import apt, files, server, systemd

from tasks import settings as host_settings
from tasks.checks.onboard import onboard_checks
from tasks.checks.runner import format_table
from tasks.core.mlflow_server import server_spec
from tasks.core.onboard_files import compose_text, daemon_json, default_compose, sudoers_text
from tasks.core.onboard_preflight import preflight_problems, wanted_gid
from tasks.core.sizes import docker_size
from tasks.facts.onboard import GroupByGid, GroupGid, OnboardProbe, RealPaths
from tasks.operations import runner
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import deploy, operation
from tasks.operations.text_files import put_text, show_diff
from tasks.settings.onboard import OnboardSettings

DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_GROUP_NOTE = (
    "note: {user} joins the docker group, which is root on this host in all but name (whoever "
    "can use the Docker engine can start a container with / mounted); give that account's key "
    "only to people who may be root here"
)


def _fail(state, host, message: str) -> bool:
    say(host, message, log_func=logger.error, record=False, fg="red")
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
        say(host, message, log_func=logger.error, record=False, fg="red")
    yield FunctionCommand(_fail, (message,), {})


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
def docker_daemon_json(max_size: str, max_file: int, path: str = DAEMON_JSON):
    """
    Log rotation in the Docker daemon's config, other keys kept.

    + max_size: Docker's spelling, like ``10m``
    + max_file: how many log files to keep per container

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
    # pyinfra plans an operation up to its first command: files.put prints its --diff before its
    # upload, so the folder (when missing) is made after the diff is printed.
    folder = str(Path(path).parent)
    if not host.get_fact(Directory, path=folder):
        show_diff(path, current, text)
        yield StringCommand("install", "-d", "-m", "0755", folder)
    yield from put_text(path, text, mode="644", user="root", group="root")


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
    # Staged, checked, then moved in place (files.put cannot validate): --diff shows the change
    # to the live file as files.put would.
    show_diff(path, None if lines is None else "\n".join(lines) + "\n", text)
    staged = f"/etc/sudoers.d/.{filename}.staged"  # a name with '.' is never read by sudo
    yield FileUploadCommand(io.BytesIO(text.encode()), staged)
    q_staged, q_path = shlex.quote(staged), shlex.quote(path)
    yield StringCommand(
        f"chown root:root {q_staged} && chmod 0440 {q_staged} && "
        f"(visudo -cf {q_staged} || (rm -f {q_staged}; echo 'sudoers text rejected by visudo' >&2; exit 1)) "
        f"&& mv -f {q_staged} {q_path}"
    )


# -- verification (read-only) -------------------------------------------------------------------


def _runner(target) -> Callable[[str], tuple[bool, str]]:
    """Run on the host with the operation's connector arguments (its _sudo etc.)."""

    def run(command: str) -> tuple[bool, str]:
        try:
            return runner.run_now(target, f"timeout 20 sh -c {shlex.quote(command)}")
        except (TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"

    return run


def _report(state, host, failed: list[str]) -> bool:
    say(
        host,
        "onboarding verification failed:\n  " + "\n  ".join(failed),
        log_func=logger.error,
        record=False,
        fg="red",
    )
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
    results = onboard_checks(settings, _runner(host), expected_gid, compose, host.name)
    for line in format_table(results).splitlines():
        host.log(f"verify: {line}")
    record_checks(host, results)
    failed = [f"{r.name}: {r.evidence}" for r in results if r.status == "fail"]
    if failed:
        yield FunctionCommand(_report, (failed,), {})


# -- the packaged deploy -----------------------------------------------------------------------


def render_compose(settings: OnboardSettings) -> str:
    """The stack's compose file: the settings' own document, or the default stack with the
    host's MLflow service as deploys/fix_mlflow.py computes it."""
    if settings.compose is not None:
        return compose_text(settings.compose)
    mlflow = host_settings.of_host(host, "mlflow")
    return compose_text(default_compose(settings, mlflow, server_spec(mlflow, settings.mlflow_version)))


@deploy("Onboard the host")
def onboard(settings: OnboardSettings | None = None):
    settings = settings or host_settings.of_host(host, "onboard")
    compose = render_compose(settings)
    probe = host.get_fact(OnboardProbe, socket=settings.docker_socket)
    gid = wanted_gid(settings, probe)
    holder = host.get_fact(GroupByGid, gid=gid) if gid is not None else None
    record_dir = posixpath.dirname(host_settings.of_host(host, "remediate").record_path)
    resolved = host.get_fact(RealPaths, paths=(*(path for _, path in settings.owned_paths()), record_dir))
    problems = preflight_problems(settings, probe, holder, resolved, record_dir)
    if problems:
        refuse(name="Preflight: can this host be onboarded?", problems=problems)
        return
    if not host.state.is_executing:
        say(host, DOCKER_GROUP_NOTE.format(user=settings.user))

    if gid is not None:
        group_gid(name=f"Group docker with gid {gid}", group="docker", gid=gid)
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in settings.packages if p.split("=")[0] not in installed]
    apt.packages(
        name="Docker engine and CLI from Debian's packages",
        packages=list(settings.packages),
        update=bool(missing),
        cache_time=3600,
        no_recommends=True,
    )
    daemon = docker_daemon_json(
        name="Docker daemon.json: container log rotation",
        max_size=docker_size(settings.log_max_size),
        max_file=settings.log_max_file,
    )
    if settings.engine == "local":
        systemd.service(
            name="dockerd enabled and running", service="docker.service", running=True, enabled=True
        )
        systemd.service(
            name="Restart dockerd for the new daemon.json",
            service="docker.service",
            restarted=True,
            _if=daemon.did_change,
        )

    server.user(
        name=f"Deploy user {settings.user}",
        user=settings.user,
        home=settings.home_dir,
        shell=settings.shell,
        groups=["docker"],
        append=True,
        public_keys=list(settings.authorized_keys),
        delete_keys=settings.exclusive_keys,
        password="*",
        ensure_home=True,
    )
    sudoers(
        name=f"Narrow sudo for {settings.user} ({settings.sudoers_path})",
        filename=settings.sudoers_name,
        text=sudoers_text(settings.user, settings.sudo_commands),
    )

    # The remediation record's folder: the deploy user's group writes there without sudo (the
    # record is replaced by a move, whoever wrote it before); setgid, so every record is the
    # group's; root keeps the folder itself; others get nothing.
    files.directory(
        name=f"Record folder {record_dir} ({settings.user}'s group writes it)",
        path=record_dir,
        user="root",
        group=settings.user,
        mode="2770",
    )
    for folder in ("", *settings.directories):
        path = f"{settings.stack_dir}/{folder}".rstrip("/")
        files.directory(
            name=f"Stack directory {path}", path=path, user=settings.owner, group=settings.owner, mode="0750"
        )
    files.put(
        name=f"Compose file {settings.compose_path}",
        src=io.BytesIO(compose.encode()),
        dest=settings.compose_path,
        user=settings.owner,
        group=settings.owner,
        mode="0640",
    )
    if settings.verify:
        verify(name="Verify the onboarded host", settings=settings, expected_gid=gid, compose=compose)
