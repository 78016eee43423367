"""The backend reload fix's pure half: reload arguments, Dockerfile and compose patches (each
idempotent), the desired container, and settings validation."""
from __future__ import annotations

import json

import pytest
import yaml

from tasks.core import backend_patch as br
from tasks.core.compose import ComposeError
from tasks.core.container_spec import MANAGED_ENV_LABEL, diff_spec, spec_from_inspect
from tasks.settings import SettingsError, load
from tasks.settings.types import looks_secret

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
    # The file's string form is kept (the patch is round trip: only the managed lines change).
    assert yaml.safe_load(text)["services"]["backend"]["command"] == "uvicorn main:app --reload --reload-delay 2"
    assert text.startswith("# users' compose file\n")
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
    settings = load("backend", "h1", {"container": "q-backend"})
    desired = br.desired_container(current, IMAGE, settings.reload_delay, settings.force_polling, looks_secret)
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
    again = br.desired_container(fixed, IMAGE, settings.reload_delay, settings.force_polling, looks_secret)
    assert diff_spec(again, spec_from_inspect(fixed)).action == "none"


def test_settings_validation_names_host_and_key():
    group = {"reload_delay": 2, "port": 8000}
    with pytest.raises(SettingsError) as error:
        load("backend", "web1", {"container": "q-backend", "dockerfile": "relative/Dockerfile", "reload": 1},
             group)
    text = str(error.value)
    assert "host 'web1': backend.dockerfile: must be an absolute path" in text
    assert "backend.reload: unknown setting; did you mean 'reload_delay'?" in text
    with pytest.raises(SettingsError, match="backend.container: is required"):
        load("backend", "web1", {})
    ok = load("backend", "web1", {"container": "bk", "reload_delay": 1.5})
    assert ok.reload_delay == 1.5 and ok.force_polling is True
    assert (ok.compose_service, ok.port, ok.health_path) == ("backend", 8000, "/health")


@pytest.mark.parametrize("data, expected", [
    ({"reload_delay": 0}, "backend.reload_delay: must be > 0"),
    ({"reload_delay": 61}, "backend.reload_delay: must be <= 60"),
    ({"reload_delay": True}, "backend.reload_delay"),
    ({"force_polling": "yes"}, "backend.force_polling: is not true/false"),
    ({"port": 70000}, "backend.port: must be <= 65535"),
    ({"port": "8000"}, "backend.port: is not a whole number"),
    ({"compose_file": "docker-compose.yml"}, "backend.compose_file: must be an absolute path"),
])
def test_settings_rules(data, expected):
    with pytest.raises(SettingsError) as error:
        load("backend", "web1", {"container": "bk", **data})
    assert expected in str(error.value)


def test_reload_delay_as_a_duration():
    assert load("backend", "web1", {"container": "bk", "reload_delay": "1500ms"}).reload_delay == 1.5


def scripted(logs: str):
    """A host answering the backend checks: running, /health answers, these logs."""
    state = json.dumps({"Status": "running", "StartedAt": "2026-01-01T00:00:00Z", "OOMKilled": False,
                        "Restarting": False, "ExitCode": 0})
    asked = []

    def run(command: str):
        asked.append(command)
        if command.startswith("docker inspect"):
            return True, state
        if command.startswith("docker exec q-backend sh -c"):
            return True, '{"status":"ok"}'
        if command.startswith("docker logs --since 2026-01-01T00:00:00Z q-backend"):
            return True, logs
        return False, f"unexpected: {command}"
    return run, asked


def test_backend_verification_passes_without_the_watcher_error():
    from tasks.checks.backend import verify_backend
    run, asked = scripted("INFO: Will watch for changes\nINFO: Application startup complete.\n")
    results = verify_backend(run, "q-backend", 8000, "/health")
    assert [r.status for r in results] == ["pass"] * 4, results
    assert any("http://127.0.0.1:8000/health" in command for command in asked)


def test_backend_verification_fails_on_the_watcher_error():
    from tasks.checks.backend import verify_backend
    run, _ = scripted("_rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
                      "Input/output error (os error 5)\n")
    results = verify_backend(run, "q-backend", 8000, "/health")
    assert [r.status for r in results] == ["pass", "pass", "fail", "skip"]
    assert "1 watchfiles error line(s) since start" in results[2].evidence
