"""Command building for host-side psql and docker exec: secrets never on a command line."""

import shlex
import subprocess

import pytest

from tasks.core.pg_exec import (
    PgTarget,
    pgpass_line,
    psql_argv,
    psql_tcp_argv,
    shell_command,
    with_passfile_on_stdin,
)
from tasks.settings.types import SecretSource


def test_psql_mode_argv_uses_a_password_file_not_the_password():
    t = PgTarget("psql", host="127.0.0.1", port=15432, user="postgres", database="quant",
                 password_source=SecretSource(env="PGADMIN_PASSWORD"))  # fmt: skip
    argv = psql_argv(t, passfile="/tmp/run-1/pgpass")
    assert argv == [
        "env", "PGCONNECT_TIMEOUT=10", "PGPASSFILE=/tmp/run-1/pgpass",
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
        "-h", "127.0.0.1", "-p", "15432", "-U", "postgres", "-d", "quant",
    ]  # fmt: skip
    assert not any("PGPASSWORD" in a for a in argv)


def test_psql_mode_needs_the_passfile_when_a_password_is_configured():
    t = PgTarget("psql", host="db", user="postgres", password_source=SecretSource(file="~/.quant/pg"))
    with pytest.raises(ValueError, match="password file path"):
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
        # the source's own shape is SecretSource's to check (tests/unit/test_settings.py)
        (dict(mode="psql", host="db", password_source={"env": "A"}), "secret source"),
        (dict(mode="psql", host="db", password_source="hunter2"), "secret source"),
        (dict(mode="docker"), "container"),
        (dict(mode="docker", container="-it"), "container"),
        (dict(mode="docker", container="pg", host="db"), "host"),
        (dict(mode="docker", container="pg", password_source=SecretSource(env="X")), "peer auth"),
        (dict(mode="docker", container="pg", database=""), "database"),
        (dict(mode="docker", container="pg", user="a\nb"), "newline"),
    ],
)
def test_target_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PgTarget(**kwargs)


def test_shell_command_quotes_every_word_and_feeds_stdin():
    argv = psql_argv(PgTarget("psql", host="db", user="quant user", database="x; rm -rf /"))
    cmd = shell_command(argv, "/tmp/run 1/plan.sql")
    assert cmd.endswith(" < '/tmp/run 1/plan.sql'")
    words = shlex.split(cmd.rsplit(" < ", 1)[0])
    assert words == argv  # the shell sees exactly the argv, nothing more


def test_pgpass_line_escapes_separators():
    assert pgpass_line("quant-user", "pa:ss\\w:rd") == "*:*:*:quant-user:pa\\:ss\\\\w\\:rd\n"
    with pytest.raises(ValueError):
        pgpass_line("u", "two\nlines")


def test_psql_tcp_argv_names_the_database_as_a_name():
    argv = psql_tcp_argv(["-w"], "127.0.0.1", 5432, "quant_user", "a=b", "SELECT 1")
    assert argv == ["psql", "-w", "-h", "127.0.0.1", "-p", "5432", "-U", "quant_user", "-d", "dbname='a=b'",
                    "-c", "SELECT 1"]


# A stand-in for psql that shows what it was given: the password file's text, its mode, its path.
SHOW_PASSFILE = ["sh", "-c", 'cat "$PGPASSFILE"; stat -c %a "$PGPASSFILE"; echo "$PGPASSFILE" >&2; exit 3']


@pytest.mark.parametrize(
    ("stdin", "given", "want"),
    [("passfile", "*:*:*:u:p\\:w\n", "*:*:*:u:p\\:w"), ("credentials", "u:p\\:w\n", "*:*:*:u:p\\:w")],
)
def test_the_password_file_arrives_on_stdin_private_and_is_removed(stdin, given, want):
    script = with_passfile_on_stdin(SHOW_PASSFILE, stdin=stdin)
    assert "p\\:w" not in script
    run = subprocess.run(["sh", "-c", script], input=given, capture_output=True, text=True, timeout=10)
    assert run.returncode == 3  # psql's own exit code
    assert run.stdout.splitlines() == [want, "600"]
    path = run.stderr.strip()
    assert path and not __import__("os").path.exists(path)
