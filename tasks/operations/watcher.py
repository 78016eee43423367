"""
The per-host placement of the watcher (scripts/watch): installed on the host with the project,
run there against ``@local`` (the host's own inventory), supervised by systemd.

Settings: the host's ``watcher`` block (:class:`tasks.settings.watcher.WatcherSettings`). What is
written (inventory, EnvironmentFile, unit) is built in :mod:`tasks.core.watcher_units`; the
bundles uploaded in :mod:`tasks.operations.watcher_bundle`; the facts are in
:mod:`tasks.facts.watcher`. The install is offline: the host's ``python3 -m venv --without-pip``
and pip run from its own wheel install the controller's wheels with ``--no-index``.

A host where systemd is not PID 1 is refused, clearly: no other supervisor is built (watch such a
host centrally with scripts/watch).
"""

from __future__ import annotations

import functools
import io
import os
import shlex
from pathlib import Path

from pyinfra import host as current_host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files, systemd

from tasks import settings as host_settings
from tasks.core.watcher_units import (
    env_file_text,
    host_data,
    inventory_text,
    localize_secrets,
    paths,
    service_unit,
)
from tasks.facts.schedule import InitSystem
from tasks.facts.watcher import WatcherInstalled
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


@operation()
def project(install_dir: str, bundle: str):
    """
    The project's sources (``bundle``, a project tar from watcher_bundle) under ``install_dir``:
    tasks/, deploys/, inventories/, scripts/ replaced as a whole when the bundle changed.

    **Example:**

    .. code:: python

        watcher.project(name="Project", install_dir="/opt/quant-remediation", bundle=path)
    """
    want = bundle_hash(Path(bundle))
    if current_host.get_fact(WatcherInstalled, install_dir=install_dir)["project"] == want:
        current_host.noop(f"project {want} is installed in {install_dir}")
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
    want = bundle_hash(Path(bundle))
    if current_host.get_fact(WatcherInstalled, install_dir=install_dir)["wheels"] == want:
        current_host.noop(f"runtime {want} is installed in {install_dir}/.venv")
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
    p = paths(s)
    if init["systemd"]:
        service = systemd.service(
            name=f"Service {s.name} stopped", service=f"{s.name}.service", running=False, enabled=False
        )
        unit = files.file(name=f"No unit {s.name}.service", path=p["unit"], present=False)
        systemd.daemon_reload(name="systemd reload", _if=lambda: service.did_change() or unit.did_change())
    files.directory(name=f"No {s.config_dir}", path=s.config_dir, present=False)
    files.directory(name=f"No {s.install_dir}", path=s.install_dir, present=False)
    say(current_host, f"watcher: audit {s.audit_path} (and its .runs/) left in place")


@deploy("Install the watcher")
def install_watcher(settings: WatcherSettings | None = None):
    """The host's `watcher` block, or ``settings`` when given."""
    s = settings or host_settings.of_host(current_host, "watcher")
    init = current_host.get_fact(InitSystem)
    if not s.present:
        _remove(s, init)
        return
    if not init["systemd"]:
        raise OperationError(
            f"watcher: systemd is not PID 1 on this host (PID 1 is {init['pid1']!r}) and no other "
            "supervisor is built: nothing installed; watch this host centrally (scripts/watch INVENTORY)"
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
    unit_op = files.put(name=f"Unit {s.name}.service", src=io.StringIO(unit), dest=p["unit"], mode="644")
    changes.append(unit_op)
    systemd.daemon_reload(name="systemd reload", _if=unit_op.did_change)
    systemd.service(name=f"Service {s.name} enabled and running", service=f"{s.name}.service",
                    running=True, enabled=True)  # fmt: skip
    systemd.service(name=f"Service {s.name} restarted for the changes", service=f"{s.name}.service",
                    restarted=True, _if=lambda: any(op.did_change() for op in changes))  # fmt: skip
