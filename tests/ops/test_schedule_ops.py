"""The cleanup schedule's deploy without a host: what it installs on a cron host and on a
systemd host, what it removes with ``present: False``, and that an installed schedule plans no
change. Facts: our own as the command output a host prints (``InitSystem``, ``CrontabText``),
pyinfra's file facts as processed values (as pyinfra's own operation
tests give them).
"""
from __future__ import annotations

import hashlib

import pytest
from pyinfra.api.exceptions import OperationError

from tasks import settings as host_settings
from tasks.core.schedule_units import job_script, service_unit, timer_unit
from tasks.operations.schedule import cron_entry_absent, schedule_cleanup
from tests.ops.recorded_plan import Output, plan_on_host

SCRIPT = "/usr/local/lib/quant-remediation/quant-db-cleanup.sh"
LOCK_DIR = "/var/lib/quant-remediation"
# who the commands run as: root (a root login, or sudo); the host has the job's user
AS_ROOT = "uid=0\nuser=root\nhome=/root\njob_user=known"
AS_DEPLOY = "uid=1000\nuser=deploy\nhome=/home/deploy\njob_user=known"  # the onboarded deploy user, no sudo
CRON_HOST = Output(f"systemd=no\npid1=bash\ncron=running\n{AS_ROOT}")  # a container: PID 1 is a shell
SYSTEMD_HOST = Output(f"systemd=yes\npid1=systemd\ncron=running\n{AS_ROOT}")
NO_JOB_USER = Output(CRON_HOST.replace("job_user=known", "job_user=unknown"))  # a cron host without it
INSTALLED_CRONTAB = Output("MAILTO=root\n\n# pyinfra-name=quant-db-cleanup\n17 3 * * * " + SCRIPT)
DIRECTORY = {"mode": 755, "user": "root", "group": "root"}
TIMER = "quant-db-cleanup.timer"


def settings(**data):
    return host_settings.load("cleanup_schedule", "ops", data)


def facts(init=CRON_HOST, crontab="", files=None, sums=None, systemd=None, which=None):
    """A host: its init system, root's crontab, which files exist (path -> File fact) with
    which sha1, the systemd units' state, and which commands are on PATH."""
    files, sums = files or {}, sums or {}
    return {
        "InitSystem": init,
        "CrontabText": {"user=root": Output(crontab)},
        "Which": {f"command={k}": v for k, v in (which or {"crontab": "/usr/bin/crontab"}).items()},
        "Directory": {**{f"path={p}": v for p, v in files.items() if v.get("dir")}, "*": None},
        "File": {**{f"path={p}": v for p, v in files.items() if not v.get("dir")}, "*": None},
        "Sha1File": {**{f"path={p}": s for p, s in sums.items()}, "*": None},
        "TmpDir": "/tmp",
        "SystemdStatus": {"*": (systemd or {}).get("running", {})},
        "SystemdEnabled": {"*": (systemd or {}).get("enabled", {})},
    }


def crontab_writes(commands, crontabs):
    """The crontab step as ``["crontab", user, new text]``: its execution-time callback's edit
    applied to the crontab the facts hold (``crontabs``: fact key -> text). The callback itself
    (list at execution, write from a private folder) is tests/unit/test_crontab_rewrite.py's."""
    rendered = []
    for command in commands:
        if isinstance(command, list) and command[0] == "_rewrite_crontab":
            _, edit, user = command
            after = edit(str(crontabs[f"user={user}"]).splitlines())
            command = ["crontab", user, None if after is None else "".join(f"{line}\n" for line in after)]
        rendered.append(command)
    return rendered


def plan(s, host_facts):
    result = plan_on_host(lambda: schedule_cleanup(s), host_facts)
    assert not any("/tmp/pyinfra-" in str(c) for _, commands in result.steps for c in commands), result.steps
    return result, [(name, crontab_writes(commands, host_facts["CrontabText"])) for name, commands in result.steps]


def new_crontab(text: str, user: str | None = "root") -> list:
    """How a crontab is written: at execution, by the callback, to ``text``."""
    return [["crontab", user, text]]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def installed(s, units=False):
    """What a host looks like after the deploy ran: directory, script (same content), units."""
    files = {"/usr/local/lib/quant-remediation": {**DIRECTORY, "dir": True},
             LOCK_DIR: {**DIRECTORY, "dir": True},
             SCRIPT: {"mode": 700, "user": "root", "group": "root"}}
    sums = {SCRIPT: sha1(job_script(s))}
    if units:
        files["/etc/systemd/system"] = {**DIRECTORY, "dir": True}
        for kind, text in (("service", service_unit(s)), ("timer", timer_unit(s))):
            files[f"/etc/systemd/system/quant-db-cleanup.{kind}"] = {"mode": 644, "user": "root", "group": "root"}
            sums[f"/etc/systemd/system/quant-db-cleanup.{kind}"] = sha1(text)
    return files, sums


def test_cron_host_gets_the_job_script_and_a_cron_entry():
    s = settings()
    result, steps = plan(s, facts())
    assert steps == [
        ("Job script directory", ["mkdir -p /usr/local/lib/quant-remediation",
                                  "chmod 755 /usr/local/lib/quant-remediation"]),
        (f"Lock directory {LOCK_DIR}", [f"mkdir -p {LOCK_DIR}", f"chmod 755 {LOCK_DIR}",
                                        f"chown root {LOCK_DIR}"]),
        # the job script: its user's alone (0700), for it may name what the job reaches
        (f"Job script {SCRIPT}", [["upload", job_script(s), SCRIPT], f"chown root {SCRIPT}",
                                  f"chmod 700 {SCRIPT}"]),
        ("Cron entry quant-db-cleanup", new_crontab(f"# pyinfra-name=quant-db-cleanup\n17 3 * * * {SCRIPT}\n")),
    ]
    assert "schedule: systemd is not PID 1 here (PID 1 is 'bash'): no systemd timer, cron entry only" in result.logs


def test_a_lock_file_elsewhere_gets_no_lock_directory_step():
    _, steps = plan(settings(lock_file="/srv/quant/locks/cleanup.lock"), facts())
    assert not any(name.startswith("Lock directory") for name, _ in steps)


def test_the_lock_directory_belongs_to_the_jobs_user():
    host = facts()
    host["CrontabText"]["user=quant"] = host["CrontabText"]["user=root"]
    _, steps = plan(settings(user="quant"), host)
    assert dict(steps)[f"Lock directory {LOCK_DIR}"][-1] == f"chown quant {LOCK_DIR}"
    assert dict(steps)[f"Job script {SCRIPT}"][1:] == [f"chown quant {SCRIPT}", f"chmod 700 {SCRIPT}"]


def test_cron_host_without_a_cron_daemon_is_told():
    result, _ = plan(settings(), facts(init=Output(f"systemd=no\npid1=bash\ncron=stopped\n{AS_ROOT}")))
    assert any("no cron daemon is running" in line for line in result.logs)


def test_installed_cron_schedule_plans_no_change():
    s = settings()
    files, sums = installed(s)
    result, steps = plan(s, facts(crontab=INSTALLED_CRONTAB, files=files, sums=sums))
    assert [name for name, _ in steps] == ["Job script directory", f"Lock directory {LOCK_DIR}",
                                           f"Job script {SCRIPT}", "Cron entry quant-db-cleanup"]
    assert all(commands == [] for _, commands in steps), steps


def test_a_changed_setting_rewrites_the_script_only():
    old, new = settings(), settings(env={"QUANTLAB_PREFIX": "lab2"})
    files, sums = installed(old)
    _, steps = plan(new, facts(crontab=INSTALLED_CRONTAB, files=files, sums=sums))
    assert dict(steps)[f"Job script {SCRIPT}"] == [["upload", job_script(new), SCRIPT], f"chown root {SCRIPT}",
                                                   f"chmod 700 {SCRIPT}"]
    assert dict(steps)["Cron entry quant-db-cleanup"] == []


def test_missing_crontab_installs_cron_with_apt():
    host = facts(which={"crontab": None, "apt-get": "/usr/bin/apt-get"})
    host.update({"DebPackages": {}, "File": {"*": None}, "Date": None})
    result, steps = plan(settings(), host)
    assert steps[0][0] == "cron is installed"
    assert any("apt-get" in c and " cron" in c for c in steps[0][1] if isinstance(c, str)), steps[0]


def test_systemd_host_gets_a_timer_and_no_cron_entry():
    s = settings()
    result, steps = plan(s, facts(init=SYSTEMD_HOST, crontab=INSTALLED_CRONTAB))
    by_name = dict(steps)
    assert by_name["No cron entry quant-db-cleanup (systemd timer instead)"] == new_crontab("MAILTO=root\n")
    assert by_name["Unit quant-db-cleanup.service"][1] == ["upload", service_unit(s),
                                                            "/etc/systemd/system/quant-db-cleanup.service"]
    assert by_name["Unit quant-db-cleanup.timer"][1] == ["upload", timer_unit(s),
                                                          "/etc/systemd/system/quant-db-cleanup.timer"]
    assert "OnCalendar=*-*-* 03:17:00" in timer_unit(s)
    assert by_name["systemd reload"] == ["systemctl daemon-reload"]
    assert by_name["Timer quant-db-cleanup enabled"] == [f"systemctl start {TIMER}", f"systemctl enable {TIMER}"]
    assert "Cron entry quant-db-cleanup" not in by_name


def test_installed_systemd_schedule_plans_no_change():
    s = settings()
    files, sums = installed(s, units=True)
    _, steps = plan(s, facts(init=SYSTEMD_HOST, files=files, sums=sums,
                             systemd={"running": {TIMER: True}, "enabled": {TIMER: True}}))
    assert all(commands == [] for name, commands in steps if name != "systemd reload"), steps
    # the reload is gated with _if on the unit files: at execution it runs only if one changed
    assert dict(steps)["systemd reload"] == ["systemctl daemon-reload"]


def test_both_schedulers_on_a_systemd_host():
    _, steps = plan(settings(scheduler="both"), facts(init=SYSTEMD_HOST))
    names = [name for name, _ in steps]
    assert "Cron entry quant-db-cleanup" in names and "Timer quant-db-cleanup enabled" in names


def test_present_false_removes_entry_and_script_but_not_logs():
    s = settings(present=False)
    result, steps = plan(s, facts(crontab=INSTALLED_CRONTAB, files=installed(s)[0]))
    assert steps == [
        ("No cron entry quant-db-cleanup", new_crontab("MAILTO=root\n")),
        (f"No job script {SCRIPT}", [f"rm -f {SCRIPT}"]),
    ]
    assert "schedule: log /var/log/quant-remediation/quant-db-cleanup.log (and rotations) left in place" in result.logs


def test_present_false_when_already_gone_is_no_change():
    result, steps = plan(settings(present=False), facts(crontab="MAILTO=root"))
    assert all(commands == [] for _, commands in steps)
    assert result.noops == ["no cron entry named quant-db-cleanup", "file {0} does not exist"]


def test_present_false_on_a_systemd_host_stops_the_timer_and_removes_units():
    s = settings(present=False)
    files = {f"/etc/systemd/system/quant-db-cleanup.{k}": {"mode": 644} for k in ("timer", "service")}
    _, steps = plan(s, facts(init=SYSTEMD_HOST, files=files,
                             systemd={"running": {TIMER: True}, "enabled": {TIMER: True}}))
    by_name = dict(steps)
    assert by_name["Timer quant-db-cleanup stopped"] == [f"systemctl stop {TIMER}", f"systemctl disable {TIMER}"]
    assert by_name["No unit quant-db-cleanup.timer"] == ["rm -f /etc/systemd/system/quant-db-cleanup.timer"]
    assert by_name["No unit quant-db-cleanup.service"] == ["rm -f /etc/systemd/system/quant-db-cleanup.service"]
    assert by_name["systemd reload"] == ["systemctl daemon-reload"]


def test_systemd_scheduler_needs_systemd():
    with pytest.raises(OperationError, match="systemd is not running as PID 1"):
        plan(settings(scheduler="systemd"), facts())


def test_a_timer_without_a_calendar_is_a_settings_error_before_any_change():
    with pytest.raises(host_settings.SettingsError) as err:
        plan(settings(minute="*/15"), facts(init=SYSTEMD_HOST))
    assert "set on_calendar" in str(err.value)
    # on a cron host the same fields are fine
    _, steps = plan(settings(minute="*/15"), facts())
    assert f"\n*/15 3 * * * {SCRIPT}\n" in dict(steps)["Cron entry quant-db-cleanup"][0][2]


def test_a_job_for_a_user_the_host_lacks_is_a_settings_error_before_any_change():
    with pytest.raises(host_settings.SettingsError) as err:
        plan(settings(user="nobody2"), facts(init=NO_JOB_USER))
    assert str(err.value) == "host 'h1': cleanup_schedule.user: no user 'nobody2' on this host"


def test_removing_a_job_for_a_user_the_host_lacks_reads_no_crontab_and_removes_the_rest():
    s = settings(user="nobody2", present=False)
    result, steps = plan(s, facts(init=NO_JOB_USER, files=installed(s)[0]))
    assert steps == [(f"No job script {SCRIPT}", [f"rm -f {SCRIPT}"])]
    assert not any(asked.startswith("CrontabText") for asked in result.asked)
    assert "schedule: no user 'nobody2' on this host, so no crontab of theirs to clean" in result.logs


def test_the_crontab_is_read_before_any_change():
    """Under -y an operation reads its facts only when it runs: read in the deploy's body, a
    crontab that cannot be read fails the host before the job script is written."""
    result, _ = plan(settings(), facts())
    asked = [a for a in result.asked if not a.startswith(("InitSystem", "Which"))]
    assert asked[0] == "CrontabText(user=root)", result.asked


def test_cron_entry_absent_keeps_other_entries_and_their_comments():
    crontab = Output("# pyinfra-name=other\n1 2 * * * /bin/other\n\n# pyinfra-name=quant-db-cleanup\n"
                     f"17 3 * * * {SCRIPT}\n# keep me\n5 5 * * * /bin/keep")
    result = plan_on_host(lambda: cron_entry_absent(entry="quant-db-cleanup", user="deploy"),
                          {"CrontabText": {"user=deploy": crontab}})
    assert crontab_writes(result.commands(), {"user=deploy": crontab}) == new_crontab(
        "# pyinfra-name=other\n1 2 * * * /bin/other\n# keep me\n5 5 * * * /bin/keep\n", "deploy")


# -- installed by the deploy user itself (no root): its own job --------------------------------------

OWN = "/home/deploy/.local/lib/quant-remediation"
OWN_SCRIPT = f"{OWN}/quant-db-cleanup.sh"


def own_facts(init=f"systemd=no\npid1=bash\ncron=running\n{AS_DEPLOY}", crontab="", files=None, sums=None):
    host = facts(init=Output(init), files=files, sums=sums)
    host["CrontabText"] = {"user=None": Output(crontab)}  # its own: `crontab -l`
    return host


def test_the_deploy_user_installs_its_own_job_in_its_crontab_and_home():
    s = settings(user="deploy")
    result, steps = plan(s, own_facts())
    own = s.model_copy(update={"script_path": OWN_SCRIPT,
                               "log_file": "/home/deploy/.local/state/quant-remediation/quant-db-cleanup.log",
                               "lock_file": "/home/deploy/.local/state/quant-remediation/quant-db-cleanup.lock"})
    assert steps == [
        ("Job script directory", [f"mkdir -p {OWN}", f"chmod 700 {OWN}"]),
        # no lock directory step: the job makes its own under its home (none in root's folders)
        (f"Job script {OWN_SCRIPT}", [["upload", job_script(own), OWN_SCRIPT], f"chown deploy {OWN_SCRIPT}",
                                      f"chmod 700 {OWN_SCRIPT}"]),
        # no -u: only root may name a user
        ("Cron entry quant-db-cleanup", new_crontab(f"# pyinfra-name=quant-db-cleanup\n17 3 * * * {OWN_SCRIPT}\n", None)),
    ]
    assert "LOCK=/home/deploy/.local/state/quant-remediation/quant-db-cleanup.lock" in job_script(own)
    assert ("schedule: commands run as deploy without root: the job is deploy's own, in its crontab, its "
            "files under /home/deploy") in result.logs


def test_the_deploy_users_installed_job_plans_no_change():
    s = settings(user="deploy")
    own = s.model_copy(update={k: v.replace("/usr/local/lib", "/home/deploy/.local/lib")
                               .replace("/var/log", "/home/deploy/.local/state")
                               .replace("/var/lib", "/home/deploy/.local/state")
                               for k, v in (("script_path", s.script_path), ("log_file", s.log_file),
                                            ("lock_file", s.lock_file))})
    files = {OWN: {"mode": 700, "user": "deploy", "group": "deploy", "dir": True},
             OWN_SCRIPT: {"mode": 700, "user": "deploy", "group": "deploy"}}
    crontab = f"# pyinfra-name=quant-db-cleanup\n17 3 * * * {OWN_SCRIPT}"
    _, steps = plan(s, own_facts(crontab=crontab, files=files, sums={OWN_SCRIPT: sha1(job_script(own))}))
    assert [name for name, _ in steps] == ["Job script directory", f"Job script {OWN_SCRIPT}",
                                           "Cron entry quant-db-cleanup"]
    assert all(commands == [] for _, commands in steps), steps


def test_paths_the_settings_name_are_kept_for_the_deploy_users_job():
    _, steps = plan(settings(user="deploy", script_path="/srv/quant/jobs/cleanup.sh"), own_facts())
    assert "Job script /srv/quant/jobs/cleanup.sh" in dict(steps)


def test_on_a_systemd_host_the_deploy_users_job_goes_in_its_crontab():
    result, steps = plan(settings(user="deploy"), own_facts(init=f"systemd=yes\npid1=systemd\ncron=running\n"
                                                                 f"{AS_DEPLOY}"))
    names = [name for name, _ in steps]
    assert "Cron entry quant-db-cleanup" in names and not any("Unit" in n or "Timer" in n for n in names)
    assert any(line.endswith("(a systemd timer needs root: none)") for line in result.logs)


def test_a_job_for_root_installed_without_root_is_refused_in_one_line():
    with pytest.raises(OperationError) as err:
        plan(settings(), own_facts())
    assert str(err.value) == (
        "cleanup_schedule.user is 'root', but commands run as 'deploy' without root: a job for root needs "
        "root (connect as root or a user with full sudo, _sudo=True); or set cleanup_schedule.user to "
        "'deploy' for deploy's own crontab")


def test_a_systemd_timer_without_root_is_refused_in_one_line():
    with pytest.raises(OperationError, match=r"^cleanup_schedule.scheduler 'systemd': a systemd timer goes "
                                             r"into /etc/systemd/system, which needs root"):
        plan(settings(user="deploy", scheduler="systemd"),
             own_facts(init=f"systemd=yes\npid1=systemd\ncron=running\n{AS_DEPLOY}"))


def test_no_crontab_and_no_root_is_refused_not_installed():
    host = own_facts()
    host["Which"] = {"command=crontab": None, "command=apt-get": "/usr/bin/apt-get"}
    with pytest.raises(OperationError, match="cron is not installed and deploy cannot install it without root"):
        plan(settings(user="deploy"), host)


def test_present_false_by_the_deploy_user_removes_its_own_entry_and_script():
    s = settings(user="deploy", present=False)
    crontab = f"# pyinfra-name=quant-db-cleanup\n17 3 * * * {OWN_SCRIPT}"
    _, steps = plan(s, own_facts(init=f"systemd=yes\npid1=systemd\ncron=running\n{AS_DEPLOY}",
                                 crontab=crontab, files={OWN_SCRIPT: {"mode": 700}}))
    assert steps == [("No cron entry quant-db-cleanup", new_crontab("", None)),
                     (f"No job script {OWN_SCRIPT}", [f"rm -f {OWN_SCRIPT}"])]  # root's units: not its to remove
