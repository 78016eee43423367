"""deploys/onboard_host.py over real SSH on fresh Debian hosts (tests/fleet.py `sshhost` containers).

Three fresh hosts, reached as a cloud image's `admin` sudo user with a key (pyinfra `_sudo`; no
password is set or used anywhere), onboarded in one run:

- `host1`: the lab engine's socket is mounted (engine "socket"). It cannot run dockerd itself (no
  init system, no privileges), so it gets Debian's docker.io package (the CLI), daemon.json, the
  docker group with the *socket's* gid, and its `docker` CLI talks to this machine's engine
  through the mounted socket. Log rotation in daemon.json is written and checked as a file; that
  dockerd honours it cannot be shown here (verification says so: the check is skipped).
- `host2`: asks for engine "local" (dockerd under systemd), but systemd is not PID 1; and its
  /opt/quant-stack is a symlink to /etc (onboarding would chown /etc to the deploy user): refused.
- `host3`: apt-get is gone (as on a distribution onboarding does not know): refused.

Refused hosts fail alone with the reasons and are left exactly as they were; host1 proceeds.
"""
from __future__ import annotations

import random
import re

import pytest

from tests.fleet import Fleet, _keygen, socket_gid
from tests.labkit import run_pyinfra

pytestmark = pytest.mark.lab

DEPLOY = "deploys/onboard_host.py"



@pytest.fixture(scope="module")
def fleet(request, tmp_path_factory):
    fleet = Fleet(f"qtob{random.randrange(16 ** 4):04x}", tmp_path_factory.mktemp("onboard-fleet"), 3,
                  docker_socket=True, login="admin")
    request.addfinalizer(fleet.remove)
    fleet.start()
    code, out = fleet.hosts[2].exec("mv /usr/bin/apt-get /usr/bin/apt-get.disabled")
    assert code == 0, out
    code, out = fleet.hosts[1].exec("mkdir -p /opt && ln -s /etc /opt/quant-stack")
    assert code == 0, out
    return fleet


@pytest.fixture(scope="module")
def deploy_key(fleet):
    key = fleet.folder / "deploy_ed25519"
    _keygen(key, "deploy@ops")
    return key


@pytest.fixture(scope="module")
def runs(fleet, deploy_key):
    pub = {"file": str(deploy_key) + ".pub"}
    engines = ["socket", "local", "socket"]
    data = {}
    for host, engine in zip(fleet.hosts, engines):
        data[host.name] = {**host.pyinfra_host_data(), "onboard": {"engine": engine, "authorized_keys": [pub]}}
    inventory = fleet.write_inventory(fleet.folder / "inventory.py", data)
    first = run_pyinfra(inventory, DEPLOY, timeout=600)
    second = run_pyinfra(inventory, DEPLOY, timeout=600)
    only_good = run_pyinfra(inventory, DEPLOY, "--limit", fleet.hosts[0].name, timeout=600)
    return {"first": first, "second": second, "only_good": only_good}


def _host_results(run, name):
    return run.results["results"]["hosts"][name] if run.results else None


def test_first_run_onboards_the_good_host_and_refuses_the_others(runs, fleet):
    first = runs["first"]
    assert first.returncode != 0, first.report()  # two hosts refused
    output = first.stdout + first.stderr
    good, no_systemd, no_apt = (h.name for h in fleet.hosts)
    verify_lines = [line for line in output.splitlines() if f"[{good}] verify: " in line]
    assert any("checks passed" in line for line in verify_lines), first.report()
    assert not [line for line in verify_lines if re.search(r"\sFAIL\s", line)], first.report()
    assert f"[{good}] onboarding verification failed" not in output
    assert first.results is not None and first.changed >= 10, first.report()
    assert f"[{no_systemd}]" in output and "systemd is not PID 1" in output, first.report()
    assert "stack_dir /opt/quant-stack resolves to /etc on this host (a symlink)" in output, first.report()
    assert f"[{no_apt}]" in output and "no apt-get/dpkg" in output, first.report()
    assert "nothing was changed" in output
    # The docker group's consequence is said, for the host that gets it.
    assert f"[{good}] note: deploy joins the docker group, which is root on this host" in output


def test_refused_hosts_are_untouched(runs, fleet):
    for host in fleet.hosts[1:]:
        code, out = host.exec("getent passwd deploy; ls /etc/docker /etc/sudoers.d/quant-deploy "
                              "2>&1; dpkg -s docker.io >/dev/null 2>&1 && echo installed")
        assert "deploy:" not in out and "installed" not in out, f"{host.name}: {out}"
        assert out.count("No such file") == 2, f"{host.name}: {out}"
    code, out = fleet.hosts[1].exec("readlink /opt/quant-stack; stat -c %U /etc /etc/passwd")
    assert out.split() == ["/etc", "root", "root"], out  # the symlink was not followed
    code, out = fleet.hosts[2].exec("ls /opt/quant-stack 2>&1")
    assert "No such file" in out, out


@pytest.mark.parametrize("unsafe, lines", [
    ({"stack_dir": "/etc"}, ["onboard.stack_dir: '/etc' is in the system directory /etc"]),
    ({"compose_file": "/etc/passwd"}, ["onboard.compose_file: '/etc/passwd' is not inside stack_dir"]),
    ({"sudo_commands": ["/bin/sh", "/usr/bin/systemctl", "/bin/cat /var/log/*"]},
     ["onboard.sudo_commands[0]: '/bin/sh': sh is a shell",
      "onboard.sudo_commands[1]: '/usr/bin/systemctl' has no arguments",
      "onboard.sudo_commands[2]: '/bin/cat /var/log/*' holds a wildcard"]),
])
def test_unsafe_settings_are_refused_before_anything_runs(fleet, deploy_key, unsafe, lines):
    host = fleet.hosts[2]
    pub = {"file": str(deploy_key) + ".pub"}
    onboard = {"engine": "socket", "authorized_keys": [pub], **unsafe}
    inventory = fleet.write_inventory(fleet.folder / "unsafe.py",
                                      {host.name: {**host.pyinfra_host_data(), "onboard": onboard}})
    run = run_pyinfra(inventory, DEPLOY, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output
    for line in lines:
        assert line in output, output[-3000:]
    code, out = host.exec("getent passwd deploy; stat -c %U /etc /etc/passwd; ls /etc/sudoers.d")
    assert "deploy" not in out and out.split()[:2] == ["root", "root"], out


def test_second_run_changes_nothing(runs):
    for key in ("second", "only_good"):
        run = runs[key]
        assert run.results is not None, run.report()
        assert run.changed == 0, run.report()
    only_good = runs["only_good"]
    assert only_good.returncode == 0 and only_good.errors == 0, only_good.report()


def test_deploy_user_logs_in_with_its_key_and_runs_docker_without_sudo(runs, fleet, deploy_key):
    host = fleet.hosts[0]
    code, out, err = host.ssh_run("id -nG; docker ps --format '{{.Names}}'", user="deploy", key=deploy_key)
    assert code == 0, err
    groups, names = out.splitlines()[0].split(), out.splitlines()[1:]
    assert "docker" in groups and "sudo" not in groups
    assert host.name in names  # the lab engine's own listing, seen from inside the host


def test_docker_group_has_the_sockets_gid(runs, fleet):
    code, out = fleet.hosts[0].exec("getent group docker | cut -d: -f3; stat -c %g /var/run/docker.sock")
    group_gid, sock_gid = out.split()
    assert int(group_gid) == int(sock_gid) == socket_gid()


def test_sudo_is_narrow(runs, fleet, deploy_key):
    host = fleet.hosts[0]
    code, out, err = host.ssh_run("sudo -n -l; sudo -n id", user="deploy", key=deploy_key)
    assert "NOPASSWD: /usr/bin/systemctl restart docker" in out
    assert code != 0 and "uid=0" not in out  # `sudo id` is not among the allowed commands
    code, out = host.exec("visudo -c && stat -c '%a %U' /etc/sudoers.d/quant-deploy && ls -a /etc/sudoers.d")
    assert code == 0 and "440 root" in out and ".staged" not in out, out


def test_daemon_json_and_stack_files(runs, fleet):
    import json

    import yaml
    host = fleet.hosts[0]
    code, out = host.exec("cat /etc/docker/daemon.json")
    assert json.loads(out) == {"log-driver": "json-file", "log-opts": {"max-file": "3", "max-size": "10m"}}
    code, out = host.exec("stat -c '%U %a %n' /opt/quant-stack /opt/quant-stack/data/postgres "
                          "/opt/quant-stack/docker-compose.yml")
    assert code == 0 and all(line.startswith("deploy ") for line in out.splitlines()), out
    code, out = host.exec("cat /opt/quant-stack/docker-compose.yml")
    doc = yaml.safe_load(out)
    mlflow = doc["services"]["mlflow"]
    assert mlflow["command"][mlflow["command"].index("--workers") + 1] == "2"
    assert mlflow["deploy"]["resources"]["limits"]["memory"] == "1g"


def test_keys_only_no_password_login(runs, fleet):
    host = fleet.hosts[0]
    code, out = host.exec("getent shadow deploy | cut -d: -f2; sshd -T | grep -E "
                          "'^(passwordauthentication|permitrootlogin|kbdinteractiveauthentication) '")
    lines = out.split()
    assert lines[0] == "*"  # no password can match, the account is not locked
    assert "passwordauthentication" in out and "passwordauthentication no" in out
    assert "permitrootlogin without-password" in out or "permitrootlogin prohibit-password" in out
