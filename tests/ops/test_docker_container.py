"""tasks.operations.docker.container from recorded `docker inspect` output, without Docker:
each case (tests/ops/docker.container/*.json) gives the facts and what the operation must plan
(noop, update, recreate, create, finish), then the commands its callback runs at execution time
with the host's recorded answers, and how it ends (kept, or rolled back and why).

Two shorthands in ``run`` stand for the long shell the recreate sends (its text is tested in
tests/unit/test_create_body.py): ``{"engine": "curl"}`` is ENGINE_COMMAND answering that client
on /var/run/docker.sock (or failing: ``"ok": false``), ``{"create": name, "folder": dir}`` is
create_command posting ``dir/body.json``. ``body`` checks the uploaded create request by key path
(``"HostConfig/Memory"``), ``body_lacks`` lists paths it must not have."""
from __future__ import annotations

import json
import re

import pytest
from pyinfra.api import OperationError

from tasks.core.container_spec import ContainerSpec
from tasks.core.create_body import ENGINE_COMMAND, Engine, create_command
from tasks.core.recap import plain
from tasks.operations import docker
from tests.ops.harness import ScriptedHost, cases, execute, expand, plan, verifier


def container_spec(data: dict) -> ContainerSpec:
    """A ContainerSpec from its JSON form (lists for tuples and sets)."""
    tuples = ("command", "entrypoint", "ports", "networks")
    sets = ("secret_env_keys", "managed_env_keys")
    return ContainerSpec(**{key: (tuple(value) if key in tuples and value is not None
                                  else frozenset(value) if key in sets else value)
                            for key, value in data.items()})


PREFIX = re.compile(r"^\[[^\]]+\] ")


def plan_lines(logs: list[str], name: str) -> list[str]:
    """The changes the plan logged under '<action> <name>:', one a line (every line is printed
    with the host's prefix, so a fleet's plans never interleave unnamed)."""
    lines = [PREFIX.sub("", plain(line), count=1) for message in logs for line in message.splitlines()]
    for index, line in enumerate(lines):
        if line.endswith(f" {name}:"):
            body = []
            for following in lines[index + 1:]:
                if not following.startswith("    "):
                    break
                body.append(following.strip())
            return body
    return []


SOCKET = "/var/run/docker.sock"


def shorthand(item: dict) -> dict:
    """A ``run`` item with the engine and create shorthands written out."""
    if "engine" in item:
        ok = item.get("ok", True)
        return {"command": ENGINE_COMMAND, "ok": ok, "stderr": item.get("stderr", ""),
                "stdout": f"engine {item['engine']} {SOCKET}" if ok else ""}
    if "create" in item:
        folder = item["folder"]
        command = create_command(Engine(SOCKET, item.get("client", "curl")), f"{folder}/body.json",
                                 f"{folder}/answer.json", item["create"])
        return {"command": command, **{k: v for k, v in item.items() if k in ("ok", "stdout", "stderr")}}
    return item


def at(data, path: str):
    for key in path.split("/"):
        data = data[key]
    return data


def check_body(case: dict, uploads: dict[str, str]) -> None:
    bodies = [json.loads(text) for path, text in uploads.items() if path.endswith("/body.json")]
    if "body" not in case and "body_lacks" not in case:
        return
    assert len(bodies) == 1, f"expected one create request, got {len(bodies)}"
    for path, value in expand(case.get("body", {})).items():
        assert at(bodies[0], path) == value, path
    for path in case.get("body_lacks", []):
        parent, _, last = path.rpartition("/")
        assert last not in (at(bodies[0], parent) if parent else bodies[0]), path


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
    host = ScriptedHost([shorthand(item) for item in case["run"]])
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
    check_body(case, host.uploads)
    for text in case.get("logs", []):
        assert any(text in line for line in logs), text
    for text in case.get("secrets_never_logged", []):
        assert text not in "\n".join(logs + host.errors)
