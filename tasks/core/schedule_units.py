"""What scheduling the cleanup installs (pure: no pyinfra): the job script, the crontab line's
command, the systemd service and timer units, which scheduler a host gets, and a crontab
with or without a named entry (the whole new crontab: it is installed from a private file, never
through a world-readable copy in /tmp nor on a command line, for the user's other entries may
hold what they would not show).

The crontab line is only the job script's path: no secret, no environment. The script sets a
fixed PATH, ``LANG`` and ``HOME`` (cron gives almost nothing), exports the configured non-secret
variables, takes ``flock -n`` on the lock file (a run still going makes the next one log
"skipped" and exit 75), rotates the log by size, runs ``pyinfra -y`` with stdin from /dev/null
(no TTY needed), appends everything to the log and exits with pyinfra's status: 0 done, non-zero
failed, 75 (EX_TEMPFAIL) skipped because another run held the lock (this one's flock, or the
database advisory lock of a run started elsewhere).

The lock: ``flock`` works on any open file, so whoever can open the lock file can hold it and
make the job skip. The lock file lives in a directory only root or the job's user can write
(default :data:`LOCK_DIR`, made by the deploy, 0755, owned by the job's user), is created 0600,
and the job refuses to run (exit 70, said in the log) when the directory or the file could be
someone else's. A skip is never silent: it is written to the log, to stderr (the journal under
systemd; cron's mail), to syslog when not under systemd, and the service unit counts exit 75
as a failure (``systemctl --failed`` lists it; the timer keeps firing).
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING
from urllib.parse import quote as url_quote

from tasks.core.cleanup_sql import BUSY_MARK
from tasks.core.cleanup_vacuum import REPORT_ENV
from tasks.core.quoting import check_rendered, export_line, one_line, systemd_exec_word, systemd_value, word

if TYPE_CHECKING:
    from tasks.settings.schedule import ScheduleSettings

EXIT_BUSY = 75  # EX_TEMPFAIL: another run holds the lock
EXIT_SETUP = 70  # EX_SOFTWARE: the job could not start (log dir, lock, project dir)
# Where the lock file lives by default: persistent (a job user other than root cannot create
# it again after a reboot, as it would have to in /run), never world-writable like /run/lock.
LOCK_DIR = "/var/lib/quant-remediation"
# Directories a lock file must not be in: others can write (or share) them.
SHARED_DIRS = (
    "/", "/tmp", "/var/tmp", "/dev/shm", "/run", "/run/lock", "/var/lock", "/var/run", "/run/user",
    "/var", "/var/lib", "/home", "/srv", "/opt", "/mnt", "/media",
)  # fmt: skip


def system_paths(name: str) -> dict[str, str]:
    """The paths a job named ``name`` gets when its settings leave them out: root's folders."""
    return {
        "script_path": f"/usr/local/lib/quant-remediation/{name}.sh",
        "log_file": f"/var/log/quant-remediation/{name}.log",
        "lock_file": f"{LOCK_DIR}/{name}.lock",
    }


def home_paths(name: str, home: str) -> dict[str, str]:
    """The same for a job its own non-root user installs without sudo (deploys/schedule_cleanup.py
    run as the deploy user): under its home, where it may write (its lock folder its own too)."""
    return {
        "script_path": f"{home}/.local/lib/quant-remediation/{name}.sh",
        "log_file": f"{home}/.local/state/quant-remediation/{name}.log",
        "lock_file": f"{home}/.local/state/quant-remediation/{name}.lock",
    }


def _abs(s: ScheduleSettings, path: str) -> str:
    return path if path.startswith("/") else f"{s.project_dir}/{path}"


def pyinfra_argv(s: ScheduleSettings) -> list[str]:
    return [s.pyinfra, "-y", "--group-data", _abs(s, s.group_data), _abs(s, s.inventory), _abs(s, s.deploy)]


def cron_command(s: ScheduleSettings) -> str:
    """The crontab line's command: the job script, nothing else (no secret, no env). A crontab
    line ends at a newline and cron turns ``%`` into one: both refused."""
    one_line(s.script_path, "cleanup_schedule.script_path")
    if "%" in s.script_path:
        raise ValueError("cleanup_schedule.script_path: cron reads '%' as a newline")
    return shlex.quote(s.script_path)


def job_script(s: ScheduleSettings) -> str:
    """The job: fixed environment, ``flock -n``, size-based log rotation, ``pyinfra -y`` with no
    TTY, the log, and the exit status (75 when another run holds a lock).

    Every value is assigned once from a single-quoted word and then only expanded (``"$LOG"``):
    no value is ever inside double quotes, where ``$(...)`` or backquotes would run as the
    job's user. Values holding a control character are refused (tasks/core/quoting.py)."""
    q = word
    env = dict(s.env)
    if s.report_path:
        env[REPORT_ENV] = s.report_path
    exports = "".join(export_line(k, v) + "\n" for k, v in sorted(env.items()))
    argv = pyinfra_argv(s)
    for index, arg in enumerate(argv):
        one_line(arg, f"cleanup_schedule: the job's command, argument {index}")
    run = shlex.join(argv)
    for what, value in (("name", s.name), ("log_file", s.log_file), ("lock_file", s.lock_file),
                        ("project_dir", s.project_dir)):  # fmt: skip
        one_line(value, f"cleanup_schedule.{what}")
    text = f"""#!/bin/sh
# Scheduled database cleanup, installed by deploys/schedule_cleanup.py (pyinfra); NAME below.
# Edits are overwritten on the next deploy. Exit: pyinfra's status (0 done, non-zero failed),
# {EXIT_BUSY} skipped because another run holds the lock, {EXIT_SETUP} the job could not start.
set -u
umask 027
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
LANG=C.UTF-8; export LANG
if [ -z "${{HOME:-}}" ]; then HOME=$(getent passwd "$(id -un)" | cut -d: -f6); HOME=${{HOME:-/}}; fi
export HOME
{exports}NAME={q(s.name)}
LOG={q(s.log_file)}
LOCK={q(s.lock_file)}
PROJECT={q(s.project_dir)}
COMMAND_TEXT={q(run)}
MAX_BYTES={int(s.log_max_bytes)}
KEEP={int(s.log_keep)}
stamp() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
say() {{ printf '%s %s: %s\\n' "$(stamp)" "$NAME" "$*" >>"$LOG"; }}
# Said where an operator looks, not only in the log: stderr (the journal under systemd, cron's
# mail) and, outside systemd, syslog.
notice() {{
    say "$*"
    printf '%s: %s\\n' "$NAME" "$*" >&2
    if [ -z "${{INVOCATION_ID:-}}" ] && command -v logger >/dev/null 2>&1; then
        logger -t "$NAME" -p user.warning -- "$*" 2>/dev/null || true
    fi
}}
# Only root or the job's user may be able to create, replace or open the lock file: anyone
# else who could would hold the lock and make every run skip.
not_ours() {{
    owner=$(stat -c %u "$1") || return 0
    mode=$(stat -c %A "$1") || return 0
    if [ "$owner" != 0 ] && [ "$owner" != "$(id -u)" ]; then return 0; fi
    case "$mode" in ?????w????|????????w?) return 0 ;; esac
    return 1
}}

mkdir -p "$(dirname "$LOG")" || exit {EXIT_SETUP}
LOCKDIR=$(dirname "$LOCK")
if [ ! -d "$LOCKDIR" ]; then (umask 022 && mkdir -p "$LOCKDIR") || {{ notice "cannot create the lock directory $LOCKDIR"; exit {EXIT_SETUP}; }}; fi
if not_ours "$LOCKDIR"; then
    notice "refused: the lock directory $LOCKDIR is writable by others or not owned by root or $(id -un): anyone could hold the lock; nothing done"
    exit {EXIT_SETUP}
fi
if [ -e "$LOCK" ] && {{ [ -L "$LOCK" ] || not_ours "$LOCK"; }}; then
    notice "refused: the lock file $LOCK is a symlink, writable by others or not owned by root or $(id -un); nothing done"
    exit {EXIT_SETUP}
fi
umask 077
exec 9>>"$LOCK" || {{ notice "cannot open the lock file $LOCK"; exit {EXIT_SETUP}; }}
chmod 0600 "$LOCK" 2>/dev/null
umask 027
if ! flock -n 9; then
    notice "skipped: another run holds the lock $LOCK; nothing done (exit {EXIT_BUSY})"
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
cd "$PROJECT" || {{ say "cannot enter $PROJECT"; exit {EXIT_SETUP}; }}
out=$(mktemp) || exit {EXIT_SETUP}
say "start: $COMMAND_TEXT"
{run} </dev/null >"$out" 2>&1
rc=$?
cat "$out" >>"$LOG"
if [ "$rc" -ne 0 ] && grep -q {q(BUSY_MARK)} "$out"; then
    rc={EXIT_BUSY}
    notice "skipped: another cleanup run holds the database's advisory lock; nothing done (exit {EXIT_BUSY})"
fi
rm -f "$out"
say "exit $rc"
exit "$rc"
"""
    return check_rendered(text, "cleanup_schedule: the job script")


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
    raise ValueError(
        f"cleanup_schedule: cannot turn cron fields {' '.join(s.cron_fields)} into a "
        "systemd OnCalendar expression: set on_calendar"
    )


def service_unit(s: ScheduleSettings) -> str:
    """The oneshot service. Values go through systemd's own escaping (``%`` specifiers doubled;
    ``ExecStart`` also ``$``, quoted when spaced); a control character in one is refused, as in
    the whole text."""
    docs = "file://" + url_quote(
        one_line(s.project_dir, "cleanup_schedule.project_dir") + "/tasks/operations/cleanup.py"
    )
    text = f"""[Unit]
Description=Quant stack database cleanup ({systemd_value(s.name, "cleanup_schedule.name")}; deploys/cleanup_database.py)
Documentation={systemd_value(docs, "cleanup_schedule.project_dir")}
After=network-online.target docker.service

[Service]
Type=oneshot
User={systemd_value(s.user, "cleanup_schedule.user")}
ExecStart={systemd_exec_word(s.script_path, "cleanup_schedule.script_path")}
# The job's status: 0 done; 75 skipped because another run held the lock, which counts as a
# failure on purpose (seen in systemctl --failed, the reason in the journal and the job's log).
StandardInput=null
"""
    return check_rendered(text, "cleanup_schedule: the service unit")


def timer_unit(s: ScheduleSettings) -> str:
    """The timer. ``OnCalendar`` is a calendar expression (settings allow its characters only)."""
    text = f"""[Unit]
Description=Run {systemd_value(s.name, "cleanup_schedule.name")}.service on schedule

[Timer]
OnCalendar={systemd_value(on_calendar(s), "cleanup_schedule.on_calendar")}
Persistent=true
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
"""
    return check_rendered(text, "cleanup_schedule: the timer unit")


def choose_schedulers(setting: str, systemd_running: bool) -> tuple[bool, bool]:
    """(cron, systemd) for ``scheduler`` on a host where systemd is/is not PID 1."""
    if setting == "auto":
        return (not systemd_running, systemd_running)
    if setting in ("systemd", "both") and not systemd_running:
        raise ValueError(f"scheduler {setting!r}: systemd is not running as PID 1 on this host")
    return (setting in ("cron", "both"), setting in ("systemd", "both"))


def _is_entry(text: str) -> bool:
    """A crontab line that is a job (what a name comment names): not blank, not a comment, not a
    variable (``MAILTO=root``), as pyinfra's crontab fact reads them."""
    return bool(text) and not text.startswith("#") and not _ENV_LINE.match(text)


# crontab(5)'s variable line, ``name = value``, the name bare or quoted (as pyinfra's fact reads it)
_ENV_LINE = re.compile(r"""^(?:"[^"]*"|'[^']*'|[A-Za-z_][A-Za-z0-9_]*)\s*=""")


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
        if skip_entry and _is_entry(text):
            skip_entry = False
            continue
        out.append(line)
    return out


def cron_line(s: ScheduleSettings) -> str:
    """The crontab entry, fields then command, as pyinfra's crontab operation writes it (an entry
    that operation installed is taken as is)."""
    return f"{s.minute} {s.hour} {s.day_of_month} {s.month} {s.day_of_week} {cron_command(s)}"


def with_named_entry(lines: list[str], name: str, entry: str) -> list[str] | None:
    """``lines`` with ``entry`` under its ``# pyinfra-name=`` comment, as pyinfra names entries:
    the named entry's line replaced in place, or, when there is none, a blank line (when the
    crontab has lines) then the comment and the entry appended. None: already so."""
    marker = f"# pyinfra-name={name}"
    out: list[str] = []
    found = replace = False
    for line in lines:
        text = line.strip()
        if replace and _is_entry(text):
            replace = False
            if text == entry:
                return None
            out.append(entry)
            continue
        if text == marker:
            found = replace = True
        out.append(line)
    if found:
        if replace:  # the comment with no entry after it
            out.append(entry)
        return out
    if any(line.strip() for line in out):
        out.append("")
    return [*out, marker, entry]
