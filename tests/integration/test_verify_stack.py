"""deploys/verify_stack.py against the real lab over @local: a healthy stack passes with no changes
in pyinfra's results; the incident's causes are named; a stopped service and a port that accepts
but never answers fail within the deadline instead of hanging the run."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tasks.lab.inventory import lab_host_data
from tests.labkit import (
    MLFLOW,
    REPO,
    ROLES,
    SERVICES,
    pyinfra_process,
    run_pyinfra,
    shared_lab,
    write_inventory,
)

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "verify_stack.py"


@pytest.fixture(scope="module")
def healthy(request):
    return shared_lab(request, "healthy", changes=())


@pytest.fixture(scope="module")
def incident(request):
    # Reads the stack only; its rows (leftover users) are not among what it checks.
    return shared_lab(request, "incident", needs={MLFLOW, ROLES, SERVICES}, changes=())


def secrets(lab) -> list[str]:
    folder = REPO / ".lab" / lab.prefix / "secrets"
    return [p.read_text().strip() for p in folder.iterdir()]


def verify(lab, tmp_path: Path, stack: dict | None = None, timeout: int = 600):
    host_data = None
    if stack is not None:
        host_data = {"stack": {**lab_host_data(lab.prefix)["stack"], **stack}}
    inventory = write_inventory(tmp_path / "inventory.py", lab.prefix, host_data=host_data)
    report = tmp_path / "report.json"
    started = time.monotonic()
    run = run_pyinfra(inventory, DEPLOY, env={"QUANTLAB_VERIFY_REPORT": str(report)}, timeout=timeout)
    elapsed = time.monotonic() - started
    checks = {}
    if report.exists():
        data = json.loads(report.read_text())
        checks = {c["name"]: c for h in data["hosts"].values() for c in h["checks"]}
    return run, checks, elapsed, report


def assert_no_secrets(lab, *texts: str):
    for value in secrets(lab):
        for text in texts:
            assert value not in text


def test_healthy_lab_all_pass_and_pyinfra_reports_no_change(healthy, tmp_path):
    # Other lab tests run beside this one (xdist) on two cores: an MLflow request can take more
    # than the default 5 s here without anything being wrong with the stack under test.
    run, checks, _, report = verify(healthy, tmp_path, stack={"http_timeout": 20})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.errors == 0 and run.changed == 0, run.results
    assert run.results["results"]["totals"]["no_change"] == 1
    assert checks and all(c["status"] in ("pass", "warn") for c in checks.values()), \
        [(n, c["evidence"]) for n, c in checks.items() if c["status"] not in ("pass", "warn")]
    for expected in ("role quant_user can log in", "MLflow stores and serves an artifact",
                     "MLflow runs 2 workers", f"Redis {healthy.prefix}-redis writes and reads a scratch key",
                     "S3 bucket mlflow-artifacts exists", "backend database round trip /health/db",
                     f"container {healthy.prefix}-mlflow restart count is stable"):
        assert checks[expected]["status"] == "pass", expected
    assert "totals: " in run.stderr and "verify: CHECK" in run.stderr
    assert_no_secrets(healthy, run.stdout, run.stderr, report.read_text())
    # the scratch experiment is gone (deleted), and no scratch key is left in Redis
    active = healthy.psql("SELECT count(*) FROM experiments WHERE name LIKE 'quantlab-verify-%' "
                          "AND lifecycle_stage = 'active'", database="mlflow")
    assert active == "0"
    keys = healthy.container("redis").exec_run(["redis-cli", "--raw", "KEYS", "quantlab:verify:*"])
    assert keys.output.decode().strip() == ""


def test_dry_run_runs_no_check(healthy, tmp_path):
    inventory = write_inventory(tmp_path / "inventory.py", healthy.prefix)
    proc = pyinfra_process("--dry", "--group-data", str(REPO / "inventories" / "group_data"), str(inventory),
                           str(DEPLOY), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify: CHECK" not in proc.stdout + proc.stderr


def test_a_port_that_accepts_but_never_answers_fails_within_the_deadline(healthy, tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():  # accept, read nothing, answer nothing
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        deadline = 60
        stack = {"deadline": deadline, "http_timeout": 3, "retry_seconds": 8, "retry_wait": 1,
                 "restart_window": 2,
                 "services": {**lab_host_data(healthy.prefix)["stack"]["services"],
                              "backend": {"url": f"http://127.0.0.1:{port}"}}}
        run, checks, _, _ = verify(healthy, tmp_path, stack, timeout=deadline + 120)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
    # pyinfra prints no JSON results when every host failed ("No hosts remaining!")
    assert run.returncode != 0 and "Error: executed 0 commands" in run.stderr
    health = checks["backend /health answers"]
    assert health["status"] == "fail" and "no answer within 3s" in health["evidence"], health
    assert checks["backend database round trip /health/db"]["status"] == "fail"
    # Not a hang: verify() runs pyinfra under a subprocess bound (deadline + 120 s), which raises
    # if it is exceeded; how fast it ends is bench/'s business, not an assert here.
    assert "Verify the stack" in run.stderr


def test_a_service_stopped_just_before_fails_fast_with_its_state(healthy, tmp_path):
    redis = healthy.container("redis")
    redis.stop(timeout=5)
    try:
        deadline = 60
        run, checks, _, _ = verify(healthy, tmp_path, {"deadline": deadline, "restart_window": 2},
                                         timeout=deadline + 120)
    finally:
        redis.start()
    assert run.returncode != 0
    running = checks[f"container {healthy.prefix}-redis is running"]
    assert running["status"] == "fail" and "exited" in running["evidence"], running
    assert checks["redis service checks"]["status"] == "skip"
    assert "not running" in checks["redis service checks"]["evidence"]
    assert checks["MLflow /health answers OK"]["status"] == "pass"  # the others still checked


def test_incident_lab_fails_the_right_checks_naming_the_cause(incident, tmp_path):
    run, checks, _, report = verify(incident, tmp_path)
    assert run.returncode != 0 and "Error: executed 0 commands" in run.stderr
    failed = {n: c["evidence"] for n, c in checks.items() if c["status"] == "fail"}
    prefix = incident.prefix
    oom = failed[f"container {prefix}-mlflow is not OOM-killed"]
    assert "OOM" in oom and "SIGKILL" in oom
    assert "SIGKILL" in failed[f"container {prefix}-mlflow logs show no known failure"]
    assert 'password authentication failed for user "quant_user"' in failed["role quant_user can log in"]
    assert 'password authentication failed for user "quant_user"' in \
        failed["backend database round trip /health/db"]
    assert "password authentication failed" in failed[f"container {prefix}-postgres logs show no known failure"]
    # healthy parts of the stack stay green
    for fine in (f"Redis {prefix}-redis answers PING", "S3 bucket mlflow-artifacts exists",
                 "backend /health answers", f"PostgreSQL {prefix}-postgres accepts connections"):
        assert checks[fine]["status"] == "pass", (fine, checks[fine])
    assert "stack verification failed" in run.stderr
    assert_no_secrets(incident, run.stdout, run.stderr, report.read_text())
