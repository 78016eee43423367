"""Onboarding without a host: settings, daemon.json merging, sudoers text, preflight, the probe, compose."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from tasks.core.compose import ServicePatch, patch_compose_service
from tasks.core.mlflow_server import server_spec
from tasks.core.onboard_files import compose_text, daemon_json, default_compose, sudoers_text
from tasks.core.onboard_preflight import preflight_problems, wanted_gid
from tasks.facts.onboard import OnboardProbe
from tasks.settings import SettingsError
from tasks.settings import load as load_settings
from tasks.settings.onboard import compose_problems

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr1nQ3y6w3y7m0aUQ5m8n1pG5D9x0u2lGmK8rX5p1Qw deploy@ops"


def settings(**overrides):
    return load_settings("onboard", "h1", {"authorized_keys": [KEY], **overrides})


def problems_of(**data) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings("onboard", "h1", data)
    return str(info.value)


def test_defaults_and_derived_paths():
    s = settings()
    assert s.user == "deploy" and s.home_dir == "/home/deploy" and s.engine == "local"
    assert s.compose_path == "/opt/quant-stack/docker-compose.yml"
    assert s.sudoers_path == "/etc/sudoers.d/quant-deploy" and s.docker_gid is None


def test_defaults_live_in_the_model():
    s = settings()
    assert s.sudo_commands == ("/usr/bin/systemctl restart docker", "/usr/bin/systemctl status docker",
                               "/usr/bin/journalctl -u docker")
    assert s.directories == ("data/postgres", "data/minio", "data/redis", "logs", "backups")
    assert (s.packages, s.log_max_size, s.log_max_file) == (("docker.io",), 10 * 1024 * 1024, 3)
    assert s.verify is True and s.exclusive_keys is False and s.compose is None


def test_group_defaults_under_the_host_block():
    s = load_settings("onboard", "h1", {"user": "ops"}, {"authorized_keys": [KEY], "user": "deploy"})
    assert s.user == "ops" and s.authorized_keys == (KEY,)


def test_log_max_size_is_a_docker_size():
    assert settings(log_max_size="20m").log_max_size == 20 * 1024 * 1024
    assert settings(log_max_size=1024).log_max_size == 1024
    assert "log_max_size: must be > 0" in problems_of(authorized_keys=[KEY], log_max_size="0")


def test_socket_engine_matches_the_socket_gid_by_default():
    assert settings(engine="socket").docker_gid == "socket"
    assert settings(engine="socket", docker_gid=None).docker_gid == "socket"
    assert settings(engine="socket", docker_gid=999).docker_gid == 999


def test_keys_from_a_controller_file(tmp_path):
    pub = tmp_path / "k.pub"
    pub.write_text(KEY + "\n\n# comment\n")
    assert settings(authorized_keys=[{"file": str(pub)}]).authorized_keys == (KEY,)
    empty = tmp_path / "empty.pub"
    empty.write_text("# no key here\n")
    assert f"authorized_keys[0]: {empty} holds no public key" in problems_of(authorized_keys=[{"file": str(empty)}])
    assert settings(authorized_keys=[KEY, {"file": str(pub)}]).authorized_keys == (KEY,)  # once


@pytest.mark.parametrize("data, expected", [
    ({}, "authorized_keys: at least one public key"),
    ({"authorized_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]}, "is a private key"),
    ({"authorized_keys": ["not a key"]}, "not an OpenSSH public key"),
    ({"authorized_keys": [{"file": "/nope.pub"}]}, "cannot read /nope.pub"),
    ({"authorized_keys": [KEY], "user": "root"}, "not a valid non-root user name"),
    ({"authorized_keys": [KEY], "sudo_commands": ["ALL"]}, "must start with an absolute path"),
    ({"authorized_keys": [KEY], "sudo_commands": ["/usr/bin/docker ALL"]}, "too wide"),
    ({"authorized_keys": [KEY], "sudo_commands": ["/bin/ls, /bin/sh"]}, "holds ','"),
    ({"authorized_keys": [KEY], "sudo_commands": ["/bin/sh"]}, "sudo_commands[0]: '/bin/sh': sh is a shell"),
    ({"authorized_keys": [KEY], "sudo_commands": ["/usr/bin/systemctl"]}, "has no arguments, which sudo reads"),
    ({"authorized_keys": [KEY], "sudo_commands": ["/bin/cat /var/log/*"]}, "holds a wildcard"),
    ({"authorized_keys": [KEY], "stack_dir": "/etc"}, "stack_dir: '/etc' is in the system directory /etc"),
    ({"authorized_keys": [KEY], "compose_file": "/etc/passwd"}, "compose_file: '/etc/passwd' is not inside stack_dir"),
    ({"authorized_keys": [KEY], "stack_dir": "/opt"}, "stack_dir: '/opt' is not below an allowed root"),
    ({"authorized_keys": [KEY], "home": "/var/lib"}, "home: '/var/lib' is not below an allowed root"),
    ({"authorized_keys": [KEY], "allowed_roots": ["/"]}, "allowed_roots[0]: '/' is too wide"),
    ({"authorized_keys": [KEY], "allowed_roots": ["/usr/local"]}, "in the system directory /usr"),
    ({"authorized_keys": [KEY], "sudoers_name": "deploy.conf"}, "sudo ignores files with '.'"),
    ({"authorized_keys": [KEY], "engine": "podman"}, "engine: must be one of local, socket"),
    ({"authorized_keys": [KEY], "log_max_size": "10mb"}, "log_max_size: '10mb'"),
    ({"authorized_keys": [KEY], "log_max_file": 0}, "log_max_file"),
    ({"authorized_keys": [KEY], "packages": ["docker-ce"]}, "must include docker.io"),
    ({"authorized_keys": [KEY], "directories": ["../etc"]}, "plain relative path"),
    ({"authorized_keys": [KEY], "stack_dir": "relative"}, "absolute path"),
    ({"authorized_keys": [KEY], "docker_gid": "105"}, "docker_gid"),
    ({"authorized_keys": [KEY], "docker_gid": True}, "docker_gid"),
    ({"authorized_keys": [KEY], "exclusive_keys": "yes"}, "exclusive_keys: is not true/false"),
    ({"authorized_keys": [{"url": "https://keys"}]}, "authorized_keys[0]: expected a public key line"),
    ({"authorized_keys": [KEY], "userr": "x"}, "userr: unknown setting; did you mean 'user'?"),
    ({"authorized_keys": [KEY], "compose": {"services": {"db": {"environment": {"DB_PASSWORD": "hunter2"}}}}},
     "looks like a secret"),
])
def test_bad_settings_are_refused_with_the_key_named(data, expected):
    message = problems_of(**data)
    assert expected in message and "host 'h1': onboard." in message
    assert "hunter2" not in message


@pytest.mark.parametrize("command, needle", [
    ("/bin/sh", "sh is a shell"),
    ("/usr/bin/bash -c true", "bash is a shell"),
    ("/usr/bin/su - root", "su is a privilege or command-running tool"),
    ("/usr/bin/sudo -i", "sudo is a privilege"),
    ("/usr/bin/env ls", "env is a privilege"),
    ("/usr/bin/find / -name x", "find is a privilege"),
    ("/usr/bin/vim /etc/hosts", "vim is an editor"),
    ("/usr/bin/nano /etc/hosts", "nano is an editor"),
    ("/usr/bin/less /var/log/syslog", "less is a pager"),
    ("/usr/bin/man ls", "man is a pager"),
    ("/usr/bin/python3 -V", "python3 is an interpreter"),
    ("/usr/bin/python3.11 -V", "python3.11 is an interpreter"),
    ("/usr/bin/perl -v", "perl is an interpreter"),
    ("/usr/bin/tee /etc/x", "tee is a program that writes files"),
    ("/usr/bin/systemctl", "has no arguments"),
    ("/usr/bin/systemctl edit docker", "runs an editor"),
    ("/bin/cat /var/log/*", "wildcard"),
    ("/usr/bin/journalctl -u docker?", "wildcard"),
    ("/usr/bin/systemctl restart docker ALL", "too wide (ALL)"),
    ("/usr/bin/systemctl restart docker; /bin/sh", "holds ';'"),
    ("/home/deploy/bin/restart now", "root-owned system directory"),
    ("/opt/quant-stack/restart now", "root-owned system directory"),
    ("/usr/bin/../../bin/sh x", "normalized"),
    ("/usr/bin/systemctl\trestart docker", "control character"),
])
def test_sudo_rules_need_a_safe_program_with_exact_arguments(command, needle):
    text = problems_of(authorized_keys=[KEY], sudo_commands=["/usr/bin/systemctl restart docker", command])
    assert "onboard.sudo_commands[1]: " in text and needle in text and "sudo_commands[0]" not in text


def test_default_sudo_rules_and_exact_commands_pass():
    s = settings(sudo_commands=["/usr/bin/systemctl restart docker", "/usr/sbin/service docker status",
                                "/usr/bin/cat /var/log/syslog"])
    assert len(s.sudo_commands) == 3
    assert settings().sudo_commands  # the defaults pass their own rules


@pytest.mark.parametrize("over, stack", [
    ({}, "/opt/quant-stack"),
    ({"stack_dir": "/srv/quant"}, "/srv/quant"),
    ({"stack_dir": "/home/deploy/stack"}, "/home/deploy/stack"),  # below the deploy user's home
    ({"allowed_roots": ["/data"], "stack_dir": "/data/quant"}, "/data/quant"),
])
def test_stack_dir_below_an_allowed_root(over, stack):
    s = settings(**over)
    assert s.stack_dir == stack and s.compose_path == f"{stack}/docker-compose.yml"


@pytest.mark.parametrize("over, needle", [
    ({"stack_dir": "/home/other/stack"}, "stack_dir: '/home/other/stack' is not below an allowed root"),
    ({"stack_dir": "/srv"}, "stack_dir: '/srv' is not below"),
    ({"stack_dir": "/opt/x/../../etc"}, "not a normalized absolute path"),
    ({"stack_dir": "/var/lib/docker/x"}, "in the system directory /var/lib/docker"),
    ({"compose_file": "/opt/other/compose.yml"}, "compose_file: '/opt/other/compose.yml' is not inside stack_dir"),
    ({"directories": ["a/./b"]}, "directories[0]:"),
    ({"home": "/etc"}, "home: '/etc' is in the system directory /etc"),
    ({"home": "/home"}, "home: '/home' is not below"),
    ({"allowed_roots": ["/home"]}, "allowed_roots[0]: '/home' is too wide"),
    ({"allowed_roots": ["/tmp/x"]}, "in the system directory /tmp"),
    ({"allowed_roots": []}, "allowed_roots: expected a non-empty list"),
])
def test_onboarding_paths_stay_below_allowed_roots(over, needle):
    text = problems_of(authorized_keys=[KEY], **over)
    assert needle in text, text
    assert text.count("host 'h1'") == 1  # one line: what lies inside a refused stack_dir is not repeated


def test_preflight_checks_the_paths_as_they_resolve():
    s = settings()
    same = {path: path for _, path in s.owned_paths()}
    assert preflight_problems(s, probe(), None, same) == []
    moved = {**same, "/opt/quant-stack": "/data/quant-stack"}
    [problem] = preflight_problems(s, probe(), None, moved)
    assert problem.startswith("stack_dir /opt/quant-stack resolves to /data/quant-stack on this host (a symlink)")
    assert preflight_problems(settings(allowed_roots=["/opt", "/data"]), probe(), None, moved) == []


@pytest.mark.parametrize("folder, resolved, needle", [
    ("/var/lib/quantlab", "/var/lib/quantlab", None),
    ("/var/lib/quantlab/records", "/var/lib/quantlab/records", None),
    ("/srv/quant/state", "/srv/quant/state", None),  # below an allowed root
    ("/var/lib/quantlab", "/data/quantlab", "resolves to /data/quantlab on this host (a symlink)"),
    ("/var/lib/quantlab", "/var/lib/dpkg", "resolves to /var/lib/dpkg on this host (a symlink)"),
    ("/var/lib/quantlab", None, "could not be resolved on this host"),
    ("/var/lib/sudo", "/var/lib/sudo", "must be /var/lib/quantlab (or below it) or a folder below an allowed root"),
    ("/var/lib", "/var/lib", "must be /var/lib/quantlab"),
    ("/opt", "/opt", "must be /var/lib/quantlab"),
])
def test_the_record_folder_is_the_deploys_own(folder, resolved, needle):
    """Onboarding gives the record's folder to the deploy user's group: /var/lib/quantlab (or below
    it) or below an allowed root, as written and as it resolves; never /var/lib's system folders."""
    from tasks.core.onboard_preflight import record_dir_problems

    problems = record_dir_problems(settings(), folder, {} if resolved is None else {folder: resolved})
    if needle is None:
        assert problems == [], problems
    else:
        assert len(problems) == 1 and needle in problems[0], problems
        assert problems[0].startswith(f"remediate.record_path's folder {folder}")


def test_preflight_names_the_deploy_user_logged_in_without_root():
    [problem] = preflight_problems(settings(), probe(uid="1000", user="deploy"), None, None)
    assert problem.startswith("logged in as deploy, the deploy user onboarding makes, without root")
    [problem] = preflight_problems(settings(), probe(uid="1000", user="ops"), None, None)
    assert problem.startswith("commands run as uid 1000, not root")


def test_all_problems_reported_at_once():
    message = problems_of(authorized_keys=[KEY], engine="x", log_max_file=0, user="Bad Name")
    assert message.count("host 'h1'") == 3


def test_compose_with_secret_references_is_accepted():
    doc = {"services": {"db": {"image": "postgres:15", "environment": {"POSTGRES_PASSWORD": "${PG_PW}"}}}}
    assert settings(compose=doc).compose == doc


# -- daemon.json -------------------------------------------------------------------------------

def test_daemon_json_fresh_file():
    text, changed = daemon_json(None, "10m", 3)
    assert changed and json.loads(text) == {"log-driver": "json-file",
                                            "log-opts": {"max-file": "3", "max-size": "10m"}}


def test_daemon_json_keeps_other_keys_and_is_idempotent():
    current = json.dumps({"registry-mirrors": ["https://m.example"], "log-opts": {"labels": "a"}})
    text, changed = daemon_json(current, "20m", 5)
    config = json.loads(text)
    assert changed and config["registry-mirrors"] == ["https://m.example"]
    assert config["log-opts"] == {"labels": "a", "max-size": "20m", "max-file": "5"}
    assert daemon_json(text, "20m", 5) == (text, False)


def test_daemon_json_other_driver_options_dropped():
    text, _ = daemon_json(json.dumps({"log-driver": "syslog", "log-opts": {"syslog-address": "udp://x"}}),
                          "10m", 3)
    assert json.loads(text)["log-opts"] == {"max-size": "10m", "max-file": "3"}


def test_daemon_json_not_an_object():
    with pytest.raises(ValueError):
        daemon_json("[1, 2]", "10m", 3)


def test_sudoers_text_is_one_narrow_rule():
    text = sudoers_text("deploy", ("/usr/bin/systemctl restart docker", "/usr/bin/journalctl -u docker"))
    rule = [line for line in text.splitlines() if not line.startswith("#")]
    assert rule == ["deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart docker, /usr/bin/journalctl -u docker"]
    assert sudoers_text("deploy", ()).startswith("#") and "NOPASSWD" not in sudoers_text("deploy", ())


# -- preflight ---------------------------------------------------------------------------------

def probe(**overrides):
    values = {"uid": "0", "os_id": "debian", "apt_get": "/usr/bin/apt-get", "dpkg": "/usr/bin/dpkg",
              "pid1": "systemd", "systemd": "yes", "sbin_init": "yes", "policy_rc_d": "no",
              "socket_kind": "missing", "socket_gid": None}
    return {**values, **overrides}


def test_preflight_passes_on_a_debian_host_with_systemd():
    assert preflight_problems(settings(), probe()) == []


def test_preflight_names_each_missing_capability():
    problems = preflight_problems(settings(), probe(uid="1000", apt_get="", systemd="no", pid1="sshd"))
    text = "\n".join(problems)
    assert len(problems) == 3
    assert "not root" in text and "no apt-get" in text and "systemd is not PID 1" in text and "'sshd'" in text


def test_preflight_socket_engine():
    container = probe(pid1="sshd", systemd="no", sbin_init="no", socket_kind="socket", socket_gid=105)
    s = settings(engine="socket")
    assert preflight_problems(s, container) == []
    assert wanted_gid(s, container) == 105
    assert "needs a Docker socket" in preflight_problems(s, {**container, "socket_kind": "missing"})[0]
    assert "second dockerd" in preflight_problems(s, {**container, "systemd": "yes"})[0]
    assert "already the group 'users'" in preflight_problems(s, container, gid_holder="users")[0]
    assert preflight_problems(s, container, gid_holder="docker") == []


def test_probe_output_parsing():
    parsed = OnboardProbe().process(["uid=0", "apt_get=/usr/bin/apt-get", "socket=socket|105",
                                     "docker_group="])
    assert parsed["uid"] == "0" and parsed["socket_kind"] == "socket" and parsed["socket_gid"] == 105
    assert parsed["docker_group_gid"] is None
    assert OnboardProbe().process(["socket=missing"])["socket_gid"] is None


# -- the compose file ----------------------------------------------------------------------------

def test_default_compose_agrees_with_fix_mlflow():
    """deploys/fix_mlflow.py patching the rendered file changes nothing: the two deploys agree."""
    mlflow = load_settings("mlflow", "h1", {
        "image": "quantlab/mlflow2:abc", "backend_store_uri": "postgresql://mlflow@db:5432/mlflow",
        "artifacts_destination": "s3://bucket", "env": {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"},
        "secret_env": {"PGPASSWORD": {"env": "PGPASSWORD"}}})
    spec = server_spec(mlflow, "2.9.2")
    text = compose_text(default_compose(settings(), mlflow, spec))
    doc = yaml.safe_load(text)
    assert doc["services"]["mlflow"]["environment"]["PGPASSWORD"].startswith("${PGPASSWORD")
    assert set(doc["services"]) == {"postgres", "minio", "redis", "mlflow"}
    # What fix_mlflow's compose mode manages in the service (tasks/operations/mlflow.py).
    patch = ServicePatch(command=tuple(spec.command), environment={**mlflow.env, **spec.env},
                         memory_limit=mlflow.memory_limit, memory_reservation=mlflow.memory_reservation,
                         restart=mlflow.restart_policy,
                         labels={**mlflow.labels, "io.quantlab.mlflow-version": "2.9.2"}, init=mlflow.init)
    assert patch_compose_service(text, "mlflow", patch) == (text, [])
    assert doc["services"]["mlflow"]["init"] is True


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (compose v1) is not installed")
def test_default_compose_is_valid_for_compose_v1(tmp_path):
    """Debian's docker-compose (v1) accepts the rendered file: no top-level `name:`, which v1 refuses."""
    mlflow = load_settings("mlflow", "h1", {"secret_env": {"PGPASSWORD": {"env": "PGPASSWORD"}}})
    path = tmp_path / "docker-compose.yml"
    path.write_text(compose_text(default_compose(settings(), mlflow, server_spec(mlflow, "2.9.2"))))
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": "x", "POSTGRES_PASSWORD": "x", "MINIO_ROOT_USER": "x",
           "MINIO_ROOT_PASSWORD": "x"}
    proc = subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_compose_project_must_be_the_folders_name():
    assert "compose_project: compose names the project after stack_dir's folder ('quant-stack')" in problems_of(
        authorized_keys=[KEY], compose_project="quant")
    assert settings(stack_dir="/srv/Quant_1", compose_project="quant_1").compose_project == "quant_1"


def test_default_compose_has_no_secret_values():
    mlflow = load_settings("mlflow", "h1", {})
    doc = default_compose(settings(), mlflow, server_spec(mlflow, "2.9.2"))
    assert compose_problems(doc) == []
