"""Record the `docker inspect` output tests/unit/test_create_body.py replays (tests/unit/data/create_body/).

    .venv/bin/python -m tests.unit.record_create_body     # needs the Docker engine and the lab's images

Starts, on the lab's MLflow 2 image, a container carrying what users give theirs (named volume,
bind, tmpfs, an anonymous volume, two networks with aliases, its own healthcheck, labels, user,
working dir, log options, ulimits, dropped capabilities, a published port, memory, restart policy)
and one on the default bridge with a legacy link, inspects them and both MLflow images, then
removes everything it made. Env values are placeholders: no secret is recorded.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from tasks.lab.images import image_refs

DATA = Path(__file__).parent / "data" / "create_body"
PREFIX = "qtrec"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def save(name: str, data) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def main() -> None:
    images = image_refs()
    mlflow2, mlflow3 = images["mlflow2"], images["mlflow3"]
    names = [f"{PREFIX}-mlflow", f"{PREFIX}-db", f"{PREFIX}-legacy"]
    networks = [f"{PREFIX}-front", f"{PREFIX}-back"]
    volume = f"{PREFIX}-data"
    with tempfile.TemporaryDirectory() as bind:
        try:
            for network in networks:
                docker("network", "create", network)
            docker("volume", "create", volume)
            docker(
                "run", "--detach", "--name", names[0],
                "--network", networks[0], "--network-alias", "tracking", "--network-alias", "mlflow",
                "--volume", f"{volume}:/data", "--volume", f"{bind}:/config:ro", "--volume", "/scratch",
                "--tmpfs", "/tmp/cache:size=16m",
                "--health-cmd", "curl -fsS http://127.0.0.1:5000/health || exit 1",
                "--health-interval", "7s", "--health-retries", "5",
                "--label", "team=research", "--label", "tier=tracking",
                "--env", "MLFLOW_EXPERIMENT_NAME=placeholder", "--env", "TZ=UTC",
                "--user", "0:0", "--workdir", "/data",
                "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
                "--ulimit", "nofile=4096:8192", "--cap-drop", "NET_RAW", "--cap-drop", "MKNOD",
                "--publish", "127.0.0.1:28950:5000", "--memory", "512m", "--restart", "unless-stopped",
                mlflow2, "mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
                "--backend-store-uri", "sqlite:////data/mlflow.db", "--workers", "4",
            )  # fmt: skip
            docker("network", "connect", "--alias", "mlflow-back", "--alias", "tracking-back",
                   networks[1], names[0])
            docker("run", "--detach", "--name", names[1], mlflow2, "sleep", "600")
            docker("run", "--detach", "--name", names[2], "--link", f"{names[1]}:db", "--hostname", "legacy",
                   "--domainname", "lab.example", mlflow2, "sleep", "600")
            save("container-rich", json.loads(docker("container", "inspect", names[0]))[0])
            save("container-legacy", json.loads(docker("container", "inspect", names[2]))[0])
            save("image-mlflow2", json.loads(docker("image", "inspect", mlflow2))[0])
            save("image-mlflow3", json.loads(docker("image", "inspect", mlflow3))[0])
        finally:
            subprocess.run(["docker", "rm", "-f", "-v", *names], capture_output=True)
            subprocess.run(["docker", "network", "rm", *networks], capture_output=True)
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True)


if __name__ == "__main__":
    main()
