"""The compose-style lab for real: `scripts/lab up --style compose` on a private prefix, with the
host's compose tool. Order is the file's: incident, then `up --scenario healthy` on the same lab
(its style read from the state), then `down`. A finalizer runs `down` whatever happens.
"""
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest

from tasks.core.mlflow_server import server_spec
from tasks.lab import images as lab_images
from tasks.lab.compose_stack import compose_container_name, healthy_mlflow_settings
from tasks.lab.inventory import lab_compose_host_data
from tasks.lab.stack import LAB_MLFLOW_VERSION, SERVICES, SIGKILL_LINE
from tests.labkit import REPO, containers_by_name, new_lab

pytestmark = pytest.mark.lab

MIB = 1024 * 1024
PROJECT = "com.docker.compose.project"


@pytest.fixture(scope="module")
def client():
    client = docker.from_env(timeout=120)
    if lab_images.missing_images(client):
        proc = subprocess.run([str(REPO / "scripts" / "lab"), "images"], capture_output=True, text=True,
                              timeout=3600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return client


@pytest.fixture(scope="module")
def lab(request, client):
    handle = new_lab("qtcmp", 20000)
    request.addfinalizer(handle.down)
    return handle


def _ids(client, prefix) -> dict[str, str]:
    return {c.name: c.id for c in client.containers.list(all=True, filters={"label": f"{PROJECT}={prefix}"})}


def _compose_in_folder(lab, *args) -> subprocess.CompletedProcess:
    """The user's plain `docker-compose ARGS` in the lab folder: no -p, no -f."""
    proc = subprocess.run([*lab.state["compose_command"], *args], cwd=lab.state["home"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def incident(lab, client):
    proc = lab.up("incident", style="compose")
    ids = _ids(client, lab.prefix)
    # Right after `up`, the user's own `docker-compose up -d` in that folder finds nothing to change.
    again = _compose_in_folder(lab, "up", "-d")
    return {"output": proc.stdout + proc.stderr, "ids": ids, "again": again, "ids_after": _ids(client, lab.prefix)}


@pytest.fixture(scope="module")
def healthy(lab, client, incident):
    before = _ids(client, lab.prefix)
    proc = lab.up("healthy")  # no --style: the lab's own, from its state
    return {"output": proc.stdout + proc.stderr, "before": before, "after": _ids(client, lab.prefix)}


# incident ------------------------------------------------------------------------------------------

def test_incident_containers_are_compose_made_and_named(lab, client, incident):
    state = lab.state
    assert state["style"] == "compose" and state["project"] == lab.prefix
    assert state["compose_command"] in (["docker-compose"], ["docker", "compose"])
    for service in SERVICES:
        name = compose_container_name(state["compose_command"], lab.prefix, service)
        assert state["containers"][service] == name
        container = client.containers.get(name)
        labels = container.labels
        assert labels[PROJECT] == lab.prefix and labels["com.docker.compose.service"] == service
        assert labels["com.docker.compose.config-hash"]
        assert "quantlab.prefix" not in labels  # nothing of the lab's own labelling
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [f"{lab.prefix}_default"]
        (binding,) = [b for bs in container.attrs["HostConfig"]["PortBindings"].values() for b in bs]
        assert binding["HostIp"] == "127.0.0.1"
        assert int(binding["HostPort"]) == state["ports"][service]
        assert container.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}
    assert state["network"] == f"{lab.prefix}_default"
    postgres = lab.container("postgres").attrs
    assert "db" in postgres["NetworkSettings"]["Networks"][f"{lab.prefix}_default"]["Aliases"]
    (data,) = [m for m in postgres["Mounts"] if m["Destination"] == "/var/lib/postgresql/data"]
    assert data["Type"] == "volume" and data["Name"] == f"{lab.prefix}_pgdata"


def test_incident_compose_up_in_the_folder_recreates_nothing(incident):
    assert incident["ids_after"] == incident["ids"]
    assert len(incident["ids"]) == len(SERVICES)
    assert "Recreating" not in incident["again"].stderr + incident["again"].stdout


def test_incident_the_file_is_accepted_and_keeps_secrets_out(lab):
    home = Path(lab.state["home"])
    _compose_in_folder(lab, "config", "-q")  # -q: the merged config would print env_file values
    text = (home / "docker-compose.yml").read_text()
    assert "container_name" not in text and "<<: *common" in text
    assert (home / ".env").read_text().splitlines()[-1] == f"COMPOSE_PROJECT_NAME={lab.prefix}"
    for service, path in lab.state["env_files"].items():
        assert oct(os.stat(path).st_mode & 0o777) == "0o600", service
    for path in lab.state["secret_files"].values():
        assert Path(path).read_text().strip() not in text


def test_incident_mlflow_runs_the_seeds_settings_with_the_users_mount(lab, incident):
    attrs = lab.container("mlflow").attrs
    assert attrs["HostConfig"]["Memory"] == 420 * MIB
    assert not attrs["HostConfig"].get("MemoryReservation")
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    command = attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "4"
    assert "GUNICORN_CMD_ARGS=-c /etc/quantlab/gunicorn_incident.py" in attrs["Config"]["Env"]
    (hooks,) = [m for m in attrs["Mounts"] if m["Destination"] == "/etc/quantlab/gunicorn_incident.py"]
    assert hooks["Type"] == "bind" and hooks["Source"] == f"{lab.state['home']}/mlflow/gunicorn_incident.py"
    assert not hooks["RW"]


def test_incident_signatures_in_the_logs(lab, incident):
    mlflow = lab.container("mlflow").logs().decode(errors="replace")
    assert SIGKILL_LINE in mlflow
    assert re.search(r"\[ERROR\] Worker \(pid:\d+\) was sent SIGKILL! Perhaps out of memory\?", mlflow)
    postgres = lab.container("postgres").logs().decode(errors="replace")
    assert 'password authentication failed for user "quant_user"' in postgres
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(f"http://127.0.0.1:{lab.state['ports']['backend']}/health/db", timeout=20)
    assert failed.value.code == 503
    assert re.search(r"Username already exists: concurrent_\d+", lab.container("backend").logs().decode())


def test_incident_inventory_names_mlflow_by_compose_service(lab, incident):
    data = lab_compose_host_data(lab.prefix)
    assert data["mlflow"] == {
        "compose_file": lab.state["compose_file"],
        "compose_service": "mlflow",
        "backend_store_uri": "postgresql://mlflow@postgres:5432/mlflow",
        "artifacts_destination": "s3://mlflow-artifacts",
    }
    assert data["postgres"]["container"] == lab.state["containers"]["postgres"]
    assert data["backend"]["container"] == lab.state["containers"]["backend"]
    assert {s["container"] for s in data["stack"]["services"].values()} == set(lab.state["containers"].values())


def test_another_style_on_a_compose_lab_is_refused(lab, incident):
    proc = lab.cli("up", "--style", "docker", check=False)
    assert proc.returncode == 2 and "compose style" in proc.stderr


# healthy -------------------------------------------------------------------------------------------

def test_healthy_converges_only_mlflow_through_compose(healthy, lab):
    before, after = healthy["before"], healthy["after"]
    mlflow = lab.state["containers"]["mlflow"]
    assert before[mlflow] != after[mlflow]
    assert {n: i for n, i in before.items() if n != mlflow} == {n: i for n, i in after.items() if n != mlflow}
    assert lab.state["scenario"] == "healthy" and lab.state["style"] == "compose"


def test_healthy_every_service_healthy(healthy, lab):
    for service in SERVICES:
        state = lab.container(service).attrs["State"]
        assert state["Status"] == "running" and state["Health"]["Status"] == "healthy", service


def test_healthy_mlflow_is_what_the_deploy_makes(healthy, lab):
    attrs = lab.container("mlflow").attrs
    spec = server_spec(healthy_mlflow_settings(), LAB_MLFLOW_VERSION)
    assert attrs["Config"]["Cmd"] == list(spec.command)
    assert {f"{k}={v}" for k, v in spec.env.items()} <= set(attrs["Config"]["Env"])
    assert attrs["HostConfig"]["Memory"] == 1024 * MIB
    assert attrs["HostConfig"]["MemoryReservation"] == 512 * MIB
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert attrs["Config"]["Labels"]["io.quantlab.mlflow-version"] == "2.9.2"
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.state['ports']['mlflow']}/health", timeout=10) as r:
        assert r.read().decode().strip() == "OK"


def test_healthy_compose_up_in_the_folder_recreates_nothing(healthy, lab, client):
    before = _ids(client, lab.prefix)
    _compose_in_folder(lab, "up", "-d")
    assert _ids(client, lab.prefix) == before


def test_status_shows_compose_names(healthy, lab):
    output = lab.cli("status", timeout=120).stdout
    rows = {line.split()[0]: line.split() for line in output.splitlines()[1:] if line.strip()}
    assert {service: row[1] for service, row in rows.items()} == lab.state["containers"]
    assert all(row[2] == "running" and row[3] == "healthy" for row in rows.values()), output


# down ----------------------------------------------------------------------------------------------

def test_down_leaves_nothing_of_the_prefix(lab, client, healthy):
    home, names = Path(lab.state["home"]), lab.state["containers"].values()
    proc = lab.cli("down", timeout=300)
    assert "is down" in proc.stdout
    assert _ids(client, lab.prefix) == {}
    assert [n for n in containers_by_name(client) if n.startswith(lab.prefix)] == []
    assert [n.name for n in client.networks.list() if n.name.startswith(lab.prefix)] == []
    assert [v.name for v in client.volumes.list() if v.name.startswith(lab.prefix)] == []
    assert not home.exists()
    removed = re.search(r"is down \(removed (.*)\)", proc.stdout).group(1).split(", ")
    assert set(removed) == {*names, f"{lab.prefix}_default", f"{lab.prefix}_pgdata"}
