"""Several real OpenSSH servers on 127.0.0.1, one a "host" of the benchmark fleet.

Each is `/usr/sbin/sshd -D -e` on its own free port with its own config, pid file and log, all in one
private folder; they share one host key and one client key (one known_hosts line per port). The
target behind every one of them is this same machine, so each "host" drives the local Docker engine
and manages its own, uniquely named MLflow container. Built from tasks/lab/sshd.py's pieces (config,
keys, stop), with two differences: several servers, and `LogLevel DEBUG1`, so the log records every
channel request (`exec` = one remote command, `subsystem` = one sftp session) for counting round trips.

`start_fleet(..., shell_rc=stock_shell_rc())` gives the fleet's sshds a private mount namespace in
which the user's `~/.bashrc` is Debian's stock one, as tasks/lab/sshd.py says why; without it they
run with this machine's own.
"""
from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.lab.sshd import (  # noqa: E402
    HOST,
    free_port,
    keygen,
    sshd_argv,
    sshd_config,
    stop_sshd,
    uses_shell_rc,
)

# sshd 9.x at DEBUG1: "debug1: server_input_channel_req: channel 0 request exec reply 1"
CHANNEL_REQUEST = re.compile(r"server_input_channel_req: channel \d+ request (exec|subsystem|shell)\b")
ACCEPTED = re.compile(r"Accepted publickey for ")


@dataclass
class Server:
    index: int
    port: int
    log: Path
    process: subprocess.Popen

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def count_since(self, offset: int) -> dict:
        """Logins and channel requests the server saw since `offset` bytes of its log."""
        with self.log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        kinds = CHANNEL_REQUEST.findall(text)
        return {"connections": len(ACCEPTED.findall(text)), "exec": kinds.count("exec"),
                "sftp": kinds.count("subsystem"), "shell": kinds.count("shell")}


@dataclass
class Fleet:
    folder: Path
    user: str
    client_key: Path
    known_hosts: Path
    servers: list[Server]
    shell_rc: str  # "stock" (Debian's ~/.bashrc in the sshds' namespace) or "machine" (as is)

    def pyinfra_data(self, server: Server) -> dict:
        return {"ssh_hostname": HOST, "ssh_port": server.port, "ssh_user": self.user,
                "ssh_key": str(self.client_key), "ssh_allow_agent": False,
                "ssh_look_for_keys": False, "ssh_known_hosts_file": str(self.known_hosts),
                "ssh_strict_host_key_checking": "yes"}

    def offsets(self, count: int) -> list[int]:
        return [s.log_size() for s in self.servers[:count]]

    def counts(self, count: int, offsets: list[int]) -> list[dict]:
        return [s.count_since(o) for s, o in zip(self.servers[:count], offsets)]

    def stop(self):
        for server in self.servers:
            stop_sshd(server.process)


def _wait_banner(port: int, process: subprocess.Popen, log: Path, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd on port {port} exited: {log.read_text(errors='replace')[-500:]}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as sock:
                if sock.recv(16).startswith(b"SSH-2.0-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"sshd on port {port} did not answer")


def start_fleet(folder: Path, count: int, shell_rc: Path | None = None) -> Fleet:
    """`count` sshds; with `shell_rc` (root only) the user's ~/.bashrc is that file in their sessions."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    account = pwd.getpwuid(os.geteuid())
    user = account.pw_name
    keygen(folder / "host_key", "qtbn-bench-host")
    keygen(folder / "client_key", "qtbn-bench-client")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    host_pub = " ".join((folder / "host_key.pub").read_text().split()[:2])
    servers, known = [], []
    try:
        for index in range(count):
            port = free_port()
            config = folder / f"sshd{index}.conf"
            config.write_text(sshd_config(folder, port, user, host_key="host_key", pid_file=f"sshd{index}.pid",
                                          log_level="DEBUG1", max_sessions=100))
            log = folder / f"sshd{index}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(sshd_argv(config, shell_rc, Path(account.pw_dir)),
                                           stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            servers.append(Server(index, port, log, process))
            known.append(f"[{HOST}]:{port} {host_pub}")
        for server in servers:
            _wait_banner(server.port, server.process, server.log)
    except Exception:
        for server in servers:
            stop_sshd(server.process)
        raise
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("\n".join(known) + "\n")
    return Fleet(folder, user, folder / "client_key", known_hosts, servers,
                 "stock" if uses_shell_rc(shell_rc, Path(account.pw_dir)) else "machine")
