"""The controller killed mid-change, on the real lab: the next plain run finds what the dead one
left on the host, says so (under --dry too), and finishes or undoes it: verified, nothing left
over, MLflow serving, and the run after that changes nothing.

pyinfra runs as a subprocess with QUANT_FAULT=<step> (tasks/operations/faults.py): at that step
it kills itself with SIGKILL (exit -9), with no finally or rollback running. One incident lab for
the module; the tests run in file order and chain: each kill's rerun leaves the state the next
test starts from. A recreate alternates between two settings (gunicorn's timeout 60 and 61, a
command change), so each test recreates MLflow again.
"""
from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest

from tasks.core.cleanup_sql import APPLICATION_NAME
from tasks.operations.faults import ENV
from tests.faultkit import dry, killed
from tests.labkit import (
    PARTS,
    REPO,
    containers_by_name,
    gunicorn_timeout,
    mlflow_serves,
    run_pyinfra,
    shared_lab,
    write_inventory,
)

pytestmark = pytest.mark.lab

FIX = REPO / "deploys" / "fix_mlflow.py"
DB_USERS = REPO / "deploys" / "db_users.py"
CLEANUP = REPO / "deploys" / "cleanup_database.py"
A, B = {}, {"timeout": 61}  # the fix as the lab's inventory says, and one gunicorn option off it
TEST_USERS = "(username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%')"


@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident", needs=PARTS, changes=PARTS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


def inventory(folder: Path, lab, settings: dict) -> Path:
    return write_inventory(folder / f"inventory_{len(settings)}.py", lab.prefix, settings)


def run(inv: Path, deploy: Path = FIX, fault: str | None = None, *args: str):
    return run_pyinfra(inv, deploy, *args, env={ENV: fault} if fault else {ENV: ""})


def containers(lab) -> dict[str, str]:
    """The lab's MLflow containers (the current one, its kept copy) by name: their status."""
    client = docker.from_env()
    name = lab.name("mlflow")
    return {n: status for n, status in containers_by_name(client).items() if n in (name, f"{name}-previous")}


def timeout_of(lab) -> str:
    return gunicorn_timeout(lab.container("mlflow"))


def serving(lab) -> None:
    mlflow_serves(lab)


def converges(lab, inv: Path, found: str, timeout: str) -> None:
    """A plain run finds ``found``, ends verified with one MLflow container; the next changes nothing."""
    rerun = run(inv)
    assert rerun.returncode == 0, rerun.report()
    assert found in rerun.stderr, rerun.report()
    assert "failed verification" not in rerun.stderr, rerun.report()
    assert containers(lab) == {lab.name("mlflow"): "running"}
    assert timeout_of(lab) == timeout
    serving(lab)
    again = run(inv)
    assert again.returncode == 0, again.report()
    assert again.changed == 0, again.changed_ops()


def test_killed_after_rename(lab, folder):
    name = lab.name("mlflow")
    killed(run(inventory(folder, lab, A), fault="recreate.after-rename"), "recreate.after-rename")
    assert list(containers(lab)) == [f"{name}-previous"]  # the incident's, running (or restarting)
    converges(lab, inventory(folder, lab, A), f"found {name}-previous (", "60")


def test_killed_after_stop(lab, folder):
    name = lab.name("mlflow")
    killed(run(inventory(folder, lab, B), fault="recreate.after-stop"), "recreate.after-stop")
    assert containers(lab) == {f"{name}-previous": "exited"}
    converges(lab, inventory(folder, lab, B), f"found {name}-previous (stopped, exit code", "61")


def test_killed_after_create_and_dry_run_says_what_it_found(lab, folder):
    name = lab.name("mlflow")
    inv = inventory(folder, lab, A)
    killed(run(inv, fault="recreate.after-create"), "recreate.after-create")
    left = containers(lab)
    assert left == {name: "created", f"{name}-previous": "exited"}
    planned = dry(inv, FIX)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    found = "the unverified new container of a recreate that did not finish"
    assert f"found {name} (created, never started), {found}" in planned.stdout + planned.stderr
    assert containers(lab) == left, "--dry changes nothing"
    converges(lab, inv, found, "60")


def test_killed_after_start(lab, folder):
    name = lab.name("mlflow")
    killed(run(inventory(folder, lab, B), fault="recreate.after-start"), "recreate.after-start")
    assert containers(lab) == {name: "running", f"{name}-previous": "exited"}
    converges(lab, inventory(folder, lab, B), f"found {name} running and matching the settings", "61")


def test_killed_during_verification(lab, folder):
    """The issue's own case: the next run used to say "No changes" and keep -previous for good."""
    name = lab.name("mlflow")
    killed(run(inventory(folder, lab, A), fault="recreate.verify"), "recreate.verify")
    assert containers(lab) == {name: "running", f"{name}-previous": "exited"}
    converges(lab, inventory(folder, lab, A), f"found {name} running and matching the settings", "60")


def test_a_non_operation_error_while_starting_puts_the_previous_container_back(lab, folder):
    name = lab.name("mlflow")
    before = lab.container("mlflow").id
    failed = run(inventory(folder, lab, B), fault="recreate.after-create:raise")
    assert failed.returncode != 0, failed.report()
    assert "InjectedFault: fault injected at recreate.after-create" in failed.stderr, failed.report()
    assert "previous container restored and started, and it is running" in failed.stderr, failed.report()
    assert containers(lab) == {name: "running"}
    assert lab.container("mlflow").id == before
    assert timeout_of(lab) == "60"
    serving(lab)
    back = run(inventory(folder, lab, A))  # the container is the one from before, as A says
    assert back.returncode == 0 and back.changed == 0, back.report()


def test_killed_during_a_rollback(lab, folder):
    name = lab.name("mlflow")
    inv = inventory(folder, lab, B)
    killed(run(inv, fault="recreate.verify:raise,recreate.rollback"), "recreate.rollback")
    assert containers(lab) == {f"{name}-previous": "exited"}
    converges(lab, inv, f"found {name}-previous (stopped, exit code", "61")


# -- db_users: the role made, its grants not yet ----------------------------------------------


def grants(lab) -> str:
    return lab.psql("SELECT has_database_privilege('quant_user', 'quant', 'CONNECT') AND "
                    "has_table_privilege('quant_user', 'public.users', 'SELECT') AND "
                    "has_sequence_privilege('quant_user', 'public.users_id_seq', 'USAGE')")


def test_db_users_killed_between_role_and_grants(lab, folder):
    inv = inventory(folder, lab, A)
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "0"  # the incident
    killed(run(inv, DB_USERS, "db_users.after-role"), "db_users.after-role")
    assert lab.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'quant_user'") == "1"
    assert lab.psql("SELECT has_table_privilege('quant_user', 'public.users', 'SELECT')") == "f"
    rerun = run(inv, DB_USERS)
    assert rerun.returncode == 0, rerun.report()
    assert "can use what it was granted" in rerun.stderr, rerun.report()
    assert grants(lab) == "t"
    again = run(inv, DB_USERS)
    assert again.returncode == 0 and again.changed == 0, again.report()


# -- cleanup: killed inside the deletion's transaction, and between two VACUUMs -----------------


def rows(lab) -> tuple[int, str]:
    """Matching leftovers, and every other row of the users-side tables (as one digest)."""
    matched = int(lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}"))
    others = lab.psql(
        "SELECT md5(string_agg(t, ',' ORDER BY t)) FROM ("
        f"SELECT 'u' || u::text AS t FROM users u WHERE NOT {TEST_USERS.replace('username', 'u.username')} "
        "UNION ALL SELECT 'p' || p::text FROM portfolios p JOIN users u ON u.id = p.user_id "
        f"WHERE NOT {TEST_USERS.replace('username', 'u.username')}) AS s")
    return matched, others


def orphans(lab, expected: list[str] | None = None) -> list[str]:
    """The states of the cleanup sessions left (waiting a little for ``expected``)."""
    for _ in range(20):
        found = lab.psql(f"SELECT state FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"
                         ).splitlines()
        if expected is None or found == expected:
            break
        time.sleep(0.5)
    return found


def test_cleanup_killed_mid_delete(lab, folder):
    inv = inventory(folder, lab, A)
    matched, others = rows(lab)
    assert matched >= 10
    killed(run(inv, CLEANUP, "cleanup.mid-delete"), "cleanup.mid-delete")
    # The dead run's session sits idle in its transaction, the rows deleted but not committed.
    assert orphans(lab, ["idle in transaction"]) == ["idle in transaction"]
    assert rows(lab) == (matched, others)
    planned = dry(inv, CLEANUP)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "holds the cleanup lock, left by a cleanup run that did not finish" in planned.stdout + planned.stderr
    assert orphans(lab) == ["idle in transaction"] and rows(lab) == (matched, others), "--dry changes nothing"
    rerun = run(inv, CLEANUP)
    assert rerun.returncode == 0, rerun.report()
    assert "found: session pid" in rerun.stderr, rerun.report()
    assert "cleanup: found and ended session pid" in rerun.stderr, rerun.report()
    assert "idle in transaction" in rerun.stderr
    assert rows(lab) == (0, others), "only what the guards let go is gone"
    again = run(inv, CLEANUP)
    assert again.returncode == 0, again.report()
    assert "Delete load-test rows (guarded)" not in again.changed_ops()  # VACUUM always counts
    serving(lab)


def test_cleanup_killed_mid_vacuum(lab, folder):
    inv = inventory(folder, lab, A)
    before = rows(lab)
    killed(run(inv, CLEANUP, "cleanup.mid-vacuum"), "cleanup.mid-vacuum")
    assert orphans(lab, ["idle"]) == ["idle"]  # between two tables, holding the session lock
    rerun = run(inv, CLEANUP)
    assert rerun.returncode == 0, rerun.report()
    assert "cleanup: found and ended session pid" in rerun.stderr, rerun.report()
    assert "vacuumed" in rerun.stderr or "VACUUM" in rerun.stderr
    assert rows(lab) == before
    assert orphans(lab) == []
    assert containers(lab) == {lab.name("mlflow"): "running"}
    serving(lab)
