"""The lab stack: the quant platform's five services as real containers on this machine.

Every resource is named `<prefix>-<service>` and labelled `quantlab.prefix=<prefix>`, so stacks with
different prefixes run side by side and `down` removes exactly one of them. Services publish on
127.0.0.1 only, at `port_base + offset`. tasks/lab/compose_stack.py tells the same story through
compose (`scripts/lab up --style compose`): it overrides how containers are found, made and removed,
and the files written before and after (`_prepare`, `_record`).

Long because the lab is one story told in order: the stack's containers, the two scenarios
(healthy, incident) with the incident's real load and log lines, and status. Split, each part
would only be read together with the others; the deploys never import it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import docker.errors
import yaml

from tasks.checks.containers import OOM_EVENTS_COMMAND, healthcheck_seconds, healthcheck_shell, oom_kills
from tasks.core.mlflow_server import server_spec
from tasks.lab import images as lab_images
from tasks.lab.images import Progress
from tasks.lab.layout import ARTIFACT_BUCKET, S3_ACCESS_KEY, check_prefix, default_home
from tasks.settings.mlflow import MlflowSettings

SERVICES = ("postgres", "minio", "redis", "mlflow", "backend")
PORT_OFFSETS = {"mlflow": 0, "postgres": 1, "redis": 2, "minio": 3, "backend": 4}
CONTAINER_PORTS = {"mlflow": 5000, "postgres": 5432, "redis": 6379, "minio": 9000, "backend": 8000}
SERVICE_IMAGES = {
    "postgres": "postgres",
    "minio": "s3",
    "redis": "redis",
    "mlflow": "mlflow2",
    "backend": "backend",
}
SECRET_NAMES = ("postgres_password", "mlflow_db_password", "quant_user_password", "s3_secret_key")
SCENARIOS = ("healthy", "incident")
SQL_DIR = Path(__file__).parent / "sql"
PSQL = ("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-")  # SQL on stdin


class MlflowScenario(TypedDict):
    workers: int
    memory: str
    reservation: str | None  # None: no memory reservation
    restart: str


# MLflow settings per scenario. `healthy` is the seed's fix; `incident` is what the seed ran when
# gunicorn's workers were SIGKILLed: 4 workers under a limit they cannot fit in (measured: 420 MiB).
MLFLOW_SCENARIOS: dict[str, MlflowScenario] = {
    "healthy": {"workers": 2, "memory": "1g", "reservation": "512m", "restart": "unless-stopped"},
    "incident": {"workers": 4, "memory": "420m", "reservation": None, "restart": "on-failure:3"},
}
SIGKILL_LINE = "was sent SIGKILL! Perhaps out of memory?"
VERSION_LABEL = "io.quantlab.mlflow-version"  # as tasks.operations.mlflow writes it


class ContainerSpec(TypedDict, total=False):
    """Keyword arguments for `containers.run` (besides name, network, ports and restart_policy,
    which `Stack._ensure_container` adds; `restart` becomes the restart policy)."""

    image: str
    command: list[str]
    environment: dict[str, str]
    volumes: dict[str, dict[str, str]]
    mem_limit: str
    mem_reservation: str
    restart: str
    labels: dict[str, str]
    init: bool


@dataclass
class Lab:
    prefix: str = "quant"
    port_base: int = 15500
    images: str = "local"
    home: Path | None = None  # None: default_home(prefix); always a Path after __post_init__
    log: Callable[[str], object] = field(default=print, repr=False)

    def __post_init__(self):
        check_prefix(self.prefix)
        self.home = Path(self.home) if self.home else default_home(self.prefix)

    @property
    def folder(self) -> Path:
        """`home`, typed: __post_init__ has set it."""
        assert self.home is not None
        return self.home

    # names ---------------------------------------------------------------------------------------
    def name(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    def port(self, service: str) -> int:
        return self.port_base + PORT_OFFSETS[service]

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def pg_volume(self) -> str:
        return f"{self.prefix}-pgdata"

    @property
    def labels(self) -> dict:
        return {"quantlab.prefix": self.prefix}

    @property
    def compose_file(self) -> Path:
        return self.folder / "docker-compose-ml.yml"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    # secrets -------------------------------------------------------------------------------------
    def secret_path(self, name: str) -> Path:
        return self.folder / "secrets" / name

    def secrets(self) -> dict[str, str]:
        """The lab's passwords, made once and kept in 0600 files under the lab folder."""
        folder = self.folder / "secrets"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        values = {}
        for name in SECRET_NAMES:
            path = folder / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(18))
            values[name] = path.read_text().strip()
        return values


# container specs ---------------------------------------------------------------------------------

LAB_MLFLOW_VERSION = "2.9.2"  # what recipes/mlflow2 installs


def mlflow_command(lab: Lab, scenario: str) -> list[str]:
    settings = MLFLOW_SCENARIOS[scenario]
    if scenario == "healthy":
        # Exactly what deploys/fix_mlflow.py makes of the default settings, so a healthy lab is
        # already fixed: the deploy finds nothing to change there.
        return list(healthy_server_spec(lab).command)
    command = [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        "5000",
        "--backend-store-uri",
        f"postgresql://mlflow@{lab.name('postgres')}:5432/mlflow",
        "--artifacts-destination",
        f"s3://{ARTIFACT_BUCKET}",
        "--workers",
        str(settings["workers"]),
    ]
    return command


def healthy_server_spec(lab: Lab):
    fixed = MlflowSettings(
        container_name=lab.name("mlflow"),
        backend_store_uri=f"postgresql://mlflow@{lab.name('postgres')}:5432/mlflow",
        artifacts_destination=f"s3://{ARTIFACT_BUCKET}",
    )
    return server_spec(fixed, LAB_MLFLOW_VERSION)


def mlflow_env(lab: Lab, values: dict) -> dict:
    # The database password travels as libpq's PGPASSWORD, not inside the store URI.
    return {
        "PGPASSWORD": values["mlflow_db_password"],
        "MLFLOW_S3_ENDPOINT_URL": f"http://{lab.name('minio')}:9000",
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": values["s3_secret_key"],
    }


def backend_env(lab: Lab, values: dict) -> dict:
    return {
        "DB_HOST": lab.name("postgres"),
        "DB_PORT": "5432",
        "DB_NAME": "quant",
        "DB_USER": "quant_user",
        "PGPASSWORD": values["quant_user_password"],
    }


def container_specs(lab: Lab, scenario: str, refs: dict, values: dict) -> dict[str, ContainerSpec]:
    """Keyword arguments for `containers.run`, one entry a service."""
    mlflow = MLFLOW_SCENARIOS[scenario]
    specs: dict[str, ContainerSpec] = {
        "postgres": {
            "environment": {"POSTGRES_PASSWORD": values["postgres_password"]},
            "volumes": {lab.pg_volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        },
        "minio": {
            "environment": {"MINIO_ROOT_USER": S3_ACCESS_KEY, "MINIO_ROOT_PASSWORD": values["s3_secret_key"]}
        },
        "redis": {},
        "mlflow": {
            "command": mlflow_command(lab, scenario),
            "environment": mlflow_env(lab, values),
            "mem_limit": mlflow["memory"],
            "restart": mlflow["restart"],
        },
        "backend": {"environment": backend_env(lab, values)},
    }
    mlflow_environment = specs["mlflow"]["environment"]
    if mlflow["reservation"]:
        specs["mlflow"]["mem_reservation"] = mlflow["reservation"]
    if scenario == "healthy":
        mlflow_environment.update(healthy_server_spec(lab).env)
        # As fix_mlflow makes it (mlflow.init): under Docker's init, so a stop takes no grace.
        # The incident's is the seed's, `mlflow server` as PID 1: its fix is the one recreate
        # that gives it the init.
        specs["mlflow"]["init"] = True
    else:
        mlflow_environment["GUNICORN_CMD_ARGS"] = "-c /etc/quantlab/gunicorn_incident.py"
    for service, spec in specs.items():
        spec["image"] = refs[SERVICE_IMAGES[service]]
        spec.setdefault("restart", "unless-stopped")
        labels = spec["labels"] = {
            **lab.labels,
            "quantlab.service": service,
            "com.docker.compose.project": lab.prefix,
            "com.docker.compose.service": service,
        }
        if service == "mlflow":
            labels[VERSION_LABEL] = LAB_MLFLOW_VERSION
        # A fingerprint of the spec, so `up` can tell a container made for another scenario.
        labels["quantlab.spec"] = hashlib.sha256(
            json.dumps(spec, sort_keys=True, default=str).encode()
        ).hexdigest()[:12]
    return specs


def _restart_policy(text: str) -> dict[str, str | int]:
    name, _, count = text.partition(":")
    policy: dict[str, str | int] = {"Name": name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


# the stack -----------------------------------------------------------------------------------------


class Stack:
    def __init__(self, lab: Lab, client):
        self.lab, self.client, self.log = lab, client, lab.log

    # docker helpers
    def name(self, service: str) -> str:
        """The service's container name (compose: the name compose gave it)."""
        return self.lab.name(service)

    def container(self, service: str):
        try:
            return self.client.containers.get(self.name(service))
        except docker.errors.NotFound:
            return None

    def _ensure_network(self):
        try:
            self.client.networks.get(self.lab.network)
        except docker.errors.NotFound:
            self.client.networks.create(self.lab.network, driver="bridge", labels=self.lab.labels)

    def _ensure_volume(self):
        try:
            self.client.volumes.get(self.lab.pg_volume)
        except docker.errors.NotFound:
            self.client.volumes.create(self.lab.pg_volume, labels=self.lab.labels)

    def _ensure_container(self, service: str, spec: ContainerSpec):
        """Run the service as specified; replace a container that was made from another spec."""
        current = self.container(service)
        if current is not None:
            if current.labels.get("quantlab.spec") == spec["labels"]["quantlab.spec"]:
                if current.status != "running":
                    current.start()
                return current, False
            self.log(f"lab: replacing {current.name} (its settings differ from the asked scenario)")
            current.remove(force=True)
        kwargs = {key: value for key, value in spec.items() if key != "restart"}
        restart = spec["restart"]
        container = self.client.containers.run(
            detach=True,
            name=self.name(service),
            network=self.lab.network,
            ports={f"{CONTAINER_PORTS[service]}/tcp": ("127.0.0.1", self.lab.port(service))},
            restart_policy=_restart_policy(restart),
            **kwargs,
        )
        return container, True

    def _recreate(self, service: str, spec: ContainerSpec):
        self.container(service).remove(force=True)
        self._ensure_container(service, spec)

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> str:
        """Run SQL as postgres over the container's local socket; SQL (and secrets) on stdin."""
        argv = ["docker", "exec", "-i", "-u", "postgres", self.name("postgres"), *PSQL, "-d", database]
        proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise SystemExit(f"lab: psql in {self.name('postgres')} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def _http(self, service: str, path: str, payload: dict | None = None, timeout: float = 5.0):
        url = f"http://127.0.0.1:{self.lab.port(service)}{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            url, data=data, method="POST" if data else "GET", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def _wait(self, step: str, probe, waiting_for: str, timeout: float = 120.0):
        progress = Progress(step, self.log)
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            try:
                if probe():
                    progress.done("ready")
                    return
            except (OSError, urllib.error.URLError, docker.errors.APIError) as exc:
                last_error = str(exc)
            progress.tick(f"waiting for {waiting_for} ({last_error})")
            time.sleep(0.5)
        raise SystemExit(
            f"lab: {step}: gave up after {timeout:.0f}s waiting for {waiting_for} "
            f"(last: {last_error}); see `docker logs {step.split()[-1]}`"
        )

    def _health(self, service: str) -> bool:
        """Docker says healthy, or, while it still says starting, the container's own CMD-SHELL
        healthcheck passes when run now, as Docker runs it. The images probe every 10 s (each
        probe costs about 0.1 s of CPU here, and an idle lab would spend its time on them);
        Docker's first probe comes one interval after the start."""
        container = self.container(service)
        container.reload()
        state = container.attrs["State"]
        if state["Status"] in ("exited", "dead") or state.get("Restarting"):
            raise SystemExit(
                f"lab: {container.name} is {state['Status']} (exit code {state['ExitCode']}); "
                f"see `docker logs {container.name}`"
            )
        status = state.get("Health", {}).get("Status")
        if status == "starting" and healthcheck_shell(container.attrs):
            test = container.attrs["Config"]["Healthcheck"]["Test"][1]
            code, _ = container.exec_run(
                ["timeout", str(healthcheck_seconds(container.attrs)), "sh", "-c", test]
            )
            return code == 0
        return status == "healthy"

    # scenario steps
    def _seed_database(self, values: dict):
        sql = f"\\set mlflow_password '{values['mlflow_db_password']}'\n" + (SQL_DIR / "seed.sql").read_text()
        self.psql(sql)

    def _grant_quant_user_sql(self, values: dict) -> str:
        return (
            f"\\set pw '{values['quant_user_password']}'\n"
            "SELECT format('CREATE ROLE quant_user LOGIN PASSWORD %L', :'pw') "
            " WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'quant_user') \\gexec\n"
            "GRANT CONNECT ON DATABASE quant TO quant_user;\n"
            "\\connect quant\n"
            "GRANT USAGE ON SCHEMA public TO quant_user;\n"
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO quant_user;\n"
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO quant_user;\n"
        )

    def _role_exists(self, role: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'") == "1"

    def _test_user_count(self) -> int:
        return int(
            self.psql(
                "SELECT count(*) FROM users WHERE username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%'",
                database="quant",
            )
        )

    def _load_test_burst(self):
        """What the seed's load test did: concurrent registrations with epoch-second names, so
        requests in the same second collide and the backend logs `Username already exists`."""
        progress = Progress("load-test burst against the backend", self.log)
        epoch = int(time.time())
        names = [f"concurrent_{epoch + second}" for second in range(6) for _ in range(5)]
        names += [f"test_user_{n}" for n in range(1, 9)] + [f"test_load_{n}" for n in range(1, 5)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(
                pool.map(lambda n: self._http("backend", "/register", {"username": n}, timeout=20)[0], names)
            )
        if codes.count(200) < 10:
            raise SystemExit(f"lab: the load-test burst mostly failed (codes: {sorted(set(codes))})")
        # Some test users got portfolios: their rows block a plain DELETE (no ON DELETE CASCADE).
        self.psql(
            "INSERT INTO portfolios (user_id, name) SELECT id, 'loadtest' FROM users "
            "WHERE username LIKE 'test\\_user\\_%' AND id % 2 = 0;"
            "INSERT INTO audit_log (user_id, action) SELECT (g % 40) + 1, 'login' "
            "FROM generate_series(1, 20000) g;"
            "DELETE FROM audit_log WHERE id % 4 <> 0;",
            database="quant",
        )
        progress.done(f"{codes.count(200)} registered, {codes.count(409)} duplicates")

    def _converge_incident_database(self, values: dict):
        if self._test_user_count() == 0:
            # The role must exist while the load test runs; then it goes missing, as after a reset.
            self.psql(self._grant_quant_user_sql(values))
            self._wait(
                f"starting {self.name('backend')}",
                lambda: self._health("backend"),
                "the backend's /health",
            )
            self._load_test_burst()
        if self._role_exists("quant_user"):
            self.psql("\\connect quant\nDROP OWNED BY quant_user;\nDROP ROLE quant_user;")
        # The backend's next request fails to authenticate: PostgreSQL logs it, the backend too.
        self._wait(
            f"starting {self.name('backend')}", lambda: self._health("backend"), "the backend's /health"
        )
        status, _ = self._http("backend", "/health/db", timeout=20)
        if status != 503:
            raise SystemExit(f"lab: expected the backend's database check to fail, got HTTP {status}")

    def _converge_healthy_database(self, values: dict):
        self.psql(self._grant_quant_user_sql(values))
        self.psql(
            "DELETE FROM portfolios WHERE user_id IN (SELECT id FROM users WHERE "
            "username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%');"
            "DELETE FROM users WHERE username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%';",
            database="quant",
        )

    def _create_bucket(self):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.lab.port('minio')}/{ARTIFACT_BUCKET}", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise SystemExit(f"lab: creating bucket {ARTIFACT_BUCKET} failed: HTTP {response.status}")

    def _mlflow_logs(self) -> str:
        container = self.container("mlflow")
        return container.logs().decode(errors="replace") if container else ""

    def _reproduce_oom(self, spec: ContainerSpec, tries: int = 3):
        """Wait for gunicorn's SIGKILL line. The kernel picks the OOM victim; should the container
        die without a worker being the one killed, start it again (bounded)."""

        def probe():
            if SIGKILL_LINE in self._mlflow_logs():
                return True
            container = self.container("mlflow")
            container.reload()
            if container.status == "exited" and not container.attrs["State"].get("Restarting"):
                raise _Exhausted(container.attrs["State"].get("ExitCode"))
            return False

        for attempt in range(1, tries + 1):
            try:
                self._wait(
                    f"reproducing the OOM in {self.name('mlflow')}",
                    probe,
                    "gunicorn's SIGKILL line in the logs",
                    timeout=180,
                )
                return
            except _Exhausted as exc:
                self.log(
                    f"lab: {self.name('mlflow')} exited (code {exc}) before a worker was "
                    f"SIGKILLed; starting it again ({attempt}/{tries})"
                )
                self._recreate("mlflow", spec)
        raise SystemExit(f"lab: no SIGKILL line from {self.name('mlflow')} after {tries} starts")

    def _prepare(self, scenario: str, refs: dict, values: dict):
        """Before the first container: the network and the volume they use."""
        self._ensure_network()
        self._ensure_volume()

    def _record(self, scenario: str, refs: dict, specs: dict[str, ContainerSpec]):
        """Once the stack runs: the compose file users would have, and the state inventories read."""
        self.write_compose(specs)
        self.write_state(scenario, refs)

    # public
    def up(self, scenario: str = "healthy"):
        if scenario not in SCENARIOS:
            raise SystemExit(f"lab: unknown scenario {scenario!r} (choose from {', '.join(SCENARIOS)})")
        started = time.monotonic()
        self.lab.folder.mkdir(parents=True, exist_ok=True)
        refs = lab_images.ensure_images(
            self.client,
            set(SERVICE_IMAGES.values()) | {"mlflow3"},
            log=self.log,
            build_log=self.lab.folder / "build.log",
        )
        values = self.lab.secrets()
        specs = container_specs(self.lab, scenario, refs, values)
        self._prepare(scenario, refs, values)

        self._ensure_container("postgres", specs["postgres"])
        self._wait(f"starting {self.name('postgres')}", lambda: self._health("postgres"), "pg_isready")
        self._seed_database(values)

        self._ensure_container("minio", specs["minio"])
        self._wait(
            f"starting {self.name('minio')}",
            lambda: self._health("minio"),
            "the S3 endpoint's health path",
        )
        self._create_bucket()
        self._ensure_container("redis", specs["redis"])
        self._ensure_container("backend", specs["backend"])
        if scenario == "incident":
            self._converge_incident_database(values)
        else:
            self._converge_healthy_database(values)
            self._wait(
                f"starting {self.name('backend')}",
                lambda: self._health("backend"),
                "the backend's /health",
            )

        self._ensure_container("mlflow", specs["mlflow"])
        if scenario == "incident":
            self._reproduce_oom(specs["mlflow"])
        else:
            self._wait(
                f"starting {self.name('mlflow')}",
                lambda: self._health("mlflow"),
                "MLflow's /health",
                timeout=180,
            )
        self._wait(f"starting {self.name('redis')}", lambda: self._health("redis"), "redis PING")
        self._record(scenario, refs, specs)
        self.log(f"lab: {self.lab.prefix} is up ({scenario}) in {time.monotonic() - started:.0f}s")

    def down(self):
        removed = []
        labelled = self.client.containers.list(
            all=True, filters={"label": f"quantlab.prefix={self.lab.prefix}"}
        )
        # Also by name: a deploy may have recreated a service without the lab's label.
        named = [
            c
            for s in SERVICES
            for n in (self.name(s), self.name(s) + "-previous")
            for c in self.client.containers.list(all=True, filters={"name": f"^/{n}$"})
        ]
        for container in {c.id: c for c in labelled + named}.values():
            container.remove(force=True, v=True)
            removed.append(container.name)
        for network in self.client.networks.list(filters={"label": f"quantlab.prefix={self.lab.prefix}"}):
            network.remove()
            removed.append(network.name)
        for volume in self.client.volumes.list(filters={"label": f"quantlab.prefix={self.lab.prefix}"}):
            volume.remove(force=True)
            removed.append(volume.name)
        if self.lab.folder.exists():
            shutil.rmtree(self.lab.folder)
        self.log(f"lab: {self.lab.prefix} is down (removed {', '.join(removed) or 'nothing'})")
        return removed

    def status_rows(self) -> list[dict]:
        rows = []
        containers = {service: self.container(service) for service in SERVICES}
        running = [
            c for c in containers.values() if c is not None and c.attrs["State"]["Status"] == "running"
        ]
        # The engine answers a stats request after its next sample (about 1 s): ask for all at once.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            usages = dict(zip([c.id for c in running], pool.map(_memory_usage, running), strict=True))
        for service in SERVICES:
            container = containers[service]
            if container is None:
                rows.append(
                    {
                        "service": service,
                        "container": self.name(service),
                        "state": "absent",
                        "health": "-",
                        "memory": "-",
                        "restarts": "-",
                        "oom_killed": "-",
                    }
                )
                continue
            state = container.attrs["State"]
            limit = container.attrs["HostConfig"].get("Memory") or 0
            usage = usages.get(container.id)
            rows.append(
                {
                    "service": service,
                    "container": container.name,
                    "state": state["Status"],
                    "health": state.get("Health", {}).get("Status", "-"),
                    "memory": f"{_mib(usage)} / {_mib(limit) if limit else 'no limit'}",
                    "restarts": str(container.attrs.get("RestartCount", 0)),
                    "oom_killed": _oom_text(container, state),
                }
            )
        return rows

    def status_table(self) -> str:
        rows = self.status_rows()
        columns = ["service", "container", "state", "health", "memory", "restarts", "oom_killed"]
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
        return "\n".join(lines)

    # files users have: the compose file and the state the inventory reads
    def write_compose(self, specs: dict[str, ContainerSpec]):
        services = {}
        env_lines = []
        secret_values = set(self.lab.secrets().values())
        for service, spec in specs.items():
            entry: dict[str, object] = {
                "image": spec["image"],
                "container_name": self.name(service),
                "restart": spec["restart"],
                "ports": [f"127.0.0.1:{self.lab.port(service)}:{CONTAINER_PORTS[service]}"],
                "networks": ["lab"],
            }
            if spec.get("command"):
                entry["command"] = spec["command"]
            if spec.get("init"):
                entry["init"] = True
            environment = {}
            for key, value in spec.get("environment", {}).items():
                if value in secret_values:
                    var = f"{service.upper()}_{key}"
                    env_lines.append(f"{var}={value}")
                    environment[key] = "${" + var + "}"
                else:
                    environment[key] = value
            if environment:
                entry["environment"] = environment
            if spec.get("volumes"):
                entry["volumes"] = [f"pgdata:{v['bind']}" for v in spec["volumes"].values()]
            resources = {}
            if spec.get("mem_limit"):
                resources["limits"] = {"memory": spec["mem_limit"]}
            if spec.get("mem_reservation"):
                resources["reservations"] = {"memory": spec["mem_reservation"]}
            if resources:
                entry["deploy"] = {"resources": resources}
            services[service] = entry
        compose = {
            "name": self.lab.prefix,
            "services": services,
            "networks": {"lab": {"name": self.lab.network}},
            "volumes": {"pgdata": {"name": self.lab.pg_volume}},
        }
        header = "# The lab's quant stack, as users describe theirs. Secrets come from .env beside it.\n"
        self.lab.compose_file.write_text(header + yaml.safe_dump(compose, sort_keys=False))
        env_path = self.lab.folder / ".env"
        fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(env_lines) + "\n")

    def write_state(self, scenario: str, refs: dict):
        state = {
            "style": "docker",
            "prefix": self.lab.prefix,
            "scenario": scenario,
            "home": str(self.lab.folder),
            "network": self.lab.network,
            "containers": {s: self.name(s) for s in SERVICES},
            "ports": {s: self.lab.port(s) for s in SERVICES},
            "images": refs,
            "secret_files": {n: str(self.lab.secret_path(n)) for n in SECRET_NAMES},
            "compose_file": str(self.lab.compose_file),
        }
        self.lab.state_file.write_text(json.dumps(state, indent=2) + "\n")


def _memory_usage(container) -> int | None:
    """Memory in use less the inactive file cache, as `docker stats` shows it; one sample
    (``one_shot``) where the engine's API has it (1.41+)."""
    try:
        stats = container.stats(stream=False, one_shot=True)
    except docker.errors.InvalidVersion:
        stats = container.stats(stream=False)
    memory = stats.get("memory_stats", {})
    inner = memory.get("stats", {})
    if "usage" not in memory:
        return None
    return memory["usage"] - inner.get("total_inactive_file", inner.get("inactive_file", 0))


def _oom_text(container, state: dict) -> str:
    """Docker's OOMKilled covers the container's main process only; the kernel's count in the
    memory cgroup also shows workers killed inside a container that kept running."""
    kills = None
    if state["Status"] == "running":
        result = container.exec_run(["sh", "-c", OOM_EVENTS_COMMAND])
        kills = oom_kills(result.output.decode(errors="replace")) if result.exit_code == 0 else None
    if state.get("OOMKilled"):
        return "yes"
    return f"{kills} kills" if kills else "no"


class _Exhausted(Exception):
    """The incident's MLflow container stopped for good."""


def _mib(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1048576:.0f} MiB"
