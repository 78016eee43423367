"""A recreate keeps what it does not manage, proven on whole `docker inspect` documents.

An MLflow container made as a user makes one (`docker run`: a named volume, a bind mount, a tmpfs,
an anonymous volume, two user networks with aliases, its own healthcheck, labels, user, working dir,
log options, ulimits, dropped capabilities, a 127.0.0.1 port, a sqlite store on the volume) and an
inventory whose `mlflow` block matches it but for the workers (and the init it lacks). deploys/fix_mlflow.py over @local
recreates it, verified; a second run changes nothing. The old and new inspect documents are walked
whole: every path that differs must be a managed field or a runtime one (allow-lists below), not a
list of fields we thought of. Then a change whose container cannot start forces a rollback, and the
restored container's inspect equals the one before but for runtime fields. No lab is needed.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import pytest

from tasks.core.mlflow_server import desired_container, server_spec
from tasks.lab.images import image_refs
from tasks.settings import load
from tests.labkit import REPO, free_port_base, run_pyinfra

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "fix_mlflow.py"
VERSION_LABEL = "io.quantlab.mlflow-version"
MANAGED_ENV_LABEL = "io.quantlab.managed-env"
TOKEN_VAR = "QTRK_SECRET_TOKEN"

# Paths (``/``-joined keys, ``*`` any one key) that may differ between a container and its copy.
MANAGED = (
    "Config/Cmd",  # the workers: the drift fixed
    "HostConfig/Init",  # mlflow.init: the user's runs `mlflow server` as PID 1, the new one under docker-init
    "Args",  # derived from Cmd
    f"Config/Labels/{MANAGED_ENV_LABEL}",  # the deploy notes the env keys it owns
)
RUNTIME = (
    "Id", "Created", "State/*", "State/Health/*", "ResolvConfPath", "HostnamePath", "HostsPath",
    "LogPath", "GraphDriver/Data/*", "RestartCount", "ExecIDs", "Config/Hostname",
    "NetworkSettings/SandboxID", "NetworkSettings/SandboxKey",
    "NetworkSettings/Networks/*/EndpointID", "NetworkSettings/Networks/*/IPAddress",
    "NetworkSettings/Networks/*/MacAddress", "NetworkSettings/Networks/*/Gateway",
)  # fmt: skip
# The anonymous volume is mounted again by its name, so its data stays: one more bind, and its
# mount now reads as a bind's (mode z). (Mounts are keyed by destination: "/scratch".)
CARRIED = ("HostConfig/Binds", ("Mounts", "/scratch", "Mode"))


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def inspect(name: str) -> dict:
    return json.loads(docker("container", "inspect", name))[0]


def normalized(data: dict) -> dict:
    """Lists whose order or engine-made entries mean nothing, keyed: Env by name, Mounts by
    destination, each network's aliases without the container's own short id (API 1.41 adds it)."""
    data = json.loads(json.dumps(data))
    short_id = data["Id"][:12]
    data["Config"]["Env"] = dict(e.split("=", 1) for e in data["Config"]["Env"])
    data["Mounts"] = {m["Destination"]: m for m in data["Mounts"]}
    for network in data["NetworkSettings"]["Networks"].values():
        network["Aliases"] = sorted(a for a in network.get("Aliases") or [] if a != short_id)
    return data


Keys = tuple[str, ...]


def differing(old, new, path: Keys = ()) -> list[Keys]:
    """Every leaf path whose value differs (a missing key counts as a difference); lists are
    leaves, compared whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differing(old.get(key, MISSING), new.get(key, MISSING), (*path, key))
        return out
    return [] if old == new else [path]


MISSING = "<missing>"


def allowed(path: Keys, patterns) -> bool:
    for pattern in patterns:
        parts = tuple(pattern.split("/")) if isinstance(pattern, str) else pattern
        if len(parts) == len(path) and all(p in ("*", key) for p, key in zip(parts, path)):
            return True
    return False


def at(data, path: Keys):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return MISSING
        data = data[key]
    return data


def shown(paths: list[Keys], old: dict, new: dict) -> str:
    return "\n".join(f"{'/'.join(p)}: {at(old, p)!r} -> {at(new, p)!r}" for p in paths)


def workers(command: list[str]) -> str:
    return command[command.index("--workers") + 1]


class Stack:
    """The user's container and what it hangs on, all named with one prefix."""

    def __init__(self, tmp: Path):
        self.prefix = f"qtrk{random.randrange(16**4):04x}"
        self.name = f"{self.prefix}-mlflow"
        self.front, self.back = f"{self.prefix}-front", f"{self.prefix}-back"
        self.volume = f"{self.prefix}-data"
        self.config_dir = tmp / "config"
        self.port = free_port_base(29500, span=1)
        self.image = image_refs()["mlflow2"]
        self.token = f"tok-{random.randrange(16**12):012x}"
        self.anonymous: list[str] = []

    def block(self, **overrides) -> dict:
        block = {
            "container_name": self.name, "image": self.image,
            "backend_store_uri": "sqlite:////data/mlflow.db", "default_artifact_root": "/data/artifacts",
            "ports": [f"127.0.0.1:{self.port}:5000"], "network": self.front,
            "env": {"TZ": "UTC"}, "secret_env": {"QUANT_TEST_TOKEN": {"env": TOKEN_VAR}},
        }  # fmt: skip
        return {**block, **overrides}

    def inventory(self, path: Path, **overrides) -> Path:
        path.write_text(f"hosts = [('@local', {{'mlflow': {self.block(**overrides)!r}}})]\n")
        return path

    def run(self, path: Path):
        return run_pyinfra(path, DEPLOY, env={TOKEN_VAR: self.token})

    def create(self) -> None:
        """The container as the user runs it: the deploy's settings but 4 workers, plus their own."""
        if not docker("image", "inspect", self.image, check=False).strip():
            subprocess.run([str(REPO / ".venv/bin/python"), "-m", "tasks.lab.cli", "images"], check=True,
                           cwd=REPO, timeout=1800)
        settings = load("mlflow", "@local", self.block())
        desired = desired_container(settings, server_spec(settings, "2.9.2"), {"QUANT_TEST_TOKEN": self.token})
        command = list(desired.command)
        assert workers(command) == "2"
        command[command.index("--workers") + 1] = "4"
        self.config_dir.mkdir()
        (self.config_dir / "settings.ini").write_text("[mlflow]\nowner = research\n")
        for network in (self.front, self.back):
            docker("network", "create", network)
        docker("volume", "create", self.volume)
        env_file = self.config_dir.parent / "user.env"  # the token stays off the command line
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(desired.env.items())))
        env_file.chmod(0o600)
        docker(
            "run", "--detach", "--name", self.name,
            "--network", self.front, "--network-alias", "tracking", "--network-alias", "mlflow",
            "--volume", f"{self.volume}:/data", "--volume", f"{self.config_dir}:/etc/mlflow-user:ro",
            "--volume", "/scratch", "--tmpfs", "/tmp/cache:size=16m",
            "--health-cmd", "curl -fsS http://127.0.0.1:5000/health || exit 1",
            "--health-interval", "3s", "--health-retries", "20", "--health-start-period", "60s",
            "--label", "team=research", "--label", "tier=tracking", "--label", f"{VERSION_LABEL}=2.9.2",
            "--env-file", str(env_file), "--user", "0:0", "--workdir", "/data",
            "--log-opt", "max-size=1m", "--log-opt", "max-file=2", "--ulimit", "nofile=4096:8192",
            "--cap-drop", "NET_RAW", "--cap-drop", "MKNOD",
            "--publish", f"127.0.0.1:{self.port}:5000",
            "--memory", "1g", "--memory-reservation", "512m", "--restart", "unless-stopped",
            self.image, *command,
        )  # fmt: skip
        env_file.unlink()
        docker("network", "connect", "--alias", "mlflow-back", "--alias", "tracking-back", self.back, self.name)
        self.anonymous = [m["Name"] for m in inspect(self.name)["Mounts"] if m["Destination"] == "/scratch"]
        docker("exec", self.name, "sh", "-c", "echo kept > /scratch/marker && echo kept > /data/marker")

    def remove(self) -> None:
        for name in (self.name, self.name + "-previous"):
            docker("rm", "-f", name, check=False)
        docker("network", "rm", self.front, self.back, check=False)
        docker("volume", "rm", self.volume, *self.anonymous, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    stack = Stack(tmp_path_factory.mktemp("recreate"))
    request.addfinalizer(stack.remove)
    stack.create()
    return stack


@pytest.fixture(scope="module")
def first(stack, tmp_path_factory):
    """The user's container before, the deploy's first run, the container after."""
    before = inspect(stack.name)
    inventory = stack.inventory(tmp_path_factory.mktemp("inventory") / "inventory.py")
    result = stack.run(inventory)
    return before, result, inspect(stack.name), inventory


def test_the_drifted_workers_are_fixed_by_a_verified_recreate(stack, first):
    before, result, after, _ = first
    assert result.returncode == 0, result.report()
    assert result.changed >= 1, result.report()
    assert re.search(r"(\d+)/\1 checks passed", result.stderr), result.report()
    assert after["Id"] != before["Id"] and after["Name"] == before["Name"]
    assert (workers(before["Config"]["Cmd"]), workers(after["Config"]["Cmd"])) == ("4", "2")
    assert (before["HostConfig"].get("Init"), after["HostConfig"].get("Init")) == (None, True)
    assert after["State"]["Running"] and after["Image"] == before["Image"]
    assert not docker("ps", "-aq", "--filter", f"name=^{stack.name}-previous$")
    assert stack.token not in result.stdout + result.stderr
    # The data in the named and the anonymous volume is still there.
    assert docker("exec", stack.name, "cat", "/scratch/marker", "/data/marker").split() == ["kept", "kept"]


def test_the_whole_inspect_differs_only_in_managed_and_runtime_fields(stack, first):
    before, result, after, _ = first
    assert result.returncode == 0, result.report()
    old, new = normalized(before), normalized(after)
    paths = differing(old, new)
    unexpected = [p for p in paths if not allowed(p, MANAGED + RUNTIME + CARRIED)]
    assert not unexpected, shown(unexpected, old, new)
    assert ("Config", "Cmd") in paths  # the walk does see what changed
    assert new["Config"]["Hostname"] == new["Id"][:12]  # the engine's own, as it was
    # What the carried lines allow is exactly the anonymous volume, by name, at its path.
    assert new["HostConfig"]["Binds"] == [*old["HostConfig"]["Binds"], f"{stack.anonymous[0]}:/scratch"]
    assert new["Mounts"]["/scratch"]["Name"] == old["Mounts"]["/scratch"]["Name"]
    # The user's settings, read back (the walk proves them equal; these show they were there).
    assert new["HostConfig"]["Tmpfs"] == {"/tmp/cache": "size=16m"}
    assert new["HostConfig"]["LogConfig"]["Config"] == {"max-file": "2", "max-size": "1m"}
    assert new["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Hard": 8192, "Soft": 4096}]
    assert sorted(new["HostConfig"]["CapDrop"]) == ["CAP_MKNOD", "CAP_NET_RAW"]
    assert (new["Config"]["User"], new["Config"]["WorkingDir"]) == ("0:0", "/data")
    assert new["Config"]["Healthcheck"]["Interval"] == 3_000_000_000
    assert new["Config"]["Labels"]["team"] == "research"
    networks = new["NetworkSettings"]["Networks"]
    assert networks[stack.front]["Aliases"] == ["mlflow", "tracking"]
    assert networks[stack.back]["Aliases"] == ["mlflow-back", "tracking-back"]
    assert new["State"]["Health"]["Status"] == "healthy"


def test_a_second_run_changes_nothing(stack, first):
    _, result, after, inventory = first
    assert result.returncode == 0, result.report()
    again = stack.run(inventory)
    assert again.returncode == 0, again.report()
    assert again.changed == 0, again.changed_ops()
    assert inspect(stack.name)["Id"] == after["Id"]


def test_a_forced_rollback_restores_the_container_as_it_was(stack, first, tmp_path):
    _, result, _, _ = first
    assert result.returncode == 0, result.report()
    before = inspect(stack.name)
    # `mlflow server` refuses an unknown flag: the new container exits at once and keeps restarting.
    inventory = stack.inventory(tmp_path / "inventory.py", extra_args=["--no-such-flag"])
    failed = stack.run(inventory)
    assert failed.returncode != 0, failed.report()
    assert "failed verification; previous container restored and started, and it is running" in (
        failed.stdout + failed.stderr), failed.report()
    assert stack.token not in failed.stdout + failed.stderr
    restored = inspect(stack.name)
    assert restored["Id"] == before["Id"]
    assert not docker("ps", "-aq", "--filter", f"name=^{stack.name}-previous$")
    old, new = normalized(before), normalized(restored)
    paths = differing(old, new)
    unexpected = [p for p in paths if not allowed(p, RUNTIME)]
    assert not unexpected, shown(unexpected, old, new)
    assert ("State", "StartedAt") in paths  # it was stopped and started again

