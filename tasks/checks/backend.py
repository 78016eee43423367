"""The backend's verification after the --reload fix: running, answering its health path from
inside the container, and no watchfiles error since it started. Through a
``run(command) -> (ok, output)`` callable on the target host, so it works over any connector.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from tasks.checks.containers import container_state
from tasks.checks.runner import Broken, CheckResult, NotYet, RetryPolicy, run_checks

Runner = Callable[[str], tuple[bool, str]]

# The incident's line: watchfiles' native watcher failing on a WSL bind mount.
WATCHFILES_ERROR = "WatchfilesRustInternalError"

QUICK = RetryPolicy(attempts=5, seconds=15, wait=1.0)
STARTING = RetryPolicy(attempts=60, seconds=60, wait=1.0)


def health_fetch(port: int, health_path: str) -> str:
    """A shell line GETting the health URL inside the container: curl, else python3."""
    url = f"http://127.0.0.1:{port}{health_path}"
    return f"curl -fsS --max-time 5 {shlex.quote(url)} 2>&1 || python3 -c " + shlex.quote(
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )


def verify_backend(run: Runner, name: str, port: int, health_path: str) -> list[CheckResult]:
    """Running, ``health_path`` answering, no WatchfilesRustInternalError since start, and still
    running after all that (a reload loop would have restarted it)."""

    def running():
        state = container_state(run, name)
        if state.get("OOMKilled") or state.get("Restarting") or state.get("Status") in ("exited", "dead"):
            raise Broken(f"{state.get('Status')}, exit code {state.get('ExitCode')}")
        if state.get("Status") != "running":
            raise NotYet(f"state {state.get('Status')}")
        return f"running since {state.get('StartedAt', '?')[:19]}"

    fetch = health_fetch(port, health_path)

    def health():
        running()
        ok, out = run(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(fetch)}")
        if not ok:
            raise NotYet(f"GET {health_path}: {out.strip()[-160:]}")
        return f"GET {health_path} -> {out.strip()[:60]}"

    def no_watcher_error():
        state = container_state(run, name)
        ok, out = run(
            f"docker logs --since {shlex.quote(state.get('StartedAt', ''))} {shlex.quote(name)} 2>&1"
        )
        if not ok:
            raise NotYet(f"docker logs failed: {out.strip()[:120]}")
        bad = [line for line in out.splitlines() if WATCHFILES_ERROR in line]
        if bad:
            raise Broken(f"{len(bad)} watchfiles error line(s) since start: {bad[-1].strip()[:120]}")
        return "no WatchfilesRustInternalError since start"

    return run_checks(
        [
            ("container is running", name, running, QUICK),
            (f"{health_path} answers", name, health, STARTING),
            ("no watchfiles error since start", name, no_watcher_error, QUICK),
            ("still running after the checks", name, running, QUICK),
        ]
    )
