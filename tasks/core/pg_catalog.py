"""What PostgreSQL holds, read in one query: roles, memberships, databases, schemas, objects,
their ACLs and default ACLs (:func:`catalog_query`), parsed into ``*State`` values
(:func:`parse_catalog_json`) the ``plan_*`` functions compare the settings with. Pure: the
fact that runs the query is :class:`tasks.facts.postgres.PostgresCatalog`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.core.pg_sql import _DEFAULT_ACL_OBJTYPE, Acl, _literal_array, quote_ident

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
    current_user: str | None = None  # the role the catalog was read as (the deploy's connection)

    def protected_roles(self, connecting_role: str | None = None) -> dict[str, str]:
        """Roles exclusive mode never revokes from, with the reason: superusers (a revoke
        changes nothing for them and only muddles the ACLs) and the role the deploy connects
        as (revoking from it could cut off the deploy itself)."""
        out = {name: "a superuser" for name, role in self.roles.items() if role.superuser}
        for name in (self.current_user, connecting_role):
            if name:
                out[name] = "the role this deploy connects as"
        return out


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


def catalog_query(*, password_roles: Iterable[str] = (), schemas: Iterable[str] | None = None) -> str:
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
        f"CASE WHEN {known} THEN (SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid) END"
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
  'current_user', current_user,
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
        default_acls: dict[tuple[str, str | None, str], DefaultAclState] = {}
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
            current_user=doc.get("current_user"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # Never echo the text: it may hold password verifiers.
        raise ValueError(
            f"cannot parse the catalog JSON ({len(text)} chars): {type(exc).__name__} {exc}"
            if not isinstance(exc, json.JSONDecodeError)
            else f"catalog output is not valid JSON ({len(text)} chars, error at {exc.pos})"
        ) from None
