"""MLflow verification, run on the target host through a `run(command) -> (ok, output)` callable,
so it works over any pyinfra connector. HTTP is checked from inside the container with its own
Python (every MLflow image has one), so neither curl nor a published port is needed on the host.
"""
from __future__ import annotations

import json
import re
import shlex
from typing import Callable

from tasks.checks import Broken, CheckResult, NotYet, RetryPolicy, run_checks
from tasks.mlflow import PROCESS_LIST_COMMAND, count_workers

Runner = Callable[[str], tuple[bool, str]]

FAILURE_LINES = re.compile(r"was sent SIGKILL! Perhaps out of memory\?|WORKER TIMEOUT")
_HTTP_GET = ("import sys, urllib.request; "
             "r = urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + sys.argv[2], timeout=5); "
             "print(r.status); print(r.read(300).decode(errors='replace'))")


def container_state(run: Runner, name: str) -> dict:
    ok, out = run(f"docker inspect --type container -f '{{{{json .State}}}}' {shlex.quote(name)}")
    if not ok:
        raise Broken(f"container {name} does not exist: {out.strip()[:200]}")
    return json.loads(out)


def _probe_running(run: Runner, name: str) -> Callable[[], str]:
    def probe():
        state = container_state(run, name)
        if state.get("OOMKilled"):
            raise Broken(f"OOM-killed (exit code {state.get('ExitCode')})")
        if state.get("Restarting") or state.get("Status") in ("exited", "dead"):
            raise Broken(f"{state.get('Status')}, exit code {state.get('ExitCode')} "
                         f"{state.get('Error') or ''}".strip())
        if state.get("Status") != "running":
            raise NotYet(f"state {state.get('Status')}")
        return f"running since {state.get('StartedAt', '?')[:19]}"
    return probe


def _probe_http(run: Runner, name: str, port: int, path: str, expect: str) -> Callable[[], str]:
    command = (f"docker exec {shlex.quote(name)} python3 -c {shlex.quote(_HTTP_GET)} "
               f"{port} {shlex.quote(path)}")

    def probe():
        _probe_running(run, name)()  # a crash while we wait is Broken, not a timeout
        ok, out = run(command)
        lines = out.strip().splitlines()
        if not ok or not lines or lines[0] != "200":
            raise NotYet(f"GET {path}: {(lines[-1] if lines else 'no answer')[:120]}")
        body = " ".join(lines[1:])
        if expect not in body:
            raise NotYet(f"GET {path}: 200 but body lacks {expect!r}: {body[:80]}")
        return f"GET {path} -> 200 {body[:40]}"
    return probe


def _probe_workers(run: Runner, name: str, server_kind: str, expected: int) -> Callable[[], str]:
    def probe():
        ok, out = run(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(PROCESS_LIST_COMMAND)}")
        if not ok:
            raise NotYet(f"cannot list processes: {out.strip()[:120]}")
        count = count_workers(out, server_kind)
        if count != expected:
            raise NotYet(f"{count} {server_kind} workers, expected {expected}")
        return f"{count} {server_kind} workers"
    return probe


def _probe_memory(run: Runner, name: str) -> Callable[[], str]:
    def probe():
        ok, out = run(f"docker stats --no-stream --format '{{{{.MemUsage}}}} {{{{.MemPerc}}}}' "
                      f"{shlex.quote(name)}")
        if not ok:
            raise NotYet(f"docker stats failed: {out.strip()[:120]}")
        usage, _, percent = out.strip().rpartition(" ")
        try:
            value = float(percent.rstrip("%"))
        except ValueError:
            raise NotYet(f"unreadable docker stats output: {out.strip()[:80]}")
        if value >= 95.0:
            raise Broken(f"memory {usage} is {percent} of the limit")
        return f"{usage} ({percent})"
    return probe


def _probe_logs(run: Runner, name: str) -> Callable[[], str]:
    def probe():
        state = container_state(run, name)
        since = state.get("StartedAt", "")
        ok, out = run(f"docker logs --since {shlex.quote(since)} {shlex.quote(name)} 2>&1")
        if not ok:
            raise NotYet(f"docker logs failed: {out.strip()[:120]}")
        bad = [line for line in out.splitlines() if FAILURE_LINES.search(line)]
        if bad:
            raise Broken(f"{len(bad)} failure line(s) since start: {bad[-1].strip()[:120]}")
        return "no SIGKILL / WORKER TIMEOUT since start"
    return probe


def verify_mlflow(run: Runner, name: str, port: int, server_kind: str, workers: int,
                  start_seconds: float = 90.0) -> list[CheckResult]:
    """The checks a recreated or updated MLflow container must pass, in order."""
    quick = RetryPolicy(attempts=5, seconds=15, wait=1.0)
    starting = RetryPolicy(attempts=int(start_seconds), seconds=start_seconds, wait=1.0)
    return run_checks([
        ("container is running", name, _probe_running(run, name), quick),
        ("/health answers OK", name, _probe_http(run, name, port, "/health", "OK"), starting),
        ("experiments search answers", name,
         _probe_http(run, name, port, "/api/2.0/mlflow/experiments/search?max_results=1", "experiments"),
         quick),
        (f"{workers} workers are running", name, _probe_workers(run, name, server_kind, workers), starting),
        ("memory below the limit", name, _probe_memory(run, name), quick),
        ("no SIGKILL or WORKER TIMEOUT since start", name, _probe_logs(run, name), quick),
        ("still running after the checks", name, _probe_running(run, name), quick),
    ])
