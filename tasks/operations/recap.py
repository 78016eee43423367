"""What an operator sees on a fleet: host-prefixed lines, and at the end of every deploy a recap
(one line per host: ok, changed, failed, unreachable, the first failure's reason) and, with
``QUANT_REPORT=path`` in the environment, the run's JSON document (per host: status, counts,
first failure, operations with timings, plan lines, check results).

Every deploy file calls :func:`install` (after ``quiet_refusals()``). pyinfra 3.10 has no "run
finished" callback and its CLI ends with ``sys.exit``: :func:`install` adds a state callback
handler (``state.add_callback_handler``: operation starts, successes, errors, connect errors)
and a handler on pyinfra's logger (the first error line printed for a host is its failure's
reason), and prints the recap from an ``atexit`` hook, after pyinfra's own results, before
logging shuts down. Hosts that never connected are ``unreachable``; a host that failed while
its operations were planned is ``failed`` with the error printed for it.

:func:`say` prints a message about a host with the host's prefix on *every* line (pyinfra
prefixes only the first) and records it as one of the host's plan lines; :func:`record_checks`
adds a verification's results to the host's part of the document.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback, StateStage
from pyinfra.context import ctx_state

from tasks.core.private_file import write_private_text
from tasks.core.recap import HostOutcome, OperationOutcome, one_line, plain, recap_lines, run_document

REPORT_ENV = "QUANT_REPORT"
REASON_LINES = 4  # of the error lines printed for a host's failed operation
PREFIX = re.compile(r"^\[([^\]]+)\]\s+(?:nested\s+)?(.*)$", re.S)
# pyinfra's own summary of a failed operation: a reason only when nothing better was printed.
RUN_ERROR = re.compile(r"^--> .*error.*: ", re.I)  # pyinfra CLI's line when a run stops
GENERIC = re.compile(r"^Error(?: \(ignored[^)]*\))?:? ?(executed \d+ commands.*)?$")


class _Run(BaseStateCallback, logging.Handler):
    """One pyinfra run's outcomes, per host name."""

    def __init__(self, state: Any):
        BaseStateCallback.__init__(self)
        logging.Handler.__init__(self, level=logging.INFO)
        self.state = state
        self.run_id = uuid.uuid4().hex
        self.started = time.time()
        self.plans: dict[str, list[str]] = {}
        self.checks: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[str, list[tuple[int, str]]] = {}  # host -> (level, line) since its op started
        self.reasons: dict[str, str] = {}  # host -> its first failure's reason
        self.planning_errors: dict[str, list[tuple[int, str]]] = {}  # host -> errors printed while planning
        self.ready: set[str] = set()  # hosts whose deploy file pyinfra finished loading ("Ready:")
        self.run_errors: list[str] = []  # pyinfra's "--> ... error: ..." lines: the run stopped
        self.op_started: dict[tuple[str, str], float] = {}
        self.op_elapsed: dict[tuple[str, str], float] = {}
        self.host_span: dict[str, list[float]] = {}
        self.finished = False

    # -- the logging handler: error lines by host --------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            match = PREFIX.match(plain(record.getMessage()).strip())
        except Exception:  # a record that cannot be formatted is not ours to judge
            return
        if not match:
            text = plain(record.getMessage()).strip()
            if record.levelno >= logging.WARNING and RUN_ERROR.match(text):
                self.run_errors.append(text.removeprefix("--> "))
            return
        if record.levelno < logging.WARNING:
            if match.group(2).startswith("Ready: "):
                self.ready.add(match.group(1).strip())
            return
        if match:
            name, line = match.group(1).strip(), (record.levelno, match.group(2).strip())
            self.errors.setdefault(name, []).append(line)
            if record.levelno >= logging.ERROR and not self.state.is_executing:
                self.planning_errors.setdefault(name, []).append(line)

    # -- pyinfra's state callbacks ------------------------------------------------------------

    def host_connect_error(self, state, host, error):  # type: ignore[override]  # pyinfra calls it bound
        self.reasons.setdefault(host.name, f"could not connect: {one_line(str(error))}")

    def operation_host_start(self, state, host, op_hash):  # type: ignore[override]  # pyinfra calls it bound
        self.errors[host.name] = []
        now = time.monotonic()
        self.op_started[(host.name, op_hash)] = now
        self.host_span.setdefault(host.name, [now, now])

    def _ended(self, host, op_hash) -> None:
        now = time.monotonic()
        started = self.op_started.get((host.name, op_hash))
        if started is not None:
            self.op_elapsed[(host.name, op_hash)] = now - started
        span = self.host_span.setdefault(host.name, [now, now])
        span[1] = now

    def operation_host_success(self, state, host, op_hash, retry_count=0):  # type: ignore[override]  # pyinfra calls it bound
        self._ended(host, op_hash)

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):  # type: ignore[override]  # pyinfra calls it bound
        self._ended(host, op_hash)
        if host.name not in self.reasons:
            name = _op_name(state, op_hash, host.name)
            self.reasons[host.name] = f"{name}: {_best(self.errors.get(host.name, []))}"

    # -- the end --------------------------------------------------------------------------------

    def outcomes(self) -> tuple[list[HostOutcome], bool]:
        state = self.state
        dry = state.current_stage < StateStage.Execute
        hosts = []
        for host in state.inventory:
            outcome = HostOutcome(host.name)
            outcome.reachable = host in state.activated_hosts or host.connected
            outcome.failed = host in state.failed_hosts
            if not outcome.reachable:
                outcome.reason = self.reasons.get(host.name, "could not connect (the error is printed above)")
            outcome.plans = list(self.plans.get(host.name, []))
            outcome.checks = list(self.checks.get(host.name, []))
            span = self.host_span.get(host.name)
            outcome.elapsed = span[1] - span[0] if span else None
            for op_hash in state.get_op_order():
                if op_hash not in state.ops.get(host, {}):
                    continue
                meta = state.ops[host][op_hash].operation_meta
                elapsed = self.op_elapsed.get((host.name, op_hash))
                if dry:
                    status = "planned" if meta._maybe_is_change else "ok"
                elif not meta.is_complete():
                    status = "not run"
                elif not meta.did_succeed(_raise_if_not_complete=False):
                    status = "failed"
                else:
                    status = "changed" if meta.did_change() else "ok"
                outcome.operations.append(
                    OperationOutcome(_op_name(state, op_hash, host.name), status, elapsed)
                )
            if dry and outcome.reachable and host.name not in self.ready and self.run_errors:
                # the run stopped (an exception) before this host's operations were all planned
                outcome.failed = True
                outcome.reason = (
                    _best(self.planning_errors.get(host.name, []))
                    if (host.name in self.planning_errors)
                    else one_line(self.run_errors[0])
                )
            elif dry and host.name in self.planning_errors:
                # a refusal printed for this host while planning: its run would fail
                outcome.failed = True
                outcome.reason = self.reasons.get(host.name) or _best(self.planning_errors[host.name])
            elif outcome.reachable and (outcome.failed or outcome.count("failed")):
                outcome.reason = self.reasons.get(host.name) or _best(self.errors.get(host.name, []))
            # the recap names the host already: "host 'h1': " in a settings error says it twice
            outcome.reason = outcome.reason.replace(f"host '{host.name}': ", "")
            hosts.append(outcome)
        return hosts, dry

    def finish(self) -> None:
        if self.finished or not getattr(self.state, "initialised", False):
            return
        self.finished = True
        hosts, dry = self.outcomes()
        stopped = dry and bool(self.run_errors)
        for line in recap_lines(hosts, dry=dry, stopped=stopped):
            logger.info(line)
        path = os.environ.get(REPORT_ENV)
        if path:
            document = run_document(
                hosts,
                run_id=self.run_id,
                deploys=[arg for arg in sys.argv[1:] if arg.endswith(".py")],
                dry=dry,
                stopped=stopped,
                started=self.started,
                finished=time.time(),
            )
            try:
                written = write_private_text(path, json.dumps(document, indent=2, default=str) + "\n")
            except OSError as exc:
                logger.error(f"--> Run report: could not write {path}: {exc}")
                return
            logger.info(f"--> Run report: {written}")


def _op_name(state: Any, op_hash: str, host_name: str | None = None) -> str:
    """The operation's name as this host knows it. pyinfra keeps one set of names per operation
    across hosts ("MLflow container h1-mlflow", "... h2-mlflow", ...): joined, 50 hosts' names
    would bury the reason after them."""
    try:
        names = sorted(state.get_op_meta(op_hash).names)
    except Exception:
        return "operation"
    if len(names) > 1 and host_name:
        names = [name for name in names if host_name in name] or names
    if len(names) > 1:
        return f"{names[0]} (and {len(names) - 1} more names on other hosts)"
    return names[0] if names else "operation"


def _best(lines: list[tuple[int, str]]) -> str:
    """The first specific error lines (not pyinfra's "Error: executed N commands"), else the
    first specific warnings (pyinfra prints a callback's exception as one), else the first line."""
    for level in (logging.ERROR, logging.WARNING):
        specific = [line for levelno, line in lines if levelno >= level and line and not GENERIC.match(line)]
        if specific:  # a message printed one line at a time: its first lines, joined
            return one_line("\n".join(specific[:REASON_LINES]))
    return one_line(lines[0][1]) if lines else "failed"


_RUNS: dict[int, _Run] = {}


def _current() -> _Run | None:
    if not ctx_state.isset():
        return None
    return _RUNS.get(id(ctx_state.get()))


def install() -> None:
    """Hook this run's recap and JSON document (idempotent: deploy files run once per host).
    Does nothing outside a real pyinfra state (the ops tests' fake one)."""
    if not ctx_state.isset():
        return
    state = ctx_state.get()
    if id(state) in _RUNS or not hasattr(state, "add_callback_handler"):
        return
    run = _Run(state)
    _RUNS[id(state)] = run
    state.add_callback_handler(run)
    logger.addHandler(run)
    atexit.register(run.finish)


def say(
    target: Any,
    message: str,
    log_func: Callable[[str], Any] = logger.info,
    record: bool = True,
    **style: Any,
) -> None:
    """Print ``message`` about ``target`` with its prefix on every line (``style``: pyinfra's
    ``format_text`` arguments, such as ``fg="red"``); ``record``: keep it among the host's plan
    lines in the run's document."""
    for line in message.splitlines() or [""]:
        if style and hasattr(target, "log_styled"):
            target.log_styled(line, log_func=log_func, **style)
        elif hasattr(target, "log"):
            target.log(line, log_func=log_func)
        else:
            log_func(f"{target.print_prefix}{line}")
    run = _current()
    if record and run is not None:
        run.plans.setdefault(target.name, []).append(plain(message))


def record_checks(target: Any, results: Iterable[Any]) -> None:
    """Keep a verification's CheckResults in the host's part of the run's document."""
    run = _current()
    if run is None:
        return
    kept = run.checks.setdefault(target.name, [])
    for result in results:
        item = asdict(result)
        item["elapsed"] = round(float(item.get("elapsed") or 0), 2)
        kept.append(item)
