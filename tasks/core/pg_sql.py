"""PostgreSQL SQL without I/O, the base: quoting, statements and plans, privilege names.

Every identifier goes through :func:`quote_ident`, every value through :func:`quote_literal`, and
nothing else is interpolated. A :class:`Plan` is the fewest statements that make observed equal
desired (empty = no change) and one human-readable line per change; statements that carry a
password verifier are marked ``secret`` so callers send them on stdin, never on a command line.

The rest of the PostgreSQL core builds on this: :mod:`tasks.core.pg_catalog` (the catalog query
facts run and what it observed), :mod:`tasks.core.pg_roles` (roles, databases, schemas) and
:mod:`tasks.core.pg_grants` (privileges and default privileges).

Why not pyinfra's ``postgres.role``: it re-sends the password on every run, ignores attribute
changes on existing roles and quotes identifiers as ``f'"{role}"'`` (a ``"`` in a name breaks
out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

MAX_IDENT_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
PUBLIC = "public"  # how PUBLIC appears as a grantee; no role can be named "public"
# How settings write the PUBLIC pseudo-role. Any other spelling ("Public") is a role's own name.
PUBLIC_SPELLINGS = ("PUBLIC", "public")
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
        raise SqlInputError(f"identifier {name[:20]!r}... is longer than {MAX_IDENT_BYTES} bytes (UTF-8)")
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
    notes: list[str] = field(default_factory=list)  # what was deliberately left alone, and why

    @property
    def changed(self) -> bool:
        return bool(self.statements)

    def add(self, sql: str, change: str | None, *, secret: bool = False, transactional: bool = True):
        """A statement and the plan line saying what it changes (None: a step of the change
        the previous line already names)."""
        self.statements.append(Statement(sql, secret=secret, transactional=transactional))
        if change is not None:
            self.changes.append(change)

    def extend(self, other: Plan) -> Plan:
        self.statements.extend(other.statements)
        self.changes.extend(other.changes)
        self.notes.extend(n for n in other.notes if n not in self.notes)
        return self

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


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
DefaultAclOn = Literal["tables", "sequences", "functions"]

# Canonical order = the order PostgreSQL documents; statements list privileges in this order.
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CREATE", "CONNECT", "TEMPORARY"),
    "schema": ("USAGE", "CREATE"),
    "tables": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "sequences": ("USAGE", "SELECT", "UPDATE"),
    "functions": ("EXECUTE",),
}
_ALIASES = {"TEMP": "TEMPORARY", "ALL PRIVILEGES": "ALL"}
_DEFAULT_ACL_OBJTYPE: dict[str, DefaultAclOn] = {"r": "tables", "S": "sequences", "f": "functions"}


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
