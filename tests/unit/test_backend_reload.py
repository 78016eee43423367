"""The backend reload fix's pure half: reload arguments, Dockerfile and compose patches (each
idempotent), the desired container, and settings validation."""
from __future__ import annotations

import json

import pytest
import yaml

from tasks.operations import backend_reload as br
from tasks.core.compose import ComposeError
from tasks.core.container_spec import MANAGED_ENV_LABEL, diff_spec, spec_from_inspect

UVICORN = ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--reload"]
RECIPE = """# The quant backend
FROM base
ENV PATH=/opt/backend/bin:/usr/bin
WORKDIR /app
HEALTHCHECK CMD curl -fsS http://127.0.0.1:8000/health || exit 1
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--reload"]
"""


def test_reload_delay_added_once_after_reload():
    assert br.reload_args(UVICORN, 2) == UVICORN + ["--reload-delay", "2"]
    assert br.reload_args(UVICORN + ["--reload-delay", "2"], 2) == UVICORN + ["--reload-delay", "2"]
    assert br.reload_args(UVICORN + ["--reload-delay", "0.25"], 2) == UVICORN + ["--reload-delay", "2"]
    assert br.reload_args(UVICORN + ["--reload-delay=5"], 1.5) == UVICORN + ["--reload-delay=1.5"]
    inner = ["uvicorn", "--reload", "main:app"]
    assert br.reload_args(inner, 2) == ["uvicorn", "--reload", "--reload-delay", "2", "main:app"]
    assert br.reload_args(["uvicorn", "main:app"], 2) == ["uvicorn", "main:app"]  # no watcher


def test_dockerfile_cmd_json_array_and_env_once():
    text, changed = br.patch_dockerfile(RECIPE, 2)
    assert changed
    assert 'CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--reload", ' \
           '"--reload-delay", "2"]\n' in text
    assert "ENV WATCHFILES_FORCE_POLLING=true\nCMD [" in text
    assert text.startswith("# The quant backend\nFROM base\n") and "HEALTHCHECK CMD curl" in text
    again, changed_again = br.patch_dockerfile(text, 2)
    assert (again, changed_again) == (text, False)


def test_dockerfile_shell_form_becomes_json_array():
    text, changed = br.patch_dockerfile("FROM x\nCMD uvicorn main:app --reload\n", 2)
    assert changed
    assert json.loads(text.splitlines()[-1][4:]) == ["uvicorn", "main:app", "--reload",
                                                     "--reload-delay", "2"]
    assert br.patch_dockerfile(text, 2) == (text, False)


def test_dockerfile_continuation_lines_and_last_cmd():
    source = ('FROM a AS build\nCMD ["true"]\nFROM b\nCMD ["uvicorn", "main:app", \\\n'
              '     "--reload"]\nEXPOSE 8000\n')
    text, changed = br.patch_dockerfile(source, 2, force_polling=False)
    assert changed and 'CMD ["true"]' in text and text.endswith("EXPOSE 8000\n")
    assert 'CMD ["uvicorn", "main:app", "--reload", "--reload-delay", "2"]\n' in text
    assert br.patch_dockerfile(text, 2, force_polling=False) == (text, False)


def test_dockerfile_polling_env_false_is_corrected_true_is_kept():
    text, changed = br.patch_dockerfile(RECIPE.replace("WORKDIR", "ENV WATCHFILES_FORCE_POLLING=false\nWORKDIR"), 2)
    assert "WATCHFILES_FORCE_POLLING=false" not in text and text.count("WATCHFILES_FORCE_POLLING=true") == 1
    kept = RECIPE.replace("WORKDIR", "ENV WATCHFILES_FORCE_POLLING=true\nWORKDIR")
    patched, _ = br.patch_dockerfile(kept, 2)
    assert patched.count("WATCHFILES_FORCE_POLLING") == 1


@pytest.mark.parametrize("source, message", [
    ("FROM x\n", "no CMD"),
    ("FROM x\nCMD uvicorn main:app --reload && echo $HOME\n", "shell form and uses the shell"),
    ('FROM x\nCMD ["uvicorn", --reload]\n', "not a valid JSON array"),
])
def test_dockerfile_refusals(source, message):
    with pytest.raises(ValueError, match=message):
        br.patch_dockerfile(source, 2)


COMPOSE = """# users' compose file
services:
  backend:
    image: quant/backend
    environment:
      DB_USER: quant_user
      PGPASSWORD: ${BACKEND_PGPASSWORD}
  mlflow:
    image: quant/mlflow
    command: [mlflow, server]
"""


def test_compose_env_added_command_from_dockerfile_left_alone():
    text, changed = br.patch_compose_backend(COMPOSE, "backend", 2, True)
    doc = yaml.safe_load(text)
    assert changed and doc["services"]["backend"]["environment"] == {
        "DB_USER": "quant_user", "PGPASSWORD": "${BACKEND_PGPASSWORD}", "WATCHFILES_FORCE_POLLING": "true"}
    assert "command" not in doc["services"]["backend"]
    assert doc["services"]["mlflow"] == yaml.safe_load(COMPOSE)["services"]["mlflow"]
    assert br.patch_compose_backend(text, "backend", 2, True) == (text, False)


def test_compose_command_patched_or_set_when_no_dockerfile_carries_it():
    with_command = COMPOSE.replace("    image: quant/backend\n",
                                   "    image: quant/backend\n    command: uvicorn main:app --reload\n")
    text, _ = br.patch_compose_backend(with_command, "backend", 2, True)
    assert yaml.safe_load(text)["services"]["backend"]["command"] == [
        "uvicorn", "main:app", "--reload", "--reload-delay", "2"]
    assert br.patch_compose_backend(text, "backend", 2, True)[1] is False
    fallback, _ = br.patch_compose_backend(COMPOSE, "backend", 2, True, UVICORN)
    assert yaml.safe_load(fallback)["services"]["backend"]["command"] == UVICORN + ["--reload-delay", "2"]
    assert br.patch_compose_backend(fallback, "backend", 2, True, UVICORN)[1] is False


def test_compose_list_environment_and_missing_service():
    listed = COMPOSE.replace("      DB_USER: quant_user\n      PGPASSWORD: ${BACKEND_PGPASSWORD}\n",
                             "      - DB_USER=quant_user\n")
    text, _ = br.patch_compose_backend(listed, "backend", 2, True)
    assert yaml.safe_load(text)["services"]["backend"]["environment"] == [
        "DB_USER=quant_user", "WATCHFILES_FORCE_POLLING=true"]
    with pytest.raises(ComposeError, match="service 'api' is not in the compose file"):
        br.patch_compose_backend(COMPOSE, "api", 2, True)


def inspect(cmd, env, labels=None):
    return {"Name": "/q-backend", "Image": "sha256:abc",
            "Config": {"Image": "quant/backend:1", "Cmd": cmd, "Entrypoint": None,
                       "Env": env, "Labels": labels or {}},
            "HostConfig": {"Memory": 0, "RestartPolicy": {"Name": "unless-stopped"},
                           "PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "15504"}]}},
            "NetworkSettings": {"Networks": {"q-net": {}}}}


IMAGE = {"Id": "sha256:abc", "Config": {"Env": ["PATH=/opt/backend/bin:/usr/bin"], "Cmd": UVICORN,
                                        "Entrypoint": None, "Labels": {"maintainer": "x"}}}


def test_desired_container_adds_polling_and_delay_and_keeps_the_rest():
    current = inspect(UVICORN, ["PATH=/opt/backend/bin:/usr/bin", "DB_USER=quant_user", "PGPASSWORD=s3cret"],
                      {"maintainer": "x", "quantlab.prefix": "q"})
    settings = br.BackendSettings(container="q-backend")
    desired = br.desired_container(current, IMAGE, settings)
    assert desired.command == tuple(UVICORN + ["--reload-delay", "2"])
    assert desired.env == {"DB_USER": "quant_user", "PGPASSWORD": "s3cret", "WATCHFILES_FORCE_POLLING": "true"}
    assert desired.secret_env_keys == {"PGPASSWORD"}
    assert desired.labels == {"quantlab.prefix": "q"}
    assert desired.ports == ("127.0.0.1:15504:8000/tcp",) and desired.networks == ("q-net",)
    plan = diff_spec(desired, spec_from_inspect(current))
    assert plan.action == "recreate"
    assert "s3cret" not in " ".join(str(c) for c in plan.changes)
    # What the recreated container looks like: nothing left to change.
    fixed = inspect(list(desired.command), ["PATH=/opt/backend/bin:/usr/bin"]
                    + [f"{k}={v}" for k, v in desired.env.items()],
                    {**desired.labels, "maintainer": "x", MANAGED_ENV_LABEL: ",".join(sorted(desired.env))})
    again = br.desired_container(fixed, IMAGE, settings)
    assert diff_spec(again, spec_from_inspect(fixed)).action == "none"


def test_settings_validation_names_host_and_key():
    data = {"backend_defaults": {"reload_delay": 2, "port": 8000},
            "backend": {"container": "q-backend", "dockerfile": "relative/Dockerfile", "reload": 1}}
    with pytest.raises(br.BackendSettingsError) as error:
        br.backend_settings("web1", data)
    text = str(error.value)
    assert "host 'web1': backend.dockerfile: must be an absolute path" in text
    assert "backend.reload: unknown key" in text
    with pytest.raises(br.BackendSettingsError, match="container: missing"):
        br.backend_settings("web1", {"backend": {}})
    ok = br.backend_settings("web1", {"backend": {"container": "b", "reload_delay": 1.5}})
    assert ok.reload_delay == 1.5 and ok.force_polling is True
