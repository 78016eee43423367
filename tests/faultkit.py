"""Runs of a deploy with a fault point set (tasks/operations/faults.py) and what the crash tests
check of them: the controller killed where it was asked, the plan `--dry` prints after it."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tasks.operations.faults import ENV, MARK
from tests.labkit import GROUP_DATA, PYINFRA, REPO


def dry(inv: Path, deploy: Path) -> subprocess.CompletedProcess:
    """`pyinfra --dry` (without -y, which would skip planning): what the plan says."""
    return subprocess.run([str(PYINFRA), "--dry", "--group-data", str(GROUP_DATA), str(inv), str(deploy)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, ENV: ""})


def killed(result, step: str) -> None:
    """The controller killed itself at ``step``, as the fault asked."""
    assert result.returncode == -signal.SIGKILL, result.report()
    assert f"{MARK} killing the controller at {step}" in result.stderr, result.report()
