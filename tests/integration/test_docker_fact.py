"""tasks.facts.docker.ContainerInspect's command run by a real shell against the real engine: what it
reads for present and missing objects, and that an engine it cannot reach fails the fact
instead of reading as "no container" (which would plan a create)."""
from __future__ import annotations

import json
import os
import subprocess
import uuid

import docker
import pytest

from tasks.facts.docker import ContainerInspect
from tasks.lab.images import image_refs

pytestmark = pytest.mark.lab


def run_fact(container: str, image: str, **env) -> tuple[int, dict | None, str]:
    fact = ContainerInspect()
    proc = subprocess.run(["sh", "-c", fact.command(container, image)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})
    return proc.returncode, fact.process(proc.stdout.splitlines()), proc.stderr


@pytest.fixture
def container():
    client = docker.from_env()
    name = f"qtfact-{uuid.uuid4().hex[:8]}"
    image = image_refs()["base"]
    made = client.containers.create(image, ["sleep", "60"], name=name + "-previous",
                                     labels={"quantlab.prefix": "qtfact"})
    try:
        yield name, image
    finally:
        made.remove(force=True)


def test_previous_only_and_image(container):
    name, image = container
    code, facts, _ = run_fact(name, image)
    assert code == 0
    assert facts["container"] is None
    assert facts["previous"]["Name"] == f"/{name}-previous"
    assert image in facts["image"]["RepoTags"]


def test_nothing_there_is_an_answer():
    code, facts, stderr = run_fact("qtfact-absent-x", "quantlab/absent:none")
    assert (code, facts) == (0, {"container": None, "previous": None, "image": None}), stderr


def test_unreachable_engine_fails_the_fact(tmp_path):
    code, _, stderr = run_fact("qtfact-absent-x", "quantlab/absent:none",
                               DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert code != 0
    assert "Cannot connect" in stderr or "no.sock" in stderr


SECRET = "Qt-s3cret-value-for-the-fact"


@pytest.fixture
def hostile():
    """A container (created, never started) holding secrets in every place the fact reads."""
    client = docker.from_env()
    name = f"qtfact-{uuid.uuid4().hex[:8]}"
    image = image_refs()["base"]
    made = client.containers.create(
        image, ["sh", "-c", f"exec mlflow server --backend-store-uri postgresql://u:{SECRET}@db/m"], name=name,
        labels={"quantlab.prefix": "qtfact", "backup": f"s3://key:{SECRET}@bucket"},
        environment=[f"PGPASSWORD={SECRET}", f"APP_URL=https://admin:{SECRET}@app", f"CONN={SECRET}",
                     f"MULTI_TOKEN=a\n{SECRET}", f'Q"UOTED={SECRET}', "PLAIN=héllo <&>", "EMPTY="])
    try:
        yield name, image
    finally:
        made.remove(force=True)


def test_the_engines_answer_is_filtered_on_the_host(hostile):
    from tasks.core.redact import redact_inspect

    name, image = hostile
    fact = ContainerInspect()
    proc = subprocess.run(["sh", "-c", fact.command(name, image, "CONN")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert SECRET.encode().hex() not in proc.stdout
    facts = fact.process(proc.stdout.splitlines())
    env = dict(e.partition("=")[::2] for e in facts["container"]["Config"]["Env"])
    for key in ("PGPASSWORD", "APP_URL", "CONN", "MULTI_TOKEN", 'Q"UOTED'):
        assert env[key].startswith("***sha256:"), key
    assert env["PLAIN"] == "héllo <&>" and env["EMPTY"] == ""
    assert facts["container"]["Config"]["Labels"]["backup"] == "s3://key:***@bucket"
    assert facts["container"]["Config"]["Cmd"][2].endswith("postgresql://u:***@db/m")
    # the same as the Python twin the ops tests replay, fed the CLI's own unfiltered answer
    for kind, obj, key in (("container", name, "container"), ("image", image, "image")):
        raw = json.loads(subprocess.run(["docker", kind, "inspect", "--format", "{{json .}}", obj],
                                        capture_output=True, text=True, check=True).stdout)
        assert facts[key] == redact_inspect(raw, name, ["CONN"]), kind
