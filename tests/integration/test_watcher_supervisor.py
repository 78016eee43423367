"""The watcher's per-host install where systemd is not PID 1: a fresh Debian host reached over real
SSH (tests/fleet.py: sshd is PID 1, no init system, no Docker), installed by
deploys/install_watcher.py with its supervisor loop.

- The install (the project and its venv offline from the uploaded bundles, as on a systemd host)
  starts the supervisor in a session of its own, which runs the watcher; a second run changes
  nothing.
- The watcher killed (SIGKILL): the supervisor starts it again (`restart_sec` later).
- `watcher: {present: false}`: the supervisor and the watcher stopped and waited for, the install
  removed; nothing of it left running; a second run changes nothing.
"""
from __future__ import annotations

import random
import time

import pytest

from tests.fleet import Fleet
from tests.labkit import REPO, run_pyinfra

pytestmark = pytest.mark.lab

INSTALL = REPO / "deploys" / "install_watcher.py"
SCRIPT = "/opt/quant-remediation/supervise-quant-watch.sh"


@pytest.fixture(scope="module")
def host(request, tmp_path_factory):
    fleet = Fleet(f"qtws{random.randrange(16 ** 4):04x}", tmp_path_factory.mktemp("supervisor"), 1,
                  port_start=25700)
    request.addfinalizer(fleet.remove)
    fleet.start()
    return fleet.hosts[0], fleet


def inventory(host, fleet, name: str, **watcher):
    data = {**host.pyinfra_host_data(), "mlflow": {"container_name": "qtws-mlflow"},
            "watcher": {"restart_sec": 2, **watcher}}
    path = fleet.folder / f"{name}.py"
    path.write_text(f"hosts = [({host.name!r}, {data!r})]\n")
    return path


def pids(host, marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (the image has no procps: /proc read)."""
    half = len(marker) // 2  # given in two parts: this command's own line must not match
    _, out = host.exec(f"a='{marker[:half]}'; b='{marker[half:]}'; for f in /proc/[0-9]*/cmdline; do "
                       "if tr '\\000' ' ' <$f 2>/dev/null | grep -qF -- \"$a$b\"; then d=${f%/cmdline}; "
                       "echo ${d#/proc/}; fi; done")
    return sorted(int(p) for p in out.split() if p.isdigit())


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_supervisor_runs_restarts_and_stops_the_watcher(host):
    host, fleet = host
    target = inventory(host, fleet, "install")
    first = run_pyinfra(target, INSTALL, timeout=900)
    assert first.returncode == 0 and first.errors == 0, first.report()
    output = first.stdout + first.stderr
    assert "systemd is not PID 1 here: supervised by " + SCRIPT in output, first.report()
    assert "Install the watcher | Supervised watcher quant-watch running" in first.changed_ops()
    second = run_pyinfra(target, INSTALL, timeout=600)
    assert second.returncode == 0 and second.changed == 0, second.report()

    _, pid_text = host.exec("cat /run/quant-watch.pid")
    supervisor = int(pid_text.strip())
    assert pids(host, SCRIPT) == [supervisor]
    watcher = wait_for(lambda: pids(host, "tasks.watch.program"), 30, "the watcher")
    assert len(watcher) == 1, watcher
    _, parent = host.exec(f"awk '/^PPid:/ {{print $2}}' /proc/{watcher[0]}/status")
    assert int(parent) == supervisor
    _, session = host.exec(f"cut -d' ' -f6 /proc/{supervisor}/stat")
    assert int(session) == supervisor  # its own session: not a child of the SSH login that started it

    host.exec(f"kill -KILL {watcher[0]}")
    again = wait_for(lambda: [p for p in pids(host, "tasks.watch.program") if p != watcher[0]], 30,
                     "the supervisor to start the watcher again")
    assert pids(host, SCRIPT) == [supervisor]
    _, log = host.exec("cat /var/log/quant-remediation/quant-watch.log")
    assert "watcher exited 137: restarting in 2 s" in log and f"watcher started (pid {again[0]})" in log, log

    gone = inventory(host, fleet, "remove", present=False)
    removed = run_pyinfra(gone, INSTALL, timeout=600)
    assert removed.returncode == 0 and removed.changed >= 2, removed.report()
    assert pids(host, SCRIPT) == [] and pids(host, "tasks.watch.program") == []
    assert host.exec("test -e /opt/quant-remediation || test -e /etc/quant-watch || test -e /run/quant-watch.pid")[0] != 0
    last = run_pyinfra(gone, INSTALL, timeout=600)
    assert last.returncode == 0 and last.changed == 0, last.report()
