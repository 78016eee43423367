"""MLflow checks: /health, the REST API, an artifact round trip through the server, the worker
count; and :func:`verify_mlflow`, the public check fix_mlflow (and remediate) verify a changed
container with: the same checks verify_stack runs, with a start-up window, through a
``run(command) -> (ok, output)`` callable on the target host, so it works over any connector.
"""

from __future__ import annotations

import json
import secrets as _secrets
import shlex
import time
from collections.abc import Callable

from tasks.checks import containers
from tasks.checks.http import http_probe, request, where
from tasks.checks.logs import no_known_failure
from tasks.checks.runner import ONCE, Broken, CheckResult, NotYet, RetryPolicy, Session
from tasks.checks.shell import runner_shell
from tasks.core.mlflow_server import PROCESS_LIST_COMMAND, count_workers
from tasks.core.signatures import load_catalog, log_patterns
from tasks.settings.stack import MlflowService

Runner = Callable[[str], tuple[bool, str]]


def _artifact_probe(session: Session, conf: MlflowService):
    def api(method, path, payload=None, ctype="application/json", accept=(200,)):
        body = json.dumps(payload) if isinstance(payload, dict) else (payload or "")
        code, text, what = request(session, conf, method, path, body, ctype)
        if code not in accept:
            raise NotYet(f"{what} -> HTTP {code}: {' '.join(text.split())[:160]}")
        return text

    def probe():
        marker = f"quantlab-verify-{_secrets.token_hex(6)}"
        exp_id = None
        try:
            exp_id = json.loads(api("POST", "/api/2.0/mlflow/experiments/create", {"name": marker}))[
                "experiment_id"
            ]
            run = json.loads(
                api(
                    "POST",
                    "/api/2.0/mlflow/runs/create",
                    {"experiment_id": exp_id, "start_time": int(time.time() * 1000)},
                )
            )
            info = run["run"]["info"]
            uri = info.get("artifact_uri", "")
            if not uri.startswith("mlflow-artifacts:/"):
                raise Broken(
                    f"run artifact URI {uri!r} is not proxied (mlflow-artifacts:/...): "
                    "the server does not serve artifacts"
                )
            path = (
                "/api/2.0/mlflow-artifacts/artifacts/"
                + uri[len("mlflow-artifacts:/") :].strip("/")
                + "/verify.txt"
            )
            api("PUT", path, marker, "text/plain")
            got = api("GET", path)
            if got.strip() != marker:
                raise Broken(f"artifact read back differs: {got.strip()[:60]!r}")
            api("DELETE", path, accept=(200, 204, 404, 501))
            api("POST", "/api/2.0/mlflow/runs/delete", {"run_id": info["run_id"]})
            return (
                f"PUT+GET+DELETE of an artifact of run {info['run_id'][:8]} in scratch experiment "
                f"{exp_id} through /api/2.0/mlflow-artifacts; experiment deleted"
            )
        except (KeyError, ValueError) as exc:
            raise NotYet(f"unexpected MLflow answer: {type(exc).__name__} {exc}") from None
        finally:
            if exp_id is not None:
                try:
                    api("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": exp_id})
                except NotYet:
                    pass

    return probe


def _workers_probe(session: Session, name: str, expected: int):
    def probe():
        ok, out = session.sh(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(PROCESS_LIST_COMMAND)}")
        if not ok:
            raise NotYet(f"cannot list processes: {out.strip()[-120:] or 'timed out'}")
        kind = "gunicorn" if count_workers(out, "gunicorn") else "uvicorn"
        count = count_workers(out, kind)
        if count != expected:
            raise NotYet(f"{count} {kind} workers, expected {expected}")
        return f"{count} {kind} workers"

    return probe


def check_mlflow(session: Session, conf: MlflowService, memory: tuple[float, float] = (85, 95)) -> None:
    """The MLflow service: its container, /health, the REST API, an artifact, the workers."""
    name = conf.container
    if name and not containers.container_checks(session, name, *memory):
        return containers.skip_service(session, "mlflow", name)
    at = where(conf)
    session.check("MLflow /health answers OK", at, http_probe(session, conf, "/health", "OK"))
    session.check(
        "MLflow REST API searches experiments",
        at,
        http_probe(session, conf, "/api/2.0/mlflow/experiments/search?max_results=1"),
    )
    if conf.artifacts:
        session.check(
            "MLflow stores and serves an artifact",
            at,
            _artifact_probe(session, conf),
            RetryPolicy(2, session.retry.seconds, session.retry.wait),
        )
    else:
        session.skip("MLflow stores and serves an artifact", at, "stack.services.mlflow.artifacts is off")
    if not name or not conf.workers:
        session.skip("MLflow worker count", at, "needs a container and an expected worker count")
    else:
        session.check(
            f"MLflow runs {conf.workers} workers", name, _workers_probe(session, name, conf.workers)
        )


# The default of ``mlflow.restart_watch`` (tasks/settings/mlflow.py), for callers without settings.
RESTART_WATCH_SECONDS = 5.0


def verify_mlflow(
    run: Runner,
    name: str,
    port: int,
    server_kind: str,
    workers: int,
    start_seconds: float = 90.0,
    restart_watch: float = RESTART_WATCH_SECONDS,
) -> list[CheckResult]:
    """The checks a recreated or updated MLflow container must pass, in order: present, running,
    healthy, not OOM-killed, memory below the limit, /health, experiments search, the worker
    count (`server_kind` is read from the process tree itself), its restart count unchanged for
    ``restart_watch`` seconds since it was first seen (0: not watched; the checks before run
    within that time), and no known failure line in its logs since it started."""
    starting = RetryPolicy(attempts=int(start_seconds), seconds=start_seconds, wait=1.0)
    session = Session(runner_shell(run), retry=starting, deadline=3 * start_seconds + restart_watch)
    check_mlflow(
        session, MlflowService(container=name, container_port=port, workers=workers, artifacts=False)
    )
    if restart_watch > 0 and all(result.passed for result in session.results):
        session.check(
            f"container {name} restart count is stable",
            name,
            containers.restarts_stable(session, name, restart_watch),
            RetryPolicy(2, restart_watch + 10, 1),
        )
    if all(result.passed for result in session.results):
        started = session.inspected[name]["State"]["StartedAt"]
        session.check(
            f"no known failure line in {name}'s logs since it started",
            name,
            no_known_failure(session, name, log_patterns(load_catalog(), "mlflow"), started),
            ONCE,
        )
    return session.results
