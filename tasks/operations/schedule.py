"""
Scheduling the database cleanup: a cron entry (and/or a systemd timer + service pair) on the
machine that runs pyinfra (or a named ops host), running ``deploys/cleanup_database.py``
non-interactively under a lock, with a rotated log and a clear exit status.

Host data of the ops host (defaults ``cleanup_schedule_defaults`` in
``inventories/group_data/all.py``; the host's ``cleanup_schedule`` mapping wins key by key)::

    cleanup_schedule = {
        "present": True,                # False: remove entry, units and job script (logs stay)
        "name": "quant-db-cleanup",     # cron entry name, unit names, default file names
        "project_dir": None,            # checkout holding deploys/ (None: this one; @local only)
        "pyinfra": None,                # None: <project_dir>/.venv/bin/pyinfra
        "inventory": "inventories/lab.py",
        "deploy": "deploys/cleanup_database.py",
        "group_data": "inventories/group_data",
        "env": {},                      # non-secret variables for the job, e.g. QUANTLAB_PREFIX
        "minute": 17, "hour": 3, "day_of_month": "*", "month": "*", "day_of_week": "*",
        "on_calendar": None,            # systemd OnCalendar; None: derived from minute/hour
        "scheduler": "auto",            # auto: systemd timer where systemd is PID 1, else cron;
                                        # or "cron", "systemd", "both"
        "user": "root",                 # whose crontab / which user the service runs as
        "script_path": "/usr/local/lib/quant-remediation/<name>.sh",
        "log_file": "/var/log/quant-remediation/<name>.log",
        "log_max_bytes": 5 MiB, "log_keep": 5,   # rotated by size at the start of a run
        "lock_file": "/run/lock/<name>.lock",
        "report_path": None,            # QUANT_CLEANUP_REPORT for the job (JSON statistics)
        "install_cron": True,           # install the cron package when `crontab` is missing
    }

The crontab line is only the job script's path: no secret, no environment. The script (0755,
written by pyinfra) sets a fixed PATH, ``LANG`` and ``HOME`` (cron gives almost nothing),
exports the configured non-secret variables, takes ``flock -n`` on the lock file (a run still
going makes the next one log "skipped" and exit 75), rotates the log by size, runs
``pyinfra -y`` with stdin from /dev/null (no TTY needed), appends everything to the log and exits
with pyinfra's status: 0 done, non-zero failed, 75 (EX_TEMPFAIL) skipped because another run
held the lock (this one's flock, or the database advisory lock of a run started elsewhere).
Secrets stay where the inventory points (files): the job never carries one.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import Which
from pyinfra.operations import apt, crontab, files, server, systemd

from tasks.operations.cleanup import BUSY_MARK, REPORT_ENV

SCHEDULE_KEYS = {
    "present", "name", "project_dir", "pyinfra", "inventory", "deploy", "group_data", "env",
    "minute", "hour", "day_of_month", "month", "day_of_week", "on_calendar", "scheduler", "user",
    "script_path", "log_file", "log_max_bytes", "log_keep", "lock_file", "report_path",
    "install_cron",
}
SCHEDULERS = ("auto", "cron", "systemd", "both")
EXIT_BUSY = 75  # EX_TEMPFAIL: another run holds the lock
EXIT_SETUP = 70  # EX_SOFTWARE: the job could not start (log dir, lock, project dir)
PROJECT_DIR = str(Path(__file__).resolve().parents[1])
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SECRETISH = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL|(^|_)KEY($|_)", re.I)
_CRON_FIELD = re.compile(r"[0-9*/,\-]+\Z")
_USER = re.compile(r"[a-z_][a-z0-9_-]*\$?\Z")


class ScheduleSettingsError(PyinfraError, ValueError):
    def __init__(self, host_name: str, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': cleanup_schedule.{p}" for p in problems))


@dataclass(frozen=True)
class ScheduleSettings:
    name: str = "quant-db-cleanup"
    present: bool = True
    project_dir: str = PROJECT_DIR
    pyinfra: str = ""
    inventory: str = "inventories/lab.py"
    deploy: str = "deploys/cleanup_database.py"
    group_data: str = "inventories/group_data"
    env: Mapping[str, str] = field(default_factory=dict)
    minute: str = "17"
    hour: str = "3"
    day_of_month: str = "*"
    month: str = "*"
    day_of_week: str = "*"
    on_calendar: str | None = None
    scheduler: str = "auto"
    user: str = "root"
    script_path: str = ""
    log_file: str = ""
    log_max_bytes: int = 5 * 1024 * 1024
    log_keep: int = 5
    lock_file: str = ""
    report_path: str | None = None
    install_cron: bool = True

    @property
    def cron_fields(self) -> tuple[str, str, str, str, str]:
        return (self.minute, self.hour, self.day_of_month, self.month, self.day_of_week)


def _path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/") and "\n" not in value and "\x00" not in value


def load_schedule_settings(host_name: str, data: Any) -> ScheduleSettings:
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    problems: list[str] = []
    cfg: dict = {}
    for where in ("cleanup_schedule_defaults", "cleanup_schedule"):
        part = get(where) or {}
        if not isinstance(part, Mapping):
            problems.append(f"({where}) must be a mapping")
            continue
        cfg.update(part)
    for key in sorted(set(cfg) - SCHEDULE_KEYS, key=str):
        problems.append(f"{key}: unknown key (known: {', '.join(sorted(SCHEDULE_KEYS))})")
    defaults = ScheduleSettings()
    kw: dict[str, Any] = {}
    name = cfg.get("name", defaults.name)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name: {name!r} must be letters, digits, '.', '_', '-' (max 64)")
        name = defaults.name
    kw["name"] = name
    for key in ("present", "install_cron"):
        value = cfg.get(key, getattr(defaults, key))
        if not isinstance(value, bool):
            problems.append(f"{key}: must be true or false")
        else:
            kw[key] = value
    project = cfg.get("project_dir") or PROJECT_DIR
    if not _path(project):
        problems.append("project_dir: must be an absolute path")
    kw["project_dir"] = project
    paths = {
        "pyinfra": f"{project}/.venv/bin/pyinfra",
        "script_path": f"/usr/local/lib/quant-remediation/{name}.sh",
        "log_file": f"/var/log/quant-remediation/{name}.log",
        "lock_file": f"/run/lock/{name}.lock",
    }
    for key, default in paths.items():
        value = cfg.get(key) or default
        if not _path(value):
            problems.append(f"{key}: must be an absolute path")
        kw[key] = value
    for key in ("inventory", "deploy", "group_data"):
        value = cfg.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not value or "\n" in value or value.startswith("-"):
            problems.append(f"{key}: must be a path (relative to project_dir, or absolute)")
        kw[key] = value
    env = cfg.get("env") or {}
    if not isinstance(env, Mapping):
        problems.append("env: must be a mapping of variable names to strings")
        env = {}
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV.match(k):
            problems.append(f"env: {k!r} is not a variable name")
        elif _SECRETISH.search(k):
            problems.append(f"env: {k} looks like a secret: secrets never go into the job or the "
                            "crontab; point the inventory at a file holding it instead")
        elif not isinstance(v, str) or "\n" in v or "\x00" in v:
            problems.append(f"env: {k} must be a one-line string")
    kw["env"] = dict(env)
    for key in ("minute", "hour", "day_of_month", "month", "day_of_week"):
        value = cfg.get(key, getattr(defaults, key))
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(value, str) or not _CRON_FIELD.match(value):
            problems.append(f"{key}: {value!r} is not a cron field (digits, *, /, ',', -)")
        kw[key] = value
    cal = cfg.get("on_calendar")
    if cal is not None and (not isinstance(cal, str) or not cal.strip() or "\n" in cal):
        problems.append("on_calendar: must be a systemd calendar expression")
    kw["on_calendar"] = cal
    sched = cfg.get("scheduler", "auto")
    if sched not in SCHEDULERS:
        problems.append(f"scheduler: must be one of {', '.join(SCHEDULERS)}, not {sched!r}")
    kw["scheduler"] = sched
    user = cfg.get("user", "root")
    if not isinstance(user, str) or not _USER.match(user):
        problems.append(f"user: {user!r} is not a user name")
    kw["user"] = user
    for key, low in (("log_max_bytes", 1024), ("log_keep", 1)):
        value = cfg.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{key}: must be an integer >= {low}")
        kw[key] = value
    report = cfg.get("report_path")
    if report is not None and not _path(report):
        problems.append("report_path: must be an absolute path")
    kw["report_path"] = report
    if problems:
        raise ScheduleSettingsError(host_name, problems)
    return ScheduleSettings(**kw)


# --- pure: what gets installed -------------------------------------------------------------------


def _abs(s: ScheduleSettings, path: str) -> str:
    return path if path.startswith("/") else f"{s.project_dir}/{path}"


def pyinfra_argv(s: ScheduleSettings) -> list[str]:
    return [s.pyinfra, "-y", "--group-data", _abs(s, s.group_data), _abs(s, s.inventory),
            _abs(s, s.deploy)]


def cron_command(s: ScheduleSettings) -> str:
    """The crontab line's command: the job script, nothing else (no secret, no env)."""
    return shlex.quote(s.script_path)


def job_script(s: ScheduleSettings) -> str:
    """The job: fixed environment, ``flock -n``, size-based log rotation, ``pyinfra -y`` with no
    TTY, the log, and the exit status (75 when another run holds a lock)."""
    q = shlex.quote
    env = dict(s.env)
    if s.report_path:
        env[REPORT_ENV] = s.report_path
    exports = "".join(f"{k}={q(v)}; export {k}\n" for k, v in sorted(env.items()))
    run = " ".join(q(a) for a in pyinfra_argv(s))
    return f"""#!/bin/sh
# {s.name}: scheduled database cleanup, installed by deploys/schedule_cleanup.py (pyinfra).
# Edits are overwritten on the next deploy. Exit: pyinfra's status (0 done, non-zero failed),
# {EXIT_BUSY} skipped because another run holds the lock, {EXIT_SETUP} the job could not start.
set -u
umask 027
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
LANG=C.UTF-8; export LANG
if [ -z "${{HOME:-}}" ]; then HOME=$(getent passwd "$(id -un)" | cut -d: -f6); HOME=${{HOME:-/}}; fi
export HOME
{exports}LOG={q(s.log_file)}
LOCK={q(s.lock_file)}
MAX_BYTES={int(s.log_max_bytes)}
KEEP={int(s.log_keep)}
stamp() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}

mkdir -p "$(dirname "$LOG")" "$(dirname "$LOCK")" || exit {EXIT_SETUP}
exec 9>>"$LOCK" || exit {EXIT_SETUP}
if ! flock -n 9; then
    echo "$(stamp) {s.name}: skipped: a previous run still holds $LOCK" >>"$LOG"
    exit {EXIT_BUSY}
fi
# Rotate by size, under the lock: LOG -> LOG.1 -> ... -> LOG.KEEP (dropped).
size=0
if [ -f "$LOG" ]; then size=$(wc -c <"$LOG"); fi
if [ "$size" -ge "$MAX_BYTES" ]; then
    i=$KEEP
    rm -f "$LOG.$i"
    while [ "$i" -gt 1 ]; do
        j=$((i - 1))
        if [ -f "$LOG.$j" ]; then mv -f "$LOG.$j" "$LOG.$i"; fi
        i=$j
    done
    mv -f "$LOG" "$LOG.1"
fi
cd {q(s.project_dir)} || {{ echo "$(stamp) {s.name}: cannot enter {s.project_dir}" >>"$LOG"; exit {EXIT_SETUP}; }}
out=$(mktemp) || exit {EXIT_SETUP}
echo "$(stamp) {s.name}: start: {run.replace('"', '')}" >>"$LOG"
{run} </dev/null >"$out" 2>&1
rc=$?
cat "$out" >>"$LOG"
if [ "$rc" -ne 0 ] && grep -q {q(BUSY_MARK)} "$out"; then rc={EXIT_BUSY}; fi
rm -f "$out"
echo "$(stamp) {s.name}: exit $rc" >>"$LOG"
exit "$rc"
"""


def on_calendar(s: ScheduleSettings) -> str:
    """systemd OnCalendar for the cron fields when they are simple (a number or ``*`` for
    minute and hour, ``*`` for the rest); otherwise ``on_calendar`` must be given."""
    if s.on_calendar:
        return s.on_calendar
    simple = all(f == "*" for f in (s.day_of_month, s.month, s.day_of_week))
    num = lambda v: v.isdigit()  # noqa: E731
    if simple and num(s.minute) and (num(s.hour) or s.hour == "*"):
        hour = "*" if s.hour == "*" else f"{int(s.hour):02d}"
        return f"*-*-* {hour}:{int(s.minute):02d}:00"
    raise ValueError(f"cleanup_schedule: cannot turn cron fields {' '.join(s.cron_fields)} into a "
                     "systemd OnCalendar expression: set on_calendar")


def service_unit(s: ScheduleSettings) -> str:
    return f"""[Unit]
Description=Quant stack database cleanup ({s.name}; deploys/cleanup_database.py)
Documentation=file://{s.project_dir}/tasks/operations/cleanup.py
After=network-online.target docker.service

[Service]
Type=oneshot
User={s.user}
ExecStart={s.script_path}
# The job's own status: 75 = skipped (another run held the lock)
SuccessExitStatus={EXIT_BUSY}
StandardInput=null
"""


def timer_unit(s: ScheduleSettings) -> str:
    return f"""[Unit]
Description=Run {s.name}.service on schedule

[Timer]
OnCalendar={on_calendar(s)}
Persistent=true
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
"""


def choose_schedulers(setting: str, systemd_running: bool) -> tuple[bool, bool]:
    """(cron, systemd) for ``scheduler`` on a host where systemd is/is not PID 1."""
    if setting == "auto":
        return (not systemd_running, systemd_running)
    if setting in ("systemd", "both") and not systemd_running:
        raise ValueError(f"scheduler {setting!r}: systemd is not running as PID 1 on this host")
    return (setting in ("cron", "both"), setting in ("systemd", "both"))


# --- facts -------------------------------------------------------------------------------------


class InitSystem(FactBase):
    """Whether systemd runs as PID 1 (``/run/systemd/system`` exists, as ``sd_booted()``
    checks), PID 1's name, and whether a cron daemon runs."""

    def command(self):
        return ("if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi; "
                "echo pid1=$(cat /proc/1/comm 2>/dev/null || echo unknown); "
                "if pgrep -x cron >/dev/null 2>&1 || pgrep -x crond >/dev/null 2>&1; "
                "then echo cron=running; else echo cron=stopped; fi")

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {"systemd": values.get("systemd") == "yes", "pid1": values.get("pid1", "unknown"),
                "cron_running": values.get("cron") == "running"}


class CrontabText(FactBase):
    """The raw lines of ``user``'s crontab (empty when there is none or no ``crontab``)."""

    default = list

    def requires_command(self, user=None) -> str:
        return "crontab"

    def command(self, user=None):
        return f"crontab -l -u {shlex.quote(user)} 2>/dev/null || true" if user else \
            "crontab -l 2>/dev/null || true"

    def process(self, output):
        return list(output or [])


def without_named_entry(lines: list[str], name: str) -> list[str] | None:
    """``lines`` without the entry pyinfra named ``name``: its ``# pyinfra-name=`` comment, the
    entry line after it and the blank line pyinfra put before it. None: no such entry."""
    marker = f"# pyinfra-name={name}"
    if marker not in (line.strip() for line in lines):
        return None
    out: list[str] = []
    skip_entry = False
    for line in lines:
        text = line.strip()
        if text == marker:
            if out and not out[-1].strip():
                out.pop()
            skip_entry = True
            continue
        if skip_entry and text and not text.startswith("#"):
            skip_entry = False
            continue
        out.append(line)
    return out


@operation()
def cron_entry_absent(entry: str, user: str | None = None):
    """
    Remove the crontab entry pyinfra named ``entry`` (``name`` is pyinfra's operation name),
    with its name comment.

    pyinfra's ``crontab.crontab(present=False, cron_name=...)`` deletes the entry line but leaves
    its ``# pyinfra-name=`` comment behind, where pyinfra's crontab fact then attaches it to the
    next entry: a later run could take that entry for this one. This removes both.

    **Example:**

    .. code:: python

        schedule.cron_entry_absent(name="No cleanup cron entry", entry="quant-db-cleanup")
    """
    lines = current_host.get_fact(CrontabText, user=user)
    kept = without_named_entry(lines, entry)
    if kept is None:
        current_host.noop(f"no cron entry named {entry}")
        return
    user_args = f" -u {shlex.quote(user)}" if user else ""
    body = "".join(f"{line}\n" for line in kept)
    yield StringCommand(f"printf %s {shlex.quote(body)} | crontab{user_args} -")


# --- the packaged deploy -------------------------------------------------------------------------


@deploy("Schedule the database cleanup")
def schedule_cleanup(settings: ScheduleSettings):
    s = settings
    init = current_host.get_fact(InitSystem)
    use_cron, use_systemd = choose_schedulers(s.scheduler, init["systemd"])
    if not init["systemd"]:
        current_host.log(f"schedule: systemd is not PID 1 here (PID 1 is {init['pid1']!r}): "
                         "no systemd timer" + (", cron entry only" if use_cron else ""))
    unit_dir = "/etc/systemd/system"

    if not s.present:
        cron_entry_absent(name=f"No cron entry {s.name}", entry=s.name, user=s.user)
        if init["systemd"]:
            timer = systemd.service(name=f"Timer {s.name} stopped", service=f"{s.name}.timer",
                                    running=False, enabled=False)
            gone = [files.file(name=f"No unit {s.name}.{kind}", path=f"{unit_dir}/{s.name}.{kind}",
                               present=False) for kind in ("timer", "service")]
            systemd.daemon_reload(name="systemd reload",
                                  _if=lambda: timer.did_change() or any(g.did_change() for g in gone))
        files.file(name=f"No job script {s.script_path}", path=s.script_path, present=False)
        current_host.log(f"schedule: log {s.log_file} (and rotations) left in place")
        return

    if use_cron and s.install_cron and not current_host.get_fact(Which, command="crontab"):
        if current_host.get_fact(Which, command="apt-get"):
            apt.packages(name="cron is installed", packages=["cron"], update=True, cache_time=86400)
        else:
            server.packages(name="cron is installed", packages=["cron"])
    files.directory(name="Job script directory", path=str(Path(s.script_path).parent), mode="755")
    files.put(name=f"Job script {s.script_path}", src=io.StringIO(job_script(s)),
              dest=s.script_path, mode="755")
    if use_cron:
        crontab.crontab(
            name=f"Cron entry {s.name}", command=cron_command(s), cron_name=s.name, user=s.user,
            minute=s.minute, hour=s.hour, day_of_month=s.day_of_month, month=s.month,
            day_of_week=s.day_of_week,
        )
        if not init["cron_running"]:
            current_host.log("schedule: no cron daemon is running on this host: the entry is "
                             "installed but fires only once cron runs")
    else:
        cron_entry_absent(name=f"No cron entry {s.name} (systemd timer instead)", entry=s.name,
                          user=s.user)
    if use_systemd:
        units = [files.put(name=f"Unit {s.name}.{kind}", src=io.StringIO(text),
                           dest=f"{unit_dir}/{s.name}.{kind}", mode="644")
                 for kind, text in (("service", service_unit(s)), ("timer", timer_unit(s)))]
        systemd.daemon_reload(name="systemd reload", _if=lambda: any(u.did_change() for u in units))
        systemd.service(name=f"Timer {s.name} enabled", service=f"{s.name}.timer",
                        running=True, enabled=True)
