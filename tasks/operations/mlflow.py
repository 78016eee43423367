"""Packaged deploy: the MLflow tracking server brought to its settings, verified, compose kept in sync."""

from __future__ import annotations

import io
import re
from dataclasses import replace

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, OperationError, deploy, operation
from pyinfra.facts.files import FileContents

from tasks import settings as host_settings
from tasks.checks.mlflow import verify_mlflow
from tasks.core.compose import ComposeError, ServicePatch, patch_compose_service
from tasks.core.mlflow_server import desired_container, server_spec
from tasks.facts.docker import ImageVersion
from tasks.operations import docker
from tasks.settings.mlflow import MlflowSettings, resolve_secret_env

VERSION_LABEL = "io.quantlab.mlflow-version"


def host_mlflow_settings() -> MlflowSettings:
    """The host's validated `mlflow` block (parsed once per run)."""
    return host_settings.of_host(host, "mlflow")


def image_mlflow_version(settings: MlflowSettings, facts: dict | None = None) -> str:
    """The MLflow version in the image: from our label on the running container when it runs
    that very image (no extra round trip), else from a throwaway container of the image.
    ``facts``: the ContainerInspect fact already read by the caller, if any."""
    facts = facts if facts is not None else docker.inspect_facts(settings.container_name, settings.image)
    if facts["image"] is None:
        raise OperationError(
            f"image {settings.image} is not on this host: pull or build it first "
            f"(`docker pull {settings.image}`); nothing was changed"
        )
    current = facts["container"]
    if current and current.get("Image") == facts["image"]["Id"]:
        label = (current.get("Config", {}).get("Labels") or {}).get(VERSION_LABEL)
        if label:
            return label
    version = host.get_fact(ImageVersion, image=settings.image, distribution="mlflow")
    if not version and docker.host_failed():
        raise docker.HostFailed()
    if not version:
        raise OperationError(f"image {settings.image} has no `mlflow` Python package; nothing was changed")
    return version


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _refuse_downgrade_on_same_store(settings: MlflowSettings, version: str, facts: dict):
    """MLflow upgrades its database schema when it starts, and an older MLflow then refuses to
    start on it ("Can't locate revision ..."): moving down on the same backend store is refused."""
    current = facts["container"]
    if not current:
        return
    running = (current.get("Config", {}).get("Labels") or {}).get(VERSION_LABEL)
    command = current.get("Config", {}).get("Cmd") or []
    store = (
        command[command.index("--backend-store-uri") + 1] if "--backend-store-uri" in command[:-1] else None
    )
    if running and store == settings.backend_store_uri and _version_tuple(version) < _version_tuple(running):
        raise OperationError(
            f"{settings.container_name} runs MLflow {running} and {settings.image} has MLflow {version}: "
            f"MLflow {running} has migrated the backend store's schema, which {version} cannot open. "
            "Nothing was changed. Restore the database from before the upgrade, or use another store."
        )


@operation()
def server(settings: MlflowSettings, secret_values: dict):
    """
    The MLflow server container for these settings and the MLflow version in its image.

    + settings: validated ``MlflowSettings``
    + secret_values: env values read on the controller (``resolve_secret_env``)

    **Example:**

    .. code:: python

        mlflow_deploy.server(settings=host_mlflow_settings(), secret_values={})
    """
    try:
        # One read of the container, its kept previous copy and the image serves every decision
        # below: each fact read is a remote command, and a no-change run should cost one.
        facts = docker.inspect_facts(settings.container_name, settings.image)
        version = image_mlflow_version(settings, facts)
        _refuse_downgrade_on_same_store(settings, version, facts)
    except docker.HostFailed:
        return
    spec_ = server_spec(settings, version)
    for note in spec_.notes:
        logger.info(f"{host.print_prefix}note (MLflow {version}, {spec_.kind}): {note}")
    desired = desired_container(settings, spec_, secret_values)
    desired = replace(desired, labels={**desired.labels, VERSION_LABEL: version})

    def verify(run):
        return verify_mlflow(run, settings.container_name, settings.port, spec_.kind, spec_.workers)

    yield from docker.container._inner(spec=desired, verify=verify, facts=facts)


@operation()
def compose_service(settings: MlflowSettings, secret_values: dict):
    """
    Patch the MLflow service in the host's compose file to the same settings, so a later
    `docker compose up` does not undo the fix. Secret env values are not written to the file.

    **Example:**

    .. code:: python

        mlflow_deploy.compose_service(settings=host_mlflow_settings(), secret_values={})
    """
    compose_file = settings.compose_file
    if not compose_file:
        raise OperationError("mlflow.compose_file is not set: there is no compose file to patch")
    lines = host.get_fact(FileContents, path=compose_file)
    if docker.host_failed():
        return
    if lines is None:
        raise OperationError(f"compose file {settings.compose_file} does not exist on this host")
    try:
        version = image_mlflow_version(settings)
    except docker.HostFailed:
        return
    spec_ = server_spec(settings, version)
    patch = ServicePatch(
        command=tuple(spec_.command),
        environment={**settings.env, **spec_.env},
        memory_limit=settings.memory_limit,
        memory_reservation=settings.memory_reservation,
    )
    try:
        text, changed = patch_compose_service("\n".join(lines) + "\n", settings.compose_service, patch)
    except ComposeError as exc:
        raise OperationError(f"{settings.compose_file}: {exc}") from exc
    if not changed:
        host.noop(f"{settings.compose_file}: service {settings.compose_service} matches the settings")
        return
    yield FileUploadCommand(io.BytesIO(text.encode()), compose_file)


@deploy("Fix the MLflow tracking server")
def fix_mlflow():
    settings = host_mlflow_settings()
    secret_values = resolve_secret_env(host.name, settings)
    server(name=f"MLflow container {settings.container_name}", settings=settings, secret_values=secret_values)
    if settings.compose_file:
        compose_service(
            name=f"Compose service {settings.compose_service} in {settings.compose_file}",
            settings=settings,
            secret_values=secret_values,
        )
