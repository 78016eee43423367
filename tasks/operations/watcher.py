"""
The per-host placement of the watcher (scripts/watch): installed on the host with the project,
run there against ``@local`` (the host's own inventory), supervised by systemd.

Settings: the host's ``watcher`` block (:class:`tasks.settings.watcher.WatcherSettings`). What is
written (inventory, EnvironmentFile, unit) is built in :mod:`tasks.core.watcher_units`; the
bundles uploaded in :mod:`tasks.operations.watcher_bundle`; the facts are in
:mod:`tasks.facts.watcher`. The install is offline: the host's ``python3 -m venv --without-pip``
and pip run from its own wheel install the controller's wheels with ``--no-index``.

Where systemd is not PID 1, a supervisor loop (a shell script started in a session of its own)
restarts the watcher after a failure; it is not started at boot there (no init system would run
it): the next deploy run starts it again.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shlex
from pathlib import Path

from pyinfra import host as current_host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files, systemd

from tasks import settings as host_settings
from tasks.core.watcher_units import (
    STOP_SECONDS,
    env_file_text,
    host_data,
    inventory_text,
    localize_secrets,
    paths,
    service_unit,
    supervisor_paths,
    supervisor_script,
)
from tasks.facts.schedule import InitSystem
from tasks.facts.watcher import SupervisedWatcher, WatcherInstalled
from tasks.operations import runner
from tasks.operations.recap import say
from tasks.operations.refusals import deploy, operation
from tasks.operations.text_files import refuse_secret_text
from tasks.operations.watcher_bundle import DEFAULT_WHEELS, REPO, bundle_hash, project_bundle, wheels_bundle
from tasks.settings import SettingsError
from tasks.settings.watcher import WatcherSettings

BUNDLES = REPO / ".lab" / "watcher-bundles"
PROJECT_PATHS = ("tasks", "deploys", "inventories", "scripts", "pyproject.toml")
q = shlex.quote


@functools.lru_cache(maxsize=8)
def _bundles(wheels: str, out: Path) -> tuple[Path, Path]:
    """Built once per run (every host gets the same bytes)."""
    return project_bundle(out), wheels_bundle(out, Path(wheels))


def _missing_bundle(install_dir: str, bundle: str, key: str, what: str, where: str) -> str | None:
    """The bundle's hash when the host's ``key`` (project or wheels) is not that bundle; None (and
    a noop "<what> <hash> is installed in <where>") when it is."""
    want = bundle_hash(Path(bundle))
    if current_host.get_fact(WatcherInstalled, install_dir=install_dir)[key] == want:
        current_host.noop(f"{what} {want} is installed in {where}")
        return None
    return want


@operation()
def project(install_dir: str, bundle: str):
    """
    The project's sources (``bundle``, a project tar from watcher_bundle) under ``install_dir``:
    tasks/, deploys/, inventories/, scripts/ replaced as a whole when the bundle changed.

    **Example:**

    .. code:: python

        watcher.project(name="Project", install_dir="/opt/quant-remediation", bundle=path)
    """
    want = _missing_bundle(install_dir, bundle, "project", "project", install_dir)
    if want is None:
        return
    d, tmp = q(install_dir), q(f"{install_dir}/.project.tar.gz")
    yield StringCommand(f"mkdir -p {d} && chmod 755 {d}")
    yield FileUploadCommand(bundle, f"{install_dir}/.project.tar.gz")
    old = " ".join(q(f"{install_dir}/{name}") for name in PROJECT_PATHS)
    yield StringCommand(
        f"rm -rf {old} && tar -xzf {tmp} -C {d} --no-same-owner && rm -f {tmp} "
        f"&& echo {q(want)} > {q(f'{install_dir}/.quant-project')}"
    )


@operation()
def runtime(install_dir: str, bundle: str, python: str = "/usr/bin/python3"):
    """
    ``install_dir/.venv`` from the wheel set ``bundle`` (a wheels tar from watcher_bundle),
    offline: ``python -m venv --without-pip``, then pip from its own wheel with ``--no-index``;
    a ``.pth`` file puts ``install_dir`` (the project) on the venv's path. Made again (cleared)
    when the wheel set changed or the venv's python does not run.

    **Example:**

    .. code:: python

        watcher.runtime(name="Runtime", install_dir="/opt/quant-remediation", bundle=path)
    """
    want = _missing_bundle(install_dir, bundle, "wheels", "runtime", f"{install_dir}/.venv")
    if want is None:
        return
    d, venv, wheels = q(install_dir), q(f"{install_dir}/.venv"), q(f"{install_dir}/.wheels")
    tmp = q(f"{install_dir}/.wheels.tar")
    yield StringCommand(f"mkdir -p {d} && chmod 755 {d}")
    yield FileUploadCommand(bundle, f"{install_dir}/.wheels.tar")
    yield StringCommand(
        f"rm -rf {wheels} && mkdir -p {wheels} && tar -xf {tmp} -C {wheels} --no-same-owner && rm -f {tmp} "
        f"&& {q(python)} -m venv --without-pip --clear {venv} "
        f'&& {venv}/bin/python "$(ls {wheels}/pip-*.whl)"/pip install -q --no-index --no-cache-dir '
        f"--disable-pip-version-check --find-links {wheels} -r {wheels}/requirements.txt "
        f"&& echo {d} > \"$({venv}/bin/python -c 'import site; print(site.getsitepackages()[0])')\"/quant-remediation.pth "
        f"&& rm -rf {wheels} && echo {q(want)} > {venv}/.quant-wheels"
    )


def _install_private(state, host, path: str, content: bytes) -> bool:
    """At execution: ``content`` to ``path`` (0600, root) through a private upload directory;
    never on a command line, never printed."""
    folder = runner.upload_private(host, {"content": content}, "quant-watch")
    try:
        ok, out = runner.run_now(host, f"install -m 600 -o root -g root {q(folder + '/content')} {q(path)}")
    finally:
        runner.remove_private(host, folder)
    if not ok:
        host.log_styled(f"cannot write {path}: {out.strip()[-300:]}", fg="red")
    return ok


@operation()
def private_file(path: str, content: bytes):
    """
    A secret's copy at ``path``: 0600, root's, its content ``content``; compared by hash, written
    through a private upload (never shown, never on a command line).

    **Example:**

    .. code:: python

        watcher.private_file(name="Secret copy", path="/etc/quant-watch/secrets/x", content=data)
    """
    import hashlib

    info = current_host.get_fact(File, path=path)
    same = (
        info
        and current_host.get_fact(Sha256File, path=path) == hashlib.sha256(content).hexdigest()
        and info["mode"] == 600
        and info["user"] == "root"
    )
    if same:
        current_host.noop(f"{path} is up to date")
        return
    yield FunctionCommand(_install_private, (path, content), {})


def _stop_command(pid: int, pid_file: str) -> str:
    """SIGTERM to the supervisor (it stops the watcher, which ends its children), waited for;
    its process group killed if it outlives the wait."""
    pid, tries = int(pid), int(STOP_SECONDS * 2)
    return (
        f"kill -TERM {int(pid)} 2>/dev/null; i=0; "
        f"while kill -0 {int(pid)} 2>/dev/null && [ $i -lt {int(tries)} ]; do sleep 0.5; i=$((i + 1)); done; "
        f"if kill -0 {int(pid)} 2>/dev/null; then kill -KILL -- -{int(pid)}; fi; rm -f {q(pid_file)}"
    )


def _start_command(script: str, pid_file: str) -> str:
    """The supervisor in a session of its own, detached; waited for until its pid file is there."""
    return (
        f"setsid -f {q(script)} </dev/null >/dev/null 2>&1; i=0; "
        f"while [ ! -s {q(pid_file)} ] && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done; test -s {q(pid_file)}"
    )


@operation()
def supervised(script: str, pid_file: str, running: bool = True, restarted: bool = False):
    """
    The watcher's supervisor loop (``script``, a host without systemd): started in a session
    of its own when ``running`` and not running; stopped (and waited for) when not ``running``;
    stopped and started again when ``restarted`` and running.

    **Example:**

    .. code:: python

        watcher.supervised(name="Watcher running", script=path, pid_file=pid_path)
    """
    pid = current_host.get_fact(SupervisedWatcher, pid_file=pid_file, script=script)
    if not running:
        if pid is None:
            current_host.noop(f"{script} is not running")
            return
        yield StringCommand(_stop_command(pid, pid_file))
        return
    if pid is None:
        yield StringCommand(_start_command(script, pid_file))
        return
    if restarted:
        yield StringCommand(_stop_command(pid, pid_file))
        yield StringCommand(_start_command(script, pid_file))
        return
    current_host.noop(f"{script} is running (pid {pid})")


def _read_secret(host_name: str, path: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SettingsError(
            host_name, [f"watcher: cannot read the secret file {path}: {exc.strerror}"]
        ) from None
    if not data.strip():
        raise SettingsError(host_name, [f"watcher: the secret file {path} is empty"])
    return data


def _remove(s: WatcherSettings, init: dict) -> None:
    p, sp = paths(s), supervisor_paths(s)
    supervised(name=f"Supervised watcher {s.name} stopped", script=sp["script"], pid_file=sp["pid_file"],
               running=False)  # fmt: skip
    if init["systemd"]:
        service = systemd.service(
            name=f"Service {s.name} stopped", service=f"{s.name}.service", running=False, enabled=False
        )
        unit = files.file(name=f"No unit {s.name}.service", path=p["unit"], present=False)
        systemd.daemon_reload(name="systemd reload", _if=lambda: service.did_change() or unit.did_change())
    files.directory(name=f"No {s.config_dir}", path=s.config_dir, present=False)
    files.directory(name=f"No {s.install_dir}", path=s.install_dir, present=False)
    say(current_host, f"watcher: audit {s.audit_path} (and its .runs/) left in place")


def _supervised(s: WatcherSettings, env_text: str | None, changes: list) -> None:
    """Where systemd is not PID 1: the supervisor loop (tasks/core/watcher_units.py), started in
    a session of its own; restarted when anything it runs changed. Not started at boot: no init
    system runs it there (the next deploy run starts it again)."""
    sp = supervisor_paths(s)
    script = files.put(
        name=f"Supervisor {sp['script']}",
        src=io.StringIO(supervisor_script(s, env_file=env_text is not None)),
        dest=sp["script"],
        user="root",
        mode="700",
    )
    supervised(name=f"Supervised watcher {s.name} running", script=sp["script"], pid_file=sp["pid_file"])
    supervised(
        name=f"Supervised watcher {s.name} restarted for the changes",
        script=sp["script"],
        pid_file=sp["pid_file"],
        restarted=True,
        _if=lambda: script.did_change() or any(op.did_change() for op in changes),
    )
    say(
        current_host,
        f"watcher: systemd is not PID 1 here: supervised by {sp['script']} (restarted after a failure); "
        "not started at boot (no init system runs it): the next deploy run starts it again",
    )


@deploy("Install the watcher")
def install_watcher(settings: WatcherSettings | None = None):
    """The host's `watcher` block, or ``settings`` when given."""
    s = settings or host_settings.of_host(current_host, "watcher")
    init = current_host.get_fact(InitSystem)
    if not s.present:
        _remove(s, init)
        return
    use_systemd = s.supervisor == "systemd" or (s.supervisor == "auto" and init["systemd"])
    if use_systemd and not init["systemd"]:
        raise OperationError(
            f"watcher.supervisor 'systemd': systemd is not PID 1 on this host (PID 1 is {init['pid1']!r}); "
            "nothing installed"
        )
    p = paths(s)
    try:
        data, copies, env_names = localize_secrets(
            host_data(current_host.data.dict(), s.exclude), p["secrets"]
        )
        inventory = inventory_text(data, current_host.name)
        env_values = {}
        for name in env_names:
            if name not in os.environ:
                raise ValueError(f"env secret {name} is not set on the controller")
            env_values[name] = os.environ[name]
        env_text = env_file_text(env_values) if env_values else None
        unit = service_unit(s, env_file=env_text is not None)
    except ValueError as exc:
        raise SettingsError(current_host.name, [f"watcher: {exc}"]) from None
    refuse_secret_text(p["inventory"], inventory)
    secrets = {
        f"{p['secrets']}/{copy}": _read_secret(current_host.name, path) for copy, path in copies.items()
    }
    if env_text is not None:
        secrets[p["env_file"]] = env_text.encode()
    project_tar, wheels_tar = _bundles(
        str(Path(s.wheels).expanduser() if s.wheels else DEFAULT_WHEELS), BUNDLES
    )

    files.directory(name=f"Config directory {s.config_dir}", path=s.config_dir, user="root", mode="700")
    files.directory(name="Audit directory", path=str(Path(s.audit_path).parent), user="root", mode="750")
    changes = [
        project(name=f"Project in {s.install_dir}", install_dir=s.install_dir, bundle=str(project_tar)),
        runtime(
            name=f"Runtime {s.install_dir}/.venv (offline)",
            install_dir=s.install_dir,
            bundle=str(wheels_tar),
            python=s.python,
        ),  # fmt: skip
    ]
    if secrets:
        files.directory(name="Secret copies", path=p["secrets"], user="root", mode="700")
    for path, content in sorted(secrets.items()):
        changes.append(private_file(name=f"Secret copy {path}", path=path, content=content))
    changes.append(
        files.put(
            name=f"Inventory {p['inventory']}",
            src=io.StringIO(inventory),
            dest=p["inventory"],
            user="root",
            mode="600",
        )  # fmt: skip
    )
    if not use_systemd:
        _supervised(s, env_text, changes)
        return
    unit_op = files.put(name=f"Unit {s.name}.service", src=io.StringIO(unit), dest=p["unit"], mode="644")
    changes.append(unit_op)
    systemd.daemon_reload(name="systemd reload", _if=unit_op.did_change)
    systemd.service(name=f"Service {s.name} enabled and running", service=f"{s.name}.service",
                    running=True, enabled=True)  # fmt: skip
    systemd.service(name=f"Service {s.name} restarted for the changes", service=f"{s.name}.service",
                    restarted=True, _if=lambda: any(op.did_change() for op in changes))  # fmt: skip


@deploy("Collect the watcher's audit")
def collect_watch_audit(settings: WatcherSettings | None = None):
    """The host's watcher audit to the controller: ``<collect_dir>/<host>.jsonl`` (pyinfra's
    ``files.get``: fetched again only when it changed). A host with no audit yet is said, not failed."""
    s = settings or host_settings.of_host(current_host, "watcher")
    if not current_host.get_fact(File, path=s.audit_path):
        say(current_host, f"watcher: no audit at {s.audit_path} on this host yet")
        return
    folder = Path(s.collect_dir).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", current_host.name) + ".jsonl")
    files.get(name=f"Audit {s.audit_path} to {local}", src=s.audit_path, dest=str(local))
