"""Facts the cleanup schedule decides on: the init system (is systemd PID 1, does cron run), who
the commands run as, and a user's crontab as raw lines. Read-only."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class InitSystem(FactBase):
    """Whether systemd runs as PID 1 (``/run/systemd/system`` exists, as ``sd_booted()``
    checks), PID 1's name, whether a cron daemon runs, and who the deploy's commands run as
    (``uid``, ``user`` and that user's ``home``: root with sudo, else the login user). Given a
    ``job_user``, also whether the host has that user (``job_user_known``; None when not asked):
    in the same round trip."""

    def command(self, job_user=None):
        command = (
            "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi; "
            "echo pid1=$(cat /proc/1/comm 2>/dev/null || echo unknown); "
            "if pgrep -x cron >/dev/null 2>&1 || pgrep -x crond >/dev/null 2>&1; "
            "then echo cron=running; else echo cron=stopped; fi; "
            'echo uid=$(id -u); echo user=$(id -un); echo home=$(getent passwd "$(id -un)" | cut -d: -f6)'
        )
        if job_user:
            command += (
                f"; if getent passwd {shlex.quote(job_user)} >/dev/null; "
                "then echo job_user=known; else echo job_user=unknown; fi"
            )
        return command

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {
            "systemd": values.get("systemd") == "yes",
            "pid1": values.get("pid1", "unknown"),
            "cron_running": values.get("cron") == "running",
            "uid": values.get("uid", "").strip(),
            "user": values.get("user", "").strip(),
            "home": values.get("home", "").strip(),
            "job_user_known": {"known": True, "unknown": False}.get(values.get("job_user", "").strip()),
        }


class CrontabText(FactBase):
    """The raw lines of ``user``'s crontab: empty when there is none (or no ``crontab``). A crontab
    that cannot be read fails the fact, with crontab's own words: never taken for an empty one,
    so that ``--dry`` does not promise an entry the run would then refuse to write."""

    default = list

    def requires_command(self, user=None) -> str:
        return "crontab"

    def command(self, user=None):
        listing = f"crontab -u {shlex.quote(user)} -l" if user else "crontab -l"
        # The listing on stdout as it is; its stderr kept aside: "no crontab for" (after any
        # warning sudo printed first) is an empty crontab, anything else the fact's error.
        return (
            f"{{ err=$({listing} 2>&1 >&3 3>&-); rc=$?; }} 3>&1; "
            'if [ $rc -ne 0 ]; then case "$err" in *"no crontab for"*) ;; '
            "*) printf '%s\\n' \"$err\" >&2; exit $rc ;; esac; fi"
        )

    def process(self, output):
        return list(output or [])
