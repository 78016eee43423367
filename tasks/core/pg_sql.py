"""PostgreSQL SQL without I/O: quoting, the catalog query facts run, and minimal-change plans.

Every ``plan_*`` function takes the desired state (``*Spec``) and the observed state (``*State``,
filled by :func:`parse_catalog_json` from one JSON document that :func:`catalog_query` returns) and
returns a :class:`Plan`: the fewest statements that make observed equal desired (empty = no
change) and one human-readable line per change. Descriptions never carry a password or verifier;
statements that do are marked ``secret`` so callers send them on stdin, never on a command line.

Why not pyinfra's ``postgres.role``: it re-sends the password on every run, ignores attribute
changes on existing roles and quotes identifiers as ``f'"{role}"'`` (a ``"`` in a name breaks
out). Here every identifier goes through :func:`quote_ident`, every value through
:func:`quote_literal`, and nothing else is interpolated.

Scope notes (documented limits, not accidents):
- Grant options (``WITH GRANT OPTION``) are ignored when comparing privileges.
- Revokes are issued by the connecting superuser, which revokes what the object owner granted;
  privileges granted by a third role (through a grant option) are not touched.
- The object owner's own privileges are never revoked; PUBLIC is only revoked from when the
  settings name PUBLIC as a grantee for that object (e.g. with an empty privilege list).
- Schema-level default privileges cannot revoke what a global ``ALTER DEFAULT PRIVILEGES``
  (no ``IN SCHEMA``) grants; such grants count as present and are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from tasks.core.scram import password_status, scram_verifier

MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
PUBLIC = "public"  # how PUBLIC appears as a grantee; no role can be named "public"
_RESERVED_ROLE_NAMES = {"public", "none"}


class SqlInputError(ValueError):
    """A name or value that cannot be turned into safe SQL."""


# --- quoting ---------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """Quote an identifier: always double-quoted, inner ``"`` doubled (case is preserved)."""
    if not isinstance(name, str):
        raise SqlInputError(f"identifier must be a string, got {type(name).__name__}")
    if not name:
        raise SqlInputError("identifier must not be empty")
    if "\x00" in name:
        raise SqlInputError(f"identifier {name!r} contains a NUL character")
    if len(name.encode("utf-8")) > MAX_IDENT_BYTES:
        # PostgreSQL would truncate it and every later comparison would miss: refuse up front.
        raise SqlInputError(
            f"identifier {name[:20]!r}... is longer than {MAX_IDENT_BYTES} bytes (UTF-8)"
        )
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal: ``'`` doubled; with a backslash, an ``E''`` literal.

    The ``E''`` form (backslashes doubled) means the same whether ``standard_conforming_strings``
    is on or off, like PostgreSQL's own ``quote_literal()``.
    """
    if not isinstance(value, str):
        raise SqlInputError(f"literal must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise SqlInputError("literal contains a NUL character")
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def quote_grantee(name: str) -> str:
    return "PUBLIC" if name == PUBLIC else quote_ident(name)


def _literal_array(values: Iterable[str]) -> str:
    return "ARRAY[" + ", ".join(quote_literal(v) for v in values) + "]::text[]"


# --- statements and plans --------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    sql: str = field(repr=False)
    secret: bool = False  # carries a password verifier: stdin only, never argv/logs
    transactional: bool = True  # False for CREATE DATABASE, which refuses a transaction block

    def __repr__(self) -> str:
        shown = "<secret statement hidden>" if self.secret else self.sql
        return f"Statement({shown!r})"


@dataclass
class Plan:
    statements: list[Statement] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.statements)

    def add(self, sql: str, change: str, *, secret: bool = False, transactional: bool = True):
        self.statements.append(Statement(sql, secret=secret, transactional=transactional))
        self.changes.append(change)

    def extend(self, other: Plan) -> Plan:
        self.statements.extend(other.statements)
        self.changes.extend(other.changes)
        return self


def render_script(statements: Iterable[Statement], *, lock_timeout: str = "10s") -> str:
    """One psql script: transactional statements grouped in BEGIN/COMMIT, others alone.

    ``lock_timeout`` keeps a GRANT from queueing behind a long lock (and everything behind it).
    """
    lines = [f"SET lock_timeout = {quote_literal(lock_timeout)};"]
    in_tx = False
    for st in statements:
        if st.transactional and not in_tx:
            lines.append("BEGIN;")
            in_tx = True
        elif not st.transactional and in_tx:
            lines.append("COMMIT;")
            in_tx = False
        lines.append(st.sql + ";")
    if in_tx:
        lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


# --- privileges ------------------------------------------------------------------------------

GrantKind = Literal["database", "schema", "tables", "sequences", "functions"]

# Canonical order = the order PostgreSQL documents; statements list privileges in this order.
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CREATE", "CONNECT", "TEMPORARY"),
    "schema": ("USAGE", "CREATE"),
    "tables": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "sequences": ("USAGE", "SELECT", "UPDATE"),
    "functions": ("EXECUTE",),
}
_ALIASES = {"TEMP": "TEMPORARY", "ALL PRIVILEGES": "ALL"}
_DEFAULT_ACL_OBJTYPE = {"r": "tables", "S": "sequences", "f": "functions"}


def _known_privileges(kind: str, server_version_num: int = 0) -> tuple[str, ...]:
    known = PRIVILEGES[kind]
    if kind == "tables" and server_version_num >= 170000:
        known += ("MAINTAIN",)  # new table privilege in PostgreSQL 17
    return known


def normalize_privileges(kind: str, privileges: Iterable[str]) -> frozenset[str]:
    """Upper-case, resolve aliases (TEMP, ALL PRIVILEGES), reject what ``kind`` does not have.

    ``ALL`` is kept as a marker and expanded against the server version when planning.
    """
    if kind not in PRIVILEGES:
        raise SqlInputError(f"unknown grant kind {kind!r}; expected one of {sorted(PRIVILEGES)}")
    if isinstance(privileges, str):
        privileges = [privileges]
    out = set()
    for p in privileges:
        if not isinstance(p, str):
            raise SqlInputError(f"privilege must be a string, got {p!r}")
        name = " ".join(p.upper().split())
        name = _ALIASES.get(name, name)
        if name != "ALL" and name not in _known_privileges(kind, 999999):
            raise SqlInputError(
                f"privilege {p!r} does not apply to {kind}; "
                f"expected some of {', '.join(_known_privileges(kind, 999999))} or ALL"
            )
        out.add(name)
    return frozenset(out)


def _expand(kind: str, privileges: frozenset[str], server_version_num: int) -> frozenset[str]:
    if "ALL" in privileges:
        return frozenset(_known_privileges(kind, server_version_num))
    return privileges


def _privs_sql(kind: str, privileges: Iterable[str]) -> str:
    order = _known_privileges(kind, 999999)
    return ", ".join(sorted(privileges, key=order.index))


Acl = Mapping[str, frozenset[str]]  # grantee (or PUBLIC) -> privileges

# --- observed state --------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleState:
    name: str
    login: bool = False
    superuser: bool = False
    createdb: bool = False
    createrole: bool = False
    inherit: bool = True
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    valid_until: str | None = None  # as PostgreSQL reports it; None/"infinity" = never expires
    password: str | None = field(default=None, repr=False)  # stored verifier (superuser read)
    password_known: bool = False  # False when pg_authid was not read for this role
    member_of: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DatabaseState:
    name: str
    owner: str
    acl: Acl = field(default_factory=dict)


@dataclass(frozen=True)
class SchemaState:
    name: str
    owner: str
    acl: Acl = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectState:
    """A table-like relation, sequence, function or procedure in a schema."""

    kind: Literal["table", "sequence", "function", "procedure"]
    schema: str
    name: str
    owner: str
    ref: str  # SQL reference: "s"."t", or "s"."f"(integer) built server-side with %I
    acl: Acl = field(default_factory=dict)


@dataclass(frozen=True)
class DefaultAclState:
    owner: str
    schema: str | None  # None: the global entry (ALTER DEFAULT PRIVILEGES without IN SCHEMA)
    on: Literal["tables", "sequences", "functions"]
    acl: Acl = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    """What one connection to ``database`` sees: shared catalogs plus that database's objects."""

    database: str
    server_version_num: int
    is_superuser: bool
    roles: dict[str, RoleState]
    databases: dict[str, DatabaseState]
    schemas: dict[str, SchemaState]
    objects: tuple[ObjectState, ...]
    default_acls: dict[tuple[str, str | None, str], DefaultAclState]


# --- catalog query ---------------------------------------------------------------------------


def _acl_json(acl_expr: str) -> str:
    # aclexplode over the effective ACL (NULL = built-in default, hence acldefault);
    # grantee 0 is PUBLIC. Grantors and grant options are deliberately dropped.
    return (
        "(SELECT coalesce(json_object_agg(a.grantee, a.privileges), '{}'::json) FROM ("
        "SELECT CASE WHEN e.grantee = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(e.grantee) END"
        " AS grantee, json_agg(DISTINCT e.privilege_type) AS privileges"
        f" FROM pg_catalog.aclexplode({acl_expr}) AS e GROUP BY 1) AS a)"
    )


def catalog_query(
    *, password_roles: Iterable[str] = (), schemas: Iterable[str] | None = None
) -> str:
    """One SELECT returning one JSON document; parse it with :func:`parse_catalog_json`.

    Run it once per database whose schemas/objects matter (shared catalogs - roles, memberships,
    databases - come along each time). ``password_roles``: roles whose stored verifier is read
    from ``pg_authid``, which only a superuser may read; leave it empty otherwise. ``schemas``:
    limit objects to these schemas (None = every non-system schema).
    """
    pw_roles = sorted(set(password_roles))
    for name in pw_roles:
        quote_ident(name)  # validates
    known = f"r.rolname = ANY({_literal_array(pw_roles)})" if pw_roles else "false"
    password = (
        f"CASE WHEN {known} THEN (SELECT a.rolpassword FROM pg_catalog.pg_authid a"
        " WHERE a.oid = r.oid) END"
        if pw_roles
        else "NULL::text"
    )
    if schemas is None:
        in_scope = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
    else:
        names = sorted(set(schemas))
        for name in names:
            quote_ident(name)
        in_scope = f"n.nspname = ANY({_literal_array(names)})"

    roles = f"""(SELECT coalesce(json_agg(json_build_object(
      'name', r.rolname, 'login', r.rolcanlogin, 'superuser', r.rolsuper,
      'createdb', r.rolcreatedb, 'createrole', r.rolcreaterole, 'inherit', r.rolinherit,
      'replication', r.rolreplication, 'bypassrls', r.rolbypassrls,
      'connection_limit', r.rolconnlimit, 'valid_until', r.rolvaliduntil,
      'password_known', {known}, 'password', {password},
      'member_of', (SELECT coalesce(json_agg(pg_catalog.pg_get_userbyid(m.roleid)), '[]'::json)
                    FROM pg_catalog.pg_auth_members m WHERE m.member = r.oid)
    ) ORDER BY r.rolname), '[]'::json)
    FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_')"""

    databases = f"""(SELECT coalesce(json_agg(json_build_object(
      'name', d.datname, 'owner', pg_catalog.pg_get_userbyid(d.datdba),
      'acl', {_acl_json("coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))")}
    ) ORDER BY d.datname), '[]'::json)
    FROM pg_catalog.pg_database d WHERE NOT d.datistemplate)"""

    schema_rows = f"""(SELECT coalesce(json_agg(json_build_object(
      'name', n.nspname, 'owner', pg_catalog.pg_get_userbyid(n.nspowner),
      'acl', {_acl_json("coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))")}
    ) ORDER BY n.nspname), '[]'::json)
    FROM pg_catalog.pg_namespace n WHERE {in_scope})"""

    # Relation kinds that GRANT ... ON ALL TABLES IN SCHEMA touches, plus sequences.
    rel_acl = _acl_json(
        "coalesce(c.relacl, pg_catalog.acldefault("
        "CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))"
    )
    relations = f"""(SELECT coalesce(json_agg(json_build_object(
      'kind', CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
      'schema', n.nspname, 'name', c.relname, 'owner', pg_catalog.pg_get_userbyid(c.relowner),
      'ref', format('%I.%I', n.nspname, c.relname),
      'acl', {rel_acl}
    ) ORDER BY n.nspname, c.relname), '[]'::json)
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND {in_scope})"""

    functions = f"""(SELECT coalesce(json_agg(json_build_object(
      'kind', CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
      'schema', n.nspname, 'name', p.proname, 'owner', pg_catalog.pg_get_userbyid(p.proowner),
      'ref', format('%I.%I(%s)', n.nspname, p.proname,
                    pg_catalog.pg_get_function_identity_arguments(p.oid)),
      'acl', {_acl_json("coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))")}
    ) ORDER BY n.nspname, p.proname, p.oid), '[]'::json)
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE {in_scope})"""

    # Global entries (schema NULL) are always read: they add to every schema's defaults.
    default_acls = f"""(SELECT coalesce(json_agg(json_build_object(
      'owner', pg_catalog.pg_get_userbyid(da.defaclrole), 'schema', n.nspname,
      'objtype', da.defaclobjtype, 'acl', {_acl_json("da.defaclacl")}
    ) ORDER BY 1), '[]'::json)
    FROM pg_catalog.pg_default_acl da
    LEFT JOIN pg_catalog.pg_namespace n ON n.oid = da.defaclnamespace
    WHERE da.defaclobjtype IN ('r', 'S', 'f') AND (da.defaclnamespace = 0 OR ({in_scope})))"""

    return f"""SELECT json_build_object(
  'database', current_database(),
  'server_version_num', current_setting('server_version_num')::int,
  'is_superuser', (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
  'roles', {roles},
  'databases', {databases},
  'schemas', {schema_rows},
  'relations', {relations},
  'functions', {functions},
  'default_acls', {default_acls}
)"""


def _acl(raw: Any) -> dict[str, frozenset[str]]:
    return {str(k): frozenset(v) for k, v in (raw or {}).items()}


def parse_catalog_json(text: str) -> Catalog:
    """Turn :func:`catalog_query` output (psql ``-At``) into a :class:`Catalog`."""
    try:
        doc = json.loads(text.strip())
        roles = {
            r["name"]: RoleState(
                name=r["name"],
                login=r["login"],
                superuser=r["superuser"],
                createdb=r["createdb"],
                createrole=r["createrole"],
                inherit=r["inherit"],
                replication=r["replication"],
                bypassrls=r["bypassrls"],
                connection_limit=int(r["connection_limit"]),
                valid_until=r["valid_until"],
                password=r["password"],
                password_known=bool(r["password_known"]),
                member_of=frozenset(r["member_of"]),
            )
            for r in doc["roles"]
        }
        databases = {
            d["name"]: DatabaseState(d["name"], d["owner"], _acl(d["acl"])) for d in doc["databases"]
        }
        schemas = {s["name"]: SchemaState(s["name"], s["owner"], _acl(s["acl"])) for s in doc["schemas"]}
        objects = tuple(
            ObjectState(o["kind"], o["schema"], o["name"], o["owner"], o["ref"], _acl(o["acl"]))
            for o in doc["relations"] + doc["functions"]
        )
        default_acls = {}
        for d in doc["default_acls"]:
            on = _DEFAULT_ACL_OBJTYPE[d["objtype"]]
            default_acls[(d["owner"], d["schema"], on)] = DefaultAclState(
                d["owner"], d["schema"], on, _acl(d["acl"])
            )
        return Catalog(
            database=doc["database"],
            server_version_num=int(doc["server_version_num"]),
            is_superuser=bool(doc["is_superuser"]),
            roles=roles,
            databases=databases,
            schemas=schemas,
            objects=objects,
            default_acls=default_acls,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # Never echo the text: it may hold password verifiers.
        raise ValueError(
            f"cannot parse the catalog JSON ({len(text)} chars): {type(exc).__name__} {exc}"
            if not isinstance(exc, json.JSONDecodeError)
            else f"catalog output is not valid JSON ({len(text)} chars, error at {exc.pos})"
        ) from None


# --- roles -----------------------------------------------------------------------------------

_FLAGS = (  # (spec/state attribute, keyword when on, keyword when off)
    ("login", "LOGIN", "NOLOGIN"),
    ("superuser", "SUPERUSER", "NOSUPERUSER"),
    ("createdb", "CREATEDB", "NOCREATEDB"),
    ("createrole", "CREATEROLE", "NOCREATEROLE"),
    ("inherit", "INHERIT", "NOINHERIT"),
    ("replication", "REPLICATION", "NOREPLICATION"),
    ("bypassrls", "BYPASSRLS", "NOBYPASSRLS"),
)


def _validate_role_name(name: str) -> None:
    quote_ident(name)
    if name in _RESERVED_ROLE_NAMES or name.startswith("pg_"):
        raise SqlInputError(f"role name {name!r} is reserved by PostgreSQL")


def _parse_timestamp(value: str | datetime | None) -> datetime | None:
    """None means "never expires" (NULL or infinity). Naive times are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        ts = value
    else:
        if value.strip().lower() == "infinity":
            return None
        ts = datetime.fromisoformat(value.strip())
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RoleSpec:
    """Desired role. ``None`` for an attribute means "not managed, leave as it is"."""

    name: str
    present: bool = True
    login: bool | None = None
    superuser: bool | None = None
    createdb: bool | None = None
    createrole: bool | None = None
    inherit: bool | None = None
    replication: bool | None = None
    bypassrls: bool | None = None
    connection_limit: int | None = None  # -1 = unlimited
    valid_until: str | None = None  # ISO 8601 (naive = UTC) or "infinity"
    password: str | None = field(default=None, repr=False)  # plaintext, controller only
    member_of: tuple[str, ...] | None = None  # None: memberships not managed

    def __post_init__(self):
        _validate_role_name(self.name)
        for attr, _, _ in _FLAGS:
            if getattr(self, attr) not in (None, True, False):
                raise SqlInputError(f"role {self.name!r}: {attr} must be true, false or unset")
        limit = self.connection_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < -1):
            raise SqlInputError(
                f"role {self.name!r}: connection_limit must be an integer >= -1 (-1 = unlimited)"
            )
        if self.valid_until is not None:
            try:
                _parse_timestamp(self.valid_until)
            except (ValueError, TypeError, AttributeError):
                raise SqlInputError(
                    f"role {self.name!r}: valid_until {self.valid_until!r} is not an ISO 8601 "
                    "timestamp or 'infinity'"
                ) from None
        if self.password is not None:
            if not isinstance(self.password, str) or not self.password or "\x00" in self.password:
                raise SqlInputError(f"role {self.name!r}: password must be a non-empty string")
        if self.member_of is not None:
            if isinstance(self.member_of, str):
                raise SqlInputError(f"role {self.name!r}: member_of must be a list of role names")
            object.__setattr__(self, "member_of", tuple(self.member_of))
            for group in self.member_of:
                quote_ident(group)  # pg_* predefined roles are fine as groups
                if group == self.name:
                    raise SqlInputError(f"role {self.name!r} cannot be a member of itself")


def _valid_until_sql(value: str) -> str:
    ts = _parse_timestamp(value)
    return "VALID UNTIL " + quote_literal("infinity" if ts is None else ts.isoformat())


def plan_role(spec: RoleSpec, observed: RoleState | None) -> Plan:
    """CREATE/ALTER/DROP ROLE with only what differs. Memberships: :func:`plan_memberships`.

    A password is sent as a locally computed SCRAM verifier, and only when the stored one does
    not already match (an md5 hash of the same password is upgraded). Checking needs the stored
    verifier, i.e. a superuser connection; without it this refuses rather than re-set blindly.
    """
    plan = Plan()
    who = f"role {quote_ident(spec.name)}"
    if not spec.present:
        if observed is not None:
            # Fails (cleanly, in the transaction) if the role still owns objects or holds
            # privileges: reassigning or dropping those is a data decision left to the operator.
            plan.add(f"DROP ROLE {quote_ident(spec.name)}", f"{who}: drop")
        return plan

    clauses: list[str] = []
    notes: list[str] = []
    for attr, on, off in _FLAGS:
        want = getattr(spec, attr)
        if want is None:
            continue
        have = getattr(observed, attr) if observed else None
        if want != have:
            clauses.append(on if want else off)
            notes.append(f"{attr} on" if want else f"{attr} off")
            if observed:
                notes[-1] = f"{attr} {'on' if have else 'off'} -> {'on' if want else 'off'}"
    if spec.connection_limit is not None:
        have = observed.connection_limit if observed else None
        if spec.connection_limit != have:
            clauses.append(f"CONNECTION LIMIT {int(spec.connection_limit)}")
            notes.append(
                f"connection limit {have} -> {spec.connection_limit}"
                if observed
                else f"connection limit {spec.connection_limit}"
            )
    if spec.valid_until is not None:
        want_ts = _parse_timestamp(spec.valid_until)
        have_ts = _parse_timestamp(observed.valid_until) if observed else "absent"
        if want_ts != have_ts:
            clauses.append(_valid_until_sql(spec.valid_until))
            shown = lambda ts: "infinity" if ts is None else ts.isoformat()  # noqa: E731
            notes.append(
                f"valid until {shown(have_ts)} -> {shown(want_ts)}"
                if observed
                else f"valid until {shown(want_ts)}"
            )
    secret = False
    if spec.password is not None:
        if observed is None:
            status = "absent"
        elif not observed.password_known:
            raise SqlInputError(
                f"{who}: cannot tell whether its password is already right: the stored verifier "
                "was not read (connect as a superuser so pg_authid is readable)"
            )
        else:
            status = password_status(observed.password, spec.password, spec.name)
        if status != "match":
            clauses.append("PASSWORD " + quote_literal(scram_verifier(spec.password)))
            secret = True
            notes.append(
                {
                    "absent": "password set",
                    "mismatch": "password changed",
                    "md5-match-upgrade": "password upgraded md5 -> SCRAM-SHA-256",
                }[status]
            )

    if observed is None:
        sql = f"CREATE ROLE {quote_ident(spec.name)}"
        if clauses:
            sql += " WITH " + " ".join(clauses)
        plan.add(sql, f"{who}: create" + (f" ({', '.join(notes)})" if notes else ""), secret=secret)
    elif clauses:
        sql = f"ALTER ROLE {quote_ident(spec.name)} WITH " + " ".join(clauses)
        plan.add(sql, f"{who}: {', '.join(notes)}", secret=secret)
    return plan


def plan_memberships(
    spec: RoleSpec, observed: RoleState | None, *, exclusive: bool = False
) -> Plan:
    """GRANT the groups in ``spec.member_of`` the role lacks; with ``exclusive``, REVOKE others."""
    plan = Plan()
    if spec.member_of is None or not spec.present:
        return plan
    have = observed.member_of if observed else frozenset()
    want = set(spec.member_of)
    member = quote_ident(spec.name)
    for group in sorted(want - have):
        plan.add(f"GRANT {quote_ident(group)} TO {member}", f"role {member}: join {quote_ident(group)}")
    if exclusive:
        for group in sorted(have - want):
            plan.add(
                f"REVOKE {quote_ident(group)} FROM {member}", f"role {member}: leave {quote_ident(group)}"
            )
    return plan


# --- databases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseSpec:
    name: str
    owner: str | None = None  # None: not managed (a new database is owned by the connecting role)

    def __post_init__(self):
        quote_ident(self.name)
        if self.owner is not None:
            quote_ident(self.owner)


def plan_database(spec: DatabaseSpec, observed: DatabaseState | None) -> Plan:
    """CREATE DATABASE (outside any transaction) or ALTER DATABASE ... OWNER TO. Never drops."""
    plan = Plan()
    db = quote_ident(spec.name)
    if observed is None:
        sql = f"CREATE DATABASE {db}"
        if spec.owner:
            sql += f" OWNER {quote_ident(spec.owner)}"
        owner_note = f" (owner {quote_ident(spec.owner)})" if spec.owner else ""
        plan.add(sql, f"database {db}: create{owner_note}", transactional=False)
    elif spec.owner and observed.owner != spec.owner:
        plan.add(
            f"ALTER DATABASE {db} OWNER TO {quote_ident(spec.owner)}",
            f"database {db}: owner {quote_ident(observed.owner)} -> {quote_ident(spec.owner)}",
        )
    return plan


@dataclass(frozen=True)
class SchemaSpec:
    database: str
    name: str
    owner: str | None = None

    def __post_init__(self):
        for name in (self.database, self.name) + ((self.owner,) if self.owner else ()):
            quote_ident(name)


def plan_schema(spec: SchemaSpec, observed: SchemaState | None) -> Plan:
    """CREATE SCHEMA (AUTHORIZATION owner) or ALTER SCHEMA ... OWNER TO. Never drops."""
    plan = Plan()
    sch = quote_ident(spec.name)
    if observed is None:
        sql = f"CREATE SCHEMA {sch}"
        if spec.owner:
            sql += f" AUTHORIZATION {quote_ident(spec.owner)}"
        owner_note = f" (owner {quote_ident(spec.owner)})" if spec.owner else ""
        plan.add(sql, f"schema {sch}: create{owner_note}")
    elif spec.owner and observed.owner != spec.owner:
        plan.add(
            f"ALTER SCHEMA {sch} OWNER TO {quote_ident(spec.owner)}",
            f"schema {sch}: owner {quote_ident(observed.owner)} -> {quote_ident(spec.owner)}",
        )
    return plan


# --- grants ----------------------------------------------------------------------------------


def _normalize_grantee(name: str) -> str:
    if isinstance(name, str) and name.lower() == PUBLIC:
        return PUBLIC
    quote_ident(name)
    return name


@dataclass(frozen=True)
class GrantSpec:
    """Privileges of ``grantee`` on a database, a schema, or all tables/sequences/functions in
    a schema. ``database`` is where the objects live (for ``on="database"``, the object itself).
    An empty privilege list means "none" (useful with exclusive mode, e.g. for PUBLIC)."""

    on: GrantKind
    database: str
    grantee: str  # a role, or "public"/"PUBLIC" for PUBLIC
    privileges: frozenset[str]
    schema: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "privileges", normalize_privileges(self.on, self.privileges))
        object.__setattr__(self, "grantee", _normalize_grantee(self.grantee))
        quote_ident(self.database)
        if self.on == "database":
            if self.schema is not None:
                raise SqlInputError("a database grant takes no schema")
        elif self.schema is None:
            raise SqlInputError(f"a grant on {self.on} needs a schema")
        else:
            quote_ident(self.schema)


@dataclass(frozen=True)
class DefaultPrivilegeSpec:
    """ALTER DEFAULT PRIVILEGES FOR ROLE ``owner`` IN SCHEMA ``schema``: what objects ``owner``
    creates there later grant to ``grantee``."""

    database: str
    owner: str
    schema: str
    on: Literal["tables", "sequences", "functions"]
    grantee: str
    privileges: frozenset[str]

    def __post_init__(self):
        if self.on not in ("tables", "sequences", "functions"):
            raise SqlInputError(
                f"default privileges apply to tables, sequences or functions, not {self.on!r}"
            )
        object.__setattr__(self, "privileges", normalize_privileges(self.on, self.privileges))
        object.__setattr__(self, "grantee", _normalize_grantee(self.grantee))
        for name in (self.database, self.owner, self.schema):
            quote_ident(name)


def _merge(specs: Iterable, key) -> dict[Any, dict[str, frozenset[str]]]:
    """Group specs by target; the same grantee listed twice gets the union."""
    out: dict[Any, dict[str, frozenset[str]]] = {}
    for s in specs:
        per = out.setdefault(key(s), {})
        per[s.grantee] = per.get(s.grantee, frozenset()) | s.privileges
    return out


_OBJ_KIND = {"tables": "table", "sequences": "sequence", "functions": "function"}
_OBJ_SQL = {"tables": "TABLE", "sequences": "SEQUENCE", "functions": "FUNCTION"}


# A statement maker: (verb "GRANT"/"REVOKE", privileges SQL, grantee SQL) -> statement.
def _object_sql(on_sql: str):
    return lambda verb, privs, who: (
        f"{verb} {privs} ON {on_sql} {'TO' if verb == 'GRANT' else 'FROM'} {who}"
    )


def _grant_missing(plan: Plan, kind: str, make, label: str, acl: Acl,
                   want: Mapping[str, frozenset[str]], version: int) -> None:
    for grantee in sorted(want):
        missing = _expand(kind, want[grantee], version) - acl.get(grantee, frozenset())
        if missing:
            privs, who = _privs_sql(kind, missing), quote_grantee(grantee)
            plan.add(make("GRANT", privs, who), f"{label}: grant {privs} to {who}")


def _revoke_extra(plan: Plan, kind: str, make, label: str, owner: str | None, acl: Acl,
                  want: Mapping[str, frozenset[str]], version: int) -> None:
    """Exclusive mode: revoke what grantees hold beyond ``want``; never the owner's own
    privileges, and PUBLIC's only when the settings list PUBLIC for this object."""
    for grantee in sorted(acl):
        if grantee == owner or (grantee == PUBLIC and PUBLIC not in want):
            continue
        extra = acl[grantee] - _expand(kind, want.get(grantee, frozenset()), version)
        if extra:
            privs, who = _privs_sql(kind, extra), quote_grantee(grantee)
            plan.add(make("REVOKE", privs, who), f"{label}: revoke {privs} from {who}")


def plan_grants(
    grants: Iterable[GrantSpec | DefaultPrivilegeSpec], catalog: Catalog, *, exclusive: bool = False
) -> Plan:
    """Plan the grants whose ``database`` is the one ``catalog`` was read from.

    A database or schema missing from the catalog is planned as new (empty ACL, no objects),
    so a deploy that creates it earlier in the same run still gets its grants.
    """
    mine = [g for g in grants if g.database == catalog.database]
    version = catalog.server_version_num
    plan = Plan()

    objects = [g for g in mine if isinstance(g, GrantSpec)]
    for (kind, target), want in sorted(_merge(objects, lambda g: (g.on, g.schema or g.database)).items()):
        if kind in ("database", "schema"):
            state = (catalog.databases if kind == "database" else catalog.schemas).get(target)
            owner, acl = (state.owner, state.acl) if state else (None, {})
            make = _object_sql(f"{kind.upper()} {quote_ident(target)}")
            label = f"{kind} {quote_ident(target)}"
            _grant_missing(plan, kind, make, label, acl, want, version)
            if exclusive:
                _revoke_extra(plan, kind, make, label, owner, acl, want, version)
        else:
            _plan_all_in_schema(plan, kind, target, want, catalog, exclusive)

    defaults = [g for g in mine if isinstance(g, DefaultPrivilegeSpec)]
    for (owner, schema, on), want in sorted(_merge(defaults, lambda g: (g.owner, g.schema, g.on)).items()):
        _plan_default(plan, owner, schema, on, want, catalog, exclusive)
    return plan


def _plan_all_in_schema(plan, kind, schema, want, catalog: Catalog, exclusive: bool) -> None:
    # One GRANT ... ON ALL <kind> IN SCHEMA covers the union of what is missing anywhere (it is
    # a no-op where already granted); exclusive revokes go per object, so an object's owner and
    # objects outside the settings are handled one by one.
    version = catalog.server_version_num
    objs = [o for o in catalog.objects if o.schema == schema and o.kind == _OBJ_KIND[kind]]
    label = f"{kind} in schema {quote_ident(schema)}"
    for grantee in sorted(want):
        wanted = _expand(kind, want[grantee], version)
        gaps = [wanted - o.acl.get(grantee, frozenset()) for o in objs]
        lacking = [g for g in gaps if g]
        if lacking:
            privs, who = _privs_sql(kind, frozenset().union(*lacking)), quote_grantee(grantee)
            plan.add(
                f"GRANT {privs} ON ALL {kind.upper()} IN SCHEMA {quote_ident(schema)} TO {who}",
                f"{label}: grant {privs} to {who} ({len(lacking)} of {len(objs)} lacked it)",
            )
    if exclusive:
        word = _OBJ_SQL[kind]
        for o in objs:
            make = _object_sql(f"{word} {o.ref}")
            _revoke_extra(plan, kind, make, f"{word.lower()} {o.ref}", o.owner, o.acl, want, version)


def _builtin_default(owner: str, on: str) -> dict[str, frozenset[str]]:
    # What new objects get when no global pg_default_acl entry exists (see acldefault()).
    acl = {owner: frozenset(PRIVILEGES[on])}
    if on == "functions":
        acl[PUBLIC] = frozenset({"EXECUTE"})
    return acl


def _plan_default(plan, owner, schema, on, want, catalog: Catalog, exclusive: bool) -> None:
    version = catalog.server_version_num
    local = catalog.default_acls.get((owner, schema, on))
    local_acl = local.acl if local else {}
    glob = catalog.default_acls.get((owner, None, on))
    global_acl = glob.acl if glob else _builtin_default(owner, on)
    # New objects get the global entry plus the schema entry: both count as present.
    effective = {g: local_acl.get(g, frozenset()) | global_acl.get(g, frozenset())
                 for g in set(local_acl) | set(global_acl)}
    prefix = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA {quote_ident(schema)}"

    def make(verb, privs, who):
        return f"{prefix} {verb} {privs} ON {on.upper()} {'TO' if verb == 'GRANT' else 'FROM'} {who}"

    label = f"default privileges on {on} by {quote_ident(owner)} in schema {quote_ident(schema)}"
    _grant_missing(plan, on, make, label, effective, want, version)
    if exclusive:  # IN SCHEMA can only revoke from the schema-level entry
        _revoke_extra(plan, on, make, label, owner, local_acl, want, version)
