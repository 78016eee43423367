"""Hosts that are machines in miniature (tests/machines.py): two fresh Debian hosts with systemd as
PID 1, their own sshd and cron, reached over real SSH on 127.0.0.1 ports, shared by this module's
tests in file order.

1. deploys/onboard_host.py with `engine: local` installs Debian's docker.io on each host and starts
   its own dockerd under systemd (the image holds no Docker); a second run changes nothing.
2. Each host then runs its own engine and stack: the lab's PostgreSQL and MLflow images loaded into
   each engine (`docker save` once, `docker load` per host), the lab's stack code run against it,
   MLflow as in the lab's incident (4 workers in 420 MiB).
3. deploys/fix_mlflow.py across the fleet as the onboarded `deploy` user: each host's MLflow fixed
   and verified on its own engine; a second run changes nothing.
4. A host rebooted (`docker restart` of its container: systemd shuts down, dockerd stops its
   containers) while fix_mlflow verifies a recreated MLflow: the run fails, the host boots, its
   dockerd brings back what was running; the next run converges (the new container verified and
   kept, the previous copy removed), the one after changes nothing.
5. deploys/schedule_cleanup.py on a host (the checkout mounted read-only, as on an ops host): a
   systemd timer and a cron entry, each firing for real and running deploys/cleanup_database.py
   against the host's own PostgreSQL; each job's log shows its run; then both removed.

A finalizer removes the host containers and their volumes (`scripts/lab --prefix <prefix> down`
would too).
"""
from __future__ import annotations

import random
import re
import subprocess
import time

import pytest

from tasks.lab.images import image_refs
from tasks.lab.stack import SIGKILL_LINE
from tests.fleet import _keygen
from tests.labkit import PYINFRA, REPO, run_pyinfra
from tests.machines import Machines, MachineStack

pytestmark = pytest.mark.lab

ONBOARD = REPO / "deploys" / "onboard_host.py"
FIX = REPO / "deploys" / "fix_mlflow.py"
SCHEDULE = REPO / "deploys" / "schedule_cleanup.py"
COUNT = 2
TEST_USERS = "(username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%')"


@pytest.fixture(scope="module")
def machines(request, tmp_path_factory):
    machines = Machines(f"qtmh{random.randrange(16 ** 4):04x}", tmp_path_factory.mktemp("machines"), COUNT,
                        project=True)
    request.addfinalizer(machines.remove)
    return machines.start()


@pytest.fixture(scope="module")
def deploy_key(machines):
    key = machines.folder / "deploy_ed25519"
    _keygen(key, "deploy@ops")
    return key


@pytest.fixture(scope="module")
def stacks(machines):
    """Each host's stack, not started yet (its names and secrets are known before)."""
    return {host.name: MachineStack(host, machines.folder / f"{host.name}-lab") for host in machines.hosts}


def _inventory(machines, stacks, deploy_key, name: str, as_deploy: bool, **mlflow) -> object:
    data = {}
    image = image_refs()["mlflow2"]
    for host in machines.hosts:
        stack = stacks[host.name]
        ssh = host.pyinfra_host_data(user="deploy", key=deploy_key) if as_deploy else host.pyinfra_host_data()
        data[host.name] = {
            **ssh,
            "mlflow": stack.mlflow_data(image, **mlflow.get(host.name, {})),
            "onboard": {"engine": "local", "authorized_keys": [{"file": f"{deploy_key}.pub"}]},
        }
    return machines.write_inventory(machines.folder / f"{name}.py", data)


@pytest.fixture(scope="module")
def onboarded(machines, stacks, deploy_key):
    before = {host.name: host.exec("command -v dockerd docker; systemctl is-active docker")[1].strip()
              for host in machines.hosts}
    inventory = _inventory(machines, stacks, deploy_key, "onboard", as_deploy=False)
    first = run_pyinfra(inventory, ONBOARD, "--parallel", str(COUNT), timeout=900)
    second = run_pyinfra(inventory, ONBOARD, "--parallel", str(COUNT), timeout=600)
    return {"before": before, "first": first, "second": second}


def test_onboarding_installs_and_starts_dockerd_under_systemd(onboarded, machines, deploy_key):
    first, second = onboarded["first"], onboarded["second"]
    assert first.returncode == 0 and first.errors == 0, first.report()
    # docker.io's own postinst starts dockerd under systemd; onboarding then restarts it for the
    # daemon.json it wrote (the "enabled and running" step finds it so, at execution).
    changed = first.changed_ops()
    for step in ("Docker engine and CLI from Debian's packages", "Docker daemon.json: container log rotation",
                 "Restart dockerd for the new daemon.json"):
        assert f"Onboard the host | {step}" in changed, changed
    assert second.returncode == 0 and second.changed == 0, second.report()
    output = first.stdout + first.stderr
    for host in machines.hosts:
        # A fresh host: no Docker at all before onboarding.
        assert "dockerd" not in onboarded["before"][host.name], onboarded["before"]
        assert f"[{host.name}] verify: " in output, first.report()
        assert host.systemctl("is-active", "docker.service")[1].strip() == "active"
        assert host.systemctl("is-enabled", "docker.service")[1].strip() == "enabled"
        _, pid = host.systemctl("show", "-p", "MainPID", "--value", "docker.service")
        assert host.exec(f"cat /proc/{pid.strip()}/comm")[1].strip() == "dockerd"
        assert "docker.service" in host.exec(f"cat /proc/{pid.strip()}/cgroup")[1]
        info = host.engine().info()
        assert info["Name"] == host.name and info["LoggingDriver"] == "json-file"
        assert info["Driver"] == "overlay2"
        # The deploy user reaches its own host's engine over SSH (docker group, no sudo).
        code, out, err = host.ssh_run("docker info --format '{{.Name}}'", user="deploy", key=deploy_key)
        assert code == 0 and out.strip() == host.name, err


@pytest.fixture(scope="module")
def stacks_up(onboarded, machines, stacks):
    assert onboarded["first"].returncode == 0, onboarded["first"].report()
    started = time.monotonic()
    refs = machines.load_images(["postgres", "mlflow2"])
    loaded = time.monotonic() - started
    for stack in stacks.values():
        stack.up_core("incident")
    print(f"images loaded in {loaded:.0f}s, stacks up in {time.monotonic() - started - loaded:.0f}s")
    return refs


def test_each_host_runs_its_own_engine_and_stack(stacks_up, machines, stacks):
    import docker

    ids = set()
    for host in machines.hosts:
        engine = host.engine()
        ids.add(engine.info()["ID"])
        names = {c.name for c in engine.containers.list(all=True)}
        assert names == {stacks[host.name].name("postgres"), stacks[host.name].name("mlflow")}, names
        assert {i for image in engine.images.list() for i in image.tags} == set(stacks_up.values())
        # Not on this machine's engine: the host's own.
        assert not docker.from_env().containers.list(all=True, filters={"name": stacks[host.name].name("mlflow")})
        assert stacks[host.name].psql("SELECT count(*) FROM users", database="quant") == "40"
    assert len(ids) == COUNT


@pytest.fixture(scope="module")
def fixed(stacks_up, machines, stacks, deploy_key):
    inventory = _inventory(machines, stacks, deploy_key, "fleet", as_deploy=True)
    first = run_pyinfra(inventory, FIX, "--parallel", str(COUNT), timeout=900)
    second = run_pyinfra(inventory, FIX, "--parallel", str(COUNT), timeout=600)
    return {"first": first, "second": second}


def _mlflow_attrs(host, stack) -> dict:
    return host.engine().containers.get(stack.name("mlflow")).attrs


def _workers(attrs: dict) -> str:
    command = attrs["Config"]["Cmd"]
    return command[command.index("--workers") + 1]


def test_fix_mlflow_across_the_fleet_over_ssh(fixed, machines, stacks):
    first, second = fixed["first"], fixed["second"]
    assert first.returncode == 0 and first.errors == 0, first.report()
    assert second.returncode == 0 and second.changed == 0, second.report()
    output = first.stdout + first.stderr
    for host in machines.hosts:
        stack = stacks[host.name]
        assert f"[{host.name}] verification:" in output, first.report()
        attrs = _mlflow_attrs(host, stack)
        assert attrs["HostConfig"]["Memory"] == 1024 ** 3 and _workers(attrs) == "2"
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert attrs["State"]["Running"] and not attrs["State"]["OOMKilled"]
        assert SIGKILL_LINE not in host.engine().containers.get(stack.name("mlflow")).logs().decode(errors="replace")
        assert stack.mlflow_health() == "OK"
        assert not host.engine().containers.list(all=True, filters={"name": stack.name("mlflow") + "-previous"})


def test_a_host_rebooted_mid_recreate_converges_on_the_next_run(fixed, machines, stacks, deploy_key):
    host = machines.hosts[0]
    stack = stacks[host.name]
    name = stack.name("mlflow")
    inventory = _inventory(machines, stacks, deploy_key, "reboot", as_deploy=True,
                           **{host.name: {"workers": 3}})
    old_id = host.engine().containers.get(name).id
    command = [str(PYINFRA), "-y", "--json", "--group-data", str(REPO / "inventories" / "group_data"),
               "--limit", host.name, str(inventory), str(FIX)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rebooted_at, seen = None, "nothing yet"
    try:
        engine, started = host.engine(), time.monotonic()
        while proc.poll() is None and time.monotonic() - started < 300:
            current = engine.containers.list(all=True, sparse=True, filters={"name": f"^/{name}$"})
            previous = engine.containers.list(all=True, sparse=True, filters={"name": f"^/{name}-previous$"})
            seen = f"{name}: {[c.short_id for c in current]}, previous: {[c.status for c in previous]}"
            if previous and current and current[0].id != old_id:
                host.reboot()  # the new container exists, the old one is set aside: verifying
                rebooted_at = time.monotonic() - started
                break
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = f"rebooted at {rebooted_at} (last seen: {seen})\nrc={proc.returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    assert rebooted_at is not None, report
    assert proc.returncode != 0, report

    # After the reboot: dockerd is back under systemd with what was running; the old copy stopped.
    engine = host.engine()
    assert host.systemctl("is-active", "docker.service")[1].strip() == "active"
    assert engine.containers.get(stack.name("postgres")).status == "running"
    leftover = engine.containers.list(all=True, sparse=True, filters={"name": f"^/{name}-previous$"})
    assert leftover, "the reboot came too late: no previous copy left\n" + report

    again = run_pyinfra(inventory, FIX, "--limit", host.name, timeout=600)
    assert again.returncode == 0 and again.errors == 0 and again.changed >= 1, again.report()
    output = again.stdout + again.stderr
    # It read the unfinished recreate from the host (names), said so, and finished it.
    assert f"found {name}" in output and f"{name}-previous (" in output, again.report()
    assert f"[{host.name}] verification:" in output, again.report()
    last = run_pyinfra(inventory, FIX, "--parallel", str(COUNT), timeout=600)
    assert last.returncode == 0 and last.changed == 0, last.report()
    attrs = _mlflow_attrs(host, stack)
    assert _workers(attrs) == "3" and attrs["State"]["Running"]
    assert stack.mlflow_health() == "OK"
    assert not engine.containers.list(all=True, sparse=True, filters={"name": f"^/{name}-previous$"})


@pytest.fixture(scope="module")
def schedule(fixed, machines, stacks):
    """The cleanup's inventory on the ops host (the host itself, @local: its own PostgreSQL by
    `docker exec`), three leftover test users to delete, and the schedule's inventories."""
    host = machines.hosts[-1]
    stack = stacks[host.name]
    cleanup_inventory = "/etc/quant-ops/cleanup_inventory.py"
    host.put_files({cleanup_inventory: (
        f"hosts = [('@local', {{'postgres': {{'container': {stack.name('postgres')!r}}}}})]\n".encode(), 0o600)})
    stack.psql("INSERT INTO users (username, email) SELECT 'test_user_' || g, 'x@test.example' "
               "FROM generate_series(1, 3) g", database="quant")

    def inventory(name: str, **settings) -> object:
        block = {"name": name, "project_dir": str(REPO), "inventory": cleanup_inventory, **settings}
        return machines.write_inventory(machines.folder / f"{name}.py",
                                        {host.name: {**host.pyinfra_host_data(), "cleanup_schedule": block}})

    return {
        "host": host,
        "stack": stack,
        "timer": inventory("quant-db-cleanup-timer", scheduler="systemd", on_calendar="*-*-* *:*:00"),
        "cron": inventory("quant-db-cleanup-cron", scheduler="cron", minute="*", hour="*"),
        "inventory": inventory,
    }


def _runs(host, name: str) -> list[tuple[str, str]]:
    """(start line, exit status) of each finished run in the job's log."""
    _, log = host.exec(f"cat /var/log/quant-remediation/{name}.log 2>/dev/null")
    runs, start = [], None
    for line in log.splitlines():
        if f" {name}: start: " in line:
            start = line
        elif (match := re.search(rf" {re.escape(name)}: exit (\d+)$", line)) and start:
            runs.append((start, match.group(1)))
            start = None
    return runs


def test_the_scheduled_cleanup_fires_from_its_systemd_timer_and_from_cron(schedule):
    host, stack = schedule["host"], schedule["stack"]
    for kind in ("timer", "cron"):
        first = run_pyinfra(schedule[kind], SCHEDULE)
        assert first.returncode == 0 and first.changed >= 2, first.report()
        second = run_pyinfra(schedule[kind], SCHEDULE)
        assert second.returncode == 0 and second.changed == 0, second.report()
    timer, cron = "quant-db-cleanup-timer", "quant-db-cleanup-cron"
    assert host.systemctl("is-active", f"{timer}.timer")[1].strip() == "active"
    assert host.exec(f"test -e /etc/systemd/system/{cron}.timer")[0] != 0  # cron only
    code, crontab = host.exec("crontab -l")
    assert code == 0 and f"# pyinfra-name={cron}" in crontab and timer not in crontab, crontab

    # Every minute each (the timer within its RandomizedDelaySec): wait for a run of each that
    # ended with exit 0 (a run that met the other's database lock says exit 75 and comes again).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = {n: [r for r in _runs(host, n) if r[1] == "0"] for n in (timer, cron)}
        if all(done.values()):
            break
        time.sleep(5)
    _, journal = host.exec(f"journalctl -u {timer}.service --no-pager")
    assert all(done.values()), f"{ {n: _runs(host, n) for n in (timer, cron)} }\n{journal[-3000:]}"
    assert "cleanup_database.py" in done[timer][0][0] and "cleanup_database.py" in done[cron][0][0]
    # The timer's run went through systemd (its service ran and succeeded), the cron one did not.
    _, result = host.systemctl("show", "-p", "Result", "--value", f"{timer}.service")
    assert result.strip() == "success" and f"{timer}.service" in journal
    assert stack.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}", database="quant") == "0"
    assert stack.psql("SELECT count(*) FROM users", database="quant") == "40"

    for kind in ("timer", "cron"):
        gone = run_pyinfra(schedule["inventory"](f"quant-db-cleanup-{kind}", present=False), SCHEDULE)
        assert gone.returncode == 0 and gone.changed >= 2, gone.report()
    assert host.exec(f"systemctl list-timers --all --no-legend | grep -c {timer}")[1].strip() == "0"
    assert "pyinfra-name=" not in host.exec("crontab -l 2>/dev/null")[1]
