"""deploys/remediate.py without a host (tasks/operations/remediate.py): the diagnosis fact's
recorded output in, the remediations it plans (or none) out, then its last operation
(`record_and_verify`) run against a scripted host, and the next plan reading the record it wrote.

The diagnosis is what `HostDiagnosis`'s command prints on a host with the lab's three containers
(tests/ops/remediate/<role>-<variant>.txt: `docker inspect` state and `docker logs --timestamps`
lines, as the lab's incident prints them), then the record and the host's clock; it goes through
the fact's own `command()` and `process()` (tests/ops/recorded_plan.py). The remediations' own
facts are the recorded ones their tests use: `docker inspect` of the MLflow and backend containers
(tests/ops/data) and the PostgreSQL 15 catalog (tests/unit/data, via tests/ops/pg_harness.py).
"""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from pyinfra.api import FunctionCommand, OperationError

from tasks.checks.runner import CheckResult
from tasks.core.signatures import SECTION
from tasks.facts.diagnose import HostDiagnosis
from tasks.operations import remediate
from tasks.settings.remediate import REPORT_DIR_ENV
from tests.ops.harness import InspectAnswers, ScriptedHost, execute, recorded
from tests.ops.pg_harness import PASSWORD, PASSWORD_ENV, catalog_output, pinned
from tests.ops.recorded_plan import Output, plan_on_host

OPS = Path(__file__).parent
HERE = OPS / "remediate"
DEPLOY = OPS.parent.parent / "deploys" / "remediate.py"

MLFLOW, POSTGRES, BACKEND = "qtops-mlflow", "qtops-postgres", "qtops-backend"
BACKEND_IMAGE = "quantlab/backend:5766e3318cda"  # Config.Image of the recorded backend container
RECORD_PATH = "/var/lib/quantlab/remediation-runs.json"
RECORD_TEMP = "/var/lib/quantlab/.remediation-runs.json.a1B2c3"  # mktemp's answer: written, then moved
NOW = "2026-01-02T03:30:00.512345678Z"  # the host's clock when the fact ran
DIAGNOSIS = (f"HostDiagnosis(containers=('{BACKEND}', '{MLFLOW}', '{POSTGRES}'), "
             f"record_path={RECORD_PATH}, since=2h, tail=2000)")
RECORD_STEP = "Record and verify the remediations"
NOTHING_RAN = "no remediation ran: nothing to record"

HOST_DATA = {
    "mlflow": json.loads((OPS / "data" / "settings-mlflow.json").read_text()),
    "postgres": {"container": POSTGRES},
    "backend": {"container": BACKEND},
    # Two roles: a finding for one must touch that one (and its grants) only.
    "db_roles": [{"name": "quant_user", "password": {"env": PASSWORD_ENV}, "login": True},
                 {"name": "reporting", "login": False}],
    "db_grants": [{"role": "quant_user", "database": "quant-db", "privileges": ["CONNECT"]},
                  {"role": "reporting", "database": "quant-db", "privileges": ["CONNECT"]}],
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Run records go to a temporary folder; the PostgreSQL side is pinned (private dir, salt)."""
    monkeypatch.setenv(REPORT_DIR_ENV, str(tmp_path / "reports"))
    with pinned(monkeypatch):
        yield


def diagnosis(backend: str = "healthy", mlflow: str = "healthy", postgres: str = "healthy",
              record: dict | str | None = None, now: str = NOW) -> Output:
    """What the fact's command prints: each container (in the order it reads them), the
    record file (as written: indented JSON, or nothing), the host's clock."""
    parts = [(HERE / f"{role}-{variant}.txt").read_text()
             for role, variant in (("backend", backend), ("mlflow", mlflow), ("postgres", postgres))]
    if isinstance(record, dict):
        record = json.dumps(record, indent=2) + "\n"
    parts.append(f"{SECTION}record\n{record or ''}")
    parts.append(f"{SECTION}now\n{now}\n")
    return Output("".join(parts))


def remediation_facts(**diagnosed) -> dict:
    """The diagnosis, and the remediations' facts as the incident's host answers them."""
    backend = recorded("backend-incident")
    return {
        "HostDiagnosis": diagnosis(**diagnosed),
        "ContainerInspect": InspectAnswers({
            f"container={MLFLOW}, image=qtops/mlflow:2.9.2": {
                "container": recorded("container-incident"), "previous": None, "image": recorded("image-mlflow2")},
            f"container={BACKEND}, image={BACKEND}": {"container": backend, "previous": None, "image": None},
            f"container={BACKEND}, image={BACKEND_IMAGE}": {
                "container": backend, "previous": None, "image": recorded("backend-image")},
        }),
        "PostgresCatalog": Output(catalog_output({})[0]),  # PostgreSQL 15, no quant_user role
    }


def plan(host_data: dict | None = None, **diagnosed):
    return plan_on_host(lambda: runpy.run_path(str(DEPLOY)), remediation_facts(**diagnosed),
                        host_data=HOST_DATA if host_data is None else host_data)


def names(result) -> list[str]:
    return [name for name, _ in result.steps]


def reads(result) -> list[str]:
    """The facts the plan read, each once, by name."""
    return sorted({asked.partition("(")[0] for asked in result.asked})


def diagnosis_text(result) -> str:
    return "\n".join(result.logs)


def report(tmp_path) -> dict:
    return json.loads((tmp_path / "reports" / "h1.json").read_text())


# -- the fact -----------------------------------------------------------------------------------

def test_the_fact_reads_each_container_the_record_and_the_clock_read_only():
    command = HostDiagnosis().command((BACKEND, MLFLOW), "2h", 2000, RECORD_PATH)
    for name in (BACKEND, MLFLOW):
        assert f"docker inspect --type container -f '{{{{json .State}}}} {{{{.RestartCount}}}}' -- {name}" in command
        assert f"docker logs --timestamps --since 2h --tail 2000 -- {name} 2>&1 || true" in command
    assert f"cat {RECORD_PATH} 2>/dev/null || {{ if [ -e {RECORD_PATH} ]" in command
    assert command.endswith("date -u +%Y-%m-%dT%H:%M:%S.%NZ")
    for writes in ("docker rm", "docker restart", "docker update", "docker run", " > ", "tee "):
        assert writes not in command
    fact = HostDiagnosis().process(diagnosis(mlflow="sigkill").splitlines())
    mlflow = fact["containers"][MLFLOW]
    assert mlflow["exists"] and mlflow["state"]["Status"] == "running" and mlflow["restart_count"] == 0
    assert sum("was sent SIGKILL" in line for line in mlflow["lines"]) == 2
    assert fact["now"] == NOW and fact["record"] is None and fact["record_error"] is None


# -- decisions, one branch each ---------------------------------------------------------------------

def test_nothing_found_plans_no_remediation_and_no_change():
    result = plan()
    assert result.steps == [(RECORD_STEP, [])]
    assert result.noops == [NOTHING_RAN]
    assert result.asked == [DIAGNOSIS]  # one read-only fact, nothing a remediation would read
    assert "diagnosis: no known signature since 2h" in result.logs


def test_an_informational_line_is_reported_and_changes_nothing(tmp_path):
    result = plan(backend="duplicate-user")
    assert result.steps == [(RECORD_STEP, [])] and result.noops == [NOTHING_RAN]
    text = diagnosis_text(result)
    assert "[info] load-test-duplicate-user (load-test-duplicate-user@qtops-backend): informational" in text
    assert report(tmp_path)["summary"] == {"run": 0, "throttled": 0, "deferred": 0, "reported": 0, "informational": 1,
                                           "handled": 0}


def test_mlflow_sigkill_plans_fix_mlflow_only():
    result = plan(mlflow="sigkill")
    assert names(result) == [f"MLflow container {MLFLOW}", RECORD_STEP]
    (recreate,), (finish,) = (commands for _, commands in result.steps)
    assert recreate[0] == "_recreate"
    spec = recreate[1]
    assert spec.name == MLFLOW and spec.command[spec.command.index("--workers") + 1] == "2"
    assert finish[0] == "_finish"
    ran = finish[1]
    assert [(a.key, a.status, a.signatures) for a in ran] == [
        ("fix_mlflow:qtops-mlflow", "run", ["mlflow-worker-sigkill"])]
    assert reads(result) == ["ContainerInspect", "HostDiagnosis"]  # no catalog, no backend read
    assert "[critical] mlflow-worker-sigkill (qtops-mlflow): -> fix_mlflow; 2 finding(s)" in diagnosis_text(result)


def test_a_configured_roles_auth_failure_plans_db_users_for_that_role_only():
    result = plan(postgres="auth-quant_user")
    assert names(result) == ["PostgreSQL role quant_user", "PostgreSQL grants in quant-db", RECORD_STEP]
    steps = dict(result.steps)
    role_sql = next(c[1] for c in steps["PostgreSQL role quant_user"] if isinstance(c, list) and c[0] == "upload")
    assert 'CREATE ROLE "quant_user" WITH LOGIN;\n' in role_sql
    assert 'ALTER ROLE "quant_user" WITH PASSWORD \'SCRAM-SHA-256$4096:' in role_sql
    grants_sql = next(c[1] for c in steps["PostgreSQL grants in quant-db"]
                      if isinstance(c, list) and c[0] == "upload")
    assert 'GRANT CONNECT ON DATABASE "quant-db" TO "quant_user";' in grants_sql
    everything = repr(result.steps)
    assert "reporting" not in everything  # the other role and its grant: not this finding's business
    assert PASSWORD not in everything + diagnosis_text(result)
    ran = steps[RECORD_STEP][0][1]
    assert [(a.key, a.target) for a in ran] == [("db_users:quant_user", "quant_user")]
    assert "[error] postgres-password-auth-failed (quant_user): -> db_users; 2 finding(s)" in diagnosis_text(result)


def test_a_roles_remediation_leaves_other_roles_databases_alone():
    # db_databases the role does not own are not its remediation's business: no CREATE DATABASE,
    # no ALTER DATABASE ... OWNER for them (they were planned before only_roles kept databases
    # to the remediated roles' own).
    data = {**HOST_DATA, "db_databases": [{"name": "quant-db", "owner": "reporting"},
                                          {"name": "analytics", "owner": "postgres"},
                                          {"name": "quant_user_scratch", "owner": "quant_user"}]}
    result = plan(host_data=data, postgres="auth-quant_user")
    assert names(result) == ["PostgreSQL role quant_user", "PostgreSQL database quant_user_scratch",
                             "PostgreSQL grants in quant-db", RECORD_STEP]
    everything = repr(result.steps)
    assert "analytics" not in everything and 'OWNER TO "reporting"' not in everything
    assert 'CREATE DATABASE "quant_user_scratch" OWNER "quant_user";' in everything


def test_an_unconfigured_roles_auth_failure_is_reported_and_nothing_runs(tmp_path):
    result = plan(postgres="auth-analytics")
    assert result.steps == [(RECORD_STEP, [])] and result.noops == [NOTHING_RAN]
    assert reads(result) == ["HostDiagnosis"]  # not even the catalog is read
    assert ("postgres-password-auth-failed (analytics): reported; user 'analytics' is not a configured "
            "role (db_roles): reported, never created") in diagnosis_text(result)
    [action] = report(tmp_path)["actions"]
    assert (action["key"], action["status"]) == ("db_users:analytics", "reported")


def test_backend_watchfiles_error_plans_the_backend_fix():
    result = plan(backend="watchfiles")
    assert names(result) == [f"Backend container {BACKEND}", RECORD_STEP]
    (recreate,) = dict(result.steps)[f"Backend container {BACKEND}"]
    assert recreate[0] == "_recreate"
    assert recreate[1].env["WATCHFILES_FORCE_POLLING"] == "true"
    assert recreate[1].command[-2:] == ("--reload-delay", "2")
    assert "backend-watchfiles-io-error (qtops-backend): -> backend_reload; 1 finding(s)" in diagnosis_text(result)


def test_the_whole_incident_plans_each_fix_once_in_the_registrys_order():
    result = plan(mlflow="sigkill", postgres="auth-quant_user", backend="watchfiles")
    assert names(result) == [f"MLflow container {MLFLOW}", "PostgreSQL role quant_user",
                             "PostgreSQL grants in quant-db", f"Backend container {BACKEND}", RECORD_STEP]
    ran, verifiers = result.steps[-1][1][0][1], result.steps[-1][1][0][6]
    assert sorted(verifiers) == sorted(a.key for a in ran) == [
        "backend_reload:qtops-backend", "db_users:quant_user", "fix_mlflow:qtops-mlflow"]


def record_of(key: str, ran_at: str) -> dict:
    remediation_name, _, target = key.partition(":")
    return {"version": 1, "runs": {key: {"ran_at": ran_at, "remediation": remediation_name, "target": target,
                                         "signatures": ["mlflow-worker-sigkill"], "result": "verified"}}}


def test_fresh_evidence_within_the_window_is_throttled_not_run():
    # Ran at 03:05; the SIGKILL lines (03:10, 03:11) came after it; 30 min window, now 03:30.
    result = plan(mlflow="sigkill", record=record_of("fix_mlflow:qtops-mlflow", "2026-01-02T03:05:00.000000000Z"))
    assert result.steps == [(RECORD_STEP, [])] and result.noops == [NOTHING_RAN]
    assert reads(result) == ["HostDiagnosis"]
    assert ("mlflow-worker-sigkill (qtops-mlflow): throttled; throttled: fix_mlflow ran for qtops-mlflow at "
            "2026-01-02T03:05:00.000000Z; not again before 2026-01-02T03:35:00.000000Z (2 new finding(s) since)"
            ) in diagnosis_text(result)


def test_fresh_evidence_after_the_window_runs_again():
    result = plan(mlflow="sigkill", record=record_of("fix_mlflow:qtops-mlflow", "2026-01-02T02:59:00.000000000Z"))
    assert names(result) == [f"MLflow container {MLFLOW}", RECORD_STEP]


def test_evidence_older_than_the_last_run_was_handled():
    result = plan(mlflow="sigkill", record=record_of("fix_mlflow:qtops-mlflow", "2026-01-02T03:20:00.000000000Z"))
    assert result.steps == [(RECORD_STEP, [])] and result.noops == [NOTHING_RAN]
    assert ("mlflow-worker-sigkill (qtops-mlflow): nothing to do; all 2 finding(s) predate its last run at "
            "2026-01-02T03:20:00.000000Z") in diagnosis_text(result)


def test_another_remediations_record_does_not_handle_this_one():
    result = plan(mlflow="sigkill", record=record_of("backend_reload:qtops-backend", "2026-01-02T03:20:00Z"))
    assert names(result) == [f"MLflow container {MLFLOW}", RECORD_STEP]


def test_an_unreadable_record_is_said_and_treated_as_empty():
    result = plan(mlflow="sigkill", record='{"version": 1, "runs": {\n')
    assert names(result) == [f"MLflow container {MLFLOW}", RECORD_STEP]
    assert any(line.startswith(f"last-run record {RECORD_PATH}: unreadable") for line in result.logs)


def test_a_record_that_cannot_be_read_refuses_before_any_change():
    """Its throttle and breaker would be lost: the remediations would run again, then fail to
    write it. Unlike a corrupt one (its owner can be replaced), nothing runs."""
    facts = remediation_facts(mlflow="sigkill")
    facts["HostDiagnosis"] = Output(facts["HostDiagnosis"].replace(f"{SECTION}now", f"{SECTION}record-unreadable\n{SECTION}now"))
    with pytest.raises(OperationError) as err:
        plan_on_host(lambda: runpy.run_path(str(DEPLOY)), facts, host_data=HOST_DATA)
    assert str(err.value) == (f"cannot read the last-run record {RECORD_PATH} (its throttle and breaker): "
                              "nothing changed; make it readable to the user the commands run as")


def test_a_missing_container_is_said_and_the_others_still_diagnosed():
    result = plan(mlflow="missing", backend="watchfiles")
    assert f"containers not found (not diagnosed): {MLFLOW}" in result.logs
    assert names(result) == [f"Backend container {BACKEND}", RECORD_STEP]


def test_without_docker_the_deploy_refuses():
    facts = {"HostDiagnosis": None}
    with pytest.raises(OperationError, match="docker is not installed on this host: nothing to diagnose"):
        plan_on_host(lambda: runpy.run_path(str(DEPLOY)), facts, host_data=HOST_DATA)


def test_the_plan_reports_findings_evidence_and_what_would_run(tmp_path):
    # What `--dry` shows and leaves behind: the diagnosis with its evidence, and a "planned" run
    # record on the controller. Nothing ran (the record on the host is written by _finish only).
    result = plan(mlflow="sigkill", postgres="auth-analytics", backend="duplicate-user")
    text = diagnosis_text(result)
    assert "diagnosis (5 finding(s) since 2h):" in text
    assert ("2026-01-02T03:10:41.337265512Z qtops-mlflow: [2026-01-02 03:10:41 +0000] [1] [ERROR] "
            "Worker (pid:711) was sent SIGKILL! Perhaps out of memory?") in text
    assert 'FATAL:  password authentication failed for user "analytics"' in text
    planned = report(tmp_path)
    assert planned["phase"] == "planned" and planned["diagnosed_at"] == NOW
    assert planned["containers"] == {"backend": BACKEND, "mlflow": MLFLOW, "postgres": POSTGRES}
    assert planned["summary"] == {"run": 1, "throttled": 0, "deferred": 0, "reported": 1, "informational": 1, "handled": 0}
    assert [(a["key"], a["status"], a["findings_total"]) for a in planned["actions"]] == [
        ("fix_mlflow:qtops-mlflow", "run", 2),
        ("db_users:analytics", "reported", 2),
        ("none:load-test-duplicate-user@qtops-backend", "informational", 1),
    ]
    assert planned["actions"][0]["findings"][0]["evidence"].endswith("Worker (pid:711) was sent SIGKILL! "
                                                                     "Perhaps out of memory?")


# -- record_and_verify: the run, then the next plan ------------------------------------------------------

RAN_AT = "2026-01-02T03:31:12.250000000Z"


def finish_command(result) -> FunctionCommand:
    """The planned _finish callback, its verifiers replaced by stand-ins for the services' own
    checks (tests/ops/test_mlflow.py, tests/unit/test_stack_checks.py test those)."""
    (name, *args), = dict(result.steps)[RECORD_STEP]
    assert name == "_finish"
    ran, catalog, settings, record, run_report, verifiers = args
    stand_in = {key: (lambda host_, run: [CheckResult("MLflow answers", MLFLOW, "pass", 1, evidence="200")])
                for key in verifiers}
    return FunctionCommand(remediate._finish, (ran, catalog, settings, record, run_report, stand_in), {})


def finish_script(logs_stdout: str = "", mkdir_ok: bool = True) -> list[dict]:
    return [
        {"command": "date -u +%Y-%m-%dT%H:%M:%S.%NZ", "stdout": RAN_AT + "\n"},
        # "no new evidence since the fix": the container's logs since the host-clock stamp
        {"command": f"docker logs --timestamps --since {RAN_AT} {MLFLOW} 2>&1", "stdout": logs_stdout},
        {"command": "mkdir -p /var/lib/quantlab", "ok": mkdir_ok},
        *([{"command": "mktemp /var/lib/quantlab/.remediation-runs.json.XXXXXX", "stdout": RECORD_TEMP + "\n"},
           {"upload": RECORD_TEMP},
           {"command": f"chmod 644 {RECORD_TEMP} && mv -f {RECORD_TEMP} {RECORD_PATH}"}] if mkdir_ok else []),
    ]


def test_record_and_verify_yields_nothing_when_nothing_ran():
    from tests.ops.harness import plan as op_plan

    planned = op_plan(remediate.record_and_verify, {}, ran=[], catalog=(), settings=None, record=None,
                      report={}, verifiers={})
    assert planned.commands == [] and planned.noop == NOTHING_RAN


def test_a_run_stamps_the_record_and_the_next_plan_changes_nothing(tmp_path):
    first = plan(mlflow="sigkill")
    host = ScriptedHost(finish_script(), name="h1")
    ok, logs = execute(finish_command(first), host)
    host.assert_all_asked()
    assert ok is True and host.errors == []
    written = json.loads(host.uploads[RECORD_TEMP])
    assert written == {"version": 1, "runs": {"fix_mlflow:qtops-mlflow": {
        "ran_at": RAN_AT, "remediation": "fix_mlflow", "target": MLFLOW,
        "signatures": ["mlflow-worker-sigkill"], "result": "verified"}}}
    applied = report(tmp_path)
    assert (applied["phase"], applied["result"], applied["record_written"]) == ("applied", "verified", True)
    assert [c["name"] for c in applied["verification"]["fix_mlflow:qtops-mlflow"]] == [
        "MLflow answers", "mlflow-worker-sigkill gone"]
    assert "remediation verification:" in "\n".join(logs)

    # The next run reads the record it wrote: the same old lines are handled, nothing to do.
    second = plan(mlflow="sigkill", record=host.uploads[RECORD_TEMP],
                  now="2026-01-02T03:32:40.000000000Z")
    assert second.steps == [(RECORD_STEP, [])] and second.noops == [NOTHING_RAN]
    assert reads(second) == ["HostDiagnosis"]
    assert "mlflow-worker-sigkill (qtops-mlflow): nothing to do" in diagnosis_text(second)


def test_new_evidence_after_the_fix_fails_verification_with_its_line_and_still_records(tmp_path):
    again = (f"{RAN_AT[:-4]}900Z [2026-01-02 03:31:12 +0000] [1] [ERROR] Worker (pid:902) was sent SIGKILL! "
             "Perhaps out of memory?\n")
    host = ScriptedHost(finish_script(logs_stdout=again), name="h1")
    ok, _ = execute(finish_command(plan(mlflow="sigkill")), host)
    host.assert_all_asked()
    assert ok is False
    error = "\n".join(host.errors)  # one line a call: each printed with the host's prefix
    assert error.startswith("remediation verification failed:\n  mlflow-worker-sigkill gone (qtops-mlflow): "
                            "1 new line(s): [2026-01-02 03:31:12 +0000] [1] [ERROR] Worker (pid:902)")
    # The run is recorded (it ran: the throttle applies), with its result.
    assert json.loads(host.uploads[RECORD_TEMP])["runs"]["fix_mlflow:qtops-mlflow"]["result"] == \
        "verification failed"
    assert report(tmp_path)["actions"][0]["result"] == "verification failed"


def test_a_record_that_cannot_be_written_fails_the_host_naming_the_path():
    host = ScriptedHost(finish_script(mkdir_ok=False), name="h1")
    ok, _ = execute(finish_command(plan(mlflow="sigkill")), host)
    host.assert_all_asked()
    assert ok is False
    assert host.errors and host.errors[0].startswith(f"could not write the last-run record {RECORD_PATH}")


# -- forced mode: the watcher's QUANT_REMEDIATE_ONLY ----------------------------------------------

def test_forced_mode_runs_only_the_watchers_finding_for_that_role(monkeypatch, tmp_path):
    monkeypatch.setenv(remediate.ONLY_ENV, "db_users:quant_user")
    result = plan(mlflow="sigkill", postgres="auth-quant_user", backend="watchfiles")
    assert names(result) == ["PostgreSQL role quant_user", "PostgreSQL grants in quant-db", RECORD_STEP]
    assert "reporting" not in repr(result.steps)
    ran = dict(result.steps)[RECORD_STEP][0][1]
    assert [a.key for a in ran] == ["db_users:quant_user"]
    doc = report(tmp_path)
    assert doc["forced"] == "db_users:quant_user"
    assert {a["key"]: a["status"] for a in doc["actions"]} == {
        "db_users:quant_user": "run", "fix_mlflow:qtops-mlflow": "deferred", "backend_reload:qtops-backend": "deferred"}
    assert f"{remediate.ONLY_ENV}=db_users:quant_user: only this remediation runs" in diagnosis_text(result)


def test_forced_mode_runs_inside_the_records_window_and_without_a_finding(monkeypatch):
    # the watcher's retry after a failed run: the record would throttle it
    monkeypatch.setenv(remediate.ONLY_ENV, f"fix_mlflow:{MLFLOW}")
    result = plan(mlflow="sigkill", record=record_of(f"fix_mlflow:{MLFLOW}", "2026-01-02T03:05:00.000000000Z"))
    assert names(result) == [f"MLflow container {MLFLOW}", RECORD_STEP]
    # the line left the logs' window: the watcher saw it, the run still happens
    monkeypatch.setenv(remediate.ONLY_ENV, f"backend_reload:{BACKEND}")
    assert names(plan()) == [f"Backend container {BACKEND}", RECORD_STEP]


@pytest.mark.parametrize("value, message", [
    ("cleanup:x", "unknown remediation 'cleanup'"),
    ("db_users", "is not <remediation>:<target>"),
    ("fix_mlflow:someone-else", "'someone-else' is not this host's mlflow container"),
])
def test_forced_mode_refuses_what_it_cannot_run(monkeypatch, value, message):
    monkeypatch.setenv(remediate.ONLY_ENV, value)
    with pytest.raises(OperationError, match=message):
        plan(mlflow="sigkill")


def test_forced_mode_never_creates_an_unlisted_role(monkeypatch, tmp_path):
    monkeypatch.setenv(remediate.ONLY_ENV, "db_users:analytics")
    result = plan(postgres="auth-analytics")
    assert result.steps == [(RECORD_STEP, [])] and result.noops == [NOTHING_RAN]
    [action] = report(tmp_path)["actions"]
    assert (action["key"], action["status"]) == ("db_users:analytics", "reported")
