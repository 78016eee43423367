"""tasks.operations.docker.container from recorded `docker inspect` output, without Docker:
each case (tests/ops/docker.container/*.json) gives the facts and what the operation must plan
(noop, update, recreate, create, finish), then the commands its callback runs at execution time
with the host's recorded answers, and how it ends (kept, or rolled back and why)."""
from __future__ import annotations

import pytest
from pyinfra.api import OperationError

from tasks.core.container_spec import ContainerSpec
from tasks.operations import docker
from tests.ops.harness import ScriptedHost, cases, execute, expand, plan, verifier


def container_spec(data: dict) -> ContainerSpec:
    """A ContainerSpec from its JSON form (lists for tuples and sets)."""
    tuples = ("command", "entrypoint", "ports", "networks")
    sets = ("secret_env_keys", "managed_env_keys")
    return ContainerSpec(**{key: (tuple(value) if key in tuples and value is not None
                                  else frozenset(value) if key in sets else value)
                            for key, value in data.items()})


def plan_lines(logs: list[str], name: str) -> list[str]:
    """The changes the plan logged under '<action> <name>:', one a line."""
    for message in logs:
        head, _, body = message.partition("\n")
        if head.endswith(f" {name}:"):
            return [line.strip() for line in body.splitlines()]
    return []


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(docker, "_pause", lambda seconds: None)


@pytest.mark.parametrize("case", cases("docker.container"))
def test_container(case):
    spec = container_spec(expand(case["spec"]))
    verify = verifier(case.get("verify"))
    if "exception" in case:
        with pytest.raises(OperationError, match=case["exception"]):
            plan(docker.container, case["facts"], spec=spec, verify=verify)
        return
    planned = plan(docker.container, case["facts"], spec=spec, verify=verify,
                   failed=case.get("failed", False))
    assert planned.rendered() == case["commands"]
    if "noop_description" in case:
        assert planned.noop == case["noop_description"]
    else:
        assert planned.noop is None
    if "plan" in case:
        assert plan_lines(planned.logs, spec.name) == case["plan"]
    if "run" not in case:
        return
    host = ScriptedHost(case["run"])
    result, logs = execute(planned.commands[0], host)
    host.assert_all_asked()
    assert result is case["result"]
    errors = "\n".join(host.errors)
    for text in case.get("errors", []):
        assert text in errors
    if result:
        assert not host.errors
    for upload in host.uploads.values():
        for line in case.get("upload_lines", []):
            assert line in upload.splitlines()
