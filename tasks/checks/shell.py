"""Commands on the target host for the checks: each bounded by coreutils' ``timeout``, secrets
only ever on stdin from a private file.

Transport: everything goes through shell commands on the target (``docker`` CLI, ``curl`` or
``python3`` for HTTP), each wrapped in ``timeout N`` and given pyinfra's ``_timeout`` too, so a
hung service or daemon costs at most N seconds an attempt. Secrets (role and Redis passwords)
travel in 0600 files in a fresh 0700 directory on the target, fed on stdin and removed by the
same command: never on a command line, never in output (evidence is scrubbed of them too).
"""

from __future__ import annotations

import io
import secrets as _secrets
import shlex
from collections.abc import Callable
from typing import Any

from tasks.operations import runner


def timed(command: str, seconds: int) -> str:
    """`command` under coreutils' timeout (TERM after `seconds`, KILL 2 s later)."""
    return f"timeout -k 2 {int(seconds)} sh -c {shlex.quote(command)}"


class Shell:
    """Commands on the target host: `run(command, timeout)` and `run_with_secret(command,
    secret, timeout)` (the secret on the command's stdin from a 0600 file, removed after).
    Both return (ok, output) and never raise for a failed or timed-out command."""

    def __init__(
        self,
        run: Callable[[str, int], tuple[bool, str]],
        put: Callable[[str, str], bool] | None = None,
        run_as_login: Callable[[str, int], tuple[bool, str]] | None = None,
    ):
        # run_as_login: the login user itself (no sudo), who then owns the private folder it
        # uploads into; the command itself runs escalated and reads it (tasks/operations/runner.py).
        self._run, self._put, self._run_as_login = run, put, run_as_login or run
        self.secrets: list[str] = []  # values to scrub from evidence

    def run(self, command: str, timeout: int) -> tuple[bool, str]:
        return self._run(timed(command, timeout), timeout + 5)

    def run_with_secret(self, command: str, secret: str, timeout: int) -> tuple[bool, str]:
        self.secrets.append(secret)
        if self._put is None:
            return False, "this transport cannot upload files"
        folder = f"/tmp/quant-verify-{_secrets.token_hex(8)}"
        ok, out = self._run_as_login(f"mkdir -m 0700 {shlex.quote(folder)}", 15)
        if not ok:
            return False, f"cannot create a private folder on the host: {out.strip()[:120]}"
        path = f"{folder}/stdin"
        try:
            if not self._put(secret + "\n", path):
                return False, "uploading the secret file failed"
            full = (
                f"chmod 0600 {shlex.quote(path)} && {timed(command, timeout)} < {shlex.quote(path)}; "
                f"rc=$?; rm -rf {shlex.quote(folder)}; exit $rc"
            )
            return self._run(full, timeout + 5)
        finally:
            self._run_as_login(f"rm -rf {shlex.quote(folder)}", 15)


def pyinfra_shell(target: Any) -> Shell:
    """A Shell on a pyinfra host, at execution time (any connector), with the current
    operation's connector arguments (its ``_sudo``, ``_env``...: tasks/operations/runner.py)."""

    def run_with(overrides: dict) -> Callable[[str, int], tuple[bool, str]]:
        def run(command: str, timeout: int) -> tuple[bool, str]:
            try:
                return runner.run_now(target, command, **{"_timeout": timeout, **overrides})
            except (TimeoutError, OSError) as exc:
                return False, f"{type(exc).__name__}: {exc or 'timed out'}"

        return run

    def put(content: str, path: str) -> bool:
        return runner.put_file(target, io.BytesIO(content.encode()), path, **runner.AS_LOGIN_USER)

    return Shell(run_with({}), put, run_with(runner.AS_LOGIN_USER))


def runner_shell(run: Callable[[str], tuple[bool, str]]) -> Shell:
    """A Shell over a plain ``run(command) -> (ok, output)`` callable (no uploads)."""
    return Shell(lambda command, timeout: run(command))
