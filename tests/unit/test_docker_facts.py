"""tasks.facts.docker.ContainerInspect: the command it sends, run by a real `sh` with a stand-in
`docker` on PATH that prints what the real CLI prints for the fact's `--format` template (the real
engine: tests/integration/test_docker_fact.py). What it reads, and what it never prints: secret env
values, URL passwords, and (when a call fails) anything but the errors."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from tasks.core.redact import go_json_string, redact_inspect
from tasks.facts.docker import PREVIOUS_SUFFIX, SECTION, ContainerInspect

SECRET = "hunter2-Secret-Value"
NAME, IMAGE = "quant-mlflow", "quantlab/mlflow2:abc"

FAKE_DOCKER = """#!{python}
import json, os, sys
answers = json.load(open(os.environ["FAKE_DOCKER"]))
kind = sys.argv[1]  # container | image
answer = answers[kind]
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("rc", 0))
"""


def rendered(obj: dict) -> str:
    """What `docker inspect --format <the fact's template>` prints for one object."""
    lines = ["O " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False)]
    for entry in (obj.get("Config") or {}).get("Env") or []:
        lines.append(f"E {go_json_string(entry)}\t{entry.encode().hex()}")
    return "\n".join(lines) + "\n\n"


def container(name: str = NAME, env: list[str] | None = None, **config) -> dict:
    return {"Id": f"id-{name}", "Name": f"/{name}", "Image": "sha256:img",
            "Config": {"Env": env if env is not None else [], "Cmd": ["mlflow", "server"], **config},
            "HostConfig": {"Memory": 0}}


IMAGE_OBJ = {"Id": "sha256:img", "RepoTags": [IMAGE], "Config": {"Env": ["PATH=/usr/bin"]},
             "ContainerConfig": {"Env": [f"BUILD_TOKEN={SECRET}"]}}


@pytest.fixture
def fake_docker(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)

    def run(answers: dict, secret_keys: str = "", path: str | None = None):
        spec = tmp_path / "answers.json"
        spec.write_text(json.dumps(answers))
        env = {**os.environ, "FAKE_DOCKER": str(spec), "PATH": path or f"{folder}:{os.environ['PATH']}"}
        fact = ContainerInspect()
        proc = subprocess.run(["/bin/sh", "-c", fact.command(NAME, IMAGE, secret_keys)], capture_output=True,
                              text=True, env=env, timeout=30)
        return proc, fact.process(proc.stdout.splitlines())

    run.folder = folder
    return run


def answers(containers: list[dict], image: dict | None, **errors) -> dict:
    return {"container": {"stdout": "".join(rendered(c) for c in containers),
                          "stderr": errors.get("container_stderr", ""), "rc": errors.get("container_rc", 0)},
            "image": {"stdout": rendered(image) if image else "",
                      "stderr": errors.get("image_stderr", ""), "rc": errors.get("image_rc", 0)}}


def test_command_is_two_docker_calls_in_one_remote_command():
    command = ContainerInspect().command(NAME, IMAGE)
    assert command.count("docker container inspect") == 1 and command.count("docker image inspect") == 1
    assert f'--format "$t" -- {NAME} {NAME}{PREVIOUS_SUFFIX}' in command


def test_command_quotes_what_it_is_given():
    command = ContainerInspect().command("a b", "img;rm -rf /", "A,B;rm,C")
    assert "'a b' 'a b-previous'" in command
    assert "'img;rm -rf /'" in command
    assert "keys=' A C '" in command  # a key that is not a variable name is left out


def test_reads_container_previous_and_image(fake_docker):
    proc, facts = fake_docker(answers([container(), container(NAME + PREVIOUS_SUFFIX)], IMAGE_OBJ))
    assert proc.returncode == 0, proc.stderr
    assert facts["container"]["Id"] == f"id-{NAME}"
    assert facts["previous"]["Id"] == f"id-{NAME}{PREVIOUS_SUFFIX}"
    assert facts["image"]["RepoTags"] == [IMAGE]


def test_missing_objects_are_an_answer(fake_docker):
    proc, facts = fake_docker(answers([container(NAME + PREVIOUS_SUFFIX)], None,
                                      container_stderr=f"Error: No such container: {NAME}\n", container_rc=1,
                                      image_stderr=f"Error: No such image: {IMAGE}\n", image_rc=1))
    assert proc.returncode == 0, proc.stderr
    assert facts["container"] is None and facts["image"] is None
    assert facts["previous"]["Name"] == f"/{NAME}{PREVIOUS_SUFFIX}"


def test_a_name_that_itself_ends_in_previous():
    lines = [f"{SECTION}containers x-previous", "O " + json.dumps(container("x-previous")),
             "O " + json.dumps(container("x-previous-previous")), f"{SECTION}image"]
    facts = ContainerInspect().process(lines)
    assert facts["container"]["Name"] == "/x-previous"
    assert facts["previous"]["Name"] == "/x-previous-previous"


def test_no_output_at_all_reads_as_nothing():
    assert ContainerInspect().process([]) == {"container": None, "previous": None, "image": None}


HOSTILE_ENV = [
    f"PGPASSWORD={SECRET}",
    f"AWS_SECRET_ACCESS_KEY={SECRET}",
    f"MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:{SECRET}@db/mlflow",  # by its look
    f"CONNECTION_STRING=AccountName=x;AccountKey={SECRET}",  # by the caller's secret_keys
    f'QUOTED=a"b\\c:{SECRET}',  # quotes and backslashes; secret by secret_keys
    f"PEM=-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----",
    f"MULTI_TOKEN=line1\n{SECRET}",
    f"BROKER=redis://:{SECRET}@redis:6379/0",
    "AWS_ACCESS_KEY_ID=AKIAPUBLIC",
    "MLFLOW_S3_ENDPOINT_URL=http://minio:9000",
    "UNICODE=héllo <&> \u2028",
    "EMPTY=",
    "NOEQUALS",
]


def test_secret_env_values_never_reach_the_output(fake_docker):
    obj = container(env=HOSTILE_ENV, Labels={"backup": f"s3://key:{SECRET}@bucket"},
                    Healthcheck={"Test": ["CMD", "curl", f"http://admin:{SECRET}@localhost/health"]})
    proc, facts = fake_docker(answers([obj], IMAGE_OBJ), secret_keys="CONNECTION_STRING,QUOTED")
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert SECRET.encode().hex() not in proc.stdout
    env = dict(e.partition("=")[::2] for e in facts["container"]["Config"]["Env"])
    for key in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_BACKEND_STORE_URI", "CONNECTION_STRING",
                "QUOTED", "PEM", "MULTI_TOKEN", "BROKER"):
        assert env[key].startswith("***sha256:"), key
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAPUBLIC"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["UNICODE"] == "héllo <&> \u2028"
    assert facts["container"]["Config"]["Labels"]["backup"] == "s3://key:***@bucket"
    assert facts["image"]["ContainerConfig"]["Env"] is None  # other env lists are dropped
    # exactly what the Python filter (which the ops tests replay) makes of the same documents
    keys = ["CONNECTION_STRING", "QUOTED"]
    assert facts["container"] == redact_inspect(obj, NAME, keys)
    assert facts["image"] == redact_inspect(IMAGE_OBJ, NAME, keys)


def test_an_engine_error_fails_the_fact_and_prints_only_the_error(fake_docker):
    # The containers were read (secrets and all), then the image inspect failed otherwise than
    # "No such ...": pyinfra shows a failed fact's output at any verbosity, so none may be there.
    obj = container(env=[f"PGPASSWORD={SECRET}", f"PLAIN_LOOKING={SECRET}"])
    proc, facts = fake_docker(answers([obj], None, image_rc=1,
                                      image_stderr="Error response from daemon: permission denied\n"))
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""
    assert "permission denied" in proc.stderr
    assert SECRET not in proc.stderr
    assert facts == {"container": None, "previous": None, "image": None}


def test_unexpected_output_is_never_echoed(fake_docker):
    bad = {"container": {"stdout": f"a stray line with {SECRET}\n", "rc": 0}, "image": {"stdout": ""}}
    proc, _ = fake_docker(bad)
    assert proc.returncode != 0 and proc.stdout.strip() == ""
    assert SECRET not in proc.stderr and "unexpected line" in proc.stderr


def test_without_a_digest_tool_the_fact_fails_and_prints_nothing(fake_docker, tmp_path):
    # A PATH with the shell tools the filter needs but no sha256sum, openssl or python3.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("awk", "grep", "sed", "mawk", "cat"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    obj = container(env=[f"PGPASSWORD={SECRET}"])
    proc, _ = fake_docker(answers([obj], IMAGE_OBJ), path=f"{fake_docker.folder}:{tools}")
    assert proc.returncode != 0 and proc.stdout.strip() == ""
    assert "no sha256sum, openssl or python3" in proc.stderr
    assert SECRET not in proc.stderr


@pytest.mark.parametrize("hasher", ["openssl", "python3"])
def test_the_digest_is_the_same_with_each_tool(fake_docker, tmp_path, hasher):
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("awk", "grep", "sed", "mawk", "cat", hasher):
        found = sys.executable if tool == "python3" else shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed here")
        (tools / tool).symlink_to(found)
    obj = container(env=[f"PGPASSWORD={SECRET}"])
    proc, facts = fake_docker(answers([obj], IMAGE_OBJ), path=f"{fake_docker.folder}:{tools}")
    assert proc.returncode == 0, proc.stderr
    assert facts["container"] == redact_inspect(obj, NAME)

