"""MLflow verification after a change, from the whole-stack check library (tasks.checks.stack):
the same container and MLflow checks verify_stack runs, with a start-up window, through a
`run(command) -> (ok, output)` callable on the target host, so it works over any connector.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import replace
from typing import Callable

from tasks.checks.runner import Broken, CheckResult, RetryPolicy
from tasks.checks.stack import ONCE, Shell, StackChecker, StackSettings

Runner = Callable[[str], tuple[bool, str]]


def container_state(run: Runner, name: str) -> dict:
    ok, out = run(f"docker inspect --type container -f '{{{{json .State}}}}' {shlex.quote(name)}")
    if not ok:
        raise Broken(f"container {name} does not exist: {out.strip()[:200]}")
    return json.loads(out)


def verify_mlflow(run: Runner, name: str, port: int, server_kind: str, workers: int,
                  start_seconds: float = 90.0) -> list[CheckResult]:
    """The checks a recreated or updated MLflow container must pass, in order: present, running,
    healthy, not OOM-killed, memory below the limit, /health, experiments search, the worker
    count (`server_kind` is read from the process tree itself), and no known failure line in its
    logs since it started."""
    starting = RetryPolicy(attempts=int(start_seconds), seconds=start_seconds, wait=1.0)
    settings = StackSettings(deadline=3 * start_seconds, retry=starting)
    checker = StackChecker(Shell(lambda command, timeout: run(command)), settings)
    checker.mlflow({"container": name, "container_port": port, "workers": workers, "artifacts": False})
    if all(result.passed for result in checker.results):
        started = checker.inspected[name]["State"]["StartedAt"]
        checker.s = replace(settings, logs_since=started)
        checker.check(f"no known failure line in {name}'s logs since it started", name,
                      checker._logs(name), ONCE)
    return checker.results
