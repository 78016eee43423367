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
