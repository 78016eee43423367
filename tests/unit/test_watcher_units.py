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
    supervisor_script,
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


def _run_supervisor(tmp_path, program: str):
    """The real supervisor script, its watcher a stand-in shell program; pid file under tmp_path."""
    import subprocess

    install = tmp_path / "inst"
    (install / ".venv" / "bin").mkdir(parents=True)
    fake = install / ".venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\n" + program)
    fake.chmod(0o755)
    s = settings(install_dir=str(install), audit_file=str(tmp_path / "audit.jsonl"), restart_sec=1)
    text = supervisor_script(s, env_file=False)
    pid_file = tmp_path / "pid"
    assert "PIDFILE=/run/quant-watch.pid\n" in text
    script = tmp_path / "supervise.sh"
    script.write_text(text.replace("PIDFILE=/run/quant-watch.pid\n", f"PIDFILE={pid_file}\n"))
    script.chmod(0o700)
    proc = subprocess.Popen([str(script)], start_new_session=True)
    return proc, pid_file, tmp_path / "quant-watch.log"


def _wait(condition, seconds=15.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_supervisor_restarts_a_failed_watcher_and_stops_it_on_sigterm(tmp_path):
    import os
    import signal

    runs = tmp_path / "runs"
    # first run fails (exit 3), the second stays up until it is told to stop
    proc, pid_file, log = _run_supervisor(tmp_path, f"echo $$ >> {runs}\n"
                                          f"[ $(wc -l < {runs}) -ge 2 ] || exit 3\nexec sleep 300\n")
    try:
        _wait(lambda: runs.exists() and len(runs.read_text().split()) == 2)
        assert pid_file.read_text().strip() == str(proc.pid)
        _wait(lambda: "watcher started" in log.read_text() and log.read_text().count("watcher started") == 2)
        assert "watcher exited 3: restarting in 1 s" in log.read_text()
        watcher = int(runs.read_text().split()[1])
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _wait(lambda: not os.path.exists(f"/proc/{watcher}"))  # the watcher ended with it
        assert not pid_file.exists() and log.read_text().rstrip().endswith("supervisor: stopped")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_supervisor_does_not_restart_a_clean_exit(tmp_path):
    proc, pid_file, log = _run_supervisor(tmp_path, "exit 0\n")
    assert proc.wait(timeout=10) == 0
    assert "watcher exited 0: not restarted" in log.read_text() and not pid_file.exists()
