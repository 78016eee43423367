"""Record the `docker inspect` output the ops tests replay (tests/ops/data/*.json).

    .venv/bin/python -m tests.ops.record     # needs a Docker engine and the lab's python image

Creates (never starts) `qtops-*` containers the way the lab and the deploy make them, inspects them,
updates one in place with the deploy's own `docker update` argv, and removes everything it made.
The MLflow image is the lab's python image tagged `qtops/mlflow:2.9.2`: the engine's answers
(ids, defaults, port and network shapes) are real; no process runs. Env values are placeholders.

The documents are saved as plain `docker inspect` prints them, env values in clear: that is what a
recreate reads at execution time (tasks/operations/docker.py `_read_full`). The planning fact
filters on the host; the ops harness passes these documents through that filter's Python twin
(tasks/core/redact.py `redact_inspect`), so the cases see what the fact returns.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from tasks.core.container_spec import docker_run_args, docker_update_args, env_file_text
from tasks.core.mlflow_server import desired_container, server_spec
from tasks.lab.images import image_refs
from tasks.settings import load

DATA = Path(__file__).parent / "data"
NAME, IMAGE, NETWORK = "qtops-mlflow", "qtops/mlflow:2.9.2", "qtops-net"
VERSION_LABEL = "io.quantlab.mlflow-version"
# The mlflow block the recordings and the cases share (tests/ops/data/settings-mlflow.json).
SETTINGS = json.loads((DATA / "settings-mlflow.json").read_text())
SECRET_VALUES = {"PGPASSWORD": "placeholder-not-a-secret"}


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def inspect(kind: str, name: str) -> dict:
    return json.loads(docker(kind, "inspect", name))[0]


def save(name: str, data) -> None:
    (DATA / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def run_spec(spec) -> None:
    """`docker run` argv of the deploy, as `docker create` (the container is never started)."""
    with tempfile.TemporaryDirectory() as folder:
        env_file = os.path.join(folder, "env")
        Path(env_file).write_text(env_file_text(spec))
        args = docker_run_args(spec, env_file)
        args[1:3] = ["create"]  # "run --detach" -> "create"
        subprocess.run(args, check=True, capture_output=True)


def main() -> None:
    python = image_refs()["python"]
    settings = load("mlflow", "ops-host", SETTINGS)
    server = server_spec(settings, "2.9.2")
    desired = desired_container(settings, server, SECRET_VALUES)
    desired = replace(desired, labels={**desired.labels, VERSION_LABEL: "2.9.2"})
    docker("tag", python, IMAGE)
    docker("network", "create", NETWORK)
    try:
        save("spec-fixed", {**asdict(desired), "secret_env_keys": sorted(desired.secret_env_keys),
                            "managed_env_keys": []})
        save("image-mlflow2", inspect("image", IMAGE))
        # The incident as the lab makes it: 4 workers, 420 MiB, no reservation, a stale GUNICORN_CMD_ARGS,
        # `mlflow server` as PID 1 (no --init).
        incident = replace(
            desired, memory=420 << 20, memory_reservation=0, init=None,
            command=tuple(incident_command(server.command)),
            env={**{k: v for k, v in desired.env.items() if k not in server.env},
                 "GUNICORN_CMD_ARGS": "-c /etc/quantlab/gunicorn_incident.py"})
        run_spec(incident)
        save("container-incident", inspect("container", NAME))
        docker("rm", "-f", NAME)
        # Fixed but for memory: what `docker update` alone repairs; then the update, recorded.
        drift = replace(desired, memory=420 << 20, memory_reservation=0)
        run_spec(drift)
        save("container-memory-drift", inspect("container", NAME))
        docker(*docker_update_args(desired)[1:])
        save("container-updated", inspect("container", NAME))
        docker("rm", "-f", NAME)
        run_spec(desired)
        save("container-fixed", inspect("container", NAME))
    finally:
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True)
        subprocess.run(["docker", "image", "rm", IMAGE], capture_output=True)


def incident_command(command: tuple[str, ...]) -> list[str]:
    """The incident's command: the same server, `--workers 4`, no gunicorn options."""
    out, skip = [], False
    for i, arg in enumerate(command):
        if skip:
            skip = False
            continue
        if arg == "--gunicorn-opts":
            skip = True
            continue
        out.append("4" if i and command[i - 1] == "--workers" else arg)
    return out


if __name__ == "__main__":
    main()
