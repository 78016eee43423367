"""The compose-style lab's file, rendered without an engine: written as users write theirs, and
its healthy MLflow service is what the deploy makes of the lab inventory's settings."""
import re
from pathlib import Path

import pytest
import yaml

from tasks.core.mlflow_server import server_spec
from tasks.lab.compose_stack import (
    ENV_FILES,
    compose_container_name,
    healthy_mlflow_settings,
    render_compose,
    yaml_scalar,
)
from tasks.lab.stack import LAB_MLFLOW_VERSION, SERVICES, Lab

REFS = {n: f"quantlab/{n}:0123456789ab" for n in ("postgres", "s3", "redis", "mlflow2", "mlflow3", "backend")}


@pytest.fixture
def lab(tmp_path):
    return Lab(prefix="qtunit", port_base=15800, home=tmp_path / "qtunit")


def _doc(lab, scenario):
    text = render_compose(lab, scenario, REFS)
    return text, yaml.safe_load(text)


@pytest.mark.parametrize("scenario", ["incident", "healthy"])
def test_written_as_users_write_it(lab, scenario):
    text, doc = _doc(lab, scenario)
    assert "container_name" not in text and "networks:" in text  # only the alias, on the default network
    assert "x-common: &common" in text
    assert text.count("<<: *common") == len(SERVICES)
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith("#")) >= 8
    services = doc["services"]
    assert list(services) == ["postgres", "minio", "redis", "mlflow", "backend"]
    for name, service in services.items():
        assert service["logging"]["options"] == {"max-size": "10m", "max-file": "3"}  # from the anchor
        assert service["healthcheck"]["test"]
        assert service["env_file"] == f"./secrets/{name}.env" if name in ENV_FILES else "env_file" not in service
        (port,) = service["ports"]
        assert re.fullmatch(r"127\.0\.0\.1:158\d\d:\d+", port)
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert services["postgres"]["networks"]["default"]["aliases"] == ["db"]
    assert "pgdata" in doc["volumes"]
    assert services["mlflow"]["volumes"] == ["./mlflow/gunicorn_incident.py:/etc/quantlab/gunicorn_incident.py:ro"]
    assert services["backend"]["environment"]["DB_HOST"] == "postgres"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for value in services["mlflow"]["command"]:
        assert isinstance(value, str)  # compose refuses numbers in a command list


def test_incident_mlflow_is_the_seeds(lab):
    _, doc = _doc(lab, "incident")
    mlflow = doc["services"]["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--workers") + 1] == "4"
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://mlflow@postgres:5432/mlflow"
    assert mlflow["deploy"]["resources"] == {"limits": {"memory": "420m"}}
    assert mlflow["restart"] == "on-failure:3"
    assert mlflow["environment"]["GUNICORN_CMD_ARGS"] == "-c /etc/quantlab/gunicorn_incident.py"
    assert "labels" not in mlflow
    assert "init" not in mlflow  # `mlflow server` as PID 1, as the seed ran it


def test_healthy_mlflow_is_what_the_deploy_makes_of_the_settings(lab):
    _, doc = _doc(lab, "healthy")
    mlflow = doc["services"]["mlflow"]
    spec = server_spec(healthy_mlflow_settings(), LAB_MLFLOW_VERSION)
    assert mlflow["command"] == list(spec.command)
    assert spec.env and all(mlflow["environment"][key] == value for key, value in spec.env.items())
    assert mlflow["deploy"]["resources"] == {"limits": {"memory": "1g"}, "reservations": {"memory": "512m"}}
    assert mlflow["restart"] == "unless-stopped"
    assert mlflow["labels"] == {"io.quantlab.mlflow-version": "2.9.2"}
    assert mlflow["init"] is True  # mlflow.init's default: fix_mlflow finds nothing to change


def test_no_secret_in_the_file(lab):
    values = lab.secrets()
    for scenario in ("incident", "healthy"):
        text, _ = _doc(lab, scenario)
        assert not any(value in text for value in values.values())


@pytest.mark.parametrize(
    "value", ["", "0.0.0.0", "5000", "yes", "off", "-c /x", "--a b", "a: b", "x #y", "s3://b", "--workers"]
)
def test_yaml_scalar_reads_back_as_the_same_string(value):
    assert yaml.safe_load(f"k: {yaml_scalar(value)}") == {"k": value}


def test_compose_names_containers_per_version():
    assert compose_container_name(["docker-compose"], "qt", "mlflow") == "qt_mlflow_1"
    assert compose_container_name(["docker", "compose"], "qt", "mlflow") == "qt-mlflow-1"


def test_template_has_no_stray_placeholders():
    text = (Path(__file__).resolve().parents[2] / "tasks/lab/compose/docker-compose.yml").read_text()
    assert set(re.findall(r"\$\{?(\w+)", text)) == {
        "postgres_image", "minio_image", "redis_image", "mlflow_image", "backend_image", "postgres_port",
        "minio_port", "redis_port", "mlflow_port", "backend_port", "s3_access_key", "mlflow_server",
        "mlflow_resources",
    }  # fmt: skip
