"""
The event-driven watcher's decisions, pure: a log line or a ``docker events`` record in, zero or
one "remediate <name> on <host> for <target>" out, with the storm guards around it.

Long because the guards are one state machine over one map of targets (:class:`_Target`), and
each guard (throttle, concurrency, breaker, burst collapse, self-trigger suppression) reads and
writes the same fields: split apart they would have to share that state anyway.

It reuses the signature catalog (tasks/core/signatures.py) and its decisions
(tasks/core/remediation.py): a line becomes a :class:`~tasks.core.signatures.Finding` through
``match_lines``; :func:`~tasks.core.remediation.decide` turns it into an action (its key
``<remediation>:<target>``, the catalog's throttle, a db_users role that ``db_roles`` does not list
reported and never created). The watcher keeps, per (host, key):

- ``pending``: a run is wanted but the global limit (``max_concurrent``) is reached, or its host
  already runs one (``per_host``: remediations on one host share its last-run record and its
  containers, so they go one after another); :meth:`Watcher.ready` hands it out when a slot frees.
- ``running``: every matching line or event is *collapsed* into it (counted, never a new run).
- after a run, the catalog's ``throttle`` window (from its end) for a verified run; lines inside
  ``grace`` seconds after the end are the remediation's own and ignored (suppressed). Events on
  the containers the remediation touches (``<container>`` and ``<container>-previous``) during the
  run and the grace window are suppressed too: a recreate's die/start is not an incident.
- a failed run is retried ``retry_delay`` seconds after its end (without a new line), until
  ``breaker_failures`` failures in a row open the breaker: reported once, never tried again while
  the watcher runs. A verified run resets the count.
- a watcher restarted on its audit file takes those windows, counts and breakers over from the
  records of the last day (:meth:`Watcher.resume`).

A host whose connection failed is audited once as "disconnected" (:meth:`Watcher.host_down`) and
once as "reconnected" with how long it was away (:meth:`Watcher.host_up`).

Time is injected (``clock``: seconds since the epoch), so tests are exact. Every finding and action
is an audit record (:meth:`Watcher.drain_audit`), one JSON line each (:func:`audit_line`), and a
one-line console summary (:func:`summary_line`).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.core import remediation
from tasks.core.signatures import DEFAULT_THROTTLE, Finding, Signature, match_lines

# docker events the watcher follows (docker events --filter event=...)
EVENTS = ("die", "oom", "health_status", "restart")

IDLE, PENDING, RUNNING, COOLING, RETRY, OPEN = "idle", "pending", "running", "cooling", "retry", "open"
RESUME_HORIZON = 86400.0  # audit records older than this (seconds) carry nothing over


@dataclass(frozen=True)
class Decision:
    """Run ``remediation`` on ``host`` for ``target`` (why: ``signature``, ``evidence``)."""

    host: str
    remediation: str
    target: str
    key: str  # "<remediation>:<target>", as the host's last-run record names it
    signature: str
    evidence: str
    containers: tuple[str, ...]  # the containers it may restart (events on them are its own)
    attempt: int = 1

    def describe(self) -> str:
        return f"remediate {self.remediation} on {self.host} for {self.target}"


@dataclass
class _Target:
    host: str
    key: str
    remediation: str
    target: str
    throttle: float
    state: str = IDLE
    decision: Decision | None = None
    started: float = 0.0
    ended: float = -1e18
    until: float = -1e18  # end of the throttle window (state COOLING) or the retry time (RETRY)
    failures: int = 0
    collapsed: int = 0  # lines/events folded into the current pending/running/cooling phase
    suppressed: int = 0  # the remediation's own lines/events ignored
    containers: tuple[str, ...] = ()


@dataclass
class Settings:
    max_concurrent: int = 2  # remediations running at once, all hosts together
    breaker_failures: int = 3  # failures in a row for one target that open its breaker
    grace: float = 60.0  # seconds after a run whose lines and events are the run's own
    retry_delay: float = 30.0  # seconds after a failed run before it is tried again
    restart_window: float = 600.0  # die/restart events counted within this window (restart loops)
    dry: bool = False  # decisions are audited "would run" instead of "started"
    per_host: int = 1  # remediations running at once on one host


def _iso(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(text: Any) -> float | None:
    """An audit record's time (as :func:`_iso` writes it) in seconds, else None."""
    try:
        stamp = _dt.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return None
    return stamp.replace(tzinfo=_dt.UTC).timestamp()


@dataclass
class Watcher:
    """The watcher's state over every host. Feed it lines (:meth:`feed_log`) and events
    (:meth:`feed_event`); start what they return, report the end with :meth:`finished`, poll
    :meth:`ready` for queued and retried runs."""

    catalog: tuple[Signature, ...]
    clock: Callable[[], float]
    settings: Settings = field(default_factory=Settings)
    configured_roles: Mapping[str, Iterable[str]] = field(default_factory=dict)  # host -> db_roles
    # host -> its own catalog (host data remediate.catalog); a host not named reads ``catalog``
    catalogs: Mapping[str, tuple[Signature, ...]] = field(default_factory=dict)
    targets: dict[tuple[str, str], _Target] = field(default_factory=dict)
    _audit: list[dict] = field(default_factory=list)
    _reported: dict[tuple[str, str], float] = field(default_factory=dict)  # no-fix findings: last audit
    _restarts: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _down: dict[str, float] = field(default_factory=dict)  # host -> since when its connection failed

    # -- input ----------------------------------------------------------------------------------

    def feed_log(self, host: str, role: str, container: str, line: str) -> Decision | None:
        """One ``docker logs --timestamps`` line of ``role``'s container on ``host``."""
        findings = match_lines(self.catalog_of(host), role, container, [line])
        return self._finding(host, findings[0]) if findings else None

    def feed_event(self, host: str, role: str, event: Mapping[str, Any]) -> Decision | None:
        """One ``docker events --format '{{json .}}'`` record of ``role``'s container."""
        action = str(event.get("Action") or event.get("status") or "")
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        container = str(attrs.get("name") or event.get("from") or "?")
        now = self.clock()
        if self._own_event(host, container, now):
            return None
        stamp = _event_time(event, now)
        kind = action.split(":", 1)[0].strip()
        if kind == "oom":
            state, evidence = "oom_killed", f"engine event: oom in {container}"
        elif kind in ("die", "restart"):
            times = [
                t for t in self._restarts.get((host, container), []) if now - t < self.settings.restart_window
            ]
            times.append(now)
            self._restarts[(host, container)] = times
            sig = self._state_signature(host, role, "restart_loop")
            if sig is None or len(times) < sig.min_restarts:
                return None
            state = "restart_loop"
            evidence = (
                f"engine event: {kind} of {container} ({len(times)} within {self.settings.restart_window:.0f}s"
                + (f", exit code {attrs.get('exitCode')}" if "exitCode" in attrs else "")
                + ")"
            )
        elif kind == "health_status" and "unhealthy" in action:
            self._report_once(
                host,
                f"unhealthy@{container}",
                "health-unhealthy",
                container,
                f"engine event: {action.strip()} of {container}",
                now,
            )
            return None
        else:
            return None
        sig = self._state_signature(host, role, state)
        if sig is None:
            return None
        finding = Finding(
            sig.id, sig.severity, sig.remediation, role, container, stamp, evidence, source="event"
        )
        return self._finding(host, finding)

    def resume(self, records: Iterable[Any], horizon: float = RESUME_HORIZON) -> int:
        """Carry an earlier watcher's guards over from its audit records (oldest first), so that
        a watcher restarted during an incident (by its supervisor, say) neither runs a fix again
        inside the throttle window of a verified run (forced runs skip the host record's
        throttle: this one is the guard) nor closes a breaker. Failed and interrupted runs count
        toward the breaker, and so does a run started or queued and never finished (the watcher
        died during it, or before it); dry runs count for nothing. Records older than
        ``horizon`` seconds and anything that is not such a record are skipped. Each target still
        held back is audited once ("resumed"). Returns how many targets were carried over."""
        now = self.clock()
        unfinished: dict[tuple[str, str], float] = {}
        carried: dict[tuple[str, str], tuple[_Target, str]] = {}
        for r in records:
            if not isinstance(r, Mapping) or r.get("kind") not in ("finding", "action", "breaker"):
                continue
            host, name, target = (str(r.get(k) or "") for k in ("host", "remediation", "target"))
            at = _seconds(r.get("time"))
            if not (host and name and target) or at is None or now - at > horizon:
                continue
            signature = str(r.get("signature") or "")
            throttle = next(
                (s.throttle for s in self.catalog_of(host) if s.id == signature), DEFAULT_THROTTLE
            )
            t = self._target(host, f"{name}:{target}", name, target, throttle, target)
            carried[(host, t.key)] = (t, signature)
            kind, result = r["kind"], r.get("result")
            # "queued": a retry, or a run waiting for a slot
            if kind == "finding" and result in ("started", "queued"):
                unfinished[(host, t.key)] = at
            elif kind == "action" and result in ("verified", "failed", "interrupted"):
                unfinished.pop((host, t.key), None)
                t.ended = at
                if result == "verified":
                    t.failures, t.state, t.until = 0, COOLING, at + t.throttle
                else:
                    t.failures, t.state = t.failures + 1, IDLE
            elif kind == "breaker" and result == "open":
                t.state = OPEN
        for key, at in unfinished.items():
            t = carried[key][0]
            t.failures, t.ended = t.failures + 1, at
            if t.state != OPEN:
                t.state = IDLE
        for t, signature in carried.values():
            if t.failures >= self.settings.breaker_failures:
                t.state = OPEN
            if t.state == OPEN:
                said = "breaker open: not tried again (a watcher with a new --audit file starts afresh)"
            elif t.state == COOLING and t.until > now:
                said = f"throttled until {_iso(t.until)}"
            elif t.failures:
                said = f"{t.failures} failed run(s) in a row of {self.settings.breaker_failures}"
            else:
                continue
            self._record(t, "resume", said, "resumed", signature, "from the audit of an earlier watcher")
        return len(carried)

    # -- output ---------------------------------------------------------------------------------

    def ready(self) -> list[Decision]:
        """Runs that may start now: queued ones (a slot is free) and due retries, oldest first."""
        now = self.clock()
        out = []
        for t in self.targets.values():
            if t.state == RETRY and now >= t.until and t.decision is not None:
                t.state = PENDING
                t.decision = _replace(t.decision, attempt=t.failures + 1)
                self._record(
                    t,
                    "finding",
                    f"retry {t.failures + 1} of {self.settings.breaker_failures}",
                    "queued",
                    t.decision.signature,
                    t.decision.evidence,
                )
        for t in sorted(self.targets.values(), key=lambda t: t.started):
            if t.state == PENDING and not self._full(t.host) and t.decision:
                self._start(t, now)
                out.append(t.decision)
        return out

    def host_down(self, host: str, reason: str) -> None:
        """``host``'s connection failed (its streams reconnect with backoff): audited once until
        it is back."""
        if host in self._down:
            return
        now = self.clock()
        self._down[host] = now
        self._audit.append(
            _record(
                now,
                host,
                "host-unreachable",
                reason,
                "reconnect with backoff",
                "disconnected",
                None,
                kind="connection",
            )
        )

    def host_up(self, host: str) -> None:
        """A stream of ``host`` opened again: audited "reconnected" when it had been down."""
        since = self._down.pop(host, None)
        if since is None:
            return
        now = self.clock()
        self._audit.append(
            _record(
                now,
                host,
                "host-unreachable",
                f"down since {_iso(since)}",
                "reconnect with backoff",
                "reconnected",
                now - since,
                kind="connection",
            )
        )

    def down(self) -> list[str]:
        """Hosts whose connection is down now."""
        return sorted(self._down)

    def finished(self, decision: Decision, ok: bool, detail: str = "", result: str | None = None) -> None:
        """The run ``decision`` asked for has ended: verified (``ok``) or failed. ``result`` names
        it otherwise in the audit (a dry run: "dry-run", counted as a verified run)."""
        now = self.clock()
        t = self.targets[(decision.host, decision.key)]
        duration = now - t.started
        t.ended = now
        result = result or ("verified" if ok else "failed")
        record = self._record(
            t,
            "action",
            decision.describe(),
            result,
            decision.signature,
            decision.evidence,
            duration=duration,
            detail=detail,
        )
        record["attempt"] = decision.attempt
        collapsed, t.collapsed = t.collapsed, 0
        record["collapsed"] = collapsed
        if ok:
            t.failures = 0
            t.state = COOLING
            t.until = now + t.throttle
            return
        t.failures += 1
        if t.failures >= self.settings.breaker_failures:
            t.state = OPEN
            self._record(
                t,
                "breaker",
                f"breaker open after {t.failures} failed run(s): not tried again",
                "open",
                decision.signature,
                decision.evidence,
            )
        else:
            t.state = RETRY
            t.until = now + self.settings.retry_delay

    def running(self, host: str | None = None) -> int:
        """Remediations running now (on ``host``, or on all hosts)."""
        return sum(1 for t in self.targets.values() if t.state == RUNNING and host in (None, t.host))

    def _full(self, host: str) -> bool:
        return self.running() >= self.settings.max_concurrent or self.running(host) >= self.settings.per_host

    def drain_audit(self) -> list[dict]:
        records, self._audit = self._audit, []
        return records

    def status(self) -> dict[str, dict]:
        """Per target: state, failures, collapsed and suppressed counts (for reports and tests)."""
        return {
            f"{t.host}/{t.key}": {
                "state": t.state,
                "failures": t.failures,
                "collapsed": t.collapsed,
                "suppressed": t.suppressed,
            }
            for t in self.targets.values()
        }

    # -- the state machine ----------------------------------------------------------------------

    def _finding(self, host: str, finding: Finding) -> Decision | None:
        now = self.clock()
        roles = self.configured_roles.get(host, ())
        action = remediation.decide(
            [finding], self.catalog_of(host), None, _dt.datetime.fromtimestamp(now, _dt.UTC), roles
        )[0]
        if action.status != remediation.STATUS_RUN:
            self._report_once(
                host,
                action.key,
                finding.signature,
                finding.container,
                finding.evidence,
                now,
                action=action.status,
                reason=action.reason,
            )
            return None
        t = self._target(
            host, action.key, action.remediation, action.target, action.throttle, finding.container
        )
        if t.state == OPEN:
            t.collapsed += 1
            return None
        if t.state in (PENDING, RUNNING, RETRY):
            t.collapsed += 1
            return None
        if now < t.ended + self.settings.grace:
            t.suppressed += 1
            return None
        if t.state == COOLING and now < t.until:
            if t.collapsed == 0:
                self._record(
                    t,
                    "finding",
                    f"throttled until {_iso(t.until)}",
                    "throttled",
                    finding.signature,
                    finding.evidence,
                )
            t.collapsed += 1
            return None
        t.collapsed = 0
        t.decision = Decision(
            host, t.remediation, t.target, t.key, finding.signature, finding.evidence, t.containers
        )
        if self._full(host):
            t.state = PENDING
            t.started = now
            self._record(t, "finding", t.decision.describe(), "queued", finding.signature, finding.evidence)
            return None
        started = "would run" if self.settings.dry else "started"
        self._record(t, "finding", t.decision.describe(), started, finding.signature, finding.evidence)
        self._start(t, now)
        return t.decision

    def _target(
        self, host: str, key: str, remediation_name: str, target: str, throttle: float, container: str
    ) -> _Target:
        """The (host, key) target, made on first use; a db_users run touches no container."""
        t = self.targets.get((host, key))
        if t is None:
            containers = (container, f"{container}-previous") if remediation_name != "db_users" else ()
            t = _Target(host, key, remediation_name, target, throttle, containers=containers)
            self.targets[(host, key)] = t
        return t

    def _start(self, t: _Target, now: float) -> None:
        t.state = RUNNING
        t.started = now

    def _own_event(self, host: str, container: str, now: float) -> bool:
        for t in self.targets.values():
            if t.host != host or container not in t.containers:
                continue
            if t.state == RUNNING or now < t.ended + self.settings.grace:
                t.suppressed += 1
                return True
        return False

    def catalog_of(self, host: str) -> tuple[Signature, ...]:
        return self.catalogs.get(host, self.catalog)

    def _state_signature(self, host: str, role: str, state: str) -> Signature | None:
        return next((s for s in self.catalog_of(host) if s.state == state and role in s.containers), None)

    def _report_once(
        self,
        host: str,
        key: str,
        signature: str,
        container: str,
        evidence: str,
        now: float,
        action: str = "reported",
        reason: str = "",
    ) -> None:
        """A finding with nothing to run: audited once per ``grace`` window per (host, key)."""
        last = self._reported.get((host, key))
        if last is not None and now - last < self.settings.grace:
            return
        self._reported[(host, key)] = now
        self._audit.append(
            _record(
                now, host, signature, evidence, action, reason or "no remediation", None, container=container
            )
        )

    def _record(
        self,
        t: _Target,
        kind: str,
        action: str,
        result: str,
        signature: str,
        evidence: str,
        duration: float | None = None,
        detail: str = "",
    ) -> dict:
        record = _record(
            self.clock(),
            t.host,
            signature,
            evidence,
            action,
            result,
            duration,
            kind=kind,
            target=t.target,
            remediation=t.remediation,
        )
        if detail:
            record["detail"] = detail
        self._audit.append(record)
        return record


def _record(
    now: float,
    host: str,
    signature: str,
    evidence: str,
    action: str,
    result: str,
    duration: float | None,
    **extra: Any,
) -> dict:
    return {
        "time": _iso(now),
        "host": host,
        "signature": signature,
        "evidence": evidence,
        "action": action,
        "result": result,
        "duration": None if duration is None else round(duration, 3),
        **extra,
    }


def _replace(decision: Decision, **changes: Any) -> Decision:
    from dataclasses import replace

    return replace(decision, **changes)


def _event_time(event: Mapping[str, Any], now: float) -> str:
    nano = event.get("timeNano")
    seconds = int(nano) / 1e9 if isinstance(nano, int | float) else float(event.get("time") or now)
    return _iso(seconds)


def audit_line(record: Mapping[str, Any]) -> str:
    """One audit record as a JSON line (sorted keys, no newline inside)."""
    return json.dumps(dict(record), sort_keys=True, default=str)


def summary_line(record: Mapping[str, Any]) -> str:
    """The console's one line for an audit record."""
    took = f" in {record['duration']:.1f}s" if record.get("duration") is not None else ""
    extra = f" ({record['collapsed']} more line(s) collapsed)" if record.get("collapsed") else ""
    return (
        f"[{record['host']}] {record['time'][:19]}Z {record['signature']}: {record['action']} -> "
        f"{record['result']}{took}{extra}"
    )
