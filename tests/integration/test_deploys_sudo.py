"""Every deploy over real SSH as a non-root user with sudo, twice: the second run reports no
changes (cleanup_database: only its VACUUM, which always counts, by design); and a command run at
execution time (inside an operation's callback) went through sudo.

The host is one tests/fleet.py `sshhost` container logged into as `admin`: the first login a cloud
image gives, a non-root user with passwordless sudo, so pyinfra runs with `_sudo` (host data).
`admin` is not in the docker group: without sudo it cannot reach the engine at all, so every
docker command a deploy runs, at planning or execution, works only through sudo. The host shares
this machine's network (sshd on 127.0.0.1:<port>; the lab's services on their 127.0.0.1 ports, as
on a stack host), has the lab engine's socket, the lab's folder (its compose file) at the same
path and this checkout read-only (for the scheduled job). `Defaults logfile` makes sudo log every
command it runs, with its full command line, to a file the test reads.

Order is the file's order, on one incident lab: onboarding (installs the docker CLI and makes the
`deploy` user), then remediate (which fixes MLflow, the backend and the missing role from their
log signatures, and writes its record under /var/lib/quantlab as root), then each other deploy.
"""
from __future__ import annotations

import datetime as _dt
import json
import re

import pytest

from tests.fleet import Fleet, _keygen
from tests.labkit import REPO, run_pyinfra, shared_lab

pytestmark = pytest.mark.lab

SUDO_LOG = "/var/log/quantlab-sudo.log"
RECORD = "/var/lib/quantlab/remediation-runs.json"
# Onboarding first: it installs the docker CLI the others need. Remediate next, on the incident.
DEPLOYS = ["onboard_host", "remediate", "fix_mlflow", "fix_backend_reload", "db_users",
           "cleanup_database", "verify_stack", "schedule_cleanup"]


@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident")


@pytest.fixture(scope="module")
def host(request, lab, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sudo-host")
    fleet = Fleet(f"{lab.prefix}su", folder, 1, docker_socket=True, login="admin", host_network=True,
                  mounts=(str(REPO / ".lab" / lab.prefix), f"{REPO}:ro"))
    request.addfinalizer(fleet.remove)
    fleet.start()
    host = fleet.hosts[0]
    code, out = host.exec(f"printf 'Defaults logfile={SUDO_LOG}\\nDefaults loglinelen=0\\n' > /etc/sudoers.d/00-log"
                          " && chmod 0440 /etc/sudoers.d/00-log && visudo -cf /etc/sudoers.d/00-log")
    assert code == 0, out
    host.fleet = fleet
    return host


@pytest.fixture(scope="module")
def inventory(lab, host, tmp_path_factory):
    from tasks.lab.inventory import lab_host_data

    key = host.fleet.folder / "deploy_ed25519"
    _keygen(key, "deploy@ops")
    data = lab_host_data(lab.prefix)
    data.update(host.pyinfra_host_data())
    assert data["ssh_user"] == "admin" and data["_sudo"] is True
    data["onboard"] = {"engine": "socket", "authorized_keys": [{"file": f"{key}.pub"}]}
    # The record on the host where the deploys keep it (not the lab's folder): made with sudo.
    data["remediate"] = {"record_path": RECORD, "report_dir": str(tmp_path_factory.mktemp("reports"))}
    data["cleanup_schedule"] = {"project_dir": str(REPO), "env": {"QUANTLAB_PREFIX": lab.prefix}}
    return host.fleet.write_inventory(host.fleet.folder / "inventory.py", {host.name: data})


@pytest.fixture(scope="module")
def runs(inventory, host):
    out: dict = {}
    fixed_at = None
    for deploy in DEPLOYS:
        path = REPO / "deploys" / f"{deploy}.py"
        # verify_stack reads the logs since the fixes: the incident's own failure lines predate them.
        env = {"QUANTLAB_VERIFY_SINCE": fixed_at} if deploy == "verify_stack" and fixed_at else None
        out[deploy] = (run_pyinfra(inventory, path, env=env, timeout=900),
                       run_pyinfra(inventory, path, env=env, timeout=900))
        if deploy == "remediate":
            fixed_at = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        (host.fleet.folder / f"{deploy}.log").write_text(
            "\n".join(f"{run.report(tail=20000)}" for run in out[deploy]))
    return out


def test_admin_reaches_docker_only_through_sudo(host, runs):
    code, _, err = host.ssh_run("docker ps -q")
    assert code != 0 and "permission denied" in err.lower(), err
    code, out, err = host.ssh_run("sudo -n docker ps -q")
    assert code == 0, err


# By design VACUUM (ANALYZE) always runs and counts as a change (dead tuples before -> after), and
# the statistics after it with it (README, tests/integration/test_cleanup.py): the deletion is what
# must not change on a second run.
ALWAYS_CHANGE = {"cleanup_database": ["Clean the database | VACUUM (ANALYZE)",
                                      "Clean the database | Statistics after cleanup"]}


@pytest.mark.parametrize("deploy", DEPLOYS)
def test_each_deploy_succeeds_then_changes_nothing(runs, deploy):
    first, second = runs[deploy]
    assert first.returncode == 0 and first.errors == 0, first.report()
    assert second.returncode == 0 and second.errors == 0, second.report()
    assert second.changed_ops() == ALWAYS_CHANGE.get(deploy, []), second.report()


def test_the_incident_needed_changes(runs):
    """Not a run of no-ops: onboarding and remediate changed the host and the stack."""
    assert runs["onboard_host"][0].changed >= 1, runs["onboard_host"][0].report()
    assert runs["remediate"][0].changed >= 1, runs["remediate"][0].report()


def _sudo_commands(host) -> list[str]:
    code, out = host.exec(f"cat {SUDO_LOG}")
    assert code == 0, out
    return [line for line in out.splitlines() if "admin :" in line and "USER=root" in line and "COMMAND=" in line]


def test_a_command_run_at_execution_time_went_through_sudo(runs, host, lab):
    """The recreate's `docker rename <mlflow> <mlflow>-previous` runs inside the operation's
    callback (tasks/operations/docker.py, through tasks/operations/runner.py): sudo ran it as root."""
    name = lab.name("mlflow")
    wanted = f"docker rename {name} {name}-previous"
    commands = _sudo_commands(host)
    assert any(wanted in line for line in commands), "\n".join(commands[-40:])
    # And a secret file's consumer: the new container made from a 0600 body the login user uploaded.
    assert any("/tmp/quantlab-create." in line and "body.json" in line for line in commands), \
        "\n".join(commands[-40:])


def test_the_remediation_record_is_roots_and_holds_the_throttle(runs, host):
    code, out = host.exec(f"stat -c '%U %a' /var/lib/quantlab {RECORD} && cat {RECORD}")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("root ") and lines[1].startswith("root "), out
    record = json.loads("\n".join(lines[2:]))
    assert record, out
    # The second run read the record back (through sudo) and held off: nothing to run again.
    second = runs["remediate"][1]
    assert re.search(r"predate its last run at|throttled", second.stdout + second.stderr), second.report()
    assert second.changed == 0, second.report()
