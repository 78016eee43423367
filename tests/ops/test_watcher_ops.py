"""The watcher's install deploy without a host (deploys/install_watcher.py): what it installs on a
systemd host (project and runtime from uploaded bundles, offline; the host's own inventory; the
secret copies written privately; the unit; the service started), that an installed host plans
no change, what ``present: False`` removes, and the refusal on a host without systemd. Facts as
in test_schedule_ops: our own as the output a host prints, pyinfra's as processed values."""
from __future__ import annotations

import hashlib
import runpy
import tarfile

import pytest
from pyinfra.api.exceptions import OperationError

from tasks import settings as host_settings
from tasks.core.watcher_units import (
    host_data,
    inventory_text,
    localize_secrets,
    secret_copy_name,
    service_unit,
    supervisor_script,
)
from tasks.operations import watcher as watcher_ops
from tasks.operations.watcher_bundle import bundle_hash
from tests.ops.recorded_plan import Output, plan_on_host

SYSTEMD_HOST = Output("systemd=yes\npid1=systemd\ncron=running")
CONTAINER_HOST = Output("systemd=no\npid1=bash\ncron=stopped")
UNIT = "/etc/systemd/system/quant-watch.service"
INVENTORY = "/etc/quant-watch/quant-watch.inventory.py"
SERVICE = "quant-watch.service"
ROOT_DIR = {"mode": 700, "user": "root", "group": "root"}
SECRET = "s3cr3t-value-for-the-test"


@pytest.fixture
def env(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("pyinfra==3.10.0\n")
    (wheels / "pip-23.2.1-py3-none-any.whl").write_bytes(b"not really a wheel")
    secret = tmp_path / "mlflow_db_password"
    secret.write_text(SECRET)
    monkeypatch.setattr(watcher_ops, "BUNDLES", tmp_path / "bundles")
    data = {
        "ssh_hostname": "127.0.0.1", "ssh_port": 2222, "_sudo": True,
        "mlflow": {"container_name": "lab-mlflow", "secret_env": {"PGPASSWORD": {"file": str(secret)}}},
        "watcher": {"wheels": str(wheels)},
    }  # fmt: skip
    return {"data": data, "secret": secret, "wheels": wheels, "tmp": tmp_path}


def facts(init=SYSTEMD_HOST, installed="", files=None, sums=None, sha256=None, running=None, supervisor=""):
    return {
        "SupervisedWatcher": Output(supervisor),
        "InitSystem": init,
        "WatcherInstalled": Output(installed or "project=\nwheels="),
        "File": {**{f"path={p}": v for p, v in (files or {}).items()}, "*": None},
        "Directory": {"path=/etc/quant-watch": ROOT_DIR, "path=/etc/quant-watch/secrets": ROOT_DIR,
                      "path=/var/log/quant-remediation": {**ROOT_DIR, "mode": 750},
                      "path=/etc/systemd/system": {**ROOT_DIR, "mode": 755}, "*": None},
        "Sha1File": {**{f"path={p}": s for p, s in (sums or {}).items()}, "*": None},
        "Sha256File": {**{f"path={p}": s for p, s in (sha256 or {}).items()}, "*": None},
        "TmpDir": "/tmp",
        "SystemdStatus": {"*": {SERVICE: True} if running else {}},
        "SystemdEnabled": {"*": {SERVICE: True} if running else {}},
    }


def plan(env, host_facts, **watcher):
    data = {**env["data"], "watcher": {**env["data"]["watcher"], **watcher}}
    s = host_settings.load("watcher", "h1", data["watcher"])
    return plan_on_host(lambda: watcher_ops.install_watcher(s), host_facts, host_data=data), s


def expected_inventory(env) -> str:
    data, _, _ = localize_secrets(host_data(env["data"], ["onboard", "cleanup_schedule"]), "/etc/quant-watch/secrets")
    return inventory_text(data, "h1")


def test_a_systemd_host_gets_the_project_offline_its_inventory_secrets_and_the_service(env):
    result, s = plan(env, facts())
    steps = dict(result.steps)
    project, runtime = steps["Project in /opt/quant-remediation"], steps["Runtime /opt/quant-remediation/.venv (offline)"]
    assert project[1][0] == "upload file" and project[1][2] == "/opt/quant-remediation/.project.tar.gz"
    assert "tar -xzf /opt/quant-remediation/.project.tar.gz -C /opt/quant-remediation" in project[2]
    assert runtime[1][0] == "upload file" and runtime[1][2] == "/opt/quant-remediation/.wheels.tar"
    install = runtime[2]
    assert "/usr/bin/python3 -m venv --without-pip --clear /opt/quant-remediation/.venv" in install
    assert "pip install -q --no-index" in install and "--find-links /opt/quant-remediation/.wheels" in install
    assert "quant-remediation.pth" in install
    # the bundles really are what they say: the project's files and the wheel cache
    with tarfile.open(project[1][1]) as tar:
        names = tar.getnames()
    assert "tasks/watch/program.py" in names and "deploys/fix_mlflow.py" in names
    assert not any(n.startswith("tasks/lab/") or "__pycache__" in n for n in names)
    with tarfile.open(runtime[1][1]) as tar:
        assert sorted(tar.getnames()) == ["pip-23.2.1-py3-none-any.whl", "requirements.txt"]
    # the secret's copy: written at execution through a private upload, never in a command
    copy = f"/etc/quant-watch/secrets/{secret_copy_name(str(env['secret']))}"
    assert steps[f"Secret copy {copy}"] == [["_install_private", copy, SECRET.encode()]]
    assert steps[f"Inventory {INVENTORY}"][0] == ["upload", expected_inventory(env), INVENTORY]
    assert steps[f"Unit {SERVICE}"][0] == ["upload", service_unit(s, env_file=False), UNIT]
    assert steps["Service quant-watch enabled and running"] == [f"systemctl start {SERVICE}",
                                                                 f"systemctl enable {SERVICE}"]
    shown = repr([c for name, commands in result.steps if not name.startswith("Secret copy") for c in commands])
    assert SECRET not in shown and SECRET not in "\n".join(result.logs)
    (host,) = runpy.run_path(str(_write(env["tmp"] / "inv.py", expected_inventory(env))))["hosts"]
    assert host[0] == "@local" and "ssh_port" not in host[1] and "_sudo" not in host[1]
    assert host[1]["mlflow"]["secret_env"]["PGPASSWORD"] == {"file": copy}


def _write(path, text):
    path.write_text(text)
    return path


def test_an_installed_host_plans_no_change(env):
    result, s = plan(env, facts())
    project_hash = bundle_hash(watcher_ops.BUNDLES.glob("project-*").__next__())
    wheels_hash = bundle_hash(watcher_ops.BUNDLES.glob("wheels-*").__next__())
    copy = f"/etc/quant-watch/secrets/{secret_copy_name(str(env['secret']))}"
    private = {"mode": 600, "user": "root", "group": "root"}
    sha1 = lambda text: hashlib.sha1(text.encode()).hexdigest()  # noqa: E731
    host = facts(installed=f"project={project_hash}\nwheels={wheels_hash}",
                 files={copy: private, INVENTORY: private, UNIT: {"mode": 644, "user": "root", "group": "root"}},
                 sums={INVENTORY: sha1(expected_inventory(env)), UNIT: sha1(service_unit(s, env_file=False))},
                 sha256={copy: hashlib.sha256(SECRET.encode()).hexdigest()}, running=True)
    again, _ = plan(env, host)
    gated = {"systemd reload", "Service quant-watch restarted for the changes"}  # _if: only after a change
    assert [(n, c) for n, c in again.steps if c and n not in gated] == [], again.steps
    assert dict(again.steps)["Service quant-watch restarted for the changes"] == [f"systemctl restart {SERVICE}"]
    # a changed secret is written again (privately), and nothing else
    changed = {**host, "Sha256File": {f"path={copy}": "0" * 64, "*": None}}
    third, _ = plan(env, changed)
    assert [name for name, commands in third.steps if commands and name not in gated] == [f"Secret copy {copy}"]


def test_env_secrets_go_into_a_private_environment_file(env, monkeypatch):
    monkeypatch.setenv("LAB_S3_SECRET", SECRET)
    env["data"]["mlflow"]["secret_env"]["AWS_SECRET_ACCESS_KEY"] = {"env": "LAB_S3_SECRET"}
    result, s = plan(env, facts())
    steps = dict(result.steps)
    assert steps["Secret copy /etc/quant-watch/secrets/env"] == [
        ["_install_private", "/etc/quant-watch/secrets/env",
         f"# Secrets named by variable in the host's data; written by deploys/install_watcher.py.\n"
         f'LAB_S3_SECRET="{SECRET}"\n'.encode()]]
    assert "EnvironmentFile=/etc/quant-watch/secrets/env" in steps[f"Unit {SERVICE}"][0][1]
    assert SECRET not in steps[f"Unit {SERVICE}"][0][1]


def test_a_missing_env_secret_is_a_settings_error(env):
    env["data"]["mlflow"]["secret_env"]["X"] = {"env": "QUANT_TEST_UNSET_VARIABLE"}
    with pytest.raises(Exception, match="QUANT_TEST_UNSET_VARIABLE is not set on the controller"):
        plan(env, facts())


def test_systemd_asked_for_on_a_host_without_it_is_refused(env):
    with pytest.raises(OperationError, match="watcher.supervisor 'systemd': systemd is not PID 1 on this host .PID 1 is 'bash'."):
        plan(env, facts(init=CONTAINER_HOST), supervisor="systemd")


SCRIPT = "/opt/quant-remediation/supervise-quant-watch.sh"
PID_FILE = "/run/quant-watch.pid"


def test_a_host_without_systemd_gets_a_supervised_process(env):
    result, s = plan(env, facts(init=CONTAINER_HOST))
    steps = dict(result.steps)
    assert ["upload", supervisor_script(s, env_file=False), SCRIPT] in steps[f"Supervisor {SCRIPT}"]
    assert steps[f"Supervisor {SCRIPT}"][-2:] == [f"chown root {SCRIPT}", f"chmod 700 {SCRIPT}"]
    (start,) = steps["Supervised watcher quant-watch running"]
    assert start.startswith(f"setsid -f {SCRIPT} </dev/null >/dev/null 2>&1;") and PID_FILE in start
    assert not any(name.startswith(("Unit ", "Service ", "systemd")) for name in steps), list(steps)
    assert any("supervised by " + SCRIPT in line and "not started at boot" in line for line in result.logs)


def test_a_running_supervisor_plans_no_start_and_is_restarted_only_after_a_change(env):
    result, _ = plan(env, facts(init=CONTAINER_HOST, supervisor="4242"))
    steps = dict(result.steps)
    assert steps["Supervised watcher quant-watch running"] == []
    stop, start = steps["Supervised watcher quant-watch restarted for the changes"]  # gated by _if
    assert stop.startswith("kill -TERM 4242 ") and "kill -KILL -- -4242" in stop and start.startswith("setsid -f ")
    assert f"{SCRIPT} is running (pid 4242)" in result.noops


def test_present_false_stops_the_supervised_process(env):
    result, _ = plan(env, facts(init=CONTAINER_HOST, supervisor="4242"), present=False)
    ((name, (stop,)), *rest) = result.steps
    assert name == "Supervised watcher quant-watch stopped" and stop.startswith("kill -TERM 4242 ")
    assert f"rm -f {PID_FILE}" in stop
    assert not any(n.startswith("Service ") for n, _ in rest)


def test_present_false_stops_the_service_and_removes_what_was_installed(env):
    host = facts(files={UNIT: {"mode": 644}}, running=True)
    host["Directory"].update({"path=/opt/quant-remediation": {**ROOT_DIR, "mode": 755}})
    result, _ = plan(env, host, present=False)
    assert result.steps == [
        ("Supervised watcher quant-watch stopped", []),
        ("Service quant-watch stopped", [f"systemctl stop {SERVICE}", f"systemctl disable {SERVICE}"]),
        (f"No unit {SERVICE}", [f"rm -f {UNIT}"]),
        ("systemd reload", ["systemctl daemon-reload"]),
        ("No /etc/quant-watch", ["rm -rf /etc/quant-watch"]),
        ("No /opt/quant-remediation", ["rm -rf /opt/quant-remediation"]),
    ]
    assert "watcher: audit /var/log/quant-remediation/quant-watch.jsonl (and its .runs/) left in place" in result.logs
    gone = facts()
    gone["Directory"] = {"*": None}
    again, _ = plan(env, gone, present=False)
    assert all(commands == [] for name, commands in again.steps if name != "systemd reload"), again.steps


def _collect(env, host_facts, folder):
    s = host_settings.load("watcher", "h1", {"collect_dir": str(folder)})
    return plan_on_host(lambda: watcher_ops.collect_watch_audit(s), host_facts, host_data=env["data"])


def test_collecting_fetches_the_hosts_audit_unless_it_is_already_here(env):
    folder = env["tmp"] / "collected"
    audit = "/var/log/quant-remediation/quant-watch.jsonl"
    host = {"File": {f"path={audit}": {"mode": 600, "user": "root", "size": 10}}, "TmpDir": "/tmp",
            "Sha1File": {f"path={audit}": hashlib.sha1(b'{"kind": "action"}\n').hexdigest()}}
    result = _collect(env, host, folder)
    ((name, commands),) = result.steps
    assert name == f"Audit {audit} to {folder}/h1.jsonl"
    assert commands == [["download", audit, f"{folder}/h1.jsonl"]]
    (folder / "h1.jsonl").write_text('{"kind": "action"}\n')
    again = _collect(env, host, folder)
    assert again.steps == [(name, [])] and again.noops == [f"file {folder}/h1.jsonl has already been downloaded"]


def test_collecting_from_a_host_without_an_audit_says_so(env):
    result = _collect(env, {"File": {"*": None}}, env["tmp"] / "collected")
    assert result.steps == []
    assert "watcher: no audit at /var/log/quant-remediation/quant-watch.jsonl on this host yet" in result.logs
