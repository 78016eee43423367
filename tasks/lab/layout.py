"""Where a lab lives and the few fixed names its host data uses: what an inventory needs to read
a lab's state without importing the Docker SDK and the stack (tasks.lab.stack re-exports these)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
S3_ACCESS_KEY = "quantlab"
ARTIFACT_BUCKET = "mlflow-artifacts"
# The compose-style lab (tasks/lab/compose_stack.py): its file, and addresses by service name.
COMPOSE_FILE_NAME = "docker-compose.yml"
COMPOSE_STORE_URI = "postgresql://mlflow@postgres:5432/mlflow"
COMPOSE_S3_ENDPOINT = "http://minio:9000"


def check_prefix(prefix: str) -> str:
    if not prefix or not prefix.replace("-", "").isalnum() or not prefix[0].isalpha():
        raise SystemExit(
            f"lab: prefix {prefix!r} must start with a letter and hold only letters, digits and '-'"
        )
    return prefix


def default_home(prefix: str) -> Path:
    root = Path(os.environ.get("QUANTLAB_HOME", REPO_ROOT / ".lab"))
    return root / prefix


def state_file(prefix: str) -> Path:
    return default_home(check_prefix(prefix)) / "state.json"
