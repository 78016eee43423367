"""Packaged deploy: the MLflow tracking server brought to its settings, verified, compose kept in sync."""

from __future__ import annotations

import re
from dataclasses import replace

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationError

from tasks import settings as host_settings
from tasks.checks.mlflow import verify_mlflow
from tasks.core.compose import ComposeError, ServicePatch, compose_diff, patch_compose_service, service_view
from tasks.core.container_spec import ContainerSpec, Plan, format_plan, spec_from_inspect
from tasks.core.mlflow_server import VERSION_LABEL, desired_container, server_spec
from tasks.facts.compose import ComposeContainer
from tasks.facts.docker import ImageVersion
from tasks.operations import compose, docker
from tasks.operations.recap import say
from tasks.operations.refusals import deploy, operation
from tasks.operations.text_files import put_text
from tasks.settings.mlflow import MANAGED_ENV_KEYS, MlflowSettings, resolve_secret_env


def host_mlflow_settings() -> MlflowSettings:
    """The host's validated `mlflow` block (parsed once per run)."""
    return host_settings.of_host(host, "mlflow")


def image_mlflow_version(settings: MlflowSettings, facts: dict | None = None) -> str:
    """The MLflow version in the image: from our label on the running container when it runs
    that very image (no extra round trip), else from a throwaway container of the image.
    ``facts``: the ContainerInspect fact already read by the caller, if any."""
    if facts is None:
        facts = docker.inspect_facts(settings.container_name, settings.image, settings.secret_env)
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
        if settings.compose_file:
            fact = compose.read_service(settings.compose_file, settings.compose_service)
            target = compose_target(settings, fact)
            if not isinstance(target, str):  # DOCKER_MODE is the one str answer
                yield from _through_compose(settings, fact, target)
                return
        # One read of the container, its kept previous copy and the image serves every decision
        # below: each fact read is a remote command, and a no-change run should cost one.
        facts = docker.inspect_facts(settings.container_name, settings.image, settings.secret_env)
        version = image_mlflow_version(settings, facts)
        _refuse_downgrade_on_same_store(settings, version, facts)
    except docker.HostFailed:
        return
    spec_ = server_spec(settings, version)
    for note in spec_.notes:
        say(host, f"note (MLflow {version}, {spec_.kind}): {note}")
    desired = desired_container(settings, spec_, secret_values)
    desired = replace(desired, labels={**desired.labels, VERSION_LABEL: version})

    def verify(run):
        return verify_mlflow(
            run,
            settings.container_name,
            settings.port,
            spec_.kind,
            spec_.workers,
            settings.start_timeout,
            settings.restart_watch,
        )

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
    try:
        fact = compose.read_service(compose_file, settings.compose_service)
        if compose_target(settings, fact) != DOCKER_MODE:
            host.noop(f"{compose_file}: applied through compose with the container (above)")
            return
        if fact["text"] is None:
            raise OperationError(f"compose file {settings.compose_file} does not exist on this host")
        version = image_mlflow_version(settings)
    except docker.HostFailed:
        return
    spec_ = server_spec(settings, version)
    patch = ServicePatch(
        command=tuple(spec_.command),
        environment={**settings.env, **spec_.env},
        memory_limit=settings.memory_limit,
        memory_reservation=settings.memory_reservation,
        init=settings.init,
    )
    try:
        text, changed = patch_compose_service(fact["text"], settings.compose_service, patch)
    except ComposeError as exc:
        raise OperationError(f"{settings.compose_file}: {exc}") from exc
    if not changed:
        host.noop(f"{settings.compose_file}: service {settings.compose_service} matches the settings")
        return
    yield from put_text(compose_file, text)


# -- compose mode ---------------------------------------------------------------------------------

DOCKER_MODE = "docker"


def compose_target(settings: MlflowSettings, fact: dict) -> ComposeContainer | None | str:
    """Which way the container is managed: through compose (its compose-made container, or None
    when compose has made none yet) or ``DOCKER_MODE`` (a container the settings name that compose
    did not make from this file: recreated by the deploy, the file patched to match)."""
    found = compose.containers_of(fact, settings.compose_file or "", settings.compose_project)
    made = [c for c in found if c.config_hash]
    if len(made) > 1:
        raise OperationError(
            f"service {settings.compose_service} has {len(made)} containers from {settings.compose_file} "
            f"({', '.join(c.name for c in made)}): scaled services are not managed; nothing was changed"
        )
    if made:
        return made[0]
    if "container_name" in settings.model_fields_set or not fact["tool"]:
        return DOCKER_MODE
    return None


def _secrets_come_from_the_file(settings: MlflowSettings, view: dict) -> None:
    """Compose mode never writes a secret: each ``secret_env`` key must come from the service's own
    ``environment`` (as ``${VAR}``) or an ``env_file``, as the file's author arranged."""
    environment = view.get("environment") or {}
    if isinstance(environment, list):
        environment = {str(item).partition("=")[0]: None for item in environment}
    if view.get("env_file"):
        return
    missing = [name for name in settings.secret_env if name not in environment]
    if missing:
        raise OperationError(
            f"mlflow.secret_env.{missing[0]}: service {settings.compose_service} in {settings.compose_file} "
            f"does not set it, and the deploy never writes a secret into a compose file: add "
            f"`{missing[0]}: ${{{missing[0]}}}` or an env_file to the service. Nothing was changed"
        )


def _through_compose(settings: MlflowSettings, fact: dict, target: ComposeContainer | None):
    file, service = settings.compose_file or "", settings.compose_service
    if not fact["tool"]:
        raise OperationError(
            f"{target.name if target else service} was made by compose from {file}, but this host has no "
            "compose tool (`docker compose` or `docker-compose`); nothing was changed"
        )
    if fact["text"] is None:
        raise OperationError(f"compose file {file} does not exist on this host")
    try:
        view = service_view(fact["text"], service)
    except ComposeError as exc:
        raise OperationError(f"{file}: {exc}") from exc
    _secrets_come_from_the_file(settings, view)
    explicit_image = "image" in settings.model_fields_set
    image = settings.image if explicit_image else view.get("image")
    if not isinstance(image, str) or not image:
        raise OperationError(
            f"{file}: service {service} has no image (a `build:` service is not managed); nothing was changed"
        )
    # Before compose made it, the container has no name yet: the service's stands in.
    name = target.name if target else service
    local = settings.model_copy(update={"container_name": name, "image": image})
    facts = docker.inspect_facts(name, image, settings.secret_env)
    if not target:
        facts = {**facts, "container": None, "previous": None}
    version = image_mlflow_version(local, facts)
    _refuse_downgrade_on_same_store(local, version, facts)
    spec_ = server_spec(local, version)
    for note in spec_.notes:
        say(host, f"note (MLflow {version}, {spec_.kind}): {note}")
    # The spec blanks the managed keys the image might set; one the image does not set is
    # simply left out of the file (and must stay out of the container), unless the service has
    # an env_file, which may set it: the file's environment overrides the env_file.
    image_env = {item.partition("=")[0] for item in (facts["image"].get("Config") or {}).get("Env") or []}
    blank_ok = image_env if not view.get("env_file") else set(spec_.env)
    environment = {**settings.env, **{k: v for k, v in spec_.env.items() if v or k in blank_ok}}
    labels = {**settings.labels, VERSION_LABEL: version}
    patch = ServicePatch(
        image=image if explicit_image else None,
        command=tuple(spec_.command),
        environment=environment,
        remove_environment=frozenset(MANAGED_ENV_KEYS - set(environment)),
        memory_limit=settings.memory_limit,
        memory_reservation=settings.memory_reservation,
        restart=settings.restart_policy,
        labels=labels,
        init=settings.init,
    )
    try:
        new_text, changed_keys = patch_compose_service(fact["text"], service, patch)
    except ComposeError as exc:
        raise OperationError(f"{file}: {exc}") from exc
    current = facts["container"]
    made = spec_from_inspect(current) if current else None
    desired = ContainerSpec(
        name=name,
        image=image,
        command=tuple(spec_.command),
        env=environment,
        labels=labels,
        memory=settings.memory_limit,
        memory_reservation=settings.memory_reservation,
        restart_policy=settings.restart_policy,
        init=settings.init,
        # Ports, entrypoint and networks are the file's business here: compared with themselves.
        ports=made.ports if made else (),
        entrypoint=made.entrypoint if made else None,
    )
    plan = docker.plan_from_facts(desired, facts) if current else Plan("create", name)
    # An apply that did not finish left the file before it beside it: go back to that one on failure.
    kept = compose.unfinished_apply(file)
    if not changed_keys and not plan.changed and kept is None:
        host.noop(f"service {service} in {file} and its container {name} match the settings")
        return
    change = compose.ComposeChange(
        tool=tuple(fact["tool"]),
        file=file,
        service=service,
        project=target.project if target else settings.compose_project,
        old_text=fact["text"] if kept is None else kept,
        new_text=new_text,
        spec=desired,
        resumed=kept is not None,
    )
    compose.log_change(change, compose_diff(change.old_text, new_text, file), format_plan(plan))

    def verify_for(container: str):
        return lambda run: verify_mlflow(
            run,
            container,
            settings.port,
            spec_.kind,
            spec_.workers,
            settings.start_timeout,
            settings.restart_watch,
        )

    yield FunctionCommand(compose.apply, (change, verify_for), {})


@deploy("Fix the MLflow tracking server")
def fix_mlflow():
    settings = host_mlflow_settings()
    secret_values = resolve_secret_env(host.name, settings)
    through_compose = settings.compose_file and "container_name" not in settings.model_fields_set
    server(
        name=(
            f"MLflow service {settings.compose_service} ({settings.compose_file})"
            if through_compose
            else f"MLflow container {settings.container_name}"
        ),
        settings=settings,
        secret_values=secret_values,
    )
    if settings.compose_file:
        compose_service(
            name=f"Compose service {settings.compose_service} in {settings.compose_file}",
            settings=settings,
            secret_values=secret_values,
        )
