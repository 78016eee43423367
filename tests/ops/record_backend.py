"""Record the `docker inspect` output the backend fix's ops tests replay (tests/ops/data/backend-*.json).

    .venv/bin/python -m tests.ops.record_backend     # needs a Docker engine and the lab's backend image

Creates (never starts) a `qtops-backend` container as the lab makes it (the image's CMD:
uvicorn --reload without a delay; the lab's env, labels, port and network), inspects it and its
image, then creates the container the fix wants (tasks/core/backend_patch.py, through the deploy's
own `docker run` argv) and inspects that too. Removes everything it made. Env values are
placeholders.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tasks.core.backend_patch import desired_container
from tasks.core.container_spec import docker_run_args, env_file_text
from tasks.lab.images import image_refs
from tasks.settings.types import looks_secret

DATA = Path(__file__).parent / "data"
NAME, NETWORK = "qtops-backend", "qtops-backend-net"
ENV = {"DB_HOST": "qtops-postgres", "DB_PORT": "5432", "DB_NAME": "quant", "DB_USER": "quant_user",
       "PGPASSWORD": "placeholder-not-a-secret"}


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def inspect(kind: str, name: str) -> dict:
    return json.loads(docker(kind, "inspect", name))[0]


def save(name: str, data) -> None:
    (DATA / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    image = image_refs()["backend"]
    docker("network", "create", NETWORK)
    try:
        env_args = [arg for key, value in ENV.items() for arg in ("--env", f"{key}={value}")]
        docker("create", "--name", NAME, "--network", NETWORK, "--restart", "unless-stopped",
               "--publish", "127.0.0.1:15504:8000", "--label", "quantlab.prefix=qtops",
               "--label", "quantlab.service=backend", *env_args, image)
        incident, image_inspect = inspect("container", NAME), inspect("image", image)
        save("backend-incident", incident)
        save("backend-image", image_inspect)
        docker("rm", "-f", NAME)
        spec = desired_container(incident, image_inspect, 2, True, looks_secret)
        with tempfile.TemporaryDirectory() as folder:
            env_file = os.path.join(folder, "env")
            Path(env_file).write_text(env_file_text(spec))
            args = docker_run_args(spec, env_file)
            args[1:3] = ["create"]  # "run --detach" -> "create"
            subprocess.run(args, check=True, capture_output=True)
        save("backend-fixed", inspect("container", NAME))
    finally:
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True)


if __name__ == "__main__":
    main()
