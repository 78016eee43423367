"""The cleanup schedule without an engine: the `cleanup_schedule` block, the crontab line, units,
and the job script run for real (with a stand-in pyinfra) in an empty environment with no TTY
(tasks/settings/schedule.py, tasks/core/schedule_units.py, tasks/facts/schedule.py)."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks import settings as host_settings
from tasks.core import schedule_units as sch
from tasks.facts.schedule import InitSystem
from tasks.settings import SettingsError
from tasks.settings.schedule import PROJECT_DIR


def settings(**over):
    return host_settings.load("cleanup_schedule", "ops", over)


def test_defaults():
    s = settings()
    assert s.name == "quant-db-cleanup" and s.project_dir == PROJECT_DIR
    assert (Path(PROJECT_DIR) / "deploys" / "cleanup_database.py").is_file()  # the checkout itself
    assert s.pyinfra == f"{PROJECT_DIR}/.venv/bin/pyinfra"
    assert s.script_path == "/usr/local/lib/quant-remediation/quant-db-cleanup.sh"
    assert s.lock_file == "/var/lib/quant-remediation/quant-db-cleanup.lock"  # not world-writable /run/lock
    assert s.cron_fields == ("17", "3", "*", "*", "*")


def test_bad_settings_all_reported():
    with pytest.raises(SettingsError) as err:
        settings(name="bad name", minute="every", env={"DB_PASSWORD": "x", "1X": "y"},
                 scheduler="launchd", log_keep=0, script_path="relative.sh", extra=1)
    text = str(err.value)
    for needle in ("name:", "minute:", "env.DB_PASSWORD: looks like a secret", "env.1X: is not a variable",
                   "scheduler:", "log_keep", "script_path", "extra: unknown setting"):
        assert needle in text, needle
    assert '"x"' not in text and "'x'" not in text


@pytest.mark.parametrize("name", ["PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "API_TOKEN", "SSH_PRIVATE_KEY",
                                  "DATABASE_URL", "KEY", "DB_PASS"])
def test_secret_looking_env_is_refused(name):
    with pytest.raises(SettingsError, match="looks like a secret"):
        settings(env={name: "v"})


def test_cron_line_is_only_the_script():
    s = settings(env={"QUANTLAB_PREFIX": "quant"}, report_path="/var/log/q/report.json")
    assert sch.cron_command(s) == "/usr/local/lib/quant-remediation/quant-db-cleanup.sh"


def test_job_script_content():
    s = settings(env={"QUANTLAB_PREFIX": "it's"}, report_path="/r.json")
    text = sch.job_script(s)
    assert "flock -n 9" in text and "exit 75" in text
    assert f"{s.pyinfra} -y --group-data {PROJECT_DIR}/inventories/group_data " in text
    assert "</dev/null" in text
    assert "QUANTLAB_PREFIX='it'\"'\"'s'; export QUANTLAB_PREFIX" in text
    assert "QUANT_CLEANUP_REPORT=/r.json; export QUANT_CLEANUP_REPORT" in text


def test_on_calendar_and_units():
    assert sch.on_calendar(settings()) == "*-*-* 03:17:00"
    assert sch.on_calendar(settings(hour="*", minute=5)) == "*-*-* *:05:00"
    with pytest.raises(ValueError, match="set on_calendar"):
        sch.on_calendar(settings(minute="*/15"))
    assert sch.on_calendar(settings(minute="*/15", on_calendar="*:0/15")) == "*:0/15"
    s = settings()
    assert f"ExecStart={s.script_path}" in sch.service_unit(s)
    # A skip (75) is not counted as a success: the unit shows failed, the journal says why.
    assert "SuccessExitStatus" not in sch.service_unit(s) and "Type=oneshot" in sch.service_unit(s)
    assert "OnCalendar=*-*-* 03:17:00" in sch.timer_unit(s)


def test_choose_schedulers():
    assert sch.choose_schedulers("auto", False) == (True, False)
    assert sch.choose_schedulers("auto", True) == (False, True)
    assert sch.choose_schedulers("both", True) == (True, True)
    assert sch.choose_schedulers("cron", True) == (True, False)
    with pytest.raises(ValueError, match="not running as PID 1"):
        sch.choose_schedulers("systemd", False)


def test_init_system_fact_parses():
    fact = InitSystem()
    assert fact.process(["systemd=no", "pid1=process_api", "cron=stopped", "uid=1000", "user=deploy",
                         "home=/home/deploy"]) == \
        {"systemd": False, "pid1": "process_api", "cron_running": False, "uid": "1000", "user": "deploy",
         "home": "/home/deploy", "job_user_known": None}
    assert fact.process(["uid=0", "job_user=unknown"])["job_user_known"] is False
    assert "getent passwd 'a b' >/dev/null" in fact.command(job_user="a b")


# --- the job script, run for real ------------------------------------------------------------


@pytest.fixture
def job(tmp_path):
    """The job script with a stand-in pyinfra that records its argv/env and exits as told."""
    fake = tmp_path / "pyinfra"
    fake.write_text('#!/bin/sh\necho "argv: $*"\necho "prefix=${QUANTLAB_PREFIX:-} '
                    'tty=$(tty 2>/dev/null) path=$PATH"\n'
                    # "sleep": hold the run (and its lock) until the test writes "release" (at most 30 s)
                    'if [ -f "$FAKE_DIR/sleep" ]; then i=0; while [ ! -f "$FAKE_DIR/release" ] '
                    '&& [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; fi\n'
                    'if [ -f "$FAKE_DIR/busy" ]; then echo "ERROR: cleanup-lock-busy: x"; exit 1; fi\n'
                    'exit $(cat "$FAKE_DIR/rc" 2>/dev/null || echo 0)\n')
    fake.chmod(0o755)
    s = settings(project_dir=str(tmp_path), pyinfra=str(fake), env={"QUANTLAB_PREFIX": "lab1",
                 "FAKE_DIR": str(tmp_path)}, script_path=str(tmp_path / "job.sh"),
                 log_file=str(tmp_path / "log" / "job.log"), lock_file=str(tmp_path / "job.lock"),
                 log_max_bytes=2048, log_keep=2)
    script = tmp_path / "job.sh"
    script.write_text(sch.job_script(s))
    script.chmod(0o755)

    def run(wait=True):
        # As cron would: empty environment, no TTY (own session, stdin /dev/null).
        argv = ["env", "-i", "setsid", "sh", "-c", sch.cron_command(s)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")
        if not wait:
            return proc
        out, err = proc.communicate(timeout=30)
        return proc.returncode, out + err
    run.s, run.dir, run.log = s, tmp_path, tmp_path / "log" / "job.log"
    return run


def test_job_runs_in_an_empty_environment(job):
    rc, output = job()
    assert rc == 0 and output == ""  # everything goes to the log
    log = job.log.read_text()
    assert "argv: -y --group-data" in log and log.rstrip().endswith("exit 0")
    assert "prefix=lab1 tty=not a tty path=/usr/local/sbin:" in log


def test_job_failure_is_a_non_zero_exit(job):
    (job.dir / "rc").write_text("3")
    rc, _ = job()
    assert rc == 3 and job.log.read_text().rstrip().endswith("exit 3")


def test_database_lock_busy_maps_to_75(job):
    (job.dir / "busy").write_text("")
    rc, output = job()
    assert rc == 75
    assert "skipped: another cleanup run holds the database's advisory lock" in output
    assert "skipped: another cleanup run holds the database's advisory lock" in job.log.read_text()


@pytest.mark.parametrize("value", ["/run/lock/x.lock", "/var/lock/x.lock", "/tmp/x.lock", "/dev/shm/x.lock"])
def test_a_lock_in_a_shared_directory_is_refused(value):
    with pytest.raises(SettingsError, match="cleanup_schedule.lock_file: .* a directory others can write"):
        settings(lock_file=value)


def test_the_lock_file_is_private(job):
    assert job()[0] == 0
    assert oct(job.dir.joinpath("job.lock").stat().st_mode & 0o777) == "0o600"


def test_a_lock_directory_others_can_write_stops_the_job(job, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /run/lock: anyone could create the lock file first and hold it
    text = sch.job_script(job.s).replace(f"LOCK={job.s.lock_file}", f"LOCK={shared}/job.lock")
    (job.dir / "job.sh").write_text(text)
    rc, output = job()
    assert rc == 70
    assert f"refused: the lock directory {shared} is writable by others" in output
    assert "refused: the lock directory" in job.log.read_text() and "start:" not in job.log.read_text()
    assert not (shared / "job.lock").exists()


def test_a_lock_file_someone_else_owns_stops_the_job(job):
    lock = job.dir / "job.lock"
    lock.write_text("")
    os.chown(lock, 65534, 65534)  # nobody's: they could open it and hold the lock
    rc, output = job()
    assert rc == 70 and f"refused: the lock file {lock}" in output


def test_overlapping_runs_skip_with_75(job):
    (job.dir / "sleep").write_text("")
    first = job(wait=False)
    for _ in range(50):
        if job.log.exists() and "start" in job.log.read_text():
            break
        time.sleep(0.1)
    rc, output = job()
    (job.dir / "release").write_text("")
    assert rc == 75
    assert first.wait(timeout=30) == 0
    log = job.log.read_text()
    assert f"skipped: another run holds the lock {job.s.lock_file}; nothing done (exit 75)" in log
    assert log.count("exit 0") == 1
    # ...and on stderr (the journal under systemd, cron's mail): a skip is never silent.
    assert output == f"{job.s.name}: skipped: another run holds the lock {job.s.lock_file}; nothing done (exit 75)\n"


def test_log_rotates_by_size(job):
    for _ in range(12):
        assert job()[0] == 0
    logs = sorted(p.name for p in job.log.parent.iterdir())
    assert logs == ["job.log", "job.log.1", "job.log.2"]
    assert os.path.getsize(job.log) < 2048 + 1024


def test_removing_a_named_entry_takes_its_comment():
    lines = ["MAILTO=root", "", "# pyinfra-name=other", "1 2 * * * /bin/other", "",
             "# pyinfra-name=quant-db-cleanup", "17 3 * * * /usr/local/lib/x.sh", "",
             "# keep me", "5 5 * * * /bin/keep"]
    assert sch.without_named_entry(lines, "quant-db-cleanup") == [
        "MAILTO=root", "", "# pyinfra-name=other", "1 2 * * * /bin/other", "", "# keep me",
        "5 5 * * * /bin/keep"]
    assert sch.without_named_entry(lines, "absent") is None
    # a comment left behind by pyinfra's own removal goes too
    assert sch.without_named_entry(["# pyinfra-name=x"], "x") == []
    # a variable line after the comment is not the entry: kept
    assert sch.without_named_entry(["# pyinfra-name=x", "MAILTO=ops", "1 * * * * /x"], "x") == ["MAILTO=ops"]


ENTRY = "17 3 * * * /usr/local/lib/x.sh"


def test_the_cron_line_is_pyinfras_fields_then_the_script():
    s = settings(minute="*/15", day_of_week="1-5")
    assert sch.cron_line(s) == f"*/15 3 * * 1-5 {sch.cron_command(s)}"


def test_a_named_entry_is_added_after_a_blank_line_and_kept_when_right():
    assert sch.with_named_entry([], "q", ENTRY) == ["# pyinfra-name=q", ENTRY]
    added = sch.with_named_entry(["MAILTO=root", "5 5 * * * /bin/keep"], "q", ENTRY)
    assert added == ["MAILTO=root", "5 5 * * * /bin/keep", "", "# pyinfra-name=q", ENTRY]
    assert sch.with_named_entry(added, "q", ENTRY) is None


def test_a_named_entry_is_replaced_in_place_and_nothing_else_moves():
    lines = ["# pyinfra-name=other", "1 2 * * * /bin/other", "", "# pyinfra-name=q", "MAILTO=ops",
             "17 4 * * * /usr/local/lib/x.sh", "# keep me", "5 5 * * * /bin/keep"]
    assert sch.with_named_entry(lines, "q", ENTRY) == [
        "# pyinfra-name=other", "1 2 * * * /bin/other", "", "# pyinfra-name=q", "MAILTO=ops", ENTRY,
        "# keep me", "5 5 * * * /bin/keep"]
    # a comment with no entry after it gets one
    assert sch.with_named_entry(["# pyinfra-name=q"], "q", ENTRY) == ["# pyinfra-name=q", ENTRY]
