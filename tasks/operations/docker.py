"""Drift-aware Docker containers: an operation doing the least (the facts: tasks/facts/docker.py).

pyinfra's own `docker.container` never notices drift (upstream #1561). Ours compares the desired
spec with what runs and then does nothing, `docker update` in place, or recreates: the previous
container is renamed and stopped, the new one started and verified, and on failure the previous
one is put back under its name, running. The new container is made from the old one's inspected
configuration, changed only in managed fields (tasks/core/create_body.py), and created through the
engine's unix socket, so nothing the deploy does not manage is lost; `docker run` only makes a
container that did not exist. Verification starts by reading the container again and diffing it
against the spec, so every managed setting is proven applied. Everything goes through the `docker`
CLI (curl or python3 for the create) on the target, so it works over any connector.

The plan reads the container through the filtered fact (secret env values as digests); the
recreate reads it again in full at execution time, unprinted, by the id the plan saw, and refuses
when it or the image changed meanwhile.

A crash at any step converges on the next run, which reads the progress from the host: only a
recreate names a container ``<name>-previous``, and only until it keeps or rolls back. A
``-previous`` copy alone is the user's container set aside (running or stopped): the new one is
made from it. With the container beside it, that container is the recreate's unverified new one:
running and matching the settings, it is verified, then kept (the copy goes) or rolled back;
otherwise (never started, created half-way, stopped, or no longer what the settings say) it is
removed and made again from the copy. The plan says what it found, under ``--dry`` too. Fault
points (tasks/operations/faults.py) let tests kill the controller at each step.

Long because a recreate is one sequence (read again, refuse, rename, create, verify, keep or roll
back) whose steps a reader must check against each other.
"""

from __future__ import annotations

import functools
import json
import shlex
import time
from collections.abc import Callable, Iterable

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand

from tasks.checks.runner import CheckResult, format_table
from tasks.core.container_spec import (
    ContainerSpec,
    Plan,
    diff_spec,
    docker_run_args,
    docker_update_args,
    env_file_text,
    format_plan,
    image_defaults_from_inspect,
    spec_from_inspect,
)
from tasks.core.create_body import (
    ENGINE_COMMAND,
    CreateBodyError,
    CreateRequest,
    Engine,
    create_command,
    create_request,
    created_id,
    image_changed,
    network_connect_args,
    parse_engine,
)
from tasks.facts.docker import PREVIOUS_SUFFIX, ContainerInspect
from tasks.operations import runner
from tasks.operations.faults import fault_point
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import operation

STOP_GRACE_SECONDS = 5


def run_now(target, command: str) -> tuple[bool, str]:
    """Run a command on the host now (inside an operation's callback, with its connector
    arguments: tasks/operations/runner.py): stdout when it worked, stdout and stderr when not."""
    return runner.run_now(target, command)


def _must(target, command: str, what: str) -> str:
    ok, out = run_now(target, command)
    if not ok:
        raise OperationError(f"{what} failed: {out.strip()[:300]}")
    return out


def _start_new(target, spec: ContainerSpec):
    """`docker run` with env values in a 0600 file in a private temp dir, removed right after."""
    if not spec.env:
        _must(target, shlex.join(docker_run_args(spec, None)), f"docker run {spec.name}")
        return
    try:
        folder = runner.upload_private(target, {"env": env_file_text(spec)}, "quantlab-env")
    except runner.PrivateUploadError as exc:
        raise OperationError(f"the env file for {spec.name}: {exc}") from exc
    try:
        _must(target, shlex.join(docker_run_args(spec, f"{folder}/env")), f"docker run {spec.name}")
    finally:
        runner.remove_private(target, folder)


def _create_request(target, spec: ContainerSpec, base: dict, image: dict) -> CreateRequest:
    """The create request from ``base`` (the inspected old container), read before any change:
    the old image's defaults when the image changes (one `docker image inspect`)."""
    old_image = None
    if image_changed(base, image):
        ok, out = run_now(target, f"docker image inspect {shlex.quote(str(base.get('Image')))}")
        if ok:
            old_image = json.loads(out)
        elif "No such image" not in out:
            raise OperationError(f"reading the image of {spec.name} failed: {out.strip()[:300]}")
    try:
        return create_request(base, spec, old_image, image)
    except CreateBodyError as exc:
        raise OperationError(f"{spec.name}: {exc}; nothing was changed") from exc


def _engine(target) -> Engine:
    """The engine's unix socket and a client to POST to it (before any change: a host that has
    neither, or reaches its engine over tcp/ssh, is refused with nothing changed)."""
    ok, out = run_now(target, ENGINE_COMMAND)
    if not ok:
        raise OperationError(out.strip()[:400] or "looking for the engine's unix socket failed")
    try:
        return parse_engine(out)
    except CreateBodyError as exc:
        raise OperationError(str(exc)) from exc


def _create_from(target, request: CreateRequest, engine: Engine):
    """Create the container through the engine API (the body, env values included, in a 0600 file
    in a private temp dir, removed right after), connect its other networks, start it."""
    name = request.name
    try:
        folder = runner.upload_private(target, {"body.json": request.body_json()}, "quantlab-create")
    except runner.PrivateUploadError as exc:
        raise OperationError(f"the create request for {name}: {exc}") from exc
    try:
        answer = _must(
            target,
            create_command(engine, f"{folder}/body.json", f"{folder}/answer.json", name),
            f"creating {name}",
        )
    finally:
        runner.remove_private(target, folder)
    _, warnings = created_id(answer)
    for warning in warnings:
        logger.warning(f"{target.print_prefix}{name}: the engine warns: {warning}")
    fault_point("recreate.after-create")
    for endpoint in request.extra_networks:
        _must(
            target,
            shlex.join(network_connect_args(endpoint, name)),
            f"connecting {name} to network {endpoint.network}",
        )
    _must(target, f"docker start {shlex.quote(name)}", f"starting {name}")


Verifier = Callable[[Callable[[str], tuple[bool, str]]], list[CheckResult]]


def plan_from_facts(spec: ContainerSpec, facts: dict) -> Plan:
    """The plan for ``spec`` against a ContainerInspect result (pure: no remote command)."""
    image = image_defaults_from_inspect(facts["image"]) if facts["image"] else None
    actual = spec_from_inspect(facts["container"]) if facts["container"] else None
    return diff_spec(spec, actual, image)


def secret_keys_arg(keys: Iterable[str]) -> str:
    """ContainerInspect's ``secret_keys``: the env keys it must digest whatever their names."""
    return ",".join(sorted(keys))


def applied_settings(target, spec: ContainerSpec) -> CheckResult:
    """Re-read the container (one remote command) and diff it against ``spec``: every managed
    setting is proven applied (memory, command, env, ports ...), not only those a check probes."""
    check = CheckResult(f"{spec.name} has every managed setting", spec.name, "fail", attempts=1)
    fact = ContainerInspect()
    ok, out = run_now(target, fact.command(spec.name, spec.image, secret_keys_arg(spec.secret_env_keys)))
    if not ok:
        check.evidence = f"docker inspect failed: {out.strip()[:300]}"
        return check
    plan = plan_from_facts(spec, fact.process(out.splitlines()))
    if plan.action == "create":
        check.evidence = f"container {spec.name} does not exist"
    elif plan.changed:
        check.evidence = "differs (actual -> wanted): " + "; ".join(format_plan(plan))
    else:
        check.status, check.evidence = "pass", "docker inspect matches the settings"
    return check


def _verify(target, spec: ContainerSpec, verify: Verifier | None) -> list[CheckResult]:
    """The applied settings first; the caller's checks only when they are (they take time)."""
    results = [applied_settings(target, spec)]
    if results[0].passed and verify is not None:
        results += verify(lambda command: run_now(target, command))
    say(target, "verification:\n" + format_table(results), record=False)
    record_checks(target, results)
    return results


def _fail(host, message: str) -> bool:
    """Report a failed step without a traceback (every line prefixed with the host's name);
    False makes pyinfra count the operation failed."""
    say(host, message, log_func=logger.error, record=False, fg="red")
    return False


def _reported(step):
    """A callback's OperationError becomes a clean red line and a failed operation."""

    @functools.wraps(step)
    def run(state, host, *args, **kwargs):
        try:
            return step(state, host, *args, **kwargs)
        except OperationError as exc:
            return _fail(host, str(exc))

    return run


RESTORED_WATCH_SECONDS = 8
_pause = time.sleep  # the ops tests replace it: their recorded answers need no waiting


def _restored_state(host, name: str) -> str:
    """Whether the restored container stays up for a few seconds (it may have been broken too)."""
    for _ in range(RESTORED_WATCH_SECONDS):
        ok, out = run_now(
            host,
            "docker inspect --type container -f "
            f"'{{{{.State.Status}}}} {{{{.State.Restarting}}}} {{{{.State.ExitCode}}}}' "
            f"{shlex.quote(name)}",
        )
        status, restarting, code = (out.split() + ["?", "?", "?"])[:3]
        if not ok or status != "running" or restarting == "true":
            return f", but it is not staying up (state {status}, exit code {code})"
        _pause(1)
    return ", and it is running"


def _keep_or_roll_back(
    host, spec: ContainerSpec, have_backup: bool, verify: Verifier | None, reasons: list[str] | None = None
) -> bool:
    """Verify the new container; keep it (the previous copy goes) or put the previous one back."""
    name, previous = spec.name, spec.name + PREVIOUS_SUFFIX
    q_name, q_prev = shlex.quote(name), shlex.quote(previous)
    if reasons is None:
        reasons = [f"{r.name}: {r.evidence}" for r in _verify(host, spec, verify) if not r.passed]
    if not reasons:
        if have_backup:
            run_now(host, f"docker rm -f {q_prev}")
        return True
    # Roll back: keep the failed container's last lines as evidence, then restore the previous one.
    tail, restored = "", "no previous container to restore"
    by_hand = f"`docker rm -f {q_name}; docker rename {q_prev} {q_name}; docker start {q_name}` puts it back"
    step = "reading the failed container's logs"
    try:
        _, tail = run_now(host, f"docker logs --tail 15 {q_name} 2>&1")
        step = f"removing the new {name}"
        run_now(host, f"docker rm -f {q_name}")
        fault_point("recreate.rollback")
        if have_backup:
            step = f"renaming {previous} back to {name}"
            ok, out = run_now(host, f"docker rename {q_prev} {q_name}")
            if not ok:
                restored = (
                    f"the previous container could NOT be put back ({out.strip()[:200]}): it is still "
                    f"there as {previous}, stopped; {by_hand}"
                )
            else:
                step = f"starting {name}"
                ok, out = run_now(host, f"docker start {q_name}")
                restored = (
                    "previous container restored and started"
                    if ok
                    else f"previous container restored but did not start: {out.strip()}"
                )
                if ok:
                    restored += _restored_state(host, name)
    except Exception as exc:
        # Said exactly: which step the rollback reached, and how to finish it by hand.
        restored = (
            f"the rollback stopped while {step} ({_reason(exc)}); the previous container may still be "
            f"{previous}, stopped: {by_hand}"
            if have_backup
            else f"the rollback stopped while {step} ({_reason(exc)})"
        )
    return _fail(
        host,
        f"{name}: the new container failed verification; {restored}.\nReasons:\n  "
        + "\n  ".join(reasons)
        + ("\nLast log lines of the failed container:\n" + tail.strip() if tail.strip() else ""),
    )


FULL_MARK = "### quantlab image in full"


def full_read_command(container_id: str, image: str) -> str:
    """`docker inspect` of a container (by id) and an image, unfiltered: run only unprinted."""
    return (
        f"docker container inspect {shlex.quote(container_id)} && echo {shlex.quote(FULL_MARK)} && "
        f"docker image inspect {shlex.quote(image)}"
    )


def _read_full(target, spec: ContainerSpec, base_id: str, image_id: str) -> tuple[dict, dict]:
    """The container the new one is made from and ``spec.image``, read in full (env values
    included) at execution time and never printed: the plan's fact had secrets as digests. The
    container is asked by its id, so another one under the same name is not taken for it; the
    image must still be the one the plan saw."""
    command = StringCommand(full_read_command(base_id, spec.image))
    ok, output = runner.run(target, command)
    if not ok:  # stderr only: stdout may hold what was read before the failure
        raise OperationError(
            f"reading {spec.name} again before the recreate failed (was it removed or replaced since "
            f"the plan?): {output.stderr.strip()[:300]}; nothing was changed"
        )
    container_text, _, image_text = output.stdout.partition(FULL_MARK)
    try:
        container, image = json.loads(container_text)[0], json.loads(image_text)[0]
    except (ValueError, IndexError):
        raise OperationError(f"unreadable docker inspect of {spec.name}; nothing was changed") from None
    if image.get("Id") != image_id:
        raise OperationError(
            f"image {spec.image} now names another image than when the plan was made; nothing was "
            "changed: run the deploy again"
        )
    return container, image


@_reported
def _recreate(
    state,
    host,
    spec: ContainerSpec,
    had_current: bool,
    verify: Verifier | None,
    base_id: str | None = None,
    image_id: str | None = None,
    discard_current: bool = False,
):
    """``base_id``: the container the new one is made from (the current container, or the
    previous copy an interrupted run left), read again here in full; None: nothing to keep,
    ``docker run`` from the spec. ``image_id``: the id of ``spec.image`` when the plan was made.
    ``discard_current``: the container under ``spec.name`` is an interrupted recreate's unverified
    new one, removed before the previous copy is made into a new one."""
    name, previous = spec.name, spec.name + PREVIOUS_SUFFIX
    q_name, q_prev = shlex.quote(name), shlex.quote(previous)
    # Everything that can refuse runs before the first change.
    request, engine = None, None
    if base_id is not None and image_id is not None:
        base, image = _read_full(host, spec, base_id, image_id)
        request = _create_request(host, spec, base, image)
        engine = _engine(host)
    # An interrupted earlier run may have left a previous copy. If the current container exists,
    # that copy is stale; if it does not, that copy is the only one and becomes our backup.
    if discard_current:
        _must(host, f"docker rm -f {q_name}", f"removing the unverified {name}")
    if had_current:
        run_now(host, f"docker rm -f {q_prev}")
        _must(host, f"docker rename {q_name} {q_prev}", f"renaming {name}")
        fault_point("recreate.after-rename")
    have_backup = run_now(host, f"docker inspect --type container {q_prev} >/dev/null 2>&1")[0]
    if have_backup:
        # A short grace period: `mlflow server` as PID 1 has no SIGTERM handler, so a container
        # without an init waits all of it out before the kill (measured in bench/: the full 20 s
        # it was). Under Docker's init (mlflow.init, HostConfig.Init) the server gets the SIGTERM
        # and the stop takes a fraction of a second: only a container's first recreate, the one
        # that gives it the init, still waits the grace out.
        _must(host, f"docker stop -t {STOP_GRACE_SECONDS} {q_prev}", f"stopping {previous}")
        fault_point("recreate.after-stop")
    # From here the previous container is down: any failure, not only a refusal (a lost SFTP
    # channel, a bug), must end with it back under its name and running.
    try:
        if request is not None and engine is not None:
            _create_from(host, request, engine)
        else:
            _start_new(host, spec)
        fault_point("recreate.after-start")
    except Exception as exc:
        return _keep_or_roll_back(host, spec, have_backup, verify, reasons=[_reason(exc)])
    try:
        checked = _with_fault(verify, "recreate.verify")
        reasons = [f"{r.name}: {r.evidence}" for r in _verify(host, spec, checked) if not r.passed]
    except Exception as exc:
        reasons = [f"verification could not finish: {_reason(exc)}"]
    return _keep_or_roll_back(host, spec, have_backup, verify, reasons=reasons)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, OperationError) else f"{type(exc).__name__}: {exc}"


def _with_fault(verify: Verifier | None, step: str) -> Verifier | None:
    """``verify`` with a fault point first (after the settings were read back)."""
    if verify is None:
        return None

    def checked(run):
        fault_point(step)
        return verify(run)

    return checked


@_reported
def _finish(state, host, spec: ContainerSpec, verify: Verifier | None):
    """An earlier run stopped between starting the new container and keeping it: the container
    runs and matches the settings, and its previous copy is still there. Verify it, then keep it
    (the copy goes) or put the copy back, as that run would have. The copy is stopped first: a
    host that restarted brings back a container whose restart policy is ``always``, stopped or not."""
    _must(
        host,
        f"docker stop -t {STOP_GRACE_SECONDS} {shlex.quote(spec.name + PREVIOUS_SUFFIX)}",
        f"stopping {spec.name}{PREVIOUS_SUFFIX}",
    )
    return _keep_or_roll_back(host, spec, True, verify)


@_reported
def _update(state, host, spec: ContainerSpec, verify: Verifier | None):
    _must(host, shlex.join(docker_update_args(spec)), f"docker update {spec.name}")
    failed = [r for r in _verify(host, spec, verify) if not r.passed]
    if failed:
        return _fail(
            host,
            f"{spec.name}: updated in place but verification failed: "
            + "; ".join(f"{r.name}: {r.evidence}" for r in failed),
        )
    return True


class HostFailed(Exception):
    """A fact could not be read because this host already failed (connection lost, command
    error): pyinfra has marked it failed; the operation stops quietly so other hosts go on."""


def host_failed() -> bool:
    return host in host.state.failed_hosts


def inspect_facts(container: str, image: str, secret_keys: Iterable[str] = ()) -> dict:
    """The ContainerInspect fact: secret env values as digests (``secret_keys`` are digested
    whatever their names), URL passwords masked."""
    facts = host.get_fact(
        ContainerInspect, container=container, image=image, secret_keys=secret_keys_arg(secret_keys)
    )
    if facts is None:
        if host_failed():
            raise HostFailed()
        raise OperationError("the docker CLI is not installed on this host")
    return facts


def plan_container(spec: ContainerSpec, facts: dict | None = None) -> Plan:
    """The plan for ``spec``; ``facts`` is a ContainerInspect result the caller already read in
    this same generator run (each read is one remote command), else it is read here."""
    if facts is None:
        facts = inspect_facts(spec.name, spec.image, spec.secret_env_keys)
    return plan_from_facts(spec, facts)


@operation()
def container(spec: ContainerSpec, verify: Verifier | None = None, facts: dict | None = None):
    """
    Make a container match ``spec``: nothing, ``docker update`` in place, or a verified recreate.
    After a change the container is read again and diffed against ``spec`` (every managed
    setting must be applied), then ``verify`` runs; a recreate that fails either is rolled back
    to the previous container.

    + spec: the desired ``ContainerSpec`` (tasks.core.container_spec)
    + verify: called with ``run(command) -> (ok, output)`` after a change; returns CheckResults.
    + facts: the ``ContainerInspect`` fact for this spec when the caller has just read it

    **Example:**

    .. code:: python

        from tasks.operations import docker
        docker.container(
            name="MLflow tracking server",
            spec=ContainerSpec(name="quant-mlflow", image="quantlab/mlflow2:f87237c5f75c",
                               memory=1 << 30, restart_policy="unless-stopped"),
        )
    """
    try:
        facts = facts if facts is not None else inspect_facts(spec.name, spec.image, spec.secret_env_keys)
    except HostFailed:
        return
    plan = plan_from_facts(spec, facts)
    if facts["previous"] is not None:
        yield from _resume(spec, verify, facts, plan)
        return
    if not plan.changed:
        host.noop(f"container {spec.name} matches the settings")
        return
    say(host, f"{plan.action} {spec.name}:\n" + "\n".join(f"    {line}" for line in format_plan(plan)))
    if plan.action == "update":
        yield FunctionCommand(_update, (spec, verify), {})
        return
    # The new container is made from the current one, or from the copy an interrupted run set
    # aside (the user's original); only with neither is it made from the spec alone.
    base = facts["container"] or facts["previous"]
    if base is not None and facts["image"] is None:
        raise OperationError(
            f"image {spec.image} is not on this host: pull or build it first "
            f"(`docker pull {spec.image}`); nothing was changed"
        )
    yield FunctionCommand(
        _recreate,
        (spec, plan.action == "recreate", verify),
        {
            "base_id": base["Id"] if base is not None else None,
            "image_id": facts["image"]["Id"] if base is not None else None,
        },
    )


def running(inspected: dict) -> bool:
    state = inspected.get("State") or {}
    return bool(state.get("Running")) and not state.get("Restarting")


def state_words(inspected: dict) -> str:
    """A container's state as the plan says it: running, created and never started, exited ..."""
    state = inspected.get("State") or {}
    status = state.get("Status") or "unknown"
    if status == "created":
        return "created, never started"
    if status == "exited":
        return f"stopped, exit code {state.get('ExitCode', '?')}"
    return status


def _resume(spec: ContainerSpec, verify: Verifier | None, facts: dict, plan: Plan):
    """A ``-previous`` copy is there: a recreate did not finish (the controller died, the host
    restarted). Say what was found, then finish that recreate or make it again."""
    name, previous = spec.name, spec.name + PREVIOUS_SUFFIX
    current, kept = facts["container"], facts["previous"]
    if current is not None and not plan.changed and running(current):
        say(
            host,
            f"found {name} running and matching the settings, and {previous} "
            f"({state_words(kept)}) left by a recreate that did not finish: verify {name}, then "
            f"remove {previous}, or put it back when {name} fails",
        )
        yield FunctionCommand(_finish, (spec, verify), {})
        return
    if current is None:
        found = (
            f"found {previous} ({state_words(kept)}) and no {name}: a recreate stopped after setting "
            f"the container aside; make {name} from {previous}"
        )
    else:
        why = "does not match the settings" if plan.changed else state_words(current)
        found = (
            f"found {name} ({why}), the unverified new container of a recreate that did not "
            f"finish, and {previous} ({state_words(kept)}), the one it replaced: remove {name} and "
            f"make it again from {previous}"
        )
    if facts["image"] is None:
        raise OperationError(
            f"{found}; but image {spec.image} is not on this host: pull or build it first "
            f"(`docker pull {spec.image}`); nothing was changed"
        )
    changes = format_plan(plan_from_facts(spec, {**facts, "container": kept}))
    say(
        host,
        f"{found}:\n"
        + ("\n".join(f"    {line}" for line in changes) or f"    ({previous} already matches the settings)"),
    )
    yield FunctionCommand(
        _recreate,
        (spec, False, verify),
        {"base_id": kept["Id"], "image_id": facts["image"]["Id"], "discard_current": current is not None},
    )
