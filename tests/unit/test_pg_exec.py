"""Command building for host-side psql and docker exec: secrets never on a command line."""

import os
import shlex

import pytest

from tasks.core.pg_exec import (
    PgTarget,
    PgTargetError,
    pgpass_line,
    psql_argv,
    resolve_password,
    shell_command,
)


def test_psql_mode_argv_uses_a_password_file_not_the_password():
    t = PgTarget("psql", host="127.0.0.1", port=15432, user="postgres", database="quant",
                 password_source={"env": "PGADMIN_PASSWORD"})  # fmt: skip
    argv = psql_argv(t, passfile="/tmp/run-1/pgpass")
    assert argv == [
        "env", "PGCONNECT_TIMEOUT=10", "PGPASSFILE=/tmp/run-1/pgpass",
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
        "-h", "127.0.0.1", "-p", "15432", "-U", "postgres", "-d", "quant",
    ]  # fmt: skip
    assert not any("PGPASSWORD" in a for a in argv)


def test_psql_mode_needs_the_passfile_when_a_password_is_configured():
    t = PgTarget("psql", host="db", user="postgres", password_source={"file": "~/.quant/pg"})
    with pytest.raises(PgTargetError, match="password file path"):
        psql_argv(t)


def test_psql_mode_without_password_source():
    argv = psql_argv(PgTarget("psql", host="/var/run/postgresql", port=5432))
    assert argv[:2] == ["env", "PGCONNECT_TIMEOUT=10"] and "PGPASSFILE" not in " ".join(argv)


def test_docker_mode_argv():
    argv = psql_argv(PgTarget("docker", container="quant-postgres", database="mlflow"))
    assert argv == [
        "docker", "exec", "-i", "-u", "postgres", "quant-postgres",
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-U", "postgres", "-d", "mlflow",
    ]  # fmt: skip


def test_database_names_that_psql_would_read_as_conninfo_are_quoted():
    argv = psql_argv(PgTarget("docker", container="pg", database="a=b'c"))
    assert argv[-1] == "dbname='a=b\\'c'"
    argv = psql_argv(PgTarget("docker", container="pg", database="postgresql://evil/x"))
    assert argv[-1] == "dbname='postgresql://evil/x'"
    assert psql_argv(PgTarget("docker", container="pg", database="quant-db"))[-1] == "quant-db"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="ssh"), "mode"),
        (dict(mode="psql"), "host"),
        (dict(mode="psql", host="db", port=0), "port"),
        (dict(mode="psql", host="db", port="5432"), "port"),
        (dict(mode="psql", host="db; rm -rf /"), "host"),
        (dict(mode="psql", host="db", container="pg"), "docker mode"),
        (dict(mode="psql", host="db", password_source={"env": "A", "file": "/x"}), "password_source"),
        (dict(mode="psql", host="db", password_source={"env": "1BAD"}), "variable name"),
        (dict(mode="psql", host="db", password_source={"vault": "x"}), "env"),
        (dict(mode="psql", host="db", password_source="hunter2"), "password_source"),
        (dict(mode="docker"), "container"),
        (dict(mode="docker", container="-it"), "container"),
        (dict(mode="docker", container="pg", host="db"), "host"),
        (dict(mode="docker", container="pg", password_source={"env": "X"}), "peer auth"),
        (dict(mode="docker", container="pg", database=""), "database"),
        (dict(mode="docker", container="pg", user="a\nb"), "newline"),
    ],
)
def test_target_validation(kwargs, match):
    with pytest.raises(PgTargetError, match=match):
        PgTarget(**kwargs)


def test_shell_command_quotes_every_word_and_feeds_stdin():
    argv = psql_argv(PgTarget("psql", host="db", user="quant user", database="x; rm -rf /"))
    cmd = shell_command(argv, "/tmp/run 1/plan.sql")
    assert cmd.endswith(" < '/tmp/run 1/plan.sql'")
    words = shlex.split(cmd.rsplit(" < ", 1)[0])
    assert words == argv  # the shell sees exactly the argv, nothing more


def test_pgpass_line_escapes_separators():
    assert pgpass_line("quant-user", "pa:ss\\w:rd") == "*:*:*:quant-user:pa\\:ss\\\\w\\:rd\n"
    with pytest.raises(PgTargetError):
        pgpass_line("u", "two\nlines")


def test_resolve_password_from_env_and_file(tmp_path):
    assert resolve_password({"env": "QPW"}, environ={"QPW": "s3cret"}) == "s3cret"
    with pytest.raises(PgTargetError, match="QPW is unset") as err:
        resolve_password({"env": "QPW"}, environ={})
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    os.chmod(f, 0o600)
    assert resolve_password({"file": str(f)}) == "from-file"
    f.write_text("")
    with pytest.raises(PgTargetError, match="empty"):
        resolve_password({"file": str(f)})
    with pytest.raises(PgTargetError, match="cannot read"):
        resolve_password({"file": str(tmp_path / "missing")})
    assert "s3cret" not in str(err.value)
