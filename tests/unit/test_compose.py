import pytest
import yaml

from tasks.core.compose import HEADER, ComposeError, patch_compose_service
from tasks.core.sizes import GIB, MIB

COMMAND = [
    "mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2",
    "--gunicorn-opts", "--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync",
]
ENV = {"GUNICORN_CMD_ARGS": "", "MLFLOW_GUNICORN_OPTS": ""}

SEED = """\
# the seed's stack
services:
  postgres:
    image: postgres:15
    environment:
      POSTGRES_USER: quant_user
  mlflow:
    image: quantlab/mlflow:2.9.2
    command: mlflow server --host 0.0.0.0 --workers 4
    environment:
      MLFLOW_TRACKING_URI: http://localhost:5000
      GUNICORN_CMD_ARGS: --timeout 30
    ports:
      - "127.0.0.1:15500:5000"
    deploy:
      resources:
        limits:
          memory: 420m
          cpus: "1.5"
volumes:
  pgdata: {}
"""


def patch(text, service="mlflow", command=COMMAND, env=ENV, limit=GIB, reservation=512 * MIB):
    return patch_compose_service(text, service, command, env, limit, reservation)


def test_patch_sets_service_and_leaves_the_rest():
    text, changed = patch(SEED)
    assert changed
    assert text.startswith(HEADER)
    doc, before = yaml.safe_load(text), yaml.safe_load(SEED)
    svc = doc["services"]["mlflow"]
    assert svc["command"] == COMMAND
    assert svc["environment"] == {
        "MLFLOW_TRACKING_URI": "http://localhost:5000",
        "GUNICORN_CMD_ARGS": "",
        "MLFLOW_GUNICORN_OPTS": "",
    }
    assert svc["deploy"]["resources"]["limits"] == {"memory": "1g", "cpus": "1.5"}
    assert svc["deploy"]["resources"]["reservations"] == {"memory": "512m"}
    assert svc["ports"] == before["services"]["mlflow"]["ports"]
    assert svc["image"] == before["services"]["mlflow"]["image"]
    assert doc["services"]["postgres"] == before["services"]["postgres"]
    assert doc["volumes"] == before["volumes"]
    assert list(doc["services"]) == ["postgres", "mlflow"]  # order kept


def test_second_patch_changes_nothing_and_keeps_text():
    once, _ = patch(SEED)
    twice, changed = patch(once)
    assert changed is False
    assert twice == once


def test_already_equal_by_meaning_keeps_original_text_and_comments():
    text = """\
services:
  mlflow:  # tracking
    command: "mlflow server --host 0.0.0.0 --port 5000 --workers 2 --gunicorn-opts '--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync'"
    environment:
      - GUNICORN_CMD_ARGS=
      - MLFLOW_GUNICORN_OPTS=
    deploy:
      resources:
        limits: {memory: 1024M}
        reservations: {memory: 536870912}
"""
    assert patch(text) == (text, False)


def test_list_environment_keeps_list_form():
    text = """\
services:
  mlflow:
    image: x
    environment:
      - KEEP=1
      - GUNICORN_CMD_ARGS=--timeout 30
"""
    new, changed = patch(text)
    assert changed
    env = yaml.safe_load(new)["services"]["mlflow"]["environment"]
    assert env == ["KEEP=1", "GUNICORN_CMD_ARGS=", "MLFLOW_GUNICORN_OPTS="]
    assert patch(new) == (new, False)


def test_pass_through_env_entry_without_value_gets_a_value():
    text = "services:\n  mlflow:\n    environment:\n      - GUNICORN_CMD_ARGS\n"
    new, changed = patch(text, env={"GUNICORN_CMD_ARGS": ""})
    assert changed
    assert yaml.safe_load(new)["services"]["mlflow"]["environment"] == ["GUNICORN_CMD_ARGS="]


def test_memory_only_change():
    once, _ = patch(SEED)
    new, changed = patch(once, limit=2 * GIB)
    assert changed
    res = yaml.safe_load(new)["services"]["mlflow"]["deploy"]["resources"]
    assert res["limits"]["memory"] == "2g" and res["reservations"]["memory"] == "512m"


def test_legacy_mem_limit_kept_equal():
    text = "services:\n  mlflow:\n    mem_limit: 420m\n    mem_reservation: 100m\n    deploy:\n"
    new, changed = patch(text)
    svc = yaml.safe_load(new)["services"]["mlflow"]
    assert changed
    assert (svc["mem_limit"], svc["mem_reservation"]) == ("1g", "512m")
    assert svc["deploy"]["resources"]["limits"]["memory"] == "1g"


def test_numbers_in_env_compare_as_strings():
    text = "services:\n  mlflow:\n    command: [a]\n    environment:\n      WORKERS: 2\n" \
           "    deploy: {resources: {limits: {memory: 1g}, reservations: {memory: 512m}}}\n"
    assert patch(text, command=["a"], env={"WORKERS": "2"}) == (text, False)


@pytest.mark.parametrize(
    "text, service, message",
    [
        (SEED, "mlfow", "service 'mlfow' is not in the compose file (services: postgres, mlflow)"),
        ("version: '3'\n", "mlflow", "no 'services' mapping"),
        ("services: [a, b]\n", "mlflow", "no 'services' mapping"),
        ("services:\n  mlflow: [\n", "mlflow", "not valid YAML"),
        ("services:\n  mlflow:\n    environment: 5\n", "mlflow", "environment is a int"),
    ],
)
def test_errors(text, service, message):
    with pytest.raises(ComposeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        patch(text, service=service)
