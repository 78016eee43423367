"""pyinfra runs forked from the warm process (tasks/lab/prefork.py) against what a plain `pyinfra`
subprocess does with the same argv: same exit codes, same results, environment and atexit hooks
honoured, a timeout killing the run, a second caller told to run its own subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tasks.lab.harness import PYINFRA, REPO
from tasks.lab.prefork import Prefork

DEPLOY = """\
import atexit, os
from pyinfra.operations import files, server

atexit.register(lambda: print("atexit ran for", os.environ.get("PREFORK_MARK")))
server.shell(name="wait", commands=["sleep " + os.environ.get("PREFORK_SLEEP", "0")])
files.file(name="marker", path=os.environ["PREFORK_FILE"])
"""


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "deploy.py").write_text(DEPLOY)
    (tmp_path / "inventory.py").write_text("hosts = ['@local']\n")
    prefork = Prefork(PYINFRA.parent / "python", REPO)
    yield tmp_path, prefork
    prefork.close()


def _argv(folder: Path) -> list[str]:
    return [str(PYINFRA), "-y", "--json", str(folder / "inventory.py"), str(folder / "deploy.py")]


def _env(folder: Path, name: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFORK_MARK": name, "PREFORK_FILE": str(folder / name), **extra}


def _totals(stdout: str) -> dict:
    document, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])  # the atexit line follows
    return document["results"]["totals"]


def test_a_forked_run_does_what_the_subprocess_does(setup):
    folder, prefork = setup
    plain = subprocess.run(_argv(folder), capture_output=True, text=True, cwd=REPO, env=_env(folder, "plain"),
                           timeout=120)
    forked = prefork.run(_argv(folder), _env(folder, "forked"), REPO, timeout=120)
    assert forked is not None
    assert plain.returncode == forked.returncode == 0, forked.stderr
    assert _totals(plain.stdout) == _totals(forked.stdout)
    assert (folder / "plain").exists() and (folder / "forked").exists()  # each read its own environment
    assert "atexit ran for forked" in forked.stdout and "atexit ran for plain" in plain.stdout
    again = prefork.run(_argv(folder), _env(folder, "forked"), REPO, timeout=120)
    assert again is not None and again.returncode == 0 and _totals(again.stdout)["no_change"] == 1


def test_a_failing_run_keeps_its_exit_code(setup):
    folder, prefork = setup
    argv = [str(PYINFRA), "-y", str(folder / "inventory.py"), str(folder / "missing.py")]
    plain = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    forked = prefork.run(argv, _env(folder, "x"), REPO, timeout=120)
    assert forked is not None and plain.returncode != 0
    assert forked.returncode == plain.returncode, forked.stderr


def test_a_run_past_its_timeout_is_killed_and_the_next_one_runs(setup):
    folder, prefork = setup
    with pytest.raises(subprocess.TimeoutExpired):
        prefork.run(_argv(folder), _env(folder, "slow", PREFORK_SLEEP="30"), REPO, timeout=3)
    after = prefork.run(_argv(folder), _env(folder, "after"), REPO, timeout=120)
    assert after is not None and after.returncode == 0, after.stderr


def test_a_second_caller_meanwhile_is_told_to_run_its_own(setup):
    folder, prefork = setup
    results = {}
    slow = threading.Thread(target=lambda: results.setdefault("slow", prefork.run(
        _argv(folder), _env(folder, "slow", PREFORK_SLEEP="5"), REPO, timeout=120)))
    slow.start()
    try:
        for _ in range(100):
            if prefork.lock.locked():
                break
            time.sleep(0.05)
        assert prefork.run(_argv(folder), _env(folder, "busy"), REPO, timeout=120) is None
    finally:
        slow.join()
    assert results["slow"] is not None and results["slow"].returncode == 0


def test_a_run_left_before_its_answer_does_not_put_the_next_one_out_of_step(setup, monkeypatch):
    folder, prefork = setup
    answer = prefork._answer
    calls = []

    def interrupted(deadline):
        calls.append(deadline)
        if len(calls) == 2:  # the run's own answer: as if pytest-timeout or ^C fired while waiting
            raise KeyboardInterrupt
        return answer(deadline)

    monkeypatch.setattr(prefork, "_answer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prefork.run(_argv(folder), _env(folder, "left", PREFORK_SLEEP="30"), REPO, timeout=120)
    assert prefork.proc is None  # the warm process went with the run
    monkeypatch.setattr(prefork, "_answer", answer)
    after = prefork.run(_argv(folder), _env(folder, "after"), REPO, timeout=120)
    assert after is not None and after.returncode == 0, after.stderr
    assert _totals(after.stdout)["success"] == 2  # its own answers, not the left run's
