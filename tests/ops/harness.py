"""Operation tests without a host: facts in, commands (or a noop) out, as pyinfra tests its own
operations (pyinfra_testing's FakeState/FakeHost), plus the execution half our operations have:
a FunctionCommand run against a host that answers each command from a recorded script, in order.

Case files are JSON (``tests/ops/<module>.<operation>/*.json``); recorded engine output lives in
``tests/ops/data/`` and is referenced as ``{"recorded": "<file stem>", "set": {"a.b": value}}``
anywhere in a case (``set`` overrides keys by path, ``"HostConfig/Memory"``, ``null`` deletes one),
so each case shows only what differs from what a real engine printed. ContainerInspect answers are
written with env values in clear and handed to the operation as the host's filter returns them
(secret env values as digests, for whatever ``secret_keys`` the operation asks with); a recreate's
``{"full": image, "container": ..., "image": ...}`` step answers its unprinted re-read in full.

    planned = plan(docker.container, facts, spec=spec)       # planning: no host needed
    host = ScriptedHost(case["run"]); ok = execute(planned.commands[0], host)
"""
from __future__ import annotations

import copy
import json
import logging
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from inspect import getcallargs
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.api.util import get_kwargs_str
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

# Not pyinfra_testing.operations: it imports pyinfra_cli, which gevent-monkey-patches the test process.
from pyinfra_testing.util import FakeState, create_host, get_command_string

from tasks.checks.runner import CheckResult
from tasks.core.redact import is_redacted, redact_inspect
from tasks.facts.docker import SECTION, ContainerInspect
from tasks.operations.docker import FULL_MARK, full_read_command

OPS = Path(__file__).parent
DATA = OPS / "data"


# -- case files -----------------------------------------------------------------------------------


def recorded(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """A recorded JSON file from tests/ops/data (a one-item list, as `docker inspect` prints,
    is unwrapped), with overrides by key path (``"Config/Labels/io.quantlab.mlflow-version"``)."""
    data = json.loads((DATA / f"{name}.json").read_text())
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    for path, value in (overrides or {}).items():
        *parents, last = path.split("/")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return data


def expand(value: Any) -> Any:
    """Replace every ``{"recorded": name, "set": {...}}`` in a case with the recorded data."""
    if isinstance(value, dict):
        if "recorded" in value and set(value) <= {"recorded", "set"}:
            return recorded(value["recorded"], value.get("set"))
        return {key: expand(item) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item) for item in value]
    return value


def cases(folder: str) -> list[Any]:
    """``pytest.param`` per JSON file in tests/ops/<folder>, id = file stem."""
    paths = sorted((OPS / folder).glob("*.json"))
    assert paths, f"no cases in tests/ops/{folder}"
    return [pytest.param(json.loads(path.read_text()), id=path.stem) for path in paths]


# -- the container fact, as the host's filter answers it ---------------------------------------------

_INSPECT_KEY = re.compile(r"container=(?P<name>.*), image=(?P<image>.*?)(?:, secret_keys=(?P<keys>.*))?")


def redacted_facts(answer: dict | None, name: str, keys: str) -> dict | None:
    """A case's ContainerInspect answer (documents with env values in clear, as recorded) as the
    fact returns it: secret env values as digests salted with ``name``, URL passwords masked."""
    if answer is None:
        return None
    secret = [k for k in keys.split(",") if k]
    return {part: redact_inspect(obj, name, secret) if obj else obj for part, obj in answer.items()}


class InspectAnswers(dict):
    """ContainerInspect answers keyed ``container=X, image=Y`` in a case: found whatever
    ``secret_keys`` the operation asks with, and redacted for those keys (tasks/core/redact.py)."""

    @staticmethod
    def _parts(key: object) -> tuple[str, str, str]:
        match = _INSPECT_KEY.fullmatch(key) if isinstance(key, str) else None
        if not match:
            return "", "", ""
        return f"container={match['name']}, image={match['image']}", match["name"], match["keys"] or ""

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._parts(key)[0])

    def __getitem__(self, key: str):
        base, name, keys = self._parts(key)
        return redacted_facts(dict.__getitem__(self, base), name, keys)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def _answer_inspect_as_the_host_filters(host, answers: InspectAnswers) -> None:
    """pyinfra_testing keys facts by every argument; ContainerInspect answers come from the
    case by container and image, redacted for the ``secret_keys`` the operation asked with."""
    get_fact = host.get_fact

    def answer(fact_cls, *args, **kwargs):
        if fact_cls is not ContainerInspect:
            return get_fact(fact_cls, *args, **kwargs)
        key = get_kwargs_str(getcallargs(ContainerInspect().command, *args, **kwargs))
        if key not in answers:
            raise KeyError(f"Missing test fact key: docker.ContainerInspect -> {key}")
        return answers[key]

    host.get_fact = answer


# -- planning -------------------------------------------------------------------------------------


class OpsState(FakeState):
    """pyinfra_testing's state plus what our operations read: the failed hosts."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_hosts: set = set()


@dataclass
class Planned:
    commands: list  # what the operation yielded (StringCommand, FunctionCommand, ...)
    noop: str | None  # host.noop's reason, when it yielded nothing
    logs: list[str]  # what it logged (the plan: one line a change)
    host: Any

    def rendered(self) -> list:
        """The commands as pyinfra_testing renders them (a string; ``["upload", text, dest]``),
        FunctionCommands as ``[name, *JSON-able args]``: our callbacks also take the spec and
        the verifier, which the case itself provides."""
        out: list = []
        for command in self.commands:
            if isinstance(command, FunctionCommand):
                out.append([command.function.__name__,
                            *[a for a in command.args if isinstance(a, (bool, int, str))]])
            elif isinstance(command, FileUploadCommand):
                command.src.seek(0)
                data = command.src.read()
                out.append(["upload", data.decode() if isinstance(data, bytes) else data, str(command.dest)])
            else:
                command = StringCommand(command.strip()) if isinstance(command, str) else command
                out.append(get_command_string(command))
        return out


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """pyinfra's logger output (the plan lines, verification tables, red failure lines)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("pyinfra")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def plan(op, facts: dict, *args, host_name: str = "ops-host", data: dict | None = None,
         failed: bool = False, **kwargs) -> Planned:
    """Run an operation's planning (its generator) on a fake host answering ``facts``
    (``{"docker.ContainerInspect": {"container=..., image=...": {...}}}``, as pyinfra_testing
    keys them). ``failed``: the host is already marked failed (lost connection)."""
    state = OpsState()
    facts = expand(facts)
    host = create_host(state, name=host_name, facts=facts, data=data or {})
    _answer_inspect_as_the_host_filters(host, InspectAnswers(facts.get("docker.ContainerInspect") or {}))
    if failed:
        state.failed_hosts.add(host)
    with captured_logs() as logs, ctx_state.use(state), ctx_host.use(host):
        commands = list(op._inner(*args, **kwargs))
    return Planned(commands, host.noop_description, logs, host)


# -- execution ------------------------------------------------------------------------------------


def _filtered_lines(obj: dict, name: str, keys: list[str]) -> list[str]:
    out = redact_inspect(obj, name, keys)
    env = (out.get("Config") or {}).get("Env") or []
    if isinstance(out.get("Config"), dict):
        out["Config"]["Env"] = None
    lines = [f"O {json.dumps(out)}"]
    for entry in env:
        key, _, value = entry.partition("=")
        lines.append(f"S {value[len('***sha256:'):]} {json.dumps(key)[1:-1]}" if is_redacted(value)
                     else f"E {json.dumps(entry)}")
    return lines


def inspect_output(containers: list[dict], image: dict | None, container: str, keys: str = "") -> str:
    """What ContainerInspect's command prints for these objects: the host's filter's lines."""
    secret = [k for k in keys.split(",") if k]
    lines = [f"{SECTION}containers {container}"]
    for obj in containers:
        lines += _filtered_lines(obj, container, secret)
    lines.append(f"{SECTION}image")
    if image:
        lines += _filtered_lines(image, container, secret)
    return "\n".join(lines)


def asked_keys(command: str) -> str:
    """The ``secret_keys`` a ContainerInspect command was built with."""
    match = re.search(r"keys=('[^']*')", command)
    return ",".join(shlex.split(match[1])[0].split()) if match else ""


@dataclass
class Step:
    """One recorded answer: the command the host must be asked, and what it answered.
    ``inspect``: a ContainerInspect step (name, image, containers, image object), asked with any
    ``secret_keys`` and answered as the host's filter would for them."""

    command: str
    ok: bool = True
    stdout: str = ""
    stderr: str = ""
    inspect: tuple | None = None
    raises: str = ""  # the connector itself fails here (an SFTP or SSH error): OSError(raises)

    def answer(self, command: str) -> Step:
        if self.inspect is None:
            return self
        name, image, containers, image_obj = self.inspect
        keys = asked_keys(command)
        return Step(ContainerInspect().command(name, image, keys), self.ok,
                    inspect_output(containers, image_obj, name, keys) if self.ok else "", self.stderr)

    @classmethod
    def from_case(cls, item: dict) -> list[Step]:
        item = expand(item)
        times = item.get("times", 1)
        if "inspect" in item:  # the ContainerInspect command, answered with recorded objects
            name, image = item["inspect"]
            step = cls(ContainerInspect().command(name, image), item.get("ok", True),
                       stderr=item.get("stderr", ""),
                       inspect=(name, image, item.get("containers", []), item.get("image")))
        elif "full" in item:  # the recreate's unprinted re-read of its base container and the image
            container, image = item["container"], item["image"]
            step = cls(full_read_command(container["Id"], item["full"]), item.get("ok", True),
                       f"{json.dumps([container])}\n{FULL_MARK}\n{json.dumps([image])}" if item.get("ok", True)
                       else "", item.get("stderr", ""))
        elif "upload" in item:
            step = cls(f"upload {item['upload']}", item.get("ok", True), raises=item.get("raises", ""))
        else:
            step = cls(item["command"], item.get("ok", True), item.get("stdout", ""),
                       item.get("stderr", ""), raises=item.get("raises", ""))
        return [step] * times


@dataclass
class ScriptedHost:
    """The host at execution time. Each command a callback runs must be the next recorded one;
    the recorded answer comes back. Uploads are steps too (``upload <path>``)."""

    script: list[dict]
    name: str = "ops-host"
    print_prefix: str = ""
    data: dict = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    uploads: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._steps = [step for item in self.script for step in Step.from_case(item)]

    def _next(self, command: str) -> Step:
        self.asked.append(command)
        index = len(self.asked) - 1
        assert index < len(self._steps), f"unrecorded command #{index + 1}: {command}"
        step = self._steps[index].answer(command)
        assert command == step.command, (f"command #{index + 1} differs\n  ran:      {command}\n"
                                         f"  recorded: {step.command}")
        return step

    def run_shell_command(self, command, print_output=False, print_input=False, **_):
        text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
        step = self._next(text)
        if step.raises:
            raise OSError(step.raises)
        lines = ([OutputLine("stdout", line) for line in step.stdout.splitlines()]
                 + [OutputLine("stderr", line) for line in step.stderr.splitlines()])
        return step.ok, CommandOutput(lines)

    def put_file(self, src, dest, print_output=False, **_):
        step = self._next(f"upload {dest}")
        if step.raises:
            raise OSError(step.raises)
        data = src.read()
        self.uploads[dest] = data.decode() if isinstance(data, bytes) else data
        return step.ok

    def log_styled(self, message, log_func=None, **_):
        self.errors.append(message)

    def assert_all_asked(self) -> None:
        left = [step.command for step in self._steps[len(self.asked):]]
        assert not left, f"recorded commands never run: {left}"


def execute(command: FunctionCommand, host: ScriptedHost) -> tuple[Any, list[str]]:
    """Run a planned callback as pyinfra would at execution time: (its result, its log lines)."""
    with captured_logs() as logs:
        result = command.function(OpsState(), host, *command.args, **command.kwargs)
    return result, logs


def verifier(results: list[dict] | None) -> Callable | None:
    """A stand-in for the caller's checks (the MLflow or backend checks, tested on their own):
    runs the recorded ``runs`` commands through the ``run`` it is handed, returns the results."""
    if results is None:
        return None

    def verify(run):
        out = []
        for item in results:
            for command in item.get("runs", []):
                run(command)
            out.append(CheckResult(item["name"], item.get("target", "ops"), item["status"],
                                   attempts=1, evidence=item.get("evidence", "")))
        return out

    return verify
