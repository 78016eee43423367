"""
Diagnose, then remediate: the packaged deploy behind deploys/remediate.py.

On each host: one read-only fact (tasks.core.diagnose.HostDiagnosis) reads the containers the catalog
names, the findings are grouped into actions (tasks.core.diagnose.decide), and only the actions that
call for it run their packaged deploy on that host:

    fix_mlflow      tasks.operations.mlflow.fix_mlflow()
    db_users        tasks.operations.db_users.db_users() limited to the named role(s) that db_roles lists
    backend_reload  tasks.operations.backend_reload.fix_backend_reload()

After them one more operation, present only when something ran: it stamps the host's last-run
record (host clock), verifies each remediation (tasks.checks.mlflow / postgres login / backend
checks, plus "no new evidence since the fix") and writes the run record on the controller. A run
that finds nothing to do yields no command at all, so pyinfra's table shows no change.

Host data ``remediate`` (defaults in group_data ``remediate_defaults``): ``catalog`` (path on the
controller; the packaged tasks/core/signatures.yml when unset), ``since`` / ``tail`` (how far back
``docker logs`` reads), ``record_path`` (the last-run record on the host), ``report_dir`` (run
records on the controller, ``<host>.json``; env QUANTLAB_REMEDIATE_REPORT_DIR overrides),
``containers`` ({role: container} beyond what the mlflow/postgres/backend/stack data say),
``verify`` (true).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, deploy, operation
from pyinfra.api.exceptions import PyinfraError

from tasks import settings as host_settings
from tasks.core import diagnose
from tasks.checks.backend import verify_backend
from tasks.operations.backend_reload import fix_backend_reload
from tasks.checks.runner import CheckResult, NotYet, RetryPolicy, format_table, run_check
from tasks.operations.db_users import db_users, load_db_settings
from tasks.operations.docker import run_now

KEYS = ("catalog", "since", "tail", "record_path", "report_dir", "containers", "verify")
DEFAULTS = {"catalog": None, "since": "2h", "tail": 2000,
            "record_path": "/var/lib/quantlab/remediation-runs.json",
            "report_dir": "remediation-reports", "containers": {}, "verify": True}
_SINCE = re.compile(r"\d+[smh]|\d{4}-\d\d-\d\dT[\d:.]+Z?")


class RemediateSettingsError(PyinfraError, ValueError):
    def __init__(self, host_name: str, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': remediate.{p}" for p in problems))


@dataclass(frozen=True)
class RemediateSettings:
    catalog: str | None
    since: str
    tail: int
    record_path: str
    report_dir: str | None
    containers: dict = field(default_factory=dict)
    verify: bool = True


def remediate_settings(host_name: str, data: Any, environ=os.environ) -> RemediateSettings:
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    merged = {**DEFAULTS, **(get("remediate_defaults") or {}), **(get("remediate") or {})}
    problems = [f"{k}: unknown key (known: {', '.join(KEYS)})" for k in sorted(set(merged) - set(KEYS))]
    if not isinstance(merged["since"], str) or not _SINCE.fullmatch(merged["since"]):
        problems.append(f"since: {merged['since']!r} must be like 30m, 2h or an RFC 3339 time")
    tail = merged["tail"]
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= 100000:
        problems.append(f"tail: {tail!r} must be a number of lines in [1, 100000]")
    if not isinstance(merged["record_path"], str) or not merged["record_path"].startswith("/"):
        problems.append("record_path: must be an absolute path on the host")
    containers = merged["containers"] or {}
    if not isinstance(containers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in containers.items()):
        problems.append("containers: must map service roles to container names")
    if problems:
        raise RemediateSettingsError(host_name, problems)
    report_dir = environ.get("QUANTLAB_REMEDIATE_REPORT_DIR") or merged["report_dir"]
    return RemediateSettings(merged["catalog"], merged["since"], tail, merged["record_path"],
                             report_dir, dict(containers), merged["verify"] is not False)


def container_roles(data: Any, settings: RemediateSettings) -> dict[str, str]:
    """Service role -> container name on this host, from the data each deploy already reads."""
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    roles: dict[str, str] = {}
    for role, spec in ((get("stack") or {}).get("services") or {}).items():
        if isinstance(spec, dict) and spec.get("container"):
            roles[role] = spec["container"]
    mlflow = {**(get("mlflow_defaults") or {}), **(get("mlflow") or {})}
    if mlflow.get("container_name"):
        roles["mlflow"] = mlflow["container_name"]
    if (get("postgres") or {}).get("container"):
        roles["postgres"] = get("postgres")["container"]
    if (get("backend") or {}).get("container"):
        roles["backend"] = get("backend")["container"]
    roles.update(settings.containers)
    return roles


def configured_roles(data: Any) -> list[str]:
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    return [r["name"] for r in (get("db_roles") or [])
            if isinstance(r, dict) and isinstance(r.get("name"), str) and r.get("present", True)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "host"


def write_report(settings: RemediateSettings, host_name: str, report: dict) -> str | None:
    if not settings.report_dir:
        return None
    folder = Path(settings.report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(host_name)}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)
    return str(path)


# -- verification (execution time) --------------------------------------------------------------


def _no_new_evidence(run, action: diagnose.Action, catalog, since: str) -> list[CheckResult]:
    """The action's signatures do not show up again in its containers after the fix."""
    results = []
    sigs = [s for s in catalog if s.id in action.signatures and s.pattern]
    for role, name in sorted({(f.role, f.container) for f in action.findings}):
        def probe(role=role, name=name):
            ok, out = run(f"docker logs --timestamps --since {shlex.quote(since)} {shlex.quote(name)} 2>&1")
            if not ok:
                raise NotYet(f"docker logs failed: {out.strip()[:120]}")
            new = [f for f in diagnose.match_lines(sigs, role, name, out.splitlines())
                   if action.remediation != "db_users" or f.params.get("role") == action.target]
            if new:
                raise NotYet(f"{len(new)} new line(s): {new[-1].evidence[:120]}")
            return f"no {', '.join(action.signatures)} since {since[:19]}"
        results.append(run_check(f"{', '.join(action.signatures)} gone", name, probe,
                                 RetryPolicy(attempts=1, seconds=5, wait=0)))
    return results


def _finish(state, host, ran: list, catalog, settings: RemediateSettings, record, report: dict,
            verifiers: dict):
    ok, out = run_now(host, "date -u +%Y-%m-%dT%H:%M:%S.%NZ")
    ran_at = out.strip().splitlines()[-1] if ok and out.strip() else \
        _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    run = (lambda command: run_now(host, command))
    results: list[CheckResult] = []
    per_action = {}
    if settings.verify:
        for action in ran:
            checks = list(verifiers[action.key](host, run)) if action.key in verifiers else []
            checks += _no_new_evidence(run, action, catalog, ran_at)
            per_action[action.key] = [asdict(c) for c in checks]
            results += checks
        if results:
            logger.info(f"{host.print_prefix}remediation verification:\n" + format_table(results))
    passed = all(r.passed for r in results)
    result = "verified" if passed else "verification failed"
    if not settings.verify:
        result = "applied (not verified)"
    new_record = diagnose.updated_record(record, ran, ran_at, result)
    folder = os.path.dirname(settings.record_path)
    ok, out = run_now(host, f"mkdir -p {shlex.quote(folder)}")
    written = ok and host.put_file(io.BytesIO((json.dumps(new_record, indent=2) + "\n").encode()),
                                   settings.record_path, print_output=False)
    report.update(phase="applied", ran_at=ran_at, result=result, verification=per_action,
                  record_written=bool(written))
    for entry in report["actions"]:
        if entry["status"] == diagnose.STATUS_RUN:
            entry["result"] = result if not per_action.get(entry["key"]) or all(
                CheckResult(**c).passed for c in per_action[entry["key"]]) else "verification failed"
    path = write_report(settings, host.name, report)
    if path:
        logger.info(f"{host.print_prefix}run record: {path}")
    if not written:
        host.log_styled(f"could not write the last-run record {settings.record_path}: {out.strip()[:200]}",
                        fg="red", log_func=logger.error)
        return False
    if not passed:
        failed = [f"{r.name} ({r.target}): {r.evidence}" for r in results if not r.passed]
        host.log_styled("remediation verification failed:\n  " + "\n  ".join(failed),
                        fg="red", log_func=logger.error)
        return False
    return True


@operation()
def record_and_verify(ran: list, catalog, settings: RemediateSettings, record, report: dict,
                      verifiers: dict):
    """
    After the remediations: stamp the host's last-run record, verify each remediation, write the
    run record. Yields nothing when no remediation ran (no change in pyinfra's table).

    **Example:**

    .. code:: python

        remediate.record_and_verify(ran=[], catalog=(), settings=..., record=None, report={},
                                    verifiers={})
    """
    if not ran:
        host.noop("no remediation ran: nothing to record")
        return
    yield FunctionCommand(_finish, (ran, catalog, settings, record, report, verifiers), {})


# -- the deploy --------------------------------------------------------------------------------------


def _mlflow_verifier():
    from tasks.core.mlflow_server import server_spec
    from tasks.checks.mlflow import verify_mlflow
    from tasks.operations.mlflow import image_mlflow_version, host_mlflow_settings

    settings = host_mlflow_settings()
    spec = server_spec(settings, image_mlflow_version(settings))
    return lambda host_, run: verify_mlflow(run, settings.container_name, settings.port, spec.kind,
                                            spec.workers)


def _db_users_for(roles: list[str]):
    """db_users limited to these roles (and their grants), never exclusive: the other roles and
    grants are not this remediation's business."""
    from tasks.operations import postgres

    settings = load_db_settings(host.name, host.data)
    keep = set(roles)
    limited = replace(
        settings,
        roles=tuple(r for r in settings.roles if r.name in keep),
        grants=tuple(g for g in settings.grants if g.grantee in keep),
        exclusive=False)
    db_users(limited)

    def verify(host_, run):
        results = []
        for role in limited.roles:
            if role.password is None:
                continue
            database = limited.login_database(role.name)
            results.append(run_check(f"role {role.name} can log in", database,
                                     postgres.login_probe(host_, limited.target, role.name,
                                                           role.password, database),
                                     RetryPolicy(attempts=5, seconds=20, wait=2)))
        return results
    return verify


def _backend_verifier():
    settings = host_settings.of_host(host, "backend")
    return lambda host_, run: verify_backend(run, settings.container, settings.port, settings.health_path)


@deploy("Remediate from log signatures")
def remediate():
    settings = remediate_settings(host.name, host.data)
    catalog = diagnose.load_catalog(settings.catalog)
    roles = container_roles(host.data, settings)
    needed = {r for s in catalog for r in s.containers}
    wanted = {role: name for role, name in roles.items() if role in needed}
    facts = host.get_fact(diagnose.HostDiagnosis, containers=tuple(sorted(set(wanted.values()))),
                          since=settings.since, tail=settings.tail, record_path=settings.record_path)
    if facts is None:
        raise OperationError("docker is not installed on this host: nothing to diagnose")
    findings: list[diagnose.Finding] = []
    missing = []
    for role, name in sorted(wanted.items()):
        seen = facts["containers"].get(name) or {}
        if not seen.get("exists"):
            missing.append(name)
        findings += diagnose.match_lines(catalog, role, name, seen.get("lines") or [])
        findings += diagnose.match_state(catalog, role, name, seen.get("state"),
                                         seen.get("restart_count", 0))
    now = diagnose.parse_time(facts["now"]) or _dt.datetime.now(_dt.timezone.utc)
    actions = diagnose.decide(findings, catalog, facts["record"], now, configured_roles(host.data))

    prefix = host.print_prefix
    if facts.get("record_error"):
        logger.warning(f"{prefix}last-run record {settings.record_path}: {facts['record_error']}")
    if missing:
        logger.warning(f"{prefix}containers not found (not diagnosed): {', '.join(missing)}")
    if actions:
        logger.info(f"{prefix}diagnosis ({len(findings)} finding(s) since {settings.since}):\n"
                    + "\n".join(f"    {line}" for line in diagnose.format_actions(actions)))
    else:
        logger.info(f"{prefix}diagnosis: no known signature since {settings.since}")

    report = {
        "host": host.name, "phase": "planned", "diagnosed_at": facts["now"],
        "catalog": str(settings.catalog or diagnose.CATALOG), "since": settings.since,
        "containers": wanted, "missing_containers": missing, "record_path": settings.record_path,
        "summary": {s: sum(1 for a in actions if a.status == s)
                    for s in ("run", "throttled", "reported", "informational", "handled")},
        "actions": [a.to_dict() for a in actions],
    }
    write_report(settings, host.name, report)

    ran = [a for a in actions if a.status == diagnose.STATUS_RUN]
    verifiers: dict = {}
    by_remediation: dict[str, list[diagnose.Action]] = {}
    for action in ran:
        by_remediation.setdefault(action.remediation, []).append(action)
    if "fix_mlflow" in by_remediation:
        verifiers.update({a.key: _mlflow_verifier() for a in by_remediation["fix_mlflow"]})
        from tasks.operations.mlflow import fix_mlflow
        fix_mlflow()
    if "db_users" in by_remediation:
        verify = _db_users_for([a.target for a in by_remediation["db_users"]])
        verifiers.update({a.key: verify for a in by_remediation["db_users"]})
    if "backend_reload" in by_remediation:
        verifiers.update({a.key: _backend_verifier() for a in by_remediation["backend_reload"]})
        fix_backend_reload()
    record_and_verify(name="Record and verify the remediations", ran=ran, catalog=catalog,
                      settings=settings, record=facts["record"], report=report, verifiers=verifiers)
