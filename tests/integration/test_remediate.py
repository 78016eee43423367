"""deploys/remediate.py against the real lab over @local: the incident diagnosed from real logs,
remediated and verified in one run, nothing to do on the second; the throttle; the backend
reload fix triggered by a container that really prints watchfiles' error; a bad catalog."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import docker
import pytest
import yaml

from tests.labkit import REPO, lab_up, run_pyinfra, write_inventory

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "remediate.py"
FIX_BACKEND = REPO / "deploys" / "fix_backend_reload.py"
WATCHFILES_LINE = ("_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
                   "Input/output error (os error 5)")


@pytest.fixture(scope="module")
def lab(request):
    return lab_up(request, "qtrm", 30000, "incident")


def home(lab) -> Path:
    return REPO / ".lab" / lab.prefix


def inventory(tmp_path: Path, lab, **host_data) -> Path:
    return write_inventory(tmp_path / "inventory.py", lab.prefix, host_data=host_data)


def report(lab) -> dict:
    return json.loads((home(lab) / "remediation-reports" / "local.json").read_text())


def record(lab) -> dict:
    return json.loads((home(lab) / "remediation-runs.json").read_text())


def secrets(lab) -> list[str]:
    return [p.read_text().strip() for p in (home(lab) / "secrets").iterdir()]


def test_dry_run_shows_findings_evidence_and_remediations_and_changes_nothing(lab, tmp_path):
    before = lab.container("mlflow").id
    proc = subprocess.run([str(Path(os.sys.executable).parent / "pyinfra"), "--dry",
                           "--group-data", str(REPO / "inventories" / "group_data"),
                           str(inventory(tmp_path, lab)), str(DEPLOY)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "mlflow-worker-sigkill" in out and "-> fix_mlflow" in out
    assert "was sent SIGKILL! Perhaps out of memory?" in out
    assert f"{lab.prefix}-mlflow:" in out  # evidence names the container, with a timestamp
    assert "postgres-password-auth-failed (quant_user): -> db_users" in out
    assert 'password authentication failed for user "quant_user"' in out
    assert "load-test-duplicate-user" in out and "informational" in out
    assert lab.container("mlflow").id == before
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "0"
    assert not (home(lab) / "remediation-runs.json").exists()
    planned = report(lab)
    assert planned["phase"] == "planned"
    assert {a["status"] for a in planned["actions"]} >= {"run", "informational"}
    for secret in secrets(lab):
        assert secret not in out


def test_incident_is_remediated_in_one_run_and_second_run_finds_nothing(lab, tmp_path):
    inv = inventory(tmp_path, lab)
    first = run_pyinfra(inv, DEPLOY)
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.changed >= 2
    assert "checks passed" in first.stderr and "FAIL" not in first.stderr

    container = lab.container("mlflow")
    assert container.attrs["HostConfig"]["Memory"] == 1 << 30
    assert container.status == "running"
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "1"

    applied = report(lab)
    assert applied["phase"] == "applied" and applied["result"] == "verified"
    statuses = {a["key"]: a["status"] for a in applied["actions"]}
    assert statuses[f"fix_mlflow:{lab.prefix}-mlflow"] == "run"
    assert statuses["db_users:quant_user"] == "run"
    info = [a for a in applied["actions"] if a["signatures"] == ["load-test-duplicate-user"]]
    assert info and info[0]["status"] == "informational"
    assert "Username already exists: concurrent_" in info[0]["findings"][-1]["evidence"]
    assert set(record(lab)["runs"]) == {f"fix_mlflow:{lab.prefix}-mlflow", "db_users:quant_user"}
    for secret in secrets(lab):
        assert secret not in first.stdout + first.stderr

    second = run_pyinfra(inv, DEPLOY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == 0, second.changed_ops()
    assert "Record and verify the remediations" not in " ".join(second.changed_ops())
    again = report(lab)
    assert again["summary"]["run"] == 0 and again["summary"]["throttled"] == 0
    assert "nothing to do" in second.stderr


def test_signature_still_present_right_after_is_throttled(lab, tmp_path):
    """A client with a stale password makes PostgreSQL log the line again after the fix: within
    the window the remediation does not run again; the report says throttled."""
    names = lab.state["containers"]
    result = lab.container("backend").exec_run(
        ["python3", "-c", "import psycopg2; psycopg2.connect(host='%s', user='quant_user', "
         "dbname='quant', password='stale-password', connect_timeout=5)" % names["postgres"]])
    assert result.exit_code != 0 and b"password authentication failed" in result.output
    ran_at = record(lab)["runs"]["db_users:quant_user"]["ran_at"]

    run = run_pyinfra(inventory(tmp_path, lab), DEPLOY)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.changed == 0, run.changed_ops()
    assert "throttled" in run.stderr
    action = next(a for a in report(lab)["actions"] if a["key"] == "db_users:quant_user")
    assert action["status"] == "throttled"
    assert action["throttled_until"] and len(action["findings"]) == 1
    assert record(lab)["runs"]["db_users:quant_user"]["ran_at"] == ran_at  # not rewritten


def _replace_backend_with_watchfiles_fixture(lab):
    """A fixture backend: the lab's backend image and settings, whose start really prints
    watchfiles' error unless polling is forced (as the native watcher fails and polling does not)."""
    client = docker.from_env()
    old = lab.container("backend")
    env = old.attrs["Config"]["Env"]
    image = old.attrs["Config"]["Image"]
    port = lab.state["ports"]["backend"]
    old.remove(force=True)
    script = ('if [ "$WATCHFILES_FORCE_POLLING" != true ]; then '
              'echo "Traceback (most recent call last):" >&2; '
              f'echo "{WATCHFILES_LINE}" >&2; fi; exec "$@"')
    client.containers.run(
        image, ["sh", "-c", script, "fixture", "uvicorn", "main:app", "--host", "0.0.0.0",
                "--port", "8000", "--reload"],
        name=f"{lab.prefix}-backend", detach=True, environment=env, network=lab.state["network"],
        ports={"8000/tcp": ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"},
        labels={"quantlab.prefix": lab.prefix, "quantlab.service": "backend",
                "quantlab.fixture": "watchfiles-io-error"})


def test_watchfiles_error_triggers_the_backend_fix_and_the_patch_is_idempotent(lab, tmp_path):
    _replace_backend_with_watchfiles_fixture(lab)
    import time
    for _ in range(30):
        if b"WatchfilesRustInternalError" in lab.container("backend").logs():
            break
        time.sleep(0.5)
    assert WATCHFILES_LINE.encode() in lab.container("backend").logs()
    dockerfile = home(lab) / "backend" / "Dockerfile"
    dockerfile.parent.mkdir(exist_ok=True)
    shutil.copy(REPO / "tasks" / "lab" / "recipes" / "backend" / "Dockerfile", dockerfile)
    compose = Path(lab.state["compose_file"])
    others_before = {k: v for k, v in yaml.safe_load(compose.read_text())["services"].items()
                     if k != "backend"}
    backend = {"container": f"{lab.prefix}-backend", "dockerfile": str(dockerfile),
               "compose_file": str(compose)}
    inv = inventory(tmp_path, lab, backend=backend)
    before = lab.container("backend").id

    first = run_pyinfra(inv, DEPLOY)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "backend-watchfiles-io-error" in first.stderr
    container = lab.container("backend")
    assert container.id != before
    assert "WATCHFILES_FORCE_POLLING=true" in container.attrs["Config"]["Env"]
    command = container.attrs["Config"]["Cmd"]
    assert command[command.index("--reload") + 1:command.index("--reload") + 3] == ["--reload-delay", "2"]
    assert container.labels.get("quantlab.fixture") == "watchfiles-io-error"
    assert b"WatchfilesRustInternalError" not in container.logs()
    text = dockerfile.read_text()
    assert 'CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--reload", ' \
           '"--reload-delay", "2"]' in text
    assert text.count("--reload-delay") == 1 and "ENV WATCHFILES_FORCE_POLLING=true" in text
    service = yaml.safe_load(compose.read_text())["services"]["backend"]
    assert service["environment"]["WATCHFILES_FORCE_POLLING"] == "true"
    others_after = {k: v for k, v in yaml.safe_load(compose.read_text())["services"].items()
                    if k != "backend"}
    assert others_after == others_before
    assert (REPO / "tasks/lab/recipes/backend/Dockerfile").read_text().count("--reload-delay") == 0
    action = next(a for a in report(lab)["actions"] if a["remediation"] == "backend_reload")
    assert action["status"] == "run" and action["result"] == "verified"

    # Idempotent: the fix deploy on its own, and remediate again, change nothing.
    files = (dockerfile.read_text(), compose.read_text())
    alone = run_pyinfra(inv, FIX_BACKEND)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert alone.changed == 0, alone.changed_ops()
    second = run_pyinfra(inv, DEPLOY)
    assert second.returncode == 0 and second.changed == 0, second.changed_ops()
    assert (dockerfile.read_text(), compose.read_text()) == files
    assert lab.container("backend").id == container.id


def test_malformed_catalog_is_a_clear_error_naming_the_entry(lab, tmp_path):
    catalog = tmp_path / "signatures.yml"
    catalog.write_text(yaml.safe_dump({"signatures": [
        {"id": "ok-one", "containers": ["mlflow"], "pattern": "WORKER TIMEOUT", "severity": "error",
         "remediation": "fix_mlflow"},
        {"id": "broken-regex", "containers": ["mlflow"], "pattern": "Worker (pid", "severity": "error",
         "remediation": "fix_mlflow"},
        {"id": "no-such-fix", "containers": ["backend"], "pattern": "boom", "severity": "error",
         "remediation": "restart_everything"},
    ]}))
    before = lab.container("mlflow").id
    result = run_pyinfra(inventory(tmp_path, lab, remediate={"catalog": str(catalog)}), DEPLOY)
    assert result.returncode != 0
    assert "signatures[1] 'broken-regex': bad regex 'Worker (pid'" in result.stderr
    assert "signatures[2] 'no-such-fix': unknown remediation 'restart_everything'" in result.stderr
    assert "Traceback" not in result.stderr
    assert lab.container("mlflow").id == before
