"""
The backend's uvicorn ``--reload`` fix, as text and specs: the reload arguments, the Dockerfile
and compose patches (each idempotent: patching the result again changes nothing), and the
running container as it should be.

The incident: on WSL bind mounts watchfiles' native watcher fails with
``_rust_notify.WatchfilesRustInternalError: error in underlying watcher: Input/output error (os
error 5)``. ``--reload-delay 2`` alone does not make watchfiles poll; ``WATCHFILES_FORCE_POLLING=true``
does. Pure: no host is read here.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import replace

from tasks.core.compose import ComposeError, ServicePatch, patch_compose_service_with
from tasks.core.container_spec import (
    MANAGED_ENV_LABEL,
    ContainerSpec,
    image_defaults_from_inspect,
    spec_from_inspect,
)

POLLING_ENV = "WATCHFILES_FORCE_POLLING"
# A shell-form CMD using any of these needs a shell: it cannot become a JSON array by itself.
_SHELL_CHARS = re.compile(r"[$`|&;<>(){}*?\\]")


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
            return argv[: i + 1] + [wanted] + argv[i + 2 :]
        if arg.startswith("--reload-delay="):
            return argv[:i] + [f"--reload-delay={wanted}"] + argv[i + 1 :]
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
            out.append((match["op"].upper(), start, pos, body[match.end() :].strip()))
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
            raise ValueError(
                f"CMD {body!r} is in shell form and uses the shell: rewrite it in "
                "JSON-array form by hand; nothing was changed"
            )
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


def patch_compose_backend(
    yaml_text: str,
    service: str,
    delay: float,
    force_polling: bool,
    command_if_missing: list[str] | None = None,
) -> tuple[str, bool]:
    """Return ``(text, changed)``: the service's ``environment`` with WATCHFILES_FORCE_POLLING,
    its ``command`` with the reload arguments (set to ``command_if_missing`` when it has none and
    one is given). The file is patched round trip (tasks/core/compose.py): comments, anchors and
    the rest of the file kept. Unchanged text is returned byte for byte. Raises ComposeError."""

    def make_patch(view: dict) -> ServicePatch:
        current = view.get("command")
        command = None
        if current is not None:
            try:
                argv = shlex.split(current) if isinstance(current, str) else [str(a) for a in current]
            except ValueError as exc:
                raise ComposeError(f"service {service!r}: command {current!r} does not parse: {exc}") from exc
            command = tuple(reload_args(argv, delay))
        elif command_if_missing:
            command = tuple(reload_args(command_if_missing, delay))
        environment = {POLLING_ENV: "true"} if force_polling else {}
        return ServicePatch(command=command, environment=environment)

    text, changed = patch_compose_service_with(yaml_text, service, make_patch)
    return text, bool(changed)


def desired_container(
    inspect: Mapping,
    image_inspect: Mapping | None,
    reload_delay: float,
    force_polling: bool,
    is_secret: Callable[[str], bool],
) -> ContainerSpec:
    """The running backend as it should be: same everything, plus the polling env and the
    reload arguments. Env and labels the image brings are left to the image. ``is_secret``
    names the env keys whose values a plan must mask."""
    actual = spec_from_inspect(inspect)
    image = image_defaults_from_inspect(image_inspect) if image_inspect else None
    image_env = image.env if image else {}
    image_labels = image.labels if image else {}
    env = {k: v for k, v in actual.env.items() if image_env.get(k) != v}
    if force_polling:
        env[POLLING_ENV] = "true"
    labels = {k: v for k, v in actual.labels.items() if k != MANAGED_ENV_LABEL and image_labels.get(k) != v}
    entrypoint = actual.entrypoint
    if image is not None and entrypoint == image.entrypoint:
        entrypoint = None
    return replace(
        actual,
        command=tuple(reload_args(actual.command, reload_delay)),
        entrypoint=entrypoint,
        env=env,
        labels=labels,
        memory_swap=None,
        secret_env_keys=frozenset(k for k in env if is_secret(k)),
        image_id=None,
        managed_env_keys=frozenset(),
    )
