"""
PostgreSQL operations: roles, databases and grants that change only what differs.

The SQL itself (quoting, catalog query, minimal plans) lives in :mod:`tasks.core.pg_sql`,
:mod:`tasks.core.pg_catalog`, :mod:`tasks.core.pg_roles` and :mod:`tasks.core.pg_grants`, the way to
reach the server (``docker exec`` or host-side ``psql``) in :mod:`tasks.core.pg_exec`, SCRAM in
:mod:`tasks.core.scram`, and what the server holds (the catalog, password status) in
:mod:`tasks.facts.postgres`. This module is the pyinfra side that changes things.

Every operation takes ``target``, a :class:`tasks.core.pg_exec.PgTarget` (a superuser connection:
``docker`` mode runs ``docker exec -i -u postgres <container> psql`` over the local socket, ``psql``
mode runs the host's ``psql`` with a 0600 ``PGPASSFILE``); the host's is
``settings.of_host(host, "postgres").target``. Passwords are given as *sources*
(:class:`tasks.settings.types.SecretSource`, or ``{"env": "VAR"}`` / ``{"file": "/path"}``) and
read on the controller when needed, so no operation argument, name, fact argument or command line
ever holds one.

Secrets, end to end:

- The catalog fact returns a digest of each stored verifier, never the verifier (see
  :mod:`tasks.facts.postgres`).
- SQL that carries a verifier is uploaded into a fresh 0700 directory on the target (0600 file)
  and fed to psql on stdin; the psql command removes the files (:func:`sql_commands`). psql runs
  with ``VERBOSITY terse`` so an error never echoes the statement.
- In ``psql`` mode the connecting password travels the same way, as a libpq password file.
- Verification logs in as each role over TCP with a password file, never ``PGPASSWORD``.

Verification runs only when an operation changed something: it is a ``FunctionCommand`` the
operation yields *after* its SQL, so a run with nothing to change yields nothing and pyinfra
reports "No changes" (unlike ``python.call``, which always counts as a change).
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import overload

from pyinfra import host as current_host
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand

from tasks.checks import pg_usage
from tasks.checks import postgres as postgres_checks
from tasks.checks.runner import ChecksFailed, RetryPolicy, Session, format_table, run_checks
from tasks.checks.shell import pyinfra_shell
from tasks.core.pg_exec import PgTarget, psql_argv, shell_command
from tasks.core.pg_grants import DefaultPrivilegeSpec, GrantSpec, plan_grants
from tasks.core.pg_roles import DatabaseSpec, RoleSpec, plan_database, plan_memberships, plan_role
from tasks.core.pg_sql import Plan, Statement, quote_ident, render_script
from tasks.facts.postgres import (
    PostgresCatalog,
    pgpass_content,
    private_dir,
    run_and_clean,
    upload_private,
)
from tasks.operations import runner
from tasks.operations.faults import fault_point
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import operation
from tasks.settings.types import SecretSource

CONTAINER_PG_PORT = pg_usage.CONTAINER_PG_PORT
VERIFY_POLICY = RetryPolicy(attempts=5, seconds=20.0, wait=1.0)

# A password source as operations take it: the settings' SecretSource, or its plain mapping form.
PasswordSource = SecretSource | Mapping[str, str]


@overload
def secret_source(value: PasswordSource) -> SecretSource: ...
@overload
def secret_source(value: None) -> None: ...
@overload
def secret_source(value: PasswordSource | None) -> SecretSource | None: ...
def secret_source(value: PasswordSource | None) -> SecretSource | None:
    """``value`` as a SecretSource (one reader rule for every password an operation reads)."""
    if value is None or isinstance(value, SecretSource):
        return value
    return SecretSource.model_validate(value)


# --- running SQL on the target -----------------------------------------------------------------


def _script(statements: Iterable[Statement]) -> str:
    # terse: an error names the problem but never echoes the statement (it may hold a verifier)
    return "\\set VERBOSITY terse\n" + render_script(statements)


def sql_commands(target: PgTarget, statements: Iterable[Statement]):
    """Commands that run ``statements`` through psql: SQL and password file as 0600 files in a
    fresh 0700 directory of the login user (never sudo's world-readable staging copy), SQL on
    stdin, the directory removed by the psql command. Run as another user than root
    (``_sudo_user: postgres``: psql over the socket, peer authentication), psql gets in by ACL
    and removes the files; the login user then removes the folder (left empty if psql failed)."""
    workdir = private_dir()
    q_dir = shlex.quote(workdir)
    yield StringCommand("mkdir", "-m", "0700", workdir, **runner.AS_LOGIN_USER)
    yield FileUploadCommand(io.StringIO(_script(statements)), f"{workdir}/script.sql", **runner.AS_LOGIN_USER)
    passfile = None
    pgpass = pgpass_content(target)
    if pgpass is not None:
        passfile = f"{workdir}/pgpass"
        yield FileUploadCommand(io.StringIO(pgpass), passfile, **runner.AS_LOGIN_USER)
    run = shell_command(psql_argv(target, passfile=passfile), f"{workdir}/script.sql")
    other = runner.escalated_user(runner.connector_arguments(current_host))
    if not other or other == "root":
        yield StringCommand(run_and_clean(f"chmod 0600 {q_dir}/* && {run}", workdir))
        return
    user = shlex.quote(other)
    yield StringCommand(
        f"{{ chmod 0600 {q_dir}/* && setfacl -m u:{user}:rwx {q_dir} && setfacl -m u:{user}:r {q_dir}/*; }} "
        f"|| {{ rc=$?; rm -rf {q_dir}; "
        f"echo {shlex.quote(f'cannot let {other} read the SQL: setfacl (the acl package)')} >&2; exit $rc; }}",
        **runner.AS_LOGIN_USER,
    )
    yield StringCommand(f"{run}; rc=$?; rm -f {q_dir}/*; exit $rc")
    yield StringCommand("rmdir", workdir, **runner.AS_LOGIN_USER)


def run_script(host, target: PgTarget, script: str) -> tuple[bool, list[str], list[str]]:
    """Run a psql ``script`` (taken as is: psql meta-commands allowed) from a ``FunctionCommand``,
    the script on psql's stdin. A password file, when the target needs one, goes as a 0600 file
    into a fresh 0700 directory removed by the same command; without one (docker mode, or no
    password) this is a single remote command. Returns (ok, stdout lines, stderr lines)."""
    pgpass = pgpass_content(target)
    if pgpass is None:
        command = " ".join(shlex.quote(a) for a in psql_argv(target))
    else:
        workdir = upload_private(host, {"pgpass": pgpass})
        argv = psql_argv(target, passfile=f"{workdir}/pgpass")
        command = run_and_clean(
            f"chmod 0600 {shlex.quote(workdir)}/* && " + " ".join(shlex.quote(a) for a in argv), workdir
        )
    ok, output = runner.run(host, StringCommand(command), stdin=script)
    return ok, list(output.stdout_lines), list(output.stderr_lines)


# --- verification (runs on the target, driven from the controller; the probes: tasks/checks) ---


def login_probe(host, target, role, source, database):
    """`role` logs in over TCP with its password: the whole-stack library's check
    (tasks.checks.postgres.login_probe), so db_users verifies logins exactly as verify_stack does."""
    return postgres_checks.login_probe(
        Session(pyinfra_shell(host)),
        role,
        source,
        database,
        access=target.mode,
        container=target.container,
        os_user=target.os_user,
        container_port=CONTAINER_PG_PORT,
        host=target.host,
        port=target.port,
    )


def _verify(state, host, checks, fault: str | None = None):
    """FunctionCommand body: run the checks on this host, log the table, fail the op if any
    check fails. ``checks``: (name, target, probe factory args...) built by the operations.
    ``fault``: a fault point (tasks/operations/faults.py) passed first, after the change's SQL."""
    if fault:
        fault_point(fault)
    built = [(name, where, make(host), VERIFY_POLICY) for name, where, make in checks]
    results = run_checks(built, stop_on_failure=False)
    for line in format_table(results).splitlines():
        host.log(f"verify: {line}")
    record_checks(host, results)
    if not all(r.passed for r in results):
        raise ChecksFailed(results)


# --- operations ----------------------------------------------------------------------------------


def _catalog(target: PgTarget, database: str, passwords=None, schemas=()):
    return current_host.get_fact(
        PostgresCatalog, target=target, database=database, passwords=passwords or {}, schemas=schemas
    )


def _log_changes(plan: Plan) -> None:
    for change in plan.changes:
        say(current_host, f"plan: {change}")
    _log_notes(plan)


def _log_notes(plan: Plan) -> None:
    """What the plan deliberately left alone (exclusive mode and protected roles). Like the
    plan lines, whenever the operation is evaluated: with ``-y`` pyinfra does so only once, at
    execution."""
    for note in plan.notes:
        say(current_host, f"note: {note}")


@operation()
def role(
    role: str,
    target: PgTarget,
    present: bool = True,
    password: PasswordSource | None = None,
    login: bool | None = None,
    superuser: bool | None = None,
    createdb: bool | None = None,
    createrole: bool | None = None,
    inherit: bool | None = None,
    replication: bool | None = None,
    bypassrls: bool | None = None,
    connection_limit: int | None = None,
    valid_until: str | None = None,
    member_of: list[str] | None = None,
    exclusive_membership: bool = False,
    verify: bool = True,
    verify_database: str | None = None,
):
    """
    Add, alter or drop a PostgreSQL role, changing only what differs.

    + role: name of the role (any name; always quoted)
    + target: ``PgTarget`` to connect with (a superuser, so stored passwords can be checked)
    + present: whether the role should exist (dropping fails if it still owns objects)
    + password: a ``SecretSource`` (or ``{"env": "VAR"}`` / ``{"file": "/path"}``); sent as a SCRAM-SHA-256 verifier
      computed on the controller, and only when the stored one does not match (an md5 hash of
      the same password is upgraded)
    + login/superuser/createdb/createrole/inherit/replication/bypassrls: ``None`` = leave as is
    + connection_limit: ``-1`` = unlimited; ``None`` = leave as is
    + valid_until: ISO 8601 timestamp or ``"infinity"``
    + member_of: groups the role should be in (``None``: not managed)
    + exclusive_membership: also leave groups not in ``member_of`` (not when the role is a
      superuser or the one ``target`` connects as)
    + verify: after a change, check over TCP that the role can log in with its password
    + verify_database: database to log in to when verifying (default: the target's)

    **Example:**

    .. code:: python

        from tasks.operations import postgres
        postgres.role(
            name="quant_user can log in",
            role="quant_user",
            target=PgTarget("docker", container="quant-postgres"),
            password={"file": "/etc/quant/secrets/quant_user_password"},
            login=True,
            connection_limit=20,
        )
    """
    password = secret_source(password)
    spec_password = password.read() if password is not None and present else None
    spec = RoleSpec(
        name=role,
        present=present,
        login=login,
        superuser=superuser,
        createdb=createdb,
        createrole=createrole,
        inherit=inherit,
        replication=replication,
        bypassrls=bypassrls,
        connection_limit=connection_limit,
        valid_until=valid_until,
        password=spec_password,
        member_of=tuple(member_of) if isinstance(member_of, list) else member_of,  # RoleSpec refuses a str
    )
    state = _catalog(target, target.database, {role: password} if spec_password else None, schemas=())
    observed = state.catalog.roles.get(role)
    plan = plan_role(spec, observed)
    protected = state.catalog.protected_roles(target.user)
    plan.extend(plan_memberships(spec, observed, exclusive=exclusive_membership, protected=protected))
    if not plan.changed:
        _log_notes(plan)
        host_word = "absent" if not present else "as set"
        current_host.noop(f"role {quote_ident(role)} is {host_word}")
        return
    _log_changes(plan)
    yield from sql_commands(target, plan.statements)

    will_login = login if login is not None else bool(observed and observed.login)
    if verify and present and will_login and password is not None:
        database = verify_database or target.database
        yield FunctionCommand(
            _verify,
            (
                [
                    (
                        f"role {role} can log in with its password",
                        f"{database}",
                        lambda h: login_probe(h, target, role, password, database),
                    )
                ],
            ),
            # The role is made or changed, its grants (the next operations) not yet.
            {"fault": "db_users.after-role"},
        )


@operation()
def database(database: str, target: PgTarget, owner: str | None = None):
    """
    Create a PostgreSQL database or change its owner. Never drops one.

    + database: database name
    + target: ``PgTarget`` to connect with
    + owner: role that should own it (``None``: not managed)

    **Example:**

    .. code:: python

        postgres.database(name="quant is owned by postgres", database="quant",
                          target=target, owner="postgres")
    """
    state = _catalog(target, target.database, schemas=())
    plan = plan_database(DatabaseSpec(database, owner), state.catalog.databases.get(database))
    if not plan.changed:
        current_host.noop(f"database {quote_ident(database)} is as set")
        return
    _log_changes(plan)
    yield from sql_commands(target, plan.statements)


@operation()
def grants(
    database: str,
    target: PgTarget,
    grants: list[GrantSpec | DefaultPrivilegeSpec],
    exclusive: bool = False,
    logins: Mapping[str, PasswordSource] | None = None,
    verify: bool = True,
):
    """
    Grant (and with ``exclusive``, revoke) privileges inside one database, changing only what
    differs: on the database, schemas, all tables/sequences/functions in a schema, and default
    privileges for objects an owner creates later.

    + database: the database the grants live in (the fact connects to it: one round trip)
    + target: ``PgTarget`` to connect with
    + grants: ``GrantSpec`` / ``DefaultPrivilegeSpec`` list (see ``tasks.core.pg_grants``)
    + exclusive: revoke what grantees hold beyond the settings on the objects named (never
      from a superuser or the role ``target`` connects as: a note says what was kept)
    + logins: ``{role: password source}``: after a change, log in as each of these over TCP and
      check it can use what it was granted and cannot use what it was not
    + verify: run that check (only when something changed)

    **Example:**

    .. code:: python

        postgres.grants(
            name="quant_user can read and write quant",
            database="quant",
            target=target,
            grants=[
                GrantSpec("database", "quant", "quant_user", {"CONNECT"}),
                GrantSpec("schema", "quant", "quant_user", {"USAGE"}, schema="public"),
                GrantSpec("tables", "quant", "quant_user", {"SELECT", "INSERT"}, schema="public"),
            ],
            logins={"quant_user": {"file": "/etc/quant/secrets/quant_user_password"}},
        )
    """
    mine = [g for g in grants if g.database == database]
    if not mine:
        current_host.noop(f"no grants in database {quote_ident(database)}")
        return
    schemas = {g.schema for g in mine if g.schema}
    state = _catalog(target, database, schemas=sorted(schemas))
    plan = plan_grants(mine, state.catalog, exclusive=exclusive, connecting_role=target.user)
    if not plan.changed:
        _log_notes(plan)
        current_host.noop(f"grants in database {quote_ident(database)} are as set")
        return
    _log_changes(plan)
    yield from sql_commands(replace(target, database=database), plan.statements)

    if not verify:
        return
    checks = []
    for grantee, source in sorted((logins or {}).items()):
        source = secret_source(source)
        own = [g for g in mine if isinstance(g, GrantSpec) and g.grantee == grantee]
        if not own:
            continue
        checks.append(
            (
                f"role {grantee} can use what it was granted, and only that"
                if exclusive
                else f"role {grantee} can use what it was granted",
                database,
                lambda h, grantee=grantee, source=source, own=own: pg_usage.usage_probe(
                    h, target, grantee, source, database, own, state.catalog, exclusive
                ),
            )
        )
    if checks:
        yield FunctionCommand(_verify, (checks,), {})
