"""PostgreSQL checks: the server accepts connections, each login role logs in over TCP with its
password, and there is room below max_connections.

:func:`login_probe` is the public check db_users verifies its roles with, so a role is proven
the same way by db_users, remediate and verify_stack.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from tasks.checks import containers
from tasks.checks.runner import Broken, NotYet, Session
from tasks.core.pg_exec import pgpass_line, psql_tcp_argv, with_passfile_on_stdin
from tasks.settings.stack import PostgresService
from tasks.settings.types import SecretSource

# Where psql listens inside the database container.
CONTAINER_PG_PORT = 5432


def _pgpass_user_and_password(role: str, password: str) -> str:
    """`user:password` escaped for a libpq password file line (the host-psql path builds
    ``*:*:*:`` + this)."""
    return pgpass_line(role, password).rstrip("\n")[len("*:*:*:") :]


def _psql_host(
    session: Session, host: str, port: int, role: str, password: str | None, database: str, sql: str
) -> tuple[bool, str]:
    argv = psql_tcp_argv(["-w", "-X", "-At", "-v", "ON_ERROR_STOP=1"], host, port, role, database, sql)
    if password is None:
        return session.sh("PGCONNECT_TIMEOUT=5 " + shlex.join(argv))
    # The secret arrives on stdin; a private file holds it as a libpq password file.
    inner = with_passfile_on_stdin(argv, stdin="credentials")
    return session.shell.run_with_secret(
        inner, _pgpass_user_and_password(role, password), session.command_timeout
    )


def _source(password: SecretSource | Mapping[str, str]) -> SecretSource:
    return password if isinstance(password, SecretSource) else SecretSource.model_validate(password)


def login_probe(
    session: Session,
    role: str,
    password: SecretSource | Mapping[str, str],
    database: str,
    *,
    access: str,
    container: str | None = None,
    os_user: str = "postgres",
    container_port: int = CONTAINER_PG_PORT,
    host: str | None = None,
    port: int | None = None,
):
    """A probe: ``role`` logs in to ``database`` over TCP with its password (read on the
    controller, sent on stdin). ``access`` "docker": to 127.0.0.1:``container_port`` inside
    ``container`` (pg_hba's host rule is what is exercised); "psql": the host's psql to host:port."""

    def probe():
        try:
            secret = _source(password).read(session.environ)
        except ValueError as exc:
            raise Broken(f"cannot read the password source: {exc}") from None
        session.shell.secrets.append(secret)
        sql = "SELECT current_user"
        if access == "docker":
            psql = psql_tcp_argv(["-w", "-X", "-At"], "127.0.0.1", container_port, role, database, sql)
            inner = with_passfile_on_stdin(psql)
            command = shlex.join(["docker", "exec", "-i", "-u", os_user, str(container), "sh", "-c", inner])
            ok, out = session.shell.run_with_secret(
                command, pgpass_line(role, secret).rstrip("\n"), session.command_timeout
            )
            where = f"TCP 127.0.0.1:{container_port} in {container}"
        else:
            ok, out = _psql_host(session, str(host), int(port or 5432), role, secret, database, sql)
            where = f"TCP {host}:{port}"
        text = " ".join(out.split())
        if ok:
            return f"logged in over {where} to {database} as {text[-40:]}"
        if "permission denied for database" in text:
            return f"password accepted over {where} (no CONNECT on {database})"
        if "password authentication failed" in text or "does not exist" in text:
            raise Broken(f"authentication failed over {where}: {text[-200:]}")
        raise NotYet(f"cannot log in over {where}: {text[-200:] or 'timed out'}")

    return probe


def check_postgres(session: Session, conf: PostgresService, memory: tuple[float, float] = (85, 95)) -> None:
    """The PostgreSQL service: its container, then connections, each login role, headroom."""
    name = conf.container
    if name and not containers.container_checks(session, name, *memory):
        return containers.skip_service(session, "postgres", name)
    if conf.access == "docker":
        assert name is not None  # with_host_blocks refuses docker access without a container
        target = name
    else:
        target = f"{conf.host}:{conf.port}"
    where: dict[str, Any] = dict(
        access=conf.access,
        container=name,
        os_user=conf.os_user,
        container_port=conf.container_port,
        host=conf.host,
        port=conf.port,
    )

    def superuser_sql(sql: str) -> tuple[bool, str]:
        if conf.access == "docker":
            argv = [
                "docker",
                "exec",
                "-u",
                conf.os_user,
                str(name),
                "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                str(conf.superuser),
                "-d",
                conf.database,
                "-c",
                sql,
            ]
            return session.sh(shlex.join(argv))
        source = conf.superuser_password
        password = source.read(session.environ) if source else None
        if password:
            session.shell.secrets.append(password)
        return _psql_host(
            session, str(conf.host), int(conf.port or 5432), str(conf.superuser), password, conf.database, sql
        )

    def accepts():
        if conf.access == "docker":
            ok, out = session.sh(
                shlex.join(
                    [
                        "docker",
                        "exec",
                        str(name),
                        "pg_isready",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(conf.container_port),
                    ]
                )
            )
            if not ok:
                raise NotYet(f"pg_isready: {out.strip()[-160:] or 'timed out'}")
        ok, out = superuser_sql("SELECT version()")
        if not ok:
            raise NotYet(f"SELECT version() as {conf.superuser}: {out.strip()[-160:] or 'timed out'}")
        return f"accepts connections: {out.strip()[:50]}"

    roles = conf.roles or ()
    if session.check(f"PostgreSQL {target} accepts connections", target, accepts).status != "pass":
        for role in roles:
            session.skip(
                f"role {role.name} can log in", target, "skipped: PostgreSQL does not accept connections"
            )
        session.skip(
            "connections below max_connections", target, "skipped: PostgreSQL does not accept connections"
        )
        return

    for role in roles:
        session.check(
            f"role {role.name} can log in",
            target,
            login_probe(session, role.name, role.password, role.database, **where),
        )
    if not roles:
        session.skip(
            "login roles authenticate",
            target,
            "no login roles configured (stack.services.postgres.roles or db_roles with a password)",
        )

    def connections():
        ok, out = superuser_sql(
            "SELECT count(*), current_setting('max_connections'), "
            "current_setting('superuser_reserved_connections') FROM pg_stat_activity "
            "WHERE backend_type = 'client backend'"
        )
        if not ok:
            raise NotYet(f"reading pg_stat_activity: {out.strip()[-160:]}")
        used, limit, reserved = (int(v) for v in out.strip().splitlines()[-1].split("|"))
        room = limit - reserved - used
        text = f"{used} client connections of max_connections {limit} ({reserved} reserved)"
        if room < conf.connections_margin:
            raise Broken(f"{text}: only {room} left, margin is {conf.connections_margin}")
        return text

    session.check(f"connections below max_connections by {conf.connections_margin}", target, connections)
