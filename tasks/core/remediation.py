"""Which remediation runs: findings grouped into actions, the throttle, the host's last-run record.

Pure (tasks/core/signatures.py finds; this decides). Old lines after a fix: a finding dated at or
before the last recorded run of the remediation it calls for was *handled* by that run and never
triggers anything again. A finding dated after it is fresh: inside the throttle window it is
reported "throttled", after the window the remediation runs again. Informational signatures have
no record: they are reported on every run while their lines are inside ``since``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from tasks.core.signatures import DEFAULT_THROTTLE, SEVERITIES, Finding, Signature, iso_time, parse_time

RECORD_VERSION = 1

STATUS_RUN = "run"  # the remediation runs on this run
STATUS_THROTTLED = "throttled"  # fresh evidence, but the same remediation ran within the window
STATUS_HANDLED = "handled"  # all evidence predates the last run of its remediation
STATUS_INFO = "informational"  # severity info, no remediation
STATUS_REPORTED = "reported"  # no remediation for it (or unknown role): reported, nothing done
STATUS_DEFERRED = "deferred"  # would run, but another remediation was forced (:func:`force`)


@dataclass
class Action:
    key: str  # "<remediation>:<target>" (the record's key)
    remediation: str
    target: str  # container name, or the role for db_users
    status: str
    severity: str
    signatures: list[str]
    reason: str
    throttle: float = 0  # seconds, as Signature.throttle
    last_run: str | None = None
    throttled_until: str | None = None
    findings: list[Finding] = field(default_factory=list)  # fresh ones
    handled: int = 0  # findings at or before the last run

    def to_dict(self, evidence_limit: int = 20) -> dict:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.findings[-evidence_limit:]]
        data["findings_total"] = len(self.findings)
        return data


def _target(finding: Finding) -> str:
    if finding.remediation == "db_users":
        return finding.params.get("role", "?")
    if finding.remediation == "none":
        return f"{finding.signature}@{finding.container}"
    return finding.container


def decide(
    findings: Iterable[Finding],
    catalog: Iterable[Signature],
    record: Mapping | None,
    now: _dt.datetime,
    configured_roles: Iterable[str] = (),
) -> list[Action]:
    """One Action per (remediation, target): run, throttled, handled, informational or reported."""
    by_id = {s.id: s for s in catalog}
    runs = (record or {}).get("runs") or {}
    roles = set(configured_roles)
    order = {name: i for i, name in enumerate(SEVERITIES)}
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        groups.setdefault(f"{finding.remediation}:{_target(finding)}", []).append(finding)
    actions = []
    for key, group in groups.items():
        group.sort(key=lambda f: f.timestamp or "")
        first = group[0]
        remediation, target = first.remediation, _target(first)
        severity = max((f.severity for f in group), key=lambda s: order.get(s, 0))
        sig_ids = sorted({f.signature for f in group})
        throttle = max(by_id[s].throttle if s in by_id else DEFAULT_THROTTLE for s in sig_ids)
        action = Action(key, remediation, target, STATUS_RUN, severity, sig_ids, "", throttle)
        if remediation == "none":
            action.status = STATUS_INFO if severity == "info" else STATUS_REPORTED
            action.reason = (
                "no action" if severity == "info" else "no packaged fix for this: reported, nothing changed"
            )
            action.findings = group
            actions.append(action)
            continue
        if remediation == "db_users" and target not in roles:
            action.status = STATUS_REPORTED
            action.reason = f"user {target!r} is not a configured role (db_roles): reported, never created"
            action.findings = group
            actions.append(action)
            continue
        last = parse_time((runs.get(key) or {}).get("ran_at"))
        action.last_run = iso_time(last)
        fresh = [f for f in group if last is None or f.time is None or f.time > last]
        action.handled = len(group) - len(fresh)
        action.findings = fresh
        if not fresh:
            action.status = STATUS_HANDLED
            action.reason = f"all {len(group)} finding(s) predate its last run at {iso_time(last)}"
        elif last is not None and (now - last).total_seconds() < throttle:
            until = last + _dt.timedelta(seconds=throttle)
            action.status = STATUS_THROTTLED
            action.throttled_until = iso_time(until)
            action.reason = (
                f"throttled: {remediation} ran for {target} at {iso_time(last)}; "
                f"not again before {iso_time(until)} ({len(fresh)} new finding(s) since)"
            )
        else:
            action.reason = f"{len(fresh)} finding(s)" + (
                f" since its last run at {iso_time(last)}" if last else ""
            )
        actions.append(action)
    return _sorted(actions)


_RANK = {
    STATUS_RUN: 0,
    STATUS_THROTTLED: 1,
    STATUS_DEFERRED: 2,
    STATUS_REPORTED: 3,
    STATUS_INFO: 4,
    STATUS_HANDLED: 5,
}


def _sorted(actions: list[Action]) -> list[Action]:
    order = {name: i for i, name in enumerate(SEVERITIES)}
    return sorted(actions, key=lambda a: (_RANK[a.status], -order.get(a.severity, 0), a.key))


def parse_key(key: str) -> tuple[str, str]:
    """``<remediation>:<target>`` -> (remediation, target); ValueError when either part is empty."""
    name, _, target = key.partition(":")
    if not name.strip() or not target.strip() or name == "none":
        raise ValueError(f"{key!r} is not <remediation>:<target> (for example db_users:quant_user)")
    return name.strip(), target.strip()


def force(actions: Iterable[Action], key: str, configured_roles: Iterable[str] = ()) -> list[Action]:
    """Only the action ``key`` runs (the watcher saw its evidence and chose it): run even when
    the host's record would throttle it or call its evidence handled (the watcher's own throttle
    and breaker decided; its retries must run), and added with no finding when this run's logs
    hold none. Every other action that would run is deferred (left for its own run). A db_users
    key whose role ``configured_roles`` does not list is reported, never run."""
    remediation, target = parse_key(key)
    out = []
    found = False
    for action in actions:
        if action.key == key:
            found = True
            if action.status in (STATUS_THROTTLED, STATUS_HANDLED):
                action.reason = f"forced ({key}); the record alone would say: {action.reason}"
                action.status = STATUS_RUN
            elif action.status == STATUS_RUN:
                action.reason = f"forced ({key}); {action.reason}"
        elif action.status == STATUS_RUN:
            action.status = STATUS_DEFERRED
            action.reason = f"deferred: only {key} was asked for ({action.reason})"
        out.append(action)
    if not found:
        action = Action(
            key,
            remediation,
            target,
            STATUS_RUN,
            "error",
            [],
            f"forced ({key}): no finding in this run's logs",
        )
        if remediation == "db_users" and target not in set(configured_roles):
            action.status = STATUS_REPORTED
            action.reason = f"user {target!r} is not a configured role (db_roles): reported, never created"
        out.append(action)
    return _sorted(out)


def updated_record(record: Mapping | None, ran: Iterable[Action], ran_at: str, result: str) -> dict:
    """The host's last-run record with these actions stamped at ``ran_at`` (host clock)."""
    data = dict(record or {})
    runs = dict(data.get("runs") or {})
    for action in ran:
        runs[action.key] = {
            "ran_at": ran_at,
            "remediation": action.remediation,
            "target": action.target,
            "signatures": action.signatures,
            "result": result,
        }
    return {"version": RECORD_VERSION, "runs": runs}


def format_actions(actions: Iterable[Action], evidence: int = 3) -> list[str]:
    """Lines for the log: each action with its reason and its latest evidence lines."""
    lines = []
    for a in actions:
        label = {
            "run": f"-> {a.remediation}",
            "throttled": "throttled",
            "handled": "nothing to do",
            "informational": "informational",
            "reported": "reported",
            "deferred": "deferred",
        }[a.status]
        lines.append(f"[{a.severity}] {', '.join(a.signatures)} ({a.target}): {label}; {a.reason}")
        shown = a.findings[-evidence:]
        for f in shown:
            lines.append(f"    {f.timestamp or '-'} {f.container}: {f.evidence[:220]}")
        if len(a.findings) > len(shown):
            lines.append(f"    ... and {len(a.findings) - len(shown)} earlier line(s)")
    return lines
