"""deploys/fix_mlflow.py against the real lab over @local: the incident fixed, verified, idempotent;
update in place vs recreate; rollback when the new container fails; compose kept in sync."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from tasks.core.mlflow_server import count_workers
from tests.labkit import MLFLOW, REPO, containers_by_name, run_pyinfra, shared_lab, write_inventory

pytestmark = pytest.mark.lab

GIB, MIB = 1 << 30, 1 << 20
DEPLOY = REPO / "deploys" / "fix_mlflow.py"


@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident", needs={MLFLOW}, changes={MLFLOW})


def inventory(tmp_path: Path, lab, **overrides) -> Path:
    return write_inventory(tmp_path / "inventory.py", lab.prefix, overrides)


def mlflow(lab):
    return lab.container("mlflow")


def workers(container) -> int:
    out = container.exec_run(["ps", "-eo", "pid,ppid,args"]).output.decode()
    return count_workers(out, "gunicorn")


def secrets(lab) -> list[str]:
    folder = REPO / ".lab" / lab.prefix / "secrets"
    return [p.read_text().strip() for p in folder.iterdir()]


def test_dry_run_names_each_change_and_changes_nothing(lab, tmp_path):
    before = mlflow(lab).id
    proc = subprocess.run([str(Path(os.sys.executable).parent / "pyinfra"), "--dry",
                           str(inventory(tmp_path, lab)), str(DEPLOY)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "memory: 420 MiB -> 1 GiB" in out
    assert "memory_reservation: unlimited -> 512 MiB" in out
    assert "--workers 4 ->" in out and "--workers 2 --gunicorn-opts" in out
    assert "init: off -> on" in out  # the seed's `mlflow server` ran as PID 1
    assert mlflow(lab).id == before
    assert mlflow(lab).attrs["HostConfig"]["Memory"] == 420 * MIB


def test_incident_is_fixed_verified_and_second_run_changes_nothing(lab, tmp_path):
    inv = inventory(tmp_path, lab)
    assert b"was sent SIGKILL! Perhaps out of memory?" in mlflow(lab).logs()  # the incident, for real

    first = run_pyinfra(inv, DEPLOY)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.changed >= 1
    tally = re.search(r"(\d+)/(\d+) checks passed", first.stderr)
    assert tally and tally[1] == tally[2] and int(tally[1]) >= 9, first.stderr[-3000:]
    for check in ("/health answers OK", "searches experiments", "runs 2 workers", "is not OOM-killed",
                  "memory is below its limit", "restart count is stable", "no known failure line"):
        assert check in first.stderr

    container = mlflow(lab)
    host_config = container.attrs["HostConfig"]
    assert host_config["Memory"] == GIB
    assert host_config["MemoryReservation"] == 512 * MIB
    assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
    assert host_config["Init"] is True  # Docker's init is PID 1, the server its child: it gets SIGTERM
    pid1 = container.exec_run(["ps", "-o", "args=", "-p", "1"]).output.decode().strip()
    assert pid1.startswith("/sbin/docker-init -- mlflow server"), pid1
    command = container.attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "2"
    assert command[command.index("--gunicorn-opts") + 1] == (
        "--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync")
    assert "GUNICORN_CMD_ARGS=" in container.attrs["Config"]["Env"]
    assert container.status == "running"
    assert workers(container) == 2
    previous = [n for n in containers_by_name(docker.from_env()) if n == f"{lab.prefix}-mlflow-previous"]
    assert previous == [], "the previous container is removed once the new one passed"
    for secret in secrets(lab):
        assert secret not in first.stdout + first.stderr

    second = run_pyinfra(inv, DEPLOY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == 0, second.changed_ops()
    assert mlflow(lab).id == container.id


def test_real_mlflow_client_logs_a_run(lab):
    import mlflow as mlflow_client

    mlflow_client.set_tracking_uri(f"http://127.0.0.1:{lab.port_base}")
    experiment = mlflow_client.set_experiment(f"fix-check-{lab.prefix}")
    with mlflow_client.start_run() as run:
        mlflow_client.log_param("workers", 2)
        mlflow_client.log_metric("loss", 0.125)
    stored = mlflow_client.get_run(run.info.run_id)
    assert stored.data.metrics["loss"] == 0.125
    assert stored.info.experiment_id == experiment.experiment_id
    # Its metadata went to PostgreSQL, the tracking store behind the server.
    assert lab.psql(f"SELECT count(*) FROM runs WHERE run_uuid = '{run.info.run_id}'",
                    database="mlflow") == "1"


def test_memory_only_change_updates_in_place(lab, tmp_path):
    before = mlflow(lab).id
    result = run_pyinfra(inventory(tmp_path, lab, memory_limit="1536m"), DEPLOY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.changed >= 1
    assert "update quant" in result.stderr or f"update {lab.prefix}-mlflow" in result.stderr
    container = mlflow(lab)
    assert container.id == before
    assert container.attrs["HostConfig"]["Memory"] == 1536 * MIB
    again = run_pyinfra(inventory(tmp_path, lab, memory_limit="1536m"), DEPLOY)
    assert again.changed == 0


def test_command_change_recreates(lab, tmp_path):
    before = mlflow(lab).id
    result = run_pyinfra(inventory(tmp_path, lab, timeout=90), DEPLOY)
    assert result.returncode == 0, result.stderr[-3000:]
    container = mlflow(lab)
    assert container.id != before
    assert "--timeout 90" in " ".join(container.attrs["Config"]["Cmd"])
    assert workers(container) == 2


def test_failed_verification_restores_the_previous_container(lab, tmp_path):
    """Settings that cannot work (2 workers in 64 MiB): the new container is OOM-killed, the
    deploy fails naming why, and the previous container is back under its name, serving."""
    before = mlflow(lab)
    result = run_pyinfra(inventory(tmp_path, lab, memory_limit="64m", memory_reservation="32m"), DEPLOY)
    assert result.returncode != 0
    assert "failed verification" in result.stderr
    assert "previous container restored" in result.stderr
    assert "OOM" in result.stderr or "exit code" in result.stderr
    container = mlflow(lab)
    assert container.id == before.id
    assert container.status == "running"
    assert container.attrs["HostConfig"]["Memory"] != 64 * MIB
    code = container.exec_run(["curl", "-fsS", "--retry", "20", "--retry-delay", "1",
                               "--retry-all-errors", "http://127.0.0.1:5000/health"]).exit_code
    assert code == 0


def test_image_without_mlflow_is_refused_before_any_change(lab, tmp_path):
    before = mlflow(lab).id
    python_image = lab.state["images"]["python"]
    result = run_pyinfra(inventory(tmp_path, lab, image=python_image), DEPLOY)
    assert result.returncode != 0
    assert "has no `mlflow` Python package" in result.stderr
    assert "Traceback" not in result.stderr  # a refusal is one clear line, not a stack
    assert mlflow(lab).id == before


def test_bad_settings_are_a_clear_error_naming_host_and_key(lab, tmp_path):
    before = mlflow(lab).id
    result = run_pyinfra(inventory(tmp_path, lab, memory_limit="1gb", wokers=3), DEPLOY)
    assert result.returncode != 0
    assert "mlflow.memory_limit: '1gb' is not a size" in result.stderr
    assert "did you mean 'workers'" in result.stderr
    assert "@local" in result.stderr
    assert "Traceback" not in result.stderr
    assert mlflow(lab).id == before


def test_compose_file_is_patched_once_and_other_services_untouched(lab, tmp_path):
    compose = Path(lab.state["compose_file"])
    original = yaml.safe_load(compose.read_text())
    result = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert result.returncode == 0, result.stderr[-3000:]
    patched = yaml.safe_load(compose.read_text())
    service = patched["services"]["mlflow"]
    assert service["deploy"]["resources"]["limits"]["memory"] in ("1g", "1024m", GIB)
    assert service["deploy"]["resources"]["reservations"]["memory"] in ("512m", 512 * MIB)
    assert "--gunicorn-opts" in service["command"]
    assert service["environment"]["GUNICORN_CMD_ARGS"] == ""
    for name, other in original["services"].items():
        if name != "mlflow":
            assert patched["services"][name] == other
    text = compose.read_text()
    assert run_pyinfra(inventory(tmp_path, lab), DEPLOY).changed == 0
    assert compose.read_text() == text
