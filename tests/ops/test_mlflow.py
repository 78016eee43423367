"""tasks.operations.mlflow (server, compose_service) from recorded facts, without Docker: the
MLflow version read from our label or probed from the image, the refusals made before any
change (image missing, no mlflow in it, a downgrade on the same store), the container it asks
docker.container for, and the compose file it writes (tests/ops/mlflow.*/*.json)."""
from __future__ import annotations

import pytest
from pyinfra.api import OperationError

from tasks.operations import docker, mlflow
from tasks.settings import load
from tests.ops.harness import ScriptedHost, cases, execute, expand, plan


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(docker, "_pause", lambda seconds: None)


def planned(op, case):
    settings = load("mlflow", "ops-host", expand(case["settings"]))
    return plan(op, case["facts"], settings=settings, secret_values=case.get("secret_values", {}),
                failed=case.get("failed", False))


def check_plan(op, case):
    if "exception" in case:
        with pytest.raises(OperationError) as raised:
            planned(op, case)
        assert case["exception"] in str(raised.value)
        return None
    result = planned(op, case)
    assert result.rendered() == case["commands"]
    assert result.noop == case.get("noop_description")
    logs = "\n".join(result.logs)
    for text in case.get("logs", []):
        assert text in logs
    return result


@pytest.mark.parametrize("case", cases("mlflow.server"))
def test_server(case):
    result = check_plan(mlflow.server, case)
    if result is None or not result.commands:
        return
    spec = result.commands[0].args[0]
    for key, value in case.get("spec", {}).items():
        got = getattr(spec, key)
        got = sorted(got) if isinstance(got, frozenset) else list(got) if isinstance(got, tuple) else got
        assert got == value, key
    if "run" in case:
        host = ScriptedHost(case["run"])
        ok, _ = execute(result.commands[0], host)
        host.assert_all_asked()
        assert ok is case["result"]
        for text in case.get("errors", []):
            assert text in "\n".join(host.errors)


@pytest.mark.parametrize("case", cases("mlflow.compose_service"))
def test_compose_service(case):
    check_plan(mlflow.compose_service, case)
