"""deploys/fix_mlflow.py across MLflow versions, against the lab's real images (@local).

One private lab (healthy scenario, MLflow 2.9.2 under gunicorn), then, in the file's order:

MLflow 3.x migrates the database schema when it starts, after which 2.9.2 refuses it (alembic: "Can't
locate revision ..."); so the 3.x steps use their own database, `mlflow3`, and the 2.9.2 one stays
valid for the way back (step 4) and for rollbacks.

1. the image switched to MLflow 3.x with the default settings → recreated under uvicorn
   (`--uvicorn-opts "--limit-max-requests 100"`, no `--gunicorn-opts`), the job runner turned off
   (MLflow 3.x starts 7 huey consumers by default, ~1.7 GiB, which cannot fit the 1 GiB limit), verified,
   and the settings uvicorn has no equivalent for are named;
2. the same again → no changes;
3. `server: gunicorn` on MLflow 3.x → recreated with `--gunicorn-opts`, 2 gunicorn workers;
4. MLflow 2.9.2 on the store 3.x migrated → refused before any change;
5. back to MLflow 2.9.2 on its own store → recreated, 2 gunicorn workers.

Worker counts here are read independently of the deploy's own check: from the host's view of the
container's processes (`docker top`), parent by parent. A finalizer takes the lab down.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.labkit import MLFLOW, ROLES, SERVICES, run_pyinfra, shared_lab, write_inventory

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploys" / "fix_mlflow.py"
VERSION_LABEL = "io.quantlab.mlflow-version"
UVICORN_NOTES = ("timeout=60 not applied", "max_requests_jitter=10 not applied",
                 "worker_class=sync not applied")



def _processes(container: str) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, args) of every process in the container, as the host's `ps` sees them."""
    out = subprocess.run(["docker", "top", container, "-eo", "pid,ppid,args"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    procs = {}
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        procs[int(pid)] = (int(ppid), args)
    return procs


def _is_gunicorn(args: str) -> bool:
    """The process is gunicorn itself (`.../bin/gunicorn ...`, `python3 -m gunicorn ...` as
    MLflow 3.x starts it), not a process that merely mentions it (`mlflow server --gunicorn-opts`)."""
    tokens = args.split()
    return (args.startswith("gunicorn:") or tokens[1:3] == ["-m", "gunicorn"]
            or any(token.rsplit("/", 1)[-1] == "gunicorn" for token in tokens[:2]))


def _workers(container: str, kind: str) -> tuple[list[int], str]:
    """(worker pids, the server's own command line) for a gunicorn master or a uvicorn supervisor."""
    procs = _processes(container)
    if kind == "gunicorn":
        servers = [pid for pid, (ppid, args) in procs.items()
                   if _is_gunicorn(args) and not _is_gunicorn(procs.get(ppid, (0, ""))[1])]
    else:
        servers = [pid for pid, (_, args) in procs.items()
                   if "uvicorn" in args and "mlflow.server.fastapi_app:app" in args
                   and "spawn_main" not in args]
    assert len(servers) <= 1, (kind, procs)
    if not servers:  # still starting (the mlflow CLI has not started its server yet)
        return [], ""
    (server,) = servers
    children = [pid for pid, (ppid, args) in procs.items() if ppid == server
                and (kind == "gunicorn" or "spawn_main" in args)]
    return children, procs[server][1]


def _settled_workers(container: str, kind: str, expected: int) -> tuple[list[int], str]:
    """A just-started server, or workers recycled after max_requests, can show fewer for a moment:
    look a bounded number of times for the settled count."""
    seen = []
    for _ in range(60):
        workers, server = _workers(container, kind)
        seen.append(len(workers))
        if len(workers) == expected:
            return workers, server
        time.sleep(1)
    pytest.fail(f"{kind} worker counts seen: {seen}, expected {expected}")


@pytest.fixture(scope="module")
def lab(request):
    # Ends on MLflow 2 again; MLflow 3 migrated a database of its own (mlflow3), not `mlflow`.
    return shared_lab(request, "healthy", needs={MLFLOW, ROLES, SERVICES}, changes={MLFLOW})


@pytest.fixture(scope="module")
def inventories(lab, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inv")
    # A database of its own for MLflow 3.x (see the module docstring), owned by the same role.
    lab.psql("CREATE DATABASE mlflow3 OWNER mlflow", "postgres")
    # MLflow 3 imports for tens of seconds, longer on a loaded CI machine: a wider start budget.
    db3 = {"backend_store_uri": f"postgresql://mlflow@{lab.prefix}-postgres:5432/mlflow3",
           "start_timeout": 240}
    return {
        "mlflow3": write_inventory(folder / "mlflow3.py", lab.prefix, db3, mlflow_image="mlflow3"),
        "mlflow3_gunicorn": write_inventory(folder / "mlflow3_gunicorn.py", lab.prefix,
                                            {**db3, "server": "gunicorn"}, mlflow_image="mlflow3"),
        "mlflow2_on_mlflow3_store": write_inventory(folder / "mlflow2_db3.py", lab.prefix, db3,
                                                    mlflow_image="mlflow2"),
        "mlflow2": write_inventory(folder / "mlflow2.py", lab.prefix, mlflow_image="mlflow2"),
    }


@pytest.fixture(scope="module")
def steps():
    """Container ids and runs, filled in by the tests in file order."""
    return {}


def _container(lab):
    return lab.container("mlflow")


# 1. MLflow 3.x, uvicorn --------------------------------------------------------------------------

def test_mlflow3_recreates_under_uvicorn(lab, inventories, steps):
    before = _container(lab)
    assert before.attrs["Config"]["Labels"].get(VERSION_LABEL, "2.9.2").startswith("2.")
    run = run_pyinfra(inventories["mlflow3"], DEPLOY)
    steps["mlflow3"] = run
    assert run.returncode == 0 and run.errors == 0, run.report()
    assert run.changed >= 1, run.report()

    after = _container(lab)
    steps["mlflow3_id"] = after.id
    assert after.id != before.id
    assert after.attrs["Config"]["Image"] == lab.state["images"]["mlflow3"]
    assert after.attrs["Config"]["Labels"][VERSION_LABEL].startswith("3.")
    command = after.attrs["Config"]["Cmd"]
    assert "--gunicorn-opts" not in command, command
    assert command[command.index("--workers") + 1] == "2", command
    opts = command[command.index("--uvicorn-opts") + 1].split()
    assert opts[opts.index("--limit-max-requests") + 1] == "100", opts
    env = dict(item.split("=", 1) for item in after.attrs["Config"]["Env"])
    assert env.get("GUNICORN_CMD_ARGS", "") == ""  # blanked: uvicorn would ignore it anyway
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in run.stderr  # said, not silently done
    assert after.attrs["HostConfig"]["Memory"] == 1 << 30
    assert after.attrs["HostConfig"]["MemoryReservation"] == 512 << 20


def test_mlflow3_verification_passed_and_notes_name_what_uvicorn_lacks(steps):
    run = steps["mlflow3"]
    output = run.stdout + run.stderr
    assert "verification" in output, run.report()
    assert "2 uvicorn workers" in output, run.report()
    for note in UVICORN_NOTES:
        assert note in output, f"missing note {note!r}\n{run.report()}"
    assert "failed verification" not in output


def test_mlflow3_runs_two_uvicorn_workers(lab, steps):
    workers, supervisor = _settled_workers(f"{lab.prefix}-mlflow", "uvicorn", 2)
    assert "--limit-max-requests 100" in supervisor, supervisor
    assert "--workers 2" in supervisor, supervisor
    assert not any(_is_gunicorn(args) for _, args in _processes(f"{lab.prefix}-mlflow").values())


# 2. the same again: nothing to do ----------------------------------------------------------------

def test_mlflow3_second_run_changes_nothing(lab, inventories, steps):
    run = run_pyinfra(inventories["mlflow3"], DEPLOY)
    assert run.returncode == 0 and run.errors == 0, run.report()
    assert run.changed == 0, run.report()
    assert _container(lab).id == steps["mlflow3_id"]


# 3. MLflow 3.x, gunicorn on request --------------------------------------------------------------

def test_mlflow3_server_gunicorn_recreates_with_gunicorn_opts(lab, inventories, steps):
    run = run_pyinfra(inventories["mlflow3_gunicorn"], DEPLOY)
    assert run.returncode == 0 and run.errors == 0, run.report()
    assert run.changed >= 1, run.report()
    after = _container(lab)
    assert after.id != steps["mlflow3_id"]
    steps["mlflow3_gunicorn_id"] = after.id
    command = after.attrs["Config"]["Cmd"]
    assert "--uvicorn-opts" not in command, command
    opts = command[command.index("--gunicorn-opts") + 1].split()
    for flag, value in (("--timeout", "60"), ("--max-requests", "100"),
                        ("--max-requests-jitter", "10"), ("--worker-class", "sync")):
        assert opts[opts.index(flag) + 1] == value, opts
    assert "2 gunicorn workers" in run.stdout + run.stderr, run.report()

    workers, master = _settled_workers(f"{lab.prefix}-mlflow", "gunicorn", 2)
    assert "--max-requests 100" in master and "--timeout 60" in master, master


# 4. back to MLflow 2.9.2 -------------------------------------------------------------------------

def test_mlflow2_on_the_store_mlflow3_migrated_is_refused(lab, inventories):
    before = _container(lab)
    run = run_pyinfra(inventories["mlflow2_on_mlflow3_store"], DEPLOY)
    assert run.returncode != 0, run.report()
    assert "cannot open" in run.stderr and "Nothing was changed" in run.stderr, run.report()
    assert _container(lab).id == before.id


def test_back_to_mlflow2_recreates_with_two_gunicorn_workers(lab, inventories, steps):
    run = run_pyinfra(inventories["mlflow2"], DEPLOY)
    assert run.returncode == 0 and run.errors == 0, run.report()
    assert run.changed >= 1, run.report()
    after = _container(lab)
    assert after.id != steps["mlflow3_gunicorn_id"]
    assert after.attrs["Config"]["Image"] == lab.state["images"]["mlflow2"]
    assert after.attrs["Config"]["Labels"][VERSION_LABEL] == "2.9.2"
    assert "mlflow3" not in " ".join(after.attrs["Config"]["Cmd"])  # back on the 2.9.2 database
    command = after.attrs["Config"]["Cmd"]
    assert "--uvicorn-opts" not in command and "--gunicorn-opts" in command, command
    assert command[command.index("--workers") + 1] == "2", command

    workers, master = _settled_workers(f"{lab.prefix}-mlflow", "gunicorn", 2)
    assert "--max-requests 100" in master, master
