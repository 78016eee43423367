"""Every line an operation prints about a host carries the host's name (issue 19): the plan of a
recreate, its verification table and a rollback's red failure message, printed one prefixed line
at a time, so two hosts' output never interleaves unnamed. From recorded docker.container cases."""
from __future__ import annotations

import pytest
from pyinfra_testing.util import FakeHost

from tasks.core.recap import plain
from tasks.operations import docker
from tests.ops.harness import ScriptedHost, cases, execute, expand, plan, verifier
from tests.ops.test_docker_container import container_spec, shorthand

PREFIX = "[ops-host] "
CASES = {c.id: c for c in cases("docker.container")}


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(docker, "_pause", lambda seconds: None)
    # pyinfra_testing's planning host prints no prefix; give it the one pyinfra's Host prints
    monkeypatch.setattr(FakeHost, "print_prefix", PREFIX)


@pytest.mark.parametrize("name", ["recreate_the_incident", "rollback_when_checks_fail",
                                  "update_then_checks_fail"])
def test_plan_verification_and_failure_lines_all_name_the_host(name):
    case = CASES[name].values[0]
    spec = container_spec(expand(case["spec"]))
    planned = plan(docker.container, case["facts"], spec=spec, verify=verifier(case.get("verify")))
    plan_lines = [plain(line) for message in planned.logs for line in message.splitlines()
                  if not line.startswith("Adding operation")]
    assert plan_lines and all(line.startswith(PREFIX) for line in plan_lines), plan_lines
    host = ScriptedHost([shorthand(item) for item in case["run"]], print_prefix=PREFIX)
    _, logs = execute(planned.commands[0], host)
    printed = [plain(line) for message in logs for line in message.splitlines()]
    table = [line for line in printed if "verification:" in line or "checks passed" in line]
    assert table, printed
    assert all(line.startswith(PREFIX) for line in printed), printed
    # the red failure message: one call a line (host.log_styled adds the prefix to each)
    if not case["result"]:
        assert host.errors and all("\n" not in line for line in host.errors), host.errors
