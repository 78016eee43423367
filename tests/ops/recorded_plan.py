"""Plan operations for one host without a host: pyinfra's own State, Inventory and Host, with
``host.get_fact`` answered from recorded fact output.

    result = plan_on_host(lambda: cleanup.delete_matching_rows(settings=s, target=t),
                          facts={"CleanupTable": Output(text), "CleanupCounts": Output(text)})
    result.steps   # [(operation name, [commands])]; result.noops, result.logs, result.asked

A fact given as :class:`Output` (what its command printed) goes through the fact's own
``command()`` (it must build for the arguments the operation asked with) and ``process()``,
as on a real run; any other value is the processed fact, as pyinfra's operation tests give
them (``{"Which": {"command=crontab": None}}``: per arguments, ``"*"`` for any others). A fact
the plan reads but the test did not record fails the test, naming it.

Operations run as pyinfra runs them at plan time (the generator to its first command, which
decides "change or not"), then each one's commands are generated in full, as ``--dry`` shows
them. Execution-time callbacks (FunctionCommand) are listed, not run.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

from pyinfra.api import (
    Config,
    FileDownloadCommand,
    FileUploadCommand,
    FunctionCommand,
    Inventory,
    State,
    StringCommand,
)
from pyinfra.api.host import Host
from pyinfra.api.util import get_kwargs_str
from pyinfra.context import ctx_host, ctx_state

DATA = Path(__file__).parent / "data"


class Output(str):
    """A fact command's recorded output (stdout text): processed by the fact itself."""

    @classmethod
    def recorded(cls, name: str, **changes: Any) -> Output:
        """tests/ops/data/<name>.txt; ``changes`` replace top-level keys of its JSON document."""
        text = (DATA / f"{name}.txt").read_text()
        if not changes:
            return cls(text)
        return cls(json.dumps({**json.loads(text), **changes}))


@dataclass
class Plan:
    steps: list[tuple[str, list[Any]]] = field(default_factory=list)  # (operation name, commands)
    noops: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)  # facts read: "Fact(arguments)"

    def commands(self) -> list[Any]:
        return [command for _, commands in self.steps for command in commands]


def _rendered(command: Any) -> Any:
    """``"shell text"``, ``["upload", text, dest]``, or ``[callback name, *args]``."""
    if isinstance(command, FunctionCommand):
        return [command.function.__name__, *command.args]
    if isinstance(command, FileDownloadCommand):
        return ["download", str(command.src), str(command.dest)]
    if isinstance(command, FileUploadCommand):
        if isinstance(command.src, str):  # a local file by path
            return ["upload file", command.src, str(command.dest)]
        command.src.seek(0)
        data = command.src.read()
        return ["upload", data.decode() if isinstance(data, bytes) else data, str(command.dest)]
    if isinstance(command, str):
        command = StringCommand(command.strip())
    return command.get_raw_value()


class _Collect(logging.Handler):
    """pyinfra's log lines, without the host's ``[name]`` prefix."""

    def __init__(self, lines: list[str], prefix: str):
        super().__init__(logging.DEBUG)
        self.lines, self.prefix = lines, prefix

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines.append(message[len(self.prefix):] if message.startswith(self.prefix) else message)


def plan_on_host(body: Callable[[], Any], facts: dict[str, Any], host_data: dict | None = None,
                 host_name: str = "h1") -> Plan:
    """Run ``body`` (operations, a @deploy, or a deploy file) for one host; see the module doc."""
    inventory = Inventory(([(host_name, dict(host_data or {}))], {}))
    state = State(inventory, Config())
    host = inventory.get_host(host_name)
    result = Plan()
    planning = True

    def get_fact(self, fact_cls, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        assert not args, f"{fact_cls.__name__}: give fact arguments by name"
        name, arguments = fact_cls.__name__, get_kwargs_str(kwargs)
        result.asked.append(f"{name}({arguments})")
        if name not in facts:
            raise AssertionError(f"the plan read {name}({arguments}), which the test did not record")
        value = facts[name]
        if isinstance(value, dict) and any(k == "*" or "=" in k for k in value):
            if arguments not in value and "*" not in value:
                raise AssertionError(f"no recorded {name}({arguments})")
            value = value.get(arguments, value.get("*"))
        if isinstance(value, Output):
            fact = fact_cls()
            fact.command(**kwargs)
            return fact.process(value.splitlines())
        return value

    def noop(self, description):
        if planning:  # not again when the commands are generated in full
            result.noops.append(description)

    logger = logging.getLogger("pyinfra")
    handler, level = _Collect(result.logs, host.print_prefix), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with patch.object(Host, "get_fact", get_fact), patch.object(Host, "noop", noop), \
                ctx_state.use(state), ctx_host.use(host):
            body()
            planning = False
            logged = len(result.logs)
            for op_hash in state.get_op_order():
                data = state.ops[host].get(op_hash)
                if data is None:
                    continue
                names = state.op_meta[op_hash].names
                name = ", ".join(sorted(n.rpartition(" | ")[2] for n in names))
                result.steps.append((name, [_rendered(c) for c in data.command_generator()]))
            del result.logs[logged:]  # the same plan lines again: pyinfra logs them once
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result
