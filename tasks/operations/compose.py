"""A compose service brought to its settings through compose itself (the facts:
tasks/facts/compose.py; the file patch: tasks/core/compose.py).

When the user runs a service with compose, compose is the source of truth: a container recreated
behind its back would be undone by the next `compose up`, or collide with it. So the deploy edits
the user's file (only the keys it manages), lets the host's compose tool apply it
(`up -d --no-deps <service>`), reads the container compose made and verifies it; when that fails,
it writes the previous file back and applies it again.

Until the change is verified or undone, a copy of the file before it stays beside it
(``.<file>.quantlab-previous``, the owner and mode kept): a run that finds one knows an apply did
not finish (the controller died after writing the file, or before the container was verified),
says so, and applies and verifies again with that copy as the file to go back to.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace

from pyinfra import host
from pyinfra.api import OperationError

from tasks.checks.runner import CheckResult, format_table, progress
from tasks.core.container_spec import ContainerSpec, format_plan, spec_from_inspect
from tasks.facts.compose import ComposeContainer, ComposePending, ComposeService, pending_path
from tasks.facts.docker import ContainerInspect
from tasks.operations import docker, runner
from tasks.operations.faults import fault_point
from tasks.operations.recap import record_checks, say
from tasks.operations.text_files import diff_enabled, show_diff

# What a verifier is handed: the container's name (compose may rename it on recreate).
VerifierFor = Callable[[str], docker.Verifier | None]


@dataclass(frozen=True)
class ComposeChange:
    """Everything the execution half needs, decided at planning time."""

    tool: tuple[str, ...]
    file: str
    service: str
    project: str | None  # None: compose's own default (the file's folder, or its .env)
    old_text: str
    new_text: str  # == old_text: only the container drifted; recreate it from the same file
    spec: ContainerSpec  # the settings as the container must show them (name: before the change)
    stop_grace: int = docker.STOP_GRACE_SECONDS
    resumed: bool = False  # an unfinished apply left its copy: old_text is that copy

    @property
    def file_changed(self) -> bool:
        return self.new_text != self.old_text


def up_command(change: ComposeChange, force_recreate: bool) -> str:
    """`<tool> -f FILE [-p PROJECT] up -d --no-deps -t N [--force-recreate] SERVICE`, run in the
    file's folder (compose reads `.env` and resolves relative paths from there)."""
    argv = [*change.tool, "-f", change.file]
    if change.project:
        argv += ["-p", change.project]
    argv += ["up", "-d", "--no-deps", "-t", str(change.stop_grace)]
    if force_recreate:
        argv.append("--force-recreate")
    argv.append(change.service)
    folder = posixpath.dirname(change.file) or "."
    return f"cd {shlex.quote(folder)} && {shlex.join(argv)} 2>&1"


def containers_of(service_fact: dict, file: str, project: str | None) -> list[ComposeContainer]:
    """The service's containers made from ``file`` (and of ``project`` when it is given)."""
    return [
        c
        for c in service_fact["containers"]
        if c.made_from(file) and (project is None or c.project == project)
    ]


def _write_file(target, path: str, text: str) -> None:
    """Write through a temp file and `cat >`, so the file keeps its inode, owner and mode."""
    try:
        folder = runner.upload_private(target, {"compose.yml": text}, "quantlab-compose")
    except runner.PrivateUploadError as exc:
        raise OperationError(f"uploading the new {path} failed: {exc}") from exc
    temp = f"{folder}/compose.yml"
    try:
        docker._must(target, f"cat {shlex.quote(temp)} > {shlex.quote(path)}", f"writing {path}")
    finally:
        runner.remove_private(target, folder)


def _current_container(target, change: ComposeChange) -> str:
    fact = ComposeService()
    ok, out = docker.run_now(target, fact.command(change.file, change.service))
    if not ok:
        raise OperationError(
            f"listing the containers of service {change.service} failed: {out.strip()[:300]}"
        )
    found = containers_of(fact.process(out.splitlines()), change.file, change.project)
    if len(found) != 1:
        names = ", ".join(c.name for c in found) or "none"
        raise OperationError(
            f"after `up`, service {change.service} has {len(found)} containers from {change.file} ({names})"
        )
    return found[0].name


def _applied_settings(target, spec: ContainerSpec) -> CheckResult:
    """docker.applied_settings for the container compose made. Its ports and entrypoint are the
    file's business, not the settings': they are taken as compose made them (the plan knew none
    before compose first made the container, and the user may have changed them in the file)."""
    check = CheckResult(f"{spec.name} has every managed setting", spec.name, "fail", attempts=1)
    fact = ContainerInspect()
    keys = docker.secret_keys_arg(spec.secret_env_keys)
    ok, out = docker.run_now(target, fact.command(spec.name, spec.image, keys))
    if not ok:
        check.evidence = f"docker inspect failed: {out.strip()[:300]}"
        return check
    facts = fact.process(out.splitlines())
    if not facts["container"]:
        check.evidence = f"container {spec.name} does not exist"
        return check
    made = spec_from_inspect(facts["container"])
    plan = docker.plan_from_facts(replace(spec, ports=made.ports, entrypoint=made.entrypoint), facts)
    if plan.changed:
        check.evidence = "differs (actual -> wanted): " + "; ".join(format_plan(plan))
    else:
        check.status, check.evidence = "pass", "docker inspect matches the settings"
    return check


def _verify(target, spec: ContainerSpec, verify: docker.Verifier | None) -> list[CheckResult]:
    """The applied settings first; the caller's checks only when they are (as docker._verify)."""
    results = [_applied_settings(target, spec)]
    if results[0].passed and verify is not None:
        results += verify(lambda command: docker.run_now(target, command))
    say(target, "verification:\n" + format_table(results), record=False)
    record_checks(target, results)
    return results


def _apply(target, change: ComposeChange, text: str, force_recreate: bool, forward: bool = True) -> str:
    if change.file_changed:
        _write_file(target, change.file, text)
    if forward:
        fault_point("compose.after-write")
    with progress(f"`compose up` of service {change.service}"):
        ok, out = docker.run_now(target, up_command(change, force_recreate))
    if not ok:
        raise OperationError(f"compose up {change.service} failed: {out.strip()[-600:]}")
    if forward:
        fault_point("compose.after-up")
    return _current_container(target, change)


@docker._reported
def apply(state, target, change: ComposeChange, verify_for: VerifierFor):
    """Keep a copy of the file beside it, write the file, `up` the service, verify the container
    compose made; on failure (any exception) write the previous file back and `up` again. The
    copy goes once the change is verified or undone."""
    copy = shlex.quote(pending_path(change.file))
    if change.file_changed:
        docker._must(
            target,
            f"[ -e {copy} ] || cp -p {shlex.quote(change.file)} {copy}",
            f"keeping a copy of {change.file}",
        )
    try:
        name = _apply(target, change, change.new_text, force_recreate=not change.file_changed)
        results = _verify(target, replace(change.spec, name=name), verify_for(name))
        reasons = [f"{r.name}: {r.evidence}" for r in results if not r.passed]
    except Exception as exc:
        name, reasons = change.spec.name, [docker._reason(exc)]
    if not reasons:
        if change.file_changed or change.resumed:
            docker.run_now(target, f"rm -f {copy}")
        return True
    _, tail = docker.run_now(target, f"docker logs --tail 15 {shlex.quote(name)} 2>&1")
    if change.file_changed:
        try:
            restored_name = _apply(target, change, change.old_text, force_recreate=False, forward=False)
            restored = f"the previous {change.file} is back and applied" + docker._restored_state(
                target, restored_name
            )
        except Exception as exc:
            restored = (
                f"putting the previous {change.file} back failed ({docker._reason(exc)}); it is kept "
                f"as {pending_path(change.file)}: copy it over the file and run the compose tool's "
                f"`up -d {change.service}` in its folder"
            )
        else:
            docker.run_now(target, f"rm -f {copy}")
    else:
        restored = f"{change.file} was not changed (only the container had drifted)"
    return docker._fail(
        target,
        f"{change.service}: the container compose made failed verification; {restored}.\nReasons:\n  "
        + "\n  ".join(reasons)
        + ("\nLast log lines of the failed container:\n" + tail.strip() if tail.strip() else ""),
    )


def unfinished_apply(file: str) -> str | None:
    """The copy of ``file`` an unfinished apply left (the file before that apply), else None;
    says what it found."""
    fact = host.get_fact(ComposePending, path=file)
    if fact is None:
        if docker.host_failed():
            raise docker.HostFailed()
        return None
    refuse_literal_secrets(pending_path(file), "the kept copy of the compose file", fact["secret_lines"])
    if fact["text"] is None:
        return None
    say(
        host,
        f"found {pending_path(file)}: an apply of {file} did not finish (the controller stopped "
        "after writing the file, or before its container was verified); the file before it is kept "
        "there: apply and verify again, or write that copy back when the check fails",
    )
    return fact["text"]


def refuse_literal_secrets(path: str, what: str, secret_lines: list[str]) -> None:
    """A file the deploy reads (and prints at -vvv) and rewrites must not hold a secret."""
    if secret_lines:
        raise OperationError(
            f"{what} {path} holds a literal secret ({'; '.join(secret_lines[:5])}): the deploy reads "
            "and rewrites this file and would show it; keep secrets in an env_file or as ${VAR} "
            "from the .env beside it. Nothing was changed"
        )


def read_service(file: str, service: str) -> dict:
    """The ComposeService fact for ``file``/``service``; refusals for what makes compose mode
    impossible (no tool, no file) or unsafe (a literal secret in the file)."""
    fact = host.get_fact(ComposeService, path=file, service=service)
    if fact is None:
        if docker.host_failed():
            raise docker.HostFailed()
        raise OperationError("the docker CLI is not installed on this host")
    refuse_literal_secrets(file, "compose file", fact.get("secret_lines") or [])
    return fact


def log_change(change: ComposeChange, file_diff: str, container_lines: list[str]) -> None:
    """The plan: the file's unified diff and the container's changes. With ``--diff`` the file's
    diff is printed as pyinfra's files.put prints its own (the file is written, applied and rolled
    back at execution, so it cannot go through files.put itself)."""
    lines = []
    if change.file_changed and diff_enabled():
        lines.append(f"{change.file} (service {change.service}): the diff below")
    elif change.file_changed:
        lines.append(f"{change.file} (service {change.service}):\n{file_diff.rstrip()}")
    if container_lines:
        lines.append(
            f"container {change.spec.name}:\n" + "\n".join(f"    {line}" for line in container_lines)
        )
    how = "recreate through compose" if change.file_changed else "force-recreate through compose"
    say(host, f"{how}, service {change.service}:\n" + "\n".join(lines))
    if change.file_changed:
        show_diff(change.file, change.old_text, change.new_text)
