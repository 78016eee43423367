"""The pytest side of tests that run against the real lab: labs brought up for fixtures and shared
by test modules (`lab_up`, `shared_lab`). Driving a lab and running pyinfra is tasks/lab/harness.py."""
from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

import pytest

# re-exported for the tests
from tasks.lab.harness import (
    GROUP_DATA,
    PYINFRA,
    REPO,
    LabHandle,
    PyinfraRun,
    free_port_base,
    new_lab,
    pyinfra_process,
    run_pyinfra,
    write_inventory,
)

__all__ = [
    "GROUP_DATA", "PYINFRA", "REPO", "LabHandle", "PyinfraRun", "free_port_base", "new_lab",
    "pyinfra_process", "run_pyinfra", "write_inventory",
    "LAB_GROUPS", "LATER_MODULES", "POOL", "PARTS", "MLFLOW", "ROWS", "ROLES", "SERVICES",
    "LabPool", "group_of", "lab_up", "shared_lab", "gunicorn_timeout", "mlflow_serves",
    "containers_by_name",
]


def containers_by_name(client) -> dict[str, str]:
    """Every container on the engine, name -> status, from one `docker ps -a`. Sparse: the SDK's
    full list inspects each container after listing, and one that another worker removes in
    between raised NotFound (seen in a suite run)."""
    return {c.attrs["Names"][0].lstrip("/"): c.attrs["State"]
            for c in client.containers.list(all=True, sparse=True)}


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
            pooled = _PooledLab(new_lab("qtsh", 10000), scenario, set(), group)
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


def gunicorn_timeout(container) -> str:
    """The ``--timeout`` a lab MLflow container's gunicorn was started with (from its command)."""
    command = container.attrs["Config"]["Cmd"]
    return command[command.index("--gunicorn-opts") + 1].split()[1]


def mlflow_serves(lab, attempts: int = 30) -> None:
    """The lab's MLflow answers ``/health`` with OK, within ``attempts`` one-second tries."""
    last = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{lab.port_base}/health", timeout=5) as answer:
                if answer.read().decode().strip() == "OK":
                    return
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"MLflow does not serve /health: {last}")
