"""Driving a private lab from outside, as a user would: bring a stack up and down with
`scripts/lab`, look into its containers, run pyinfra against it. Shared by the integration tests
(tests/labkit.py adds the pytest side: fixtures, the lab pool) and the benchmarks (bench/)."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import docker

from tasks.lab.prefork import Prefork

REPO = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).parent / "pyinfra"
GROUP_DATA = REPO / "inventories" / "group_data"
# pyinfra runs forked from a warm process (tasks/lab/prefork.py): the same CLI without its imports
PREFORK = Prefork(PYINFRA.parent / "python", REPO)


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux: 32768-60999)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port_base(start: int, span: int = 10, avoid: int | None = None) -> int:
    """A base port whose next `span` ports on 127.0.0.1 are free right now (never `avoid`: a base
    whose port was just found taken may look free again once its half-made lab is down).

    Never in the kernel's ephemeral range: there any client connection (the tests make thousands)
    may take a port between this check and the engine binding it, which no retry can see coming."""
    low, high = ephemeral_ports()
    for _ in range(200):
        base = start + random.randrange(0, 200) * span
        if base == avoid or (base <= high and base + span - 1 >= low):
            continue
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
    raise RuntimeError(f"no free port range of {span} from {start} outside the ephemeral ports {low}-{high}")


# What the engine says when a published port is taken (by a process; by another container).
PORT_TAKEN = ("address already in use", "port is already allocated")
PORT_ATTEMPTS = 3


@dataclass
class LabHandle:
    prefix: str
    port_base: int

    def cli(self, *args, check=True, timeout=900) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [
                str(REPO / "scripts" / "lab"),
                "--prefix",
                self.prefix,
                "--port-base",
                str(self.port_base),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"scripts/lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self, scenario: str, style: str | None = None):
        """`scripts/lab up`; style "compose" for the compose-style lab (None: the lab's own, else docker).

        A port found free when the base was picked can be taken before the lab binds it (another
        lab, fleet or test server starting beside this one; client connections cannot take it:
        the bases lie below the ephemeral ports): then the half-made lab is taken down and
        brought up on a new base."""
        args = ("up", "--scenario", scenario, *(("--style", style) if style else ()))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            proc = self.cli(*args, check=False)
            output = proc.stdout + proc.stderr
            if proc.returncode == 0:
                return proc
            if attempt == PORT_ATTEMPTS or not any(text in output for text in PORT_TAKEN):
                raise AssertionError(f"scripts/lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
            self.down()
            self.port_base = free_port_base(self.port_base - self.port_base % 1000, avoid=self.port_base)
        raise AssertionError("unreachable")

    def down(self):
        return self.cli("down", check=False)

    @property
    def state(self) -> dict:
        return json.loads((REPO / ".lab" / self.prefix / "state.json").read_text())

    def name(self, service: str) -> str:
        """The service's container: as the lab state names it (compose's name in the compose style)."""
        path = REPO / ".lab" / self.prefix / "state.json"
        names = json.loads(path.read_text())["containers"] if path.exists() else {}
        return names.get(service, f"{self.prefix}-{service}")

    def container(self, service: str):
        return docker.from_env().containers.get(self.name(service))

    def psql(self, sql: str, database: str = "quant") -> str:
        proc = subprocess.run(
            [
                "docker",
                "exec",
                "-i",
                "-u",
                "postgres",
                self.name("postgres"),
                "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
            ],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()


def new_lab(tag: str, port_start: int) -> LabHandle:
    return LabHandle(prefix=f"{tag}{random.randrange(16**4):04x}", port_base=free_port_base(port_start))


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
        results = cast(dict, self.results)  # None only when pyinfra printed no JSON
        return [op["name"] for op in results["results"]["operations"] if op["success"]]

    def report(self, tail: int = 6000) -> str:
        """Exit code and the tails of stdout/stderr, for an assertion message."""
        return f"rc={self.returncode}\n--- stdout\n{self.stdout[-tail:]}\n--- stderr\n{self.stderr[-tail:]}"


def pyinfra_process(
    *args: str, env: dict | None = None, inherit_env: bool = True, timeout: float = 900, forked: bool = True
) -> subprocess.CompletedProcess:
    """`pyinfra *args` from the checkout, stdin closed, output captured as text: forked from the warm
    process (tasks/lab/prefork.py) unless another run of this process holds it, then a subprocess.
    ``env`` is added to this process's environment, or is the whole of it without ``inherit_env``;
    ``forked=False``: always a subprocess (a timed run must pay the imports a user waits for)."""
    command = [str(PYINFRA), *args]
    environment = {**os.environ, **(env or {})} if inherit_env else dict(env or {})
    proc = PREFORK.run(command, environment, REPO, timeout) if forked and PREFORK.enabled() else None
    if proc is None:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=environment,
            stdin=subprocess.DEVNULL,
        )
    return proc


def run_pyinfra(
    inventory: str | Path,
    deploy: str | Path,
    *args: str,
    env: dict | None = None,
    timeout: int = 900,
    forked: bool = True,
) -> PyinfraRun:
    """`pyinfra -y --json`, as a user would run it; results parsed from the JSON on stdout. With
    ``--dry``, no ``-y``: as a user's `pyinfra --dry`, the plan is evaluated and its changes shown
    (``-y`` skips pyinfra's change detection, so a dry run would show no plan at all)."""
    proc = pyinfra_process(
        *(() if "--dry" in args else ("-y",)),
        "--json",
        "--group-data",
        str(GROUP_DATA),
        *args,
        str(inventory),
        str(deploy),
        env=env,
        timeout=timeout,
        forked=forked,
    )
    results = None
    start = proc.stdout.find("{")
    if start >= 0:
        try:
            results = json.loads(proc.stdout[start:])
        except json.JSONDecodeError:
            results = None
    return PyinfraRun(proc.returncode, results, proc.stdout, proc.stderr)


def write_inventory(
    path: Path,
    prefix: str,
    mlflow_overrides: dict | None = None,
    mlflow_image: str = "mlflow2",
    host: str = "@local",
    host_data: dict | None = None,
) -> Path:
    """An inventory for one lab host, the lab's own host data with `mlflow` overrides merged in."""
    path.write_text(
        "from tasks.lab.inventory import lab_host_data\n"
        f"data = lab_host_data({prefix!r}, mlflow_image={mlflow_image!r})\n"
        f"data['mlflow'].update({mlflow_overrides or {}!r})\n"
        f"data.update({host_data or {}!r})\n"
        f"hosts = [({host!r}, data)]\n"
    )
    return path
