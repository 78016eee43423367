"""tasks/checks/stack.py without an engine: settings, parsing, verdicts, the report, and the
checker driven through a fake shell (secrets never on a command line, skips with reasons, the
deadline)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from tasks.checks import stack as sc
from tasks.checks.runner import CheckResult, NotYet

LAB_LIKE = {
    "postgres": {"container": "p-postgres", "host": "127.0.0.1", "port": 5432, "superuser": "postgres",
                 "access": "docker"},
    "db_roles": [{"name": "quant_user", "password": {"env": "QU_PW"}, "login": True},
                 {"name": "reader", "password": {"env": "RD_PW"}, "login": False},
                 {"name": "gone", "password": {"env": "X"}, "present": False}],
    "db_grants": [{"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]}],
    "mlflow_defaults": {"workers": 2},
    "stack": {"services": {
        "postgres": {"container": "p-postgres"},
        "mlflow": {"container": "p-mlflow", "url": "http://127.0.0.1:15500"},
        "redis": {"container": "p-redis"},
        "s3": {"container": "p-minio", "url": "http://127.0.0.1:15503", "bucket": "mlflow-artifacts"},
        "backend": {"container": "p-backend", "url": "http://127.0.0.1:15504"},
    }},
}


# --- settings -----------------------------------------------------------------------------------

def test_settings_fill_postgres_roles_and_mlflow_workers_from_host_data():
    s = sc.stack_settings("h", LAB_LIKE, environ={})
    pg = s.services["postgres"]
    assert pg["access"] == "docker" and pg["superuser"] == "postgres"
    assert [(r.name, r.database) for r in pg["roles"]] == [("quant_user", "quant")]
    assert s.services["mlflow"]["workers"] == 2
    assert s.services["backend"]["db_path"] == "/health/db"
    assert s.services["s3"]["health_path"] == "/minio/health/live"
    assert s.deadline == sc.DEFAULTS["deadline"]


def test_group_defaults_then_host_override_and_env_override():
    data = {"stack_defaults": {"deadline": 100, "memory_warn_percent": 70},
            "stack": {"deadline": 30}}
    s = sc.stack_settings("h", data, environ={sc.REPORT_ENV: "/tmp/r.json", sc.LOGS_SINCE_ENV: "2h"})
    assert s.deadline == 30 and s.memory_warn_percent == 70
    assert s.report_path == "/tmp/r.json" and s.logs_since == "2h"


def test_every_problem_is_reported_at_once():
    data = {"stack": {"deadlin": 5, "memory_warn_percent": 99, "memory_fail_percent": 90,
                      "logs_since": "yesterday", "log_signatures": {"all": ".*"},
                      "services": {"postgress": {}, "redis": {"container": "bad name"},
                                   "backend": {"url": "ftp://x", "colour": 1},
                                   "postgres": {"container": "pg", "roles": [
                                       {"name": "quant_user", "password": "hunter2"}]}}}}
    with pytest.raises(sc.StackSettingsError) as exc:
        sc.stack_settings("h", data, environ={})
    text = str(exc.value)
    for needle in ("stack.deadlin: unknown setting", "above memory_fail_percent", "logs_since",
                   "log_signatures.all", "postgress: unknown service", "redis.container",
                   "backend.url", "backend.colour: unknown setting", "plaintext password is refused"):
        assert needle in text, needle
    assert "hunter2" not in text


def test_a_service_set_to_none_is_not_expected():
    s = sc.stack_settings("h", {"stack": {"services": {"redis": None}}}, environ={})
    assert "redis" not in s.services


def test_rfc3339_time_is_a_valid_since():
    s = sc.stack_settings("h", {"stack": {"logs_since": "2026-01-02T03:04:05Z"}}, environ={})
    assert s.logs_since.startswith("2026")


# --- pure helpers -------------------------------------------------------------------------------

def test_timed_wraps_in_coreutils_timeout():
    assert sc.timed("docker ps", 7) == "timeout -k 2 7 sh -c 'docker ps'"


def test_http_command_prefers_curl_and_falls_back_to_python():
    cmd = sc.http_command("GET", "http://127.0.0.1:1/health", 5)
    assert cmd.startswith("if command -v curl") and "-m 5" in cmd and "python3 -c" in cmd
    inside = sc.http_command("PUT", "http://127.0.0.1:5000/x", 5, "body", "text/plain", container="c")
    assert inside.startswith("docker exec c python3 -c") and "curl" not in inside


def test_parse_http():
    assert sc.parse_http(True, '{"a": 1}\nHTTP 200\n', 5) == (200, '{"a": 1}')
    assert sc.parse_http(True, "down\nHTTP 503", 5) == (503, "down")
    with pytest.raises(NotYet, match="no answer within 5s"):
        sc.parse_http(False, "curl: (28) Operation timed out after 5001 milliseconds with 0 bytes received\nHTTP 000", 5)
    with pytest.raises(NotYet, match="Connection refused"):
        sc.parse_http(False, "\nHTTP 000\ncurl: (7) Failed to connect to 127.0.0.1 port 1: Connection refused", 5)
    with pytest.raises(NotYet, match="timed out"):
        sc.parse_http(False, "", 5)  # killed by timeout(1): nothing at all


@pytest.mark.parametrize("text, value", [("369.1MiB", int(369.1 * 2**20)), ("1GiB", 2**30),
                                         ("512kB", 512000), ("0B", 0)])
def test_parse_size(text, value):
    assert sc.parse_size(text) == value


def test_memory_verdict():
    mib = 1 << 20
    assert sc.memory_verdict(100 * mib, 1024 * mib, 85, 95)[0] == "pass"
    assert sc.memory_verdict(368 * mib, 420 * mib, 85, 95) == ("warn", "368 MiB of 420 MiB (88%): above the 85% warning level")
    assert sc.memory_verdict(410 * mib, 420 * mib, 85, 95)[0] == "fail"
    assert sc.memory_verdict(5 * mib, 0, 85, 95) == ("pass", "5 MiB in use, no memory limit set")


def test_oom_kills_from_cgroup_v1_and_v2():
    assert sc.oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 49\n") == 49
    assert sc.oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n") == 2
    assert sc.oom_kills("") is None


def test_match_signatures_names_the_cause():
    lines = ["[ERROR] Worker (pid:711) was sent SIGKILL! Perhaps out of memory?",
             "[CRITICAL] WORKER TIMEOUT (pid:12)",
             'FATAL:  password authentication failed for user "quant_user"',
             "_rust_notify.WatchfilesRustInternalError: error in underlying watcher",
             "all good"]
    found = sc.match_signatures(lines, sc.SIGNATURES)
    assert set(found) == {"SIGKILL", "WORKER TIMEOUT", "password authentication failed",
                          "WatchfilesRustInternalError"}


def test_redact_and_error_text():
    assert sc.redact("pw=abc abcd", ["abc", "abcd"]) == "pw=*** ***"
    assert sc._error_text('{"database": "error", "error": "FATAL: nope"}') == "FATAL: nope"


def test_format_report_has_totals():
    results = [CheckResult("a", "t", "pass"), CheckResult("b", "t", "warn"),
               CheckResult("c", "t", "fail", evidence="why"), CheckResult("d", "-", "skip")]
    text = sc.format_report(results)
    assert text.splitlines()[0].startswith("CHECK")
    assert text.splitlines()[-1] == "totals: 1 pass, 1 warn, 1 fail, 1 skip (4 checks)"


def test_write_report_merges_hosts_of_one_run_and_replaces_older_runs(tmp_path):
    path = tmp_path / "r.json"
    one = sc.report_dict("h1", [CheckResult("a", "t", "pass")], 0, 1.0, 60)
    two = sc.report_dict("h2", [CheckResult("b", "t", "fail", evidence="x")], 0, 1.0, 60)
    sc.write_report(path, one, run_id="r1")
    sc.write_report(path, two, run_id="r1")
    report = json.loads(path.read_text())
    assert set(report["hosts"]) == {"h1", "h2"} and report["ok"] is False
    assert report["totals"]["fail"] == 1 and report["totals"]["hosts"] == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sc.write_report(path, one, run_id="r2")
    assert set(json.loads(path.read_text())["hosts"]) == {"h1"}


# --- the checker through a fake shell -------------------------------------------------------------

class FakeHost:
    """Answers the commands the checker sends, as a healthy lab host would."""

    def __init__(self, broken=()):
        self.commands: list[str] = []
        self.uploads: list[str] = []
        self.broken = set(broken)

    def run(self, command: str, timeout: int):
        self.commands.append(command)
        if "docker inspect" in command:
            name = command.rsplit(" ", 1)[-1].strip("'")
            if "absent" in self.broken and "redis" in name:
                return False, "Error: No such container: " + name
            state = {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z", "OOMKilled": False}
            return True, json.dumps([{"State": state, "RestartCount": 0, "HostConfig": {"Memory": 1 << 30},
                                      "Config": {"Image": "img"}, "Created": "2026"}])
        if "memory.events" in command:
            return True, "oom_kill 0\n"
        if "docker stats" in command:
            return True, "100MiB / 1GiB\n"
        if "pg_isready" in command:
            return True, "accepting connections"
        if "SELECT version()" in command:
            return True, "PostgreSQL 15"
        if "pg_stat_activity" in command:
            return True, "3|100|3\n"
        if "psql" in command and "current_user" in command:
            if "auth" in self.broken:
                return False, 'FATAL:  password authentication failed for user "quant_user"'
            return True, "quant_user"
        if "curl" in command:
            if "hang" in self.broken:
                return False, "curl: (28) Operation timed out after 1000 milliseconds with 0 bytes received\nHTTP 000"
            if "/health/db" in command:
                return True, '{"database":"ok"}\nHTTP 200\n'
            if "/health" in command:
                return True, "OK\nHTTP 200\n"
            if "experiments/search" in command:
                return True, '{"experiments": []}\nHTTP 200\n'
            if "experiments/create" in command:
                return True, '{"experiment_id": "7"}\nHTTP 200\n'
            if "runs/create" in command:
                return True, json.dumps({"run": {"info": {"run_id": "abc", "artifact_uri":
                                        "mlflow-artifacts:/7/abc/artifacts"}}}) + "\nHTTP 200\n"
            if "-X PUT" in command:
                self.artifact = command.split("--data-binary ")[1].split(" ")[0]
                return True, "{}\nHTTP 200\n"
            if "-X GET" in command and "verify.txt" in command:
                return True, self.artifact + "\nHTTP 200\n"
            return True, "{}\nHTTP 200\n"
        if "PROCESS" in command or "/proc" in command:
            return True, "1 0 /usr/bin/python mlflow server\n9 1 /venv/bin/gunicorn -w 2\n10 9 /venv/bin/gunicorn -w 2\n11 9 /venv/bin/gunicorn -w 2\n"
        if "redis-cli" in command:
            if "PING" in command:
                return True, "PONG\n"
            if " SET " in command:
                self.value = command.split(" SET ")[1].split(" ")[1]
                return True, "OK\n"
            if " GET " in command:
                return True, self.value + "\n"
            return True, "1\n"
        if "docker logs" in command:
            return True, "quantlab-logs-rc=0\n"
        return True, ""

    def put(self, content: str, path: str) -> bool:
        self.uploads.append(content)
        return True


def settings(**stack):
    data = {**LAB_LIKE, "stack": {**LAB_LIKE["stack"], "restart_window": 0, "retry_attempts": 2,
                                  "retry_seconds": 1, "retry_wait": 0, **stack}}
    return sc.stack_settings("h", data, environ={})


ENV = {"QU_PW": "s3cr3t-pw"}


def test_all_pass_on_a_healthy_host_and_the_password_never_on_a_command_line():
    fake = FakeHost()
    results = sc.run_stack_checks(sc.Shell(fake.run, fake.put), settings(), environ=ENV)
    bad = [(r.name, r.evidence) for r in results if r.status != "pass"]
    assert not bad
    names = [r.name for r in results]
    assert "role quant_user can log in" in names and "MLflow runs 2 workers" in names
    assert "MLflow stores and serves an artifact" in names
    assert not any("s3cr3t-pw" in c for c in fake.commands)
    assert any("s3cr3t-pw" in u for u in fake.uploads)
    # the private folder is removed by the command that uses it
    assert any("rm -rf /tmp/quant-verify-" in c for c in fake.commands)


def test_auth_failure_fails_with_evidence_and_no_secret():
    fake = FakeHost(broken={"auth"})
    results = sc.run_stack_checks(sc.Shell(fake.run, fake.put), settings(), environ=ENV)
    role = next(r for r in results if r.name == "role quant_user can log in")
    assert role.status == "fail" and "password authentication failed" in role.evidence
    assert role.attempts == 1  # Broken: no retries
    assert "s3cr3t-pw" not in json.dumps([r.__dict__ for r in results])


def test_unconfigured_services_and_absent_containers_are_skipped_with_a_reason():
    fake = FakeHost(broken={"absent"})
    only = {"services": {"redis": {"container": "p-redis"}}}
    results = sc.run_stack_checks(sc.Shell(fake.run, fake.put), settings(**only), environ=ENV)
    skipped = {r.name: r.evidence for r in results if r.status == "skip"}
    assert "not configured on this host" in skipped["postgres checks"]
    assert skipped["redis service checks"] == "skipped: container p-redis is absent"
    present = next(r for r in results if r.name == "container p-redis is present")
    assert present.status == "fail" and "does not exist" in present.evidence


def test_a_hanging_http_service_fails_within_the_policy():
    fake = FakeHost(broken={"hang"})
    results = sc.run_stack_checks(sc.Shell(fake.run, fake.put), settings(), environ=ENV)
    health = next(r for r in results if r.name == "backend /health answers")
    assert health.status == "fail" and "no answer within" in health.evidence
    assert health.attempts <= 2


def test_checks_after_the_deadline_are_failed_not_run():
    fake = FakeHost()
    checker = sc.StackChecker(sc.Shell(fake.run, fake.put), settings(), environ=ENV)
    checker.deadline = sc.Deadline(10, clock=iter([0, 100, 100, 100, 100] + [100] * 1000).__next__)
    result = checker.check("late", "t", lambda: "fine")
    assert result.status == "fail" and "deadline" in result.evidence


def test_deadline_clips_each_policy():
    ticks = iter([0.0, 55.0])
    deadline = sc.Deadline(60, clock=lambda: next(ticks))
    assert deadline.clip(sc.RetryPolicy(5, 20, 1)).seconds == 5


def test_warned_evidence_makes_a_warn():
    fake = FakeHost()
    checker = sc.StackChecker(sc.Shell(fake.run, fake.put), settings(), environ=ENV)
    assert checker.check("x", "t", lambda: sc.Warned("near the limit")).status == "warn"
