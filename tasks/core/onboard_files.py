"""
The files onboarding writes, as text: ``/etc/docker/daemon.json`` (log rotation merged into what
the file holds), the deploy user's sudoers rule, and the stack's compose file.

Pure: settings are handed in, nothing here reads a host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from tasks.core.mlflow_server import VERSION_LABEL
from tasks.core.sizes import docker_size

if TYPE_CHECKING:  # settings are handed in; core imports no settings layer
    from tasks.core.mlflow_server import ServerSpec
    from tasks.settings.mlflow import MlflowSettings
    from tasks.settings.onboard import OnboardSettings

SUDOERS_HEADER = "# Managed by deploys/onboard_host.py: the deploy user's sudo, these commands only.\n"
COMPOSE_HEADER = "# Rendered by deploys/onboard_host.py from the host's onboard and mlflow settings.\n"


def daemon_json(current_text: str | None, max_size: str, max_file: int) -> tuple[str, bool]:
    """The daemon.json text with log rotation set, other keys kept; (text, changed).

    Another driver's ``log-opts`` are dropped (they would not apply to json-file).
    Raises ValueError when the existing file is not a JSON object."""
    current: dict[str, Any] = {}
    if current_text is not None and current_text.strip():
        current = json.loads(current_text)
        if not isinstance(current, dict):
            raise ValueError("daemon.json is not a JSON object")
    wanted = dict(current)
    wanted["log-driver"] = "json-file"
    opts = dict(current.get("log-opts") or {}) if current.get("log-driver") in (None, "json-file") else {}
    opts.update({"max-size": max_size, "max-file": str(max_file)})
    wanted["log-opts"] = opts
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    return text, wanted != current or current_text is None


def sudoers_text(user: str, commands: tuple[str, ...]) -> str:
    """One NOPASSWD rule for ``user`` listing exactly ``commands`` (none: a comment only)."""
    lines = [SUDOERS_HEADER]
    if commands:
        lines.append(f"{user} ALL=(root) NOPASSWD: " + ", ".join(commands) + "\n")
    return "".join(lines)


def default_compose(settings: OnboardSettings, mlflow: MlflowSettings, mlflow_spec: ServerSpec) -> dict:
    """The quant stack's compose document: PostgreSQL, MinIO, Redis and MLflow with the fix.
    Secrets appear only as ${VAR}, read by compose from its environment at `up` time."""
    env = {**mlflow.env, **mlflow_spec.env}
    env.update({name: "${" + name + ":?set " + name + "}" for name in mlflow.secret_env})
    service: dict[str, Any] = {
        "image": mlflow.image,
        "command": list(mlflow_spec.command),
        "environment": env,
        "restart": mlflow.restart_policy,
        # As deploys/fix_mlflow.py writes it: its first run then finds the file as it wants it.
        "labels": {**mlflow.labels, VERSION_LABEL: settings.mlflow_version},
        "depends_on": ["postgres", "minio"],
        "deploy": {
            "resources": {
                "limits": {"memory": docker_size(mlflow.memory_limit)},
                "reservations": {"memory": docker_size(mlflow.memory_reservation)},
            }
        },
    }
    if mlflow.ports:
        service["ports"] = list(mlflow.ports)
    return {
        "services": {
            "postgres": {
                "image": "postgres:15",
                "restart": "unless-stopped",
                "environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"},
                "volumes": ["./data/postgres:/var/lib/postgresql/data"],
            },
            "minio": {
                "image": "minio/minio:latest",
                "restart": "unless-stopped",
                "command": ["server", "/data"],
                "environment": {
                    "MINIO_ROOT_USER": "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}",
                    "MINIO_ROOT_PASSWORD": "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}",
                },
                "volumes": ["./data/minio:/data"],
            },
            "redis": {
                "image": "redis:7",
                "restart": "unless-stopped",
                "command": ["redis-server", "--appendonly", "yes"],
                "volumes": ["./data/redis:/data"],
            },
            mlflow.compose_service: service,
        },
    }


def compose_text(document: Mapping) -> str:
    body = yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return COMPOSE_HEADER + body
