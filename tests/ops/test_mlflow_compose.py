"""tasks.operations.mlflow.server in compose mode, from recorded facts, without Docker: which way
the container is managed (through compose, or the docker path when the settings name a container
compose did not make from the file), the ComposeChange planned (the patched file, the project from
the container's labels, the tool), the refusals made before any change, and the execution half,
`compose.apply`, against a host that answers from a recorded script: the file written, `up`, the
container compose made found and verified, and on failure the previous file written back and up
again (tests/ops/mlflow.server_compose/*.json).

Recorded data (tests/ops/record_compose.py): the user's file as it was in the incident
(``compose-incident``) and as the deploy patches it (``compose-fixed``), the containers
docker-compose made from each (``container-compose-*``) and the ComposeService fact's output
(``compose-service-*``).

Case keys beyond tests/ops/test_mlflow.py's: ``operation`` (default ``server``); in
``compose.ComposeService`` facts, ``containers`` as JSON objects (made ComposeContainers here);
``change`` checks the planned ComposeChange (``new_text_has``/``new_text_lacks``: lines, ``up``:
the `up` command it will run); ``verify`` is the stand-in verifier's results (harness.verifier)
and ``verified`` the container names it was asked for; ``run`` items may be
``{"compose_service": [file, service], "stdout": ...}`` for the ComposeService command; ``uploads``
the text uploaded to each path; ``never_shown`` text that must not appear in logs or errors."""
from __future__ import annotations

import pytest
from pyinfra.api import FunctionCommand, OperationError

from tasks.facts.compose import ComposeContainer, ComposeService
from tasks.operations import compose, docker, mlflow
from tasks.settings import load
from tests.ops.harness import ScriptedHost, cases, execute, expand, plan, verifier


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(docker, "_pause", lambda seconds: None)


def compose_facts(facts: dict) -> dict:
    """The case's facts with each ComposeService's containers as the fact returns them."""
    facts = expand(facts)
    for value in facts.get("compose.ComposeService", {}).values():
        if value:
            value["containers"] = [ComposeContainer(**{**item, "config_files": tuple(item["config_files"])})
                                   for item in value["containers"]]
    # No copy left by an unfinished apply, unless the case gives one.
    pending = facts.setdefault("compose.ComposePending", {})
    for key in facts.get("compose.ComposeService", {}):
        path = key.split(", service=")[0]
        pending.setdefault(path, {"text": None, "secret_lines": []})
    return facts


def run_step(item: dict) -> dict:
    """A ``run`` item with the ComposeService shorthand written out."""
    if "compose_service" not in item:
        return item
    file, service = item["compose_service"]
    return {"command": ComposeService().command(file, service),
            **{key: value for key, value in item.items() if key != "compose_service"}}


def planned(case: dict):
    op = getattr(mlflow, case.get("operation", "server"))
    settings = load("mlflow", "ops-host", expand(case["settings"]))
    return plan(op, compose_facts(case["facts"]), settings=settings,
                secret_values=case.get("secret_values", {}), failed=case.get("failed", False))


def plain(value):
    return sorted(value) if isinstance(value, frozenset) else list(value) if isinstance(value, tuple) else value


def check_change(change: compose.ComposeChange, expected: dict) -> None:
    expected = expand(expected)
    for key in ("tool", "file", "service", "project", "file_changed", "old_text", "new_text"):
        if key in expected:
            assert plain(getattr(change, key)) == expected[key], key
    lines = change.new_text.splitlines()
    for line in expected.get("new_text_has", []):
        assert line in lines, line
    for line in expected.get("new_text_lacks", []):
        assert line not in lines, line
    if "up" in expected:
        assert compose.up_command(change, force_recreate=not change.file_changed) == expected["up"]
    for key, value in expected.get("spec", {}).items():
        assert plain(getattr(change.spec, key)) == value, f"spec.{key}"


@pytest.mark.parametrize("case", cases("mlflow.server_compose"))
def test_server_compose(case):
    if "exception" in case:
        with pytest.raises(OperationError) as raised:
            planned(case)
        assert case["exception"] in str(raised.value)
        return
    result = planned(case)
    assert result.rendered() == case["commands"]
    assert result.noop == case.get("noop_description")
    logs = "\n".join(result.logs)
    for text in case.get("logs", []):
        assert text in logs
    for text in case.get("logs_lack", []) + case.get("never_shown", []):
        assert text not in logs
    if "change" in case:
        change, verify_for = result.commands[0].args
        check_change(change, case["change"])
        # The planned verifier runs the MLflow checks on whichever container compose made.
        assert callable(verify_for("qtops_mlflow_1"))
    if "run" not in case:
        return
    change = result.commands[0].args[0]
    asked: list[str] = []

    def verify_for(name: str):
        asked.append(name)
        return verifier(case.get("verify"))

    host = ScriptedHost([run_step(item) for item in case["run"]])
    ok, run_logs = execute(FunctionCommand(compose.apply, (change, verify_for), {}), host)
    host.assert_all_asked()
    assert ok is case["result"]
    assert asked == case.get("verified", [])
    errors = "\n".join(host.errors)
    for text in case.get("errors", []):
        assert text in errors
    if ok:
        assert not host.errors
    assert host.uploads == expand(case.get("uploads", {}))
    for text in case.get("never_shown", []):
        assert text not in "\n".join(run_logs + host.errors)
