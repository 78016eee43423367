"""
The backend's uvicorn ``--reload`` fix, as a packaged deploy (deploys/fix_backend_reload.py).

The incident: on WSL bind mounts watchfiles' native watcher fails with
``_rust_notify.WatchfilesRustInternalError: error in underlying watcher: Input/output error (os
error 5)``. The seed added ``--reload-delay 2`` to the Dockerfile CMD; that alone does not make
watchfiles poll, ``WATCHFILES_FORCE_POLLING=true`` does. This deploy, idempotently:

- patches the backend Dockerfile (``backend.dockerfile``, optional): CMD in JSON-array form with
  ``--reload-delay N`` added once after ``--reload``, and ``ENV WATCHFILES_FORCE_POLLING=true``;
- patches the compose service (``backend.compose_file`` / ``compose_service``, optional):
  ``environment: WATCHFILES_FORCE_POLLING`` and the reload arguments in its ``command``;
- brings the running container to the same (env + command), through tasks.operations.docker's
  drift-aware container operation: recreated only when it differs, verified
  (tasks/checks/backend.py), rolled back on failure.

The image is not rebuilt (the Dockerfile's build context may not be on the host); the container
gets the command explicitly and the next build carries the patched CMD. Only the files the host
data names are touched. Settings: tasks/settings/backend.py; the patches: tasks/core/backend_patch.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import OperationError

from tasks import settings as host_settings
from tasks.checks.backend import verify_backend
from tasks.core.backend_patch import desired_container, patch_compose_backend, patch_dockerfile
from tasks.core.compose import ComposeError
from tasks.facts.compose import ConfigText
from tasks.operations import docker
from tasks.operations.compose import refuse_literal_secrets
from tasks.operations.refusals import deploy, operation
from tasks.operations.text_files import put_text
from tasks.settings.backend import BackendSettings
from tasks.settings.types import looks_secret


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _read(path: str, what: str) -> list[str] | None:
    """The file's lines through the host-side filter (ConfigText): a file holding a literal
    secret is refused, never read into the plan (pyinfra shows facts at -vvv)."""
    fact = host.get_fact(ConfigText, path=path)
    refuse_literal_secrets(path, what, fact["secret_lines"])
    return fact["lines"]


@operation()
def dockerfile(path: str, reload_delay: float = 2, force_polling: bool = True):
    """
    The backend Dockerfile's CMD (JSON array, ``--reload-delay`` once) and polling ENV.

    **Example:**

    .. code:: python

        backend_reload.dockerfile(path="/srv/quant/backend/Dockerfile", reload_delay=2)
    """
    lines = _read(path, "Dockerfile")
    if lines is None:
        raise OperationError(f"Dockerfile {path} does not exist on this host")
    try:
        text, changed = patch_dockerfile(_text(lines), reload_delay, force_polling)
    except ValueError as exc:
        raise OperationError(f"{path}: {exc}") from exc
    if not changed:
        host.noop(f"{path}: CMD and polling env already set")
        return
    yield from put_text(path, text)


@operation()
def compose_service(
    path: str,
    service: str = "backend",
    reload_delay: float = 2,
    force_polling: bool = True,
    command_if_missing: tuple[str, ...] = (),
):
    """
    The backend's compose service: polling env and reload arguments.

    + command_if_missing: the command to write when the service has none (no Dockerfile
      carries the patched CMD)

    **Example:**

    .. code:: python

        backend_reload.compose_service(path="/srv/quant/docker-compose-ml.yml", service="backend")
    """
    lines = _read(path, "compose file")
    if lines is None:
        raise OperationError(f"compose file {path} does not exist on this host")
    try:
        text, changed = patch_compose_backend(
            _text(lines), service, reload_delay, force_polling, list(command_if_missing) or None
        )
    except ComposeError as exc:
        raise OperationError(f"{path}: {exc}") from exc
    if not changed:
        host.noop(f"{path}: service {service} already polls")
        return
    yield from put_text(path, text)


def inspect_backend(name: str) -> tuple[Mapping, Mapping | None, dict]:
    """The backend container, its image, and the ContainerInspect fact of both (two reads:
    the image is known only once the container is)."""
    first = docker.inspect_facts(name, name)
    if first["container"] is None:
        raise OperationError(f"backend container {name} does not exist on this host")
    image_ref = first["container"]["Config"]["Image"]
    facts = docker.inspect_facts(name, image_ref)
    return facts["container"], facts["image"], facts


@operation()
def container(
    container: str,
    reload_delay: float = 2,
    force_polling: bool = True,
    port: int = 8000,
    health_path: str = "/health",
):
    """
    The running backend with the polling env and reload arguments: recreated (verified, rolled
    back on failure) only when it differs.

    **Example:**

    .. code:: python

        backend_reload.container(container="quant-backend", reload_delay=2)
    """
    try:
        current, image, facts = inspect_backend(container)
    except docker.HostFailed:
        return
    desired = desired_container(current, image, reload_delay, force_polling, looks_secret)

    def verify(run):
        return verify_backend(run, container, port, health_path)

    yield from docker.container._inner(spec=desired, verify=verify, facts=facts)


@deploy("Fix the backend's uvicorn --reload")
def fix_backend_reload(settings: BackendSettings | None = None):
    settings = settings or host_settings.of_host(host, "backend")
    if settings.dockerfile:
        dockerfile(
            name=f"Backend Dockerfile {settings.dockerfile}",
            path=settings.dockerfile,
            reload_delay=settings.reload_delay,
            force_polling=settings.force_polling,
        )
    if settings.compose_file:
        # Without a Dockerfile to carry the CMD, compose must name the command itself.
        fallback: tuple[str, ...] = ()
        if not settings.dockerfile:
            try:
                current, _, _ = inspect_backend(settings.container)
            except docker.HostFailed:
                return
            fallback = tuple(current["Config"].get("Cmd") or ())
        compose_service(
            name=f"Compose service {settings.compose_service} in {settings.compose_file}",
            path=settings.compose_file,
            service=settings.compose_service,
            reload_delay=settings.reload_delay,
            force_polling=settings.force_polling,
            command_if_missing=fallback,
        )
    container(
        name=f"Backend container {settings.container}",
        container=settings.container,
        reload_delay=settings.reload_delay,
        force_polling=settings.force_polling,
        port=settings.port,
        health_path=settings.health_path,
    )
