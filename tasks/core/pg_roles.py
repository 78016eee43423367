"""Minimal-change plans for roles (attributes, password, memberships), databases and schemas.

A password is sent as a locally computed SCRAM-SHA-256 verifier, and only when the stored one
does not already match (an md5 hash of the same password is upgraded). Nothing here drops a
database or a schema; a role is dropped only when the settings say ``present=False``.

The verifier travels in a statement of its own (``ALTER ROLE ... PASSWORD``), after the role's
other changes, and right after :data:`QUIET_LOGGING`, which turns the server's statement
logging off for the rest of the transaction: a failing statement is logged with its text
(``log_min_error_statement``), and ``log_statement``/duration logging log every statement, so
without it a verifier could land in the server log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tasks.core.pg_catalog import DatabaseState, RoleState, SchemaState
from tasks.core.pg_sql import (
    _RESERVED_ROLE_NAMES,
    PUBLIC_SPELLINGS,
    Plan,
    SqlInputError,
    quote_ident,
    quote_literal,
)
from tasks.core.scram import password_status, scram_verifier

PG_INT4_MAX = 2**31 - 1  # rolconnlimit is an int4

# Run before a statement carrying a verifier, in the same transaction (set_config(..., true) is
# SET LOCAL): as a superuser, nothing of what follows reaches the server log, whether it
# succeeds or fails, nor pg_stat_statements. Without superuser rights these stay as they are.
QUIET_LOGGING = (
    "DO $quant$ BEGIN\n"
    "  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN\n"
    "    PERFORM pg_catalog.set_config('log_statement', 'none', true);\n"
    "    PERFORM pg_catalog.set_config('log_min_error_statement', 'panic', true);\n"
    "    PERFORM pg_catalog.set_config('log_min_duration_statement', '-1', true);\n"
    "    PERFORM pg_catalog.set_config('pg_stat_statements.track_utility', 'off', true);\n"
    "    IF current_setting('server_version_num')::int >= 130000 THEN\n"
    "      PERFORM pg_catalog.set_config('log_min_duration_sample', '-1', true);\n"
    "      PERFORM pg_catalog.set_config('log_transaction_sample_rate', '0', true);\n"
    "    END IF;\n"
    "  END IF;\n"
    "END $quant$"
)

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
    if name in PUBLIC_SPELLINGS:
        raise SqlInputError(
            f"role name {name!r} would read as the PUBLIC pseudo-role in grants; pick another name"
        )


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
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


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
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not -1 <= limit <= PG_INT4_MAX
        ):
            raise SqlInputError(
                f"role {self.name!r}: connection_limit must be a whole number from -1 (unlimited) "
                f"to {PG_INT4_MAX}"
            )
        if self.valid_until is not None:
            try:
                _parse_timestamp(self.valid_until)
            except (ValueError, TypeError, AttributeError):
                raise SqlInputError(
                    f"role {self.name!r}: valid_until {self.valid_until!r} is not an ISO 8601 "
                    "timestamp or 'infinity'"
                ) from None
        if self.password is not None and (
            not isinstance(self.password, str) or not self.password or "\x00" in self.password
        ):
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
    verifier = None
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
            verifier = scram_verifier(spec.password)
            notes.append(
                {
                    "absent": "password set",
                    "mismatch": "password changed",
                    "md5-match-upgrade": "password upgraded md5 -> SCRAM-SHA-256",
                }[status]
            )

    change: str | None = None
    if observed is None:
        sql = f"CREATE ROLE {quote_ident(spec.name)}"
        if clauses:
            sql += " WITH " + " ".join(clauses)
        plan.add(sql, f"{who}: create" + (f" ({', '.join(notes)})" if notes else ""))
    elif clauses:
        plan.add(
            f"ALTER ROLE {quote_ident(spec.name)} WITH " + " ".join(clauses), f"{who}: {', '.join(notes)}"
        )
    else:
        change = f"{who}: {', '.join(notes)}"
    if verifier is not None:
        # Its own statement, with the server's statement logging off: see the module docstring.
        plan.add(QUIET_LOGGING, change)
        plan.add(
            f"ALTER ROLE {quote_ident(spec.name)} WITH PASSWORD {quote_literal(verifier)}", None, secret=True
        )
    return plan


def plan_memberships(
    spec: RoleSpec,
    observed: RoleState | None,
    *,
    exclusive: bool = False,
    protected: Mapping[str, str] | None = None,
) -> Plan:
    """GRANT the groups in ``spec.member_of`` the role lacks; with ``exclusive``, REVOKE others,
    except from a ``protected`` role (a superuser, the connecting role: see
    :meth:`tasks.core.pg_catalog.Catalog.protected_roles`), which gets a plan note instead."""
    plan = Plan()
    if spec.member_of is None or not spec.present:
        return plan
    have = observed.member_of if observed else frozenset()
    want = set(spec.member_of)
    member = quote_ident(spec.name)
    for group in sorted(want - have):
        plan.add(f"GRANT {quote_ident(group)} TO {member}", f"role {member}: join {quote_ident(group)}")
    if exclusive and spec.name in (protected or {}) and have - want:
        plan.note(
            f"kept {member}'s other memberships: it is {(protected or {})[spec.name]}, "
            "and exclusive mode never revokes from one"
        )
    elif exclusive:
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
