"""The signature catalog, matching, masking, throttling and the diagnosis fact's command and parsing."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tasks import settings
from tasks.core import signatures as diagnose
from tasks.core.remediation import decide, format_actions, updated_record
from tasks.core.signatures import load_catalog, mask_secrets, read_catalog
from tasks.facts.diagnose import HostDiagnosis
from tasks.operations.remediate import KNOWN, REMEDIATIONS
from tasks.settings import SettingsError
from tasks.settings.remediate import host_catalog

T0 = "2026-01-02T03:04:05.123456789Z"
SIGKILL = "[2026-01-02 03:04:05 +0000] [10] [ERROR] Worker (pid:711) was sent SIGKILL! Perhaps out of memory?"
AUTH = '2026-01-02 03:04:05.100 UTC [156] quant_user@quant FATAL:  password authentication failed for user "quant_user"'


def utc(text: str) -> dt.datetime:
    return diagnose.parse_time(text)


def entry(**overrides) -> dict:
    base = {"id": "x", "containers": ["mlflow"], "pattern": "boom", "severity": "error",
            "remediation": "fix_mlflow"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def catalog_text(*entries) -> str:
    return yaml.safe_dump({"signatures": list(entries)})


# -- catalog ---------------------------------------------------------------------------------------

def test_packaged_catalog_loads_and_covers_the_incident():
    catalog = {s.id: s for s in load_catalog()}
    assert catalog["mlflow-worker-sigkill"].regex.search(SIGKILL)
    assert catalog["mlflow-worker-timeout"].regex.search("[CRITICAL] WORKER TIMEOUT (pid:12)")
    assert catalog["backend-watchfiles-io-error"].regex.search(
        "_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
        "Input/output error (os error 5)")
    assert catalog["postgres-password-auth-failed"].regex.search(AUTH)["role"] == "quant_user"
    assert catalog["load-test-duplicate-user"].remediation == "none"
    assert catalog["load-test-duplicate-user"].severity == "info"
    assert catalog["mlflow-oom-killed"].state == "oom_killed"
    assert catalog["mlflow-worker-sigkill"].throttle == 1800


@pytest.mark.parametrize("bad, message", [
    (entry(id="bad-re", pattern="Worker (pid"), "signatures[0] 'bad-re': bad regex 'Worker (pid'"),
    (entry(id="no-fix", remediation="reboot"), "signatures[0] 'no-fix': unknown remediation 'reboot'"),
    (entry(id="no-sev", severity=None), "signatures[0] 'no-sev': missing 'severity'"),
    (entry(id=None), "signatures[0]: missing 'id'"),
    (entry(id="both", state="oom_killed"), "'both': give exactly one of 'pattern'"),
    (entry(id="every", pattern=".*"), "'every': pattern '.*' matches every line"),
    (entry(id="dbu", remediation="db_users"), "'dbu': remediation db_users needs a (?P<role>...) group"),
    (entry(id="thr", throttle="soon"), "'thr': throttle 'soon' is not a duration"),
    (entry(id="typo", severty="error"), "'typo': unknown key 'severty'"),
    (entry(id="st", pattern=None, state="exploded"), "'st': state 'exploded' is not one of"),
    (entry(id="sev", severity="fatal"), "'sev': severity 'fatal' is not one of"),
])
def test_malformed_entries_are_named(bad, message):
    with pytest.raises(ValueError) as error:
        load_catalog(text=catalog_text(bad))
    assert message in str(error.value)


def test_every_problem_is_reported_at_once_and_duplicates_refused():
    text = catalog_text(entry(id="a"), entry(id="a"), entry(id="b", remediation="nope"))
    signatures, problems = read_catalog(text=text)
    assert problems == [
        "signatures[1] 'a': id 'a' is used twice",
        "signatures[2] 'b': unknown remediation 'nope' (known: fix_mlflow, db_users, backend_reload, none)",
    ]


@pytest.mark.parametrize("text", ["", "signatures: []", "- a", "signatures: {}", "signatures: [:"])
def test_not_a_catalog(text):
    with pytest.raises(ValueError):
        load_catalog(text=text)
    assert read_catalog(text=text)[1]


def test_a_bad_catalog_file_is_a_settings_error_naming_host_file_and_entry(tmp_path):
    path = tmp_path / "signatures.yml"
    path.write_text(catalog_text(entry(id="ok"), entry(id="broken-regex", pattern="Worker (pid")))
    block = settings.load("remediate", "h1", {"catalog": str(path)})
    with pytest.raises(SettingsError) as error:
        host_catalog("h1", block)
    assert str(error.value).startswith(f"host 'h1': remediate.catalog {path}: signatures[1] 'broken-regex': "
                                       "bad regex 'Worker (pid'")
    missing = settings.load("remediate", "h1", {"catalog": str(tmp_path / "nope.yml")})
    with pytest.raises(SettingsError, match="cannot read it"):
        host_catalog("h1", missing)
    assert host_catalog("h1", settings.load("remediate", "h1", None)) == load_catalog()


def test_remediate_settings_keep_their_rules():
    ok = settings.load("remediate", "h", {"since": "2026-01-02T03:04:05Z", "tail": 10})
    assert ok.since == "2026-01-02T03:04:05Z" and ok.tail == 10
    assert settings.load("remediate", "h", {"since": "90 minutes"}).since == "90m"
    with pytest.raises(SettingsError) as error:
        settings.load("remediate", "h", {"since": "soon", "tail": 0, "record_path": "relative.json",
                                         "containers": {"mlflow": "bad name"}, "colour": 1})
    text = str(error.value)
    for needle in ("remediate.since:", "remediate.tail: must be >= 1", "remediate.record_path:",
                   "remediate.containers.mlflow:", "remediate.colour: unknown setting"):
        assert needle in text, needle


def test_the_registry_is_what_the_catalog_may_name():
    assert KNOWN == diagnose.REMEDIATIONS and set(REMEDIATIONS) == set(diagnose.REMEDIATIONS) - {"none"}


def test_throttle_is_a_duration():
    [sig] = load_catalog(text=catalog_text(entry(throttle="90 minutes")))
    assert sig.throttle == 5400


# -- masking ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, secret", [
    ("connecting to postgresql://mlflow:s3cr3tPw@db:5432/mlflow", "s3cr3tPw"),
    ("redis://:hunter2@redis:6379/0 refused", "hunter2"),
    ("password=hunter2 host=db", "hunter2"),
    ('{"token": "abc123def456"}', "abc123def456"),
    ("Authorization: Bearer abcdefghijkl.mnop", "abcdefghijkl.mnop"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG"),
    ("GET /x?X-Amz-Signature=deadbeefcafe&x=1", "deadbeefcafe"),
    ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4", "SflKxwRJSMeKKF2QT4"),
])
def test_secrets_are_masked(line, secret):
    masked = mask_secrets(line)
    assert secret not in masked and "***" in masked


def test_ordinary_lines_are_not_masked():
    for line in (AUTH, SIGKILL, "WARNING:  Username already exists: concurrent_1762917765"):
        assert mask_secrets(line) == line


# -- matching --------------------------------------------------------------------------------------

def test_log_lines_become_findings_with_timestamp_container_and_params():
    catalog = load_catalog()
    lines = [f"{T0} {SIGKILL}", f"{T0} all good", "no timestamp WORKER TIMEOUT (pid:3)"]
    findings = diagnose.match_lines(catalog, "mlflow", "q-mlflow", lines)
    assert [(f.signature, f.container, f.timestamp) for f in findings] == [
        ("mlflow-worker-sigkill", "q-mlflow", T0), ("mlflow-worker-timeout", "q-mlflow", None)]
    auth = diagnose.match_lines(catalog, "postgres", "q-pg", [f"{T0} {AUTH}"])
    assert auth[0].params == {"role": "quant_user"} and auth[0].remediation == "db_users"
    # A signature only reads its own containers: in redis the same line is only the general one.
    [general] = diagnose.match_lines(catalog, "redis", "q-redis", [f"{T0} {SIGKILL}"])
    assert (general.signature, general.remediation) == ("process-sigkill", "none")
    # A line counts once, for the first entry matching it: the fix, not also the general report.
    assert [f.signature for f in diagnose.match_lines(catalog, "mlflow", "m", [f"{T0} {SIGKILL}"])] == \
        ["mlflow-worker-sigkill"]


def test_evidence_is_masked():
    catalog = load_catalog(text=catalog_text(entry(id="conn", pattern="could not connect")))
    [finding] = diagnose.match_lines(catalog, "mlflow", "m",
                                     [f"{T0} could not connect to postgresql://u:pw123456@db/x"])
    assert "pw123456" not in finding.evidence and "postgresql://u:***@db/x" in finding.evidence


def test_state_findings():
    catalog = load_catalog()
    oom = diagnose.match_state(catalog, "mlflow", "m", {"OOMKilled": True, "Status": "exited",
                                                       "ExitCode": 137, "FinishedAt": T0}, 0)
    assert [(f.signature, f.timestamp, f.source) for f in oom] == [("mlflow-oom-killed", T0, "state")]
    loop = diagnose.match_state(catalog, "postgres", "p", {"Status": "running", "StartedAt": T0}, 5)
    assert [(f.signature, f.remediation) for f in loop] == [("service-restart-loop", "none")]
    assert diagnose.match_state(catalog, "mlflow", "m", {"Status": "running"}, 2) == []


# -- decisions -------------------------------------------------------------------------------------

def findings_at(*stamps, line=SIGKILL, role="mlflow", container="q-mlflow"):
    catalog = load_catalog()
    return [f for s in stamps for f in diagnose.match_lines(catalog, role, container, [f"{s} {line}"])]


def test_no_record_runs_the_remediation_once_per_target():
    found = findings_at("2026-01-02T03:00:00Z", "2026-01-02T03:01:00Z")
    [action] = decide(found, load_catalog(), None, utc("2026-01-02T03:02:00Z"))
    assert (action.status, action.key, len(action.findings)) == ("run", "fix_mlflow:q-mlflow", 2)


def test_lines_before_the_last_run_are_handled():
    record = {"runs": {"fix_mlflow:q-mlflow": {"ran_at": "2026-01-02T03:05:00.000000001Z"}}}
    found = findings_at("2026-01-02T03:00:00Z", "2026-01-02T03:04:59.999Z")
    [action] = decide(found, load_catalog(), record, utc("2026-01-02T03:06:00Z"))
    assert action.status == "handled" and action.handled == 2 and action.findings == []


def test_fresh_lines_within_the_window_are_throttled_then_run_after_it():
    record = {"runs": {"fix_mlflow:q-mlflow": {"ran_at": "2026-01-02T03:05:00Z"}}}
    found = findings_at("2026-01-02T03:00:00Z", "2026-01-02T03:06:00Z")
    [action] = decide(found, load_catalog(), record, utc("2026-01-02T03:10:00Z"))
    assert action.status == "throttled" and len(action.findings) == 1 and action.handled == 1
    assert action.throttled_until == "2026-01-02T03:35:00.000000Z"
    assert "throttled" in action.reason
    [later] = decide(found, load_catalog(), record, utc("2026-01-02T03:36:00Z"))
    assert later.status == "run" and "since its last run" in later.reason


def test_unknown_role_is_reported_never_created():
    found = findings_at("2026-01-02T03:00:00Z", line=AUTH.replace('"quant_user"', '"mallory"'),
                        role="postgres", container="q-pg")
    [action] = decide(found, load_catalog(), None, utc("2026-01-02T03:01:00Z"), ["quant_user"])
    assert action.status == "reported" and "never created" in action.reason
    [known] = decide(findings_at("2026-01-02T03:00:00Z", line=AUTH, role="postgres", container="q-pg"),
                     load_catalog(), None, utc("2026-01-02T03:01:00Z"), ["quant_user"])
    assert (known.status, known.key) == ("run", "db_users:quant_user")


def test_same_role_from_two_containers_is_one_action():
    catalog = load_catalog()
    found = (diagnose.match_lines(catalog, "postgres", "q-pg", [f"{T0} {AUTH}"])
             + diagnose.match_lines(catalog, "backend", "q-be", [f"{T0} failed: FATAL:  {AUTH[40:]}"]))
    actions = decide(found, catalog, None, utc("2026-01-02T04:00:00Z"), ["quant_user"])
    assert [(a.key, len(a.findings)) for a in actions] == [("db_users:quant_user", 2)]


def test_informational_is_reported_without_action():
    found = findings_at(T0, line="WARNING:  Username already exists: concurrent_1", role="backend",
                        container="q-be")
    [action] = decide(found, load_catalog(), None, utc("2026-01-02T04:00:00Z"))
    assert action.status == "informational" and action.remediation == "none"


def test_record_update_keeps_other_entries():
    [action] = decide(findings_at(T0), load_catalog(), None, utc("2026-01-02T04:00:00Z"))
    old = {"version": 1, "runs": {"db_users:quant_user": {"ran_at": T0}}}
    new = updated_record(old, [action], "2026-01-02T04:00:01Z", "verified")
    assert set(new["runs"]) == {"db_users:quant_user", "fix_mlflow:q-mlflow"}
    assert new["runs"]["fix_mlflow:q-mlflow"]["ran_at"] == "2026-01-02T04:00:01Z"
    assert old["runs"].keys() == {"db_users:quant_user"}


def test_format_shows_evidence_lines():
    actions = decide(findings_at(T0, "2026-01-02T03:04:06Z"), load_catalog(), None,
                     utc("2026-01-02T04:00:00Z"))
    text = "\n".join(format_actions(actions))
    assert "-> fix_mlflow" in text and f"{T0} q-mlflow: {SIGKILL}" in text


# -- the fact --------------------------------------------------------------------------------------

def test_fact_command_is_one_bounded_read_only_round_trip():
    command = HostDiagnosis().command(("q-mlflow", "q pg"), "2h", 500, "/var/lib/quantlab/r.json")
    assert command.count("docker logs --timestamps --since 2h --tail 500") == 2
    assert "'q pg'" in command and "cat /var/lib/quantlab/r.json" in command
    for verb in ("rm ", "restart", "docker run", "docker stop", ">"):
        assert verb not in command.replace("2>&1", "").replace("2>/dev/null", "")


def test_fact_output_is_parsed():
    s = diagnose.SECTION
    output = [f"{s}state q-mlflow",
              '{"Status":"running","OOMKilled":false,"StartedAt":"' + T0 + '"} 4',
              f"{s}logs q-mlflow", f"{T0} {SIGKILL}",
              f"{s}state q-gone", "missing", f"{s}logs q-gone", "Error: No such container: q-gone",
              f"{s}record", '{"version": 1, "runs": {}}',
              f"{s}now", "2026-01-02T04:00:00.000000000Z"]
    parsed = diagnose.parse_diagnosis_output(output)
    assert parsed["containers"]["q-mlflow"]["restart_count"] == 4
    assert parsed["containers"]["q-mlflow"]["lines"] == [f"{T0} {SIGKILL}"]
    assert parsed["containers"]["q-gone"]["exists"] is False
    assert parsed["record"] == {"version": 1, "runs": {}}
    assert parsed["now"] == "2026-01-02T04:00:00.000000000Z"
    broken = diagnose.parse_diagnosis_output([f"{s}record", "{not json", f"{s}now", T0])
    assert broken["record"] is None and "unreadable" in broken["record_error"]


def run_record_read(record_path: str, as_nobody: bool = False) -> dict:
    """The fact's command for no container (its record and clock parts) run by /bin/sh, parsed."""
    command = HostDiagnosis().command((), "2h", 10, record_path)
    argv = ["/bin/sh", "-c", command]
    if as_nobody:
        argv = ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return diagnose.parse_diagnosis_output(done.stdout.splitlines())


def test_a_missing_record_is_no_record_and_one_there_is_read(tmp_path):
    for missing in (tmp_path / "none.json", tmp_path / "no-folder" / "none.json"):
        parsed = run_record_read(str(missing))
        assert parsed["record"] is None and not parsed["record_unreadable"]
    (tmp_path / "r.json").write_text('{"version": 1, "runs": {}}\n')
    parsed = run_record_read(str(tmp_path / "r.json"))
    assert parsed["record"] == {"version": 1, "runs": {}} and not parsed["record_unreadable"]
    assert parsed["now"]


def test_a_record_that_is_there_but_cannot_be_read_is_said_so_never_taken_for_none(tmp_path):
    (tmp_path / "a-folder.json").mkdir()  # cat cannot read it, yet it is there
    assert run_record_read(str(tmp_path / "a-folder.json"))["record_unreadable"]
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("root without runuser: a permission cannot be denied here")
    top = Path(tempfile.mkdtemp(prefix="quant-record-", dir="/tmp"))
    try:
        top.chmod(0o755)
        (top / "r.json").write_text("{}")
        (top / "r.json").chmod(0o000)  # the file: no read
        (top / "closed").mkdir(mode=0o700)
        (top / "closed" / "r.json").write_text("{}")
        (top / "closed").chmod(0o600)  # a folder on its way: no search
        for path in (top / "r.json", top / "closed" / "r.json"):
            parsed = run_record_read(str(path), as_nobody=True)
            assert parsed["record_unreadable"] and parsed["record"] is None, path
    finally:
        (top / "closed").chmod(0o700)
        shutil.rmtree(top)


def test_times():
    assert utc("0001-01-01T00:00:00Z") is None and utc("") is None and utc("garbage") is None
    assert utc(T0) == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert utc("2026-01-02T05:04:05+02:00") == utc("2026-01-02T03:04:05Z")
