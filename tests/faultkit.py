"""Runs of a deploy with a fault point set (tasks/operations/faults.py) and what the crash tests
check of them: the controller killed where it was asked, the plan `--dry` prints after it."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tasks.operations.faults import ENV, MARK
from tests.labkit import GROUP_DATA, pyinfra_process


def dry(inv: Path, deploy: Path) -> subprocess.CompletedProcess:
    """`pyinfra --dry` (without -y, which would skip planning): what the plan says."""
    return pyinfra_process("--dry", "--group-data", str(GROUP_DATA), str(inv), str(deploy), env={ENV: ""},
                           timeout=300)


def killed(result, step: str) -> None:
    """The controller killed itself at ``step``, as the fault asked."""
    assert result.returncode == -signal.SIGKILL, result.report()
    assert f"{MARK} killing the controller at {step}" in result.stderr, result.report()
