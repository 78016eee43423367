"""verify_stack's report: the per-host table in pyinfra's output, and a JSON file on the
controller merging the hosts of one run."""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.checks.runner import CheckResult, table_lines
from tasks.core.private_file import write_private_text

_RUN_ID = uuid.uuid4().hex  # one pyinfra run: reports from its hosts are merged, older ones replaced


def totals(results: list[CheckResult]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    counts["total"] = len(results)
    return counts


def format_report(results: list[CheckResult]) -> str:
    """The per-host table: check, target, result, attempts, elapsed, evidence; then totals."""
    lines = table_lines(results, evidence_chars=140)
    t = totals(results)
    lines.append(
        f"totals: {t['pass']} pass, {t['warn']} warn, {t['fail']} fail, {t['skip']} skip "
        f"({t['total']} checks)"
    )
    return "\n".join(lines)


def report_dict(
    host_name: str, results: list[CheckResult], started: float, elapsed: float, deadline: float
) -> dict:
    return {
        "host": host_name,
        "started": _dt.datetime.fromtimestamp(started, _dt.UTC).isoformat(),
        "elapsed": round(elapsed, 2),
        "deadline": deadline,
        "totals": totals(results),
        "checks": [{k: v for k, v in asdict(r).items()} | {"elapsed": round(r.elapsed, 2)} for r in results],
    }


def write_report(path: str | Path, host_report: dict, run_id: str = _RUN_ID) -> None:
    """Merge this host's report into `path` (one file a run, hosts keyed by name; a file left
    by an earlier run is replaced). Written 0600 through a temp file; a folder it makes is 0700."""
    path = Path(path).expanduser()
    report: dict[str, Any] = {"run_id": run_id, "hosts": {}}  # JSON, as read back from the file
    try:
        old = json.loads(path.read_text())
        if old.get("run_id") == run_id:
            report = old
    except (OSError, ValueError):
        pass
    report["hosts"][host_report["host"]] = host_report
    every = [c for h in report["hosts"].values() for c in h["checks"]]
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for check in every:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    report["totals"] = {**counts, "total": len(every), "hosts": len(report["hosts"])}
    report["ok"] = counts["fail"] == 0
    write_private_text(path, json.dumps(report, indent=2) + "\n")
