"""
Log signatures, pure: the catalog (tasks/core/signatures.yml), matching, throttling, decisions.

Long because the catalog's validation and its matching are one pure layer over one type
(:class:`Signature`): each rule the validator enforces is there for a matcher below it, and the two
are read together; the decisions on top already live apart (tasks/core/remediation.py).

One catalog serves both readers: deploys/remediate.py (which fix a finding calls for) and
deploys/verify_stack.py (which log lines fail the check "logs show no known failure").

:func:`read_catalog` validates the YAML and names the entry of every problem; :func:`match_lines`
/ :func:`match_state` turn ``docker logs --timestamps`` lines and ``docker inspect`` state into
:class:`Finding` s with masked evidence; :func:`decide` groups findings into one :class:`Action`
per (remediation, target) and says, from the host's last-run record, whether it runs, is
throttled, was already handled, or is only reported (tasks/core/remediation.py). :func:`log_patterns` and
:func:`match_signatures` are verify_stack's view: every non-informational pattern for a role.

A line counts for the *first* entry that matches it, so specific entries (with a fix) come before
general ones (reported only) in the catalog.

Old lines after a fix: a line (or an OOM/restart state) dated at or before the last recorded run
of the remediation it calls for was *handled* by that run and never triggers anything again. A
line dated after it is fresh: inside the signature's throttle window it is reported "throttled",
after the window the remediation runs again. The record is written on the host only when a
remediation ran, stamped with the host's clock after it finished, the same clock ``docker logs``
uses, so a second run right after a successful fix finds nothing to do. Informational signatures
have no record: they are reported on every run while their lines are inside ``since``.

The read itself is the fact :class:`tasks.facts.diagnose.HostDiagnosis`; its output is parsed
here (:func:`parse_diagnosis_output`).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.core.durations import parse_duration

CATALOG = Path(__file__).with_name("signatures.yml")
REMEDIATIONS = ("fix_mlflow", "db_users", "backend_reload", "none")
SEVERITIES = ("info", "warning", "error", "critical")
STATES = ("oom_killed", "restart_loop")
REQUIRED = ("id", "containers", "severity", "remediation")
OPTIONAL = ("description", "pattern", "state", "min_restarts", "throttle")
DEFAULT_THROTTLE = 1800
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_ROLE = re.compile(r"[a-z][a-z0-9_-]*\Z")


@dataclass(frozen=True)
class Signature:
    id: str
    containers: tuple[str, ...]
    severity: str
    remediation: str
    pattern: str | None = None
    state: str | None = None
    min_restarts: int = 3
    throttle: float = DEFAULT_THROTTLE  # seconds
    description: str = ""

    @property
    def regex(self) -> re.Pattern:
        if self.pattern is None:
            raise ValueError(f"signature {self.id} has no pattern")
        return _compiled(self.pattern)


def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _entry_problems(where: str, item: Any, known_remediations: Iterable[str]) -> tuple[list[str], dict]:
    problems: list[str] = []
    if not isinstance(item, Mapping):
        return [f"{where}: must be a mapping, not {type(item).__name__}"], {}
    for key in sorted(set(item) - set(REQUIRED) - set(OPTIONAL), key=str):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
    for key in REQUIRED:
        if item.get(key) in (None, "", []):
            problems.append(f"{where}: missing {key!r}")
    out: dict[str, Any] = {}
    sid = item.get("id")
    if sid is not None:
        if not isinstance(sid, str) or not _ID.match(sid):
            problems.append(f"{where}: id {sid!r} must be letters, digits, '-', '_' or '.'")
        else:
            out["id"] = sid
    containers = item.get("containers")
    if isinstance(containers, str):
        containers = [containers]
    if containers not in (None, "", []):
        if not isinstance(containers, list) or not all(
            isinstance(c, str) and _ROLE.match(c) for c in containers
        ):
            problems.append(f"{where}: containers must be a list of service roles (e.g. [mlflow, postgres])")
        else:
            out["containers"] = tuple(containers)
    severity = item.get("severity")
    if severity not in (None, "") and severity not in SEVERITIES:
        problems.append(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    else:
        out["severity"] = severity
    remediation = item.get("remediation")
    known = tuple(known_remediations)
    if remediation not in (None, "") and remediation not in known:
        problems.append(f"{where}: unknown remediation {remediation!r} (known: {', '.join(known)})")
    else:
        out["remediation"] = remediation
    pattern, state = item.get("pattern"), item.get("state")
    if (pattern is None) == (state is None):
        problems.append(f"{where}: give exactly one of 'pattern' (a regex) or 'state' ({' | '.join(STATES)})")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern.strip():
            problems.append(f"{where}: pattern must be a non-empty regex")
        else:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                problems.append(f"{where}: bad regex {pattern!r}: {exc}")
            else:
                if compiled.search(""):
                    problems.append(f"{where}: pattern {pattern!r} matches every line")
                elif remediation == "db_users" and "role" not in compiled.groupindex:
                    problems.append(
                        f"{where}: remediation db_users needs a (?P<role>...) group "
                        "naming the role in the pattern"
                    )
                else:
                    out["pattern"] = pattern
    if state is not None:
        if state not in STATES:
            problems.append(f"{where}: state {state!r} is not one of {', '.join(STATES)}")
        elif remediation == "db_users":
            problems.append(f"{where}: remediation db_users needs a pattern naming the role")
        else:
            out["state"] = state
    if "min_restarts" in item:
        value = item["min_restarts"]
        if state != "restart_loop":
            problems.append(f"{where}: min_restarts only applies to state restart_loop")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{where}: min_restarts must be a whole number >= 1")
        else:
            out["min_restarts"] = value
    if item.get("throttle") is not None:
        try:
            seconds = parse_duration(item["throttle"])
            out["throttle"] = int(seconds) if seconds == int(seconds) else seconds
        except ValueError as exc:
            problems.append(f"{where}: throttle {exc}")
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        problems.append(f"{where}: description must be text")
    elif description:
        out["description"] = description
    return problems, out


def read_catalog(
    path: str | Path | None = None, text: str | None = None, known_remediations: Iterable[str] = REMEDIATIONS
) -> tuple[tuple[Signature, ...], list[str]]:
    """(signatures, problems) of a catalog (the packaged one by default). Every problem names
    its entry (``signatures[2] 'my-id': ...``); with any problem the signatures are not to be used."""
    if text is None:
        try:
            text = Path(path or CATALOG).expanduser().read_text()
        except OSError as exc:
            return (), [f"cannot read it: {exc.strerror or exc}"]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return (), [f"not valid YAML: {exc}"]
    entries = doc.get("signatures") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list) or not entries:
        return (), ["expected a top-level 'signatures:' list with at least one entry"]
    problems: list[str] = []
    if isinstance(doc, Mapping):
        for key in sorted(set(doc) - {"signatures"}, key=str):
            problems.append(f"unknown top-level key {key!r} (known: signatures)")
    signatures: list[Signature] = []
    seen: set[str] = set()
    for index, item in enumerate(entries):
        name = item.get("id") if isinstance(item, Mapping) else None
        where = f"signatures[{index}]" + (f" {name!r}" if isinstance(name, str) else "")
        entry_problems, fields = _entry_problems(where, item, known_remediations)
        if isinstance(name, str) and name in seen:
            entry_problems.append(f"{where}: id {name!r} is used twice")
        if isinstance(name, str):
            seen.add(name)
        if entry_problems:
            problems += entry_problems
            continue
        signatures.append(Signature(**fields))
    return tuple(signatures), problems


def load_catalog(
    path: str | Path | None = None, text: str | None = None, known_remediations: Iterable[str] = REMEDIATIONS
) -> tuple[Signature, ...]:
    """The signatures of a valid catalog; ValueError listing every problem otherwise. (Deploys
    read a host's catalog through tasks.settings.remediate.host_catalog: a SettingsError.)"""
    signatures, problems = read_catalog(path, text, known_remediations)
    if problems:
        source = "(text)" if text is not None else str(path or CATALOG)
        raise ValueError(f"signature catalog {source}:\n  " + "\n  ".join(problems))
    return signatures


# -- secrets in evidence -------------------------------------------------------------------------

MASK = "***"
_MASKS = (
    # scheme://user:password@host
    (re.compile(r"(?P<k>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?P<v>@)"), r"\g<k>***\g<v>"),
    # Authorization: Bearer xxx / Basic xxx
    (re.compile(r"(?i)(?P<k>\b(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<k>***"),
    # password=..., "token": "...", AWS_SECRET_ACCESS_KEY=..., X-Amz-Signature=...
    (
        re.compile(r"""(?ix)(?P<k>\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key
                     |private[_-]?key|credential|signature|session[_-]?key)[\w.-]*["']?\s*[=:]\s*["']?)
                     (?!\*\*\*)[^\s"'&,;)}\]]+"""),
        r"\g<k>***",
    ),
    # JSON Web Tokens anywhere
    (re.compile(r"\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]+"), MASK),
)


def mask_secrets(text: str) -> str:
    """Evidence as it may be shown: passwords in connection strings, tokens and key=value
    secrets replaced by ``***``."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


# -- time ------------------------------------------------------------------------------------------

_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?")


def parse_time(text: str | None) -> _dt.datetime | None:
    """Docker's RFC 3339 times (nanoseconds, ``Z``) as aware datetimes; None when unset/unreadable
    (Docker's zero time ``0001-01-01T00:00:00Z`` is unset)."""
    if not text:
        return None
    match = _TS.match(text.strip())
    if not match:
        return None
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    zone = match[3] or "Z"
    zone = "+00:00" if zone == "Z" else (zone if ":" in zone else zone[:3] + ":" + zone[3:])
    try:
        value = _dt.datetime.fromisoformat(f"{match[1]}.{fraction}{zone}")
    except ValueError:
        return None
    return None if value.year < 1970 else value.astimezone(_dt.UTC)


def iso_time(value: _dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


# -- matching ----------------------------------------------------------------------------------------


@dataclass
class Finding:
    signature: str
    severity: str
    remediation: str
    role: str  # the service role (mlflow, postgres, ...)
    container: str  # its container on this host
    timestamp: str | None  # RFC 3339, host clock
    evidence: str  # the matched line or state, secrets masked
    params: dict = field(default_factory=dict)  # named groups of the pattern (e.g. role)
    source: str = "log"  # log | state

    @property
    def time(self) -> _dt.datetime | None:
        return parse_time(self.timestamp)


def split_log_line(line: str) -> tuple[str | None, str]:
    """``2026-01-02T03:04:05.123456789Z message`` -> (timestamp, message)."""
    stamp, _, rest = line.partition(" ")
    if parse_time(stamp) is not None:
        return stamp, rest
    return None, line


def match_lines(
    signatures: Iterable[Signature], role: str, container: str, lines: Iterable[str]
) -> list[Finding]:
    """Findings for the pattern signatures that read ``role``'s container: at most one per line,
    for the first entry (in catalog order) that matches it."""
    wanted = [s for s in signatures if s.pattern and role in s.containers]
    findings: list[Finding] = []
    if not wanted:
        return findings
    for line in lines:
        stamp, message = split_log_line(line.rstrip("\r\n"))
        for sig in wanted:
            match = sig.regex.search(message)
            if match:
                params = {k: v for k, v in match.groupdict().items() if v is not None}
                findings.append(
                    Finding(
                        sig.id,
                        sig.severity,
                        sig.remediation,
                        role,
                        container,
                        stamp,
                        mask_secrets(message.strip())[:500],
                        params,
                    )
                )
                break
    return findings


def log_patterns(
    signatures: Iterable[Signature], role: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """verify_stack's view of the catalog: name -> regex of every pattern entry that reads
    ``role``'s container (informational ones are no failure), then ``extra`` (for any role)."""
    found = {
        s.id: s.pattern for s in signatures if s.pattern and s.severity != "info" and role in s.containers
    }
    return {**found, **(extra or {})}


def match_signatures(lines: Iterable[str], patterns: Mapping[str, str]) -> dict[str, list[str]]:
    """name -> the lines it matched (each line counted once, for the first pattern matching it)."""
    found: dict[str, list[str]] = {}
    compiled = {name: _compiled(pattern) for name, pattern in patterns.items()}
    for line in lines:
        for name, pattern in compiled.items():
            if pattern.search(line):
                found.setdefault(name, []).append(line.strip())
                break
    return found


def match_state(
    signatures: Iterable[Signature], role: str, container: str, state: Mapping | None, restart_count: int
) -> list[Finding]:
    """Findings for the state signatures: OOM-killed (dated when it ended), restart loop
    (dated at its latest start)."""
    findings: list[Finding] = []
    if not state:
        return findings
    for sig in signatures:
        if not sig.state or role not in sig.containers:
            continue
        if sig.state == "oom_killed" and state.get("OOMKilled"):
            stamp = state.get("FinishedAt") if parse_time(state.get("FinishedAt")) else state.get("StartedAt")
            findings.append(
                Finding(
                    sig.id,
                    sig.severity,
                    sig.remediation,
                    role,
                    container,
                    stamp,
                    f"docker inspect: OOMKilled=true, status {state.get('Status')}, "
                    f"exit code {state.get('ExitCode')}",
                    source="state",
                )
            )
        elif sig.state == "restart_loop" and restart_count >= sig.min_restarts:
            findings.append(
                Finding(
                    sig.id,
                    sig.severity,
                    sig.remediation,
                    role,
                    container,
                    state.get("StartedAt"),
                    f"docker inspect: restarted {restart_count} times "
                    f"(status {state.get('Status')}, exit code {state.get('ExitCode')})",
                    source="state",
                )
            )
    return findings


# -- the diagnosis fact's output (tasks.facts.diagnose.HostDiagnosis) ---------------------------------

SECTION = "### quantlab-diagnose "


def parse_diagnosis_output(output: Iterable[str]) -> dict:
    sections: dict[str, list[str]] = {}
    current = None
    for line in output:
        if line.startswith(SECTION):
            current = line[len(SECTION) :].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    result: dict[str, Any] = {
        "now": None,
        "record": None,
        "record_error": None,
        "record_unreadable": False,
        "containers": {},
    }
    for key, lines in sections.items():
        kind, _, name = key.partition(" ")
        if kind == "state":
            entry = result["containers"].setdefault(name, {"lines": []})
            text = "\n".join(lines).strip()
            if not text or text == "missing":
                entry.update(exists=False, state={}, restart_count=0)
            else:
                state_json, _, count = text.rpartition(" ")
                entry.update(
                    exists=True,
                    state=json.loads(state_json),
                    restart_count=int(count) if count.isdigit() else 0,
                )
        elif kind == "logs":
            entry = result["containers"].setdefault(name, {"exists": False, "state": {}, "restart_count": 0})
            entry["lines"] = lines
        elif kind == "record":
            text = "\n".join(lines).strip()
            if text:
                try:
                    result["record"] = json.loads(text)
                except json.JSONDecodeError as exc:
                    result["record_error"] = f"unreadable ({exc.msg}); treated as empty"
        elif kind == "record-unreadable":
            result["record_unreadable"] = True
        elif kind == "now":
            result["now"] = lines[0].strip() if lines else None
    return result
