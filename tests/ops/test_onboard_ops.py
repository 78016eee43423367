"""Onboarding's facts, operations and plan without a host (tasks/facts/onboard.py,
tasks/operations/onboard.py).

- facts: each recorded probe output (tests/ops/facts/onboard.*/*.json) -> the fact's value;
- operations: facts in, commands or a noop out (tests/ops/onboard.<operation>/*.json);
- the deploy's plan for a host: refused before any change (no apt-get; engine "local" without
  systemd; a gid taken), or every step with its commands, from the recorded probe answers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pyinfra.api import OperationError

from tasks.facts import onboard as onboard_facts
from tasks.operations import onboard
from tests.ops.deploy_plan import plan as deploy_plan
from tests.ops.harness import cases, plan

OPS = Path(__file__).parent
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr1nQ3y6w3y7m0aUQ5m8n1pG5D9x0u2lGmK8rX5p1Qw deploy@ops"
SOCKET = "socket=/var/run/docker.sock"


def fact_cases() -> list:
    out = []
    for path in sorted((OPS / "facts").glob("onboard.*/*.json")):
        fact_name = path.parent.name.split(".", 1)[1]
        out.append(pytest.param(fact_name, json.loads(path.read_text()), id=f"{fact_name}/{path.stem}"))
    return out


@pytest.mark.parametrize("fact_name, case", fact_cases())
def test_fact(fact_name, case):
    fact = getattr(onboard_facts, fact_name)()
    assert fact.command(**case["arg"]) == case["command"]
    assert fact.process(case["output"]) == case["fact"]


def check_operation(op, case):
    if "exception" in case:
        with pytest.raises(OperationError) as error:
            plan(op, case["facts"], **case["kwargs"])
        assert type(error.value).__name__ == case["exception"]["name"]
        assert str(error.value) == case["exception"]["message"]
        return
    planned = plan(op, case["facts"], **case["kwargs"])
    assert planned.rendered() == case["commands"]
    assert planned.noop == case.get("noop_description")


@pytest.mark.parametrize("case", cases("onboard.group_gid"))
def test_group_gid(case):
    check_operation(onboard.group_gid, case)


@pytest.mark.parametrize("case", cases("onboard.docker_daemon_json"))
def test_docker_daemon_json(case):
    check_operation(onboard.docker_daemon_json, case)


@pytest.mark.parametrize("case", cases("onboard.sudoers"))
def test_sudoers(case):
    check_operation(onboard.sudoers, case)


# -- the deploy's plan ------------------------------------------------------------------------------

def probe(name: str) -> dict:
    return json.loads((OPS / "facts" / "onboard.OnboardProbe" / f"{name}.json").read_text())["fact"]


# What realpath -m answers on a fresh host for the default onboarding paths: each is itself.
DEFAULT_PATHS = ["/opt/quant-stack", "/opt/quant-stack/docker-compose.yml", "/home/deploy", "/var/lib/quantlab"] + [
    f"/opt/quant-stack/{d}" for d in ("data/postgres", "data/minio", "data/redis", "logs", "backups")]


RECORD_FOLDER = "Record folder /var/lib/quantlab (deploy's group writes it)"


def fresh_host(probe_name: str, **facts) -> dict:
    """What a fresh Debian host answers: nothing of ours on it yet."""
    return {
        "onboard.OnboardProbe": {SOCKET: probe(probe_name)},
        "onboard.RealPaths": {"*": {path: path for path in DEFAULT_PATHS}},
        "onboard.GroupGid": {"group=docker": None},
        "deb.DebPackages": {},
        "files.FileContents": {"*": None}, "files.File": {"*": None}, "files.Directory": {"*": None},
        "files.FindInFile": {"*": []},
        "server.Os": "Linux", "server.TmpDir": "/tmp", "server.Users": {}, "server.Groups": [],
        "server.Which": {"command=useradd": "/usr/sbin/useradd"},
        "server.AuthorizedKeys": {"*": []},
        **facts,
    }


def onboard_data(**settings) -> dict:
    return {"onboard": {"authorized_keys": [KEY], **settings}}


def names(steps) -> list[str]:
    return [name for name, _ in steps]


def test_refused_without_apt_get_nothing_else_planned():
    steps = deploy_plan(onboard.onboard, onboard_data(), fresh_host("no_apt_get"))
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    (_, [(function, message)]) = steps[0]
    assert function == "_fail" and message.startswith("cannot onboard this host, nothing was changed:")
    assert "no apt-get/dpkg (os 'debian')" in message
    assert "engine 'local' runs dockerd under systemd, but systemd is not PID 1 here (PID 1 is 'sh')" in message


def test_refused_engine_local_without_systemd():
    steps = deploy_plan(onboard.onboard, onboard_data(engine="local"), fresh_host("debian_container"))
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    message = steps[0][1][0][1]
    assert "systemd is not PID 1" in message and "apt-get" not in message


def test_refused_engine_socket_without_a_socket():
    steps = deploy_plan(onboard.onboard, onboard_data(engine="socket"), fresh_host("debian_container"))
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    assert "needs a Docker socket at /var/run/docker.sock, found missing" in steps[0][1][0][1]


def test_refused_when_the_sockets_gid_is_another_groups():
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": "users"}})
    steps = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    assert "docker_gid 106 is already the group 'users''s id" in steps[0][1][0][1]


def test_refused_when_a_path_leads_through_a_symlink_into_a_system_directory():
    # /opt/quant-stack is a symlink to /etc on this host: chowning it would hand /etc over.
    resolved = {path: path.replace("/opt/quant-stack", "/etc") for path in DEFAULT_PATHS}
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None},
                                                          "onboard.RealPaths": {"*": resolved}})
    steps = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    message = steps[0][1][0][1]
    assert ("stack_dir /opt/quant-stack resolves to /etc on this host (a symlink): '/etc' is in the "
            "system directory /etc") in message
    assert "compose_file /opt/quant-stack/docker-compose.yml resolves to /etc/docker-compose.yml" in message
    assert "home /home/deploy" not in message


def test_refused_when_paths_cannot_be_resolved():
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None},
                                                          "onboard.RealPaths": {"*": {}}})
    steps = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    assert "could not be resolved on this host" in steps[0][1][0][1]


def test_refused_when_run_as_the_deploy_user_itself():
    """Onboarding again as `deploy` (the user it made, narrow sudo, no _sudo): refused in one
    line saying why and as whom to run it; nothing else planned, nothing changed."""
    as_deploy = {**probe("debian_container_with_socket"), "uid": "1000", "user": "deploy"}
    facts = fresh_host("debian_container_with_socket", **{"onboard.OnboardProbe": {SOCKET: as_deploy},
                                                          "onboard.GroupByGid": {"gid=106": None}})
    steps = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    assert steps[0][1][0][1] == (
        "cannot onboard this host, nothing was changed:\n  logged in as deploy, the deploy user onboarding "
        "makes, without root: its sudo is narrow by design (onboard.sudo_commands); run onboarding as root "
        "or as a user with full sudo (_sudo=True), as the first time")


def test_another_non_root_login_is_told_to_connect_as_root():
    as_someone = {**probe("debian_container_with_socket"), "uid": "1001", "user": "ops"}
    facts = fresh_host("debian_container_with_socket", **{"onboard.OnboardProbe": {SOCKET: as_someone},
                                                          "onboard.GroupByGid": {"gid=106": None}})
    message = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)[0][1][0][1]
    assert "commands run as uid 1001, not root: connect as root, or as a sudo user with _sudo=True" in message


@pytest.mark.parametrize("record_path, why", [
    ("/var/lib/systemd/runs.json", "must be /var/lib/quantlab (or below it) or a folder below an allowed root"),
    ("/etc/runs.json", "must be /var/lib/quantlab (or below it) or a folder below an allowed root"),
    ("/var/lib/quantlab/./runs.json", "not a normalized absolute path"),
])
def test_refused_when_the_record_folder_is_not_the_deploys_own(record_path, why):
    """Onboarding gives the record's folder to the deploy user's group: never a system folder."""
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None}})
    data = {**onboard_data(engine="socket"), "remediate": {"record_path": record_path}}
    steps = deploy_plan(onboard.onboard, data, facts)
    assert names(steps) == ["Preflight: can this host be onboarded?"]
    folder = record_path.rsplit("/", 1)[0]
    message = steps[0][1][0][1]
    assert f"remediate.record_path's folder {folder}: " in message and why in message, message


def test_a_record_folder_below_an_allowed_root_is_made_the_groups():
    resolved = {**{path: path for path in DEFAULT_PATHS}, "/srv/quant/state": "/srv/quant/state"}
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None},
                                                          "onboard.RealPaths": {"*": resolved}})
    data = {**onboard_data(engine="socket"), "remediate": {"record_path": "/srv/quant/state/runs.json"}}
    steps = dict(deploy_plan(onboard.onboard, data, facts))
    assert steps["Record folder /srv/quant/state (deploy's group writes it)"][1] == "chmod 2770 /srv/quant/state"


def test_refused_when_the_record_folder_leads_through_a_symlink():
    resolved = {**{path: path for path in DEFAULT_PATHS}, "/var/lib/quantlab": "/etc/sudoers.d"}
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None},
                                                          "onboard.RealPaths": {"*": resolved}})
    message = deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)[0][1][0][1]
    assert ("remediate.record_path's folder /var/lib/quantlab resolves to /etc/sudoers.d on this host "
            "(a symlink)") in message


def test_real_paths_fact():
    fact = onboard_facts.RealPaths()
    assert fact.command(paths=("/opt/quant-stack", "/home/deploy")) == (
        "printf '%s\\t%s\\n' /opt/quant-stack \"$(realpath -m -- /opt/quant-stack 2>/dev/null)\"; "
        "printf '%s\\t%s\\n' /home/deploy \"$(realpath -m -- /home/deploy 2>/dev/null)\"")
    assert fact.process(["/opt/quant-stack\t/etc", "/home/deploy\t", "junk"]) == {"/opt/quant-stack": "/etc"}


def test_the_plan_says_the_docker_group_is_root_equivalent(caplog):
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None}})
    with caplog.at_level("INFO"):
        deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts)
    assert onboard.DOCKER_GROUP_NOTE.format(user="deploy") in caplog.text
    assert "root on this host in all but name" in onboard.DOCKER_GROUP_NOTE


def test_socket_engine_plan_on_a_fresh_container():
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None}})
    steps = dict(deploy_plan(onboard.onboard, onboard_data(engine="socket"), facts))
    assert list(steps) == [
        "Group docker with gid 106",
        "Docker engine and CLI from Debian's packages",
        "Docker daemon.json: container log rotation",
        "Deploy user deploy",
        "Narrow sudo for deploy (/etc/sudoers.d/quant-deploy)",
        RECORD_FOLDER,
        "Stack directory /opt/quant-stack",
        *(f"Stack directory /opt/quant-stack/{d}" for d in ("data/postgres", "data/minio", "data/redis",
                                                          "logs", "backups")),
        "Compose file /opt/quant-stack/docker-compose.yml",
        "Verify the onboarded host",
    ]  # no dockerd service: the engine is not this host's
    # The record's folder: root's, the deploy user's group writes it (setgid), others nothing.
    assert steps[RECORD_FOLDER] == ["mkdir -p /var/lib/quantlab", "chmod 2770 /var/lib/quantlab",
                                    "chown root:deploy /var/lib/quantlab"]
    assert steps["Group docker with gid 106"] == ["groupadd -r --gid 106 docker"]
    apt = steps["Docker engine and CLI from Debian's packages"]
    assert apt[0] == "apt-get update" and apt[-1].endswith("install --no-install-recommends docker.io")
    assert steps["Docker daemon.json: container log rotation"][1][2] == "/etc/docker/daemon.json"
    assert steps["Deploy user deploy"][0] == "useradd -d /home/deploy -s /bin/bash -G docker -M -p '*' deploy"
    assert any(isinstance(c, str) and KEY in c for c in steps["Deploy user deploy"])
    sudo = steps["Narrow sudo for deploy (/etc/sudoers.d/quant-deploy)"]
    assert sudo[0][2] == "/etc/sudoers.d/.quant-deploy.staged" and "visudo -cf" in sudo[1]
    upload = [c for c in steps["Compose file /opt/quant-stack/docker-compose.yml"] if isinstance(c, list)][0]
    compose = yaml.safe_load(upload[1])
    assert set(compose["services"]) == {"postgres", "minio", "redis", "mlflow"}
    assert compose["services"]["mlflow"]["deploy"]["resources"]["limits"]["memory"] == "1g"
    assert steps["Verify the onboarded host"] == []  # checks run at execution only


def test_local_engine_plan_on_a_systemd_host():
    # docker.io is installed and dockerd runs, but without log rotation yet.
    facts = fresh_host("debian_systemd_host", **{
        "deb.DebPackages": {"docker.io": ["20.10.24+dfsg1-1+b3"]},
        "systemd.SystemdStatus": {"*": {"docker.service": True}},
        "systemd.SystemdEnabled": {"*": {"docker.service": True}},
    })
    data = onboard_data(log_max_size="20m", log_max_file=5, directories=[], sudo_commands=[])
    steps = dict(deploy_plan(onboard.onboard, data, facts))
    assert "Group docker with gid 106" not in " ".join(steps)  # no gid pinned: the package's group
    apt = steps["Docker engine and CLI from Debian's packages"]
    assert apt == []  # installed: no apt-get update, no install
    assert steps["dockerd enabled and running"] == []
    # Planned; at execution its _if runs it only when daemon.json changed.
    assert steps["Restart dockerd for the new daemon.json"] == ["systemctl restart docker.service"]
    daemon = json.loads(steps["Docker daemon.json: container log rotation"][1][1])
    assert daemon["log-opts"] == {"max-size": "20m", "max-file": "5"}
    sudo = steps["Narrow sudo for deploy (/etc/sudoers.d/quant-deploy)"]
    assert "NOPASSWD" not in sudo[0][1]  # no commands: no rule at all


def test_compose_from_settings_keeps_secret_references():
    document = {"services": {"db": {"image": "postgres:15",
                                    "environment": {"POSTGRES_PASSWORD": "${PG_PW}"}}}}
    facts = fresh_host("debian_container_with_socket", **{"onboard.GroupByGid": {"gid=106": None}})
    steps = dict(deploy_plan(onboard.onboard, onboard_data(engine="socket", compose=document), facts))
    upload = [c for c in steps["Compose file /opt/quant-stack/docker-compose.yml"] if isinstance(c, list)][0]
    assert yaml.safe_load(upload[1]) == document
