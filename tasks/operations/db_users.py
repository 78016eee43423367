"""
PostgreSQL roles, databases and grants from host data: validated settings and a packaged deploy.

Host data (defaults in ``inventories/group_data/all.py``; a host's own keys win)::

    postgres = {                       # how to reach the server, as a superuser
        "access": "docker",            # "docker": docker exec -i -u postgres <container> psql
                                       # "psql":   host-side psql to host:port with a 0600 PGPASSFILE
        "container": "quant-postgres", # docker mode
        "host": "127.0.0.1",           # psql mode
        "port": 5432,                  # psql mode
        "superuser": "postgres",
        "superuser_password": {"file": "/etc/quant/secrets/postgres_password"},  # psql mode
        "database": "postgres",        # maintenance database (roles, databases)
        "os_user": "postgres",         # docker mode: OS user psql runs as in the container
        "connect_timeout": 10,
    }
    db_roles = [{
        "name": "quant_user",
        "password": {"file": "/etc/quant/secrets/quant_user_password"},  # or {"env": "VAR"}
        "login": True, "connection_limit": 20, "valid_until": "infinity",
        "member_of": ["readers"],      # optional; createdb/createrole/inherit/... also accepted
        "present": True,               # False: DROP ROLE (refused by PostgreSQL if it owns objects)
    }]
    db_databases = [{"name": "quant", "owner": "postgres"}]
    db_grants = [                      # no schema: database; schema only: schema; "on": objects
        {"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]},
        {"role": "quant_user", "database": "quant", "schema": "public", "privileges": ["USAGE"]},
        {"role": "quant_user", "database": "quant", "schema": "public", "on": "tables",
         "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"]},
    ]
    db_default_privileges = [          # ALTER DEFAULT PRIVILEGES FOR ROLE <owner> IN SCHEMA ...
        {"owner": "postgres", "role": "quant_user", "database": "quant", "schema": "public",
         "on": "tables", "privileges": ["SELECT", "INSERT", "UPDATE", "DELETE"]},
    ]
    db_exclusive = False  # True: revoke privileges/memberships beyond the settings
    db_verify = True      # after a change: log in as each login role over TCP and check usage

What is *not* in the settings is left alone: a role removed from ``db_roles`` is not dropped
(list it with ``"present": False`` to drop it); a grant removed from ``db_grants`` is revoked only
with ``db_exclusive = True``, and only on the objects the settings still name (the owner's own
privileges and PUBLIC's - unless PUBLIC is listed - are never revoked).

Passwords are never values in host data: a string where a password source belongs is refused.
Every source is read once during validation (so a missing file fails before any change), and
errors name the host, the key and the source, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from tasks.operations import postgres
from tasks.core.pg_exec import PgTarget, PgTargetError, resolve_password
from tasks.core.pg_sql import DatabaseSpec, DefaultPrivilegeSpec, GrantSpec, RoleSpec, SqlInputError

POSTGRES_KEYS = {
    "access", "container", "host", "port", "superuser", "superuser_password", "database",
    "os_user", "connect_timeout",
}
ROLE_KEYS = {
    "name", "password", "present", "login", "superuser", "createdb", "createrole", "inherit",
    "replication", "bypassrls", "connection_limit", "valid_until", "member_of",
}
DATABASE_KEYS = {"name", "owner"}
GRANT_KEYS = {"role", "database", "schema", "on", "privileges"}
DEFAULT_KEYS = {"owner", "role", "database", "schema", "on", "privileges"}
TOP_KEYS = ("db_roles", "db_databases", "db_grants", "db_default_privileges", "db_exclusive",
            "db_verify")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class DbSettingsError(PyinfraError, ValueError):
    """Bad host data: every problem, each naming the host and the key; never a secret."""

    def __init__(self, host_name: str, problems: list[str]):
        self.host_name = host_name
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': {p}" for p in problems))


@dataclass(frozen=True)
class RoleSettings:
    spec_kwargs: dict = field(repr=False)  # RoleSpec/operation keywords except password
    password: Mapping[str, str] | None = None  # the source, never the value

    @property
    def name(self) -> str:
        return self.spec_kwargs["name"]


@dataclass(frozen=True)
class DbSettings:
    target: PgTarget
    roles: tuple[RoleSettings, ...]
    databases: tuple[tuple[str, str | None], ...]
    grants: tuple[GrantSpec | DefaultPrivilegeSpec, ...]
    exclusive: bool = False
    verify: bool = True

    def grant_databases(self) -> list[str]:
        seen: list[str] = []
        for g in self.grants:
            if g.database not in seen:
                seen.append(g.database)
        return seen

    def logins(self) -> dict[str, Mapping[str, str]]:
        """Login roles with a password: the roles verification logs in as."""
        return {r.name: r.password for r in self.roles
                if r.password is not None and r.spec_kwargs.get("present", True)
                and r.spec_kwargs.get("login") is not False}

    def login_database(self, role: str) -> str:
        """Where a role's login is verified: the first database it is granted CONNECT on."""
        for g in self.grants:
            if isinstance(g, GrantSpec) and g.on == "database" and g.grantee == role \
                    and ("CONNECT" in g.privileges or "ALL" in g.privileges):
                return g.database
        return self.target.database


def _password_source(where: str, value: Any, problems: list[str], environ=None) -> Mapping | None:
    """Check a password source and that it can be read now (the value is discarded)."""
    if isinstance(value, (str, bytes)):
        problems.append(f"{where}: a plaintext password in host data is refused; "
                        'use {"env": "VAR"} or {"file": "/path"}')
        return None
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in ("env", "file"):
        problems.append(f'{where}: must be {{"env": "VAR"}} or {{"file": "/path"}}')
        return None
    ((kind, ref),) = value.items()
    if not isinstance(ref, str) or not ref or (kind == "env" and not _ENV_NAME.match(ref)):
        problems.append(f"{where}: {kind} must name " + ("a variable" if kind == "env" else "a file"))
        return None
    try:
        resolve_password(value, environ)
    except PgTargetError as exc:
        problems.append(f"{where}: {exc}")
        return None
    return dict(value)


def _unknown(where: str, item: Mapping, known: set[str], problems: list[str]) -> None:
    for key in sorted(set(item) - known, key=str):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _list_of_dicts(data: Mapping, key: str, problems: list[str]) -> list[Mapping]:
    value = data.get(key) or []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
        problems.append(f"{key}: must be a list of mappings")
        return []
    return list(value)


def _target(pg: Any, problems: list[str], environ=None) -> PgTarget | None:
    if not isinstance(pg, Mapping):
        problems.append("postgres: missing (a mapping saying how to reach the server)")
        return None
    _unknown("postgres", pg, POSTGRES_KEYS, problems)
    access = pg.get("access", "docker" if pg.get("container") else "psql")
    kwargs: dict[str, Any] = {
        "database": pg.get("database", "postgres"),
        "user": pg.get("superuser", "postgres"),
        "connect_timeout": pg.get("connect_timeout", 10),
    }
    if access == "docker":
        kwargs.update(container=pg.get("container"), os_user=pg.get("os_user", "postgres"))
    elif access == "psql":
        source = None
        if pg.get("superuser_password") is not None:
            source = _password_source("postgres.superuser_password", pg["superuser_password"],
                                      problems, environ)
            if source is None:
                return None
        kwargs.update(host=pg.get("host"), port=pg.get("port", 5432), password_source=source)
    else:
        problems.append(f"postgres.access: must be 'docker' or 'psql', not {access!r}")
        return None
    try:
        return PgTarget(access, **kwargs)
    except PgTargetError as exc:
        problems.append(f"postgres ({access} access): {exc}")
        return None


def load_db_settings(host_name: str, data: Any, environ: Mapping[str, str] | None = None) -> DbSettings:
    """Validate this host's ``postgres`` and ``db_*`` data; raise :class:`DbSettingsError` with
    every problem at once. ``data``: pyinfra's ``host.data`` or a plain mapping."""
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    problems: list[str] = []
    target = _target(get("postgres"), problems, environ)
    plain = {k: get(k) for k in TOP_KEYS}
    keys = data.dict().keys() if hasattr(data, "dict") else (data.keys() if hasattr(data, "keys") else ())
    for key in sorted(k for k in keys if isinstance(k, str) and k.startswith("db_") and k not in TOP_KEYS):
        problems.append(f"{key}: unknown key (known: {', '.join(TOP_KEYS)})")

    roles: list[RoleSettings] = []
    for i, item in enumerate(_list_of_dicts(plain, "db_roles", problems)):
        where = f"db_roles[{i}]" + (f" ({item.get('name')!r})" if isinstance(item.get("name"), str) else "")
        _unknown(where, item, ROLE_KEYS, problems)
        kwargs = {k: v for k, v in item.items() if k in ROLE_KEYS and k != "password"}
        source = None
        if item.get("password") is not None:
            source = _password_source(f"{where}.password", item["password"], problems, environ)
            if source is None:
                continue
        try:
            RoleSpec(**kwargs)  # validates name, flags, limits, dates, groups
        except (SqlInputError, TypeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if any(r.name == kwargs["name"] for r in roles):
            problems.append(f"{where}: role {kwargs['name']!r} is listed twice")
            continue
        if isinstance(kwargs.get("member_of"), (list, tuple)):
            kwargs["member_of"] = list(kwargs["member_of"])
        roles.append(RoleSettings(kwargs, source))

    databases: list[tuple[str, str | None]] = []
    for i, item in enumerate(_list_of_dicts(plain, "db_databases", problems)):
        where = f"db_databases[{i}]"
        _unknown(where, item, DATABASE_KEYS, problems)
        try:
            DatabaseSpec(item.get("name"), item.get("owner"))
        except (SqlInputError, TypeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        databases.append((item["name"], item.get("owner")))

    grants: list[GrantSpec | DefaultPrivilegeSpec] = []
    for key, known in (("db_grants", GRANT_KEYS), ("db_default_privileges", DEFAULT_KEYS)):
        for i, item in enumerate(_list_of_dicts(plain, key, problems)):
            where = f"{key}[{i}]"
            _unknown(where, item, known, problems)
            privileges = item.get("privileges")
            if not isinstance(privileges, (list, tuple)):
                problems.append(f"{where}.privileges: must be a list (empty = none)")
                continue
            try:
                if key == "db_grants":
                    on = item.get("on") or ("schema" if item.get("schema") else "database")
                    if on in ("database", "schema") and item.get("on") not in (None, on):
                        raise SqlInputError(f"on {item.get('on')!r} does not match the schema key")
                    grants.append(GrantSpec(on, item.get("database"), item.get("role"),
                                            frozenset(privileges), schema=item.get("schema")))
                else:
                    grants.append(DefaultPrivilegeSpec(item.get("database"), item.get("owner"),
                                                       item.get("schema"), item.get("on"),
                                                       item.get("role"), frozenset(privileges)))
            except (SqlInputError, TypeError) as exc:
                problems.append(f"{where}: {exc}")

    for key in ("db_exclusive", "db_verify"):
        if plain[key] is not None and not isinstance(plain[key], bool):
            problems.append(f"{key}: must be true or false")
    if problems:
        raise DbSettingsError(host_name, problems)
    return DbSettings(
        target=target,
        roles=tuple(roles),
        databases=tuple(databases),
        grants=tuple(grants),
        exclusive=bool(plain["db_exclusive"]),
        verify=plain["db_verify"] is not False,
    )


@deploy("PostgreSQL roles and grants")
def db_users(settings: DbSettings):
    """Roles (and memberships), then databases, then grants per database; each operation
    changes only what differs and verifies only when it changed something."""
    target = settings.target
    for r in settings.roles:
        kwargs = {k: v for k, v in r.spec_kwargs.items() if k != "name"}
        postgres.role(
            name=f"PostgreSQL role {r.name}",
            role=r.name,
            target=target,
            password=r.password,
            exclusive_membership=settings.exclusive,
            verify=settings.verify,
            verify_database=settings.login_database(r.name),
            **kwargs,
        )
    for name, owner in settings.databases:
        postgres.database(name=f"PostgreSQL database {name}", database=name, target=target, owner=owner)
    for database in settings.grant_databases():
        postgres.grants(
            name=f"PostgreSQL grants in {database}",
            database=database,
            target=target,
            grants=list(settings.grants),
            exclusive=settings.exclusive,
            logins=settings.logins(),
            verify=settings.verify,
        )
