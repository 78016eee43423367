"""A fleet of five fresh hosts over real SSH: onboarded, then deploys/fix_mlflow.py across all of them
in parallel with one host whose MLflow image is missing and one whose sshd stops mid-run: the three
healthy hosts are fixed and verified, the two are named with their reasons, the exit code is
non-zero; a run while the two are still broken changes nothing on the three; after repairing the
two (the image pulled, the host back), a rerun converges them with no change on the three.

The hosts are tests/fleet.py `sshhost` containers with the lab engine's socket mounted: none can
run dockerd itself, so each host's `docker` CLI (installed by onboarding) drives this machine's
engine. Each host manages its *own* MLflow container on that engine, `<prefix>-mlflow-<host>`,
all on one lab's network, sharing its PostgreSQL (backend store) and MinIO (artifacts). The
MLflow deploy logs in as the onboarded `deploy` user with the deploy key (docker group, no sudo).

The missing image: the first host's settings name an image tag the engine does not have
("pulling" it is `docker tag` of the lab's image). With `--parallel 2` pyinfra runs the operation
on the hosts in batches of two, in an order of its own (not the inventory's): a batch creates its
containers within a second or so, then verifies them for tens of seconds before the next batch
starts. Once the first batch's containers have appeared and no other has for a few seconds, a
healthy host still without a container is in a later batch, waiting: that host is stopped. (Polling
for "exactly one host left" failed when the batch order put the refusing host last: the four healthy
hosts then created theirs together.)

Order is the file's order. A finalizer takes the lab and every host container down.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import docker
import docker.errors
import pytest

from tests.fleet import Fleet, _keygen
from tests.labkit import REPO, ROLES, SERVICES, containers_by_name, run_pyinfra, shared_lab

pytestmark = pytest.mark.lab

ONBOARD = REPO / "deploys" / "onboard_host.py"
FIX = REPO / "deploys" / "fix_mlflow.py"
COUNT = 5
PARALLEL = "2"  # see the module docstring: a later batch must be left waiting
SETTLED = 4.0  # seconds with no new container: the first batch has created all of its own



@pytest.fixture(scope="module")
def lab(request):
    # Its MLflow is stopped and the fleet's run beside it: nothing left for another module.
    handle = shared_lab(request, "healthy", needs={ROLES, SERVICES})
    # The lab's own MLflow is not part of this test; stopping it leaves the CPU to the fleet's.
    handle.container("mlflow").stop(timeout=10)
    return handle


@pytest.fixture(scope="module")
def fleet(request, lab, tmp_path_factory):
    # The lab's prefix labels the hosts too: `scripts/lab down` would remove them as well.
    fleet = Fleet(lab.prefix, tmp_path_factory.mktemp("fleet"), COUNT, docker_socket=True, login="root")
    request.addfinalizer(fleet.remove)
    return fleet.start()


@pytest.fixture(scope="module")
def deploy_key(fleet):
    key = fleet.folder / "deploy_ed25519"
    _keygen(key, "deploy@ops")
    return key


def _mlflow_name(lab, host) -> str:
    return f"{lab.prefix}-mlflow-{host.name.rsplit('-', 1)[1]}"


def _missing_image(lab) -> str:
    """The image the first host's settings name: not on the engine until "pulled" (tagged)."""
    return f"quantlab/{lab.prefix}-mlflow-missing:2.9.2"


@pytest.fixture(scope="module")
def image_missing_host(lab, fleet, request):
    client = docker.from_env()

    def untag():
        try:
            client.images.remove(_missing_image(lab), noprune=True)
        except docker.errors.ImageNotFound:
            pass

    untag()
    request.addfinalizer(untag)
    return fleet.hosts[0]


def _host_data(lab, fleet, deploy_key, host, as_deploy: bool) -> dict:
    from tasks.lab.inventory import lab_host_data
    data = lab_host_data(lab.prefix)
    if as_deploy and host is fleet.hosts[0]:
        data["mlflow"]["image"] = _missing_image(lab)
    data["mlflow"].update({
        "container_name": _mlflow_name(lab, host),
        "ports": [],  # checked from inside the container; nothing published per host
        "compose_file": "/opt/quant-stack/docker-compose.yml",  # the one onboarding rendered
        # Three MLflow starts at once beside the rest of the suite: the default 90 s budget was
        # seen spent (the image's health probes timing out) with the load average near 20.
        "start_timeout": 240,
    })
    data["onboard"] = {"engine": "socket", "authorized_keys": [{"file": str(deploy_key) + ".pub"}]}
    if as_deploy:
        data.update(host.pyinfra_host_data(user="deploy", key=deploy_key))
    else:
        data.update(host.pyinfra_host_data())
    # Keep only what these deploys read (no stack/db data pointing at the lab host).
    return {key: data[key] for key in data if key.startswith(("ssh_", "_")) or key in ("mlflow", "onboard")}


@pytest.fixture(scope="module")
def inventories(lab, fleet, deploy_key):
    root = {h.name: _host_data(lab, fleet, deploy_key, h, as_deploy=False) for h in fleet.hosts}
    deploy = {h.name: _host_data(lab, fleet, deploy_key, h, as_deploy=True) for h in fleet.hosts}
    return {"root": fleet.write_inventory(fleet.folder / "onboard_inventory.py", root),
            "deploy": fleet.write_inventory(fleet.folder / "fleet_inventory.py", deploy)}


@pytest.fixture(scope="module")
def onboarded(inventories):
    run = run_pyinfra(inventories["root"], ONBOARD, "--parallel", str(COUNT), timeout=900)
    assert run.returncode == 0 and run.errors == 0, run.report()
    return run


@pytest.fixture(scope="module")
def stopped_mid_run(onboarded, inventories, fleet, lab, image_missing_host):
    """fix_mlflow across the fleet with --parallel 2: the first host refuses (its image is
    missing); once the first batch has created its MLflow containers (the run is executing), a
    healthy host of a later batch, still waiting for its turn, is stopped."""
    names = {host.name: _mlflow_name(lab, host) for host in fleet.hosts if host is not image_missing_host}
    command = [str(REPO / ".venv" / "bin" / "pyinfra"), "-y", "--json", "--group-data",
               str(REPO / "inventories" / "group_data"), "--parallel", PARALLEL,
               str(inventories["deploy"]), str(FIX)]
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = docker.from_env()
    stopped_at, victim = None, None
    created: set[str] = set()
    changed_at = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - started < 600:
            on_engine = containers_by_name(client)
            now = {host for host, container in names.items() if container in on_engine}
            if now != created:
                created, changed_at = now, time.monotonic()
            elif created and time.monotonic() - changed_at >= SETTLED:
                waiting = [host for host in fleet.hosts if host.name in names and host.name not in created]
                if waiting:
                    victim = waiting[-1]
                    victim.stop(timeout=0)
                    stopped_at = time.monotonic() - started
                break
            time.sleep(0.3)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Kept for a reader: what pyinfra printed about the stopped host.
    (fleet.folder / "stopped_mid_run.log").write_text(f"victim {victim and victim.name}\n{stderr}")
    start = stdout.find("{")
    results = json.loads(stdout[start:]) if start >= 0 else None
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "victim": victim,
            "stopped_at": stopped_at, "results": results}


def _changed_hosts(results: dict | None) -> dict[str, set[str]]:
    """Per host name: the operations that changed it, that failed on it, that left it unchanged."""
    out: dict[str, set[str]] = {}
    for op in (results or {}).get("results", {}).get("operations", []):
        for kind in ("success", "error", "no_change"):
            for name in op[kind]:
                out.setdefault(f"{name}:{kind}", set()).add(op["name"])
    return out


def _health(lab, name) -> str:
    container = docker.from_env().containers.get(name)
    code, out = container.exec_run(["python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                                    "'http://127.0.0.1:5000/health', timeout=5).read().decode())"])
    return out.decode().strip() if code == 0 else f"exit {code}: {out.decode()[-200:]}"


def test_onboarding_the_fleet_in_parallel(onboarded, fleet):
    output = onboarded.stdout + onboarded.stderr
    for host in fleet.hosts:
        assert f"[{host.name}] verify: " in output, onboarded.report()
    assert "onboarding verification failed" not in output


def test_two_hosts_fail_alone_named_and_the_three_are_fixed(stopped_mid_run, lab, fleet, image_missing_host):
    run, victim = stopped_mid_run, stopped_mid_run["victim"]
    report = f"rc={run['returncode']} stopped at {run['stopped_at']}\n{run['stdout'][-5000:]}\n{run['stderr'][-6000:]}"
    assert run["stopped_at"] is not None, report
    assert run["returncode"] != 0, report
    output = run["stdout"] + run["stderr"]
    # Each of the two is named, with its reason.
    missing = image_missing_host.name
    assert re.search(rf"\[{missing}\].*image {re.escape(_missing_image(lab))} is not on this host", output), report
    assert f"[{victim.name}] Error" in output or f"[{victim.name}] Could not" in output, report
    assert run["results"] is not None, report
    assert set(run["results"]["results"]["failed_hosts"]) == {missing, victim.name}, report
    client = docker.from_env()
    for host in (image_missing_host, victim):
        with pytest.raises(docker.errors.NotFound):  # neither got to start an MLflow
            client.containers.get(_mlflow_name(lab, host))
    # The three others were fixed and verified, and went on to the deploy's next operation.
    by_host = _changed_hosts(run["results"])
    for host in fleet.hosts:
        if host in (image_missing_host, victim):
            continue
        assert f"[{host.name}] verification:" in output, report
        assert _health(lab, _mlflow_name(lab, host)) == "OK", report
        assert any("MLflow container" in op for op in by_host.get(f"{host.name}:success", ())), report
        assert any("Compose service" in op for op in
                   by_host.get(f"{host.name}:success", set()) | by_host.get(f"{host.name}:no_change", set())), report
        assert not by_host.get(f"{host.name}:error"), report


def test_the_others_run_every_operation_after_a_host_drops(stopped_mid_run):
    """A host lost mid-run fails alone: the others go on to the deploy's next operation."""
    assert "Starting operation: Fix the MLflow tracking server | Compose service" in stopped_mid_run["stderr"]
    assert "docker CLI is not installed" not in stopped_mid_run["stderr"]


def _victim(stopped_mid_run):
    """The host stopped mid-run; the tests after the run need it."""
    assert stopped_mid_run["victim"] is not None, "the mid-run stop never happened (see the test above)"
    return stopped_mid_run["victim"]


def _healthy(fleet, stopped_mid_run, image_missing_host):
    return [h for h in fleet.hosts if h not in (image_missing_host, stopped_mid_run["victim"])]


def test_while_the_two_are_broken_the_three_change_nothing(stopped_mid_run, inventories, fleet, lab,
                                                           image_missing_host):
    """The stopped host is still down (connecting fails), the image still missing: both named
    again; the three healthy hosts run every operation with no change."""
    victim = _victim(stopped_mid_run)
    run = run_pyinfra(inventories["deploy"], FIX, "--parallel", PARALLEL)
    output = run.stdout + run.stderr
    assert run.returncode != 0, run.report()
    assert f"[{victim.name}]" in output and "Could not connect" in output, run.report()
    assert f"image {_missing_image(lab)} is not on this host" in output, run.report()
    assert run.results is not None and run.changed == 0, run.report()
    by_host = _changed_hosts(run.results)
    for host in _healthy(fleet, stopped_mid_run, image_missing_host):
        assert f"[{host.name}] Connected" in output, run.report()
        assert not by_host.get(f"{host.name}:error") and not by_host.get(f"{host.name}:success"), run.report()
        assert len(by_host.get(f"{host.name}:no_change", ())) == 2, run.report()


def test_a_rerun_after_repairing_the_two_converges_with_no_change_on_the_three(
        stopped_mid_run, inventories, lab, fleet, image_missing_host):
    victim = _victim(stopped_mid_run)
    victim.start()
    client = docker.from_env()
    repo, tag = _missing_image(lab).rsplit(":", 1)
    client.images.get(lab.state["images"]["mlflow2"]).tag(repo, tag)  # "docker pull"
    run = run_pyinfra(inventories["deploy"], FIX, "--parallel", PARALLEL)
    assert run.returncode == 0 and run.errors == 0, run.report()
    by_host = _changed_hosts(run.results)
    for host in (image_missing_host, victim):
        assert any("MLflow container" in op for op in by_host.get(f"{host.name}:success", ())), run.report()
        assert _health(lab, _mlflow_name(lab, host)) == "OK", run.report()
    for host in _healthy(fleet, stopped_mid_run, image_missing_host):
        assert not by_host.get(f"{host.name}:success"), run.report()
        assert len(by_host.get(f"{host.name}:no_change", ())) == 2, run.report()
    again = run_pyinfra(inventories["deploy"], FIX, "--parallel", PARALLEL)
    assert again.returncode == 0 and again.errors == 0 and again.changed == 0, again.report()


def test_every_host_has_its_own_fixed_mlflow(stopped_mid_run, lab, fleet):
    client = docker.from_env()
    for host in fleet.hosts:
        attrs = client.containers.get(_mlflow_name(lab, host)).attrs
        assert attrs["HostConfig"]["Memory"] == 1024 ** 3
        command = attrs["Config"]["Cmd"]
        assert command[command.index("--workers") + 1] == "2"
        assert attrs["State"]["Running"] and not attrs["State"]["OOMKilled"]
        assert attrs["Config"]["Labels"]["quantlab.prefix"] == lab.prefix
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(_mlflow_name(lab, host) + "-previous")


def test_onboarding_again_changes_nothing(stopped_mid_run, inventories):
    """fix_mlflow kept the compose file onboarding rendered as it was: the deploys agree."""
    run = run_pyinfra(inventories["root"], ONBOARD, "--parallel", str(COUNT))
    assert run.returncode == 0 and run.errors == 0 and run.changed == 0, run.report()
