"""What every bench/ section shares: the lab's prefix and paths, the log line, the context (the
lab, its ports, the settings fix_mlflow renders) and the small helpers (/health polls, a timed
pyinfra run)."""
from __future__ import annotations

import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from tasks.core.container_spec import docker_run_args, env_file_text  # noqa: E402
from tasks.core.mlflow_server import desired_container, server_spec  # noqa: E402
from tasks.lab.harness import LabHandle, free_port_base, run_pyinfra  # noqa: E402
from tasks.lab.inventory import lab_host_data  # noqa: E402
from tasks.lab.stack import LAB_MLFLOW_VERSION, VERSION_LABEL, Lab, mlflow_command, mlflow_env  # noqa: E402
from tasks.settings import load as load_settings  # noqa: E402
from tasks.settings.mlflow import resolve_secret_env  # noqa: E402

PREFIX = "qtbn"
os.environ["QUANTLAB_PREFIX"] = PREFIX  # belt and braces: no inventory here may reach another lab
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
ANSIBLE_VENV = BENCH / ".venv-ansible"
FIX_MLFLOW = REPO / "deploys" / "fix_mlflow.py"
CLEANUP = REPO / "deploys" / "cleanup_database.py"


def log(message: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# -- the lab and its containers ----------------------------------------------------------------

class Ctx:
    def __init__(self, size: str, cfg: dict, work: Path):
        self.size = size
        self.cfg = cfg
        self.work = work
        self.client = docker.from_env()
        self.port_base = free_port_base(29300, span=60)
        self.lab = LabHandle(PREFIX, self.port_base)
        self.group_defaults = runpy.run_path(str(REPO / "inventories" / "group_data" / "all.py"))
        self.extra_containers: set[str] = set()
        self.fleet_base = 0  # the fleet's own 127.0.0.1 port range (bench/fleet.py)
        self.control_dirs: list[Path] = []

    def fleet_port(self, i: int) -> int:
        return self.fleet_base + i

    # ports: lab +0..+4; cold start +40; before-fix +41 (the fleet has its own range, bench/fleet.py)
    def port(self, offset: int) -> int:
        return self.port_base + offset

    @property
    def host_data(self) -> dict:
        return lab_host_data(PREFIX)

    def settings(self, mlflow_overrides: dict | None = None):
        data = self.host_data
        return load_settings("mlflow", "bench", {**data["mlflow"], **(mlflow_overrides or {})})

    def fixed_spec(self, mlflow_overrides: dict | None = None):
        """The container spec fix_mlflow makes for these settings (MLflow 2.9.2, the lab image)."""
        settings = self.settings(mlflow_overrides)
        server = server_spec(settings, LAB_MLFLOW_VERSION)
        spec = desired_container(settings, server, resolve_secret_env("bench", settings))
        spec.labels[VERSION_LABEL] = LAB_MLFLOW_VERSION
        return settings, server, spec

    def remove(self, *names: str):
        for name in names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)

    def run_incident_like(self, name: str, port: int, memory: str, restart: str, hook: bool,
                          init: bool = False):
        """An MLflow container with the incident's server settings (4 gunicorn workers, no
        gunicorn options); `hook` adds the lab's gunicorn hook that makes workers the OOM victims;
        `init` runs it under Docker's init, as fix_mlflow makes containers (without it `mlflow
        server` is PID 1, as the seed ran it, and a stop waits out the whole grace)."""
        lab = Lab(prefix=PREFIX, port_base=self.port_base)
        env = mlflow_env(lab, lab.secrets())
        if hook:
            env["GUNICORN_CMD_ARGS"] = "-c /etc/quantlab/gunicorn_incident.py"
        name_, _, count = restart.partition(":")
        policy = {"Name": name_, **({"MaximumRetryCount": int(count)} if count else {})}
        self.remove(name, name + "-previous")
        self.client.containers.run(
            self.host_data["mlflow"]["image"], mlflow_command(lab, "incident"), name=name,
            environment=env, mem_limit=memory, restart_policy=policy, network=lab.network,
            ports={"5000/tcp": ("127.0.0.1", port)}, detach=True, init=init,
            labels={"quantlab.prefix": PREFIX, VERSION_LABEL: LAB_MLFLOW_VERSION,
                    "com.docker.compose.project": PREFIX, "com.docker.compose.service": "mlflow"})
        if name != f"{PREFIX}-mlflow":
            self.extra_containers.add(name)

    def docker_run_fixed(self, spec) -> None:
        """`docker run` with exactly the arguments fix_mlflow uses (env in a 0600 file)."""
        folder = Path(tempfile.mkdtemp(prefix="qtbn-env-"))
        try:
            env_file = folder / "env"
            env_file.write_text(env_file_text(spec))
            env_file.chmod(0o600)
            subprocess.run(docker_run_args(spec, str(env_file)), check=True, capture_output=True,
                           timeout=120)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def health_ok(port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as answer:
            return answer.status == 200
    except Exception:
        return False


def wait_health(port: int, seconds: float = 120.0, interval: float = 0.1) -> float | None:
    """Seconds until /health answers 200 (polled every `interval`), None after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if health_ok(port, timeout=min(1.0, interval * 10)):
            return time.monotonic() - start
        time.sleep(interval)
    return None



def run_pyinfra_timed(inventory: Path, deploy: Path, *args, env=None) -> dict:
    start = time.monotonic()
    # a real `pyinfra` process each time, imports included, as a user runs it (not the tests' forked runs)
    run = run_pyinfra(inventory, deploy, *args, env={"QUANTLAB_PREFIX": PREFIX, **(env or {})}, forked=False)
    wall = time.monotonic() - start
    return {"wall_s": round(wall, 3), "returncode": run.returncode, "changed": run.changed,
            "failed": run.errors, "tail": (run.stdout[-1500:] if run.returncode else "") + run.stderr[-800:]}

