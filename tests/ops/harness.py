"""Operation tests without a host: facts in, commands (or a noop) out, as pyinfra tests its own
operations (pyinfra_testing's FakeState/FakeHost), plus the execution half our operations have:
a FunctionCommand run against a host that answers each command from a recorded script, in order.

Case files are JSON (``tests/ops/<module>.<operation>/*.json``); recorded engine output lives in
``tests/ops/data/`` and is referenced as ``{"recorded": "<file stem>", "set": {"a.b": value}}``
anywhere in a case (``set`` overrides keys by path, ``"HostConfig/Memory"``, ``null`` deletes one),
so each case shows only what differs from what a real engine printed.

    planned = plan(docker.container, facts, spec=spec)       # planning: no host needed
    host = ScriptedHost(case["run"]); ok = execute(planned.commands[0], host)
"""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

# Not pyinfra_testing.operations: it imports pyinfra_cli, which gevent-monkey-patches the test process.
from pyinfra_testing.util import FakeState, create_host, get_command_string

from tasks.checks.runner import CheckResult
from tasks.facts.docker import SECTION, ContainerInspect

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
    host = create_host(state, name=host_name, facts=expand(facts), data=data or {})
    if failed:
        state.failed_hosts.add(host)
    with captured_logs() as logs, ctx_state.use(state), ctx_host.use(host):
        commands = list(op._inner(*args, **kwargs))
    return Planned(commands, host.noop_description, logs, host)


# -- execution ------------------------------------------------------------------------------------


def inspect_output(containers: list[dict], image: dict | None, container: str) -> str:
    """What ContainerInspect's command prints for these objects (docker's indented JSON)."""
    return "\n".join([f"{SECTION}containers {container}", *json.dumps(containers, indent=4).splitlines(),
                      f"{SECTION}image", *json.dumps([image] if image else [], indent=4).splitlines()])


@dataclass
class Step:
    """One recorded answer: the command the host must be asked, and what it answered."""

    command: str
    ok: bool = True
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def from_case(cls, item: dict) -> list[Step]:
        item = expand(item)
        times = item.get("times", 1)
        if "inspect" in item:  # the ContainerInspect command, answered with recorded objects
            name, image = item["inspect"]
            step = cls(ContainerInspect().command(name, image), item.get("ok", True),
                       inspect_output(item.get("containers", []), item.get("image"), name))
        elif "upload" in item:
            step = cls(f"upload {item['upload']}", item.get("ok", True))
        else:
            step = cls(item["command"], item.get("ok", True), item.get("stdout", ""),
                       item.get("stderr", ""))
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
        step = self._steps[index]
        assert command == step.command, (f"command #{index + 1} differs\n  ran:      {command}\n"
                                         f"  recorded: {step.command}")
        return step

    def run_shell_command(self, command, print_output=False, print_input=False, **_):
        text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
        step = self._next(text)
        lines = ([OutputLine("stdout", line) for line in step.stdout.splitlines()]
                 + [OutputLine("stderr", line) for line in step.stderr.splitlines()])
        return step.ok, CommandOutput(lines)

    def put_file(self, src, dest, print_output=False, **_):
        step = self._next(f"upload {dest}")
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
