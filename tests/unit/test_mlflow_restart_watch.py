"""fix_mlflow's verification (tasks/checks/mlflow.py verify_mlflow) watches the new container's
restart count for ``mlflow.restart_watch`` seconds, counted from when it was first seen: a restart
within the window fails it (the recreate then rolls back), 0 turns the watch off. A scripted host
answers the checks' commands; time is the real clock, with windows of a fraction of a second."""
from __future__ import annotations

import json
import shlex
import time

import pytest

from tasks.checks.logs import MARKER
from tasks.checks.mlflow import verify_mlflow
from tasks.settings.mlflow import MlflowSettings

NAME = "qtunit-mlflow"
PS = (
    "PID PPID COMMAND\n"
    "1 0 /sbin/docker-init -- mlflow server --workers 2\n"
    "7 1 /opt/mlflow/bin/python3 /opt/mlflow/bin/mlflow server --workers 2\n"
    "11 7 /opt/mlflow/bin/python3 -m gunicorn -b 0.0.0.0:5000 -w 2 mlflow.server:app\n"
    "12 11 /opt/mlflow/bin/python3 -m gunicorn -b 0.0.0.0:5000 -w 2 mlflow.server:app\n"
    "13 11 /opt/mlflow/bin/python3 -m gunicorn -b 0.0.0.0:5000 -w 2 mlflow.server:app\n"
)


class Host:
    """Answers what the checks ask; the restart count becomes ``restart_after[1]`` once
    ``restart_after[0]`` seconds have passed since the first inspect."""

    def __init__(self, restart_after: tuple[float, int] | None = None):
        self.restart_after = restart_after
        self.first: float | None = None
        self.inspects = 0

    def restarts(self) -> int:
        if self.first is None:
            self.first = time.monotonic()
        if self.restart_after and time.monotonic() - self.first >= self.restart_after[0]:
            return self.restart_after[1]
        return 0

    def __call__(self, command: str) -> tuple[bool, str]:
        if command.startswith("timeout "):  # the checks' shell bounds each command
            command = shlex.split(command)[-1]
        if command.startswith("docker inspect --type container"):
            self.inspects += 1
            state = {"Status": "running", "Running": True, "Restarting": False, "OOMKilled": False,
                     "ExitCode": 0, "StartedAt": "2026-12-02T07:00:00.000000000Z"}
            data = {"Config": {"Image": "quantlab/mlflow2"}, "Created": "2026-12-02T07:00:00Z",
                    "State": state, "RestartCount": self.restarts(), "HostConfig": {"Memory": 1 << 30}}
            return True, json.dumps([data])
        if command.startswith("docker exec") and "memory.events" in command:
            return True, "oom 0\noom_kill 0\n"
        if command.startswith("docker exec") and "memory.current" in command:
            return True, f"v2\n{300 << 20}\n{1 << 30}\ninactive_file 0\n"
        if command.startswith("docker stats"):
            return True, "300MiB / 1GiB\n"
        if "/health" in command:
            return True, "OK\nHTTP 200\n"
        if "experiments/search" in command:
            return True, '{"experiments": []}\nHTTP 200\n'
        if command.startswith("docker exec") and "ps -eo" in command:
            return True, PS
        if command.startswith("{ docker logs"):
            return True, f"{MARKER}0\n"
        raise AssertionError(f"unexpected command: {command}")


def results(host: Host, watch: float) -> dict[str, tuple[str, str]]:
    found = verify_mlflow(host, NAME, 5000, "gunicorn", 2, start_seconds=5, restart_watch=watch)
    return {r.name: (r.status, r.evidence) for r in found}


WATCH = f"container {NAME} restart count is stable"


def test_a_quiet_container_passes_after_the_window_from_when_it_was_first_seen():
    start = time.monotonic()
    checks = results(Host(), 0.6)
    assert time.monotonic() - start >= 0.6
    assert checks[WATCH][0] == "pass" and "restart count 0, unchanged" in checks[WATCH][1]
    assert all(status in ("pass", "skip") for status, _ in checks.values())  # artifacts: off
    assert list(checks)[-1] == f"no known failure line in {NAME}'s logs since it started"


def test_a_restart_within_the_window_fails_the_verification():
    checks = results(Host(restart_after=(0.3, 1)), 0.8)
    assert checks[WATCH][0] == "fail"
    assert "restart count went 0 -> 1" in checks[WATCH][1]


def test_zero_turns_the_watch_off():
    host = Host(restart_after=(0.0, 1))  # a restart it would see at once: not looked at
    checks = results(host, 0)
    assert WATCH not in checks


def test_the_setting_is_a_duration_with_a_short_default():
    assert MlflowSettings().restart_watch == 5
    assert MlflowSettings(restart_watch="1500ms").restart_watch == pytest.approx(1.5)
    assert MlflowSettings(restart_watch=0).restart_watch == 0
    with pytest.raises(ValueError):
        MlflowSettings(restart_watch=-1)
