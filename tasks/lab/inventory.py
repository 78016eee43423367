"""Host data for the lab, read from the state `scripts/lab up` writes (ports, names, secret files)."""

from __future__ import annotations

import json
import os

from tasks.lab.layout import ARTIFACT_BUCKET, COMPOSE_STORE_URI, S3_ACCESS_KEY, state_file


def lab_state(prefix: str | None = None) -> dict:
    prefix = prefix or os.environ.get("QUANTLAB_PREFIX", "quant")
    path = state_file(prefix)
    if not path.exists():
        raise SystemExit(
            f"the lab {prefix!r} is not up ({path} is missing): run `scripts/lab --prefix {prefix} up` first"
        )
    return json.loads(path.read_text())


def lab_host_data(prefix: str | None = None, mlflow_image: str = "mlflow2") -> dict:
    """Where this host's services are and where their secrets live; never a secret itself."""
    state = lab_state(prefix)
    names, ports, secret_files = state["containers"], state["ports"], state["secret_files"]
    return {
        "lab_prefix": state["prefix"],
        "mlflow": {
            "container_name": names["mlflow"],
            "image": state["images"][mlflow_image],
            "ports": [f"127.0.0.1:{ports['mlflow']}:5000"],
            "network": state["network"],
            "backend_store_uri": f"postgresql://mlflow@{names['postgres']}:5432/mlflow",
            "artifacts_destination": f"s3://{ARTIFACT_BUCKET}",
            "env": {
                "MLFLOW_S3_ENDPOINT_URL": f"http://{names['minio']}:9000",
                "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            },
            "secret_env": {
                "PGPASSWORD": {"file": secret_files["mlflow_db_password"]},
                "AWS_SECRET_ACCESS_KEY": {"file": secret_files["s3_secret_key"]},
            },
            # quantlab.prefix: a container the deploy recreates still belongs to this lab.
            "labels": {
                "com.docker.compose.project": state["prefix"],
                "com.docker.compose.service": "mlflow",
                "quantlab.prefix": state["prefix"],
            },
            "compose_file": state["compose_file"],
        },
        "postgres": {
            "container": names["postgres"],
            "host": "127.0.0.1",
            "port": ports["postgres"],
            "superuser": "postgres",
            "superuser_password": {"file": secret_files["postgres_password"]},
            "access": "docker",  # or "psql": host-side psql to host:port (see tasks/operations/db_users.py)
        },
        # deploys/db_users.py: the role the backend logs in as (missing in the incident), with
        # its password read from the lab's secret file, and what it may do in `quant`.
        "db_roles": [
            {"name": "quant_user", "password": {"file": secret_files["quant_user_password"]}, "login": True},
        ],
        "db_databases": [{"name": "quant", "owner": "postgres"}],
        "db_grants": [
            {"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]},
            {"role": "quant_user", "database": "quant", "schema": "public", "privileges": ["USAGE"]},
            {
                "role": "quant_user",
                "database": "quant",
                "schema": "public",
                "on": "tables",
                "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"],
            },
            {
                "role": "quant_user",
                "database": "quant",
                "schema": "public",
                "on": "sequences",
                "privileges": ["USAGE", "SELECT"],
            },
        ],
        "db_default_privileges": [
            {
                "owner": "postgres",
                "role": "quant_user",
                "database": "quant",
                "schema": "public",
                "on": "tables",
                "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"],
            },
            {
                "owner": "postgres",
                "role": "quant_user",
                "database": "quant",
                "schema": "public",
                "on": "sequences",
                "privileges": ["USAGE", "SELECT"],
            },
        ],
        # deploys/verify_stack.py: which services to expect here (tasks/checks/stack.py). The
        # postgres entry takes access and roles from `postgres` and `db_roles` above.
        "stack": {
            "services": {
                "postgres": {"container": names["postgres"]},
                "mlflow": {"container": names["mlflow"], "url": f"http://127.0.0.1:{ports['mlflow']}"},
                "redis": {"container": names["redis"]},
                "s3": {
                    "container": names["minio"],
                    "url": f"http://127.0.0.1:{ports['minio']}",
                    "bucket": ARTIFACT_BUCKET,
                },
                "backend": {"container": names["backend"], "url": f"http://127.0.0.1:{ports['backend']}"},
            },
        },
        # deploys/cleanup_database.py (tasks/operations/cleanup.py): the load test gave some test users a
        # portfolio (FK without ON DELETE CASCADE); in the lab those go with their users. The
        # lab's users table is small: its 18 leftovers are 31% of it, over the default max_share.
        "cleanup": {"foreign_keys": "delete_dependents", "max_share": 0.5},
        # deploys/fix_backend_reload.py and deploys/remediate.py: the backend container and the
        # compose file to keep in step (no Dockerfile: the lab's recipe is not the user's file).
        "backend": {"container": names["backend"], "compose_file": state["compose_file"]},
        # deploys/remediate.py: this lab's last-run record and run records stay in its folder.
        "remediate": {
            "record_path": f"{state['home']}/remediation-runs.json",
            "report_dir": f"{state['home']}/remediation-reports",
        },
        "lab_secret_files": secret_files,
        "lab_ports": ports,
        "lab_containers": names,
    }


def lab_compose_host_data(prefix: str | None = None) -> dict:
    """Host data for a compose-style lab (`scripts/lab up --style compose`). MLflow is named by its
    compose file and service: compose is the source of truth for its container, image, env and
    secrets (the user's env_file). The other blocks are lab_host_data's, with compose's names."""
    state = lab_state(prefix)
    if state.get("style") != "compose":
        raise SystemExit(
            f"the lab {state['prefix']!r} was not brought up by compose: run "
            f"`scripts/lab --prefix {state['prefix']} up --style compose` (after `down`)"
        )
    data = lab_host_data(state["prefix"])
    data["mlflow"] = {
        "compose_file": state["compose_file"],
        "compose_service": "mlflow",
        "backend_store_uri": COMPOSE_STORE_URI,
        "artifacts_destination": f"s3://{ARTIFACT_BUCKET}",
    }
    return data
