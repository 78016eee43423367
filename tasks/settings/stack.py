"""
The ``stack`` block: what deploys/verify_stack.py expects on a host, and how hard it tries.

Host data lists the services to expect there; a service not listed (or set to None/False) is
reported skipped, with the reason, never passed::

    stack = {"services": {
        "postgres": {"container": "quant-postgres"},   # access, superuser, roles: see below
        "mlflow": {"container": "quant-mlflow", "url": "http://127.0.0.1:5000"},
        "redis": {"container": "quant-redis", "password": {"env": "REDIS_PASSWORD"}},
        "s3": {"container": "quant-minio", "url": "http://127.0.0.1:9000", "bucket": "mlflow-artifacts"},
        "backend": {"container": "quant-backend", "url": "http://127.0.0.1:8000"},
    }}

HTTP goes to ``url`` from the host (curl, else python3) or, without a url, from inside the
container. What a service does not say comes from the host's other blocks
(:func:`with_host_blocks`): PostgreSQL's container, access, host, port and superuser from the
``postgres`` block, its login roles from ``db_roles``; MLflow's worker count from ``mlflow``.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tasks.core.durations import DURATION_HINT, MAX_SECONDS, parse_duration, short_duration
from tasks.settings.base import Block, Pattern, parse_block
from tasks.settings.errors import SettingsError
from tasks.settings.types import ContainerName, Duration, PgIdentifier, S3Bucket, SecretSource

# Environment overrides for one run (deploys/verify_stack.py's docstring shows them).
REPORT_ENV = "QUANTLAB_VERIFY_REPORT"
LOGS_SINCE_ENV = "QUANTLAB_VERIFY_SINCE"

Url = Annotated[str, Pattern(r"https?://[^\s'\"]+", "http(s)://host:port")]
UrlPath = Annotated[str, Pattern(r"/\S*", "a path starting with /")]
RoleName = Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_$]*", "a plain role name")]
NonEmpty = Annotated[str, Field(min_length=1)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]


def docker_since(seconds: float) -> str:
    """A duration as ``docker logs --since`` takes it (Go's units: no days): 900 -> '15m'."""
    text = short_duration(seconds)
    return f"{int(seconds) // 3600}h" if text.endswith("d") else text


def _since(value: Any) -> str:
    try:
        return docker_since(parse_duration(value))
    except ValueError:
        pass
    if isinstance(value, str):
        try:
            _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return value.strip()
        except ValueError:
            pass
    raise ValueError(f"{value!r} is neither a duration ({DURATION_HINT}) nor an RFC 3339 time")


# How far back logs are read: a duration (kept as docker's text, 2h) or an RFC 3339 time, as
# `docker logs --since` takes them. Also used by the remediate block.
Since = Annotated[
    str,
    BeforeValidator(_since),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_SECONDS}, {"type": "string"}],
            "description": f"a duration ({DURATION_HINT}) or an RFC 3339 time",
        }
    ),
]


def _whole(value: float) -> float:
    if value != int(value):
        raise ValueError("must be whole seconds")
    return value


Seconds = Annotated[Duration, AfterValidator(_whole)]


class LoginRole(Block):
    """A role verification logs in as: ``{name, password, database?}``."""

    name: RoleName
    password: SecretSource
    database: PgIdentifier = "postgres"


class PostgresService(Block):
    """PostgreSQL: unset keys come from the host's ``postgres`` block (and roles from db_roles)."""

    container: ContainerName | None = None
    access: Literal["docker", "psql"] | None = None
    host: NonEmpty | None = None
    port: Port | None = None
    superuser: PgIdentifier | None = None
    superuser_password: SecretSource | None = None
    os_user: NonEmpty = "postgres"
    container_port: Port = 5432
    roles: tuple[LoginRole, ...] | None = Field(None, description="default: db_roles with a password")
    connections_margin: StrictInt = Field(
        10, ge=0, le=10_000, description="free connections below max_connections"
    )
    database: PgIdentifier = "postgres"


class _WebService(Block):
    """A service checked over HTTP: from the host at ``url``, else inside ``container``."""

    container: ContainerName | None = None
    url: Url | None = None

    @model_validator(mode="after")
    def _reachable(self) -> _WebService:
        if self.container is None and self.url is None:
            raise ValueError("needs a container or a url")
        return self


class MlflowService(_WebService):
    container_port: Port = 5000
    workers: StrictInt | None = Field(None, ge=1, le=64, description="default: the mlflow block's workers")
    artifacts: StrictBool = Field(True, description="round-trip an artifact through the server")


class RedisService(Block):
    container: ContainerName
    password: SecretSource | None = None


class S3Service(_WebService):
    container_port: Port = 9000
    health_path: UrlPath = "/minio/health/live"
    bucket: S3Bucket | None = None


class BackendService(_WebService):
    container_port: Port = 8000
    health_path: UrlPath = "/health"
    db_path: UrlPath = "/health/db"


SERVICES = ("postgres", "mlflow", "redis", "s3", "backend")


class Services(Block):
    """The services expected on the host; None or False: not expected here."""

    postgres: PostgresService | None = None
    mlflow: MlflowService | None = None
    redis: RedisService | None = None
    s3: S3Service | None = None
    backend: BackendService | None = None

    @model_validator(mode="before")
    @classmethod
    def _false_is_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: (None if v is False else v) for k, v in data.items()}
        return data


class StackSettings(Block):
    """Whole-stack verification: services, retries, deadline, thresholds, logs, report."""

    deadline: Duration = Field(240, ge=1, description="for all checks on one host")
    command_timeout: Seconds = Field(15, ge=1, le=600, description="one command on the host")
    http_timeout: Seconds = Field(5, ge=1, le=600, description="one HTTP request")
    retry_attempts: StrictInt = Field(5, ge=1, le=1000, description="each check: up to this many attempts...")
    retry_seconds: Duration = Field(20, ge=0, description="...within this long...")
    retry_wait: Duration = Field(2, ge=0, le=600, description="...this far apart")
    restart_window: Duration = Field(10, ge=0, le=3600, description="restart counts must not move over this")
    memory_warn_percent: float = Field(85, ge=1, le=100, description="of the memory limit: warn from here...")
    memory_fail_percent: float = Field(
        95, ge=1, le=100, validate_default=True, description="...fail from here"
    )
    logs_since: Since = Field(
        "15m", description=f"signatures searched since (env {LOGS_SINCE_ENV} overrides)"
    )
    log_signatures: dict[str, str] = Field(
        default_factory=dict,
        description="extra {name: regex} beyond the signature catalog, for every container",
    )
    report_path: str | None = Field(
        None, description=f"a JSON report on the controller (env {REPORT_ENV} overrides)"
    )
    services: Services = Field(default_factory=Services)

    @field_validator("memory_warn_percent", "memory_fail_percent", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("is not a number")
        return value

    @field_validator("memory_fail_percent")
    @classmethod
    def _warn_below_fail(cls, value: float, info: ValidationInfo) -> float:
        # A field check (not a model one) so it is reported together with every other problem.
        warn = info.data.get("memory_warn_percent")
        if warn is not None and warn > value:
            raise ValueError(f"memory_warn_percent ({warn:g}) is above memory_fail_percent ({value:g})")
        return value

    @field_validator("log_signatures", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("expected {name: regex}")
        problems = []
        for name, pattern in value.items():
            try:
                if not isinstance(pattern, str) or not pattern or re.compile(pattern).search(""):
                    raise re.error("matches every line")
            except (re.error, TypeError) as exc:
                problems.append(f"log_signatures.{name}: bad pattern {pattern!r}: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        return {str(name): pattern for name, pattern in value.items()}


def with_environment(stack: StackSettings, host_name: str, environ: Mapping[str, str]) -> StackSettings:
    """``QUANTLAB_VERIFY_SINCE`` / ``QUANTLAB_VERIFY_REPORT`` over the host's values, for one run."""
    update: dict[str, Any] = {}
    if environ.get(LOGS_SINCE_ENV):
        try:
            update["logs_since"] = TypeAdapter(Since).validate_python(environ[LOGS_SINCE_ENV])
        except ValidationError as exc:
            raise SettingsError(
                host_name,
                [f"{LOGS_SINCE_ENV}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()],
            ) from None
    if environ.get(REPORT_ENV):
        update["report_path"] = environ[REPORT_ENV]
    return stack.model_copy(update=update) if update else stack


# The postgres block's keys a stack postgres service takes when it does not say them itself.
INHERITED_POSTGRES_KEYS = ("container", "access", "host", "port", "superuser", "superuser_password")


def with_host_blocks(
    stack: StackSettings,
    host_name: str,
    *,
    postgres: Mapping[str, Any] | None = None,
    login_roles: Sequence[Mapping[str, Any]] | None = None,
    mlflow_workers: int | None = None,
) -> StackSettings:
    """The services completed from the host's other blocks, checked as a whole.

    + postgres: the host's ``postgres`` settings as a mapping (None: the host has none)
    + login_roles: ``[{name, password, database}]`` from ``db_roles`` (used when the service
      lists no ``roles``)
    + mlflow_workers: the ``mlflow`` block's worker count (used when the service says none)
    """
    services = stack.services
    update: dict[str, Any] = {}
    if services.postgres is not None:
        own = services.postgres.model_dump(exclude_unset=True)
        inherited = {
            k: v
            for k, v in (postgres or {}).items()
            if k in INHERITED_POSTGRES_KEYS and v is not None and k not in own
        }
        data = {
            "access": "docker",
            "superuser": "postgres",
            "roles": list(login_roles or []),
            **inherited,
            **own,
        }
        pg = parse_block(PostgresService, host_name, "stack.services.postgres", data)
        problems = []
        if pg.access == "docker" and pg.container is None:
            problems.append("stack.services.postgres.container: docker access needs a container name")
        if pg.access == "psql" and (pg.host is None or pg.port is None):
            problems.append("stack.services.postgres: psql access needs host and port")
        if problems:
            raise SettingsError(host_name, problems)
        update["postgres"] = pg
    if services.mlflow is not None and services.mlflow.workers is None and mlflow_workers:
        update["mlflow"] = services.mlflow.model_copy(update={"workers": mlflow_workers})
    if not update:
        return stack
    return stack.model_copy(update={"services": services.model_copy(update=update)})


__all__ = ["SERVICES", "Since", "StackSettings", "docker_since", "with_environment", "with_host_blocks"]
