"""Log checks: a container's logs since a time show none of the known failure signatures
(tasks/core/signatures.yml, through tasks.core.signatures.log_patterns)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from tasks.checks.runner import Broken, NotYet, Session
from tasks.core.redact import MASK_LINES_AWK
from tasks.core.signatures import match_signatures

MARKER = "quantlab-logs-rc="


def grep_pattern(patterns: Mapping[str, str]) -> str:
    """One `grep -P` pattern for the host-side filter: the signatures' regexes as alternatives
    (names of groups dropped, so two signatures may use the same one), and the exit-code line."""
    unnamed = [re.sub(r"\(\?P<\w+>", "(?:", p) for p in patterns.values()]
    return "|".join([f"(?:{p})" for p in unnamed] + [f"^{MARKER}"])


def logs_command(name: str, since: str, patterns: Mapping[str, str]) -> str:
    """`docker logs --since` filtered on the host (a container's logs can be large), with
    docker's exit code as the last line: no marker means the read itself failed. URL passwords
    are masked on the host (a matched line becomes evidence in the table and the report)."""
    return (
        f"{{ docker logs --since {shlex.quote(since)} {shlex.quote(name)} 2>&1; "
        f'echo "{MARKER}$?"; }} | grep -a -P {shlex.quote(grep_pattern(patterns))} | tail -n 200 '
        f"| LC_ALL=C awk {shlex.quote(MASK_LINES_AWK)}"
    )


def no_known_failure(session: Session, name: str, patterns: Mapping[str, str], since: str):
    """A probe: no line of ``name``'s logs since ``since`` matches ``patterns`` (name -> regex);
    the exact match is Python's (the host-side grep only narrows what comes back)."""
    command = logs_command(name, since, patterns)

    def probe():
        ok, out = session.sh(command)
        lines = out.rstrip("\n").splitlines()
        if not lines or not lines[-1].startswith(MARKER):
            raise NotYet(f"reading the logs failed: {out.strip()[-160:] or 'timed out'}")
        if lines[-1] != f"{MARKER}0":
            raise NotYet(f"docker logs failed ({lines[-1][len(MARKER) :]})")
        found = match_signatures(lines[:-1], patterns)
        if found:
            summary = "; ".join(f"{len(hits)}x {sig}" for sig, hits in found.items())
            last = next(iter(found.values()))[-1]
            raise Broken(f"since {since}: {summary} (e.g. {last[-160:]!r})")
        return f"no known failure signature since {since}"

    return probe
