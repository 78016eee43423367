"""deploys/schedule_cleanup.py on this machine (@local), then the installed command run by hand the
way cron would run it (empty environment, no TTY, own session, stdin /dev/null) against a private
lab (incident scenario).

No cron daemon runs in this container (PID 1 is not an init) and systemd is not PID 1: the tests
check the real crontab (`crontab -l`, installed by the deploy with the `cron` package when
missing) and run its command themselves; the systemd units are covered by unit tests only.
The entry gets a name unique to this lab and is removed by a finalizer.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.labkit import REPO, ROWS, pyinfra_process, run_pyinfra, shared_lab

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "schedule_cleanup.py"
TEST_USERS = "(username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%')"


@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident", needs={ROWS}, changes={ROWS})


@pytest.fixture(scope="module")
def sched(lab, tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("schedule")
    name = f"quant-db-cleanup-{lab.prefix}"
    settings = {
        "name": name, "env": {"QUANTLAB_PREFIX": lab.prefix}, "minute": 41, "hour": 4,
        "script_path": str(folder / "bin" / f"{name}.sh"), "log_file": str(folder / "log" / "cleanup.log"),
        "lock_file": str(folder / "cleanup.lock"), "report_path": str(folder / "report.json"),
    }

    def inventory(**over) -> Path:
        path = folder / "ops.py"
        path.write_text(f"hosts = [('@local', {{'cleanup_schedule': {({**settings, **over})!r}}})]\n")
        return path

    def remove():
        run_pyinfra(inventory(present=False), DEPLOY)
    request.addfinalizer(remove)
    return {"folder": folder, "name": name, "settings": settings, "inventory": inventory}


def crontab_l() -> str:
    proc = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def installed_command(name: str) -> str:
    lines = crontab_l().splitlines()
    i = lines.index(f"# pyinfra-name={name}")
    fields = lines[i + 1].split(None, 5)
    assert fields[:5] == ["41", "4", "*", "*", "*"]
    return fields[5]


def run_like_cron(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["env", "-i", "setsid", "sh", "-c", command], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600, cwd="/")


def test_install_then_no_change(sched):
    first = run_pyinfra(sched["inventory"](), DEPLOY)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert first.changed >= 2  # job script and cron entry (and the cron package if it was missing)
    output = first.stdout + first.stderr
    assert "systemd is not PID 1 here" in output or "Timer" in output
    command = installed_command(sched["name"])
    assert command == sched["settings"]["script_path"]
    for secretish in ("PASSWORD", "SECRET", "PGPASS", "KEY"):
        assert secretish not in command.upper()
    script = Path(command).read_text()
    assert "flock -n 9" in script and " -y " in script and "</dev/null" in script

    second = run_pyinfra(sched["inventory"](), DEPLOY)
    assert second.returncode == 0 and second.changed == 0, second.changed_ops()
    # No copy of the crontab was left in /tmp (pyinfra's crontab operation leaves one, made with
    # the login's umask): the deploy's private directory went with the command that used it.
    assert not copies_of_the_crontab(sched["name"])


def copies_of_the_crontab(name: str) -> list[str]:
    """Files in /tmp where pyinfra stages (``pyinfra-*``) or the deploy writes (``quant-cron-*``)
    holding this entry's name comment."""
    found = []
    for top in [*Path("/tmp").glob("pyinfra-*"), *Path("/tmp").glob("quant-cron-*")]:
        for path in [top, *(top.rglob("*") if top.is_dir() else ())]:
            try:
                if path.is_file() and f"pyinfra-name={name}" in path.read_text(errors="ignore"):
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_installed_command_works_from_an_empty_environment(sched, lab):
    matched = int(lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}"))
    real = lab.psql(f"SELECT count(*) FROM users WHERE NOT {TEST_USERS}")
    assert matched > 0
    proc = run_like_cron(installed_command(sched["name"]))
    log = Path(sched["settings"]["log_file"]).read_text()
    assert proc.returncode == 0, log[-3000:]
    assert proc.stdout == "" and proc.stderr == ""  # everything went to the log
    assert lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}") == "0"
    assert lab.psql(f"SELECT count(*) FROM users WHERE NOT {TEST_USERS}") == real
    assert f"deleted {matched} rows from" in log and log.rstrip().endswith("exit 0")
    report = json.loads(Path(sched["settings"]["report_path"]).read_text())
    assert report["deletion"]["deleted"] == matched


def test_installed_command_skips_while_a_run_holds_the_lock(sched):
    lock = sched["settings"]["lock_file"]
    holder = subprocess.Popen(["flock", lock, "sleep", "20"], start_new_session=True)
    try:
        proc = run_like_cron(installed_command(sched["name"]))
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep holding the lock
        holder.wait()
    assert proc.returncode == 75
    log = Path(sched["settings"]["log_file"]).read_text()
    skipped = f"skipped: another run holds the lock {lock}; nothing done (exit 75)"
    assert log.rstrip().splitlines()[-1].endswith(skipped)
    assert proc.stderr == f"{sched['name']}: {skipped}\n"  # cron mails it; the journal keeps it
    assert oct(Path(lock).stat().st_mode & 0o777) == "0o600"


def test_a_lock_directory_anyone_can_write_stops_the_job(sched):
    """As /run/lock was: any user could create the lock file first and hold it, so the root job
    would skip forever. The job refuses to start instead (70), and says why."""
    shared = sched["folder"] / "shared-locks"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o1777)
    run_pyinfra(sched["inventory"](lock_file=str(shared / "cleanup.lock")), DEPLOY)
    try:
        proc = run_like_cron(installed_command(sched["name"]))
        assert proc.returncode == 70
        assert f"refused: the lock directory {shared} is writable by others" in proc.stderr
        log = Path(sched["settings"]["log_file"]).read_text().rstrip().splitlines()
        assert "refused: the lock directory" in log[-1]
        assert not (shared / "cleanup.lock").exists()
    finally:
        run_pyinfra(sched["inventory"](), DEPLOY)


def test_failure_is_a_non_zero_exit(sched):
    # The job against a lab that does not exist: pyinfra fails, the job says so.
    run_pyinfra(sched["inventory"](env={"QUANTLAB_PREFIX": "qtclnone"}), DEPLOY)
    try:
        proc = run_like_cron(installed_command(sched["name"]))
        assert proc.returncode not in (0, 75)
        assert Path(sched["settings"]["log_file"]).read_text().rstrip().endswith(f"exit {proc.returncode}")
    finally:
        run_pyinfra(sched["inventory"](), DEPLOY)


def test_a_job_for_a_user_this_host_lacks_is_refused_in_one_line_before_any_change(sched):
    """Before, --dry promised the job (the crontab read `|| true` looked empty) and the real run
    wrote the job script, then failed on its chown."""
    script = sched["folder"] / "nouser" / "job.sh"
    inventory = sched["inventory"](user="quantnosuchuser", script_path=str(script))
    refusal = "cleanup_schedule.user: no user 'quantnosuchuser' on this host"
    dry = pyinfra_process("--dry", str(inventory), str(DEPLOY))
    real = run_pyinfra(inventory, DEPLOY)
    for run in (dry, real):
        assert run.returncode != 0 and refusal in run.stdout + run.stderr, (run.stdout + run.stderr)[-2000:]
    assert "stopped while planning: nothing was executed" in real.stdout + real.stderr
    assert not script.parent.exists()


def test_removal(sched):
    gone = run_pyinfra(sched["inventory"](present=False), DEPLOY)
    assert gone.returncode == 0 and gone.changed >= 2, (gone.stdout + gone.stderr)[-2000:]
    assert sched["name"] not in crontab_l()  # entry and its name comment
    assert not Path(sched["settings"]["script_path"]).exists()
    again = run_pyinfra(sched["inventory"](present=False), DEPLOY)
    assert again.returncode == 0 and again.changed == 0, again.changed_ops()
