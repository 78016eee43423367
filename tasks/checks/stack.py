"""Whole-stack verification: containers, PostgreSQL, MLflow, Redis, S3 and the backend, checked on
each target host with tenacity-retried checks under one deadline per host (deploys/verify_stack.py).

Every check reads like a sentence (``container qt-mlflow is not OOM-killed``), has a bounded
retry policy, and on failure carries evidence naming the cause. A service the host's ``stack``
data does not list is reported *skipped, with the reason*, never silently passed. The checks of
each service live in their own module (tasks/checks/<service>.py); this one runs them in order,
then the logs (the host's signature catalog) and restart counts of every container seen.

How it stays read-only in pyinfra's eyes (pyinfra's ``python.call`` always counts as a change,
upstream #1150): :func:`verify` is an operation whose generator does nothing while pyinfra plans
(so ``--dry`` runs no check at all, and the plan shows no change) and runs the checks when
pyinfra *executes* it: pyinfra 3.10 calls an operation's generator again at execution time
(``api/operations.py: for command in op_data.command_generator()``), with
``state.is_executing`` set. All checks pass → the generator yields nothing → "No changes".
A failed check → it yields one ``FunctionCommand`` that logs the failure and returns False: the
operation errors on that host (pyinfra exits non-zero) and, failed, it is not counted a change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError

from tasks import settings as host_settings
from tasks.checks import containers
from tasks.checks.http import http_probe, where
from tasks.checks.logs import no_known_failure
from tasks.checks.mlflow import check_mlflow
from tasks.checks.postgres import check_postgres
from tasks.checks.redis import check_redis
from tasks.checks.report import format_report, report_dict, write_report
from tasks.checks.runner import CheckResult, RetryPolicy, Session
from tasks.checks.s3 import check_s3
from tasks.checks.shell import Shell, pyinfra_shell
from tasks.core.signatures import Signature, load_catalog, log_patterns
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import operation
from tasks.settings import SettingsError
from tasks.settings.remediate import host_catalog
from tasks.settings.stack import (
    INHERITED_POSTGRES_KEYS,
    SERVICES,
    BackendService,
    StackSettings,
    with_environment,
    with_host_blocks,
)


def check_backend(session: Session, conf: BackendService, memory: tuple[float, float] = (85, 95)) -> None:
    """The backend: its container, its health path, and its database round trip."""
    name = conf.container
    if name and not containers.container_checks(session, name, *memory):
        return containers.skip_service(session, "backend", name)
    at = where(conf)
    session.check(f"backend {conf.health_path} answers", at, http_probe(session, conf, conf.health_path))
    session.check(f"backend database round trip {conf.db_path}", at, http_probe(session, conf, conf.db_path))


# Service (a key of stack.services, a role in the signature catalog) -> its checks, in run order.
CHECKS: dict[str, Callable[[Session, Any, tuple[float, float]], None]] = {
    "postgres": check_postgres,
    "mlflow": check_mlflow,
    "redis": check_redis,
    "s3": check_s3,
    "backend": check_backend,
}
assert tuple(CHECKS) == SERVICES


def has_block(target: Any, block: str) -> bool:
    """Whether the host's data has ``block`` (its own or group-wide): a block's default names
    (container_name, ...) are guesses, not facts about this host."""
    return target.data.get(block) is not None or target.data.get(f"{block}_defaults") is not None


def host_stack_settings(target: Any, environ: Mapping[str, str] | None = None) -> StackSettings:
    """The host's ``stack`` block, completed from its ``postgres``, ``db`` and ``mlflow`` blocks
    and the run's environment; SettingsError naming host and key if any is bad."""
    stack = host_settings.of_host(target, "stack")
    services = stack.services
    postgres, login_roles, workers = None, None, None
    if services.postgres is not None:
        if has_block(target, "postgres"):
            pg = host_settings.of_host(target, "postgres")
            postgres = {key: getattr(pg, key) for key in INHERITED_POSTGRES_KEYS}
        if services.postgres.roles is None:
            db = host_settings.of_host(target, "db")
            login_roles = [
                {"name": name, "password": source, "database": db.login_database(name, "postgres")}
                for name, source in db.logins().items()
            ]
    if services.mlflow is not None:
        workers = host_settings.of_host(target, "mlflow").workers
    stack = with_host_blocks(
        stack, target.name, postgres=postgres, login_roles=login_roles, mlflow_workers=workers
    )
    return with_environment(stack, target.name, os.environ if environ is None else environ)


def run_stack_checks(
    shell: Shell,
    settings: StackSettings,
    catalog: tuple[Signature, ...] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """Every service's checks, then each container's logs and restart count, in one session."""
    session = Session(
        shell,
        retry=RetryPolicy(settings.retry_attempts, settings.retry_seconds, settings.retry_wait),
        deadline=settings.deadline,
        command_timeout=int(settings.command_timeout),
        http_timeout=int(settings.http_timeout),
        environ=environ,
    )
    memory = (settings.memory_warn_percent, settings.memory_fail_percent)
    roles: dict[str, str] = {}  # container -> the service it was checked as
    for service, check in CHECKS.items():
        conf = getattr(settings.services, service)
        if conf is None:
            session.skip(
                f"{service} checks", "-", f"not configured on this host (stack.services has no {service!r})"
            )
            continue
        check(session, conf, memory)
        if conf.container:
            roles.setdefault(conf.container, service)
    # the end of the window: logs since the given time, restart counts since the start
    catalog = load_catalog() if catalog is None else catalog
    for name in list(session.first_restarts):
        patterns = log_patterns(catalog, roles.get(name), settings.log_signatures)
        session.check(
            f"container {name} logs show no known failure",
            name,
            no_known_failure(session, name, patterns, settings.logs_since),
            RetryPolicy(2, 10, 1),
        )
    for name in list(session.first_restarts):
        session.check(
            f"container {name} restart count is stable",
            name,
            containers.restarts_stable(session, name, settings.restart_window),
            RetryPolicy(2, settings.restart_window + 10, 1),
        )
    return session.results


# --- the pyinfra operation ---------------------------------------------------------------------


def _report_failure(state, host, failed: list[str]) -> bool:
    # FunctionCommand passes state and host only to a callable whose parameters bear these names.
    say(
        host,
        f"stack verification failed: {len(failed)} check(s):\n  " + "\n  ".join(failed),
        log_func=logger.error,
        record=False,
        fg="red",
    )
    return False


@operation()
def verify(settings: StackSettings | None = None):
    """
    Check the whole stack on this host; read-only, never counted as a change.

    + settings: ``StackSettings`` (default: the host's, see :func:`host_stack_settings`)

    Checks run when pyinfra executes the operation, not while it plans (``--dry`` runs none).
    All pass: "No changes". Any fails: the operation fails on this host with the evidence.
    Log lines are matched against the host's signature catalog (``remediate.catalog``).

    **Example:**

    .. code:: python

        from tasks.checks import stack
        stack.verify(name="Verify the stack")
    """
    try:
        settings = settings or host_stack_settings(host)
        catalog = host_catalog(host.name, host_settings.of_host(host, "remediate"))
    except SettingsError as exc:
        raise OperationError(str(exc)) from None
    if not host.state.is_executing:
        host.noop("stack checks run when the deploy executes (read-only; none with --dry)")
        return
    started, clock = time.time(), time.monotonic()
    results = run_stack_checks(pyinfra_shell(host), settings, catalog)
    elapsed = time.monotonic() - clock
    for line in format_report(results).splitlines():
        host.log(f"verify: {line}")
    record_checks(host, results)
    if settings.report_path:
        write_report(
            settings.report_path, report_dict(host.name, results, started, elapsed, settings.deadline)
        )
        say(host, f"verify: JSON report in {settings.report_path}")
    failed = [f"{r.name} ({r.target}): {r.evidence}" for r in results if r.status == "fail"]
    if failed:
        yield FunctionCommand(_report_failure, (failed,), {})
