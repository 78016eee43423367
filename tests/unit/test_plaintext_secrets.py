"""Values that look like credentials are refused where they would land in clear (a job script,
a container's env, labels or command line): one rule (tasks/core/redact.py through
tasks.settings.types.plaintext_problem), one line naming the host and the key, never the value."""
from __future__ import annotations

import pytest

from tasks.settings import SettingsError, load

PW = "pw-Do-Not-Echo"


def refused(block: str, data: dict) -> str:
    with pytest.raises(SettingsError) as raised:
        load(block, "h1", data)
    text = str(raised.value)
    assert PW not in text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("env", [
    {"DATABASE_URL": f"postgresql://u:{PW}@h/db"},  # by its name
    {"DB": f"postgresql://u:{PW}@h/db"},  # by its value
    {"BROKER": f"redis://:{PW}@redis:6379/0"},
    {"DEPLOY_KEY_PEM": f"-----BEGIN OPENSSH PRIVATE KEY-----{PW}"},
    {"PGPASSWORD": PW},
])
def test_a_scheduled_jobs_env_takes_no_credential(env):
    (name,) = env
    text = refused("cleanup_schedule", {"env": env})
    assert "h1" in text and f"env.{name}" in text


def test_a_scheduled_jobs_plain_env_is_kept():
    s = load("cleanup_schedule", "h1", {"env": {"QUANTLAB_PREFIX": "quant", "URL": "http://u@h:80/x"}})
    assert s.env["URL"] == "http://u@h:80/x"


@pytest.mark.parametrize("data, key", [
    ({"env": {"MLFLOW_TRACKING_URI": f"http://admin:{PW}@tracking:5000"}}, "env.MLFLOW_TRACKING_URI"),
    ({"env": {"APP_PASSWORD": PW}}, "env.APP_PASSWORD"),
    ({"labels": {"backup": f"s3://key:{PW}@bucket"}}, "labels.backup"),
    ({"labels": {"api_token": PW}}, "labels.api_token"),
    ({"extra_args": ["--registry-store-uri", f"postgresql://u:{PW}@db/registry"]}, "extra_args"),
    ({"backend_store_uri": f"postgresql://u:{PW}@db/mlflow"}, "backend_store_uri"),
])
def test_mlflow_takes_no_credential_where_docker_inspect_shows_it(data, key):
    text = refused("mlflow", data)
    assert "h1" in text and key in text


def test_mlflow_plain_values_are_kept():
    s = load("mlflow", "h1", {"env": {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "AKIA"},
                              "labels": {"team": "quant"}, "extra_args": ["--serve-artifacts"]})
    assert s.env["AWS_ACCESS_KEY_ID"] == "AKIA" and s.labels == {"team": "quant"}
