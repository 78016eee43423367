"""Test hosts that are machines in miniature: containers of the lab's `machine` image
(tasks/lab/recipes/machine), each with systemd as PID 1, its own sshd, cron, journal and, once
onboarding (`engine: local`) has installed Debian's docker.io, its own `dockerd` under systemd.
`docker restart` of a host container is a reboot: systemd stops, dockerd stops its containers,
and on the way up systemd starts sshd, cron, the timers and dockerd, which starts again what
its restart policies say.

How a host container runs (`--privileged` is refused on this machine): SYS_ADMIN, NET_ADMIN and
SYS_PTRACE (for `docker exec` into a container whose process is not root), seccomp and AppArmor
unconfined, the machine's cgroup namespace with /sys/fs/cgroup read-write, tmpfs on /run and
/run/lock, and a volume of its own on /var/lib/docker (overlay2 cannot sit on the container's
overlay). Each host gets its own ed25519 host key and root's authorized key
before it first boots (as tests/fleet.py `sshhost` hosts do: pyinfra's @ssh connector checks
the host key strictly and logs in with a key; no password is set or used), and is reached on a
127.0.0.1 port.

A host's engine, from the tests (not from the deploys, which reach it over SSH): its socket as
seen through the host's root, `unix:///proc/<pid of its systemd>/root/run/docker.sock` (this
machine's root reaches it; nothing is published). `Machine.engine()` is a Docker SDK client on
it, `Machine.docker_env()` the environment for the `docker` CLI. Images reach a host's engine by
`docker save` once (only the images asked for) and `docker load` into each host
(`Machines.load_images`). `MachineStack` is the lab's own stack code (tasks/lab/stack.py) run
against a host's engine: PostgreSQL seeded as the lab seeds it, and MLflow, as the scenario says.

With `project=True` the checkout and the Python its .venv was made from are mounted read-only
at the same paths, so a job installed on the host (the scheduled cleanup) can run this
checkout's pyinfra there, as on an ops host where the project is checked out.

Every resource carries `quantlab.prefix=<prefix>` (the host containers and their volumes), so
`scripts/lab --prefix <prefix> down` removes them, as does `Machines.remove()`. Addresses used:
127.0.0.1 ports of containers created here, and the hosts' own loopback from inside them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from tasks.lab.cgroups import mount_missing_controllers, remove_container_cgroups
from tasks.lab.harness import REPO
from tasks.lab.images import ensure_images, image_refs
from tasks.lab.layout import ARTIFACT_BUCKET, S3_ACCESS_KEY
from tasks.lab.stack import Lab, Stack, container_specs
from tests.fleet import HOST, SshHost, _keygen, _tar, wait_ready
from tests.labkit import free_port_base

SERVICE = "machine"  # the `quantlab.service` label of host containers
COMPOSE_FILE = "/opt/quant-stack/docker-compose.yml"  # the one onboarding renders
RUN_ARGS = {
    # SYS_PTRACE: runc's `docker exec` (and healthchecks) joins the namespaces of a process
    # owned by another user (postgres), which needs it; without it: "error executing setns process".
    "cap_add": ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "cgroupns": "host",
    "tmpfs": {"/run": "", "/run/lock": ""},
}


@dataclass
class Machine(SshHost):
    """One host: SshHost's SSH side, plus its engine, systemd and reboots."""

    @property
    def engine_socket(self) -> str:
        """The host's dockerd socket, through its root as this machine sees it."""
        pid = self.container.attrs["State"]["Pid"]
        if not pid:
            raise RuntimeError(f"{self.name} is not running")
        return f"/proc/{pid}/root/run/docker.sock"

    def docker_env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.engine_socket}"}

    def engine(self, wait: float = 60.0) -> docker.DockerClient:
        """A client on the host's own dockerd, once it answers."""
        deadline, last = time.monotonic() + wait, "not tried"
        while True:
            try:
                client = docker.DockerClient(base_url=f"unix://{self.engine_socket}", timeout=120)
                client.ping()
                return client
            except (docker.errors.DockerException, OSError, RuntimeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine of {self.name} does not answer: {last}")
            time.sleep(0.5)

    def systemctl(self, *args: str) -> tuple[int, str]:
        return self.exec("systemctl " + " ".join(args))

    def wait_booted(self, seconds: float = 90.0) -> str:
        """Until systemd has finished starting up ("running", or "degraded" with the failed units
        named); then sshd answers our key."""
        deadline, state = time.monotonic() + seconds, "unknown"
        while time.monotonic() < deadline:
            try:
                _, state = self.exec("systemctl is-system-running")
            except docker.errors.APIError as exc:  # not running yet
                state = str(exc)
            state = state.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{self.name} did not finish booting: {state}")
        wait_ready(self, seconds=max(10.0, deadline - time.monotonic()))
        return state

    def reboot(self, stop_timeout: int = 10) -> None:
        """`docker restart`: systemd gets SIGRTMIN+3 (a clean shutdown), SIGKILL after
        `stop_timeout`, then the host boots again."""
        self.container.restart(timeout=stop_timeout)
        self.wait_booted()

    def put_files(self, files: dict[str, tuple[bytes, int]]) -> None:
        """Files (content, mode) into the host as root, by the engine: test setup only."""
        self.container.put_archive("/", _tar(files))


class Machines:
    """N `machine` containers named `<prefix>-host<i>`; see the module docstring."""

    def __init__(self, prefix: str, folder: Path, count: int, project: bool = False,
                 port_start: int = 25000, client: docker.DockerClient | None = None):
        self.prefix, self.folder, self.count, self.project = prefix, Path(folder), count, project
        self.client = client or docker.from_env()
        self.labels = {"quantlab.prefix": prefix, "quantlab.service": SERVICE}
        self.port_start = port_start
        self.hosts: list[Machine] = []

    def image(self) -> str:
        return ensure_images(self.client, ["machine"], log=lambda _: None,
                             build_log=self.folder / "build.log")["machine"]

    def _project_mounts(self) -> dict:
        """The checkout, and the Python its .venv points at unless the image has it (/usr)."""
        mounts = {str(REPO): {"bind": str(REPO), "mode": "ro"}}
        base = Path(sys.base_prefix).resolve()
        if not str(base).startswith("/usr"):
            mounts[str(base)] = {"bind": str(base), "mode": "ro"}
        return mounts

    def start(self) -> Machines:
        # Before any host's systemd mounts them where this machine's engine cannot see them.
        mount_missing_controllers()
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        image = self.image()
        client_key = self.folder / "client_ed25519"
        _keygen(client_key, f"{self.prefix}-test-client")
        public = (self.folder / "client_ed25519.pub").read_bytes()
        known_hosts = self.folder / "known_hosts"
        known_lines = []
        base = free_port_base(self.port_start, span=max(self.count, 1))
        for index in range(1, self.count + 1):
            name = f"{self.prefix}-host{index}"
            port = base + index - 1
            host_key = self.folder / f"{name}_host_ed25519"
            _keygen(host_key, name)
            host_pub = Path(f"{host_key}.pub").read_bytes()
            known_lines.append(f"[{HOST}]:{port} {' '.join(host_pub.decode().split()[:2])}")
            volume = self.client.volumes.create(f"{name}-docker", labels=self.labels)
            volumes = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                       volume.name: {"bind": "/var/lib/docker", "mode": "rw"}}
            if self.project:
                volumes.update(self._project_mounts())
            container = self.client.containers.create(
                image, name=name, hostname=name, labels=self.labels, detach=True,
                ports={"22/tcp": (HOST, port)}, volumes=volumes, **RUN_ARGS)
            container.put_archive("/", _tar({
                "/etc/ssh/ssh_host_ed25519_key": (host_key.read_bytes(), 0o600),
                "/etc/ssh/ssh_host_ed25519_key.pub": (host_pub, 0o644),
                "/root/.ssh/authorized_keys": (public, 0o600),
            }))
            container.start()
            self.hosts.append(Machine(name, port, client_key, known_hosts, "root", self.client))
        known_hosts.write_text("\n".join(known_lines) + "\n")
        for host in self.hosts:
            host.wait_booted()
        return self

    def load_images(self, names: list[str]) -> dict[str, str]:
        """The lab images `names` into every host's engine: `docker save` once (layers shared
        between them travel once), `docker load` into each host, the hosts side by side.
        Returns name -> reference, the same in every engine."""
        refs = ensure_images(self.client, names, log=lambda _: None, build_log=self.folder / "build.log")
        wanted = {name: refs[name] for name in names}
        archive = Path("/var/tmp") / f"{self.prefix}-images.tar"  # not /tmp: it may be memory
        try:
            subprocess.run(["docker", "save", "-o", str(archive), *wanted.values()], check=True,
                           capture_output=True, timeout=900)
            errors: list[str] = []

            def load(host: Machine) -> None:
                proc = subprocess.run(["docker", "load", "-q", "-i", str(archive)], env=host.docker_env(),
                                      capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    errors.append(f"{host.name}: {proc.stderr.strip()[-500:]}")

            threads = [threading.Thread(target=load, args=(host,)) for host in self.hosts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError("docker load failed: " + "; ".join(errors))
        finally:
            archive.unlink(missing_ok=True)
        return wanted

    def remove(self) -> list[str]:
        removed, inner = [], []
        for container in self.client.containers.list(
                all=True, filters={"label": [f"quantlab.prefix={self.prefix}", f"quantlab.service={SERVICE}"]}):
            inner += _inner_container_ids(container)
            container.remove(force=True, v=True)
            removed.append(container.name)
        remove_container_cgroups(inner)  # the host's dockerd died with it, leaving them behind
        for volume in self.client.volumes.list(filters={"label": f"quantlab.prefix={self.prefix}"}):
            volume.remove(force=True)
            removed.append(volume.name)
        return removed

    def write_inventory(self, path: Path, host_data: dict[str, dict]) -> Path:
        """An inventory module: `hosts = [(name, data), ...]` for the hosts named in host_data."""
        hosts = [(host.name, host_data[host.name]) for host in self.hosts if host.name in host_data]
        path.write_text(f"hosts = {hosts!r}\n")
        return path


def _inner_container_ids(container) -> list[str]:
    """The full ids of the containers a running host's own engine has (none when it cannot say)."""
    if container.status != "running":
        return []
    try:
        code, out = container.exec_run(["timeout", "20", "docker", "ps", "-aq", "--no-trunc"])
    except docker.errors.DockerException:
        return []
    return out.decode(errors="replace").split() if code == 0 else []


class MachineStack(Stack):
    """The lab's stack (tasks/lab/stack.py) on one host's engine: the lab's container specs,
    names, secrets and seed, with `psql` through that engine. `up_core` starts PostgreSQL and
    MLflow only (what the deploys run here need); the secrets stay on this machine, under `home`."""

    def __init__(self, machine: Machine, home: Path, port_base: int = 15500, log=lambda _: None):
        # The engine client is made when the stack starts: before onboarding there is no engine.
        super().__init__(Lab(prefix=machine.name, port_base=port_base, home=home, log=log), None)
        self.machine = machine

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> str:
        argv = ["docker", "exec", "-i", "-u", "postgres", self.name("postgres"), "psql", "-X", "-q", "-At",
                "-v", "ON_ERROR_STOP=1", "-f", "-", "-d", database]
        proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=120,
                              env=self.machine.docker_env())
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql in {self.machine.name}/{self.name('postgres')} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def up_core(self, mlflow_scenario: str) -> None:
        """PostgreSQL (seeded as the lab seeds it), then MLflow as in the lab's `mlflow_scenario`
        (healthy: waited for until healthy; incident: 4 workers in 420 MiB, only started). The
        images must be in the host's engine (`Machines.load_images(["postgres", "mlflow2"])`)."""
        self.client = self.machine.engine()  # the host may have rebooted since
        refs = image_refs()  # every service's, as container_specs wants; two are used
        values = self.lab.secrets()
        specs = container_specs(self.lab, mlflow_scenario, refs, values)
        self._prepare(mlflow_scenario, refs, values)
        self._ensure_container("postgres", specs["postgres"])
        self._wait(f"starting {self.name('postgres')}", lambda: self._health("postgres"), "pg_isready")
        self._seed_database(values)
        self._ensure_container("mlflow", specs["mlflow"])
        if mlflow_scenario == "healthy":
            self._wait(f"starting {self.name('mlflow')}", lambda: self._health("mlflow"), "MLflow's /health",
                       timeout=180)

    def mlflow_data(self, image: str, **overrides) -> dict:
        """The host's `mlflow` block, as tasks/lab/inventory.py writes the lab's."""
        lab = self.lab
        data = {
            "container_name": lab.name("mlflow"),
            "image": image,
            "ports": [f"127.0.0.1:{lab.port('mlflow')}:5000"],
            "network": lab.network,
            "backend_store_uri": f"postgresql://mlflow@{lab.name('postgres')}:5432/mlflow",
            "artifacts_destination": f"s3://{ARTIFACT_BUCKET}",
            "env": {"MLFLOW_S3_ENDPOINT_URL": f"http://{lab.name('minio')}:9000", "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY},
            "secret_env": {
                "PGPASSWORD": {"file": str(lab.secret_path("mlflow_db_password"))},
                "AWS_SECRET_ACCESS_KEY": {"file": str(lab.secret_path("s3_secret_key"))},
            },
            "labels": {"quantlab.prefix": lab.prefix},
            "compose_file": COMPOSE_FILE,
        }
        data.update(overrides)
        return data

    def mlflow_health(self) -> str:
        """MLflow's /health from inside the host (its port is published on the host's loopback)."""
        code, out = self.machine.exec(f"curl -fsS --max-time 5 http://127.0.0.1:{self.lab.port('mlflow')}/health")
        return out.strip() if code == 0 else f"exit {code}: {out.strip()[-200:]}"
