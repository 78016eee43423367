"""Record what compose makes, for the compose-mode ops tests (tests/ops/data/*compose*.json).

    .venv/bin/python -m tests.ops.record_compose     # needs a Docker engine, docker-compose (v1)
                                                     # and the lab's python image

Writes the user's compose file as it was in the incident (data/compose-incident.json) into a temp
folder with its env_file, lets `docker-compose up --no-start` create (never start) the MLflow
service's container, inspects it and reads the ComposeService fact's output; then does the same
with the file as the deploy patches it (data/compose-fixed.json, which the ops tests check the
operation still writes). Removes everything it made. The temp folder is written as /srv/quant in
what is saved (the path the cases use). The env_file's value is a placeholder.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from tasks.facts.compose import ComposeService
from tasks.lab.images import image_refs

DATA = Path(__file__).parent / "data"
IMAGE, PROJECT, SERVICE, FOLDER = "qtops/mlflow:2.9.2", "qtops", "mlflow", "/srv/quant"
NAME = f"{PROJECT}_{SERVICE}_1"  # compose v1's name for the service's first container


def run(*args: str, cwd: str | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd).stdout


def save(name: str, data, folder: str) -> None:
    text = json.dumps(data, indent=2, sort_keys=True).replace(folder, FOLDER)
    (DATA / f"{name}.json").write_text(text + "\n")


def record(folder: str, text_name: str, container_name: str, fact_name: str) -> None:
    file = f"{folder}/docker-compose.yml"
    Path(file).write_text(json.loads((DATA / f"{text_name}.json").read_text()))
    run("docker-compose", "-f", file, "-p", PROJECT, "up", "--no-start", "--no-deps", SERVICE, cwd=folder)
    save(container_name, json.loads(run("docker", "inspect", NAME))[0], folder)
    save(fact_name, run("sh", "-c", ComposeService().command(file, SERVICE)), folder)


def main() -> None:
    run("docker", "tag", image_refs()["python"], IMAGE)
    with tempfile.TemporaryDirectory(prefix="qtops-compose-") as folder:
        Path(folder, "mlflow.env").write_text("PGPASSWORD=placeholder-not-a-secret\n")
        try:
            record(folder, "compose-incident", "container-compose-incident", "compose-service-incident")
            record(folder, "compose-fixed", "container-compose-fixed", "compose-service-fixed")
        finally:
            subprocess.run(["docker-compose", "-f", f"{folder}/docker-compose.yml", "-p", PROJECT, "down"],
                           capture_output=True, cwd=folder)
            subprocess.run(["docker", "image", "rm", IMAGE], capture_output=True)


if __name__ == "__main__":
    main()
