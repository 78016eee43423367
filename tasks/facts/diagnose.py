"""The diagnosis fact: what log-signature matching needs from a host, read in one command.

Read-only, any connector: ``docker inspect`` state and ``docker logs`` of the named containers,
the last-run record and the host's clock. Matching and decisions are pure
(tasks/core/signatures.py).
"""

from __future__ import annotations

import posixpath
import shlex

from pyinfra.api import FactBase

from tasks.core.redact import MASK_LINES_AWK
from tasks.core.signatures import SECTION, parse_diagnosis_output


class HostDiagnosis(FactBase):
    """
    Everything diagnosis needs from a host, read-only, in one command: for each container its
    ``docker inspect`` state and restart count and ``docker logs --timestamps --since --tail``
    (stdout and stderr, URL passwords masked on the host: pyinfra prints facts at -vvv), the
    last-run record, and the host's clock.

    + containers: container names (a tuple: fact arguments are hashed)
    + since: ``docker logs --since`` (a Go duration like ``2h``, or an RFC 3339 time)
    + tail: at most this many lines per container
    + record_path: the last-run record on the host

    Returns ``{"now": str, "record": dict | None, "record_error": str | None,
    "record_unreadable": bool,
    "containers": {name: {"exists": bool, "state": dict, "restart_count": int, "lines": [str]}}}``.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, containers: tuple, since: str, tail: int, record_path: str):
        # Every value one quoted word: the section lines too (a name never sits inside quotes
        # written here), and `--` so a name cannot be read as an option.
        parts = []
        for name in containers:
            q = shlex.quote(name)
            parts.append(
                f"echo {shlex.quote(f'{SECTION}state {name}')}; docker inspect --type container "
                f"-f '{{{{json .State}}}} {{{{.RestartCount}}}}' -- {q} 2>/dev/null || echo missing"
            )
            parts.append(
                f"echo {shlex.quote(f'{SECTION}logs {name}')}; {{ docker logs --timestamps "
                f"--since {shlex.quote(since)} --tail {int(tail)} -- {q} 2>&1 || true; }} "
                f"| LC_ALL=C awk {shlex.quote(MASK_LINES_AWK)}"
            )
        # A record that is there but cannot be read (its file, or a folder on its way) is not a
        # missing one: its own section, so that the throttle it holds is never silently lost.
        q_record, q_folder = shlex.quote(record_path), shlex.quote(posixpath.dirname(record_path) or ".")
        parts.append(
            f"echo '{SECTION}record'; cat {q_record} 2>/dev/null || "
            f"{{ if [ -e {q_record} ] || {{ [ -d {q_folder} ] && [ ! -x {q_folder} ]; }}; "
            f"then echo '{SECTION}record-unreadable'; fi; }}"
        )
        parts.append(f"echo '{SECTION}now'; date -u +%Y-%m-%dT%H:%M:%S.%NZ")
        return "; ".join(parts)

    def process(self, output):
        return parse_diagnosis_output(output)
