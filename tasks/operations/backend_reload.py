"""
The backend's uvicorn ``--reload`` fix, as a packaged deploy (deploys/fix_backend_reload.py).

The incident: on WSL bind mounts watchfiles' native watcher fails with
``_rust_notify.WatchfilesRustInternalError: error in underlying watcher: Input/output error (os
error 5)``. The seed added ``--reload-delay 2`` to the Dockerfile CMD; that alone does not make
watchfiles poll, ``WATCHFILES_FORCE_POLLING=true`` does. This deploy, idempotently:

- patches the backend Dockerfile (host data ``backend.dockerfile``, optional): CMD in JSON-array
  form with ``--reload-delay N`` added once after ``--reload``, and ``ENV WATCHFILES_FORCE_POLLING=true``;
- patches the compose service (``backend.compose_file`` / ``compose_service``, optional):
  ``environment: WATCHFILES_FORCE_POLLING`` and the reload arguments in its ``command``;
- brings the running container to the same (env + command), through tasks.operations.docker's drift-aware
  container operation: recreated only when it differs, verified, rolled back on failure.

The image is not rebuilt (the Dockerfile's build context may not be on the host); the container
gets the command explicitly and the next build carries the patched CMD. Only the files the host
data names are touched. Host data (defaults in group_data ``backend_defaults``)::

    backend = {"container": "quant-backend", "dockerfile": "/srv/quant/backend/Dockerfile",
               "compose_file": "/srv/quant/docker-compose-ml.yml", "compose_service": "backend",
               "reload_delay": 2, "force_polling": True, "port": 8000, "health_path": "/health"}
"""
from __future__ import annotations

import io
import json
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any, Mapping

import yaml
from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import FileContents

from tasks.facts.docker import ContainerInspect
from tasks.operations import docker
from tasks.checks.runner import Broken, CheckResult, NotYet, RetryPolicy, run_checks
from tasks.core.compose import ComposeError, merge_environment, same_command
from tasks.core.container_spec import (MANAGED_ENV_LABEL, ContainerSpec, image_defaults_from_inspect,
                                  spec_from_inspect)
from tasks.checks.mlflow import container_state

POLLING_ENV = "WATCHFILES_FORCE_POLLING"
WATCHFILES_ERROR = "WatchfilesRustInternalError"
KEYS = ("container", "dockerfile", "compose_file", "compose_service", "reload_delay",
        "force_polling", "port", "health_path")
HEADER = "# Managed in part by deploys/fix_mlflow.py and deploys/fix_backend_reload.py.\n"
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.I)
_SHELL_CHARS = re.compile(r"[$`|&;<>(){}*?\\]")


class BackendSettingsError(PyinfraError, ValueError):
    def __init__(self, host_name: str, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': backend.{p}" for p in problems))


@dataclass(frozen=True)
class BackendSettings:
    container: str
    dockerfile: str | None = None
    compose_file: str | None = None
    compose_service: str = "backend"
    reload_delay: float = 2
    force_polling: bool = True
    port: int = 8000
    health_path: str = "/health"


def backend_settings(host_name: str, data: Any) -> BackendSettings:
    """Group ``backend_defaults`` overridden key by key by the host's ``backend`` mapping."""
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    merged = {**(get("backend_defaults") or {}), **(get("backend") or {})}
    problems = [f"{k}: unknown key (known: {', '.join(KEYS)})" for k in sorted(set(merged) - set(KEYS))]
    if not isinstance(merged.get("container"), str) or not merged.get("container"):
        problems.append("container: missing (the backend container's name)")
    for key in ("dockerfile", "compose_file"):
        if merged.get(key) is not None and (not isinstance(merged[key], str) or not merged[key].startswith("/")):
            problems.append(f"{key}: must be an absolute path on the host")
    delay = merged.get("reload_delay", 2)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 < delay <= 60:
        problems.append(f"reload_delay: {delay!r} must be a number of seconds in (0, 60]")
    if not isinstance(merged.get("force_polling", True), bool):
        problems.append("force_polling: must be true or false")
    port = merged.get("port", 8000)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"port: {port!r} is not a port")
    if problems:
        raise BackendSettingsError(host_name, problems)
    return BackendSettings(**{k: merged[k] for k in KEYS if k in merged})


# -- pure patches ---------------------------------------------------------------------------------


def _delay_text(delay: float) -> str:
    return str(int(delay)) if float(delay).is_integer() else str(delay)


def reload_args(argv: list[str] | tuple[str, ...], delay: float) -> list[str]:
    """``--reload-delay <delay>`` right after ``--reload``, once; an existing delay is set to it.
    A command without ``--reload`` is returned as is (no watcher, nothing to fix)."""
    argv = [str(a) for a in argv]
    if "--reload" not in argv:
        return argv
    wanted = _delay_text(delay)
    for i, arg in enumerate(argv):
        if arg == "--reload-delay" and i + 1 < len(argv):
            return argv[:i + 1] + [wanted] + argv[i + 2:]
        if arg.startswith("--reload-delay="):
            return argv[:i] + [f"--reload-delay={wanted}"] + argv[i + 1:]
    at = argv.index("--reload") + 1
    return argv[:at] + ["--reload-delay", wanted] + argv[at:]


_INSTRUCTION = re.compile(r"^\s*(?P<op>[A-Za-z]+)\s+", re.M)


def _instructions(text: str) -> list[tuple[str, int, int, str]]:
    """(op, start, end, body) for each instruction, continuation lines joined; comments skipped."""
    lines = text.splitlines(keepends=True)
    out, i, pos = [], 0, 0
    while i < len(lines):
        start = pos
        line = lines[i]
        pos += len(line)
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body = line
        while body.rstrip("\r\n").endswith("\\") and i < len(lines):
            body = body.rstrip("\r\n")[:-1] + " " + lines[i]
            pos += len(lines[i])
            i += 1
        match = _INSTRUCTION.match(body)
        if match:
            out.append((match["op"].upper(), start, pos, body[match.end():].strip()))
    return out


def patch_dockerfile(text: str, delay: float, force_polling: bool = True) -> tuple[str, bool]:
    """Return ``(text, changed)``: the last CMD in JSON-array form with the reload arguments,
    and ``ENV WATCHFILES_FORCE_POLLING=true`` before it. Patching the result again changes nothing.
    Raises ValueError for a Dockerfile without CMD or a shell-form CMD that needs a shell."""
    cmds = [ins for ins in _instructions(text) if ins[0] == "CMD"]
    if not cmds:
        raise ValueError("the Dockerfile has no CMD instruction")
    _, start, end, body = cmds[-1]
    if body.startswith("["):
        try:
            argv = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"CMD {body!r} is not a valid JSON array: {exc.msg}") from exc
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"CMD {body!r} is not a JSON array of strings")
        exec_form = True
    else:
        if _SHELL_CHARS.search(body):
            raise ValueError(f"CMD {body!r} is in shell form and uses the shell: rewrite it in "
                             "JSON-array form by hand; nothing was changed")
        argv, exec_form = shlex.split(body), False
    new_argv = reload_args(argv, delay)
    new_text = text
    if new_argv != argv or not exec_form:
        line = "CMD " + json.dumps(new_argv) + "\n"
        new_text = text[:start] + line + text[end:]
    if force_polling:
        envs = [ins for ins in _instructions(new_text) if ins[0] == "ENV" and POLLING_ENV in ins[3]]
        wanted = f"ENV {POLLING_ENV}=true\n"
        if not envs:
            cmd_start = [ins for ins in _instructions(new_text) if ins[0] == "CMD"][-1][1]
            new_text = new_text[:cmd_start] + wanted + new_text[cmd_start:]
        else:
            _, e_start, e_end, e_body = envs[-1]
            value = re.fullmatch(POLLING_ENV + r"(?:=|\s+)(\S+)", e_body.strip())
            if value and value[1].strip("\"'").lower() != "true":
                new_text = new_text[:e_start] + wanted + new_text[e_end:]
    return new_text, new_text != text


def patch_compose_backend(yaml_text: str, service: str, delay: float, force_polling: bool,
                          command_if_missing: list[str] | None = None) -> tuple[str, bool]:
    """Return ``(text, changed)``: the service's ``environment`` with WATCHFILES_FORCE_POLLING,
    its ``command`` with the reload arguments (set to ``command_if_missing`` when it has none and
    one is given). Unchanged text is returned byte for byte. Raises ComposeError."""
    try:
        doc = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        raise ComposeError(f"compose file is not valid YAML: {exc}") from exc
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not isinstance(services.get(service), dict):
        known = ", ".join(map(str, services or {})) or "none"
        raise ComposeError(f"service {service!r} is not in the compose file (services: {known})")
    svc = services[service]
    changed = False
    current = svc.get("command")
    if current is not None:
        argv = shlex.split(current) if isinstance(current, str) else [str(a) for a in current]
        wanted = reload_args(argv, delay)
        if not same_command(current, wanted):
            svc["command"] = wanted
            changed = True
    elif command_if_missing:
        svc["command"] = reload_args(command_if_missing, delay)
        changed = True
    if force_polling:
        env, env_changed = merge_environment(svc.get("environment"), {POLLING_ENV: "true"})
        if env_changed:
            svc["environment"] = env
            changed = True
    if not changed:
        return yaml_text, False
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return HEADER + body.removeprefix(HEADER), True


def desired_container(inspect: Mapping, image_inspect: Mapping | None,
                      settings: BackendSettings) -> ContainerSpec:
    """The running backend as it should be: same everything, plus the polling env and the
    reload arguments. Env and labels the image brings are left to the image."""
    actual = spec_from_inspect(inspect)
    image = image_defaults_from_inspect(image_inspect) if image_inspect else None
    image_env = image.env if image else {}
    image_labels = image.labels if image else {}
    env = {k: v for k, v in actual.env.items() if image_env.get(k) != v}
    if settings.force_polling:
        env[POLLING_ENV] = "true"
    labels = {k: v for k, v in actual.labels.items()
              if k != MANAGED_ENV_LABEL and image_labels.get(k) != v}
    entrypoint = actual.entrypoint
    if image is not None and entrypoint == image.entrypoint:
        entrypoint = None
    return replace(actual, command=tuple(reload_args(actual.command, settings.reload_delay)),
                   entrypoint=entrypoint, env=env, labels=labels, memory_swap=None,
                   secret_env_keys=frozenset(k for k in env if _SECRET_KEY.search(k)),
                   image_id=None, managed_env_keys=frozenset())


# -- verification ------------------------------------------------------------------------------------


def verify_backend(run, name: str, port: int, health_path: str) -> list[CheckResult]:
    """Running, answering its health path from inside the container, and no watchfiles error
    since it started."""
    def running():
        state = container_state(run, name)
        if state.get("OOMKilled") or state.get("Restarting") or state.get("Status") in ("exited", "dead"):
            raise Broken(f"{state.get('Status')}, exit code {state.get('ExitCode')}")
        if state.get("Status") != "running":
            raise NotYet(f"state {state.get('Status')}")
        return f"running since {state.get('StartedAt', '?')[:19]}"

    url = f"http://127.0.0.1:{port}{health_path}"
    fetch = (f"curl -fsS --max-time 5 {shlex.quote(url)} 2>&1 || python3 -c "
             + shlex.quote(f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"))

    def health():
        running()
        ok, out = run(f"docker exec {shlex.quote(name)} sh -c {shlex.quote(fetch)}")
        if not ok:
            raise NotYet(f"GET {health_path}: {out.strip()[-160:]}")
        return f"GET {health_path} -> {out.strip()[:60]}"

    def no_watcher_error():
        state = container_state(run, name)
        ok, out = run(f"docker logs --since {shlex.quote(state.get('StartedAt', ''))} "
                      f"{shlex.quote(name)} 2>&1")
        if not ok:
            raise NotYet(f"docker logs failed: {out.strip()[:120]}")
        bad = [line for line in out.splitlines() if WATCHFILES_ERROR in line]
        if bad:
            raise Broken(f"{len(bad)} watchfiles error line(s) since start: {bad[-1].strip()[:120]}")
        return "no WatchfilesRustInternalError since start"

    quick = RetryPolicy(attempts=5, seconds=15, wait=1.0)
    starting = RetryPolicy(attempts=60, seconds=60, wait=1.0)
    return run_checks([
        ("container is running", name, running, quick),
        (f"{health_path} answers", name, health, starting),
        ("no watchfiles error since start", name, no_watcher_error, quick),
        ("still running after the checks", name, running, quick),
    ])


# -- operations -----------------------------------------------------------------------------------------


def _upload(path: str, text: str):
    yield FileUploadCommand(io.BytesIO(text.encode()), path)


@operation()
def dockerfile(settings: BackendSettings):
    """
    The backend Dockerfile's CMD (JSON array, ``--reload-delay`` once) and polling ENV.

    **Example:**

    .. code:: python

        backend_reload.dockerfile(settings=backend_settings(host.name, host.data))
    """
    lines = host.get_fact(FileContents, path=settings.dockerfile)
    if lines is None:
        raise OperationError(f"Dockerfile {settings.dockerfile} does not exist on this host")
    try:
        text, changed = patch_dockerfile("\n".join(lines) + "\n", settings.reload_delay,
                                         settings.force_polling)
    except ValueError as exc:
        raise OperationError(f"{settings.dockerfile}: {exc}") from exc
    if not changed:
        host.noop(f"{settings.dockerfile}: CMD and polling env already set")
        return
    yield from _upload(settings.dockerfile, text)


@operation()
def compose_service(settings: BackendSettings, command_if_missing: tuple = ()):
    """
    The backend's compose service: polling env and reload arguments.

    **Example:**

    .. code:: python

        backend_reload.compose_service(settings=backend_settings(host.name, host.data))
    """
    lines = host.get_fact(FileContents, path=settings.compose_file)
    if lines is None:
        raise OperationError(f"compose file {settings.compose_file} does not exist on this host")
    try:
        text, changed = patch_compose_backend("\n".join(lines) + "\n", settings.compose_service,
                                              settings.reload_delay, settings.force_polling,
                                              list(command_if_missing) or None)
    except ComposeError as exc:
        raise OperationError(f"{settings.compose_file}: {exc}") from exc
    if not changed:
        host.noop(f"{settings.compose_file}: service {settings.compose_service} already polls")
        return
    yield from _upload(settings.compose_file, text)


def _inspect(settings: BackendSettings) -> tuple[Mapping, Mapping | None]:
    first = host.get_fact(ContainerInspect, container=settings.container, image=settings.container)
    if first is None:
        raise OperationError("docker is not installed on this host")
    if first["container"] is None:
        raise OperationError(f"backend container {settings.container} does not exist on this host")
    image_ref = first["container"]["Config"]["Image"]
    facts = host.get_fact(ContainerInspect, container=settings.container, image=image_ref)
    return facts["container"], facts["image"]


@operation()
def container(settings: BackendSettings):
    """
    The running backend with the polling env and reload arguments: recreated (verified, rolled
    back on failure) only when it differs.

    **Example:**

    .. code:: python

        backend_reload.container(settings=backend_settings(host.name, host.data))
    """
    current, image = _inspect(settings)
    desired = desired_container(current, image, settings)

    def verify(run):
        return verify_backend(run, settings.container, settings.port, settings.health_path)

    yield from docker.container._inner(spec=desired, verify=verify)


@deploy("Fix the backend's uvicorn --reload")
def fix_backend_reload(settings: BackendSettings | None = None):
    settings = settings or backend_settings(host.name, host.data)
    if settings.dockerfile:
        dockerfile(name=f"Backend Dockerfile {settings.dockerfile}", settings=settings)
    if settings.compose_file:
        # Without a Dockerfile to carry the CMD, compose must name the command itself.
        current, _ = _inspect(settings)
        fallback = () if settings.dockerfile else tuple(current["Config"].get("Cmd") or ())
        compose_service(name=f"Compose service {settings.compose_service} in {settings.compose_file}",
                        settings=settings, command_if_missing=fallback)
    container(name=f"Backend container {settings.container}", settings=settings)
