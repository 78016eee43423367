"""Retried checks (tenacity): each one a sentence, a bounded retry policy, and evidence.

A probe returns its evidence when the check holds, raises `NotYet` when it may hold after a wait
(service still starting), and `Broken` when waiting cannot help (container exited, OOM-killed):
that stops the retries at once. Every attempt's reason is kept, so a failure says why.

A wait is never silent: while a check is retried (and around any other long wait, with
:func:`progress`), one line every ``PROGRESS_EVERY`` seconds says, with the host's prefix, what
it waits for, the attempt, and how long it has waited out of how long it may (``waiting for
check 'MLflow /health answers' (attempt 4): 20s / 90s``). The line comes from a gevent greenlet
beside the wait, so it is printed during a single long command too (pyinfra's CLI runs under
gevent's monkey patching); the host is pyinfra's current one, or none outside a pyinfra run.

:class:`Session` runs the checks of one host in order under one deadline, with the shell they
send commands through; every per-service check module (tasks/checks/<service>.py) takes one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gevent
import tenacity

PROGRESS_EVERY = 10.0  # seconds between two "waiting for ..." lines of one wait


class NotYet(Exception):
    """The check does not hold yet; retry."""


class Broken(Exception):
    """The check cannot hold; do not retry."""


@dataclass
class CheckResult:
    name: str
    target: str
    status: str  # pass | fail | warn | skip
    attempts: int = 0
    elapsed: float = 0.0
    evidence: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "warn", "skip")


class ChecksFailed(Exception):
    def __init__(self, results: list[CheckResult]):
        self.results = results
        failed = [r for r in results if not r.passed]
        super().__init__("; ".join(f"{r.name} ({r.target}): {r.evidence}" for r in failed))


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 30
    seconds: float = 60.0
    wait: float = 1.0


def host_reporter() -> Callable[[str], None] | None:
    """How to print a line about the pyinfra host whose operation runs now (its prefix first),
    or None outside a pyinfra run."""
    from pyinfra.context import ctx_host

    current = ctx_host.get()
    if current is None or not hasattr(current, "log"):
        return None
    return lambda line: current.log(line)


@contextmanager
def progress(
    what: str,
    seconds: float | None = None,
    *,
    say: Callable[[str], None] | None = None,
    every: float | None = None,
    status: Callable[[], str] = lambda: "",
) -> Iterator[None]:
    """While the body runs, print ``waiting for <what><status()>: <elapsed>s / <seconds>s`` every
    ``every`` seconds (default PROGRESS_EVERY) through ``say`` (default: the current pyinfra
    host's log)."""
    say = say or host_reporter()
    every = PROGRESS_EVERY if every is None else every
    if say is None or every <= 0:
        yield
        return
    started = time.monotonic()

    def tick() -> None:
        while True:
            gevent.sleep(every)
            elapsed = time.monotonic() - started
            limit = f" / {seconds:.0f}s" if seconds else ""
            say(f"waiting for {what}{status()}: {elapsed:.0f}s{limit}")

    ticker = gevent.spawn(tick)
    try:
        yield
    finally:
        ticker.kill(block=False)


def run_check(
    name: str,
    target: str,
    probe: Callable[[], str],
    policy: RetryPolicy = RetryPolicy(),
    say: Callable[[str], None] | None = None,
) -> CheckResult:
    """Run `probe` until it holds, is Broken, or the policy's attempts or time run out; a line
    every PROGRESS_EVERY seconds while it does (``say``: where to, default the pyinfra host)."""
    result = CheckResult(name, target, "fail")
    started = time.monotonic()

    def attempt():
        result.attempts += 1
        try:
            return probe()
        except (NotYet, Broken) as exc:
            result.reasons.append(str(exc))
            raise

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_after_delay(policy.seconds),
        wait=tenacity.wait_fixed(policy.wait),
        retry=tenacity.retry_if_exception_type(NotYet),
        reraise=True,
    )
    try:
        with progress(
            f"check '{name}'", policy.seconds, say=say, status=lambda: f" (attempt {result.attempts})"
        ):
            result.evidence = retrying(attempt) or ""
        result.status = "pass"
    except (NotYet, Broken) as exc:
        result.evidence = str(exc)
    except Exception as exc:  # a probe bug or a transport error is a failed check, with its reason
        result.evidence = f"{type(exc).__name__}: {exc}"
        result.reasons.append(result.evidence)
    result.elapsed = time.monotonic() - started
    return result


def run_checks(
    checks: list[tuple[str, str, Callable[[], str], RetryPolicy]], stop_on_failure: bool = True
) -> list[CheckResult]:
    """Run checks in order; after a failure the rest are reported as skipped (they would only
    repeat it) unless `stop_on_failure` is False."""
    results: list[CheckResult] = []
    for name, target, probe, policy in checks:
        if stop_on_failure and any(r.status == "fail" for r in results):
            results.append(CheckResult(name, target, "skip", evidence="skipped: an earlier check failed"))
            continue
        results.append(run_check(name, target, probe, policy))
    return results


def table_lines(results: list[CheckResult], evidence_chars: int) -> list[str]:
    """Check, target, result, attempts, elapsed, evidence: a header and one line per result."""
    columns = ("check", "target", "result", "attempts", "elapsed", "evidence")
    rows = [
        (
            r.name,
            r.target,
            r.status.upper(),
            str(r.attempts),
            f"{r.elapsed:.1f}s",
            r.evidence.replace("\n", " ")[:evidence_chars],
        )
        for r in results
    ]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns[:-1])] + [0]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return lines


def format_table(results: list[CheckResult]) -> str:
    """A deploy's verification: the table, then how many passed."""
    lines = table_lines(results, evidence_chars=90)
    passed = sum(1 for r in results if r.status == "pass")
    skipped = sum(1 for r in results if r.status == "skip")
    lines.append(
        f"{passed}/{len(results) - skipped} checks passed" + (f", {skipped} skipped" if skipped else "")
    )
    return "\n".join(lines)


# --- one host's checks: a shell, one deadline, results in order --------------------------------

ONCE = RetryPolicy(attempts=1, seconds=0, wait=0)


class Warned(str):
    """A probe's evidence that holds but deserves attention: the check is reported as warn."""


def redact(text: str, secret_values: list[str]) -> str:
    for value in sorted(set(v for v in secret_values if v), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    @property
    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def clip(self, policy: RetryPolicy) -> RetryPolicy:
        return RetryPolicy(policy.attempts, max(0.0, min(policy.seconds, self.left)), policy.wait)


class Session:
    """The checks of one host: ``check`` runs a probe under the retry policy, clipped to what is
    left of the deadline (after it, a check fails unrun); ``skip`` records a reason; ``sh`` runs
    a command on the host. Evidence is scrubbed of every secret the shell was handed.

    + shell: a :class:`tasks.checks.shell.Shell` (``run``, ``run_with_secret``, ``secrets``)
    + retry: the default policy of a check
    + deadline: seconds for all checks of this session
    + command_timeout / http_timeout: seconds for one command / one HTTP request
    + environ: where secret sources named ``env`` are read (default: the process environment)
    """

    def __init__(
        self,
        shell: Any,
        *,
        retry: RetryPolicy = RetryPolicy(5, 20.0, 2.0),
        deadline: float = 240.0,
        command_timeout: int = 15,
        http_timeout: int = 5,
        environ: Mapping[str, str] | None = None,
    ):
        self.shell, self.retry = shell, retry
        self.command_timeout, self.http_timeout = int(command_timeout), int(http_timeout)
        self.environ = os.environ if environ is None else environ
        self.deadline = Deadline(deadline)
        self.results: list[CheckResult] = []
        self.inspected: dict[str, dict] = {}  # container -> its last `docker inspect`
        self.first_restarts: dict[str, tuple[int, float]] = {}  # container -> (count, when read)
        self.crash_looping: set[str] = set()  # containers seen restarting over and over

    def check(
        self, name: str, target: str, probe: Callable[[], str], policy: RetryPolicy | None = None
    ) -> CheckResult:
        policy = policy or self.retry
        if self.deadline.left <= 0:
            result = CheckResult(
                name,
                target,
                "fail",
                evidence=f"not run: the {self.deadline.seconds:.0f}s deadline for this host had passed",
            )
        else:
            result = run_check(name, target, probe, self.deadline.clip(policy))
            if result.status == "pass" and isinstance(result.evidence, Warned):
                result.status = "warn"
        result.evidence = redact(str(result.evidence), self.shell.secrets)
        result.reasons = [redact(str(r), self.shell.secrets) for r in result.reasons]
        self.results.append(result)
        return result

    def skip(self, name: str, target: str, reason: str) -> None:
        self.results.append(CheckResult(name, target, "skip", evidence=reason))

    def sh(self, command: str, timeout: int | None = None) -> tuple[bool, str]:
        return self.shell.run(command, timeout or self.command_timeout)
