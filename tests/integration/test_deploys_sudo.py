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

Order is the file's order, on one incident lab: onboarding (installs the docker CLI, makes the
`deploy` user and gives its group the record's folder /var/lib/quantlab, root:deploy 2770), then
remediate (which fixes MLflow, the backend and the missing role from their log signatures, and
writes its record there as root), then each other deploy.

Then the same deploys logged in as `deploy`, the user onboarding made (its key, no `_sudo`: its
sudo rules are narrow, one exact program line each, and pyinfra's `sudo -H -n sh -c '...'`
matches none of them). No deploy needs sudo as `deploy`, and the sudo log shows it used none:
it reaches the engine through the docker group, replaces root's record through its group's
folder (a new file moved over the old one), and schedules the cleanup as its own job (its
crontab, its files under its home: a job for root or a systemd timer would need root). Onboarding
itself needs root: as `deploy` it refuses in one line, nothing changed, both runs.
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
    fixed_at = None  # also kept as out["fixed_at"] for the deploy user's pass
    for deploy in DEPLOYS:
        path = REPO / "deploys" / f"{deploy}.py"
        # verify_stack reads the logs since the fixes: the incident's own failure lines predate them.
        env = {"QUANTLAB_VERIFY_SINCE": fixed_at} if deploy == "verify_stack" and fixed_at else None
        out[deploy] = (run_pyinfra(inventory, path, env=env, timeout=900),
                       run_pyinfra(inventory, path, env=env, timeout=900))
        if deploy == "remediate":
            fixed_at = out["fixed_at"] = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
    code, out = host.exec(f"stat -c '%U %G %a' /var/lib/quantlab {RECORD} && cat {RECORD}")
    assert code == 0, out
    lines = out.splitlines()
    # The folder as onboarding made it: root's, the deploy user's group writes it, others nothing.
    assert lines[0] == "root deploy 2770" and lines[1].startswith("root deploy "), out
    record = json.loads("\n".join(lines[2:]))
    assert record, out
    # The second run read the record back (through sudo) and held off: nothing to run again.
    second = runs["remediate"][1]
    assert re.search(r"predate its last run at|throttled", second.stdout + second.stderr), second.report()
    assert second.changed == 0, second.report()


# -- the same deploys as `deploy`, the user onboarding made -----------------------------------------

EMPTY_RECORD = '{"version": 1, "runs": {}}'


@pytest.fixture(scope="module")
def deploy_inventory(lab, host, inventory, tmp_path_factory):
    """`deploy` with the key onboarding authorized, no `_sudo`; the cleanup as its own job."""
    from tasks.lab.inventory import lab_host_data

    data = lab_host_data(lab.prefix)
    data.update(host.pyinfra_host_data(user="deploy", key=host.fleet.folder / "deploy_ed25519"))
    assert data["ssh_user"] == "deploy" and "_sudo" not in data
    data["onboard"] = {"engine": "socket", "authorized_keys": [{"file": f"{host.fleet.folder / 'deploy_ed25519'}.pub"}]}
    data["remediate"] = {"record_path": RECORD, "report_dir": str(tmp_path_factory.mktemp("deploy-reports"))}
    data["cleanup_schedule"] = {"project_dir": str(REPO), "env": {"QUANTLAB_PREFIX": lab.prefix}, "user": "deploy"}
    return host.fleet.write_inventory(host.fleet.folder / "inventory-deploy.py", {host.name: data})


@pytest.fixture(scope="module")
def deploy_runs(runs, deploy_inventory, host):
    """Each deploy twice as `deploy`, after the admin pass. The admin pass's record holds off every
    remediation of the incident (its findings predate it), so its runs are emptied first, by
    root in place (the file stays root's): the deploy user's remediate runs them again and must
    replace root's record itself."""
    code, text = host.exec(f"printf '%s\\n' '{EMPTY_RECORD}' > {RECORD} && stat -c '%U %G' {RECORD}")
    assert code == 0 and text.strip() == "root deploy", text
    out: dict = {}
    for deploy in DEPLOYS:
        path = REPO / "deploys" / f"{deploy}.py"
        env = {"QUANTLAB_VERIFY_SINCE": runs["fixed_at"]} if deploy == "verify_stack" else None
        out[deploy] = (run_pyinfra(deploy_inventory, path, env=env, timeout=900),
                       run_pyinfra(deploy_inventory, path, env=env, timeout=900))
        (host.fleet.folder / f"deploy-{deploy}.log").write_text(
            "\n".join(f"{run.report(tail=20000)}" for run in out[deploy]))
    return out


@pytest.mark.parametrize("deploy", [d for d in DEPLOYS if d != "onboard_host"])
def test_each_deploy_as_deploy_succeeds_then_changes_nothing(deploy_runs, deploy):
    first, second = deploy_runs[deploy]
    assert first.returncode == 0 and first.errors == 0, first.report()
    assert second.returncode == 0 and second.errors == 0, second.report()
    assert second.changed_ops() == ALWAYS_CHANGE.get(deploy, []), second.report()


def test_no_deploy_as_deploy_went_through_sudo(deploy_runs, host):
    """No deploy needs sudo as `deploy` (the module doc says why): sudo's log, which holds the
    admin pass's commands, holds none of deploy's."""
    code, out = host.exec(f"cat {SUDO_LOG}")
    assert code == 0, out
    assert any("admin :" in line for line in out.splitlines()), out[-2000:]
    assert not [line for line in out.splitlines() if "deploy :" in line], out[-4000:]


def test_onboarding_as_deploy_refuses_in_one_line_and_changes_nothing(deploy_runs):
    for run in deploy_runs["onboard_host"]:
        text = run.stdout + run.stderr  # a failed host: pyinfra prints no JSON, its recap says it
        assert run.returncode != 0 and "1 host(s): 0 ok, 0 changed, 1 failed" in text, run.report()
        assert ("logged in as deploy, the deploy user onboarding makes, without root: its sudo is narrow by "
                "design") in text, run.report()
        assert "nothing was changed" in text, run.report()


def test_deploy_replaced_roots_record_and_the_second_run_holds_off(deploy_runs, host):
    first, second = deploy_runs["remediate"]
    assert first.changed >= 1, first.report()  # it ran the remediations again, and recorded them
    code, out = host.exec(f"stat -c '%U %G %a' /var/lib/quantlab {RECORD} && cat {RECORD}"
                          " && ls -A /var/lib/quantlab")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "root deploy 2770" and lines[1].startswith("deploy deploy "), out
    record = json.loads("\n".join(lines[2:-1]))
    assert record["runs"], out
    assert lines[-1] == "remediation-runs.json", out  # no temp file left beside it
    assert re.search(r"predate its last run at|throttled", second.stdout + second.stderr), second.report()
    assert second.changed == 0, second.report()


def test_the_cleanup_is_deploys_own_job(deploy_runs, host):
    key = host.fleet.folder / "deploy_ed25519"
    script = "/home/deploy/.local/lib/quant-remediation/quant-db-cleanup.sh"
    code, out, err = host.ssh_run(f"crontab -l && stat -c '%U %a' {script}", user="deploy", key=key)
    assert code == 0, err
    assert "# pyinfra-name=quant-db-cleanup" in out and f"17 3 * * * {script}" in out, out
    assert out.splitlines()[-1] == "deploy 700", out
    # root's job from the admin pass is still root's, untouched
    code, out = host.exec("crontab -l -u root")
    assert code == 0 and "/usr/local/lib/quant-remediation/quant-db-cleanup.sh" in out, out


def test_deploy_reaches_docker_through_its_group_and_its_sudo_is_narrow(host, deploy_runs):
    """Last: sudo logs the refused `sh -c` as deploy's."""
    key = host.fleet.folder / "deploy_ed25519"
    code, out, err = host.ssh_run("id -nG && docker ps -q", user="deploy", key=key)
    assert code == 0 and "docker" in out.split("\n")[0].split(), out + err
    # pyinfra's _sudo wraps each command in `sh -c`: no rule of deploy's allows it.
    code, _, err = host.ssh_run("sudo -n -H sh -c true", user="deploy", key=key)
    assert code != 0, err
