"""What the watcher's per-host install writes (tasks/core/watcher_units.py): the host's own
inventory (no connection keys, secrets by reference to copies on the host), the EnvironmentFile,
the command line and the systemd unit (restart on failure, stop kills the whole group, no
secret, no control character)."""
from __future__ import annotations

import json
import runpy

import pytest

from tasks import settings as host_settings
from tasks.core.watcher_units import (
    env_file_text,
    host_data,
    inventory_text,
    localize_secrets,
    paths,
    secret_copy_name,
    service_unit,
    watch_argv,
)

DATA = {
    "ssh_hostname": "127.0.0.1", "ssh_port": 2222, "ssh_key": "/home/ops/.ssh/id", "_sudo": True,
    "_sudo_user": "root", "docker_image": "x",
    "mlflow": {"container_name": "lab-mlflow",
               "secret_env": {"PGPASSWORD": {"file": "/home/ops/secrets/mlflow_db"},
                              "AWS_SECRET_ACCESS_KEY": {"env": "LAB_S3_SECRET"}}},
    "onboard": {"engine": "local"}, "watcher": {"dry": True}, "watcher_defaults": {},
    "db_roles": [{"name": "quant_user", "password": {"file": "/home/ops/secrets/quant_user"}}],
}  # fmt: skip


def settings(**data):
    return host_settings.load("watcher", "h1", data)


def test_host_data_drops_connection_keys_and_install_blocks():
    kept = host_data(DATA, ["onboard"])
    assert sorted(kept) == ["db_roles", "mlflow"]


def test_file_secrets_point_at_copies_and_env_secrets_stay_by_name():
    data, copies, names = localize_secrets(host_data(DATA, ["onboard"]), "/etc/quant-watch/secrets")
    copy = secret_copy_name("/home/ops/secrets/mlflow_db")
    assert data["mlflow"]["secret_env"]["PGPASSWORD"] == {"file": f"/etc/quant-watch/secrets/{copy}"}
    assert data["mlflow"]["secret_env"]["AWS_SECRET_ACCESS_KEY"] == {"env": "LAB_S3_SECRET"}
    assert data["db_roles"][0]["password"]["file"].startswith("/etc/quant-watch/secrets/file-")
    assert copies == {copy: "/home/ops/secrets/mlflow_db",
                      secret_copy_name("/home/ops/secrets/quant_user"): "/home/ops/secrets/quant_user"}
    assert names == ["LAB_S3_SECRET"]
    assert DATA["mlflow"]["secret_env"]["PGPASSWORD"] == {"file": "/home/ops/secrets/mlflow_db"}  # not changed


def test_env_secret_must_name_a_variable():
    with pytest.raises(ValueError, match="not a variable name"):
        localize_secrets({"x": {"env": "A-B"}}, "/s")


def test_inventory_is_one_local_host_with_the_data(tmp_path):
    data, _, _ = localize_secrets(host_data(DATA, ["onboard"]), "/etc/quant-watch/secrets")
    text = inventory_text(data, "web-1")
    path = tmp_path / "inventory.py"
    path.write_text(text)
    (host,) = runpy.run_path(str(path))["hosts"]
    assert host == ("@local", json.loads(json.dumps(data)))
    assert "ssh_" not in text and "/home/ops/secrets" not in text


def test_inventory_refuses_values_that_are_not_json():
    with pytest.raises(ValueError, match="'when' is a object"):
        inventory_text({"when": object()}, "h")


def test_env_file_quotes_values_and_refuses_control_characters():
    assert env_file_text({"B": 'a"b$c\\d', "A": "x y"}).splitlines()[1:] == ['A="x y"', 'B="a\\"b\\$c\\\\d"']
    with pytest.raises(ValueError) as raised:
        env_file_text({"TOKEN": "secret\nvalue"})
    assert "TOKEN" in str(raised.value) and "secret" not in str(raised.value).replace("env secret", "")


def test_the_command_runs_the_program_on_the_hosts_inventory():
    s = settings(dry=True, grace=20, breaker=2)
    assert watch_argv(s) == [
        "/opt/quant-remediation/.venv/bin/python", "-m", "tasks.watch.program",
        "/etc/quant-watch/quant-watch.inventory.py", "--audit", "/var/log/quant-remediation/quant-watch.jsonl",
        "--group-data", "/opt/quant-remediation/inventories/group_data", "--dry", "--grace", "20", "--breaker", "2"]
    assert paths(s)["unit"] == "/etc/systemd/system/quant-watch.service"


def test_the_unit_restarts_on_failure_and_stops_its_whole_group():
    text = service_unit(settings(), env_file=False)
    lines = text.splitlines()
    for line in ("Type=simple", "Restart=on-failure", "RestartSec=5", "KillMode=control-group",
                 "WorkingDirectory=/opt/quant-remediation", "WantedBy=multi-user.target", "UMask=0077"):
        assert line in lines, text
    assert "EnvironmentFile" not in text
    assert "ExecStart=/opt/quant-remediation/.venv/bin/python -m tasks.watch.program " in text
    with_env = service_unit(settings(), env_file=True)
    assert "EnvironmentFile=/etc/quant-watch/secrets/env" in with_env.splitlines()


def test_the_unit_escapes_specifiers_and_refuses_control_characters():
    text = service_unit(settings(install_dir="/opt/q%h uant"), env_file=False)
    assert "WorkingDirectory=/opt/q%%h uant" in text
    assert '"/opt/q%%h uant/.venv/bin/python"' in text
    with pytest.raises(Exception, match="control character"):
        service_unit(settings(install_dir="/opt/q\x1buant"), env_file=False)
