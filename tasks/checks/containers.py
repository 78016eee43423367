"""Container checks, for any service: present, running, healthy, not OOM-killed, memory below
its limit, restart count stable. Read through the ``docker`` CLI on the host."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable

from tasks.checks.runner import ONCE, Broken, NotYet, RetryPolicy, Session, Warned

Runner = Callable[[str], tuple[bool, str]]

# --- pure helpers --------------------------------------------------------------------------------

_STATS_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


def stats_size(text: str) -> int:
    """Bytes from `docker stats` sizes: 369.1MiB, 1GiB, 512kB, 0B (not a setting: settings use
    tasks.settings.types.Size)."""
    match = re.match(r"\s*([\d.]+)\s*([A-Za-z]+)\s*\Z", text)
    if not match or match.group(2).lower() not in _STATS_UNITS:
        raise ValueError(f"unreadable size {text!r}")
    return int(float(match.group(1)) * _STATS_UNITS[match.group(2).lower()])


def memory_verdict(usage: int, limit: int, warn_percent: float, fail_percent: float) -> tuple[str, str]:
    """("pass" | "warn" | "fail", evidence) for a container's memory use against its limit."""
    mib = lambda n: f"{n / (1 << 20):.0f} MiB"  # noqa: E731
    if not limit:
        return "pass", f"{mib(usage)} in use, no memory limit set"
    percent = 100.0 * usage / limit
    text = f"{mib(usage)} of {mib(limit)} ({percent:.0f}%)"
    if percent >= fail_percent:
        return "fail", f"{text}: at or above {fail_percent:.0f}% of the limit"
    if percent >= warn_percent:
        return "warn", f"{text}: above the {warn_percent:.0f}% warning level"
    return "pass", text


def oom_kills(text: str) -> int | None:
    """The `oom_kill N` count from cgroup v2 memory.events or v1 memory.oom_control."""
    match = re.search(r"^oom_kill (\d+)", text, re.M)
    return int(match.group(1)) if match else None


# Sets $c to the memory cgroup of the exec'd process, which is the container's ($v: v1 or v2).
# Where the mount shows a parent's hierarchy (the host's cgroup namespace), /proc/self/cgroup's
# path under it is the container's folder; else the mount is the container's own.
OWN_MEMORY_CGROUP = (
    "d=/sys/fs/cgroup; "
    "if [ -r $d/cgroup.controllers ]; then v=v2; c=$d; p=$(sed -n 's/^0::\\(.*\\)$/\\1/p' /proc/self/cgroup); "
    "else v=v1; c=$d/memory; p=$(sed -n 's/^[0-9]*:[^:]*memory[^:]*:\\(.*\\)$/\\1/p' /proc/self/cgroup); fi; "
    'if [ -n "$p" ] && [ "$p" != / ] && [ -d "$c$p" ]; then c="$c$p"; fi; '
)
# The container's memory use and limit, read from inside it (one exec, ~0.2 s, where `docker stats`
# takes 1.5-2.5 s: it waits for two samples). Prints nothing where neither cgroup layout is there.
CGROUP_MEMORY_COMMAND = OWN_MEMORY_CGROUP + (
    "if [ $v = v2 ]; then "
    "if [ -r $c/memory.current ] && [ -r $c/memory.max ]; then "
    "echo v2; cat $c/memory.current $c/memory.max; grep '^inactive_file ' $c/memory.stat; fi; "
    "elif [ -r $c/memory.usage_in_bytes ]; then "
    "echo v1; cat $c/memory.usage_in_bytes $c/memory.limit_in_bytes; grep '^total_inactive_file ' $c/memory.stat; fi"
)
# The kernel's OOM kill count in the container's memory cgroup (see :func:`oom_kills`).
OOM_EVENTS_COMMAND = OWN_MEMORY_CGROUP + (
    "cat $c/memory.events 2>/dev/null || cat $c/memory.oom_control 2>/dev/null"
)
# cgroup v1 shows "no limit" as the largest page count in bytes (9223372036854771712 here).
V1_NO_LIMIT = 1 << 62


def cgroup_memory(text: str) -> tuple[int, int | None] | None:
    """(usage, limit) in bytes from :data:`CGROUP_MEMORY_COMMAND`'s output, usage less the
    inactive file cache as `docker stats` counts it; limit None when the cgroup has none ("max",
    or v1's largest value); None when the output is not that."""
    lines = text.split()
    if len(lines) < 3 or lines[0] not in ("v1", "v2") or not lines[1].isdigit():
        return None
    usage, limit_text = int(lines[1]), lines[2]
    if limit_text != "max" and not limit_text.isdigit():
        return None
    inactive = int(lines[4]) if len(lines) >= 5 and lines[4].isdigit() else 0
    limit = None if limit_text == "max" or int(limit_text) >= V1_NO_LIMIT else int(limit_text)
    return usage - inactive if inactive < usage else usage, limit


def healthcheck_shell(data: dict) -> bool:
    """Whether the container's healthcheck is a ``CMD-SHELL`` one (the form that can be run
    again from outside without putting its text on a command line)."""
    test = ((data.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return len(test) == 2 and test[0] == "CMD-SHELL"


def healthcheck_seconds(data: dict) -> int:
    """How long a run of the container's healthcheck may take: its own timeout (Docker's default
    30 s), at most 10 s, so that one hung run does not eat a check's whole deadline."""
    timeout = ((data.get("Config") or {}).get("Healthcheck") or {}).get("Timeout") or 30e9
    return max(1, min(int(timeout / 1e9), 10))


def container_state(run: Runner, name: str) -> dict:
    """``docker inspect``'s State of a container, through a ``run(command)`` callable."""
    ok, out = run(f"docker inspect --type container -f '{{{{json .State}}}}' {shlex.quote(name)}")
    if not ok:
        raise Broken(f"container {name} does not exist: {out.strip()[:200]}")
    return json.loads(out)


# --- probes --------------------------------------------------------------------------------------


def inspect(session: Session, name: str) -> dict:
    """``docker inspect`` of a container, kept in ``session.inspected``."""
    ok, out = session.sh(f"docker inspect --type container {shlex.quote(name)}")
    if not ok:
        text = out.strip()
        if "No such" in text or "no such" in text:
            raise Broken(f"container {name} does not exist")
        raise NotYet(f"docker inspect failed: {text[-160:] or 'timed out'}")
    try:
        data = json.loads(out)[0]
    except (ValueError, IndexError):
        raise NotYet(f"unreadable docker inspect output: {out.strip()[:120]}") from None
    session.inspected[name] = data
    return data


def _present(session: Session, name: str):
    def probe():
        data = inspect(session, name)
        session.first_restarts.setdefault(name, (int(data.get("RestartCount") or 0), time.monotonic()))
        return f"image {data.get('Config', {}).get('Image', '?')}, created {data.get('Created', '?')[:19]}"

    return probe


def _crash_loop(session: Session, name: str, data: dict) -> None:
    """Broken when Docker is restarting the container over and over. One restart may be a slow
    start; a restart seen during this check, or one after an OOM kill, is a crash loop that
    waiting will not fix (a recreate's verification should roll back now, not after its whole
    start budget)."""
    state = data["State"]
    if not state.get("Restarting"):
        return
    first = session.first_restarts.get(name, (0, 0.0))[0]
    restarts = int(data.get("RestartCount") or 0)
    if state.get("OOMKilled") or restarts > first:
        session.crash_looping.add(name)
        oom = ", OOM-killed" if state.get("OOMKilled") else ""
        raise Broken(
            f"crash loop: restarting, {restarts} restart(s) so far (last exit code {state.get('ExitCode')}{oom})"
        )


def _running(session: Session, name: str):
    def probe():
        data = inspect(session, name)
        state = data["State"]
        _crash_loop(session, name, data)
        if state.get("Restarting"):
            raise NotYet(f"restarting (last exit code {state.get('ExitCode')})")
        if state.get("Status") != "running":
            oom = ", OOM-killed" if state.get("OOMKilled") else ""
            error = f", {state['Error']}" if state.get("Error") else ""
            raise Broken(
                f"{state.get('Status')} (exit code {state.get('ExitCode')}{oom}{error}, "
                f"finished {str(state.get('FinishedAt', '?'))[:19]})"
            )
        return f"running since {str(state.get('StartedAt', '?'))[:19]}"

    return probe


def _healthy(session: Session, name: str):
    def probe():
        data = inspect(session, name)
        _crash_loop(session, name, data)
        health = data["State"].get("Health") or {}
        status = health.get("Status")
        last = (health.get("Log") or [{}])[-1]
        detail = str(last.get("Output", "")).strip().replace("\n", " ")[:120]
        if status == "healthy":
            return f"healthy (streak of failures: {health.get('FailingStreak', 0)})"
        if status == "starting" and healthcheck_shell(data):
            # Docker runs its first probe one interval after the start (5 s or more): running
            # the container's own healthcheck now answers as soon as the service does.
            passed, out = _healthcheck_now(session, name, data)
            if passed:
                return "its healthcheck command passes, run now (Docker's first probe is still to come)"
            raise NotYet(
                f"health starting: its healthcheck command, run now, fails: {' '.join(out.split())[:120]}"
            )
        raise NotYet(f"health {status}: last probe exit {last.get('ExitCode')} {detail}".strip())

    return probe


def _healthcheck_now(session: Session, name: str, data: dict) -> tuple[bool, str]:
    """Run a ``CMD-SHELL`` healthcheck in the container as Docker does (``sh -c``, the
    container's user and env). The text goes from ``docker inspect`` to the container's shell on
    a pipe: a credential in it stays off the host's command lines and out of our output."""
    q_name = shlex.quote(name)
    return session.sh(
        f"docker inspect --type container -f '{{{{index .Config.Healthcheck.Test 1}}}}' {q_name} "
        f"| docker exec -i {q_name} sh",
        healthcheck_seconds(data),
    )


def _not_oom(session: Session, name: str):
    def probe():
        state = inspect(session, name)["State"]
        kills = None
        if state.get("Status") == "running":
            for _ in range(3):
                ok, out = session.sh(
                    f"docker exec {shlex.quote(name)} sh -c {shlex.quote(OOM_EVENTS_COMMAND)}"
                )
                # A read that worked prints the counter's file: nothing means the engine dropped
                # the exec's output (seen under load, docker-py #2042), so read it again.
                if not ok or out.strip():
                    break
            kills = oom_kills(out) if ok else None
        problems = []
        if state.get("OOMKilled"):
            problems.append(f"OOM-killed (Docker's State.OOMKilled, exit code {state.get('ExitCode')})")
        if kills:
            problems.append(
                f"the kernel OOM-killed {kills} process(es) in its memory cgroup (SIGKILL: out of memory)"
            )
        if problems:
            raise Broken("; ".join(problems))
        where = "no OOM kill in its memory cgroup" if kills == 0 else "cgroup OOM counter unreadable"
        return f"State.OOMKilled false, {where}"

    return probe


def _memory(session: Session, name: str, warn_percent: float, fail_percent: float):
    def probe():
        limit = int(inspect(session, name).get("HostConfig", {}).get("Memory") or 0)
        ok, out = session.sh(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(CGROUP_MEMORY_COMMAND)}")
        read = cgroup_memory(out) if ok else None
        # A cgroup whose limit is not the container's (none when it has none) is not its own:
        # then ask the engine.
        if read is not None and read[1] == (limit or None):
            return _judged(read[0], limit)
        ok, out = session.sh(f"docker stats --no-stream --format '{{{{.MemUsage}}}}' {shlex.quote(name)}")
        if not ok:
            raise NotYet(f"docker stats failed: {out.strip()[-160:] or 'timed out'}")
        try:
            usage_text, limit_text = out.strip().splitlines()[-1].split("/")[:2]
            usage, seen_limit = stats_size(usage_text), stats_size(limit_text)
        except (ValueError, IndexError):
            raise NotYet(f"unreadable docker stats output: {out.strip()[:80]}") from None
        if seen_limit == 0:
            # A running container always has a limit (the machine's memory if none is set): 0B / 0B
            # means the engine could not read its cgroup, not that it uses nothing.
            raise NotYet("docker stats reads 0B / 0B: the engine cannot read this container's cgroup")
        return _judged(usage, limit)

    def _judged(usage: int, limit: int):
        verdict, text = memory_verdict(usage, limit, warn_percent, fail_percent)
        if verdict == "fail":
            raise Broken(text)
        return Warned(text) if verdict == "warn" else text

    return probe


def restarts_stable(session: Session, name: str, window: float):
    """A probe: the restart count read when the container was first seen has not moved after at
    least ``window`` seconds since then (the checks run before it count towards the window; it
    waits only for what is left). verify_stack's window is ``stack.restart_window``, a fix's
    verification's ``mlflow.restart_watch``."""

    def probe():
        first, at = session.first_restarts[name]
        wait = window - (time.monotonic() - at)
        if wait > 0:
            time.sleep(min(wait, max(0.0, session.deadline.left)))
        now = int(inspect(session, name).get("RestartCount") or 0)
        span = time.monotonic() - at
        if now != first:
            raise Broken(f"restart count went {first} -> {now} within {span:.1f}s")
        return f"restart count {now}, unchanged over {span:.1f}s"

    return probe


def container_checks(
    session: Session, name: str, memory_warn_percent: float = 85, memory_fail_percent: float = 95
) -> bool:
    """Present, running, healthy (if it has a healthcheck), not OOM-killed, memory below its
    limit. False when the container is absent, not running or crash-looping: the service's own
    checks would only repeat that, so the caller skips them (:func:`skip_service`)."""
    if (
        session.check(
            f"container {name} is present", name, _present(session, name), RetryPolicy(3, 10, 1)
        ).status
        != "pass"
    ):
        return False
    running = session.check(f"container {name} is running", name, _running(session, name)).status == "pass"
    if running and (session.inspected.get(name, {}).get("State") or {}).get("Health") is not None:
        session.check(f"container {name} is healthy", name, _healthy(session, name))
    session.check(f"container {name} is not OOM-killed", name, _not_oom(session, name), ONCE)
    if running:
        session.check(
            f"container {name} memory is below its limit",
            name,
            _memory(session, name, memory_warn_percent, memory_fail_percent),
            RetryPolicy(2, 10, 1),
        )
    # A crash-looping container is as good as not running: its service checks would only wait.
    return running and name not in session.crash_looping


def skip_service(session: Session, service: str, name: str) -> None:
    """The service's own checks, skipped because its container is absent or not running."""
    state = (
        "absent"
        if name not in session.first_restarts
        else "crash-looping"
        if name in session.crash_looping
        else "not running"
    )
    session.skip(f"{service} service checks", name, f"skipped: container {name} is {state}")
