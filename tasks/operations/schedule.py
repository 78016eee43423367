"""
Scheduling the database cleanup: a cron entry (and/or a systemd timer + service pair) on the
machine that runs pyinfra (or a named ops host), running ``deploys/cleanup_database.py``
non-interactively under a lock, with a rotated log and a clear exit status.

Run as a non-root login without sudo (the onboarded ``deploy`` user), the job is that user's own
(:func:`own_job`): its crontab, its files under its home; what would need root (a job for
another user, a systemd timer, installing cron) is refused in one line saying so.

Settings: the ops host's ``cleanup_schedule`` block
(:class:`tasks.settings.schedule.ScheduleSettings`). What gets installed (job script, crontab
command, units) is built in :mod:`tasks.core.schedule_units`; the facts are in
:mod:`tasks.facts.schedule`. Secrets stay where the inventory points (files): the job never
carries one.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pyinfra import host as current_host
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import OperationError
from pyinfra.facts.server import Which
from pyinfra.operations import apt, files, server, systemd

from tasks import settings as host_settings
from tasks.core.schedule_units import (
    LOCK_DIR,
    choose_schedulers,
    cron_line,
    home_paths,
    job_script,
    on_calendar,
    service_unit,
    system_paths,
    timer_unit,
    with_named_entry,
    without_named_entry,
)
from tasks.facts.schedule import CrontabText, InitSystem
from tasks.operations import runner
from tasks.operations.recap import say
from tasks.operations.refusals import deploy, operation
from tasks.settings import SettingsError
from tasks.settings.schedule import ScheduleSettings

UNIT_DIR = "/etc/systemd/system"


CRONTAB_TRIES = 3
CHANGED_MEANWHILE = "quant-crontab-changed-meanwhile"  # the install says so, installing nothing


def _rewrite_crontab(state, host, edit: Callable[[list[str]], list[str] | None], user: str | None):
    """FunctionCommand body: ``user``'s crontab (else the login's) as it is now, ``edit``-ed, and
    installed again, so that an edit made elsewhere since the plan read it is kept. The install
    first compares the crontab with the text listed (one remote command): changed meanwhile,
    nothing is installed and the edit starts again from the new text (``CRONTAB_TRIES`` times),
    so another editor's change is not lost in the round trips between listing and installing.
    Both texts go as 0600 files into a fresh 0700 folder of the login user
    (:func:`tasks.operations.runner.upload_private`), removed after: never pyinfra's way
    (``crontab -l`` into a /tmp file made with the login's umask, world-readable and left
    behind) nor on a command line, for the user's other entries are theirs and may hold what they
    would not show. A crontab that cannot be read is an error, nothing changed: never taken for
    an empty one."""
    user_args = f"-u {shlex.quote(user)} " if user else ""
    whose = f" of {user}" if user else ""
    for _ in range(CRONTAB_TRIES):
        ok, listed = runner.run(host, CrontabText().command(user))  # no crontab: empty, said once there
        if not ok:
            errors = " ".join(listed.stderr_lines).strip()
            raise OperationError(f"cannot read the crontab{whose}: {errors[:200]}")
        lines = list(listed.stdout_lines)
        new = edit(lines)
        if new is None:  # made so meanwhile
            return
        folder = runner.upload_private(
            host,
            {
                "listed": "".join(f"{line}\n" for line in lines),
                "crontab": "".join(f"{line}\n" for line in new),
            },
            prefix="quant-cron",
        )
        q_folder = shlex.quote(folder)
        try:
            ok, output = runner.run(
                host,
                # the shell's own comparison: cmp (diffutils) is not on every host
                f'[ "$(crontab {user_args}-l 2>/dev/null)" = "$(cat {q_folder}/listed)" ] '
                f"|| {{ echo {CHANGED_MEANWHILE}; exit 1; }}; "
                f"crontab {user_args}{q_folder}/crontab",
            )
        finally:
            runner.remove_private(host, folder)
        if ok:
            return
        if CHANGED_MEANWHILE not in output.stdout_lines:
            errors = " ".join(output.stderr_lines).strip()
            raise OperationError(f"installing the crontab{whose} failed: {errors[:200]}")
    raise OperationError(
        f"the crontab{whose} changed each time between listing and installing ({CRONTAB_TRIES} tries): "
        "nothing installed; run again once its other editor is done"
    )


@operation()
def cron_entry(entry: str, line: str, user: str | None = None):
    """
    Add or update the crontab entry named ``entry`` (a ``# pyinfra-name=`` comment above it, as
    pyinfra's crontab operation names entries, so an entry it installed is taken as is).

    + entry: the entry's name
    + line: the crontab line (schedule fields and command)
    + user: whose crontab (default: the login user's)

    **Example:**

    .. code:: python

        schedule.cron_entry(name="Cleanup cron entry", entry="quant-db-cleanup", line="17 3 * * * /job.sh")
    """
    lines = current_host.get_fact(CrontabText, user=user)
    if with_named_entry(lines, entry, line) is None:
        current_host.noop(f"cron entry {entry} is {line}")
        return
    yield FunctionCommand(_rewrite_crontab, (partial(with_named_entry, name=entry, entry=line), user), {})


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
    if without_named_entry(lines, entry) is None:
        current_host.noop(f"no cron entry named {entry}")
        return
    yield FunctionCommand(_rewrite_crontab, (partial(without_named_entry, name=entry), user), {})


def own_job(s: ScheduleSettings, init: dict) -> ScheduleSettings:
    """The settings for a job the login user installs without root: it must be the job's user
    (a job for another user needs root), never a systemd timer (its units need root), and the
    paths left to their defaults go under its home (root's folders are root's)."""
    login, home = init["user"], init["home"]
    if s.user != login:
        raise OperationError(
            f"cleanup_schedule.user is {s.user!r}, but commands run as {login!r} without root: a job "
            f"for {s.user} needs root (connect as root or a user with full sudo, _sudo=True); or set "
            f"cleanup_schedule.user to {login!r} for {login}'s own crontab"
        )
    if s.scheduler in ("systemd", "both"):
        raise OperationError(
            f"cleanup_schedule.scheduler {s.scheduler!r}: a systemd timer goes into {UNIT_DIR}, which "
            f"needs root, but commands run as {login!r} without it: set scheduler 'cron' (or 'auto') "
            f"for {login}'s own crontab, or connect as root or a user with full sudo"
        )
    if not home.startswith("/") or home == "/":
        raise OperationError(f"cleanup_schedule: {login} has no home folder to keep its job in ({home!r})")
    defaults, own_paths = system_paths(s.name), home_paths(s.name, home)
    return s.model_copy(update={k: own_paths[k] for k, v in defaults.items() if getattr(s, k) == v})


# --- the packaged deploy -------------------------------------------------------------------------


@deploy("Schedule the database cleanup")
def schedule_cleanup(settings: ScheduleSettings | None = None):
    """The host's `cleanup_schedule` block, or ``settings`` when given."""
    s = settings or host_settings.of_host(current_host, "cleanup_schedule")
    init = current_host.get_fact(InitSystem, job_user=s.user)
    own = init["uid"] != "0"  # no root: the login user installs a job of its own
    if own:
        s = own_job(s, init)
    try:
        use_cron, use_systemd = choose_schedulers(s.scheduler, init["systemd"] and not own)
    except ValueError as exc:
        raise OperationError(f"cleanup_schedule.{exc}") from None
    if use_systemd and s.present:
        try:
            on_calendar(s)  # the timer needs one: a settings problem, reported before any change
        except ValueError as exc:
            raise SettingsError(current_host.name, [str(exc)]) from None
    if own:
        say(
            current_host,
            f"schedule: commands run as {init['user']} without root: the job is {init['user']}'s own, "
            f"in its crontab, its files under {init['home']}"
            + (" (a systemd timer needs root: none)" if init["systemd"] else ""),
        )
    elif not init["systemd"]:
        say(
            current_host,
            f"schedule: systemd is not PID 1 here (PID 1 is {init['pid1']!r}): "
            "no systemd timer" + (", cron entry only" if use_cron else ""),
        )
    unit_dir = UNIT_DIR
    # Root names the crontab's user; a user's own crontab takes no -u (only root may give one).
    cron_user = None if own else s.user
    # Read before any change (an operation's facts are read only when it runs, under -y): a job
    # for a user this host does not have, or a crontab that cannot be read, stops the host here.
    known_user = own or bool(init["job_user_known"])
    if s.present and not known_user:
        raise SettingsError(current_host.name, [f"cleanup_schedule.user: no user {s.user!r} on this host"])
    has_crontab = current_host.get_fact(Which, command="crontab")
    if known_user and has_crontab:
        current_host.get_fact(CrontabText, user=cron_user)

    if not s.present:
        if known_user:
            cron_entry_absent(name=f"No cron entry {s.name}", entry=s.name, user=cron_user)
        else:
            say(current_host, f"schedule: no user {s.user!r} on this host, so no crontab of theirs to clean")
        if init["systemd"] and not own:
            timer = systemd.service(
                name=f"Timer {s.name} stopped", service=f"{s.name}.timer", running=False, enabled=False
            )
            gone = [
                files.file(name=f"No unit {s.name}.{kind}", path=f"{unit_dir}/{s.name}.{kind}", present=False)
                for kind in ("timer", "service")
            ]
            systemd.daemon_reload(
                name="systemd reload", _if=lambda: timer.did_change() or any(g.did_change() for g in gone)
            )
        files.file(name=f"No job script {s.script_path}", path=s.script_path, present=False)
        say(current_host, f"schedule: log {s.log_file} (and rotations) left in place")
        return

    if use_cron and s.install_cron and not has_crontab:
        if own:
            raise OperationError(
                f"cleanup_schedule: cron is not installed and {init['user']} cannot install it "
                "without root: install cron as root (or onboard the host), then run this again"
            )
        if current_host.get_fact(Which, command="apt-get"):
            apt.packages(name="cron is installed", packages=["cron"], update=True, cache_time=86400)
        else:
            server.packages(name="cron is installed", packages=["cron"])
    files.directory(
        name="Job script directory", path=str(Path(s.script_path).parent), mode="700" if own else "755"
    )
    if str(Path(s.lock_file).parent) == LOCK_DIR and not own:
        # Only root or the job's user may create or open the lock file (see schedule_units).
        files.directory(name=f"Lock directory {LOCK_DIR}", path=LOCK_DIR, user=s.user, mode="755")
    # The job's own: only its user reads (or changes) what it runs as that user.
    files.put(
        name=f"Job script {s.script_path}",
        src=io.StringIO(job_script(s)),
        dest=s.script_path,
        user=s.user,
        mode="700",
        create_remote_dir=False,  # made above, root's
    )
    if use_cron:
        cron_entry(name=f"Cron entry {s.name}", entry=s.name, line=cron_line(s), user=cron_user)
        if not init["cron_running"]:
            say(
                current_host,
                "schedule: no cron daemon is running on this host: the entry is "
                "installed but fires only once cron runs",
            )
    else:
        cron_entry_absent(
            name=f"No cron entry {s.name} (systemd timer instead)", entry=s.name, user=cron_user
        )
    if use_systemd:
        units = [
            files.put(
                name=f"Unit {s.name}.{kind}",
                src=io.StringIO(text),
                dest=f"{unit_dir}/{s.name}.{kind}",
                mode="644",
            )
            for kind, text in (("service", service_unit(s)), ("timer", timer_unit(s)))
        ]
        systemd.daemon_reload(name="systemd reload", _if=lambda: any(u.did_change() for u in units))
        systemd.service(name=f"Timer {s.name} enabled", service=f"{s.name}.timer", running=True, enabled=True)
