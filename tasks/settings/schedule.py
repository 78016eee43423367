"""
The ``cleanup_schedule`` block of the ops host (deploys/schedule_cleanup.py): when and how the
database cleanup runs unattended::

    cleanup_schedule = {
        "present": True,                # False: remove entry, units and job script (logs stay)
        "name": "quant-db-cleanup",     # cron entry name, unit names, default file names
        "project_dir": None,            # checkout holding deploys/ (None: this one; @local only)
        "env": {"QUANTLAB_PREFIX": "quant"},  # non-secret variables for the job
        "minute": 17, "hour": 3,        # cron fields (day_of_month, month, day_of_week: "*")
        "scheduler": "auto",            # auto: systemd timer where systemd is PID 1, else cron
    }

The crontab line is the job script's path only; the script holds no secret: env names that
look like one (``*PASSWORD*``, ``*TOKEN*``, ...) are refused. Paths left None are derived from
``name`` (``/usr/local/lib/quant-remediation/<name>.sh``, ``/var/log/quant-remediation/<name>.log``,
``/var/lib/quant-remediation/<name>.lock``) and ``project_dir`` (``<project_dir>/.venv/bin/pyinfra``).

Installed by a non-root login without sudo (the onboarded ``deploy`` user), the job is that
user's own: ``user`` must be that user, the entry goes into its own crontab (a systemd timer, in
/etc/systemd/system, needs root) and the paths left None go under its home
(``~/.local/lib/quant-remediation/<name>.sh``, ``~/.local/state/quant-remediation/<name>.log``
and ``.lock``).

The lock file's directory is one only root or the job's user can write: the default one is made
by the deploy (0755, owned by ``user``); a shared directory (``/tmp``, ``/run/lock``, ...) is
refused here, and the job itself refuses to run when the directory or the file could be anyone
else's (see tasks/core/schedule_units.py).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tasks.core.cron import CRON_FIELDS, cron_field_problem, on_calendar_problem
from tasks.core.names import host_path_problem
from tasks.core.schedule_units import LOCK_DIR, SHARED_DIRS, system_paths
from tasks.core.sizes import GIB, MIB
from tasks.settings.base import Block, Pattern
from tasks.settings.types import ENV_NAME_RE, Size, plaintext_problem

# The checkout this package is in: tasks/settings/schedule.py -> the folder holding deploys/.
PROJECT_DIR = str(Path(__file__).resolve().parents[2])
DEFAULT_NAME = "quant-db-cleanup"
_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


def _absolute(value: str) -> str:
    # The host-path rule every block uses: absolute, no control character, no '..' component.
    problem = host_path_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _relative_or_absolute(value: str) -> str:
    if not value or "\n" in value or value.startswith("-"):
        raise ValueError("must be a path (relative to project_dir, or absolute)")
    return value


def _cron_field(field: str) -> Any:
    def check(value: Any) -> Any:
        # 17 and "17" are the same field; the int form is what operators usually write.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"is not a cron field, got {type(value).__name__}")
        problem = cron_field_problem(field, value)
        if problem:
            raise ValueError(problem)
        return value

    return check


def _cron_schema(field: str) -> WithJsonSchema:
    low, high, names = CRON_FIELDS[field]
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": low, "maximum": high},
                {"type": "string", "minLength": 1, "maxLength": 256},
            ],
            "description": f"a cron {field.replace('_', '-')} field: *, {low}-{high}, ranges, "
            "lists, /steps" + (f", or a name ({names[0]}...)" if names else ""),
        }
    )


# Each cron field checked against its own range (minute 0-59, hour 0-23, ...).
Minute = Annotated[str, BeforeValidator(_cron_field("minute")), _cron_schema("minute")]
Hour = Annotated[str, BeforeValidator(_cron_field("hour")), _cron_schema("hour")]
DayOfMonth = Annotated[str, BeforeValidator(_cron_field("day_of_month")), _cron_schema("day_of_month")]
Month = Annotated[str, BeforeValidator(_cron_field("month")), _cron_schema("month")]
DayOfWeek = Annotated[str, BeforeValidator(_cron_field("day_of_week")), _cron_schema("day_of_week")]

AbsolutePath = Annotated[str, AfterValidator(_absolute)]
# Derived from name/project_dir when left None: the model fills it in before validation, so the
# None default is never the value (and the schema does not carry this machine's paths).
DerivedPath = Annotated[
    str,
    AfterValidator(_absolute),
    WithJsonSchema({"type": ["string", "null"], "description": "absolute path; None: derived"}),
]
ProjectPath = Annotated[str, AfterValidator(_relative_or_absolute)]


class ScheduleSettings(Block):
    """A cron entry and/or a systemd timer running deploys/cleanup_database.py under a lock."""

    present: StrictBool = Field(
        True, description="False: remove the entry/timer and the job script (logs stay)"
    )
    name: Annotated[str, Pattern(_NAME_RE, "letters, digits, '.', '_', '-' (max 64)")] = DEFAULT_NAME
    project_dir: DerivedPath = Field(None, description="the checkout holding deploys/ (None: this one)")  # type: ignore[assignment]  # see DerivedPath
    pyinfra: DerivedPath = Field(None, description="None: <project_dir>/.venv/bin/pyinfra")  # type: ignore[assignment]  # see DerivedPath
    inventory: ProjectPath = "inventories/lab.py"
    deploy: ProjectPath = "deploys/cleanup_database.py"
    group_data: ProjectPath = "inventories/group_data"
    env: dict[str, str] = Field(default_factory=dict, description="non-secret variables for the job")
    minute: Minute = "17"
    hour: Hour = "3"
    day_of_month: DayOfMonth = "*"
    month: Month = "*"
    day_of_week: DayOfWeek = "*"
    on_calendar: str | None = Field(
        None, max_length=256, description="systemd OnCalendar (None: derived from minute/hour)"
    )
    scheduler: Literal["auto", "cron", "systemd", "both"] = Field(
        "auto", description="auto: systemd timer where systemd is PID 1, else cron"
    )
    user: Annotated[str, Pattern(r"[a-z_][a-z0-9_-]*\$?", "a user name")] = "root"
    script_path: DerivedPath = Field(None, description="None: /usr/local/lib/quant-remediation/<name>.sh")  # type: ignore[assignment]  # see DerivedPath
    log_file: DerivedPath = Field(None, description="None: /var/log/quant-remediation/<name>.log")  # type: ignore[assignment]  # see DerivedPath
    log_max_bytes: Size = Field(
        5 * MIB, ge=1024, le=GIB, description="rotated by size at the start of a run..."
    )
    log_keep: StrictInt = Field(5, ge=1, le=1000, description="...keeping this many old logs")
    lock_file: DerivedPath = Field(  # type: ignore[assignment]  # see DerivedPath
        None,
        description=f"None: {LOCK_DIR}/<name>.lock (a run still going: exit 75); its directory must "
        "be one only root or the job's user can write",
    )
    report_path: AbsolutePath | None = Field(None, description="JSON statistics report of each run")
    install_cron: StrictBool = Field(True, description="install the cron package when `crontab` is missing")

    @model_validator(mode="before")
    @classmethod
    def _derived_paths(cls, data: Any) -> Any:
        """Fill the paths left out (or None/empty) from ``name`` and ``project_dir``."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        name = data.get("name", DEFAULT_NAME)
        if not isinstance(name, str) or not re.fullmatch(_NAME_RE, name):
            name = DEFAULT_NAME  # the name's own error is reported; derive from the default
        project = data.get("project_dir") or PROJECT_DIR
        derived = {"project_dir": project, "pyinfra": f"{project}/.venv/bin/pyinfra", **system_paths(name)}
        for key, value in derived.items():
            if not data.get(key):
                data[key] = value
        return data

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError("expected a mapping of variable names to strings")
        problems = []
        for name, item in value.items():
            if not isinstance(name, str) or not ENV_NAME_RE.match(name):
                problems.append(f"env.{name}: is not a variable name")
            elif not isinstance(item, str) or "\n" in item or "\x00" in item:
                problems.append(f"env.{name}: must be a one-line string")
            elif problem := plaintext_problem(name, item):
                problems.append(
                    f"env.{name}: {problem}: secrets never go into the job or the crontab; "
                    "point the inventory at a file holding it instead"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("lock_file")
    @classmethod
    def _private_lock(cls, value: str) -> str:
        folder = posixpath.dirname(posixpath.normpath(value))
        if folder in SHARED_DIRS:
            raise ValueError(
                f"{value!r} is in {folder}, a directory others can write or share: any user able "
                f"to create or open the lock file there could hold the lock (default: {LOCK_DIR})"
            )
        return value

    @field_validator("on_calendar")
    @classmethod
    def _on_calendar(cls, value: str | None) -> str | None:
        problem = None if value is None else on_calendar_problem(value)
        if problem:
            raise ValueError(f"is not a systemd calendar expression: {problem}")
        return value

    @property
    def cron_fields(self) -> tuple[str, str, str, str, str]:
        return (self.minute, self.hour, self.day_of_month, self.month, self.day_of_week)
