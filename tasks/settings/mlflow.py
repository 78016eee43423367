"""
The ``mlflow`` block: the tracking server's container and server settings (deploys/fix_mlflow.py).

Defaults are the seed incident's fix: 2 sync workers, timeout 60, max-requests 100 + jitter 10,
1 GiB limit, 512 MiB reservation; and the server under Docker's init, so a recreate's stop of the
old container takes well under a second. Host data says where things are::

    mlflow = {
        "container_name": "quant-mlflow",
        "image": "quantlab/mlflow:2.9.2",
        "ports": ["127.0.0.1:15500:5000"],
        "secret_env": {"MLFLOW_BACKEND_STORE_URI": {"env": "MLFLOW_DB_URI"}},
    }
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, StrictInt, StringConstraints, field_validator, model_validator

from tasks.core.redact import SecretValues, credential_problem
from tasks.core.sizes import GIB, MIB, human_size
from tasks.settings.base import Block, Pattern
from tasks.settings.errors import SettingsError
from tasks.settings.types import (
    ENV_NAME_RE,
    ComposeProject,
    ComposeService,
    ContainerName,
    Duration,
    HostPath,
    ImageRef,
    MemorySize,
    NetworkName,
    SecretSource,
    plaintext_problem,
)

# Env keys the deploy owns: they steer which server runs and with which options, so a
# value in host data would fight the typed settings (see tasks/core/mlflow_server.py).
MANAGED_ENV_KEYS = frozenset(
    {"GUNICORN_CMD_ARGS", "MLFLOW_GUNICORN_OPTS", "MLFLOW_UVICORN_OPTS", "MLFLOW_WORKERS"}
)
# Flags the deploy writes itself; the same flag in extra_args would be ambiguous.
MANAGED_FLAGS = frozenset(
    {
        "-h", "--host", "-p", "--port", "-w", "--workers",
        "--gunicorn-opts", "--uvicorn-opts", "--waitress-opts",
        "--backend-store-uri", "--default-artifact-root", "--artifacts-destination",
    }
)  # fmt: skip
_PORT_RE = re.compile(
    r"(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?P<host>\d{1,5}):(?P<container>\d{1,5})(?:/(?P<proto>tcp|udp|sctp))?"
)

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
_HOST_NAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _ip_address(text: str) -> bool:
    """An IPv4 (each octet 0-255, no leading zeros) or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _env_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{type(value).__name__} value; use a string")
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("value spans lines (Docker env files cannot carry it)")
    return text


def _string_map(block: str, value: Any, names: re.Pattern[str] | None) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    problems, result = [], {}
    for name, item in value.items():
        if not isinstance(name, str) or (names is not None and not names.match(name)):
            problems.append(f"{block}.{name}: is not a valid name")
            continue
        try:
            result[name] = _env_value(item)
        except ValueError as exc:
            problems.append(f"{block}.{name}: {exc}")
    if problems:
        raise ValueError("\n".join(problems))
    return result


class MlflowSettings(Block):
    """The MLflow tracking server: container, server options, memory, compose service."""

    container_name: ContainerName = Field(
        "quant-mlflow", description="the container; unset with compose_file: the one compose made"
    )
    image: ImageRef = Field(
        "quantlab/mlflow:2.9.2", description="image with `mlflow`; unset with compose_file: the file's"
    )
    server: Literal["auto", "gunicorn", "uvicorn"] = Field(
        "auto", description="auto: gunicorn for MLflow < 3.3, uvicorn from 3.3 on"
    )
    host: NonEmpty = Field("0.0.0.0", description="address the server binds inside the container")
    port: StrictInt = Field(5000, ge=1, le=65535, description="inside the container")
    backend_store_uri: str | None = Field(None, description="no password here: use secret_env")
    default_artifact_root: str | None = None
    artifacts_destination: str | None = None
    extra_args: tuple[str, ...] = Field((), description="more `mlflow server` flags")
    workers: StrictInt = Field(2, ge=1, le=64)
    timeout: StrictInt = Field(60, ge=1, le=86400, description="gunicorn worker timeout, seconds")
    max_requests: StrictInt = Field(
        100, ge=0, le=10_000_000, description="recycle a worker after this many requests (0: never)..."
    )
    max_requests_jitter: StrictInt = Field(10, ge=0, le=10_000_000, description="...plus up to this many")
    worker_class: Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_.]*", "a gunicorn worker class")] = "sync"
    memory_limit: MemorySize = Field(1 * GIB, description="Docker size: bytes, or 512m, 1g")
    memory_reservation: MemorySize = Field(512 * MIB, description="at most memory_limit")
    start_timeout: Duration = Field(
        90,
        ge=5,
        le=3600,
        description="seconds a new container gets to become healthy and pass verification before "
        "it is rolled back; longer on slow or loaded hosts (MLflow 3 imports for tens of seconds)",
    )
    restart_watch: Duration = Field(
        5,
        ge=0,
        le=3600,
        description="after a change, the new container's restart count must not move for this long, "
        "counted from when it is first seen (its other checks run meanwhile, so this is a floor on the "
        "verification, not an addition): longer catches a server that dies later and rolls it back, "
        "but every repair takes at least this long; 0: not watched (verify_stack and the watcher "
        "still see later restarts)",
    )
    init: bool | None = Field(
        True,
        description="run the server under Docker's init (`--init`, compose `init: true`): `mlflow "
        "server` as PID 1 ignores SIGTERM, so each stop waits out the grace; set on a container it "
        "lacks, it costs one recreate; null: left as the container (or compose file) has it",
    )
    restart_policy: Annotated[
        str,
        Pattern(
            r"no|always|unless-stopped|on-failure(:\d+)?",
            "no, always, unless-stopped, on-failure or on-failure:N",
        ),
    ] = "unless-stopped"
    ports: tuple[str, ...] = Field((), description="[ip:]host_port:container_port[/proto]")
    network: NetworkName | None = None
    env: dict[str, str] = Field(default_factory=dict, description="non-secret environment")
    labels: dict[str, str] = Field(default_factory=dict)
    compose_file: HostPath | None = Field(None, description="the compose file on the host to keep in sync")
    compose_service: ComposeService = Field(
        "mlflow", description="the service in compose_file; compose-made containers are found by it"
    )
    compose_project: ComposeProject | None = Field(
        None, description="compose project (default: the one whose containers came from compose_file)"
    )
    secret_env: dict[str, SecretSource] = Field(
        default_factory=dict,
        description='{"VAR": {"env": "NAME"} or {"file": "/path"}}, read on the controller',
    )

    @field_validator("host")
    @classmethod
    def _bind_host(cls, value: str) -> str:
        if not (_ip_address(value) or _HOST_NAME_RE.fullmatch(value)):
            raise ValueError(f"{value!r} is not an IP address or a host name")
        return value

    @field_validator("backend_store_uri", "default_artifact_root", "artifacts_destination")
    @classmethod
    def _no_password_in_uri(cls, value: str | None) -> str | None:
        try:
            has_password = value is not None and urlsplit(value).password is not None
        except ValueError:
            has_password = False
        if has_password:
            # Command lines show in `ps` and `docker inspect`: keep passwords out.
            raise ValueError(
                "contains a password; put the URI in secret_env (MLFLOW_BACKEND_STORE_URI) instead"
            )
        return value

    @field_validator("extra_args", "ports", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
            raise ValueError(f"{value!r} is not a list of strings")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise ValueError(f"{flag} is set by the deploy; use its setting instead")
            if problem := credential_problem(arg):
                # Command lines show in `ps` and `docker inspect`: keep credentials out.
                raise ValueError(f"an argument {problem}: a credential; pass it through secret_env")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for port in value:
            match = _PORT_RE.fullmatch(port)
            if (
                not match
                or not all(1 <= int(match[p]) <= 65535 for p in ("host", "container"))
                or (match["ip"] and not _ip_address(match["ip"].strip("[]")))
            ):
                raise ValueError(f"{port!r} is not [ip:]host_port:container_port[/proto]")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> dict[str, str]:
        env = _string_map("env", value, ENV_NAME_RE)
        problems = []
        for name in env:
            if name in MANAGED_ENV_KEYS:
                problems.append(
                    f"env.{name}: is managed by the deploy (workers, timeout, "
                    "max_requests ... settings); remove it"
                )
            elif problem := plaintext_problem(name, env[name]):
                problems.append(f"env.{name}: {problem}; use secret_env so the value never sits in inventory")
        if problems:
            raise ValueError("\n".join(problems))
        return env

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        labels = _string_map("labels", value, None)
        problems = [
            f"labels.{name}: {problem}; labels are public (docker inspect): keep credentials out"
            for name, item in labels.items()
            if (problem := plaintext_problem(name, item))
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return labels

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                    raise ValueError(f"{name!r} is not a valid environment variable name")
                if name in MANAGED_ENV_KEYS:
                    raise ValueError(f"{name} is managed by the deploy")
        return value

    @model_validator(mode="after")
    def _together(self) -> MlflowSettings:
        if self.memory_limit and self.memory_reservation > self.memory_limit:
            raise ValueError(
                f"memory_reservation: {human_size(self.memory_reservation)} is above "
                f"memory_limit {human_size(self.memory_limit)}"
            )
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"secret_env.{both[0]}: is also in env; keep it in one place")
        return self


def resolve_secret_env(
    host_name: str, settings: MlflowSettings, environ: Mapping[str, str] | None = None, read_file: Any = None
) -> dict[str, str]:
    """Read each ``secret_env`` value on the controller; errors name the source, never a value.
    The mapping shows its values as ``***`` when printed (an operation's arguments are)."""
    values, problems = SecretValues(), []
    for name, source in settings.secret_env.items():
        try:
            values[name] = source.read(environ, read_file)
        except ValueError as exc:
            problems.append(f"mlflow.secret_env.{name}: {exc}")
    if problems:
        raise SettingsError(host_name, problems)
    return values
