"""Shared pieces for tests that run against the real lab: bring a private stack up, run pyinfra."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest


REPO = Path(__file__).resolve().parents[1]
PYINFRA = Path(sys.executable).parent / "pyinfra"
GROUP_DATA = REPO / "inventories" / "group_data"


def free_port_base(start: int, span: int = 10) -> int:
    """A base port whose next `span` ports on 127.0.0.1 are free right now."""
    for _ in range(200):
        base = start + random.randrange(0, 200) * span
        sockets = []
        try:
            for port in range(base, base + span):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range found")


@dataclass
class LabHandle:
    prefix: str
    port_base: int

    def cli(self, *args, check=True, timeout=900) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(REPO / "scripts" / "lab"), "--prefix", self.prefix,
                               "--port-base", str(self.port_base), *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"scripts/lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self, scenario: str):
        return self.cli("up", "--scenario", scenario)

    def down(self):
        return self.cli("down", check=False)

    @property
    def state(self) -> dict:
        return json.loads((REPO / ".lab" / self.prefix / "state.json").read_text())

    def container(self, service: str):
        return docker.from_env().containers.get(f"{self.prefix}-{service}")

    def psql(self, sql: str, database: str = "quant") -> str:
        proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", f"{self.prefix}-postgres",
                               "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database],
                              input=sql, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()


def new_lab(tag: str, port_start: int) -> LabHandle:
    return LabHandle(prefix=f"{tag}{random.randrange(16**4):04x}", port_base=free_port_base(port_start))


def lab_up(request, tag: str, port_start: int, scenario: str) -> LabHandle:
    """A new lab brought up for a (module-scoped) fixture; taken down at teardown, also when
    bringing it up failed halfway."""
    handle = new_lab(tag, port_start)
    request.addfinalizer(handle.down)
    handle.up(scenario)
    return handle


# Parts of a lab a test module may rely on (as the scenario made them) or change.
MLFLOW = "mlflow"  # the MLflow container, its compose service, its tracking store
ROWS = "rows"  # the quant database's rows: leftover test users, their rows, dead tuples
ROLES = "roles"  # PostgreSQL roles and grants, so what quant_user and the backend can reach
SERVICES = "services"  # the other containers (postgres, minio, redis, backend) and the compose file
PARTS = frozenset({MLFLOW, ROWS, ROLES, SERVICES})


@dataclass
class _PooledLab:
    handle: LabHandle
    scenario: str
    changed: set
    group: str


class LabPool:
    """Labs shared by the test modules of one group (`LAB_GROUPS`), in one worker.

    Bringing a lab up costs about a minute, most of it MLflow's start (the incident's: until
    gunicorn's SIGKILL line). A module says which parts it `needs` as the scenario made them
    and which it `changes`; it gets a lab of its group none of whose needed parts an earlier
    module changed, else a new one. A lab is taken down when its group's last module is done,
    or as soon as every part of it has been changed.
    """

    def __init__(self, config):
        self.config = config
        self.labs: list[_PooledLab] = []

    def borrow(self, request, scenario: str, needs=PARTS, changes=PARTS) -> LabHandle:
        group = group_of(request.node.nodeid)
        needs, changes = set(needs), set(changes)
        pooled = next((lab for lab in self.labs if lab.group == group and lab.scenario == scenario
                       and not lab.changed & needs), None)
        if pooled is None:
            pooled = _PooledLab(new_lab("qtsh", 38000), scenario, set(), group)
            self.labs.append(pooled)
            try:
                pooled.handle.up(scenario)
            except BaseException:
                self._take_down(pooled)
                raise
        request.addfinalizer(lambda: self._give_back(pooled, changes, request.node))
        return pooled.handle

    def _give_back(self, pooled: _PooledLab, changes: set, module) -> None:
        pooled.changed |= changes
        later = self.config.stash.get(LATER_MODULES, {}).get(module.nodeid, ())
        if pooled.changed >= PARTS or not later:
            self._take_down(pooled)

    def _take_down(self, pooled: _PooledLab) -> None:
        if pooled in self.labs:
            self.labs.remove(pooled)
            pooled.handle.down()

    def close(self) -> None:
        for pooled in list(self.labs):
            self._take_down(pooled)


# module nodeid -> the modules of its group that run after it (set by tests/conftest.py)
LATER_MODULES = pytest.StashKey[dict]()
POOL = pytest.StashKey[LabPool]()


# Test modules that share a lab, one after the other in one worker (the order here). Each needs
# only parts that the modules before it left as the scenario made them.
LAB_GROUPS = {
    "lab-incident-1": ("test_cleanup.py", "test_fix_mlflow_ssh.py"),  # rows, then mlflow
    "lab-incident-2": ("test_schedule.py", "test_verify_stack.py"),  # rows, then reads the rest
    "lab-healthy-1": ("test_fix_mlflow_mlflow3.py", "test_fleet.py"),  # mlflow, then the rest
}


def group_of(module_nodeid: str) -> str:
    """A test module's group: its LAB_GROUPS name, else the module itself."""
    name = module_nodeid.rsplit("/", 1)[-1]
    return next((group for group, names in LAB_GROUPS.items() if name in names), module_nodeid)


def shared_lab(request, scenario: str, needs=PARTS, changes=PARTS) -> LabHandle:
    """A lab for a module-scoped fixture, shared with the other modules of its group where what
    they need and change allows (see `LabPool`)."""
    config = request.config
    if POOL not in config.stash:
        config.stash[POOL] = LabPool(config)
        config.add_cleanup(config.stash[POOL].close)
    return config.stash[POOL].borrow(request, scenario, needs, changes)


@dataclass
class PyinfraRun:
    returncode: int
    results: dict | None
    stdout: str
    stderr: str

    @property
    def changed(self) -> int:
        return self.results["results"]["totals"]["success"] if self.results else -1

    @property
    def errors(self) -> int:
        return self.results["results"]["totals"]["error"] if self.results else -1

    def changed_ops(self) -> list[str]:
        return [op["name"] for op in self.results["results"]["operations"] if op["success"]]

    def report(self, tail: int = 6000) -> str:
        """Exit code and the tails of stdout/stderr, for an assertion message."""
        return f"rc={self.returncode}\n--- stdout\n{self.stdout[-tail:]}\n--- stderr\n{self.stderr[-tail:]}"


def run_pyinfra(inventory: str | Path, deploy: str | Path, *args: str, env: dict | None = None,
                timeout: int = 900) -> PyinfraRun:
    """`pyinfra -y --json`, as a user would run it; results parsed from the JSON on stdout."""
    command = [str(PYINFRA), "-y", "--json", "--group-data", str(GROUP_DATA), *args,
               str(inventory), str(deploy)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})
    results = None
    start = proc.stdout.find("{")
    if start >= 0:
        try:
            results = json.loads(proc.stdout[start:])
        except json.JSONDecodeError:
            results = None
    return PyinfraRun(proc.returncode, results, proc.stdout, proc.stderr)


def write_inventory(path: Path, prefix: str, mlflow_overrides: dict | None = None,
                    mlflow_image: str = "mlflow2", host: str = "@local", host_data: dict | None = None) -> Path:
    """An inventory for one lab host, the lab's own host data with `mlflow` overrides merged in."""
    path.write_text(
        "from tasks.lab.inventory import lab_host_data\n"
        f"data = lab_host_data({prefix!r}, mlflow_image={mlflow_image!r})\n"
        f"data['mlflow'].update({mlflow_overrides or {}!r})\n"
        f"data.update({host_data or {}!r})\n"
        f"hosts = [({host!r}, data)]\n")
    return path
