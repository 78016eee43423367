import shlex
import subprocess

import pytest

from tasks.core.mlflow_server import (
    NEUTRALIZED_ENV,
    PROCESS_LIST_COMMAND,
    count_workers,
    desired_container,
    expected_worker_processes,
    parse_mlflow_version,
    server_spec,
)
from tasks.core.sizes import GIB, MIB
from tasks.settings import load as load_settings
from tasks.settings.mlflow import MlflowSettings

GUNICORN_OPTS = "--timeout 60 --max-requests 100 --max-requests-jitter 10 --worker-class sync"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mlflow, version 2.9.2\n", (2, 9, 2)),
        ("mlflow, version 3.5.1", (3, 5, 1)),
        ("/x/cli.py:12: FutureWarning: blah\nmlflow, version 3.3.0rc0\n", (3, 3, 0)),
        ("3.1.0.dev0", (3, 1, 0)),
        ("2.9", (2, 9, 0)),
    ],
)
def test_parse_mlflow_version(text, expected):
    assert parse_mlflow_version(text) == expected


@pytest.mark.parametrize("text", ["", "mlflow: command not found", "version x.y"])
def test_parse_mlflow_version_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_mlflow_version(text)


def test_mlflow_2_uses_gunicorn_flags():
    spec = server_spec(MlflowSettings(), "mlflow, version 2.9.2")
    assert spec.kind == "gunicorn"
    assert list(spec.command) == [
        "mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
        "--workers", "2", "--gunicorn-opts", GUNICORN_OPTS,
    ]
    # A stale GUNICORN_CMD_ARGS (e.g. --threads) must not leak in: it is blanked.
    assert spec.env["GUNICORN_CMD_ARGS"] == ""
    assert spec.notes == ()
    assert expected_worker_processes(spec) == 2


@pytest.mark.parametrize("version", [(3, 0, 0), (3, 2, 9)])
def test_mlflow_3_before_3_3_still_gunicorn(version):
    assert server_spec(MlflowSettings(), version).kind == "gunicorn"


def test_mlflow_3_3_defaults_to_uvicorn_and_names_dropped_settings():
    spec = server_spec(MlflowSettings(workers=3), (3, 5, 0))
    assert spec.kind == "uvicorn"
    cmd = list(spec.command)
    assert cmd[cmd.index("--workers") + 1] == "3"
    assert cmd[cmd.index("--uvicorn-opts") + 1] == "--limit-max-requests 100"
    assert "--gunicorn-opts" not in cmd
    # Both server-option env vars blanked: a stale MLFLOW_GUNICORN_OPTS would switch servers.
    assert spec.env == {**NEUTRALIZED_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    notes = " ".join(spec.notes)
    for dropped in ("timeout=60", "max_requests_jitter=10", "worker_class=sync"):
        assert dropped in notes
    assert expected_worker_processes(spec) == 3


def test_uvicorn_single_worker_does_not_limit_requests():
    spec = server_spec(MlflowSettings(workers=1), (3, 4, 0))
    assert "--uvicorn-opts" not in spec.command
    assert any("max_requests=100 not applied" in n for n in spec.notes)


def test_forcing_gunicorn_on_3x():
    settings = load_settings("mlflow", "lab", {"server": "gunicorn"})
    spec = server_spec(settings, (3, 6, 0))
    assert spec.kind == "gunicorn"
    assert spec.command[spec.command.index("--gunicorn-opts") + 1] == GUNICORN_OPTS
    assert "--uvicorn-opts" not in spec.command
    assert any("gunicorn forced" in n for n in spec.notes)


def test_forcing_gunicorn_with_uvicorn_only_flags_is_refused():
    settings = MlflowSettings(server="gunicorn", extra_args=("--allowed-hosts", "x"))
    with pytest.raises(ValueError, match="--allowed-hosts work only with uvicorn"):
        server_spec(settings, (3, 6, 0))


def test_uvicorn_on_mlflow_2_is_refused():
    with pytest.raises(ValueError, match="needs MLflow 3.3"):
        server_spec(MlflowSettings(server="uvicorn"), (2, 9, 2))


def test_store_flags_and_extra_args_order():
    settings = MlflowSettings(
        backend_store_uri="postgresql://mlflow@db/mlflow",
        artifacts_destination="s3://bucket/a",
        extra_args=("--serve-artifacts",),
    )
    cmd = list(server_spec(settings, (2, 9, 2)).command)
    assert cmd[cmd.index("--backend-store-uri") + 1] == "postgresql://mlflow@db/mlflow"
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://bucket/a"
    assert cmd[-1] == "--serve-artifacts"
    assert "--default-artifact-root" not in cmd


def test_desired_container_merges_env_and_marks_secrets():
    settings = load_settings("mlflow",
        "lab",
        {
            "env": {"MLFLOW_X": "1"},
            "ports": ["127.0.0.1:15500:5000"],
            "network": "lab-net",
            "secret_env": {"MLFLOW_BACKEND_STORE_URI": {"env": "DB"}},
        },
    )
    server = server_spec(settings, (2, 9, 2))
    spec = desired_container(settings, server, {"MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@db/m"})
    assert spec.env["MLFLOW_X"] == "1"
    assert spec.env["GUNICORN_CMD_ARGS"] == ""
    assert spec.secret_env_keys == {"MLFLOW_BACKEND_STORE_URI"}
    assert spec.ports == ("127.0.0.1:15500:5000/tcp",)
    assert spec.networks == ("lab-net",)
    assert (spec.memory, spec.memory_reservation) == (GIB, 512 * MIB)
    assert "postgresql://u:p@db/m" not in " ".join(spec.command)


# ps -eo pid,ppid,args inside the lab's 2.9.2 container (2 workers).
PS_GUNICORN = """\
    PID    PPID COMMAND
      1       0 /opt/venv/bin/python /opt/venv/bin/mlflow server --host 0.0.0.0 --port 5000 --workers 2 --gunicorn-opts --timeout 60 --max-requests 100
     21       1 /opt/venv/bin/python /opt/venv/bin/gunicorn --timeout 60 --max-requests 100 -b 0.0.0.0:5000 -w 2 mlflow.server:app
     23      21 /opt/venv/bin/python /opt/venv/bin/gunicorn --timeout 60 --max-requests 100 -b 0.0.0.0:5000 -w 2 mlflow.server:app
     24      21 /opt/venv/bin/python /opt/venv/bin/gunicorn --timeout 60 --max-requests 100 -b 0.0.0.0:5000 -w 2 mlflow.server:app
     30       0 ps -eo pid,ppid,args
"""

# MLflow >= 3.x with --gunicorn-opts runs `python -m gunicorn`; setproctitle renames.
PS_GUNICORN_M = """\
  1 0 /opt/venv/bin/python /opt/venv/bin/mlflow server --workers 4 --gunicorn-opts --timeout 60
  9 1 /opt/venv/bin/python -m gunicorn --timeout 60 -b 0.0.0.0:5000 -w 4 mlflow.server:app
 10 9 gunicorn: worker [mlflow.server:app]
 11 9 gunicorn: worker [mlflow.server:app]
 12 9 gunicorn: worker [mlflow.server:app]
 13 9 gunicorn: worker [mlflow.server:app]
"""

PS_UVICORN = """\
PID PPID COMMAND
  1    0 /opt/venv/bin/python /opt/venv/bin/mlflow server --host 0.0.0.0 --port 5000 --workers 2 --uvicorn-opts --limit-max-requests 100
  8    1 /opt/venv/bin/python -m uvicorn --limit-max-requests 100 --host 0.0.0.0 --port 5000 --workers 2 mlflow.server.fastapi_app:app
  9    8 /opt/venv/bin/python -c from multiprocessing.resource_tracker import main;main(4)
 10    8 /opt/venv/bin/python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7) --multiprocessing-fork
 11    8 /opt/venv/bin/python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=9) --multiprocessing-fork
"""

PS_UVICORN_ONE = """\
  1 0 /opt/venv/bin/python /opt/venv/bin/mlflow server --workers 1
  8 1 /opt/venv/bin/python -m uvicorn --host 0.0.0.0 --port 5000 --workers 1 mlflow.server.fastapi_app:app
"""


@pytest.mark.parametrize(
    "ps, kind, expected",
    [
        (PS_GUNICORN, "gunicorn", 2),
        (PS_GUNICORN_M, "gunicorn", 4),
        (PS_UVICORN, "uvicorn", 2),
        (PS_UVICORN_ONE, "uvicorn", 1),
        (PS_UVICORN, "gunicorn", 0),  # wrong server: no gunicorn workers at all
        (PS_GUNICORN, "uvicorn", 0),
        ("", "gunicorn", 0),
        # master up, workers not yet forked
        ("1 0 python /v/bin/mlflow server\n2 1 python /v/bin/gunicorn -w 2 app\n", "gunicorn", 0),
    ],
)
def test_count_workers(ps, kind, expected):
    assert count_workers(ps, kind) == expected


def test_count_workers_incident_four_workers_is_not_two():
    ps = PS_GUNICORN + "     25      21 /opt/venv/bin/python /opt/venv/bin/gunicorn -w 4 mlflow.server:app\n"
    assert count_workers(ps, "gunicorn") == 3


def test_process_list_command_runs_without_ps(tmp_path):
    # Exercise the /proc fallback branch on this machine by hiding ps from PATH.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("sed", "tr"):
        path = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (fake_bin / tool).symlink_to(path)
    out = subprocess.run(
        ["/bin/sh", "-c", PROCESS_LIST_COMMAND],
        capture_output=True, text=True, env={"PATH": str(fake_bin)}, check=True,
    ).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    malformed = sum(1 for r in rows if len(r) < 3 or not (r[0].isdigit() and r[1].isdigit()))
    assert rows and malformed == 0, f"{malformed} malformed lines of {len(rows)}"
    assert any(r[2].startswith("/bin/sh -c") for r in rows), "own shell not listed"


def test_gunicorn_opts_survive_shell_quoting():
    spec = server_spec(MlflowSettings(), (2, 9, 2))
    assert shlex.split(shlex.join(spec.command)) == list(spec.command)


def test_mlflow_3_job_runner_off_unless_settings_turn_it_on():
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in server_spec(MlflowSettings(), (2, 9, 2)).env
    on = MlflowSettings(env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in server_spec(on, (3, 17, 2)).env
