"""``sql_commands`` (tasks/operations/postgres.py) when the operation's commands run as another
user than root (``_sudo_user: postgres``: psql over the server's socket with peer
authentication). Its commands are run here in order by /bin/sh: the login user's as this
process's user (root), the operation's as ``nobody`` (``runuser``), against a scripted ``psql``
on PATH that keeps the SQL it read. Before, the psql command's ``chmod`` failed on the login
user's 0700 folder, so db_users could not run that way at all."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import FileUploadCommand, StringCommand

from tasks.core.pg_exec import PgTarget
from tasks.core.pg_sql import Statement
from tasks.operations import postgres as pg_ops

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("setfacl"),
    reason="needs root, runuser and setfacl (the acl package: scripts/setup installs it)",
)

# The scripted psql: its stdin, and who read it and how its files looked, kept under $SEEN.
FAKE_PSQL = """#!/bin/sh
cat > "$SEEN/sql"
id -un > "$SEEN/user"
stat -c '%a' "$WORKDIR" "$WORKDIR"/script.sql > "$SEEN/modes"
exit "${PSQL_EXIT:-0}"
"""
TARGET = PgTarget(mode="psql", host="/var/run/postgresql", database="quant")
STATEMENTS = [Statement("CREATE ROLE quant_user LOGIN", "create role quant_user")]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder nobody can use: the scripted psql and what it saw."""
    top = Path("/tmp") / f"quant-sqlcmd-{os.getpid()}-{tmp_path.name}"  # tmp_path: root's 0700
    for sub in ("bin", "seen", "tmp"):
        (top / sub).mkdir(parents=True)
    (top / "bin" / "psql").write_text(FAKE_PSQL)
    for path, mode in ((top, 0o755), (top / "bin", 0o755), (top / "bin" / "psql", 0o755), (top / "seen", 0o777),
                       (top / "tmp", 0o1777)):  # its own /tmp (sticky): never the suite's, which others check
        path.chmod(mode)
    monkeypatch.setattr(pg_ops, "private_dir", lambda: f"{top}/tmp/quant-pg-{secrets.token_hex(8)}")
    monkeypatch.setattr(pg_ops.runner, "connector_arguments", lambda _host: {"_sudo": True, "_sudo_user": "nobody"})
    yield top
    shutil.rmtree(top, ignore_errors=True)


def run_commands(place: Path, psql_exit: int = 0, path: str | None = None) -> tuple[str, list, int, str]:
    """sql_commands' commands run in order until one fails: (workdir, commands, exit code, stderr)."""
    commands = list(pg_ops.sql_commands(TARGET, STATEMENTS))
    workdir = str(commands[0]).split()[-1]
    env = {"PATH": path or f"{place / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "SEEN": str(place / "seen"),
           "WORKDIR": workdir, "PSQL_EXIT": str(psql_exit)}
    for command in commands:
        as_login = command.connector_arguments.get("_sudo") is False
        if isinstance(command, FileUploadCommand):
            assert as_login
            Path(command.dest).write_bytes(command.src.read().encode() if isinstance(command.src, io.StringIO)
                                           else command.src.read())
            continue
        assert isinstance(command, StringCommand)
        argv = ["/bin/sh", "-c", str(command)]
        if not as_login:
            argv = ["runuser", "-u", "nobody", "--", "env", *(f"{k}={v}" for k, v in env.items()), *argv]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            return workdir, commands, done.returncode, done.stderr
    return workdir, commands, 0, ""


def test_the_escalated_user_reads_the_sql_by_acl_and_the_folder_is_gone_after(place):
    workdir, commands, code, err = run_commands(place)
    assert code == 0, err
    seen = place / "seen"
    assert (seen / "user").read_text().strip() == "nobody"
    assert "CREATE ROLE quant_user LOGIN" in (seen / "sql").read_text()
    # nobody got in by the ACL, not by the modes: others nothing (the group bits show the ACL's mask)
    assert [mode[0] + mode[2] for mode in (seen / "modes").read_text().split()] == ["70", "60"]
    assert not Path(workdir).exists()
    # the login user's steps and the operation's: psql alone runs as the other user
    as_login = [c.connector_arguments.get("_sudo") is False for c in commands]
    assert as_login == [True, True, True, False, True]


def test_when_psql_fails_its_code_is_the_commands_and_no_file_stays(place):
    workdir, _, code, _ = run_commands(place, psql_exit=3)
    assert code == 3
    assert Path(workdir).is_dir() and os.listdir(workdir) == []  # emptied; only its owner may rmdir it
    assert stat.S_IMODE(Path(workdir).stat().st_mode) & 0o007 == 0


def test_without_setfacl_it_says_so_and_the_folder_goes(place, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("chmod", "rm", "mkdir", "cat", "id", "stat", "env"):
        (bare / tool).symlink_to(shutil.which(tool))
    workdir, _, code, err = run_commands(place, path=f"{place / 'bin'}:{bare}")
    assert code != 0 and "cannot let nobody read the SQL: setfacl (the acl package)" in err
    assert not Path(workdir).exists()


def test_as_root_or_the_login_user_the_commands_are_as_before(monkeypatch):
    monkeypatch.setattr(pg_ops.runner, "connector_arguments", lambda _host: {"_sudo": True})
    commands = list(pg_ops.sql_commands(TARGET, STATEMENTS))
    workdir = str(commands[0]).split()[-1]
    assert len(commands) == 3 and "setfacl" not in str(commands[-1])
    assert str(commands[-1]).startswith(f"chmod 0600 {workdir}/* && ")
    assert str(commands[-1]).endswith(f"; rc=$?; rm -rf {workdir}; exit $rc")
