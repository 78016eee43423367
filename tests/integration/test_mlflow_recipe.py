"""The production MLflow recipe (tasks/lab/recipes/mlflowprod): its pip lines, built on the lab's
stand-in for the official image's Python, give the PostgreSQL and S3 clients a tracking server with a
postgresql:// store and s3:// artifacts imports, and its healthcheck needs no curl."""
from __future__ import annotations

import subprocess

import pytest

from tasks.lab.images import image_refs

pytestmark = pytest.mark.lab


def run(image: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", command[0],
                           image, *command[1:]], capture_output=True, text=True, timeout=120)


def test_the_recipe_adds_the_store_and_artifact_clients():
    refs = image_refs()
    script = ("import importlib.metadata as m, psycopg2, boto3;"
              "print(m.version('psycopg2-binary'), m.version('boto3'))")
    proc = run(refs["mlflowprod"], "python", "-c", script)
    assert proc.returncode == 0, proc.stderr
    psycopg2_version, boto3_version = proc.stdout.split()
    assert psycopg2_version.startswith("2.") and boto3_version.startswith("1.")
    # The stand-in base has neither: the recipe's lines are what brought them.
    assert run(refs["pipbase"], "python", "-c", "import psycopg2").returncode != 0


def test_the_healthcheck_runs_without_curl():
    refs = image_refs()
    inspect = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}",
                              refs["mlflowprod"]], capture_output=True, text=True, check=True)
    assert "curl" not in inspect.stdout and "urllib.request" in inspect.stdout
