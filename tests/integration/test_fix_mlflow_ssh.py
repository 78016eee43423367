"""deploys/fix_mlflow.py over real SSH: pyinfra's @ssh connector (paramiko) → a real OpenSSH server on
127.0.0.1 (tests/sshd.py) → this same machine, whose `docker` CLI drives the lab's engine.

Order is the file's order: the incident lab, a first run that fixes it, a second run that changes
nothing, then the container's real state and the runs' output are checked. A finalizer takes the lab
down whatever happens.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.labkit import MLFLOW, run_pyinfra, shared_lab, write_inventory
from tests.sshd import sshd  # noqa: F401  (fixture)

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploys" / "fix_mlflow.py"
GIB, MIB = 1024 ** 3, 1024 ** 2



@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident", needs={MLFLOW}, changes={MLFLOW})


@pytest.fixture(scope="module")
def inventory(lab, sshd, tmp_path_factory):
    host_data = sshd.pyinfra_host_data()
    assert host_data["ssh_user"] == "root", "the SSH deploy test logs in as root (docker access)"
    return write_inventory(tmp_path_factory.mktemp("inv") / "ssh_inventory.py", lab.prefix,
                           host="127.0.0.1", host_data=host_data)


@pytest.fixture(scope="module")
def runs(lab, inventory):
    before = lab.container("mlflow").attrs
    first = run_pyinfra(inventory, DEPLOY)
    second = run_pyinfra(inventory, DEPLOY)
    return {"first": first, "second": second, "mlflow_before": before}


def test_the_lab_started_from_the_incident(runs):
    before = runs["mlflow_before"]
    assert before["HostConfig"]["Memory"] == 420 * MIB
    command = before["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "4"


def test_first_run_over_ssh_fixes_mlflow(runs, lab, sshd):
    first = runs["first"]
    assert first.returncode == 0, first.report()
    assert first.errors == 0, first.report()
    assert first.changed >= 1, first.report()
    # It really went through sshd: the server logged a public-key login for our user.
    assert f"Accepted publickey for {sshd.user}" in sshd.log_text()
    assert lab.container("mlflow").id != runs["mlflow_before"]["Id"]  # recreated (command changed)
    output = first.stdout + first.stderr
    assert "verification" in output, first.report()


def test_second_run_changes_nothing(runs):
    second = runs["second"]
    assert second.returncode == 0, second.report()
    assert second.errors == 0, second.report()
    assert second.changed == 0, second.report()


def test_container_has_the_fix(runs, lab):
    attrs = lab.container("mlflow").attrs
    assert attrs["HostConfig"]["Memory"] == GIB == 1073741824
    assert attrs["HostConfig"]["MemoryReservation"] == 512 * MIB == 536870912
    command = attrs["Config"]["Cmd"]
    assert command[command.index("--workers") + 1] == "2", command
    opts = command[command.index("--gunicorn-opts") + 1].split()
    assert opts[opts.index("--max-requests") + 1] == "100", opts
    assert attrs["State"]["Running"] and not attrs["State"]["OOMKilled"]


def test_previous_container_was_removed(runs, lab):
    import docker
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(f"{lab.prefix}-mlflow-previous")


def test_no_secret_in_pyinfra_output(runs, lab):
    folder = Path(lab.state["home"]) / "secrets"  # .lab/<prefix>/secrets unless QUANTLAB_HOME
    secrets = {path.name: path.read_text().strip() for path in folder.iterdir() if path.is_file()}
    assert secrets and all(secrets.values())
    for key in ("first", "second"):
        run = runs[key]
        for name, value in secrets.items():
            assert value not in run.stdout, f"{name} leaked into the {key} run's stdout"
            assert value not in run.stderr, f"{name} leaked into the {key} run's stderr"
