"""
Diagnose, then remediate: the packaged deploy behind deploys/remediate.py.

Long because the diagnosis, the registry of remediations with their verifiers, and the run's
record and report are one deploy's steps over one set of actions; apart, each would re-read them.

On each host: one read-only fact (tasks.facts.diagnose.HostDiagnosis) reads the containers the
catalog names, the findings are grouped into actions (tasks.core.remediation.decide), and only the
actions that call for it run their packaged deploy on that host, chosen from :data:`REMEDIATIONS`:

    fix_mlflow      tasks.operations.mlflow.fix_mlflow()
    db_users        tasks.operations.db_users.db_users() limited to the named role(s) that db_roles lists
    backend_reload  tasks.operations.backend_reload.fix_backend_reload()

After them one more operation, present only when something ran: it stamps the host's last-run
record (host clock), verifies each remediation (tasks.checks.mlflow / postgres login / backend
checks, plus "no new evidence since the fix") and writes the run record on the controller. A run
that finds nothing to do yields no command at all, so pyinfra's table shows no change.

Settings: the host's ``remediate`` block (tasks/settings/remediate.py; env
QUANTLAB_REMEDIATE_REPORT_DIR overrides ``report_dir``); container roles from its ``stack``,
``mlflow``, ``postgres`` and ``backend`` blocks, then ``remediate.containers``.

Forced mode (the watcher's, tasks/watch/program.py): env ``QUANT_REMEDIATE_ONLY=<remediation>:<target>``
(for example ``db_users:quant_user``), read by :func:`forced_key` only, runs that one remediation
and nothing else (tasks.core.remediation.force): the others the diagnosis finds are "deferred",
and the record's throttle does not hold it back (the watcher's own throttle and breaker decided).
Unset, it changes nothing.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError

from tasks import settings as host_settings
from tasks.checks.backend import verify_backend
from tasks.checks.mlflow import verify_mlflow
from tasks.checks.runner import CheckResult, NotYet, RetryPolicy, format_table, run_check
from tasks.checks.stack import has_block
from tasks.core import remediation, signatures
from tasks.core.mlflow_server import server_spec
from tasks.core.private_file import write_private_text
from tasks.facts.diagnose import HostDiagnosis
from tasks.operations import postgres, runner
from tasks.operations.backend_reload import fix_backend_reload
from tasks.operations.db_users import db_users
from tasks.operations.docker import run_now
from tasks.operations.mlflow import fix_mlflow, image_mlflow_version
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import deploy, operation
from tasks.settings.remediate import REPORT_DIR_ENV, RemediateSettings, host_catalog

# What a remediation's verification is: (host, run(command) -> (ok, output)) -> check results.
Verifier = Callable[[Any, Callable[[str], tuple[bool, str]]], list[CheckResult]]


def container_roles(target: Any, settings: RemediateSettings) -> dict[str, str]:
    """Service role -> container name on this host, from the blocks each deploy already reads."""
    roles: dict[str, str] = {}
    if has_block(target, "stack"):
        services = host_settings.of_host(target, "stack").services
        for role in ("postgres", "mlflow", "redis", "s3", "backend"):
            service = getattr(services, role)
            if service is not None and service.container:
                roles[role] = service.container
    # A block's container only where the host has the block: its default name is a guess.
    if has_block(target, "mlflow"):
        roles["mlflow"] = host_settings.of_host(target, "mlflow").container_name
    if has_block(target, "postgres") and host_settings.of_host(target, "postgres").container:
        roles["postgres"] = host_settings.of_host(target, "postgres").container
    if has_block(target, "backend"):
        roles["backend"] = host_settings.of_host(target, "backend").container
    roles.update(settings.containers)
    return roles


def configured_roles(target: Any) -> list[str]:
    """The roles db_roles lists (present): the only ones a db_users remediation may touch."""
    return [r.name for r in host_settings.of_host(target, "db").roles if r.present]


ONLY_ENV = "QUANT_REMEDIATE_ONLY"
# the container role a remediation's target names (db_users names a role of db_roles instead)
TARGET_ROLE = {"fix_mlflow": "mlflow", "backend_reload": "backend"}


def forced_key(environ=None) -> str | None:
    """``QUANT_REMEDIATE_ONLY``'s ``<remediation>:<target>``, or None when it is unset or empty;
    OperationError when it names no packaged remediation."""
    value = (os.environ if environ is None else environ).get(ONLY_ENV, "").strip()
    if not value:
        return None
    try:
        name, target = remediation.parse_key(value)
    except ValueError as exc:
        raise OperationError(f"{ONLY_ENV}: {exc}") from None
    if name not in REMEDIATIONS:
        raise OperationError(f"{ONLY_ENV}: unknown remediation {name!r} (one of {', '.join(REMEDIATIONS)})")
    return f"{name}:{target}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "host"


def report_dir(settings: RemediateSettings) -> str | None:
    return os.environ.get(REPORT_DIR_ENV) or settings.report_dir


def write_report(settings: RemediateSettings, host_name: str, report: dict) -> str | None:
    folder_name = report_dir(settings)
    if not folder_name:
        return None
    path = Path(folder_name) / f"{_safe(host_name)}.json"
    write_private_text(path, json.dumps(report, indent=2, default=str) + "\n")  # 0600, folder 0700
    return str(path)


# -- verification (execution time) --------------------------------------------------------------


def _no_new_evidence(run, action: remediation.Action, catalog, since: str) -> list[CheckResult]:
    """The action's signatures do not show up again in its containers after the fix."""
    results = []
    sigs = [s for s in catalog if s.id in action.signatures and s.pattern]
    for role, name in sorted({(f.role, f.container) for f in action.findings}):

        def probe(role=role, name=name):
            ok, out = run(f"docker logs --timestamps --since {shlex.quote(since)} {shlex.quote(name)} 2>&1")
            if not ok:
                raise NotYet(f"docker logs failed: {out.strip()[:120]}")
            new = [
                f
                for f in signatures.match_lines(sigs, role, name, out.splitlines())
                if action.remediation != "db_users" or f.params.get("role") == action.target
            ]
            if new:
                raise NotYet(f"{len(new)} new line(s): {new[-1].evidence[:120]}")
            return f"no {', '.join(action.signatures)} since {since[:19]}"

        results.append(
            run_check(
                f"{', '.join(action.signatures)} gone",
                name,
                probe,
                RetryPolicy(attempts=1, seconds=5, wait=0),
            )
        )
    return results


def _finish(
    state, host, ran: list, catalog, settings: RemediateSettings, record, report: dict, verifiers: dict
):
    ok, out = run_now(host, "date -u +%Y-%m-%dT%H:%M:%S.%NZ")
    ran_at = (
        out.strip().splitlines()[-1]
        if ok and out.strip()
        else _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )

    def run(command):
        return run_now(host, command)

    results: list[CheckResult] = []
    per_action = {}
    if settings.verify:
        for action in ran:
            checks = list(verifiers[action.key](host, run)) if action.key in verifiers else []
            checks += _no_new_evidence(run, action, catalog, ran_at)
            per_action[action.key] = [asdict(c) for c in checks]
            results += checks
        if results:
            say(host, "remediation verification:\n" + format_table(results), record=False)
            record_checks(host, results)
    passed = all(r.passed for r in results)
    result = "verified" if passed else "verification failed"
    if not settings.verify:
        result = "applied (not verified)"
    new_record = remediation.updated_record(record, ran, ran_at, result)
    folder = os.path.dirname(settings.record_path)
    ok, out = run_now(host, f"mkdir -p {shlex.quote(folder)}")
    # With the operation's arguments, beside the record then moved over it: one record on the
    # host whoever logs in, so the throttle holds for every operator and the scheduled run.
    written = ok and runner.replace_file(
        host, io.BytesIO((json.dumps(new_record, indent=2) + "\n").encode()), settings.record_path
    )
    report.update(
        phase="applied", ran_at=ran_at, result=result, verification=per_action, record_written=bool(written)
    )
    for entry in report["actions"]:
        if entry["status"] == remediation.STATUS_RUN:
            entry["result"] = (
                result
                if not per_action.get(entry["key"])
                or all(CheckResult(**c).passed for c in per_action[entry["key"]])
                else "verification failed"
            )
    path = write_report(settings, host.name, report)
    if path:
        say(host, f"run record: {path}")
    if not written:
        say(
            host,
            f"could not write the last-run record {settings.record_path}: {out.strip()[:200]}",
            log_func=logger.error,
            record=False,
            fg="red",
        )
        return False
    if not passed:
        failed = [f"{r.name} ({r.target}): {r.evidence}" for r in results if not r.passed]
        say(
            host,
            "remediation verification failed:\n  " + "\n  ".join(failed),
            log_func=logger.error,
            record=False,
            fg="red",
        )
        return False
    return True


@operation()
def record_and_verify(ran: list, catalog, settings: RemediateSettings, record, report: dict, verifiers: dict):
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


# -- the remediations: name (the catalog's `remediation`) -> run it on this host ---------------------


def _fix_mlflow(actions: list[remediation.Action]) -> Verifier:
    settings = host_settings.of_host(host, "mlflow")
    spec = server_spec(settings, image_mlflow_version(settings))
    fix_mlflow()
    return lambda host_, run: verify_mlflow(
        run,
        settings.container_name,
        settings.port,
        spec.kind,
        spec.workers,
        settings.start_timeout,
        settings.restart_watch,
    )


def _db_users(actions: list[remediation.Action]) -> Verifier:
    """db_users limited to the named roles (and their grants), never exclusive: the other roles
    and grants are not this remediation's business."""
    db = host_settings.of_host(host, "db").only_roles([a.target for a in actions])
    target = host_settings.of_host(host, "postgres").target
    db_users(db=db, target=target)

    def verify(host_, run):
        return [
            run_check(
                f"role {name} can log in",
                database,
                postgres.login_probe(host_, target, name, source, database),
                RetryPolicy(attempts=5, seconds=20, wait=2),
            )
            for name, source in db.logins().items()
            for database in [db.login_database(name, target.database)]
        ]

    return verify


def _backend_reload(actions: list[remediation.Action]) -> Verifier:
    settings = host_settings.of_host(host, "backend")
    fix_backend_reload(settings)
    return lambda host_, run: verify_backend(run, settings.container, settings.port, settings.health_path)


# Each takes the host's actions for it, adds its operations, and returns how to verify them.
REMEDIATIONS: dict[str, Callable[[list[remediation.Action]], Verifier]] = {
    "fix_mlflow": _fix_mlflow,
    "db_users": _db_users,
    "backend_reload": _backend_reload,
}
KNOWN = (*REMEDIATIONS, "none")  # "none": reported only


# -- the deploy --------------------------------------------------------------------------------------


@deploy("Remediate from log signatures")
def remediate():
    settings = host_settings.of_host(host, "remediate")
    catalog = host_catalog(host.name, settings, KNOWN)
    roles = container_roles(host, settings)
    needed = {r for s in catalog for r in s.containers}
    wanted = {role: name for role, name in roles.items() if role in needed}
    facts = host.get_fact(
        HostDiagnosis,
        containers=tuple(sorted(set(wanted.values()))),
        since=settings.since,
        tail=settings.tail,
        record_path=settings.record_path,
    )
    if facts is None:
        raise OperationError("docker is not installed on this host: nothing to diagnose")
    if facts.get("record_unreadable"):
        # Its throttle and breaker would be lost: remediations could repeat, then fail to record.
        raise OperationError(
            f"cannot read the last-run record {settings.record_path} (its throttle and breaker): "
            "nothing changed; make it readable to the user the commands run as"
        )
    findings: list[signatures.Finding] = []
    missing = []
    for role, name in sorted(wanted.items()):
        seen = facts["containers"].get(name) or {}
        if not seen.get("exists"):
            missing.append(name)
        findings += signatures.match_lines(catalog, role, name, seen.get("lines") or [])
        findings += signatures.match_state(
            catalog, role, name, seen.get("state"), seen.get("restart_count", 0)
        )
    now = signatures.parse_time(facts["now"]) or _dt.datetime.now(_dt.UTC)
    only = forced_key()
    # db_roles are read (and validated) only when a finding (or the forced key) names a role.
    needs_roles = any(f.remediation == "db_users" for f in findings) or (only or "").startswith("db_users:")
    roles_listed = configured_roles(host) if needs_roles else []
    actions = remediation.decide(findings, catalog, facts["record"], now, roles_listed)
    if only:
        name, target = remediation.parse_key(only)
        if name in TARGET_ROLE and roles.get(TARGET_ROLE[name]) != target:
            raise OperationError(
                f"{ONLY_ENV}={only}: {target!r} is not this host's {TARGET_ROLE[name]} container "
                f"({roles.get(TARGET_ROLE[name]) or 'none'})"
            )
        actions = remediation.force(actions, only, roles_listed)
        say(host, f"{ONLY_ENV}={only}: only this remediation runs")

    if facts.get("record_error"):
        say(
            host,
            log_func=logger.warning,
            message=f"last-run record {settings.record_path}: {facts['record_error']}",
        )
    if missing:
        say(
            host,
            log_func=logger.warning,
            message=f"containers not found (not diagnosed): {', '.join(missing)}",
        )
    if actions:
        say(
            host,
            f"diagnosis ({len(findings)} finding(s) since {settings.since}):\n"
            + "\n".join(f"    {line}" for line in remediation.format_actions(actions)),
        )
    else:
        say(host, f"diagnosis: no known signature since {settings.since}")

    report = {
        "host": host.name,
        "phase": "planned",
        "diagnosed_at": facts["now"],
        "catalog": settings.catalog_path,
        "since": settings.since,
        "containers": wanted,
        "missing_containers": missing,
        "record_path": settings.record_path,
        "forced": only,
        "summary": {
            s: sum(1 for a in actions if a.status == s)
            for s in ("run", "throttled", "deferred", "reported", "informational", "handled")
        },
        "actions": [a.to_dict() for a in actions],
    }
    write_report(settings, host.name, report)

    ran = [a for a in actions if a.status == remediation.STATUS_RUN]
    by_remediation: dict[str, list[remediation.Action]] = {}
    for action in ran:
        by_remediation.setdefault(action.remediation, []).append(action)
    verifiers: dict[str, Verifier] = {}
    for name, run_remediation in REMEDIATIONS.items():  # the registry's order: mlflow, db, backend
        if name in by_remediation:
            verify = run_remediation(by_remediation[name])
            verifiers.update({a.key: verify for a in by_remediation[name]})
    record_and_verify(
        name="Record and verify the remediations",
        ran=ran,
        catalog=catalog,
        settings=settings,
        record=facts["record"],
        report=report,
        verifiers=verifiers,
    )
