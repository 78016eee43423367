"""deploys/fix_mlflow.py on a stack run with compose from the user's own file (the compose-style
lab, real docker-compose): the incident fixed through compose, verified, idempotent, at peace with a
later `docker-compose up -d`; the user's file keeps its comments and anchor and changes only in
managed keys; a failed apply puts the previous file back; MLflow 3.x through the same file.

One lab, the tests in file order (each builds on the one before). A finalizer takes it down.
"""
from __future__ import annotations

import difflib
import os
import re
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from tasks.core.mlflow_server import JOB_EXECUTION_ENV, count_workers
from tasks.lab.images import image_refs
from tasks.settings.mlflow import MANAGED_ENV_KEYS
from tests.labkit import REPO, new_lab, run_pyinfra

pytestmark = pytest.mark.lab

GIB, MIB = 1 << 30, 1 << 20
DEPLOY = REPO / "deploys" / "fix_mlflow.py"
SIGKILL_LINE = "was sent SIGKILL! Perhaps out of memory?"
# What the deploy may change in the user's file: the MLflow service's managed keys.
MANAGED_LINE = re.compile(
    r"^\s*(command:|- |--|mlflow server|GUNICORN_CMD_ARGS:|MLFLOW_\w+_OPTS:|environment:|memory:|limits:"
    r"|reservations:|labels:|io\.quantlab\.mlflow-version:|image:|restart:|init:)"
)


@pytest.fixture(scope="module")
def lab(request):
    handle = new_lab("qcfx", 16000)
    request.addfinalizer(handle.down)
    handle.up("incident", style="compose")
    return handle


def inventory(tmp_path: Path, lab, **overrides) -> Path:
    path = tmp_path / "inventory.py"
    path.write_text(
        "from tasks.lab.inventory import lab_compose_host_data\n"
        f"data = lab_compose_host_data({lab.prefix!r})\n"
        f"data['mlflow'].update({overrides!r})\n"
        "hosts = [('@local', data)]\n"
    )
    return path


def compose_file(lab) -> Path:
    return Path(lab.state["compose_file"])


def compose_up(lab) -> str:
    folder = compose_file(lab).parent
    proc = subprocess.run([*lab.state["compose_command"], "up", "-d"], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ids(lab) -> dict[str, str]:
    client = docker.from_env()
    return {service: client.containers.get(name).id for service, name in lab.state["containers"].items()}


def mlflow(lab):
    return lab.container("mlflow")


def changed_lines(before: str, after: str) -> list[str]:
    return [line[2:] for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line.startswith(("- ", "+ "))]


# What the deploy may change in the MLflow service, read as compose reads it (merge keys resolved):
# leaf paths (``command`` is a list, compared whole).
MANAGED_PATHS = (
    ("command",), ("image",), ("restart",), ("labels", "io.quantlab.mlflow-version"),
    ("deploy", "resources", "limits", "memory"), ("deploy", "resources", "reservations", "memory"),
    ("mem_limit",), ("mem_reservation",), ("init",), *(("environment", key) for key in sorted(MANAGED_ENV_KEYS)),
    # MLflow 3's job runner, off unless settings.env says otherwise (the plan notes it)
    *(("environment", key) for key in sorted(JOB_EXECUTION_ENV)),
)  # fmt: skip


def leaf_differences(old, new, path=()) -> list[tuple]:
    """Every leaf path whose value differs between two YAML documents (lists compared whole; a
    mapping that is not there reads as an empty one)."""
    if (isinstance(old, dict) or isinstance(new, dict)) and (old is None or new is None):
        old, new = old or {}, new or {}
    if isinstance(old, dict) and isinstance(new, dict):
        return [p for key in sorted(set(old) | set(new), key=str)
                for p in leaf_differences(old.get(key), new.get(key), (*path, key))]
    return [] if old == new else [path]


def unmanaged_changes(before: str, after: str) -> list[tuple]:
    """Paths the fix changed in the user's file beyond the MLflow service's managed keys: the
    other services, the `x-` block, volumes, and the MLflow service's other keys must be as they
    were (an env key written empty where the file had none counts as managed: it is one)."""
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    old_mlflow, new_mlflow = old["services"].pop("mlflow"), new["services"].pop("mlflow")
    outside = leaf_differences(old, new)
    inside = [("services", "mlflow", *p) for p in leaf_differences(old_mlflow, new_mlflow)
              if p not in MANAGED_PATHS]
    return outside + inside


def test_the_incident_is_in_the_logs(lab):
    logs = mlflow(lab).logs().decode(errors="replace")
    assert SIGKILL_LINE in logs
    assert mlflow(lab).attrs["HostConfig"]["Memory"] == 420 * MIB


def test_dry_run_shows_the_file_diff_and_changes_nothing(lab, tmp_path):
    before_text, before_id = compose_file(lab).read_text(), mlflow(lab).id
    proc = subprocess.run([str(Path(os.sys.executable).parent / "pyinfra"), "--dry", str(inventory(tmp_path, lab)),
                           str(DEPLOY)], capture_output=True, text=True, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "recreate through compose, service mlflow" in out
    assert "-          memory: 420m" in out and "+          memory: 1g" in out
    assert "memory: 420 MiB -> 1 GiB" in out
    assert compose_file(lab).read_text() == before_text and mlflow(lab).id == before_id


def test_fix_through_compose_keeps_the_users_file(lab, tmp_path):
    before_text, before_ids = compose_file(lab).read_text(), ids(lab)
    first = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert first.returncode == 0, first.report()
    assert first.changed == 1, first.report()

    container = mlflow(lab)
    assert container.name == lab.state["containers"]["mlflow"]  # compose's name, compose's container
    assert container.id != before_ids["mlflow"]
    assert "com.docker.compose.config-hash" in container.labels
    assert container.attrs["HostConfig"]["Memory"] == GIB
    assert container.attrs["HostConfig"]["MemoryReservation"] == 512 * MIB
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    out = container.exec_run(["ps", "-eo", "pid,ppid,args"]).output.decode()
    assert count_workers(out, "gunicorn") == 2
    # Everything the deploy does not manage came from the user's file, as before.
    assert container.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                                         "Config": {"max-file": "3", "max-size": "10m"}}
    assert any(m["Destination"] == "/etc/quantlab/gunicorn_incident.py" for m in container.attrs["Mounts"])
    assert "PGPASSWORD" in {e.partition("=")[0] for e in container.attrs["Config"]["Env"]}
    assert container.attrs["HostConfig"]["Init"] is True  # `init: true` in the file, applied by compose
    assert all(ids(lab)[s] == i for s, i in before_ids.items() if s != "mlflow")

    after_text = compose_file(lab).read_text()
    comments = [line for line in before_text.splitlines() if line.lstrip().startswith("#")]
    assert all(line in after_text.splitlines() for line in comments)
    assert "x-common: &common" in after_text and after_text.count("<<: *common") == 5
    changed = changed_lines(before_text, after_text)
    assert changed and all(MANAGED_LINE.match(line) for line in changed), changed
    # ...and by meaning: nothing outside the MLflow service's managed keys differs.
    assert unmanaged_changes(before_text, after_text) == []
    assert "restart: on-failure:3" in before_text and "restart: on-failure:3" not in after_text

    second = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert second.returncode == 0 and second.changed == 0, second.report()
    assert compose_file(lab).read_text() == after_text

    fixed_ids = ids(lab)
    compose_up(lab)
    assert ids(lab) == fixed_ids  # compose finds nothing to recreate
    third = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert third.returncode == 0 and third.changed == 0, third.report()


def test_a_failed_apply_puts_the_previous_file_back(lab, tmp_path):
    before_text = compose_file(lab).read_text()
    broken = run_pyinfra(inventory(tmp_path, lab, extra_args=["--no-such-flag"]), DEPLOY)
    assert broken.returncode != 0, broken.report()
    assert "the previous" in broken.stdout + broken.stderr and "is back and applied" in broken.stdout + broken.stderr
    assert compose_file(lab).read_text() == before_text
    assert mlflow(lab).status == "running"
    again = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert again.returncode == 0 and again.changed == 0, again.report()


def test_mlflow3_through_the_same_file(lab, tmp_path):
    image = image_refs()["mlflow3"]
    before_text = compose_file(lab).read_text()
    # MLflow 3 imports for tens of seconds, longer on a loaded CI machine: a wider start budget.
    first = run_pyinfra(inventory(tmp_path, lab, image=image, start_timeout=240), DEPLOY)
    assert first.returncode == 0 and first.changed == 1, first.report()
    text = compose_file(lab).read_text()
    assert f"image: {image}" in text and "--uvicorn-opts" in text and "io.quantlab.mlflow-version: 3." in text
    assert unmanaged_changes(before_text, text) == []
    container = mlflow(lab)
    assert container.attrs["Config"]["Image"] == image
    second = run_pyinfra(inventory(tmp_path, lab, image=image, start_timeout=240), DEPLOY)
    assert second.returncode == 0 and second.changed == 0, second.report()
    fixed_ids = ids(lab)
    compose_up(lab)
    assert ids(lab) == fixed_ids
