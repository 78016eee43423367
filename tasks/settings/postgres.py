"""
The ``postgres`` block (how to reach the server) and the ``db`` block (roles, databases, grants).

``postgres`` is one mapping in host data; every deploy that talks to PostgreSQL (db_users,
cleanup, verify_stack, remediate) reads it through ``settings.of_host(host, "postgres")`` and
connects with its ``.target``::

    postgres = {
        "access": "docker",            # "docker": docker exec -i -u <os_user> <container> psql
                                       # "psql":   host-side psql to host:port with a 0600 PGPASSFILE
                                       # (default: docker when a container is named, else psql)
        "container": "quant-postgres", # docker mode
        "host": "127.0.0.1",           # psql mode
        "port": 5432,                  # psql mode
        "superuser": "postgres",
        "superuser_password": {"file": "/etc/quant/secrets/postgres_password"},  # psql mode
        "database": "postgres",        # maintenance database (roles, databases)
        "os_user": "postgres",         # docker mode: OS user psql runs as in the container
        "connect_timeout": 10,
    }

``db`` is gathered from top-level keys (deploys/db_users.py), so errors name them as written::

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
privileges and PUBLIC's - unless PUBLIC is listed - are never revoked, nor anything a superuser
or the connecting role holds: the plan notes what it kept). A grantee written ``PUBLIC`` or
``public`` is the PUBLIC pseudo-role; any other spelling (``Public``) is a role of that exact
name, quoted; a role in ``db_roles`` cannot be named ``PUBLIC``.

Passwords are never values in host data: a string where a password source belongs is refused
without being echoed. Every source is read once during validation (so a missing file fails
before any change); the value is dropped and read again when an operation needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from tasks.core.pg_exec import PgTarget
from tasks.core.pg_grants import DefaultPrivilegeSpec, GrantSpec
from tasks.core.pg_roles import DatabaseSpec, RoleSpec
from tasks.settings.base import Block, Pattern
from tasks.settings.types import ContainerName, PgIdentifier, SecretSource

# The top-level host-data keys the ``db`` block is gathered from.
DB_KEYS = ("db_roles", "db_databases", "db_grants", "db_default_privileges", "db_exclusive", "db_verify")

ServerHost = Annotated[
    str, Pattern(r"[A-Za-z0-9._:\-\[\]%]+|/\S*", "a host name, IP address or socket directory")
]
OsUser = Annotated[str, Pattern(r"[^-\s][^\s]*", "an OS user name, not starting with '-'")]
Name = Annotated[str, Pattern(r"[^\x00\n\r]+", "a name on one line")]


def _plaintext_refused(value: Any) -> Any:
    # A bare string where a source belongs is most likely the password itself: never echo it.
    if isinstance(value, (str, bytes)):
        raise ValueError(
            'a plaintext password in host data is refused; use {"env": "VAR"} or {"file": "/path"}'
        )
    return value


def _readable(source: SecretSource | None) -> SecretSource | None:
    # Read now so a missing variable or file fails before any change; the value is dropped.
    if source is not None:
        source.read()
    return source


class PostgresSettings(Block):
    """How to reach the PostgreSQL server as a superuser (host data ``postgres``).

    Attributes: ``access`` ("docker" or "psql"), ``container``, ``os_user`` (docker mode);
    ``host``, ``port``, ``superuser_password`` (a SecretSource; psql mode); ``superuser``,
    ``database`` (the maintenance database), ``connect_timeout`` (seconds). ``target`` is the
    :class:`tasks.core.pg_exec.PgTarget` every PostgreSQL operation and fact takes."""

    # None only until _default_access fills it in.
    access: Literal["docker", "psql"] = Field(
        None,  # type: ignore[arg-type]  # never the value: _default_access fills it in before validation
        description="docker: docker exec into the container; psql: host-side psql to "
        "host:port (default: docker when a container is named, else psql)",
    )
    container: ContainerName | None = Field(None, description="docker mode: the database container")
    host: ServerHost | None = Field(None, description="psql mode: server address")
    port: StrictInt = Field(5432, ge=1, le=65535, description="psql mode: server port")
    superuser: PgIdentifier = Field("postgres", description="role to connect as")
    superuser_password: SecretSource | None = Field(
        None, description='psql mode: {"env": "VAR"} or {"file": "/path"}, sent in a 0600 PGPASSFILE'
    )
    database: PgIdentifier = Field("postgres", description="maintenance database (roles, databases)")
    os_user: OsUser = Field("postgres", description="docker mode: OS user psql runs as in the container")
    connect_timeout: StrictInt = Field(10, ge=1, le=3600, description="seconds")

    @model_validator(mode="before")
    @classmethod
    def _default_access(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("access") is None:
            data = {**data, "access": "docker" if data.get("container") else "psql"}
        return data

    @field_validator("superuser_password", mode="before")
    @classmethod
    def _source_shape(cls, value: Any) -> Any:
        return _plaintext_refused(value)

    @field_validator("superuser_password")
    @classmethod
    def _source_readable(cls, value: SecretSource | None) -> SecretSource | None:
        return _readable(value)

    @model_validator(mode="after")
    def _mode(self) -> PostgresSettings:
        # The other mode's keys may stay (verify_stack reads the container's logs, and may log in
        # over TCP at host:port); the target uses only its own mode's.
        if self.access == "docker" and self.container is None:
            raise ValueError("container: docker access needs the database container's name")
        if self.access == "psql" and self.host is None:
            raise ValueError("host: psql access needs the server's host name or address")
        return self

    @property
    def target(self) -> PgTarget:
        """The superuser connection to the maintenance database."""
        if self.access == "docker":
            return PgTarget(
                "docker",
                database=self.database,
                user=self.superuser,
                container=self.container,
                os_user=self.os_user,
                connect_timeout=self.connect_timeout,
            )
        return PgTarget(
            "psql",
            database=self.database,
            user=self.superuser,
            host=self.host,
            port=self.port,
            password_source=self.superuser_password,
            connect_timeout=self.connect_timeout,
        )


class RoleSettings(Block):
    """One ``db_roles`` entry: ``name``, ``password`` (a SecretSource), ``present``, the flags
    (``None`` = leave as it is), ``connection_limit``, ``valid_until``, ``member_of``
    (``None``: memberships not managed). ``operation_kwargs()`` is what ``postgres.role`` takes."""

    name: str
    password: SecretSource | None = Field(None, description='{"env": "VAR"} or {"file": "/path"}')
    present: StrictBool = Field(True, description="False: DROP ROLE")
    login: StrictBool | None = None
    superuser: StrictBool | None = None
    createdb: StrictBool | None = None
    createrole: StrictBool | None = None
    inherit: StrictBool | None = None
    replication: StrictBool | None = None
    bypassrls: StrictBool | None = None
    connection_limit: StrictInt | None = Field(
        None, ge=-1, le=2**31 - 1, description="-1: unlimited (PostgreSQL keeps it as an int4)"
    )
    valid_until: str | None = Field(None, description='ISO 8601 timestamp or "infinity"')
    member_of: tuple[str, ...] | None = Field(None, description="groups the role should be in")

    @field_validator("password", mode="before")
    @classmethod
    def _source_shape(cls, value: Any) -> Any:
        return _plaintext_refused(value)

    @field_validator("password")
    @classmethod
    def _source_readable(cls, value: SecretSource | None) -> SecretSource | None:
        return _readable(value)

    @model_validator(mode="after")
    def _spec(self) -> RoleSettings:
        RoleSpec(**self._spec_fields())  # names, dates, self-membership: the SQL layer's rules
        return self

    def _spec_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"password"})

    def operation_kwargs(self) -> dict[str, Any]:
        """Keywords for ``tasks.operations.postgres.role`` (the role's name as ``role``)."""
        fields = self._spec_fields()
        fields["role"] = fields.pop("name")
        if fields["member_of"] is not None:
            fields["member_of"] = list(fields["member_of"])
        return {**fields, "password": self.password}

    @property
    def logs_in(self) -> bool:
        """Present, not NOLOGIN, with a password: a role verification can log in as."""
        return self.present and self.login is not False and self.password is not None


class DatabaseSettings(Block):
    """One ``db_databases`` entry: ``name`` and ``owner`` (``None``: not managed)."""

    name: str
    owner: str | None = None

    @model_validator(mode="after")
    def _spec(self) -> DatabaseSettings:
        DatabaseSpec(self.name, self.owner)
        return self


class GrantSettings(Block):
    """One ``db_grants`` entry: ``role`` gets ``privileges`` in ``database``: on the database
    (no schema), on ``schema`` (schema only), or on all ``on`` objects in ``schema``."""

    role: str
    database: str
    schema_: str | None = Field(None, alias="schema")
    on: Literal["database", "schema", "tables", "sequences", "functions"] | None = None
    privileges: tuple[str, ...] = Field(description="an empty list means none")

    @model_validator(mode="after")
    def _spec(self) -> GrantSettings:
        self.spec()
        return self

    def spec(self) -> GrantSpec:
        on = self.on or ("schema" if self.schema_ else "database")
        return GrantSpec(on, self.database, self.role, frozenset(self.privileges), schema=self.schema_)


class DefaultPrivilegeSettings(Block):
    """One ``db_default_privileges`` entry: objects ``owner`` creates later in ``schema`` of
    ``database`` grant ``privileges`` to ``role``."""

    owner: str
    role: str
    database: str
    schema_: str = Field(alias="schema")
    on: str
    privileges: tuple[str, ...]

    @model_validator(mode="after")
    def _spec(self) -> DefaultPrivilegeSettings:
        self.spec()
        return self

    def spec(self) -> DefaultPrivilegeSpec:
        on: Any = self.on  # DefaultPrivilegeSpec refuses anything but tables/sequences/functions
        return DefaultPrivilegeSpec(
            self.database, self.owner, self.schema_, on, self.role, frozenset(self.privileges)
        )


class DbSettings(Block):
    """Roles, databases and grants (host data ``db_*``, gathered by :func:`gather_db`).

    Attributes: ``roles`` (RoleSettings), ``databases`` (DatabaseSettings), ``grants``
    (GrantSettings), ``default_privileges`` (DefaultPrivilegeSettings), ``exclusive``, ``verify``.
    ``grant_specs()`` gives the SQL layer's specs the grants operation takes."""

    roles: tuple[RoleSettings, ...] = Field((), alias="db_roles")
    databases: tuple[DatabaseSettings, ...] = Field((), alias="db_databases")
    grants: tuple[GrantSettings, ...] = Field((), alias="db_grants")
    default_privileges: tuple[DefaultPrivilegeSettings, ...] = Field((), alias="db_default_privileges")
    exclusive: StrictBool = Field(
        False, alias="db_exclusive", description="revoke privileges and memberships beyond the settings"
    )
    verify: StrictBool = Field(
        True,
        alias="db_verify",
        description="after a change: each login role logs in over TCP and uses its grants",
    )

    @model_validator(mode="after")
    def _unique_roles(self) -> DbSettings:
        seen: set[str] = set()
        for index, role in enumerate(self.roles):
            if role.name in seen:
                raise ValueError(f"db_roles[{index}]: role {role.name!r} is listed twice")
            seen.add(role.name)
        return self

    def grant_specs(self) -> list[GrantSpec | DefaultPrivilegeSpec]:
        return [g.spec() for g in self.grants] + [d.spec() for d in self.default_privileges]

    def grant_databases(self) -> list[str]:
        """The databases grants live in, in the order the settings name them."""
        seen: list[str] = []
        for g in self.grant_specs():
            if g.database not in seen:
                seen.append(g.database)
        return seen

    def logins(self) -> dict[str, SecretSource]:
        """Login roles with a password: the roles verification logs in as."""
        return {r.name: r.password for r in self.roles if r.logs_in and r.password is not None}

    def login_database(self, role: str, default: str) -> str:
        """Where a role's login is verified: the first database it is granted CONNECT on."""
        for g in self.grant_specs():
            if (
                isinstance(g, GrantSpec)
                and g.on == "database"
                and g.grantee == role
                and ("CONNECT" in g.privileges or "ALL" in g.privileges)
            ):
                return g.database
        return default

    def only_roles(self, names: list[str] | set[str]) -> DbSettings:
        """These roles, their grants and the databases they own, never exclusive: what
        remediating one role touches. Other databases (creating one, changing its owner) are
        not a role's remediation's business."""
        keep = set(names)
        return self.model_copy(
            update={
                "roles": tuple(r for r in self.roles if r.name in keep),
                "databases": tuple(d for d in self.databases if d.owner in keep),
                "grants": tuple(g for g in self.grants if g.role in keep),
                "default_privileges": tuple(d for d in self.default_privileges if d.role in keep),
                "exclusive": False,
            }
        )


def gather_db(host_data: Any) -> dict[str, Any]:
    """The ``db`` block from host data: every top-level ``db_*`` key (an unknown one, like a
    typo ``db_role``, is then refused by the model with a did-you-mean)."""
    if hasattr(host_data, "dict"):
        items = host_data.dict()
    elif isinstance(host_data, Mapping):
        items = host_data
    else:
        items = {}
    return {
        key: value
        for key, value in items.items()
        if isinstance(key, str) and key.startswith("db_") and value is not None
    }
