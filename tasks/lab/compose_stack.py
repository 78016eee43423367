"""The compose-style lab (`scripts/lab up --style compose`): the stack and scenarios of
tasks/lab/stack.py, brought up by the host's compose tool from a compose file written the way
users write theirs (compose/docker-compose.yml): no container_name, the project's default network
with service names as addresses, a named volume, a bind-mounted config file, the user's own
healthchecks, a network alias, env_file secrets, log options and an `x-common` anchor.

The project is the lab's prefix (also in the `.env` beside the file, so a plain `docker-compose up
-d` in the lab folder addresses the same containers). Compose names the containers
(`<prefix>_<service>_1` with v1, `<prefix>-<service>-1` with v2): they are found by compose's
labels, never by a name this module chose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import docker.errors

from tasks.core.mlflow_server import server_spec
from tasks.core.sizes import docker_size
from tasks.lab.layout import (
    ARTIFACT_BUCKET,
    COMPOSE_FILE_NAME,
    COMPOSE_S3_ENDPOINT,
    COMPOSE_STORE_URI,
    S3_ACCESS_KEY,
)
from tasks.lab.stack import (
    LAB_MLFLOW_VERSION,
    MLFLOW_SCENARIOS,
    SECRET_NAMES,
    SERVICE_IMAGES,
    SERVICES,
    VERSION_LABEL,
    ContainerSpec,
    Lab,
    Stack,
)
from tasks.settings.mlflow import MlflowSettings

TEMPLATE = Path(__file__).parent / "compose" / COMPOSE_FILE_NAME
GUNICORN_HOOKS = Path(__file__).parent / "recipes" / "mlflow2" / "gunicorn_incident.py"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"

# Each service's env_file: the variables it reads, and the lab secret each one holds.
ENV_FILES = {
    "postgres": {"POSTGRES_PASSWORD": "postgres_password"},
    "minio": {"MINIO_ROOT_PASSWORD": "s3_secret_key"},
    "mlflow": {"PGPASSWORD": "mlflow_db_password", "AWS_SECRET_ACCESS_KEY": "s3_secret_key"},
    "backend": {"PGPASSWORD": "quant_user_password"},
}


def compose_command() -> list[str]:
    """The host's compose tool: `docker compose` (v2) when it answers, else `docker-compose` (v1)."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        try:
            proc = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            continue
        if proc.returncode == 0:
            return argv
    raise SystemExit(
        "lab: no compose tool answers (`docker compose version`, `docker-compose version`); "
        "scripts/setup installs Debian's docker-compose"
    )


def compose_container_name(command: list[str], project: str, service: str) -> str:
    """The name compose gives a service's first container: v2 joins with '-', v1 with '_'."""
    sep = "-" if command[:2] == ["docker", "compose"] else "_"
    return sep.join((project, service, "1"))


# the compose file ------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./:@=+-]*|--?[A-Za-z][A-Za-z0-9-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def yaml_scalar(value: str) -> str:
    """A string as a user would write it in YAML: plain when it reads back as the same string,
    else double-quoted (JSON's quoting is valid YAML)."""
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    return json.dumps(value)


def healthy_mlflow_settings() -> MlflowSettings:
    """The settings inventories/lab_compose.py gives the deploy, defaults included."""
    return MlflowSettings(
        backend_store_uri=COMPOSE_STORE_URI, artifacts_destination=f"s3://{ARTIFACT_BUCKET}"
    )


def mlflow_service(scenario: str) -> tuple[str, str]:
    """The scenario's lines of the mlflow service: (restart, init, command, environment) and (deploy,
    labels). `healthy` is what deploys/fix_mlflow.py makes of healthy_mlflow_settings(), through the
    same server_spec(); `incident` is what the seed ran (tasks.lab.stack.container_specs)."""
    env = {"MLFLOW_S3_ENDPOINT_URL": COMPOSE_S3_ENDPOINT, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY}
    labels: dict[str, str] = {}
    reservation: str | None
    if scenario == "healthy":
        settings = healthy_mlflow_settings()
        spec = server_spec(settings, LAB_MLFLOW_VERSION)
        command, restart = list(spec.command), settings.restart_policy
        env.update(spec.env)
        limit, reservation = docker_size(settings.memory_limit), docker_size(settings.memory_reservation)
        labels[VERSION_LABEL] = LAB_MLFLOW_VERSION
        comment = (
            "# 2 sync workers, recycled every ~100 requests; blank GUNICORN_CMD_ARGS so nothing overrides"
        )
        init = settings.init
    else:
        incident = MLFLOW_SCENARIOS["incident"]
        command = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--backend-store-uri"]
        command += [COMPOSE_STORE_URI, "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}"]
        command += ["--workers", str(incident["workers"])]
        restart, limit, reservation = incident["restart"], incident["memory"], incident["reservation"]
        env["GUNICORN_CMD_ARGS"] = "-c /etc/quantlab/gunicorn_incident.py"
        comment = "# a crashing server is restarted 3 times, then left for someone to look at"
        init = False  # the seed's: `mlflow server` as PID 1
    server = [f"    {comment}", f"    restart: {yaml_scalar(restart)}"]
    if init:
        server.append("    init: true                 # Docker's init as PID 1: a stop waits out no grace")
    server.append("    command:")
    server += [f"      - {yaml_scalar(part)}" for part in command]
    server += ["    environment:"] + [f"      {key}: {yaml_scalar(value)}" for key, value in env.items()]
    resources = ["    deploy:", "      resources:", "        limits:", f"          memory: {limit}"]
    if reservation:
        resources += ["        reservations:", f"          memory: {reservation}"]
    if labels:
        resources += ["    labels:"] + [f"      {key}: {json.dumps(value)}" for key, value in labels.items()]
    return "\n".join(server), "\n".join(resources)


def render_compose(lab: Lab, scenario: str, refs: dict[str, str]) -> str:
    """The lab's compose file for a scenario, as text (plain templating: it reads as hand-written)."""
    server, resources = mlflow_service(scenario)
    images = {f"{service}_image": refs[image] for service, image in SERVICE_IMAGES.items()}
    ports = {f"{service}_port": str(lab.port(service)) for service in SERVICES}
    return Template(TEMPLATE.read_text()).substitute(
        images, **ports, s3_access_key=S3_ACCESS_KEY, mlflow_server=server, mlflow_resources=resources
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)


# the stack -------------------------------------------------------------------------------------


class ComposeStack(Stack):
    """Stack's story (seed, bucket, load test, incident database, OOM, waits, status), with the
    containers made and remade by compose from the lab folder's docker-compose.yml."""

    def __init__(self, lab: Lab, client, command: list[str] | None = None):
        super().__init__(lab, client)
        if lab.prefix != lab.prefix.lower():
            raise SystemExit(
                f"lab: compose project names are lowercase; use a lowercase prefix, not {lab.prefix!r}"
            )
        saved = json.loads(lab.state_file.read_text()) if lab.state_file.exists() else {}
        self._command = command or saved.get("compose_command")

    @property
    def command(self) -> list[str]:
        """The compose tool's argv, detected once (then kept in the lab state)."""
        if not self._command:
            self._command = compose_command()
        return list(self._command)

    @property
    def project(self) -> str:
        return self.lab.prefix

    @property
    def file(self) -> Path:
        return self.lab.folder / COMPOSE_FILE_NAME

    def env_file(self, service: str) -> Path:
        return self.lab.folder / "secrets" / f"{service}.env"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`<tool> -p <project> -f <file> ARGS`, run in the lab folder as a user would."""
        argv = [*self.command, "-p", self.project, "-f", str(self.file), *args]
        proc = subprocess.run(argv, cwd=self.lab.folder, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise SystemExit(f"lab: `{' '.join(argv)}` failed:\n{proc.stderr.strip()[-3000:]}")
        return proc

    # containers, found by compose's labels
    def _project_containers(self, service: str | None = None) -> list:
        labels = [f"{PROJECT_LABEL}={self.project}"] + ([f"{SERVICE_LABEL}={service}"] if service else [])
        return self.client.containers.list(all=True, filters={"label": labels})

    def container(self, service: str):
        found = [
            c
            for c in self._project_containers(service)
            if not c.name.endswith("-previous") and c.labels.get("com.docker.compose.oneoff") != "True"
        ]
        if not found:
            return None
        expected = compose_container_name(self.command, self.project, service)
        return next((c for c in found if c.name == expected), max(found, key=lambda c: c.attrs["Created"]))

    def name(self, service: str) -> str:
        container = self.container(service)
        return container.name if container else compose_container_name(self.command, self.project, service)

    def _ensure_container(self, service: str, spec: ContainerSpec):
        before = self.container(service)
        self.compose("up", "-d", "--no-deps", service)
        after = self.container(service)
        if after is None:
            raise SystemExit(
                f"lab: compose made no container for service {service!r} (project {self.project})"
            )
        return after, before is None or before.id != after.id

    def _recreate(self, service: str, spec: ContainerSpec):
        self.compose("up", "-d", "--force-recreate", "--no-deps", service)

    # the files, before any container
    def _prepare(self, scenario: str, refs: dict, values: dict):
        if self.lab.state_file.exists():
            style = json.loads(self.lab.state_file.read_text()).get("style", "docker")
            if style != "compose":
                raise SystemExit(
                    f"lab: {self.lab.prefix} is up in the {style} style; "
                    f"`scripts/lab --prefix {self.lab.prefix} down` first"
                )
        self.write_project(scenario, refs, values)

    def write_project(self, scenario: str, refs: dict, values: dict):
        """docker-compose.yml, .env (the project name), secrets/<service>.env and the bind-mounted
        gunicorn hooks: what a user keeps in the folder they run compose from."""
        folder = self.lab.folder
        self.file.write_text(render_compose(self.lab, scenario, refs))
        (folder / ".env").write_text(
            "# Read by compose in this folder: the project, so `docker-compose up -d` here manages\n"
            "# the same containers as the lab.\n"
            f"COMPOSE_PROJECT_NAME={self.project}\n"
        )
        for service, variables in ENV_FILES.items():
            lines = [f"{var}={values[secret]}" for var, secret in variables.items()]
            _write_private(self.env_file(service), "\n".join(lines) + "\n")
        (folder / "mlflow").mkdir(exist_ok=True)
        shutil.copyfile(GUNICORN_HOOKS, folder / "mlflow" / GUNICORN_HOOKS.name)

    def _record(self, scenario: str, refs: dict, specs: dict[str, ContainerSpec]):
        self.write_state(scenario, refs)

    def write_state(self, scenario: str, refs: dict):
        state = {
            "style": "compose",
            "compose_command": self.command,
            "project": self.project,
            "compose_file": str(self.file),
            "prefix": self.lab.prefix,
            "scenario": scenario,
            "home": str(self.lab.folder),
            "network": f"{self.project}_default",
            "volume": f"{self.project}_pgdata",
            "containers": {s: self.name(s) for s in SERVICES},
            "ports": {s: self.lab.port(s) for s in SERVICES},
            "images": refs,
            "secret_files": {n: str(self.lab.secret_path(n)) for n in SECRET_NAMES},
            "env_files": {s: str(self.env_file(s)) for s in ENV_FILES},
        }
        self.lab.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def down(self):
        """compose down (containers, network, volumes), then whatever still carries the project's
        label or a `-previous` name a deploy left, then the lab folder."""
        project = {"label": f"{PROJECT_LABEL}={self.project}"}
        previous = [
            c
            for s in SERVICES
            for c in self.client.containers.list(all=True, filters={"name": f"^/{self.name(s)}-previous$"})
        ]
        containers = {c.id: c for c in self._project_containers() + previous}
        networks = self.client.networks.list(filters=project)
        volumes = self.client.volumes.list(filters=project)
        if self.file.exists():
            proc = self.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
            if proc.returncode != 0:
                self.log(f"lab: compose down failed, removing by label instead: {proc.stderr.strip()[-500:]}")
        # What compose did not remove (a deploy's leftovers, or compose down failed).
        for container in containers.values():
            _gone_or(container.remove, force=True, v=True)
        for network in networks:
            _gone_or(network.remove)
        for volume in volumes:
            _gone_or(volume.remove, force=True)
        if self.lab.folder.exists():
            shutil.rmtree(self.lab.folder)
        removed = [c.name for c in containers.values()] + [r.name for r in networks + volumes]
        self.log(f"lab: {self.lab.prefix} is down (removed {', '.join(removed) or 'nothing'})")
        return removed


def _gone_or(remove, **kwargs) -> None:
    try:
        remove(**kwargs)
    except docker.errors.NotFound:  # compose removed it already
        pass
