"""Test hosts reached over real SSH: containers of the lab's `sshhost` image (tasks/lab/recipes/sshhost),
each a fresh Debian host with sshd as PID 1, key authentication only, published on a 127.0.0.1 port.

Each host gets its own ed25519 host key and root's authorized key (a fresh client key) copied in
*before* it starts, so pyinfra's @ssh connector (paramiko) checks the real host key strictly and
logs in as root with that key: no password is set or used for any account. `login="admin"` adds
what a cloud image gives instead: an `admin` user with the same key and passwordless sudo (pyinfra
then runs with `_sudo`).

Docker on the target: these hosts have no init system and cannot run a nested `dockerd`. With
`docker_socket=True` the lab engine's socket (/var/run/docker.sock of the machine running the
tests) is bind-mounted at the same path, so a `docker` CLI installed on the host (by onboarding)
talks to the lab's engine: containers a deploy starts from such a host are siblings on this
machine's engine, not children of the host. A deploy that manages containers from several such
hosts must give each host its own container names.

Every resource carries the label `quantlab.prefix=<prefix>` (the hosts, and the optional shared
apt archive volume, `share_apt_archives=True`: it saves downloading the same .deb files once per
host, but apt refuses to wait for another host's lock on it, so only for hosts onboarded one at a
time), so `scripts/lab
--prefix <prefix> down` removes them, and the fixture's own teardown does too. Addresses used: only
127.0.0.1 ports of containers created here.
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from tests.labkit import free_port_base

HOST = "127.0.0.1"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
DOCKER_SOCKET = "/var/run/docker.sock"
APT_ARCHIVES = "/var/cache/apt/archives"


def _keygen(path: Path, comment: str) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of {path: (content, mode)} owned by root, for `put_archive` at /."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs = sorted({str(Path(p).parent).lstrip("/") for p in files})
        for folder in dirs:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o700 if folder.endswith(".ssh") else 0o755
            tar.addfile(info)
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


EXEC_OUTPUT_PREFIX = "/tmp/.quant-test-exec-"  # SshHost.exec
EXEC_END = "__quant_test_exec_end__"


@dataclass
class SshHost:
    name: str  # the container's name; also the host's name in inventories
    port: int  # sshd on 127.0.0.1:port
    client_key: Path  # private key authorized for root (and `admin` when login="admin")
    known_hosts: Path
    login: str  # "root" or "admin"
    client: docker.DockerClient = field(repr=False)

    @property
    def container(self):
        return self.client.containers.get(self.name)

    def pyinfra_host_data(self, user: str | None = None, key: Path | None = None) -> dict:
        """@ssh connector data: this key only, no agent, the host's real key checked strictly."""
        data = {
            "ssh_hostname": HOST,
            "ssh_port": self.port,
            "ssh_user": user or self.login,
            "ssh_key": str(key or self.client_key),
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "ssh_connect_retries": 0,
        }
        if (user or self.login) == "admin":
            data["_sudo"] = True
        return data

    def ssh_command(self, *remote: str, user: str | None = None, key: Path | None = None) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(key or self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=10", f"{user or self.login}@{HOST}", *remote]

    def ssh_run(self, command: str, user: str | None = None, key: Path | None = None,
                timeout: float = 30) -> tuple[int, str, str]:
        """A command over a fresh paramiko login (exit status, stdout, stderr)."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(HOST, port=self.port, username=user or self.login,
                           key_filename=str(key or self.client_key), allow_agent=False,
                           look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10)
            _, stdout, stderr = client.exec_command(command, timeout=timeout)
            code = stdout.channel.recv_exit_status()
            return code, stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        finally:
            client.close()

    def exec(self, command: str) -> tuple[int, str]:
        """A command in the container as root, by the engine (not over SSH): for test setup only.
        Its output (stdout and stderr, as exec_run gives them) and exit status.

        The engine can drop a quick exec's output (docker-py issue #2042; a suite run here got ""
        from `systemctl is-enabled`): the output goes to a file in the container, printed with an
        end marker, and is read again, never run again, when the marker did not arrive."""
        path = f"{EXEC_OUTPUT_PREFIX}{secrets.token_hex(6)}"
        script = f"(\n{command}\n) >{path} 2>&1; code=$?; cat {path}; printf %s {EXEC_END}; exit $code"
        code, output = self.container.exec_run(["sh", "-c", script])
        for _ in range(5):
            text = output.decode(errors="replace")
            if text.endswith(EXEC_END):
                try:  # not left behind: a test may search the host's /tmp
                    self.container.exec_run(["rm", "-f", path], detach=True)
                except docker.errors.APIError:
                    pass  # the command stopped the host; /tmp goes with it
                return code, text[:-len(EXEC_END)]
            time.sleep(0.2)
            _, output = self.container.exec_run(["sh", "-c", f"cat {path} && printf %s {EXEC_END}"])
        raise RuntimeError(f"{self.name}: the engine kept losing the output of {command!r}")

    def stop(self, timeout: int = 0):
        self.container.stop(timeout=timeout)

    def start(self):
        self.container.start()
        wait_ready(self)

    def logs(self) -> str:
        try:
            return self.container.logs(tail=30).decode(errors="replace")
        except docker.errors.NotFound:
            return ""


def wait_ready(host: SshHost, seconds: float = 30.0) -> None:
    """Until sshd answers with a banner and our key logs in (a real login)."""
    deadline, last = time.monotonic() + seconds, "not tried"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, host.port), timeout=2) as sock:
                banner = sock.recv(64)
            if banner.startswith(b"SSH-2.0-"):
                code, out, _ = host.ssh_run("echo ready", timeout=10)
                if code == 0 and out.strip() == "ready":
                    return
                last = f"login answered {code}: {out.strip()[:80]}"
            else:
                last = f"banner {banner!r}"
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, reason kept
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    raise RuntimeError(f"sshd in {host.name} on {HOST}:{host.port} not ready: {last}\n{host.logs()}")


class Fleet:
    """N `sshhost` containers named `<prefix>-host<i>`; see the module docstring."""

    def __init__(self, prefix: str, folder: Path, count: int, docker_socket: bool = False,
                 login: str = "root", port_start: int = 24000, share_apt_archives: bool = False,
                 client: docker.DockerClient | None = None, host_network: bool = False,
                 mounts: tuple[str, ...] = ()):
        if login not in ("root", "admin"):
            raise ValueError("login must be 'root' or 'admin'")
        self.prefix, self.folder, self.count = prefix, Path(folder), count
        self.docker_socket, self.login = docker_socket, login
        self.share_apt_archives = share_apt_archives
        self.client = client or docker.from_env()
        self.labels = {"quantlab.prefix": prefix, "quantlab.service": "sshhost"}
        self.port_start = port_start
        self.hosts: list[SshHost] = []
        self.apt_volume = f"{prefix}-apt-archives"
        # host_network: the host shares this machine's network (sshd on 127.0.0.1:<port> only),
        # so the lab's services published on 127.0.0.1 are reachable from it, as on a stack host;
        # mounts: folders of this machine bind-mounted at the same path (a lab's folder; with
        # ":ro" read-only).
        self.host_network, self.mounts = host_network, tuple(mounts)

    # setup ------------------------------------------------------------------------------------
    def image(self) -> str:
        from tasks.lab.images import ensure_images
        return ensure_images(self.client, ["sshhost"], log=lambda _: None,
                             build_log=self.folder / "build.log")["sshhost"]

    def start(self) -> Fleet:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        image = self.image()
        _keygen(self.folder / "client_ed25519", f"{self.prefix}-test-client")
        public = (self.folder / "client_ed25519.pub").read_bytes()
        known_hosts = self.folder / "known_hosts"
        known_lines = []
        volumes = {}
        if self.docker_socket:
            volumes[DOCKER_SOCKET] = {"bind": DOCKER_SOCKET, "mode": "rw"}
        if self.share_apt_archives:
            try:
                self.client.volumes.get(self.apt_volume)
            except docker.errors.NotFound:
                self.client.volumes.create(self.apt_volume, labels=self.labels)
            volumes[self.apt_volume] = {"bind": APT_ARCHIVES, "mode": "rw"}
        for mount in self.mounts:
            folder, _, mode = mount.partition(":")
            volumes[folder] = {"bind": folder, "mode": mode or "rw"}
        base = free_port_base(self.port_start, span=max(self.count, 1))
        for index in range(1, self.count + 1):
            name = f"{self.prefix}-host{index}"
            port = base + index - 1
            host_key = self.folder / f"{name}_host_ed25519"
            _keygen(host_key, name)
            host_pub = (self.folder / f"{name}_host_ed25519.pub").read_text().split()
            known_lines.append(f"[{HOST}]:{port} {host_pub[0]} {host_pub[1]}")
            network = ({"network_mode": "host"} if self.host_network
                       else {"hostname": name, "ports": {"22/tcp": (HOST, port)}})
            container = self.client.containers.create(
                image, name=name, labels=self.labels, detach=True, volumes=volumes, init=False, **network)
            files = {
                "/etc/ssh/ssh_host_ed25519_key": (host_key.read_bytes(), 0o600),
                "/etc/ssh/ssh_host_ed25519_key.pub": ((self.folder / f"{name}_host_ed25519.pub").read_bytes(), 0o644),
                "/root/.ssh/authorized_keys": (public, 0o600),
            }
            if self.host_network:
                files["/etc/ssh/sshd_config.d/00-port.conf"] = (
                    f"Port {port}\nListenAddress {HOST}\n".encode(), 0o644)
            container.put_archive("/", _tar(files))
            container.start()
            self.hosts.append(SshHost(name, port, self.folder / "client_ed25519", known_hosts,
                                      "root", self.client))
        known_hosts.write_text("\n".join(known_lines) + "\n")
        for host in self.hosts:
            wait_ready(host)
            if self.login == "admin":
                self._add_admin(host)
        return self

    @staticmethod
    def _add_admin(host: SshHost) -> None:
        """What a cloud image gives: a sudo user holding the first login's key (NOPASSWD)."""
        code, out = host.exec(
            "useradd -m -s /bin/bash -G sudo admin && usermod -p '*' admin"
            " && install -d -m 0700 -o admin -g admin /home/admin/.ssh"
            " && install -m 0600 -o admin -g admin /root/.ssh/authorized_keys /home/admin/.ssh/authorized_keys"
            " && echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-admin"
            " && chmod 0440 /etc/sudoers.d/90-admin && visudo -cf /etc/sudoers.d/90-admin")
        if code != 0:
            raise RuntimeError(f"adding the admin user to {host.name} failed: {out}")
        host.login = "admin"
        wait_ready(host)

    # teardown ---------------------------------------------------------------------------------
    def remove(self) -> list[str]:
        removed = []
        for container in self.client.containers.list(
                all=True, filters={"label": [f"quantlab.prefix={self.prefix}", "quantlab.service=sshhost"]}):
            container.remove(force=True, v=True)
            removed.append(container.name)
        try:
            self.client.volumes.get(self.apt_volume).remove(force=True)
            removed.append(self.apt_volume)
        except docker.errors.NotFound:
            pass
        return removed

    # inventories ------------------------------------------------------------------------------
    def write_inventory(self, path: Path, host_data: dict[str, dict], extra_hosts: list[tuple] = ()) -> Path:
        """An inventory module: `hosts = [(name, data), ...]`, data as given per host name."""
        hosts = [(host.name, host_data[host.name]) for host in self.hosts if host.name in host_data]
        hosts += list(extra_hosts)
        path.write_text(f"hosts = {hosts!r}\n")
        return path


def socket_gid(path: str = DOCKER_SOCKET) -> int:
    return os.stat(path).st_gid
