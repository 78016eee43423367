"""The whole-stack checks without an engine: settings, parsing, verdicts, the report, and the
checks driven through a fake shell (secrets never on a command line, skips with reasons, the
deadline)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from tasks.checks import stack as sc
from tasks.checks.containers import cgroup_memory, memory_verdict, oom_kills, stats_size
from tasks.checks.http import error_text, http_command, parse_http
from tasks.checks.logs import grep_pattern, logs_command
from tasks.checks.report import format_report, report_dict, write_report
from tasks.checks.runner import CheckResult, Deadline, NotYet, RetryPolicy, Session, Warned, redact
from tasks.checks.shell import Shell, timed
from tasks.core.signatures import load_catalog, log_patterns, match_signatures
from tasks.settings import SettingsError
from tasks.settings.stack import LOGS_SINCE_ENV, REPORT_ENV, StackSettings

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
# The db block reads each password source when it is validated.
SOURCES = {"QU_PW": "s3cr3t-pw", "RD_PW": "other-pw", "X": "gone-pw"}


class DataHost:
    """What the settings layer reads of a pyinfra host: its name and data."""

    def __init__(self, data: dict, name: str = "h"):
        self.name, self.data = name, data


@pytest.fixture(autouse=True)
def _sources(monkeypatch):
    for name, value in SOURCES.items():
        monkeypatch.setenv(name, value)


def stack_settings(data: dict, environ: dict | None = None) -> StackSettings:
    return sc.host_stack_settings(DataHost(data), environ={} if environ is None else environ)


# --- settings -----------------------------------------------------------------------------------

def test_settings_fill_postgres_roles_and_mlflow_workers_from_host_data():
    s = stack_settings(LAB_LIKE)
    pg = s.services.postgres
    assert pg.access == "docker" and pg.superuser == "postgres"
    assert [(r.name, r.database) for r in pg.roles] == [("quant_user", "quant")]
    assert s.services.mlflow.workers == 2
    assert s.services.backend.db_path == "/health/db"
    assert s.services.s3.health_path == "/minio/health/live"
    assert s.deadline == 240


def test_mlflow_workers_come_from_the_mlflow_block():
    data = {**LAB_LIKE, "mlflow_defaults": None, "mlflow": {"workers": 3}}
    assert stack_settings(data).services.mlflow.workers == 3
    own = {**data, "stack": {"services": {"mlflow": {"container": "ml", "workers": 5}}}}
    assert stack_settings(own).services.mlflow.workers == 5


def test_group_defaults_then_host_override_and_env_override():
    data = {"stack_defaults": {"deadline": 100, "memory_warn_percent": 70},
            "stack": {"deadline": "30s"}}
    s = stack_settings(data, environ={REPORT_ENV: "/tmp/r.json", LOGS_SINCE_ENV: "2h"})
    assert s.deadline == 30 and s.memory_warn_percent == 70
    assert s.report_path == "/tmp/r.json" and s.logs_since == "2h"
    with pytest.raises(SettingsError, match=LOGS_SINCE_ENV):
        stack_settings(data, environ={LOGS_SINCE_ENV: "yesterday"})


def test_every_problem_is_reported_at_once():
    data = {"stack": {"deadlin": 5, "memory_warn_percent": 99, "memory_fail_percent": 90,
                      "logs_since": "yesterday", "log_signatures": {"all": ".*"},
                      "services": {"postgress": {}, "redis": {"container": "bad name"},
                                   "backend": {"url": "ftp://x", "colour": 1},
                                   "postgres": {"container": "pg", "roles": [
                                       {"name": "quant_user", "password": "hunter2"}]}}}}
    with pytest.raises(SettingsError) as exc:
        stack_settings(data)
    text = str(exc.value)
    for needle in ("stack.deadlin: unknown setting; did you mean 'deadline'?",
                   "stack.memory_fail_percent: memory_warn_percent (99) is above memory_fail_percent (90)",
                   "stack.logs_since: 'yesterday' is neither a duration",
                   "stack.log_signatures.all: bad pattern", "stack.services.postgress: unknown setting",
                   "stack.services.redis.container", "stack.services.backend.url",
                   "stack.services.backend.colour: unknown setting",
                   "stack.services.postgres.roles[0].password: must be"):
        assert needle in text, needle
    assert "hunter2" not in text
    assert all(line.startswith("host 'h': stack.") for line in text.splitlines())


def test_a_service_set_to_none_or_false_is_not_expected():
    s = stack_settings({"stack": {"services": {"redis": None, "s3": False}}})
    assert s.services.redis is None and s.services.s3 is None


def test_a_web_service_needs_a_container_or_a_url():
    with pytest.raises(SettingsError, match="stack.services.backend: needs a container or a url"):
        stack_settings({"stack": {"services": {"backend": {"health_path": "/x"}}}})


def test_psql_access_needs_host_and_port_and_docker_access_a_container():
    with pytest.raises(SettingsError, match="psql access needs host and port"):
        stack_settings({"stack": {"services": {"postgres": {"access": "psql", "roles": []}}}})
    with pytest.raises(SettingsError, match="docker access needs a container"):
        stack_settings({"stack": {"services": {"postgres": {"roles": []}}}})


def test_since_is_a_duration_in_dockers_words_or_an_rfc3339_time():
    assert stack_settings({"stack": {"logs_since": "2026-01-02T03:04:05Z"}}).logs_since.startswith("2026")
    for given, docker in (("15m", "15m"), ("1 hour", "1h"), (90, "90s"), ("1d", "24h"), ("500ms", "500ms")):
        assert stack_settings({"stack": {"logs_since": given}}).logs_since == docker, given


# --- pure helpers -------------------------------------------------------------------------------

def test_timed_wraps_in_coreutils_timeout():
    assert timed("docker ps", 7) == "timeout -k 2 7 sh -c 'docker ps'"


def test_http_command_prefers_curl_and_falls_back_to_python():
    cmd = http_command("GET", "http://127.0.0.1:1/health", 5)
    assert cmd.startswith("if command -v curl") and "-m 5" in cmd and "python3 -c" in cmd
    inside = http_command("PUT", "http://127.0.0.1:5000/x", 5, "body", "text/plain", container="c")
    assert inside.startswith("docker exec c python3 -c") and "curl" not in inside


def test_parse_http():
    assert parse_http(True, '{"a": 1}\nHTTP 200\n', 5) == (200, '{"a": 1}')
    assert parse_http(True, "down\nHTTP 503", 5) == (503, "down")
    with pytest.raises(NotYet, match="no answer within 5s"):
        parse_http(False, "curl: (28) Operation timed out after 5001 milliseconds with 0 bytes received\nHTTP 000", 5)
    with pytest.raises(NotYet, match="Connection refused"):
        parse_http(False, "\nHTTP 000\ncurl: (7) Failed to connect to 127.0.0.1 port 1: Connection refused", 5)
    with pytest.raises(NotYet, match="timed out"):
        parse_http(False, "", 5)  # killed by timeout(1): nothing at all


@pytest.mark.parametrize("text, value", [("369.1MiB", int(369.1 * 2**20)), ("1GiB", 2**30),
                                         ("512kB", 512000), ("0B", 0)])
def test_stats_size(text, value):
    assert stats_size(text) == value


def test_memory_verdict():
    mib = 1 << 20
    assert memory_verdict(100 * mib, 1024 * mib, 85, 95)[0] == "pass"
    assert memory_verdict(368 * mib, 420 * mib, 85, 95) == ("warn", "368 MiB of 420 MiB (88%): above the 85% warning level")
    assert memory_verdict(410 * mib, 420 * mib, 85, 95)[0] == "fail"
    assert memory_verdict(5 * mib, 0, 85, 95) == ("pass", "5 MiB in use, no memory limit set")


def test_cgroup_memory_counts_as_docker_stats_does():
    mib = 1 << 20
    # v2: memory.current less inactive_file; "max" is no limit
    assert cgroup_memory(f"v2\n{300 * mib}\n{1024 * mib}\ninactive_file {20 * mib}\n") == (280 * mib, 1024 * mib)
    assert cgroup_memory(f"v2\n{300 * mib}\nmax\ninactive_file 0\n") == (300 * mib, None)
    # v1: usage_in_bytes less total_inactive_file; no stat line: nothing subtracted
    assert cgroup_memory(f"v1\n{300 * mib}\n{512 * mib}\ntotal_inactive_file {100 * mib}\n") == (200 * mib, 512 * mib)
    assert cgroup_memory(f"v2\n{300 * mib}\n{512 * mib}\n") == (300 * mib, 512 * mib)
    # v1 shows no limit as its largest value
    assert cgroup_memory(f"v1\n{300 * mib}\n9223372036854771712\ntotal_inactive_file 0\n") == (300 * mib, None)
    # neither layout (the command printed nothing), or an error text: not a reading
    for text in ("", "OCI runtime exec failed: exec: \"sh\": not found", "v2\nmax\nmax\n"):
        assert cgroup_memory(text) is None


def test_oom_kills_from_cgroup_v1_and_v2():
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 49\n") == 49
    assert oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n") == 2
    assert oom_kills("") is None


INCIDENT_LINES = ["[ERROR] Worker (pid:711) was sent SIGKILL! Perhaps out of memory?",
                  "[CRITICAL] WORKER TIMEOUT (pid:12)",
                  'FATAL:  password authentication failed for user "quant_user"',
                  "_rust_notify.WatchfilesRustInternalError: error in underlying watcher",
                  "all good"]


def test_the_catalog_names_the_cause_in_any_service():
    """What verify_stack searched every container for before the catalog was one: still found."""
    catalog = load_catalog()
    for role in ("postgres", "mlflow", "redis", "s3", "backend"):
        found = match_signatures(INCIDENT_LINES, log_patterns(catalog, role))
        assert len(found) == 4 and sum(len(v) for v in found.values()) == 4, (role, found)
    mlflow = match_signatures(INCIDENT_LINES, log_patterns(catalog, "mlflow"))
    assert set(mlflow) == {"mlflow-worker-sigkill", "mlflow-worker-timeout", "password-auth-failed",
                           "watchfiles-error"}
    # informational signatures are no failure; extra ones apply to every container
    assert "load-test-duplicate-user" not in log_patterns(catalog, "backend")
    assert log_patterns(catalog, None, {"mine": "boom"}) == {"mine": "boom"}


def test_the_host_side_filter_is_the_catalogs_regexes_for_grep_p(tmp_path):
    patterns = log_patterns(load_catalog(), "postgres", {"again": "(?P<role>x)y"})
    command = logs_command("c", "15m", patterns)
    assert "grep -a -P" in command and "?P<" not in grep_pattern(patterns)
    assert grep_pattern({}) == "^quantlab-logs-rc="
    # the filter keeps every line Python matches (grep -P understands the same regexes)
    import subprocess
    lines = "\n".join(INCIDENT_LINES + ["quantlab-logs-rc=0"]) + "\n"
    out = subprocess.run(["grep", "-a", "-P", grep_pattern(patterns)], input=lines, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == INCIDENT_LINES[:4] + ["quantlab-logs-rc=0"]


def test_redact_and_error_text():
    assert redact("pw=abc abcd", ["abc", "abcd"]) == "pw=*** ***"
    assert error_text('{"database": "error", "error": "FATAL: nope"}') == "FATAL: nope"


def test_format_report_has_totals():
    results = [CheckResult("a", "t", "pass"), CheckResult("b", "t", "warn"),
               CheckResult("c", "t", "fail", evidence="why"), CheckResult("d", "-", "skip")]
    text = format_report(results)
    assert text.splitlines()[0].startswith("CHECK")
    assert text.splitlines()[-1] == "totals: 1 pass, 1 warn, 1 fail, 1 skip (4 checks)"


def test_write_report_merges_hosts_of_one_run_and_replaces_older_runs(tmp_path):
    path = tmp_path / "r.json"
    one = report_dict("h1", [CheckResult("a", "t", "pass")], 0, 1.0, 60)
    two = report_dict("h2", [CheckResult("b", "t", "fail", evidence="x")], 0, 1.0, 60)
    write_report(path, one, run_id="r1")
    write_report(path, two, run_id="r1")
    report = json.loads(path.read_text())
    assert set(report["hosts"]) == {"h1", "h2"} and report["ok"] is False
    assert report["totals"]["fail"] == 1 and report["totals"]["hosts"] == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    write_report(path, one, run_id="r2")
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
        if "memory.current" in command and "cgroup" not in self.broken:
            return True, f"v2\n{110 << 20}\n{1 << 30}\ninactive_file {10 << 20}\n"
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
            if "sigkill" in self.broken and "p-mlflow" in command:
                return True, ("[ERROR] Worker (pid:711) was sent SIGKILL! Perhaps out of memory?\n"
                              "quantlab-logs-rc=0\n")
            return True, "quantlab-logs-rc=0\n"
        return True, ""

    def put(self, content: str, path: str) -> bool:
        self.uploads.append(content)
        return True


def settings(**stack):
    data = {**LAB_LIKE, "stack": {**LAB_LIKE["stack"], "restart_window": 0, "retry_attempts": 2,
                                  "retry_seconds": 1, "retry_wait": 0, **stack}}
    return stack_settings(data)


ENV = {"QU_PW": "s3cr3t-pw"}


def run(fake, settings_):
    return sc.run_stack_checks(Shell(fake.run, fake.put), settings_, environ=ENV)


def test_all_pass_on_a_healthy_host_and_the_password_never_on_a_command_line():
    fake = FakeHost()
    results = run(fake, settings())
    bad = [(r.name, r.evidence) for r in results if r.status != "pass"]
    assert not bad
    names = [r.name for r in results]
    assert "role quant_user can log in" in names and "MLflow runs 2 workers" in names
    assert "MLflow stores and serves an artifact" in names
    assert "container p-postgres logs show no known failure" in names
    assert not any("s3cr3t-pw" in c for c in fake.commands)
    assert any("s3cr3t-pw" in u for u in fake.uploads)
    # the private folder is removed by the command that uses it
    assert any("rm -rf /tmp/quant-verify-" in c for c in fake.commands)


def test_a_known_failure_line_in_the_logs_fails_naming_it():
    fake = FakeHost(broken={"sigkill"})
    results = run(fake, settings())
    logs = next(r for r in results if r.name == "container p-mlflow logs show no known failure")
    assert logs.status == "fail" and "1x mlflow-worker-sigkill" in logs.evidence
    assert "since 15m" in logs.evidence
    assert any("docker logs --since 15m p-mlflow" in c for c in fake.commands)


def test_auth_failure_fails_with_evidence_and_no_secret():
    fake = FakeHost(broken={"auth"})
    results = run(fake, settings())
    role = next(r for r in results if r.name == "role quant_user can log in")
    assert role.status == "fail" and "password authentication failed" in role.evidence
    assert role.attempts == 1  # Broken: no retries
    assert "s3cr3t-pw" not in json.dumps([r.__dict__ for r in results])


def test_unconfigured_services_and_absent_containers_are_skipped_with_a_reason():
    fake = FakeHost(broken={"absent"})
    only = {"services": {"redis": {"container": "p-redis"}}}
    results = run(fake, settings(**only))
    skipped = {r.name: r.evidence for r in results if r.status == "skip"}
    assert "not configured on this host" in skipped["postgres checks"]
    assert skipped["redis service checks"] == "skipped: container p-redis is absent"
    present = next(r for r in results if r.name == "container p-redis is present")
    assert present.status == "fail" and "does not exist" in present.evidence


def test_a_hanging_http_service_fails_within_the_policy():
    fake = FakeHost(broken={"hang"})
    results = run(fake, settings())
    health = next(r for r in results if r.name == "backend /health answers")
    assert health.status == "fail" and "no answer within" in health.evidence
    assert health.attempts <= 2


def test_checks_after_the_deadline_are_failed_not_run():
    fake = FakeHost()
    session = Session(Shell(fake.run, fake.put), deadline=10, environ=ENV)
    session.deadline = Deadline(10, clock=iter([0, 100, 100, 100, 100] + [100] * 1000).__next__)
    result = session.check("late", "t", lambda: "fine")
    assert result.status == "fail" and "deadline" in result.evidence


def test_deadline_clips_each_policy():
    ticks = iter([0.0, 55.0])
    deadline = Deadline(60, clock=lambda: next(ticks))
    assert deadline.clip(RetryPolicy(5, 20, 1)).seconds == 5


def test_warned_evidence_makes_a_warn():
    fake = FakeHost()
    session = Session(Shell(fake.run, fake.put), environ=ENV)
    assert session.check("x", "t", lambda: Warned("near the limit")).status == "warn"


class RestartingHost(FakeHost):
    """A container Docker keeps restarting: its restart count goes up by one per inspect."""

    def __init__(self, oom: bool, counts: list[int]):
        super().__init__()
        self.oom, self.counts = oom, iter(counts)

    def run(self, command: str, timeout: int):
        if "docker inspect" in command:
            self.commands.append(command)
            state = {"Status": "restarting", "Restarting": True, "ExitCode": 137, "OOMKilled": self.oom}
            return True, json.dumps([{"State": state, "RestartCount": next(self.counts),
                                      "HostConfig": {"Memory": 1 << 26}, "Config": {"Image": "img"},
                                      "Created": "2026"}])
        return super().run(command, timeout)


@pytest.mark.parametrize("oom, counts, attempts", [
    (True, [1, 1, 1], 1),    # restarting after an OOM kill: a crash loop at once
    (False, [0, 0, 1, 1], 2),  # a restart seen during the check: a crash loop on the next look
])
def test_a_crash_looping_container_fails_without_waiting_out_its_budget(oom, counts, attempts):
    from tasks.checks.containers import container_checks

    fake = RestartingHost(oom, counts + [counts[-1]] * 50)
    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(60, 60.0, 0.01), environ=ENV)
    assert not container_checks(session, "qt-mlflow", 85, 95)
    running = next(r for r in session.results if r.name.endswith("running"))
    assert running.status == "fail" and "crash loop" in running.evidence
    assert running.attempts == attempts


def test_one_restart_without_an_oom_kill_is_waited_for():
    from tasks.checks.containers import container_checks

    fake = RestartingHost(False, [0] * 60)
    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(3, 5.0, 0.01), environ=ENV)
    container_checks(session, "qt-mlflow", 85, 95)
    running = next(r for r in session.results if r.name.endswith("running"))
    assert running.status == "fail" and "crash loop" not in running.evidence
    assert running.attempts == 3


class OomLoopHost(FakeHost):
    """A fresh container with a healthcheck: running at first, then restarting after OOM kills."""

    def __init__(self):
        super().__init__()
        self.inspects = 0

    def run(self, command: str, timeout: int):
        if "docker inspect" in command:
            self.commands.append(command)
            self.inspects += 1
            looping = self.inspects > 3
            state = {"Status": "restarting" if looping else "running", "Restarting": looping,
                     "ExitCode": 137 if looping else 0, "OOMKilled": looping,
                     "StartedAt": "2026-01-01T00:00:00Z", "Health": {"Status": "starting", "Log": []}}
            return True, json.dumps([{"State": state, "RestartCount": 1 if looping else 0,
                                      "HostConfig": {"Memory": 1 << 26}, "Config": {"Image": "img"},
                                      "Created": "2026"}])
        return super().run(command, timeout)


def test_a_container_that_starts_crash_looping_fails_health_at_once_and_skips_its_service():
    from tasks.checks.mlflow import check_mlflow
    from tasks.settings.stack import MlflowService

    fake = OomLoopHost()
    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(60, 60.0, 0.01), environ=ENV)
    check_mlflow(session, MlflowService(container="qt-mlflow", container_port=5000, workers=2,
                                        artifacts=False))
    by_name = {r.name: r for r in session.results}
    healthy = by_name["container qt-mlflow is healthy"]
    assert healthy.status == "fail" and "crash loop" in healthy.evidence and healthy.attempts <= 2
    skipped = by_name["mlflow service checks"]
    assert skipped.status == "skip" and "crash-looping" in skipped.evidence
    assert not any("/health" in r.name for r in session.results)


def _memory_check(fake):
    from tasks.checks.containers import container_checks

    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(2, 5.0, 0.01), environ=ENV)
    container_checks(session, "qt-mlflow", 85, 95)
    return next(r for r in session.results if r.name.endswith("memory is below its limit"))


def test_memory_is_read_from_the_containers_cgroup_in_one_exec():
    fake = FakeHost()
    memory = _memory_check(fake)
    assert memory.status == "pass" and memory.evidence == "100 MiB of 1024 MiB (10%)"
    assert not any("docker stats" in c for c in fake.commands)


class ForeignCgroupHost(FakeHost):
    """The container sees a cgroup that is not its own (a host cgroup namespace): its limit is
    not the container's."""

    def run(self, command: str, timeout: int):
        if "memory.current" in command:
            self.commands.append(command)
            return True, f"v2\n{9 << 30}\nmax\ninactive_file 0\n"
        return super().run(command, timeout)


@pytest.mark.parametrize("fake", [FakeHost(broken={"cgroup"}), ForeignCgroupHost()], ids=["unreadable", "foreign"])
def test_memory_falls_back_to_docker_stats_when_the_cgroup_is_not_the_containers(fake):
    memory = _memory_check(fake)
    assert memory.status == "pass" and memory.evidence == "100 MiB of 1024 MiB (10%)"
    assert any("docker stats" in c for c in fake.commands)


class FullHost(FakeHost):
    """Its container uses ``mib`` of its 1 GiB limit, by the cgroup and by `docker stats`."""

    def __init__(self, mib, broken=()):
        super().__init__(broken)
        self.mib = mib

    def run(self, command: str, timeout: int):
        if "memory.current" in command and "cgroup" not in self.broken:
            self.commands.append(command)
            return True, f"v2\n{self.mib << 20}\n{1 << 30}\ninactive_file 0\n"
        if "docker stats" in command:
            self.commands.append(command)
            return True, f"{self.mib}MiB / 1GiB\n"
        return super().run(command, timeout)


@pytest.mark.parametrize("broken", [(), ("cgroup",)], ids=["cgroup", "docker-stats"])
@pytest.mark.parametrize("mib, status, evidence", [
    (900, "warn", "900 MiB of 1024 MiB (88%): above the 85% warning level"),
    (1000, "fail", "1000 MiB of 1024 MiB (98%): at or above 95% of the limit"),
])
def test_memory_near_the_limit_warns_then_fails_whichever_source_read_it(broken, mib, status, evidence):
    memory = _memory_check(FullHost(mib, broken))
    assert (memory.status, memory.evidence) == (status, evidence)


class UnlimitedHost(FakeHost):
    """Its container has no memory limit; its cgroup shows ``cgroup_limit`` (v1's "none", or a
    parent's limit where the cgroup is not its own)."""

    def __init__(self, cgroup_limit):
        super().__init__()
        self.cgroup_limit = cgroup_limit

    def run(self, command: str, timeout: int):
        if "docker inspect" in command:
            ok, out = super().run(command, timeout)
            data = json.loads(out)
            data[0]["HostConfig"]["Memory"] = 0
            return ok, json.dumps(data)
        if "memory.current" in command:
            self.commands.append(command)
            return True, f"v1\n{70 << 20}\n{self.cgroup_limit}\ntotal_inactive_file {4 << 20}\n"
        if "docker stats" in command:
            self.commands.append(command)
            return True, "99MiB / 23.5GiB\n"
        return super().run(command, timeout)


def test_a_container_without_a_limit_is_read_from_its_cgroup_unless_the_cgroup_has_one():
    fake = UnlimitedHost(9223372036854771712)
    memory = _memory_check(fake)
    assert (memory.status, memory.evidence) == ("pass", "66 MiB in use, no memory limit set")
    assert not any("docker stats" in c for c in fake.commands)
    fake = UnlimitedHost(512 << 20)  # a parent's limit: not the container's cgroup
    memory = _memory_check(fake)
    assert (memory.status, memory.evidence) == ("pass", "99 MiB in use, no memory limit set")
    assert any("docker stats" in c for c in fake.commands)


class StartingHost(FakeHost):
    """A container just started: Docker's first health probe has not run yet. ``answers``:
    what running its healthcheck command now gives, in turn."""

    def __init__(self, test, answers):
        super().__init__()
        self.test, self.answers = test, list(answers)

    def run(self, command: str, timeout: int):
        if "docker inspect" in command and "index .Config.Healthcheck.Test" not in command:
            self.commands.append(command)
            state = {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z", "OOMKilled": False,
                     "Health": {"Status": "starting", "FailingStreak": 0, "Log": []}}
            health = {"Test": self.test, "Interval": 5_000_000_000, "Timeout": 3_000_000_000}
            return True, json.dumps([{"State": state, "RestartCount": 0, "HostConfig": {"Memory": 1 << 30},
                                      "Config": {"Image": "img", "Healthcheck": health}, "Created": "2026"}])
        if "docker exec -i" in command:
            self.commands.append(command)
            return self.answers.pop(0)
        return super().run(command, timeout)


def _healthy_check(fake, attempts=5):
    from tasks.checks.containers import container_checks

    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(attempts, 5.0, 0.01), environ=ENV)
    container_checks(session, "qt-mlflow", 85, 95)
    return next(r for r in session.results if r.name.endswith("is healthy"))


def test_a_starting_container_is_healthy_once_its_own_healthcheck_passes_run_now():
    fake = StartingHost(["CMD-SHELL", "curl -fsS http://admin:hc-s3cret@127.0.0.1:5000/health || exit 1"],
                        [(False, "curl: (7) Failed to connect"), (True, "OK")])
    healthy = _healthy_check(fake)
    assert healthy.status == "pass" and healthy.attempts == 2
    assert "healthcheck command passes, run now" in healthy.evidence
    runs = [c for c in fake.commands if "docker exec -i" in c]
    assert len(runs) == 2
    # the test's text reaches the container's shell on a pipe, never on a command line
    assert all("hc-s3cret" not in c for c in fake.commands)
    assert "index .Config.Healthcheck.Test 1" in runs[0] and "| docker exec -i qt-mlflow sh" in runs[0]


def test_a_starting_container_whose_healthcheck_keeps_failing_is_not_healthy():
    fake = StartingHost(["CMD-SHELL", "exit 1"], [(False, "")] * 3)
    healthy = _healthy_check(fake, attempts=3)
    assert healthy.status == "fail" and "its healthcheck command, run now, fails" in healthy.evidence


def test_an_exec_form_healthcheck_is_left_to_docker():
    fake = StartingHost(["CMD", "curl", "-fsS", "http://127.0.0.1:5000/health"], [])
    healthy = _healthy_check(fake, attempts=2)
    assert healthy.status == "fail" and "health starting" in healthy.evidence
    assert not any("docker exec -i" in c for c in fake.commands)


class DroppedOutputHost(FakeHost):
    """The engine drops the output of the first ``dropped`` OOM-counter reads (the exec works and
    prints nothing), then the counter shows ``kills``."""

    def __init__(self, dropped: int, kills: int):
        super().__init__()
        self.dropped, self.kills = dropped, kills

    def run(self, command: str, timeout: int):
        if "memory.events" in command:
            self.commands.append(command)
            if self.dropped:
                self.dropped -= 1
                return True, ""
            return True, f"low 0\nhigh 0\nmax 7\noom 3\noom_kill {self.kills}\n"
        return super().run(command, timeout)


def _oom_check(fake):
    from tasks.checks.containers import container_checks

    session = Session(Shell(fake.run, fake.put), retry=RetryPolicy(2, 5.0, 0.01), environ=ENV)
    container_checks(session, "qt-mlflow", 85, 95)
    return next(r for r in session.results if r.name.endswith("is not OOM-killed"))


def test_an_oom_counter_read_whose_output_was_dropped_is_read_again():
    fake = DroppedOutputHost(dropped=2, kills=3)
    oom = _oom_check(fake)
    assert oom.status == "fail" and "the kernel OOM-killed 3 process(es)" in oom.evidence, oom
    assert len([c for c in fake.commands if "memory.events" in c]) == 3


def test_an_oom_counter_that_stays_unreadable_is_said_so_after_three_reads():
    fake = DroppedOutputHost(dropped=5, kills=0)
    oom = _oom_check(fake)
    assert oom.status == "pass" and "cgroup OOM counter unreadable" in oom.evidence, oom
    assert len([c for c in fake.commands if "memory.events" in c]) == 3


@pytest.mark.parametrize("timeout, seconds", [(None, 10), (3_000_000_000, 3), (500_000_000, 1), (60e9, 10)])
def test_a_healthcheck_run_now_may_take_its_own_timeout_up_to_10_s(timeout, seconds):
    from tasks.checks.containers import healthcheck_seconds

    check = {"Test": ["CMD-SHELL", "true"]} | ({"Timeout": timeout} if timeout else {})
    assert healthcheck_seconds({"Config": {"Healthcheck": check}}) == seconds
