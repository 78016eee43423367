"""Names checked against their targets' own rules before anything runs (tasks/core/names.py,
tasks/settings/types.py): Docker container, network and image names, compose services and
projects, PostgreSQL identifiers, host paths. Each refusal is one line naming host and key."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tasks import settings as host_settings
from tasks.core import names
from tasks.settings import SettingsError

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "reference",
    [
        "quantlab/mlflow:2.9.2",
        "ghcr.io/mlflow/mlflow:v2.9.2",
        "postgres:15",
        "localhost:5000/team/mlflow:2-9_x",
        "registry.example.com:443/a/b/c",
        f"busybox@{DIGEST}",
        f"r.example.com/x:1@{DIGEST}",
        "foo__bar",
        "foo--bar",
        "Registry.Example.com/x",  # a registry host may have capitals; the path may not
        "x:" + "t" * 128,
    ],
)
def test_image_references_docker_parses_are_accepted(reference):
    assert names.image_reference_problem(reference) is None


@pytest.mark.parametrize(
    "reference",
    [
        "--privileged",
        "-v/:/host",
        "quantlab/MLflow",
        "Quantlab/mlflow",  # no '.', ':' or localhost: a path component, and capitals
        "UPPER",
        "a b",
        "x;rm -rf /",
        "$(touch /tmp/x)",
        "x:",
        "x:.t",
        "x:-t",
        "x@sha256:1",
        "foo___bar",
        "a.-b",
        "[::1]:5000/x",
        "x:" + "t" * 129,
        "a" * 256,
        "x\n",
        "",
    ],
)
def test_what_is_not_an_image_reference_is_refused(reference):
    assert names.image_reference_problem(reference)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_the_grammar_agrees_with_the_engine_here():
    """The engine's own parser (an `image inspect` of a missing image says "invalid reference
    format" or "No such image") against ours, both ways. Read-only: nothing exists or is made."""
    probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no engine answers")
    refs = ["quantlab/h2probe:1", "localhost:5000/h2/probe:t", f"h2probe@{DIGEST}", "Quantlab/h2probe",
            "quantlab/H2probe", "h2probe:", "h2probe___x", "-h2probe", "h2probe:.t", "[::1]:5000/h2probe",
            "h2.example.com/h2probe:x_1", "h2probe:" + "t" * 129]  # fmt: skip
    for ref in refs:
        out = subprocess.run(["docker", "image", "inspect", "--", ref], capture_output=True, text=True)
        engine_ok = "invalid reference" not in out.stderr
        assert out.returncode != 0, ref  # none of these exist
        assert engine_ok == (names.image_reference_problem(ref) is None), (ref, out.stderr)


@pytest.mark.parametrize("name", ["quant-mlflow", "q1", "quant_mlflow_1", "a.b-c_d", "A9"])
def test_container_names_docker_takes(name):
    assert names.container_name_problem(name) is None


@pytest.mark.parametrize("name", ["m", "-x", ".x", "_x", "a b", "a'b", "a;b", "a/b", "a$(x)", "é1", "a" * 256])
def test_container_names_docker_refuses(name):
    assert names.container_name_problem(name)


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/srv/quant/docker-compose.yml", True), ("/a b/c", True), ("relative/x", False), ("/a/../etc", False),
     ("/a/..", False), ("/a/..b", True), ("/a\rExecStartPre=/bin/sh", False), ("/a\x85b", False),
     ("/a\u2028b", False), ("/a\x00b", False), ("/" + "a" * 5000, False)],
)  # fmt: skip
def test_host_paths(path, ok):
    assert (names.host_path_problem(path) is None) is ok


# -- in the settings blocks ------------------------------------------------------------------------

POSTGRES = {"container": "quant-postgres"}


def _problem(block: str, data: dict) -> str:
    with pytest.raises(SettingsError) as err:
        host_settings.load(block, "h1", data)
    text = str(err.value)
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(
    ("block", "data", "key", "says"),
    [
        ("mlflow", {"image": "--privileged"}, "mlflow.image", "is not an image reference"),
        ("mlflow", {"image": "quantlab/mlflow:2.9.2 --privileged"}, "mlflow.image", "is not an image reference"),
        ("mlflow", {"image": "Quant/MLflow"}, "mlflow.image", "upper-case"),
        ("mlflow", {"container_name": "x'; touch /tmp/p; '"}, "mlflow.container_name", "not a Docker container"),
        ("mlflow", {"network": "--net=host"}, "mlflow.network", "not a Docker network"),
        ("mlflow", {"compose_file": "docker-compose.yml"}, "mlflow.compose_file", "absolute"),
        ("mlflow", {"compose_file": "/srv/../etc/x.yml"}, "mlflow.compose_file", "'..'"),
        ("mlflow", {"compose_service": "-d"}, "mlflow.compose_service", "not a compose service"),
        ("mlflow", {"compose_project": "Quant Stack"}, "mlflow.compose_project", "not a compose project"),
        ("backend", {"container": "b"}, "backend.container", "two characters at least"),
        ("backend", {"container": "quant-backend", "dockerfile": "/a/../../etc/passwd"}, "backend.dockerfile",
         "'..'"),
        ("backend", {"container": "quant-backend", "compose_service": "--build"}, "backend.compose_service",
         "not a compose service"),
        ("postgres", {"container": "pg$(id)"}, "postgres.container", "not a Docker container"),
        ("postgres", {**POSTGRES, "superuser": "s" * 64}, "postgres.superuser", "longer than 63 bytes"),
        ("postgres", {**POSTGRES, "database": "é" * 32}, "postgres.database", "longer than 63 bytes"),
        ("remediate", {"containers": {"mlflow": "`reboot`"}}, "remediate.containers.mlflow", "not a Docker"),
        ("remediate", {"record_path": "/var/lib/../../etc/shadow"}, "remediate.record_path", "'..'"),
        ("stack", {"services": {"redis": {"container": "r;id"}}}, "stack.services.redis.container", "not a Docker"),
        ("stack", {"services": {"mlflow": {"container": "-it"}}}, "stack.services.mlflow.container", "not a Docker"),
        ("stack", {"services": {"s3": {"container": "quant-minio", "bucket": "../admin?x=1"}}},
         "stack.services.s3.bucket", "not an S3 bucket"),
    ],
)  # fmt: skip
def test_bad_names_are_refused_naming_host_and_key(block, data, key, says):
    text = _problem(block, data)
    lines = [line for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if key in line]
    assert mine, text
    assert says in mine[0], text
    assert "h1" in text


def test_a_login_roles_database_is_a_postgres_name():
    text = _problem("stack", {"services": {"postgres": {
        "container": "quant-postgres",
        "roles": [{"name": "quant_user", "password": {"env": "X"}, "database": "d" * 70}]}}})  # fmt: skip
    assert "stack.services.postgres.roles[0].database" in text and "63 bytes" in text


def test_good_names_pass():
    mlflow = host_settings.load("mlflow", "h1", {
        "image": "ghcr.io/mlflow/mlflow:v2.9.2", "container_name": "quant_mlflow_1", "network": "quant_default",
        "compose_file": "/srv/quant stack/docker-compose.yml", "compose_service": "mlflow",
        "compose_project": "quant"})  # fmt: skip
    assert mlflow.image == "ghcr.io/mlflow/mlflow:v2.9.2" and mlflow.network == "quant_default"
    pg = host_settings.load("postgres", "h1", {**POSTGRES, "superuser": "Admin \"root\"", "database": "qüant"})
    assert pg.superuser == 'Admin "root"'  # any text: it is always quoted (quote_ident)
