"""
PostgreSQL facts and operations: roles, databases and grants that change only what differs.

The SQL itself (quoting, catalog query, minimal plans) lives in :mod:`tasks.core.pg_sql`, the way to
reach the server (``docker exec`` or host-side ``psql``) in :mod:`tasks.core.pg_exec`, and SCRAM in
:mod:`tasks.core.scram`. This module is the pyinfra side: facts read, operations yield commands.

Every operation takes ``target``, a :class:`tasks.core.pg_exec.PgTarget` (a superuser connection:
``docker`` mode runs ``docker exec -i -u postgres <container> psql`` over the local socket, ``psql``
mode runs the host's ``psql`` with a 0600 ``PGPASSFILE``). Passwords are given as *sources*
(``{"env": "VAR"}`` or ``{"file": "/path"}``) and read on the controller when needed, so no
operation argument, name, fact argument or command line ever holds one.

Secrets, end to end:

- Facts never return or print a stored verifier: the catalog fact asks the server for a *digest*
  of it (salt and iteration count in clear, ``sha256`` of the keys) and the controller decides
  ``match`` / ``mismatch`` / ``md5-match-upgrade`` / ``absent`` by recomputing the same digest from
  the desired password. Even ``-vvv`` (fact output) shows only that digest.
- SQL that carries a verifier is uploaded into a fresh 0700 directory on the target (0600 file)
  and fed to psql on stdin; the same shell command removes the directory. psql runs with
  ``VERBOSITY terse`` so an error never echoes the statement.
- In ``psql`` mode the connecting password travels the same way, as a libpq password file.
- Verification logs in as each role over TCP with a password file, never ``PGPASSWORD``.

Verification runs only when an operation changed something: it is a ``FunctionCommand`` the
operation yields *after* its SQL, so a run with nothing to change yields nothing and pyinfra
reports "No changes" (unlike ``python.call``, which always counts as a change).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from pyinfra import host as current_host
from pyinfra.api import FactBase, FileUploadCommand, FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import FactProcessError, OperationError

from tasks.checks.runner import Broken, ChecksFailed, NotYet, RetryPolicy, format_table, run_checks
from tasks.core.pg_exec import PgTarget, pgpass_line, psql_argv, resolve_password, shell_command
from tasks.core.pg_sql import (
    PRIVILEGES,
    Catalog,
    DatabaseSpec,
    DefaultPrivilegeSpec,
    GrantSpec,
    Plan,
    RoleSpec,
    Statement,
    _expand,
    _literal_array,
    catalog_query,
    parse_catalog_json,
    plan_database,
    plan_grants,
    plan_memberships,
    plan_role,
    quote_ident,
    quote_literal,
    render_script,
)
from tasks.core.scram import md5_verifier, scram_verifier
from tasks.checks import postgres as postgres_checks
from tasks.checks.runner import Session
from tasks.checks.shell import pyinfra_shell

# Where psql listens inside the database container (docker mode verification logs in over TCP
# on the container's loopback, so pg_hba's `host ... scram-sha-256` rule is what is exercised).
CONTAINER_PG_PORT = 5432
VERIFY_POLICY = RetryPolicy(attempts=5, seconds=20.0, wait=1.0)
_TMP_ROOT = "/tmp"


# --- running SQL on the target -----------------------------------------------------------------


def _private_dir() -> str:
    # Named on the controller; `mkdir -m 0700` (no -p) fails if the path exists, so nobody can
    # pre-plant it. Files inside are 0600; the command that uses them removes the directory.
    return f"{_TMP_ROOT}/quant-pg-{secrets.token_hex(8)}"


def _pgpass(target: PgTarget) -> str | None:
    if target.mode != "psql" or target.password_source is None:
        return None
    return pgpass_line(target.user, resolve_password(target.password_source))


def _script(statements: Iterable[Statement]) -> str:
    # terse: an error names the problem but never echoes the statement (it may hold a verifier)
    return "\\set VERBOSITY terse\n" + render_script(statements)


def _run_and_clean(command: str, workdir: str) -> str:
    return f"{command}; rc=$?; rm -rf {shlex.quote(workdir)}; exit $rc"


def sql_commands(target: PgTarget, statements: Iterable[Statement]):
    """Commands that run ``statements`` through psql: SQL and password file uploaded as 0600
    files into a fresh 0700 directory, SQL on stdin, the directory removed by the same command."""
    workdir = _private_dir()
    yield StringCommand("mkdir", "-m", "0700", workdir)
    yield FileUploadCommand(io.StringIO(_script(statements)), f"{workdir}/script.sql")
    passfile = None
    pgpass = _pgpass(target)
    if pgpass is not None:
        passfile = f"{workdir}/pgpass"
        yield FileUploadCommand(io.StringIO(pgpass), passfile)
    run = shell_command(psql_argv(target, passfile=passfile), f"{workdir}/script.sql")
    yield StringCommand(
        _run_and_clean(f"chmod 0600 {shlex.quote(workdir)}/* && {run}", workdir)
    )


def _upload_private(host, files: Mapping[str, str]) -> str:
    """Fact-time transport (facts cannot yield uploads): a fresh 0700 directory holding
    ``files`` (0600). The caller's command must remove it (see :func:`_run_and_clean`)."""
    workdir = _private_dir()
    ok, _ = host.run_shell_command(StringCommand("mkdir", "-m", "0700", workdir))
    if not ok:
        raise OSError(f"cannot create {workdir} on {host.name}")
    for name, content in files.items():
        if not host.put_file(io.StringIO(content), f"{workdir}/{name}"):
            host.run_shell_command(StringCommand("rm", "-rf", workdir))
            raise OSError(f"cannot upload {workdir}/{name} to {host.name}")
    return workdir


# --- facts ---------------------------------------------------------------------------------------

PasswordSource = Mapping[str, str]


def _password_digest_query(roles: Iterable[str]) -> str:
    """Per role: NULL (no password), ``SCRAM-SHA-256$<iter>:<salt>$<sha256 of the keys>``,
    ``md5$<sha256 of the md5 hash>`` or ``other``. The verifier itself never leaves the server."""
    names = sorted(set(roles))
    if not names:
        return "'{}'::json"
    pw = "a.rolpassword"
    keys = f"split_part({pw}, '$', 3)"
    return f"""(SELECT coalesce(json_object_agg(a.rolname, CASE
      WHEN {pw} IS NULL OR {pw} = '' THEN NULL
      WHEN {pw} LIKE 'SCRAM-SHA-256$%' THEN split_part({pw}, '$', 1) || '$' || split_part({pw}, '$', 2)
        || '$' || encode(pg_catalog.sha256(convert_to({keys}, 'UTF8')), 'hex')
      WHEN {pw} ~ '^md5[0-9a-f]{{32}}$' THEN
        'md5$' || encode(pg_catalog.sha256(convert_to({pw}, 'UTF8')), 'hex')
      ELSE 'other' END), '{{}}'::json)
    FROM pg_catalog.pg_authid a WHERE a.rolname = ANY({_literal_array(names)}))"""


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def password_status_from_digest(digest: str | None, password: str, username: str) -> str:
    """``absent`` / ``match`` / ``md5-match-upgrade`` / ``mismatch``, decided on the controller
    from what :func:`_password_digest_query` returns (same meaning as
    :func:`tasks.core.scram.password_status`)."""
    if not digest:
        return "absent"
    if digest.startswith("SCRAM-SHA-256$"):
        try:
            _, params, keys_hash = digest.split("$")
            iterations, salt = params.split(":")
            mine = scram_verifier(password, salt=base64.b64decode(salt, validate=True),
                                  iterations=int(iterations))
        except ValueError:
            return "mismatch"
        same = hmac.compare_digest(_sha256_hex(mine.split("$")[2]), keys_hash)
        return "match" if same else "mismatch"
    if digest.startswith("md5$"):
        same = hmac.compare_digest(_sha256_hex(md5_verifier(password, username)), digest[4:])
        return "md5-match-upgrade" if same else "mismatch"
    return "mismatch"


def _stand_in(status: str, password: str, username: str) -> str | None:
    """A locally made stored value that :func:`tasks.core.scram.password_status` judges exactly as
    the server's real one was judged, so :func:`tasks.core.pg_sql.plan_role` can plan from it."""
    if status == "absent":
        return None
    if status == "match":
        return scram_verifier(password)
    if status == "md5-match-upgrade":
        return md5_verifier(password, username)
    return "unknown"  # any other format: password_status() says "mismatch"


@dataclass(frozen=True)
class PgState:
    """What :class:`PostgresCatalog` returns: the catalog (roles, memberships, databases,
    schemas, objects, ACLs, default ACLs) and, per role asked about, whether its stored password
    matches the desired one (the verifier itself is not kept)."""

    catalog: Catalog
    password_status: Mapping[str, str]


class PostgresCatalog(FactBase):
    """
    Roles (attributes, memberships, password status), databases, schemas, objects and their
    privileges, and default privileges, as seen from ``database``: one psql round trip.

    + target: a ``PgTarget`` (superuser connection)
    + database: database to read schemas/objects/default privileges from
    + passwords: ``{role: password source}``: roles whose password is checked (on the controller)
    + schemas: limit objects to these schemas (``None``: all non-system schemas)

    .. code:: python

        state = host.get_fact(PostgresCatalog, target=target, database="quant",
                              passwords={"quant_user": {"file": "/run/secrets/quant_user"}})
        state.password_status["quant_user"]  # "match", "mismatch", "md5-match-upgrade", "absent"
    """

    def command(self, target: PgTarget, database: str = "postgres",
                passwords: Mapping[str, PasswordSource] | None = None,
                schemas: Iterable[str] | None = None):
        self._passwords = dict(passwords or {})
        query = (
            "SELECT json_build_object('catalog', ("
            + catalog_query(schemas=None if schemas is None else list(schemas))
            + "), 'passwords', "
            + _password_digest_query(self._passwords)
            + ")"
        )
        return query_command(current_host, replace(target, database=database), query)

    def process(self, output):
        text = "\n".join(output)
        try:
            doc = json.loads(text)
            catalog = parse_catalog_json(json.dumps(doc["catalog"]))
            digests = doc["passwords"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FactProcessError(f"unexpected catalog output ({len(text)} chars): {exc}") from None
        statuses = {}
        roles = dict(catalog.roles)
        for role, source in self._passwords.items():
            if role not in roles:
                continue
            password = resolve_password(source)
            statuses[role] = status = password_status_from_digest(digests.get(role), password, role)
            # The stored verifier stays on the server: plan from a stand-in with the same status.
            roles[role] = replace(roles[role], password=_stand_in(status, password, role),
                                  password_known=True)
        return PgState(replace(catalog, roles=roles), statuses)


# --- verification (runs on the target, driven from the controller) ----------------------------


def _tcp_probe(host, target: PgTarget, role: str, password_source: PasswordSource,
               database: str, sql: str):
    """Log in as ``role`` over TCP with its password (password file, never argv) and run
    ``sql``. Returns (ok, stdout, stderr)."""
    pgpass = pgpass_line(role, resolve_password(password_source))
    workdir = _upload_private(host, {"pgpass": pgpass})
    passfile = f"{workdir}/pgpass"
    flags = ["-w", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse"]
    if target.mode == "psql":
        argv = ["env", "PGCONNECT_TIMEOUT=5", f"PGPASSFILE={passfile}", "psql", *flags,
                "-h", target.host, "-p", str(target.port), "-U", role, "-d", database, "-c", sql]
        command = f"chmod 0600 {shlex.quote(passfile)} && " + " ".join(shlex.quote(a) for a in argv)
    else:
        # The password file goes into the container on stdin, into a mktemp file removed after.
        inner_psql = " ".join(shlex.quote(a) for a in [
            "psql", *flags, "-h", "127.0.0.1", "-p", str(CONTAINER_PG_PORT),
            "-U", role, "-d", database, "-c", sql])
        inner = ('umask 077; f=$(mktemp) || exit 1; cat > "$f"; '
                 f'PGPASSFILE="$f" PGCONNECT_TIMEOUT=5 {inner_psql}; rc=$?; rm -f "$f"; exit $rc')
        argv = ["docker", "exec", "-i", "-u", target.os_user, target.container, "sh", "-c", inner]
        command = shell_command(argv, passfile)
    ok, output = host.run_shell_command(StringCommand(_run_and_clean(command, workdir)))
    return ok, "\n".join(output.stdout_lines), " ".join(output.stderr_lines)


def login_probe(host, target, role, source, database):
    """`role` logs in over TCP with its password: the whole-stack library's check
    (tasks.checks.postgres.login_probe), so db_users verifies logins exactly as verify_stack does."""
    return postgres_checks.login_probe(
        Session(pyinfra_shell(host)), role, source, database, access=target.mode,
        container=target.container, os_user=target.os_user, container_port=CONTAINER_PG_PORT,
        host=target.host, port=target.port)


def _usage_sql(grants: list[GrantSpec], catalog: Catalog) -> tuple[str, list[str]]:
    """SQL run *as the role*: real reads of granted tables, then one JSON list of
    ``{what, want, all, any}`` built with ``has_*_privilege`` for every privilege of every
    object kind the settings name for this role (granted ones: want true)."""
    version = catalog.server_version_num
    uses: list[str] = []
    items: list[str] = []
    merged: dict[tuple, frozenset[str]] = {}
    for g in grants:
        key = (g.on, g.schema)
        merged[key] = merged.get(key, frozenset()) | _expand(g.on, g.privileges, version)
    for (on, schema), want in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        for priv in PRIVILEGES[on]:
            p = quote_literal(priv)
            label = f"{priv} on "
            if on == "database":
                label += f"database {quote_ident(catalog.database)}"
                agg_all = agg_any = f"has_database_privilege(current_database(), {p})"
                agg_pub = f"has_database_privilege('public', current_database(), {p})"
            elif on == "schema":
                label += f"schema {quote_ident(schema)}"
                agg_all = agg_any = f"has_schema_privilege({quote_literal(schema)}, {p})"
                agg_pub = f"has_schema_privilege('public', {quote_literal(schema)}, {p})"
            else:
                label += f"all {on} in schema {quote_ident(schema)}"
                if on == "functions":
                    source = ("pg_catalog.pg_proc o JOIN pg_catalog.pg_namespace n ON n.oid = o.pronamespace"
                              f" WHERE n.nspname = {quote_literal(schema)}")
                    fn = "has_function_privilege"
                else:
                    kinds = "'S'" if on == "sequences" else "'r', 'v', 'm', 'f', 'p'"
                    fn = "has_sequence_privilege" if on == "sequences" else "has_table_privilege"
                    source = ("pg_catalog.pg_class o JOIN pg_catalog.pg_namespace n ON n.oid = o.relnamespace"
                              f" WHERE n.nspname = {quote_literal(schema)} AND o.relkind IN ({kinds})")
                agg_all = f"(SELECT bool_and({fn}(o.oid, {p})) FROM {source})"
                agg_any = f"(SELECT bool_or({fn}(o.oid, {p})) FROM {source})"
                agg_pub = f"(SELECT bool_or({fn}('public', o.oid, {p})) FROM {source})"
            items.append(
                f"json_build_object('what', {quote_literal(label)}, 'want', {'true' if priv in want else 'false'},"
                f" 'all', {agg_all}, 'any', {agg_any}, 'public', {agg_pub})"
            )
        if on == "tables" and "SELECT" in want:
            tables = [o for o in catalog.objects if o.kind == "table" and o.schema == schema]
            uses += [f"SELECT 1 FROM {o.ref} LIMIT 0" for o in tables[:20]]
    final = "SELECT json_agg(x) FROM (VALUES " + ", ".join(f"({i})" for i in items) + ") AS v(x)"
    return "; ".join(uses + [final]), uses


def _usage_probe(host, target, role, source, database, grants, catalog, exclusive):
    sql, uses = _usage_sql(grants, catalog)

    def probe():
        ok, out, err = _tcp_probe(host, target, role, source, database, sql)
        if not ok:
            if "permission denied" in err:
                raise Broken(f"cannot use what it was granted: {err.strip()[:200]}")
            raise NotYet(f"probe failed: {err.strip()[:200]}")
        rows = json.loads(out.strip().splitlines()[-1])
        lacking = [r["what"] for r in rows if r["want"] and r["all"] is False]
        # What PUBLIC holds every role holds; only exclusive mode with PUBLIC listed revokes it.
        extra = [r["what"] for r in rows if not r["want"] and r["any"] and not r["public"]]
        if lacking:
            raise Broken("lacks " + ", ".join(lacking))
        if extra and exclusive:
            raise Broken("holds beyond the settings: " + ", ".join(extra))
        granted = sum(1 for r in rows if r["want"])
        via_public = sum(1 for r in rows if not r["want"] and r["public"])
        absent = len(rows) - granted - via_public - len(extra)
        note = f"; also holds (exclusive off, left alone): {', '.join(extra)}" if extra else ""
        return (f"{granted} granted privileges hold, {absent} others absent ({via_public} via PUBLIC), "
                f"{len(uses)} tables read{note}")
    return probe


def _verify(state, host, checks):
    """FunctionCommand body: run the checks on this host, log the table, fail the op if any
    check fails. ``checks``: (name, target, probe factory args...) built by the operations."""
    built = [(name, where, make(host), VERIFY_POLICY) for name, where, make in checks]
    results = run_checks(built, stop_on_failure=False)
    for line in format_table(results).splitlines():
        host.log(f"verify: {line}")
    if not all(r.passed for r in results):
        raise ChecksFailed(results)


# --- operations ----------------------------------------------------------------------------------


def _catalog(target: PgTarget, database: str, passwords=None, schemas=()):
    return current_host.get_fact(PostgresCatalog, target=target, database=database,
                                 passwords=passwords or {}, schemas=schemas)


def _log_changes(plan: Plan) -> None:
    for change in plan.changes:
        current_host.log(f"plan: {change}")


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
    + password: ``{"env": "VAR"}`` or ``{"file": "/path"}``; sent as a SCRAM-SHA-256 verifier
      computed on the controller, and only when the stored one does not match (an md5 hash of
      the same password is upgraded)
    + login/superuser/createdb/createrole/inherit/replication/bypassrls: ``None`` = leave as is
    + connection_limit: ``-1`` = unlimited; ``None`` = leave as is
    + valid_until: ISO 8601 timestamp or ``"infinity"``
    + member_of: groups the role should be in (``None``: not managed)
    + exclusive_membership: also leave groups not in ``member_of``
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
    spec_password = resolve_password(password) if password is not None and present else None
    spec = RoleSpec(
        name=role, present=present, login=login, superuser=superuser, createdb=createdb,
        createrole=createrole, inherit=inherit, replication=replication, bypassrls=bypassrls,
        connection_limit=connection_limit, valid_until=valid_until, password=spec_password,
        member_of=member_of,
    )
    state = _catalog(target, target.database, {role: password} if spec_password else None, schemas=())
    observed = state.catalog.roles.get(role)
    plan = plan_role(spec, observed)
    plan.extend(plan_memberships(spec, observed, exclusive=exclusive_membership))
    if not plan.changed:
        host_word = "absent" if not present else "as set"
        current_host.noop(f"role {quote_ident(role)} is {host_word}")
        return
    _log_changes(plan)
    yield from sql_commands(target, plan.statements)

    will_login = login if login is not None else bool(observed and observed.login)
    if verify and present and will_login and password is not None:
        database = verify_database or target.database
        yield FunctionCommand(_verify, ([(
            f"role {role} can log in with its password", f"{database}",
            lambda h: login_probe(h, target, role, password, database),
        )],), {})


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
    + grants: ``GrantSpec`` / ``DefaultPrivilegeSpec`` list (see ``tasks.core.pg_sql``)
    + exclusive: revoke what grantees hold beyond the settings on the objects named
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
    plan = plan_grants(mine, state.catalog, exclusive=exclusive)
    if not plan.changed:
        current_host.noop(f"grants in database {quote_ident(database)} are as set")
        return
    _log_changes(plan)
    yield from sql_commands(replace(target, database=database), plan.statements)

    if not verify:
        return
    checks = []
    for grantee, source in sorted((logins or {}).items()):
        own = [g for g in mine if isinstance(g, GrantSpec) and g.grantee == grantee]
        if not own:
            continue
        checks.append((
            f"role {grantee} can use what it was granted, and only that" if exclusive
            else f"role {grantee} can use what it was granted",
            database,
            lambda h, grantee=grantee, source=source, own=own: _usage_probe(
                h, target, grantee, source, database, own, state.catalog, exclusive),
        ))
    if checks:
        yield FunctionCommand(_verify, (checks,), {})


__all__ = [
    "PgState", "PostgresCatalog", "database", "grants", "password_status_from_digest", "role",
    "sql_commands", "OperationError",
]


# --- public helpers for other task modules (tasks.operations.cleanup) ------------------------------------


def query_command(host, target: PgTarget, sql: str) -> StringCommand:
    """A fact's command running one read-only ``sql`` through psql for ``target`` (every
    PostgreSQL fact here uses it): on the command line in docker mode (no secret involved),
    else from a fresh 0700 directory holding the query and the 0600 password file, removed by
    the same command."""
    pgpass = _pgpass(target)
    if pgpass is None:
        return StringCommand(*(shlex.quote(a) for a in psql_argv(target)), "-c", shlex.quote(sql))
    workdir = _upload_private(host, {"pgpass": pgpass, "query.sql": sql + ";\n"})
    argv = psql_argv(target, passfile=f"{workdir}/pgpass")
    return StringCommand(_run_and_clean(shell_command(argv, f"{workdir}/query.sql"), workdir))


def run_script(host, target: PgTarget, script: str) -> tuple[bool, list[str], list[str]]:
    """Run a psql ``script`` (taken as is: psql meta-commands allowed) from a ``FunctionCommand``,
    the script on psql's stdin. A password file, when the target needs one, goes as a 0600 file
    into a fresh 0700 directory removed by the same command; without one (docker mode, or no
    password) this is a single remote command. Returns (ok, stdout lines, stderr lines)."""
    pgpass = _pgpass(target)
    if pgpass is None:
        command = " ".join(shlex.quote(a) for a in psql_argv(target))
    else:
        workdir = _upload_private(host, {"pgpass": pgpass})
        argv = psql_argv(target, passfile=f"{workdir}/pgpass")
        command = _run_and_clean(f"chmod 0600 {shlex.quote(workdir)}/* && "
                                 + " ".join(shlex.quote(a) for a in argv), workdir)
    ok, output = host.run_shell_command(StringCommand(command), _stdin=script)
    return ok, list(output.stdout_lines), list(output.stderr_lines)
