"""tasks/lab/sshd.py's argv: when sshd's sessions get a stock ~/.bashrc (a private mount namespace,
root and `unshare` only) and when sshd runs as is. No sshd is started here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tasks.lab.sshd import SSHD, sshd_argv, uses_shell_rc

CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None


def _home(tmp_path: Path, bashrc: bool) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    if bashrc:
        (home / ".bashrc").write_text("eval \"$(pyenv init -)\"\n")
    return home


def test_without_a_shell_rc_sshd_runs_as_is(tmp_path):
    home = _home(tmp_path, bashrc=True)
    assert not uses_shell_rc(None, home)
    assert sshd_argv(tmp_path / "sshd_config", None, home) == [str(SSHD), "-D", "-e", "-f", str(tmp_path / "sshd_config")]


def test_a_home_without_a_bashrc_has_nothing_to_mount_over(tmp_path):
    home, rc = _home(tmp_path, bashrc=False), tmp_path / "dot.bashrc"
    rc.write_text("# stock\n")
    assert not uses_shell_rc(rc, home)
    assert sshd_argv(tmp_path / "c", rc, home)[0] == str(SSHD)


@pytest.mark.skipif(not CAN_UNSHARE, reason="the namespace needs root and util-linux's unshare")
def test_as_root_the_sessions_get_the_stock_rc_in_a_private_mount_namespace(tmp_path):
    home, rc = _home(tmp_path, bashrc=True), tmp_path / "dot.bashrc"
    rc.write_text("# stock\n")
    assert uses_shell_rc(rc, home)
    argv = sshd_argv(tmp_path / "c", rc, home)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    # the rc is bind-mounted over the user's own, then sshd is exec'd in the foreground
    assert argv[-7:] == [str(rc), str(home / ".bashrc"), str(SSHD), "-D", "-e", "-f", str(tmp_path / "c")]
