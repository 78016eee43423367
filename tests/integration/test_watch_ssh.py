"""The watcher's streams over real SSH (a real sshd on 127.0.0.1, tests/sshd.py), without the
lab: lines arrive over a paramiko channel with the inventory's connection data, a stream that ends
is reopened, a dropped connection is reconnected while another host's stream goes on, and stopping
ends the remote command too (nothing left running on the host)."""
from __future__ import annotations

import time
from pathlib import Path

from tasks.watch.hosts import WatchHost
from tasks.watch.streams import SSHPool, Stream
from tests.sshd import sshd  # noqa: F401  (the fixture)


def ssh_host(server, name="ml-ssh") -> WatchHost:
    data = server.pyinfra_host_data()
    return WatchHost(name, False, {}, ssh={
        "hostname": server.host, "port": data["ssh_port"], "username": data["ssh_user"],
        "key_filename": data["ssh_key"], "known_hosts": data["ssh_known_hosts_file"], "strict": True})


def wait(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_ssh_streams_reopen_reconnect_and_stop_leaving_nothing(sshd, tmp_path):  # noqa: F811
    lines: list[tuple] = []
    pool = SSHPool()
    host = ssh_host(sshd)
    short = Stream(host, "log", "short", "echo one; echo two", lambda *a: lines.append(a), pool)
    pidfile = tmp_path / "remote.pid"
    long = Stream(host, "log", "long", f"echo $$ > {pidfile}; echo started; exec sleep 600",
                  lambda *a: lines.append(a), pool)
    local = Stream(WatchHost("@local", True, {}), "log", "local",
                   "while true; do echo tick; sleep 0.2; done", lambda *a: lines.append(a), pool)
    streams = [short, long, local]
    try:
        for stream in streams:
            stream.start()
        assert wait(lambda: short.opened >= 2 and pidfile.exists())
        assert ("ml-ssh", "log", "short", "one") in lines and ("ml-ssh", "log", "long", "started") in lines
        first_pid = int(pidfile.read_text())

        # the SSH connection drops: reconnected with backoff, the old session's command ends
        client = pool._clients["ml-ssh"]
        client.get_transport().close()  # type: ignore[attr-defined]
        pidfile.unlink()
        assert wait(lambda: pidfile.exists() and int(pidfile.read_text()) != first_pid, 30)
        assert any(k == "status" and c == "long" and "reopening" in t for _, k, c, t in lines)
        assert wait(lambda: not alive(first_pid), 10), "the dropped session's command lives on"
        ticks = sum(1 for _, _, c, _ in lines if c == "local")
        assert ticks > 5  # the other host's stream went on
        remote_pid = int(pidfile.read_text())
        assert alive(remote_pid)
    finally:
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(10)
        pool.close()
    assert not any(stream.is_alive() for stream in streams)
    assert wait(lambda: not alive(remote_pid), 10), "stopping left the remote command running"
