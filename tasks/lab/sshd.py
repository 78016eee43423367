"""A real OpenSSH server for tests and benchmarks: `/usr/sbin/sshd` on 127.0.0.1 at a free port,
in the foreground.

Everything it needs lives in a private temp dir: its config, an ed25519 host key, `authorized_keys`
holding a freshly generated ed25519 client key, its pid file and its log. Key authentication only
(no passwords, no PAM, no keyboard-interactive); root may log in with a key
(`PermitRootLogin prohibit-password`). A `known_hosts` file with the server's real host key is written
too, so clients can keep strict host key checking on.

The target is **this same machine** reached over SSH: the remote shell, and so the remote `docker` CLI,
talk to the very Docker engine the tests use directly. A deploy run over this server therefore changes
the same containers that `docker inspect` in the test then reads; only the transport (paramiko, sftp
uploads, a login shell with sshd's environment instead of pytest's) differs from `@local`.

Works unprivileged for the current user, and as root on a fresh Debian 12 with `openssh-server`
installed (it creates `/run/sshd`, the privilege separation directory sshd insists on, if missing).

Every remote command runs through the login user's shell, and Debian's bash reads `~/.bashrc` for
commands sent over SSH. This machine's root `~/.bashrc` runs `pyenv init` (about 0.1 s of CPU per
command, and concurrent shells queue on pyenv's rehash lock), which a managed host would not do. So,
as root with util-linux's `unshare`, sshd runs in a private mount namespace in which `~/.bashrc` is
Debian's stock one (:func:`stock_shell_rc`); nothing outside that sshd and its sessions sees it.

The pytest fixture is `sshd` in tests/sshd.py; bench/sshd_fleet.py starts several from these pieces.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
SSHD_MISSING = f"{SSHD} is missing (Debian: apt-get install openssh-server)"


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # private key (ed25519, no passphrase); the .pub is next to it
    known_hosts: Path  # "[127.0.0.1]:PORT ssh-ed25519 ..." for this server's host key
    folder: Path
    log: Path
    process: subprocess.Popen
    shell_rc: Path | None = None  # the user's ~/.bashrc in its sessions (sshd_argv), None: as is

    def pyinfra_host_data(self) -> dict:
        """Host data for pyinfra 3.10's @ssh connector (pyinfra/connectors/ssh.py `ConnectorData`):
        this key only, no agent, no ~/.ssh keys, the server's real host key checked strictly."""
        return {
            "ssh_port": self.port,
            "ssh_user": self.user,
            "ssh_key": str(self.client_key),
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
        }

    def ssh_command(self, *remote: str) -> list[str]:
        """An OpenSSH client command line for this server (for debugging or direct checks)."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{self.user}@{self.host}",
            *remote,
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def sshd_config(
    folder: Path,
    port: int,
    user: str,
    *,
    host_key: str = "ssh_host_ed25519_key",
    pid_file: str = "sshd.pid",
    log_level: str = "VERBOSE",
    max_sessions: int = 50,
) -> str:
    """The config of one key-only sshd on 127.0.0.1:`port` whose files live in `folder`
    (bench/sshd_fleet.py starts several with `LogLevel DEBUG1` to count channel requests)."""
    return "\n".join(
        [
            f"Port {port}",
            f"ListenAddress {HOST}",
            "AddressFamily inet",
            f"HostKey {folder / host_key}",
            f"PidFile {folder / pid_file}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitEmptyPasswords no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            # pytest's tmp dirs and CI homes need not satisfy sshd's ownership/mode checks.
            "StrictModes no",
            f"AllowUsers {user}",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            # pyinfra uploads files over sftp (its default transfer protocol).
            "Subsystem sftp internal-sftp",
            f"MaxSessions {max_sessions}",
            f"MaxStartups {max_sessions}:30:{2 * max_sessions}",
            "LoginGraceTime 30",
            f"LogLevel {log_level}",
            "",
        ]
    )


def _wait_ready(server: SshServer, deadline_seconds: float = 20.0) -> None:
    """Until the server answers with an SSH banner and accepts our key (a real login via paramiko)."""
    import paramiko

    deadline = time.monotonic() + deadline_seconds
    last = "not tried"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"sshd exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            with socket.create_connection((server.host, server.port), timeout=2) as sock:
                banner = sock.recv(64)
            if not banner.startswith(b"SSH-2.0-"):
                raise OSError(f"unexpected banner {banner!r}")
            client = paramiko.SSHClient()
            client.load_host_keys(str(server.known_hosts))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    server.host,
                    port=server.port,
                    username=server.user,
                    key_filename=str(server.client_key),
                    allow_agent=False,
                    look_for_keys=False,
                    timeout=5,
                )
                _, stdout, _ = client.exec_command("echo ready")
                if stdout.read().strip() == b"ready":
                    return
                last = "login worked but the remote command did not answer"
            finally:
                client.close()
        except (OSError, paramiko.SSHException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise RuntimeError(f"sshd on {server.host}:{server.port} not ready: {last}\n{server.log_text()}")


def stop_sshd(process: subprocess.Popen) -> None:
    """Stop the listener, then anything left in its own process group (per-connection children)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGTERM)  # the group start_new_session gave it: ours only
    except (ProcessLookupError, PermissionError):
        pass


def stock_shell_rc() -> Path | None:
    """Debian's stock ~/.bashrc for root (base-files), else the one new users get."""
    for candidate in (Path("/usr/share/base-files/dot.bashrc"), Path("/etc/skel/.bashrc")):
        if candidate.is_file():
            return candidate
    return None


def uses_shell_rc(shell_rc: Path | None, home: Path) -> bool:
    """Whether :func:`sshd_argv` gives the sessions ``shell_rc``: it needs root, `unshare`, and a
    ``home``/.bashrc to mount it over."""
    return (
        shell_rc is not None
        and (home / ".bashrc").exists()
        and os.geteuid() == 0
        and bool(shutil.which("unshare"))
    )


def sshd_argv(config: Path, shell_rc: Path | None, home: Path) -> list[str]:
    """sshd in the foreground with ``config``; with ``shell_rc`` (see :func:`uses_shell_rc`), in a
    private mount namespace where ``home``/.bashrc is that file."""
    sshd = [str(SSHD), "-D", "-e", "-f", str(config)]
    user_rc = home / ".bashrc"
    if not uses_shell_rc(shell_rc, home):
        return sshd
    # The bind mount is seen by this sshd and its sessions only; `exec` keeps sshd's pid the one
    # Popen returned (stop_sshd signals it).
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(shell_rc), str(user_rc), *sshd]  # fmt: skip


def start_sshd(folder: Path, shell_rc: Path | None = None) -> SshServer:
    """Start sshd in the foreground (-D, logging to stderr with -e, captured in `folder/sshd.log`),
    its sessions with ``shell_rc`` as the user's ~/.bashrc (default: :func:`stock_shell_rc`)."""
    if not SSHD.exists():
        raise FileNotFoundError(SSHD_MISSING)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    account = pwd.getpwuid(os.geteuid())
    user = account.pw_name
    shell_rc = shell_rc or stock_shell_rc()

    keygen(folder / "ssh_host_ed25519_key", "quantlab-test-host")
    keygen(folder / "client_ed25519", "quantlab-test-client")
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    host_pub = (folder / "ssh_host_ed25519_key.pub").read_text().split()

    last_error = ""
    for _ in range(5):  # a free port can be taken between our probe and sshd's bind: try another
        port = free_port()
        config = folder / "sshd_config"
        config.write_text(sshd_config(folder, port, user))
        check = subprocess.run(
            [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejected the test config:\n{check.stderr}")
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"[{HOST}]:{port} {host_pub[0]} {host_pub[1]}\n")
        log = folder / "sshd.log"
        process = _spawn_sshd(config, shell_rc, Path(account.pw_dir), log, "wb")
        server = SshServer(
            HOST, port, user, folder / "client_ed25519", known_hosts, folder, log, process, shell_rc
        )
        try:
            _wait_ready(server)
            return server
        except RuntimeError as exc:
            stop_sshd(process)
            last_error = str(exc)
            if "Address already in use" not in server.log_text():
                raise
    raise RuntimeError(f"could not start sshd: {last_error}")


def restart_sshd(server: SshServer) -> None:
    """The same sshd again after :func:`stop_sshd`: its port, host key, config and sessions' shell
    rc; its log appended to."""
    home = Path(pwd.getpwnam(server.user).pw_dir)
    server.process = _spawn_sshd(server.folder / "sshd_config", server.shell_rc, home, server.log, "ab")
    _wait_ready(server)


def _spawn_sshd(config: Path, shell_rc: Path | None, home: Path, log: Path, mode: str) -> subprocess.Popen:
    """sshd (:func:`sshd_argv`) in its own session, its output to ``log`` (``mode`` "wb" or "ab")."""
    with log.open(mode) as log_file:
        # sshd re-execs itself and requires an absolute path (sshd_argv gives it).
        return subprocess.Popen(
            sshd_argv(config, shell_rc, home),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
