"""Minimal-change plans for privileges: on databases, schemas, all tables/sequences/functions
in a schema, and default privileges for objects an owner creates later.

Scope notes (documented limits, not accidents):
- Grant options (``WITH GRANT OPTION``) are ignored when comparing privileges.
- Revokes are issued by the connecting superuser, which revokes what the object owner granted;
  privileges granted by a third role (through a grant option) are not touched.
- The object owner's own privileges are never revoked; PUBLIC is only revoked from when the
  settings name PUBLIC as a grantee for that object (e.g. with an empty privilege list).
- Exclusive mode never revokes from a superuser or from the role the deploy connects as
  (:meth:`tasks.core.pg_catalog.Catalog.protected_roles`); the plan notes what it kept.
- ``PUBLIC`` (or ``public``) as a grantee is the PUBLIC pseudo-role; any other spelling, like
  ``Public``, is a role of that exact name, quoted as an identifier.
- Schema-level default privileges cannot revoke what a global ``ALTER DEFAULT PRIVILEGES``
  (no ``IN SCHEMA``) grants; such grants count as present and are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.core.pg_catalog import Catalog
from tasks.core.pg_sql import (
    PRIVILEGES,
    PUBLIC,
    PUBLIC_SPELLINGS,
    Acl,
    GrantKind,
    Plan,
    SqlInputError,
    _expand,
    _privs_sql,
    normalize_privileges,
    quote_grantee,
    quote_ident,
    quote_literal,
)

# --- grants ----------------------------------------------------------------------------------


def _normalize_grantee(name: str) -> str:
    """PUBLIC only as written ``PUBLIC``/``public``; ``Public`` is a role named so."""
    if isinstance(name, str) and name in PUBLIC_SPELLINGS:
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
    return lambda verb, privs, who: f"{verb} {privs} ON {on_sql} {'TO' if verb == 'GRANT' else 'FROM'} {who}"


def _grant_missing(
    plan: Plan, kind: str, make, label: str, acl: Acl, want: Mapping[str, frozenset[str]], version: int
) -> None:
    for grantee in sorted(want):
        missing = _expand(kind, want[grantee], version) - acl.get(grantee, frozenset())
        if missing:
            privs, who = _privs_sql(kind, missing), quote_grantee(grantee)
            plan.add(make("GRANT", privs, who), f"{label}: grant {privs} to {who}")


def _revoke_extra(
    plan: Plan,
    kind: str,
    make,
    label: str,
    owner: str | None,
    acl: Acl,
    want: Mapping[str, frozenset[str]],
    version: int,
    protected: Mapping[str, str],
) -> None:
    """Exclusive mode: revoke what grantees hold beyond ``want``; never the owner's own
    privileges, never a ``protected`` role's (noted instead), and PUBLIC's only when the
    settings list PUBLIC for this object."""
    for grantee in sorted(acl):
        if grantee == owner or (grantee == PUBLIC and PUBLIC not in want):
            continue
        extra = acl[grantee] - _expand(kind, want.get(grantee, frozenset()), version)
        if not extra:
            continue
        privs, who = _privs_sql(kind, extra), quote_grantee(grantee)
        if grantee in protected:
            plan.note(
                f"kept what {who} holds beyond the settings: it is {protected[grantee]}, "
                "and exclusive mode never revokes from one"
            )
            continue
        plan.add(make("REVOKE", privs, who), f"{label}: revoke {privs} from {who}")


def plan_grants(
    grants: Iterable[GrantSpec | DefaultPrivilegeSpec],
    catalog: Catalog,
    *,
    exclusive: bool = False,
    connecting_role: str | None = None,
) -> Plan:
    """Plan the grants whose ``database`` is the one ``catalog`` was read from.

    A database or schema missing from the catalog is planned as new (empty ACL, no objects),
    so a deploy that creates it earlier in the same run still gets its grants. ``exclusive``
    never revokes from superusers or from ``connecting_role`` (nor the role the catalog was
    read as): ``plan.notes`` says what it kept.
    """
    mine = [g for g in grants if g.database == catalog.database]
    version = catalog.server_version_num
    plan = Plan()
    protected = catalog.protected_roles(connecting_role)

    objects = [g for g in mine if isinstance(g, GrantSpec)]
    for (kind, target), want in sorted(_merge(objects, lambda g: (g.on, g.schema or g.database)).items()):
        if kind in ("database", "schema"):
            state = (catalog.databases if kind == "database" else catalog.schemas).get(target)
            owner, acl = (state.owner, state.acl) if state else (None, {})
            make = _object_sql(f"{kind.upper()} {quote_ident(target)}")
            label = f"{kind} {quote_ident(target)}"
            _grant_missing(plan, kind, make, label, acl, want, version)
            if exclusive:
                _revoke_extra(plan, kind, make, label, owner, acl, want, version, protected)
        else:
            _plan_all_in_schema(plan, kind, target, want, catalog, exclusive, protected)

    defaults = [g for g in mine if isinstance(g, DefaultPrivilegeSpec)]
    for (owner, schema, on), want in sorted(_merge(defaults, lambda g: (g.owner, g.schema, g.on)).items()):
        _plan_default(plan, owner, schema, on, want, catalog, exclusive, protected)
    return plan


def _plan_all_in_schema(plan, kind, schema, want, catalog: Catalog, exclusive: bool, protected) -> None:
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
            _revoke_extra(
                plan, kind, make, f"{word.lower()} {o.ref}", o.owner, o.acl, want, version, protected
            )


def _builtin_default(owner: str, on: str) -> dict[str, frozenset[str]]:
    # What new objects get when no global pg_default_acl entry exists (see acldefault()).
    acl = {owner: frozenset(PRIVILEGES[on])}
    if on == "functions":
        acl[PUBLIC] = frozenset({"EXECUTE"})
    return acl


def _plan_default(plan, owner, schema, on, want, catalog: Catalog, exclusive: bool, protected) -> None:
    version = catalog.server_version_num
    local = catalog.default_acls.get((owner, schema, on))
    local_acl = local.acl if local else {}
    glob = catalog.default_acls.get((owner, None, on))
    global_acl = glob.acl if glob else _builtin_default(owner, on)
    # New objects get the global entry plus the schema entry: both count as present.
    effective = {
        g: local_acl.get(g, frozenset()) | global_acl.get(g, frozenset())
        for g in set(local_acl) | set(global_acl)
    }
    prefix = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA {quote_ident(schema)}"

    def make(verb, privs, who):
        return f"{prefix} {verb} {privs} ON {on.upper()} {'TO' if verb == 'GRANT' else 'FROM'} {who}"

    label = f"default privileges on {on} by {quote_ident(owner)} in schema {quote_ident(schema)}"
    _grant_missing(plan, on, make, label, effective, want, version)
    if exclusive:  # IN SCHEMA can only revoke from the schema-level entry
        _revoke_extra(plan, on, make, label, owner, local_acl, want, version, protected)


# --- proving grants: the SQL a role runs as itself -------------------------------------


def usage_sql(grants: list[GrantSpec], catalog: Catalog) -> tuple[str, list[str]]:
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
                    source = (
                        "pg_catalog.pg_proc o JOIN pg_catalog.pg_namespace n ON n.oid = o.pronamespace"
                        f" WHERE n.nspname = {quote_literal(schema)}"
                    )
                    fn = "has_function_privilege"
                else:
                    kinds = "'S'" if on == "sequences" else "'r', 'v', 'm', 'f', 'p'"
                    fn = "has_sequence_privilege" if on == "sequences" else "has_table_privilege"
                    source = (
                        "pg_catalog.pg_class o JOIN pg_catalog.pg_namespace n ON n.oid = o.relnamespace"
                        f" WHERE n.nspname = {quote_literal(schema)} AND o.relkind IN ({kinds})"
                    )
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
