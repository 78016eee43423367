"""The controller killed in the middle of a compose apply, on the compose-style lab (real
docker-compose, the user's own file): the file before the apply stays beside it as
`.docker-compose.yml.quantlab-previous` until the change is verified or undone, so the next plain
run knows the apply did not finish, says so (under --dry too), applies and verifies again, and
removes the copy; a failure (any exception) writes the copy back.

pyinfra runs as a subprocess with QUANT_FAULT=<step> (tasks/operations/faults.py). One lab; the
tests run in file order, each starting from the state the one before converged to.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.facts.compose import pending_path
from tasks.operations.faults import ENV
from tests.faultkit import dry, killed
from tests.labkit import REPO, gunicorn_timeout, mlflow_serves, new_lab, run_pyinfra

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "fix_mlflow.py"
GIB = 1 << 30
A, B = {}, {"timeout": 61}  # the fix, and one gunicorn option off it


@pytest.fixture(scope="module")
def lab(request):
    handle = new_lab("qccr", 18000)
    request.addfinalizer(handle.down)
    handle.up("incident", style="compose")
    return handle


def inventory(tmp_path: Path, lab, settings: dict) -> Path:
    path = tmp_path / "inventory.py"
    path.write_text(
        "from tasks.lab.inventory import lab_compose_host_data\n"
        f"data = lab_compose_host_data({lab.prefix!r})\n"
        f"data['mlflow'].update({settings!r})\n"
        "hosts = [('@local', data)]\n"
    )
    return path


def run(inv: Path, fault: str | None = None, *args: str):
    return run_pyinfra(inv, DEPLOY, *args, env={ENV: fault or ""})


def compose_file(lab) -> Path:
    return Path(lab.state["compose_file"])


def copy(lab) -> Path:
    return Path(pending_path(str(compose_file(lab))))


def mlflow(lab):
    return lab.container("mlflow")


def timeout_of(lab) -> str:
    return gunicorn_timeout(lab.container("mlflow"))


def serving(lab) -> None:
    mlflow_serves(lab)


def found_line(lab) -> str:
    return f"found {copy(lab)}: an apply of {compose_file(lab)} did not finish"


def converges(lab, inv: Path, timeout: str) -> None:
    rerun = run(inv)
    assert rerun.returncode == 0, rerun.report()
    assert found_line(lab) in rerun.stderr, rerun.report()
    assert "failed verification" not in rerun.stderr, rerun.report()
    assert not copy(lab).exists()
    assert mlflow(lab).status == "running"
    assert mlflow(lab).attrs["HostConfig"]["Memory"] == GIB
    assert timeout_of(lab) == timeout
    serving(lab)
    again = run(inv)
    assert again.returncode == 0 and again.changed == 0, again.report()


def test_killed_after_writing_the_file(lab, tmp_path):
    inv = inventory(tmp_path, lab, A)
    original, before = compose_file(lab).read_text(), mlflow(lab).id
    mode = compose_file(lab).stat().st_mode
    killed(run(inv, "compose.after-write"), "compose.after-write")
    written = compose_file(lab).read_text()
    assert written != original and "memory: 1g" in written
    assert copy(lab).read_text() == original and copy(lab).stat().st_mode == mode
    assert mlflow(lab).id == before  # not applied
    planned = dry(inv, DEPLOY)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert found_line(lab) in planned.stdout + planned.stderr
    assert compose_file(lab).read_text() == written and copy(lab).read_text() == original
    assert mlflow(lab).id == before, "--dry changes nothing"
    converges(lab, inv, "60")
    assert mlflow(lab).id != before


def test_killed_after_compose_up(lab, tmp_path):
    inv = inventory(tmp_path, lab, B)
    text_a, before = compose_file(lab).read_text(), mlflow(lab).id
    killed(run(inv, "compose.after-up"), "compose.after-up")
    assert copy(lab).read_text() == text_a
    assert mlflow(lab).id != before  # applied, never verified
    converges(lab, inv, "61")


def test_a_non_operation_error_after_up_writes_the_file_back(lab, tmp_path):
    text_b = compose_file(lab).read_text()
    failed = run(inventory(tmp_path, lab, A), "compose.after-up:raise")
    assert failed.returncode != 0, failed.report()
    assert "InjectedFault: fault injected at compose.after-up" in failed.stderr, failed.report()
    assert "is back and applied" in failed.stderr, failed.report()
    assert compose_file(lab).read_text() == text_b
    assert not copy(lab).exists()
    assert mlflow(lab).status == "running" and timeout_of(lab) == "61"
    serving(lab)
    back = run(inventory(tmp_path, lab, B))
    assert back.returncode == 0 and back.changed == 0, back.report()
