"""Fault points (tasks/operations/faults.py): nothing unless QUANT_FAULT names the step; then the
process dies by SIGKILL (no finally, no atexit) or raises a plain RuntimeError."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.api import OperationError

from tasks.operations import faults

TASKS = Path(__file__).resolve().parents[2] / "tasks"


@pytest.mark.parametrize("environ", [{}, {"QUANT_FAULT": ""}, {"QUANT_FAULT": "recreate.after-stop"},
                                     {"QUANT_FAULT": "recreate.after-stop:raise"}])
def test_a_fault_point_not_named_does_nothing(environ):
    faults.fault_point("recreate.after-rename", environ)
    assert faults.armed("recreate.after-rename", environ) is None
    assert faults.kill_during("cleanup.mid-delete", 0.01, environ) is False


def test_unset_in_this_process_does_nothing(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    for step in sorted(faults.STEPS):
        faults.fault_point(step)
        assert faults.kill_during(step, 0.01) is False


def test_raise_is_not_an_operation_error():
    with pytest.raises(faults.InjectedFault, match="recreate.after-create") as caught:
        faults.fault_point("recreate.after-create", {"QUANT_FAULT": "recreate.after-create:raise"})
    assert not isinstance(caught.value, OperationError)
    # a timed kill only kills: in raise mode it does nothing
    assert faults.kill_during("recreate.after-create", 0.01, {"QUANT_FAULT": "recreate.after-create:raise"}) is False


def test_unknown_steps_and_modes_are_refused():
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.fault_point("recreate.after-lunch", {})
    with pytest.raises(ValueError, match="mode"):
        faults.armed("recreate.verify", {"QUANT_FAULT": "recreate.verify:explode"})


def _run(code: str, fault: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"QUANT_FAULT": fault, "PYTHONPATH": str(TASKS.parent)})


def test_kill_is_sigkill_with_no_cleanup():
    code = ("import atexit; from tasks.operations.faults import fault_point\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "try:\n    fault_point('compose.after-up')\nfinally:\n    print('finally ran')\n"
            "print('went on')\n")
    proc = _run(code, "compose.after-up:kill")
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == ""
    assert f"{faults.MARK} killing the controller at compose.after-up" in proc.stderr


def test_kill_during_kills_while_the_caller_waits():
    code = ("import time; from tasks.operations.faults import kill_during\n"
            "print(kill_during('cleanup.mid-vacuum', 0.2), flush=True)\ntime.sleep(30)\nprint('woke')\n")
    proc = _run(code, "cleanup.mid-vacuum")
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == "True\n"
    assert "killing the controller at cleanup.mid-vacuum" in proc.stderr


def test_every_step_is_placed_once_in_the_code():
    text = "\n".join(path.read_text() for path in TASKS.rglob("*.py") if path.name != "faults.py")
    placed = re.findall(r'(?:fault_point|kill_during)\(\s*"([a-z_.-]+)"', text)
    placed += re.findall(r'\{"fault": "([a-z_.-]+)"\}', text)
    placed += re.findall(r"_with_fault\(\w+, \"([a-z_.-]+)\"\)", text)
    assert sorted(placed) == sorted(faults.STEPS)


def test_several_steps_comma_separated():
    environ = {"QUANT_FAULT": "recreate.verify:raise, recreate.rollback"}
    assert faults.armed("recreate.verify", environ) == "raise"
    assert faults.armed("recreate.rollback", environ) == "kill"
    assert faults.armed("recreate.after-stop", environ) is None
