"""The `sshd` fixture: a real OpenSSH server for a test module (tasks/lab/sshd.py says what it is
and how it is set up). Use it from a test module with::

    from tests.sshd import sshd  # noqa: F401  (the fixture)

    def test_something(sshd):
        host_data = sshd.pyinfra_host_data()
"""
from __future__ import annotations

import pytest

# re-exported for the tests
from tasks.lab.sshd import (
    HOST,
    PRIVSEP_DIR,
    SSH_KEYGEN,
    SSHD,
    SSHD_MISSING,
    SshServer,
    _wait_ready,
    free_port,
    keygen,
    restart_sshd,
    sshd_argv,
    sshd_config,
    start_sshd,
    stock_shell_rc,
    stop_sshd,
)

__all__ = [
    "HOST", "PRIVSEP_DIR", "SSH_KEYGEN", "SSHD", "SSHD_MISSING", "SshServer", "_wait_ready", "free_port",
    "keygen", "restart_sshd", "sshd_argv", "sshd_config", "start_sshd", "stock_shell_rc", "stop_sshd", "sshd",
]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd for this module (see the module docstring); killed at teardown."""
    if not SSHD.exists():
        pytest.skip(SSHD_MISSING)
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server.process)
