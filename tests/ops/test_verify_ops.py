"""The read-only verification operations without a host: tasks/checks/stack.py `verify` and
tasks/operations/onboard.py `verify`, planned and then executed by pyinfra's own `run_host_op`
(its State, Inventory and Host), the host's commands answered from recorded outputs in order
(tests/ops/verify.<operation>/*.json, tests/ops/harness.py's ScriptedHost).

What pyinfra must see: while planning (and with ``--dry``) the operation yields nothing and runs
no command (no change planned); executed, all checks passing, it yields nothing ("No changes",
the results table's "No Change" column); a failing check makes it yield one callback that logs
the failures and returns False: the operation errors on that host, with the check's reason, and
is still not counted a change.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from pyinfra.api import Config, Inventory, OperationError, State
from pyinfra.api.host import Host
from pyinfra.api.operations import run_host_op
from pyinfra.context import ctx_host, ctx_state

from tasks.checks import stack
from tasks.checks.http import http_command
from tasks.checks.logs import logs_command
from tasks.checks.shell import timed
from tasks.core.recap import plain
from tasks.core.signatures import load_catalog, log_patterns
from tasks.operations import onboard
from tasks.settings import load
from tasks.settings.stack import LOGS_SINCE_ENV, REPORT_ENV
from tests.ops.harness import ScriptedHost, captured_logs, expand

OPS = Path(__file__).parent


def fixture(folder: str, name: str) -> dict:
    return json.loads((OPS / folder / f"{name}.json").read_text())


def with_answers(steps: list[dict], **changes: dict) -> list[dict]:
    """The recorded steps, those with these ids answered otherwise (``None``: not asked)."""
    out = []
    for step in copy.deepcopy(steps):
        change = changes.get(step.get("id", ""), {})
        if change is None:
            continue
        out.append({**step, **change})
    return out


@dataclass
class Outcome:
    planned_change: bool  # pyinfra's plan-time "will change" for the operation
    planned_commands: int  # commands the planning generator yielded
    asked_while_planning: list[str]  # host commands run while planning (must be none)
    result: str  # as pyinfra's results table counts it: "Success" (changed), "No Change", "Error"
    returned: bool  # run_host_op's status (False: the host failed the operation)
    host: ScriptedHost
    connector_arguments: list[dict]
    logs: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.logs)

    @property
    def unprefixed(self) -> str:
        """The logs without the host's prefix (printed on every line of a message)."""
        return "\n".join(re.sub(r"^\[h1\] ", "", plain(line)) for line in self.logs)


def run_operation(call: Callable[[], Any], host_data: dict, script: list[dict]) -> Outcome:
    """Plan ``call()`` (one operation) for host h1, then execute it as ``pyinfra`` does, the
    host's commands answered by ``script`` (ScriptedHost steps)."""
    inventory = Inventory(([("h1", copy.deepcopy(host_data))], {}))
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    scripted = ScriptedHost(script, name="h1")
    connector_arguments: list[dict] = []

    def run_shell_command(self, command, **kwargs):
        connector_arguments.append({k: v for k, v in kwargs.items() if k.startswith("_")})
        return scripted.run_shell_command(command, **kwargs)

    def put_file(self, src, dest, **kwargs):
        return scripted.put_file(src, dest, **kwargs)

    with patch.object(Host, "run_shell_command", run_shell_command), patch.object(Host, "put_file", put_file), \
            captured_logs() as logs, ctx_state.use(state), ctx_host.use(host):
        meta = call()
        (op_hash,) = state.get_op_order()
        planned = list(state.ops[host][op_hash].command_generator())
        asked_while_planning = list(scripted.asked)
        planned_change = bool(meta._maybe_is_change)
        state.is_executing = True
        returned = run_host_op(state, host, op_hash)
    if not meta.did_succeed(_raise_if_not_complete=False):
        result = "Error"
    else:
        result = "Success" if meta.did_change() else "No Change"
    return Outcome(planned_change, len(planned), asked_while_planning, result, returned, scripted,
                   connector_arguments, logs)


# -- tasks/checks/stack.py verify -------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_run_overrides(monkeypatch):
    """The run's environment may override the stack settings (since, report): not in these tests."""
    monkeypatch.delenv(LOGS_SINCE_ENV, raising=False)
    monkeypatch.delenv(REPORT_ENV, raising=False)


def stack_script(steps: list[dict], command_timeout: int = 15, http_timeout: int = 5) -> list[dict]:
    """Fixture steps as the host receives them: each wrapped in coreutils' timeout, as the
    checks' shell sends it; ``inspect`` answers with the recorded `docker inspect` output."""
    catalog = load_catalog()
    out = []
    for step in steps:
        if "sh" in step:
            command = timed(step["sh"], command_timeout)
        elif "http" in step:
            method, url = step["http"]
            command = timed(http_command(method, url, http_timeout), http_timeout + 3)
        else:
            name, since, role = step["logs"]
            command = timed(logs_command(name, since, log_patterns(catalog, role)), command_timeout)
        stdout = json.dumps([expand(step["inspect"])], indent=4) if "inspect" in step else step.get("stdout", "")
        out.append({"command": command, "ok": step.get("ok", True), "stdout": stdout})
    return out


def verify_stack(host_data: dict, steps: list[dict]) -> Outcome:
    return run_operation(lambda: stack.verify(name="Verify the stack"), host_data, stack_script(steps))


BACKEND = fixture("verify.stack", "backend_healthy")


def checks_table(outcome: Outcome) -> dict[str, str]:
    """check name -> its result word, from the table the operation logs (``verify: ...``)."""
    rows = {}
    for line in outcome.logs:
        _, found, row = line.partition("verify: ")
        if found:
            for word in ("PASS", "FAIL", "SKIP", "WARN"):
                if f"  {word}  " in row:
                    rows[row.split("  ")[0].strip()] = word
    return rows


def test_stack_nothing_to_check_runs_no_command_and_is_no_change():
    outcome = verify_stack({"stack": {"services": {}}}, [])
    outcome.host.assert_all_asked()
    assert outcome.host.asked == []
    assert (outcome.planned_change, outcome.planned_commands, outcome.result, outcome.returned) == \
        (False, 0, "No Change", True)
    table = checks_table(outcome)
    assert table == {f"{service} checks": "SKIP" for service in ("postgres", "mlflow", "redis", "s3", "backend")}
    assert "not configured on this host (stack.services has no 'backend')" in outcome.text


def test_stack_plan_runs_nothing_and_says_when_checks_run():
    outcome = verify_stack(BACKEND["host_data"], BACKEND["steps"])
    assert outcome.asked_while_planning == [] and outcome.planned_commands == 0
    assert outcome.planned_change is False
    assert "noop: stack checks run when the deploy executes (read-only; none with --dry)" in outcome.text


def test_stack_healthy_backend_all_checks_pass_no_change():
    outcome = verify_stack(BACKEND["host_data"], BACKEND["steps"])
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("No Change", True)
    assert outcome.host.errors == []
    table = checks_table(outcome)
    assert table == {
        "postgres checks": "SKIP", "mlflow checks": "SKIP", "redis checks": "SKIP", "s3 checks": "SKIP",
        "container qtops-backend is present": "PASS",
        "container qtops-backend is running": "PASS",
        "container qtops-backend is not OOM-killed": "PASS",
        "container qtops-backend memory is below its limit": "PASS",
        "backend /health answers": "PASS",
        "backend database round trip /health/db": "PASS",
        "container qtops-backend logs show no known failure": "PASS",
        "container qtops-backend restart count is stable": "PASS",
    }
    # Every command is bounded: coreutils' timeout on the host, pyinfra's _timeout around it.
    assert all(c.startswith("timeout -k 2 ") for c in outcome.host.asked)
    assert all(args.get("_timeout") for args in outcome.connector_arguments)


def test_stack_a_known_failure_line_fails_the_host_with_the_signature():
    watchfiles = ("_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
                  "Input/output error (os error 5)")
    steps = with_answers(BACKEND["steps"], logs={"stdout": f"{watchfiles}\nquantlab-logs-rc=0\n"})
    outcome = verify_stack(BACKEND["host_data"], steps)
    outcome.host.assert_all_asked()
    assert (outcome.planned_change, outcome.result, outcome.returned) == (False, "Error", False)
    assert ("stack verification failed: 1 check(s):\n  container qtops-backend logs show no known failure "
            "(qtops-backend): since 15m: 1x backend-watchfiles-io-error (e.g. "
            f"'{watchfiles}')") in outcome.unprefixed
    assert checks_table(outcome)["container qtops-backend restart count is stable"] == "PASS"  # all still ran


def test_stack_a_failing_database_round_trip_fails_with_the_backends_reason():
    answer = ('{"detail":"(psycopg2.OperationalError) connection to server at \\"qtops-postgres\\" '
              '(172.18.0.2), port 5432 failed: FATAL:  password authentication failed for user '
              '\\"quant_user\\"\\n"}\nHTTP 500\n')
    steps = with_answers(BACKEND["steps"], health_db={"stdout": answer})
    outcome = verify_stack(BACKEND["host_data"], steps)
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("Error", False)
    assert ("backend database round trip /health/db (http://127.0.0.1:15504): GET "
            "http://127.0.0.1:15504/health/db -> HTTP 500: (psycopg2.OperationalError) connection to server at "
            '"qtops-postgres" (172.18.0.2), port 5432 failed: FATAL: password authentication failed for user '
            '"quant_user"') in outcome.text


def test_stack_an_exited_container_skips_its_service_checks_and_fails():
    exited = {"State/Status": "exited", "State/Running": False, "State/OOMKilled": True, "State/ExitCode": 137,
              "State/FinishedAt": "2026-01-02T03:10:41.402118803Z"}
    inspect = {"inspect": {"recorded": "backend-fixed", "set": exited}}
    steps = with_answers(BACKEND["steps"], present=inspect, running=inspect, not_oom=inspect, restarts=inspect,
                         oom_counter=None, memory=None, cgroup_memory=None, health=None, health_db=None)
    outcome = verify_stack(BACKEND["host_data"], steps)
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("Error", False)
    table = checks_table(outcome)
    assert table["backend service checks"] == "SKIP"
    assert table["container qtops-backend is running"] == "FAIL"
    assert table["container qtops-backend is not OOM-killed"] == "FAIL"
    assert "container qtops-backend is running (qtops-backend): exited (exit code 137, OOM-killed" in outcome.text


def test_stack_bad_settings_refuse_at_plan_time_naming_the_key():
    data = {"stack": {"retry_attempts": 0, "services": {"backend": {"container": "qtops-backend"}}}}
    with pytest.raises(OperationError, match=r"host 'h1': stack.retry_attempts"):
        verify_stack(data, [])


# -- tasks/operations/onboard.py verify ----------------------------------------------------------

ONBOARDED = fixture("verify.onboard", "debian_systemd_host")


def onboard_script(steps: list[dict]) -> list[dict]:
    return [{"command": f"timeout 20 sh -c {shlex.quote(s['run'])}", "ok": s.get("ok", True),
             "stdout": s.get("stdout", "")} for s in steps]


def verify_onboard(steps: list[dict], case: dict = ONBOARDED, **settings) -> Outcome:
    block = load("onboard", "h1", {**case["settings"], **settings})
    return run_operation(
        lambda: onboard.verify(name="Verify the onboarded host", settings=block,
                               expected_gid=case["expected_gid"], compose=case["compose"], _sudo=True),
        {}, onboard_script(steps))


def test_onboard_plan_runs_nothing():
    outcome = verify_onboard(ONBOARDED["steps"])
    assert outcome.asked_while_planning == [] and outcome.planned_commands == 0
    assert outcome.planned_change is False
    assert "noop: onboarding checks run when the deploy executes (read-only; none with --dry)" in outcome.text


def test_onboard_all_checks_pass_no_change_with_the_operations_sudo():
    outcome = verify_onboard(ONBOARDED["steps"])
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("No Change", True)
    assert outcome.host.errors == []
    assert "9/9 checks passed" in outcome.text
    # the operation's connector arguments travel with each check's command
    assert all(args.get("_sudo") is True for args in outcome.connector_arguments)


def test_onboard_socket_engine_skips_the_engines_logging_without_asking():
    steps = with_answers(ONBOARDED["steps"], logging_driver=None)
    outcome = verify_onboard(steps, engine="socket")
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("No Change", True)
    assert "8/8 checks passed, 1 skipped" in outcome.text


def test_onboard_sudo_for_all_fails_the_host_naming_it():
    sudo = {"stdout": "User deploy may run the following commands on ops-host:\n    (ALL : ALL) NOPASSWD: ALL\n"}
    outcome = verify_onboard(with_answers(ONBOARDED["steps"], sudo=sudo))
    outcome.host.assert_all_asked()  # the other checks still ran
    assert (outcome.planned_change, outcome.result, outcome.returned) == (False, "Error", False)
    assert ("onboarding verification failed:\n  sudo for deploy is narrow and valid: deploy may run ALL: "
            "(ALL : ALL) NOPASSWD: ALL") in outcome.unprefixed


def test_onboard_daemon_json_without_rotation_fails_with_what_it_holds():
    outcome = verify_onboard(with_answers(ONBOARDED["steps"], daemon_json={"stdout": '{"debug": true}\n'}))
    outcome.host.assert_all_asked()
    assert (outcome.result, outcome.returned) == ("Error", False)
    assert ("daemon.json rotates container logs: log-driver None, log-opts {}") in outcome.text
