"""The per-host placement of the watcher on a machine-like host (tests/machines.py: systemd as PID 1,
its own sshd, and, once onboarded with `engine: local`, its own dockerd and stack):

1. deploys/install_watcher.py over SSH: `--dry` first (it says what it would install and installs
   nothing), then the install (the project and its venv offline from the uploaded bundles, the
   host's own @local inventory, the secret copies, the systemd service), then a second run that
   changes nothing. The service runs the watcher from the host's venv.
2. The host's sshd is stopped (the controller can no longer reach it), and only then the incident
   starts on the host's own stack (its MLflow was stopped before the install): 4 workers in 420 MiB,
   and gunicorn's SIGKILL lines on MLflow's stdout (as tests/integration/test_watch.py writes them). The host heals itself: the watcher's audit on the host (read with `docker
   exec`) has fix_mlflow's finding and its verified action, and MLflow serves with 1 GiB.
3. sshd back, deploys/collect_watch_audit.py brings the host's audit to the controller (a second
   run fetches nothing); then `watcher: {present: false}`: the service stopped and removed, the install gone, no
   watcher, stream or pyinfra process left on the host; a second run changes nothing.

One host, shared by the module's tests in order; a finalizer removes it and its volume.
"""
from __future__ import annotations

import json
import random
import time

import docker.errors
import pytest

from tasks.lab.images import image_refs
from tests.fleet import _keygen
from tests.integration.test_watch import BURST
from tests.labkit import REPO, run_pyinfra
from tests.machines import Machines, MachineStack

pytestmark = pytest.mark.lab

ONBOARD = REPO / "deploys" / "onboard_host.py"
INSTALL = REPO / "deploys" / "install_watcher.py"
COLLECT = REPO / "deploys" / "collect_watch_audit.py"
AUDIT = "/var/log/quant-remediation/quant-watch.jsonl"
SERVICE = "quant-watch.service"


@pytest.fixture(scope="module")
def machine(request, tmp_path_factory):
    machines = Machines(f"qtwp{random.randrange(16 ** 4):04x}", tmp_path_factory.mktemp("placement"), 1,
                        port_start=25500)
    request.addfinalizer(machines.remove)
    machines.start()
    host = machines.hosts[0]
    stack = MachineStack(host, machines.folder / f"{host.name}-lab", port_base=15700)
    key = machines.folder / "deploy_ed25519"
    _keygen(key, "deploy@ops")
    onboard = machines.write_inventory(machines.folder / "onboard.py", {host.name: {
        **host.pyinfra_host_data(), "onboard": {"engine": "local", "authorized_keys": [{"file": f"{key}.pub"}]}}})
    onboarded = run_pyinfra(onboard, ONBOARD, timeout=900)
    assert onboarded.returncode == 0, onboarded.report()
    machines.load_images(["postgres", "mlflow2"])
    stack.up_core("incident")
    # The incident waits until the host is cut off: stopped now, started in the test.
    host.engine().containers.get(stack.name("mlflow")).stop(timeout=5)
    return {"machines": machines, "host": host, "stack": stack}


def inventory(machine, name: str, **watcher) -> object:
    host, stack = machine["host"], machine["stack"]
    data = {**host.pyinfra_host_data(), "mlflow": stack.mlflow_data(image_refs()["mlflow2"]), "watcher": watcher}
    return machine["machines"].write_inventory(machine["machines"].folder / f"{name}.py", {host.name: data})


def processes(host) -> list[str]:
    """The watcher's processes on the host: the program, its streams, a pyinfra child."""
    _, out = host.exec("ps -eo pid,args | grep -E 'tasks.watch|docker (logs|events)|pyinfra' | grep -v grep || true")
    return [line for line in out.splitlines() if line.strip()]


def records(host) -> list[dict]:
    """The host's audit lines, read through the engine. An exec the loaded engine fails (it once
    read as an empty audit, the failure's text not being JSON) is tried again, then reported."""
    for _ in range(5):
        code, out = host.exec(f"cat {AUDIT}")
        if code == 0:
            return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        time.sleep(2)
    raise AssertionError(f"reading {AUDIT} on {host.name} failed (exit {code}): {out[-300:]}")


@pytest.fixture(scope="module")
def installed(machine):
    host = machine["host"]
    target = inventory(machine, "install")
    dry = run_pyinfra(target, INSTALL, "--dry", timeout=600)
    after_dry = host.exec("test -e /opt/quant-remediation || test -e /etc/systemd/system/quant-watch.service")[0]
    started = time.monotonic()
    first = run_pyinfra(target, INSTALL, timeout=900)
    took = time.monotonic() - started
    second = run_pyinfra(target, INSTALL, timeout=600)
    return {"dry": dry, "after_dry": after_dry, "first": first, "second": second, "took": took}


def test_the_install_deploy_installs_offline_runs_the_service_and_is_idempotent(installed, machine):
    host = machine["host"]
    dry, first, second = installed["dry"], installed["first"], installed["second"]
    assert dry.returncode == 0, dry.report()
    assert "Install the watcher | Project in /opt/quant-remediation" in dry.stdout + dry.stderr, dry.report()
    assert installed["after_dry"] != 0, "--dry installed something"
    assert first.returncode == 0 and first.errors == 0, first.report()
    changed = first.changed_ops()
    for step in ("Project in /opt/quant-remediation", "Runtime /opt/quant-remediation/.venv (offline)",
                 f"Unit {SERVICE}", "Service quant-watch enabled and running"):
        assert f"Install the watcher | {step}" in changed, changed
    assert second.returncode == 0 and second.changed == 0, second.report()
    print(f"install: {installed['took']:.0f}s")

    assert host.systemctl("is-active", SERVICE)[1].strip() == "active"
    assert host.systemctl("is-enabled", SERVICE)[1].strip() == "enabled"
    _, pid = host.systemctl("show", "-p", "MainPID", "--value", SERVICE)
    _, cmdline = host.exec(f"tr '\\0' ' ' < /proc/{pid.strip()}/cmdline")
    assert cmdline.startswith("/opt/quant-remediation/.venv/bin/python -m tasks.watch.program "
                              "/etc/quant-watch/quant-watch.inventory.py"), cmdline
    # the host's own inventory: @local, no connection keys, secrets by reference to 0600 copies
    _, text = host.exec("cat /etc/quant-watch/quant-watch.inventory.py")
    assert "'@local'" in text and "ssh_" not in text and str(machine["machines"].folder) not in text
    _, modes = host.exec("stat -c '%a %U %n' /etc/quant-watch /etc/quant-watch/secrets/* "
                         "/etc/quant-watch/quant-watch.inventory.py")
    assert all(line.split()[:2] in (["600", "root"], ["700", "root"]) for line in modes.splitlines()), modes
    secret = machine["stack"].lab.secret_path("mlflow_db_password").read_text().strip()
    _, unit = host.exec(f"cat /etc/systemd/system/{SERVICE}")
    assert secret not in unit and secret not in text and "Restart=on-failure" in unit
    # the project's venv: installed from the uploaded wheels, nothing fetched (pip ran --no-index)
    code, out = host.exec("/opt/quant-remediation/.venv/bin/python -c 'import tasks.watch.program, pyinfra, "
                          "docker, pydantic; print(pyinfra.__file__)'")
    assert code == 0 and out.startswith("/opt/quant-remediation/.venv/lib/"), out
    deadline = time.monotonic() + 60
    while "watching 1 host(s)" not in host.exec(f"journalctl -u {SERVICE} --no-pager")[1]:
        assert time.monotonic() < deadline, host.exec(f"journalctl -u {SERVICE} --no-pager")[1][-3000:]
        time.sleep(1)

    # What it costs at idle: CPU ticks and resident memory of the processes in the service's
    # control group (found by their /proc/<pid>/cgroup), 10 s apart.
    def usage() -> tuple[int, int]:
        _, out = host.exec(f"for f in $(grep -l '/{SERVICE}' /proc/[0-9]*/cgroup); do d=${{f%/cgroup}}; "
                           "awk '{print $14 + $15}' $d/stat; awk '/^VmRSS:/ {print -$2}' $d/status; done")
        numbers = [int(v) for v in out.split() if v.lstrip("-").isdigit()]
        return sum(v for v in numbers if v >= 0), -sum(v for v in numbers if v < 0)

    ticks_before, _ = usage()
    time.sleep(10)
    ticks_after, rss_kib = usage()
    assert rss_kib > 0, "no process found in the service's control group"
    print(f"per-host watcher at idle: {(ticks_after - ticks_before) / 100 / 10 * 100:.1f}% of a CPU over 10 s, "
          f"{rss_kib / 1024:.0f} MiB resident (its processes)")


def test_with_its_ssh_cut_the_host_heals_the_incident_itself(installed, machine):
    host, stack = machine["host"], machine["stack"]
    assert installed["first"].returncode == 0, installed["first"].report()
    host.systemctl("stop", "ssh.service")
    with pytest.raises(Exception):  # noqa: B017 - refused, reset or timed out: any failure to connect
        code, _, _ = host.ssh_run("true", timeout=10)
        if code == 0:
            return
        raise RuntimeError(f"exit {code}")
    try:
        # The incident starts (4 workers in 420 MiB) with gunicorn's SIGKILL lines on its stdout.
        incident = host.engine().containers.get(stack.name("mlflow"))
        assert incident.status == "exited", incident.status
        incident.start()
        deadline, burst = time.monotonic() + 60, "not tried"
        while time.monotonic() < deadline:
            incident.reload()
            if incident.status == "exited":
                incident.start()
            elif incident.status == "running":
                try:
                    result = incident.exec_run(["sh", "-c", BURST])
                except docker.errors.APIError as exc:  # it died meanwhile (the incident): again
                    burst = str(exc)
                    time.sleep(0.5)
                    continue
                burst = f"exit {result.exit_code}: {result.output[-300:]!r}"
                if result.exit_code == 0:
                    break
            time.sleep(1)
        else:
            raise AssertionError(f"no burst into {incident.name}: {burst}")
        burst_at = time.monotonic()
        deadline, actions = time.monotonic() + 600, []
        while time.monotonic() < deadline:
            actions = [r for r in records(host) if r.get("kind") == "action" and r.get("remediation") == "fix_mlflow"]
            if actions:
                break
            time.sleep(2)
        journal = host.exec(f"journalctl -u {SERVICE} --no-pager")[1][-4000:]
        assert actions, journal
        (action,) = actions
        assert action["result"] == "verified" and action["host"] == "@local", (action, journal)
        print(f"healed with its SSH cut: fix_mlflow verified {time.monotonic() - burst_at:.0f}s after the burst "
              f"(the run itself {action['duration']:.0f}s)")
        findings = [r for r in records(host) if r.get("kind") == "finding" and r.get("remediation") == "fix_mlflow"]
        assert findings and findings[0]["result"] == "started", findings
        fixed = host.engine().containers.get(stack.name("mlflow"))
        assert fixed.attrs["HostConfig"]["Memory"] == 1 << 30 and fixed.status == "running"
        assert stack.mlflow_health() == "OK"
        assert host.systemctl("is-active", "ssh.service")[1].strip() != "active"  # still cut
    finally:
        host.systemctl("start", "ssh.service")


def test_the_hosts_audit_is_collected_to_the_controller(installed, machine):
    host = machine["host"]
    host.wait_booted()  # sshd answers again
    folder = machine["machines"].folder / "collected"
    target = inventory(machine, "collect", collect_dir=str(folder))
    first = run_pyinfra(target, COLLECT, timeout=300)
    assert first.returncode == 0 and first.changed == 1, first.report()
    second = run_pyinfra(target, COLLECT, timeout=300)
    assert second.returncode == 0 and second.changed == 0, second.report()
    collected = [json.loads(line) for line in (folder / f"{host.name}.jsonl").read_text().splitlines()]
    assert collected == records(host)
    assert any(r.get("kind") == "action" and r.get("result") == "verified" for r in collected), collected


def test_removing_it_leaves_nothing_running(installed, machine):
    host = machine["host"]
    host.wait_booted()  # sshd answers again
    target = inventory(machine, "remove", present=False)
    first = run_pyinfra(target, INSTALL, timeout=600)
    assert first.returncode == 0 and first.changed >= 3, first.report()
    second = run_pyinfra(target, INSTALL, timeout=600)
    assert second.returncode == 0 and second.changed == 0, second.report()
    assert host.systemctl("is-active", SERVICE)[1].strip() != "active"
    assert host.exec(f"test -e /etc/systemd/system/{SERVICE} || test -e /opt/quant-remediation "
                     "|| test -e /etc/quant-watch")[0] != 0
    assert processes(host) == []
    assert records(host), "the audit stays"
