"""The end of a run, per host: one recap line each (Ansible's PLAY RECAP) and the run's JSON
document. Pure: tasks/operations/recap.py collects the outcomes from pyinfra's state.

A host's status is the worst that happened to it: ``unreachable`` (never connected), ``failed``
(an operation failed, or the host failed while planning), ``changed`` (an operation changed
something, or would with ``--dry``), else ``ok``.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_CHARS = 300


def plain(text: str) -> str:
    """``text`` without terminal colours."""
    return ANSI.sub("", text)


@dataclass
class OperationOutcome:
    name: str
    status: str  # ok | changed | failed | planned (would change, --dry) | not run
    elapsed: float | None = None  # seconds, when it ran

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.elapsed is not None:
            out["elapsed"] = round(self.elapsed, 2)
        return out


@dataclass
class HostOutcome:
    """What one host went through in one run."""

    name: str
    reachable: bool = True
    failed: bool = False
    reason: str = ""  # the first failure's reason (or why it was unreachable)
    operations: list[OperationOutcome] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)  # the plan and note lines printed for it
    checks: list[dict[str, Any]] = field(default_factory=list)  # verification results
    elapsed: float | None = None

    def count(self, status: str) -> int:
        return sum(1 for op in self.operations if op.status == status)

    @property
    def status(self) -> str:
        if not self.reachable:
            return "unreachable"
        if self.failed or self.count("failed"):
            return "failed"
        if self.count("changed") or self.count("planned"):
            return "changed"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "status": self.status,
            "ok": self.count("ok"),
            "changed": self.count("changed") + self.count("planned"),
            "failed": self.count("failed")
            + (1 if self.failed and self.reachable and not self.count("failed") else 0),
            "unreachable": not self.reachable,
            "reason": self.reason or None,
            "elapsed": None if self.elapsed is None else round(self.elapsed, 2),
            "operations": [op.as_dict() for op in self.operations],
            "plans": list(self.plans),
            "checks": list(self.checks),
        }


def one_line(text: str, chars: int = REASON_CHARS) -> str:
    """A reason on one line: colours gone, lines joined with ' / ', cut at ``chars``."""
    parts = [part.strip() for part in plain(text).splitlines() if part.strip()]
    joined = " / ".join(parts)
    return joined if len(joined) <= chars else joined[: chars - 3] + "..."


def recap_lines(hosts: list[HostOutcome], dry: bool = False, stopped: bool = False) -> list[str]:
    """A header, one aligned line per host (ok, changed, failed, unreachable, the first failure's
    reason), then the totals. With ``dry`` the changed column counts what would change;
    ``stopped``: the run stopped while planning, nothing was executed."""
    note = " (stopped while planning: nothing was executed)" if stopped else ""
    note = note or (" (dry run: changed = would change)" if dry else "")
    lines = [f"--> Recap{note}:"]
    width = max([len(h.name) for h in hosts] + [4])
    for h in sorted(hosts, key=lambda h: h.name):
        d = h.as_dict()
        line = (
            f"[{h.name}]{' ' * (width - len(h.name))} {h.status:<11} ok={d['ok']:<3} "
            f"changed={d['changed']:<3} failed={d['failed']:<3} unreachable={int(not h.reachable)}"
        )
        if h.reason and h.status in ("failed", "unreachable"):
            line += f"  reason: {one_line(h.reason)}"
        lines.append(line)
    by_status: dict[str, int] = {}
    for h in hosts:
        by_status[h.status] = by_status.get(h.status, 0) + 1
    lines.append(
        f"{len(hosts)} host(s): "
        + ", ".join(f"{by_status.get(s, 0)} {s}" for s in ("ok", "changed", "failed", "unreachable"))
    )
    return lines


def run_document(
    hosts: list[HostOutcome],
    *,
    run_id: str,
    deploys: list[str],
    dry: bool,
    started: float,
    stopped: bool = False,
    finished: float,
) -> dict[str, Any]:
    """The run's JSON document: per host its status, counts, first failure, operations with
    their timings, plan lines and check results; totals by status."""
    totals: dict[str, int] = {"hosts": len(hosts)}
    for status in ("ok", "changed", "failed", "unreachable"):
        totals[status] = sum(1 for h in hosts if h.status == status)
    return {
        "run_id": run_id,
        "deploys": list(deploys),
        "mode": "stopped" if stopped else "dry" if dry else "execute",
        "started": _dt.datetime.fromtimestamp(started, _dt.UTC).isoformat(),
        "finished": _dt.datetime.fromtimestamp(finished, _dt.UTC).isoformat(),
        "elapsed": round(finished - started, 2),
        "ok": totals["failed"] == 0 and totals["unreachable"] == 0,
        "totals": totals,
        "hosts": {h.name: h.as_dict() for h in sorted(hosts, key=lambda h: h.name)},
    }
