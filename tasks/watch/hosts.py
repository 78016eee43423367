"""What the watcher needs of each inventory host: how to reach it, which containers to follow (by
service role, as deploys/remediate.py resolves them) and which db roles db_users may fix.

The inventory is read with pyinfra's own loader in a child process (``python -m
tasks.watch.hosts INVENTORY``, JSON out): pyinfra's CLI package patches the process for gevent,
and the watcher's threads and subprocesses must stay plain ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.core.signatures import Signature, load_catalog

KNOWN = ("fix_mlflow", "db_users", "backend_reload", "none")  # tasks.operations.remediate.KNOWN


@dataclass
class WatchHost:
    name: str
    local: bool
    containers: dict[str, str]  # role -> container name
    db_roles: list[str] = field(default_factory=list)
    ssh: dict = field(default_factory=dict)  # hostname, port, username, key_filename, known_hosts, strict
    catalog_path: str | None = None  # the host's remediate.catalog; None: the packaged catalog

    @property
    def catalog(self) -> tuple[Signature, ...]:
        return load_catalog(self.catalog_path, known_remediations=KNOWN)

    def role_of(self, container: str) -> str | None:
        base = container.removesuffix("-previous")
        return next((role for role, name in self.containers.items() if name == base), None)


def load_hosts(inventory: str, group_data: list[str] | None = None) -> list[WatchHost]:
    """The inventory's hosts (in a child process: see the module's docstring). ValueError with
    the loader's own message when the inventory or a host's settings are wrong."""
    command = [sys.executable, "-m", "tasks.watch.hosts", inventory]
    for folder in group_data or []:
        command += ["--group-data", folder]
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise ValueError(f"inventory {inventory}: {proc.stderr.strip()[-2000:]}")
    return [WatchHost(**item) for item in json.loads(proc.stdout)]


def read_inventory(inventory: str, group_data: list[str] | None = None) -> list[WatchHost]:
    """The inventory's hosts, read with pyinfra's own inventory loader (group data included)."""
    from pyinfra.api import State
    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    from tasks import settings as host_settings
    from tasks.operations.remediate import configured_roles, container_roles
    from tasks.settings.remediate import host_catalog

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    state = State(check_for_changes=False)
    state.cwd = cwd
    ctx_state.set(state)
    folders = group_data
    if folders is None:
        default = Path(inventory).resolve().parent / "group_data"
        folders = [str(default)] if default.is_dir() else []
    loaded = make_inventory(inventory, cwd=cwd, group_data_directories=folders)
    ctx_inventory.set(loaded)
    hosts = []
    for host in loaded:
        settings = host_settings.of_host(host, "remediate")
        catalog = host_catalog(host.name, settings, KNOWN)
        needed = {role for sig in catalog for role in sig.containers}
        roles = {role: name for role, name in container_roles(host, settings).items() if role in needed}
        db_roles = configured_roles(host) if host.data.get("db_roles") else []
        local = host.connector_cls.__name__ == "LocalConnector"
        ssh = {}
        if not local:
            data = host.data
            ssh = {
                "hostname": data.get("ssh_hostname") or host.name,
                "port": int(data.get("ssh_port") or 22),
                "username": data.get("ssh_user"),
                "key_filename": data.get("ssh_key"),
                "known_hosts": data.get("ssh_known_hosts_file"),
                "strict": str(data.get("ssh_strict_host_key_checking") or "yes").lower() not in ("no", "off"),
            }
        hosts.append(WatchHost(host.name, local, roles, db_roles, ssh=ssh, catalog_path=settings.catalog))
    return hosts


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.watch.hosts")
    parser.add_argument("inventory")
    parser.add_argument("--group-data", action="append")
    args = parser.parse_args()
    print(json.dumps([asdict(h) for h in read_inventory(args.inventory, args.group_data)]))
