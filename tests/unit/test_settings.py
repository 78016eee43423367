import pytest

from tasks.core.sizes import GIB, MIB, docker_size, human_size, parse_size
from tasks.settings import SettingsError
from tasks.settings import load as load_settings
from tasks.settings.mlflow import MlflowSettings, resolve_secret_env
from tasks.settings.types import SecretSource, looks_secret


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1073741824, GIB),
        ("1073741824", GIB),
        ("512m", 512 * MIB),
        ("512M", 512 * MIB),
        ("1g", GIB),
        ("1G", GIB),
        ("1024k", MIB),
        ("100b", 100),
        ("2t", 2 * 1024 * GIB),
    ],
)
def test_parse_size_accepts_docker_forms(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", ["1gb", "1GiB", "512MiB", "1.5g", "-1", -1, "", " 1g", "1 g", "g", "1x", True, None, 1.0]
)
def test_parse_size_rejects_everything_else(value):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(value)


@pytest.mark.parametrize(
    "num, docker, human",
    [
        (GIB, "1g", "1 GiB"),
        (512 * MIB, "512m", "512 MiB"),
        (420 * MIB, "420m", "420 MiB"),
        (1536 * MIB, "1536m", "1.5 GiB"),
        (1000, "1000", "1000 B"),
        (0, "0", "unlimited"),
    ],
)
def test_size_formatting(num, docker, human):
    assert docker_size(num) == docker
    assert human_size(num) == human
    if num:
        assert parse_size(docker) == num


def test_defaults_are_the_incident_fix():
    s = load_settings("mlflow", "lab", {})
    assert (s.workers, s.timeout, s.max_requests, s.max_requests_jitter) == (2, 60, 100, 10)
    assert s.worker_class == "sync"
    assert (s.memory_limit, s.memory_reservation) == (GIB, 512 * MIB)
    assert s.restart_policy == "unless-stopped"
    assert s.container_name == "quant-mlflow"
    assert load_settings("mlflow", "lab", None) == s


def test_full_valid_data():
    s = load_settings("mlflow",
        "lab",
        {
            "image": "quantlab/mlflow:3.x-abc",
            "server": "gunicorn",
            "workers": 3,
            "memory_limit": "2g",
            "memory_reservation": 1073741824,
            "restart_policy": "on-failure:3",
            "ports": ["127.0.0.1:15500:5000", "5001:5000/tcp", "[::1]:15501:5000"],
            "network": "lab-net",
            "env": {"MLFLOW_X": "1", "PORT_NUM": 5},
            "labels": {"team": "quant"},
            "extra_args": ["--serve-artifacts"],
            "backend_store_uri": "postgresql://mlflow@db/mlflow",
            "secret_env": {"MLFLOW_BACKEND_STORE_URI": {"env": "DB_URI"}},
            "compose_file": "/srv/stack/docker-compose.yml",
        },
    )
    assert s.memory_limit == 2 * GIB and s.memory_reservation == GIB
    assert s.env == {"MLFLOW_X": "1", "PORT_NUM": "5"}
    assert s.secret_env == {"MLFLOW_BACKEND_STORE_URI": SecretSource(env="DB_URI")}
    assert s.ports[0] == "127.0.0.1:15500:5000"
    assert s.extra_args == ("--serve-artifacts",)


def test_error_message_names_host_and_key():
    with pytest.raises(SettingsError) as err:
        load_settings("mlflow", "lab", {"memory_limit": "1gb"})
    assert str(err.value) == (
        "host 'lab': mlflow.memory_limit: '1gb' is not a size "
        "(use bytes, or a number with b/k/m/g, like 512m or 1g)"
    )


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"memory_limit": "-1"}, "mlflow.memory_limit", "is not a size"),
        ({"memory_limit": ""}, "mlflow.memory_limit", "is not a size"),
        ({"memory_limit": 0}, "mlflow.memory_limit", "below Docker's minimum"),
        ({"memory_reservation": "0"}, "mlflow.memory_reservation", "below Docker's minimum"),
        ({"memory_reservation": "2g"}, "mlflow.memory_reservation", "above memory_limit 1 GiB"),
        ({"memory_limit": "256m"}, "mlflow.memory_reservation", "512 MiB is above memory_limit"),
        ({"workers": 0}, "mlflow.workers", ">= 1"),
        ({"workers": "2"}, "mlflow.workers", "not a whole number"),
        ({"workers": True}, "mlflow.workers", "not a whole number"),
        ({"port": 70000}, "mlflow.port", "<= 65535"),
        ({"timeout": 0}, "mlflow.timeout", ">= 1"),
        ({"max_requests": -5}, "mlflow.max_requests", ">= 0"),
        ({"restart_policy": "sometimes"}, "mlflow.restart_policy", "on-failure:N"),
        ({"restart_policy": "on-failure:x"}, "mlflow.restart_policy", "not valid"),
        ({"ports": ["15500"]}, "mlflow.ports", "host_port:container_port"),
        ({"ports": ["127.0.0.1:99999:5000"]}, "mlflow.ports", "host_port:container_port"),
        ({"ports": "127.0.0.1:15500:5000"}, "mlflow.ports", "not a list of strings"),
        ({"server": "waitress"}, "mlflow.server", "auto, gunicorn, uvicorn"),
        ({"container_name": "bad name"}, "mlflow.container_name", "not a Docker container name"),
        ({"image": ""}, "mlflow.image", "non-empty string"),
        ({"worker_class": "sync; rm"}, "mlflow.worker_class", "not valid"),
        ({"env": {"GUNICORN_CMD_ARGS": "--workers 4"}}, "mlflow.env.GUNICORN_CMD_ARGS", "managed by the deploy"),
        ({"env": {"DB_PASSWORD": "hunter2"}}, "mlflow.env.DB_PASSWORD", "use secret_env"),
        ({"env": {"1BAD": "x"}}, "mlflow.env.1BAD", "not a valid name"),
        ({"env": {"A": "line1\nline2"}}, "mlflow.env.A", "contains a control character (U+000A)"),
        ({"env": {"A": None}}, "mlflow.env.A", "use a string"),
        ({"extra_args": ["--workers", "4"]}, "mlflow.extra_args", "--workers is set by the deploy"),
        ({"extra_args": ["--gunicorn-opts=--timeout 5"]}, "mlflow.extra_args", "--gunicorn-opts"),
        ({"backend_store_uri": "postgresql://u:hunter2@db/m"}, "mlflow.backend_store_uri", "contains a password"),
        ({"secret_env": {"X": "hunter2"}}, "mlflow.secret_env.X", '{"env": "VARIABLE"}'),
        ({"secret_env": {"X": {"env": "A", "file": "/b"}}}, "mlflow.secret_env.X", '{"file"'),
    ],
)
def test_bad_settings_are_refused_with_key(data, key, fragment):
    with pytest.raises(SettingsError) as err:
        load_settings("mlflow", "prod-1", data)
    message = str(err.value)
    assert message.startswith(f"host 'prod-1': {key}:"), message
    assert fragment in message


def test_secret_values_are_never_echoed():
    for data in (
        {"secret_env": {"X": "hunter2"}},
        {"backend_store_uri": "postgresql://u:hunter2@db/m"},
        {"env": {"DB_PASSWORD": "hunter2"}},
    ):
        with pytest.raises(SettingsError) as err:
            load_settings("mlflow", "lab", data)
        assert "hunter2" not in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SettingsError) as err:
        load_settings("mlflow", "lab", {"memory_limt": "1g"})
    assert str(err.value).startswith("host 'lab': mlflow.memory_limt: unknown setting; did you mean 'memory_limit'?")


def test_all_problems_reported_at_once():
    with pytest.raises(SettingsError) as err:
        load_settings("mlflow", "lab", {"workers": 0, "memory_limit": "1gb", "wrokers": 2})
    keys = sorted(p.split(":")[0] for p in err.value.problems)
    assert keys == ["mlflow.memory_limit", "mlflow.workers", "mlflow.wrokers"]


def test_secret_in_both_env_and_secret_env_is_refused():
    with pytest.raises(SettingsError, match="also in env"):
        load_settings("mlflow",
            "lab", {"env": {"MLFLOW_X": "1"}, "secret_env": {"MLFLOW_X": {"env": "X"}}}
        )


def test_resolve_secret_env_from_env_and_file():
    settings = MlflowSettings(
        secret_env={"A": SecretSource(env="SRC_A"), "B": SecretSource(file="/secrets/b")}
    )
    values = resolve_secret_env(
        "lab", settings, environ={"SRC_A": "alpha"}, read_file=lambda path: "beta\n"
    )
    assert values == {"A": "alpha", "B": "beta"}


def test_resolve_secret_env_errors_name_the_reference_not_the_value():
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory")

    settings = MlflowSettings(
        secret_env={"A": SecretSource(env="SRC_A"), "B": SecretSource(file="/secrets/b")}
    )
    with pytest.raises(SettingsError) as err:
        resolve_secret_env("lab", settings, environ={}, read_file=missing)
    text = str(err.value)
    assert "mlflow.secret_env.A: environment variable SRC_A is not set" in text
    assert "mlflow.secret_env.B: cannot read /secrets/b: No such file or directory" in text


def test_secret_file_path_may_start_with_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "minio_secret").write_text("s3cr3t\n")
    settings = load_settings("mlflow",
        "h", {"secret_env": {"AWS_SECRET_ACCESS_KEY": {"file": "~/minio_secret"}}})
    assert resolve_secret_env("h", settings, environ={}) == {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}


@pytest.mark.parametrize("name, secret", [("AWS_SECRET_ACCESS_KEY", True), ("MINIO_ACCESS_KEY", True),
                                          ("AWS_ACCESS_KEY_ID", False), ("PGPASSWORD", True),
                                          ("KEY", True), ("SIGNING_KEY", True), ("DB_PASS", True),
                                          ("KEY_FILE_MODE", True), ("MONKEY", False), ("PASSAGE", False),
                                          ("DATABASE_URL", True), ("QUANTLAB_PREFIX", False)])
def test_an_access_key_id_is_not_a_secret(name, secret):
    # The lab (and operators) set AWS_ACCESS_KEY_ID in plain env; only its secret half is one.
    assert looks_secret(name) is secret


def test_of_host_through_pyinfras_host_proxy_keeps_hosts_apart():
    # Deploy code reads `from pyinfra import host`: one proxy for every host. Each host must get
    # its own block, parsed once, and group-wide `<block>_defaults` under the host's own values.
    from pyinfra import host as host_proxy
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host

    from tasks import settings

    inventory = Inventory(
        (
            [("h1", {"mlflow": {"container_name": "one"}}),
             ("h2", {"mlflow": {"container_name": "two", "workers": 4}})],
            {"mlflow_defaults": {"workers": 3}},  # group data for all hosts
        )
    )
    State(inventory, Config())
    seen = {}
    for name in ("h1", "h2", "h1"):
        with ctx_host.use(inventory.get_host(name)):
            seen.setdefault(name, []).append(settings.of_host(host_proxy, "mlflow"))
    assert [s.container_name for s in (seen["h1"][0], seen["h2"][0])] == ["one", "two"]
    assert (seen["h1"][0].workers, seen["h2"][0].workers) == (3, 4)
    assert seen["h1"][0] is seen["h1"][1]
