"""What the watcher's install left on a host: which project bundle and which wheel set are
installed (their content hashes, written last by each install step). Read-only."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class WatcherInstalled(FactBase):
    """``{"project": hash or None, "wheels": hash or None}`` under ``install_dir``: the project
    bundle extracted there, and the venv installed from that wheel set (its python runs)."""

    def command(self, install_dir: str):
        d = shlex.quote(install_dir)
        return (
            f"echo project=$(cat {d}/.quant-project 2>/dev/null); "
            f"if {d}/.venv/bin/python -c '' 2>/dev/null; "
            f"then echo wheels=$(cat {d}/.venv/.quant-wheels 2>/dev/null); else echo wheels=; fi"
        )

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {key: (values.get(key) or "").strip() or None for key in ("project", "wheels")}


class SupervisedWatcher(FactBase):
    """The pid of the watcher's supervisor loop (hosts without systemd), or None: the pid in
    ``pid_file``, when that process runs ``script``."""

    def command(self, pid_file: str, script: str):
        return (
            f"pid=$(cat {shlex.quote(pid_file)} 2>/dev/null); "
            'case "$pid" in ""|*[!0-9]*) exit 0 ;; esac; '
            f"if tr '\\000' ' ' </proc/$pid/cmdline 2>/dev/null | grep -qF -- {shlex.quote(script)}; "
            "then echo $pid; fi"
        )

    def process(self, output):
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None
