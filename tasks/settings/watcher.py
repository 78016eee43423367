"""
The ``watcher`` block (deploys/install_watcher.py): the per-host placement of the watcher
(scripts/watch), installed on the host and run there against ``@local``::

    watcher = {
        "present": True,                    # False: stop it and remove what the deploy installed
        "name": "quant-watch",              # the systemd unit's name, default file names
        "install_dir": "/opt/quant-remediation",  # the project and its .venv on the host
        "config_dir": "/etc/quant-watch",   # the host's own inventory and secret copies (0700)
        "supervisor": "auto",               # auto: systemd where it is PID 1, else a supervised process
        "dry": False,                       # the watcher only reports what it would run
    }

The host's own inventory is this host's data minus its connection keys (``ssh_*``, pyinfra's
``_sudo`` and friends) and minus ``exclude``'s blocks. A secret the data names by file
(``{"file": "/path/on/the/controller"}``) is copied to ``<config_dir>/secrets/`` (0600, root)
and the copy named instead; one named by variable (``{"env": "VAR"}``) goes, with the value the
controller has, into ``<config_dir>/secrets/env`` (0600), the service's EnvironmentFile. No
secret is ever in the unit, on a command line or in the inventory file.

The project is installed offline: the controller's wheel cache (``wheels``, filled by
scripts/setup) and a bundle of this checkout are uploaded; the host's ``python3 -m venv`` and
pip (run from its wheel) install from them with ``--no-index``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt

from tasks.settings.base import Block, Pattern
from tasks.settings.types import HostPath

DEFAULT_NAME = "quant-watch"


class WatcherSettings(Block):
    """The watcher installed on the host, supervised, watching the host's own stack."""

    present: StrictBool = Field(True, description="False: stop the watcher and remove what was installed")
    name: Annotated[
        str, Pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "letters, digits, '.', '_', '-' (max 64)")
    ] = DEFAULT_NAME
    install_dir: HostPath = Field(
        "/opt/quant-remediation", description="the project and its .venv on the host"
    )
    config_dir: HostPath = Field(
        "/etc/quant-watch", description="the host's own inventory and secret copies (0700, root)"
    )
    audit_file: HostPath | None = Field(
        None, description="the watcher's audit (JSON lines); None: /var/log/quant-remediation/<name>.jsonl"
    )
    supervisor: Literal["auto", "systemd", "process"] = Field(
        "auto",
        description="auto: a systemd service where systemd is PID 1, else a supervised process "
        "(a restart loop, started now; not at boot: no init system runs it)",
    )
    python: HostPath = Field("/usr/bin/python3", description="the host's Python (3.11, with its venv module)")
    wheels: str | None = Field(
        None, min_length=1, description="wheel cache on the controller (None: <checkout>/.lab/wheels)"
    )
    dry: StrictBool = Field(False, description="the watcher runs nothing: it audits what it would run")
    grace: StrictInt | None = Field(
        None, ge=1, le=3600, description="scripts/watch --grace (None: its default)"
    )
    max_concurrent: StrictInt | None = Field(None, ge=1, le=64, description="scripts/watch --max-concurrent")
    breaker: StrictInt | None = Field(None, ge=1, le=100, description="scripts/watch --breaker")
    restart_sec: StrictInt = Field(5, ge=1, le=3600, description="systemd RestartSec after a failure")
    collect_dir: str = Field(
        "watch-audit",
        min_length=1,
        description="deploys/collect_watch_audit.py: where the hosts' audits go on the controller "
        "(<collect_dir>/<host>.jsonl; relative: to the current directory)",
    )
    exclude: list[Annotated[str, Pattern(r"[A-Za-z_][A-Za-z0-9_]*", "a host data key")]] = Field(
        default_factory=lambda: ["onboard", "cleanup_schedule"],
        description="host data keys left out of the host's own inventory (besides connection keys)",
    )

    @property
    def audit_path(self) -> str:
        return self.audit_file or f"/var/log/quant-remediation/{self.name}.jsonl"
