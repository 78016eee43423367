"""
Guarded database cleanup: test users and their dependent rows, VACUUM ANALYZE, statistics.

Replaces ``cleanup_database.sh``. Host data (defaults in ``inventories/group_data/all.py`` as
``cleanup_defaults``; a host's ``cleanup`` mapping overrides them key by key)::

    cleanup = {
        "database": "quant",
        "schema": "public", "table": "users", "column": "username",
        "patterns": ["concurrent\\\\_%", "test\\\\_%"],  # SQL LIKE: % any run, _ one char, \\ escapes
        "min_age": "1 hour",          # only rows older than this (by age_column); None: any age
        "age_column": "created_at",
        "max_rows": 1000,             # more matches than this: refuse, change nothing...
        "allow_over_max": False,      # ...unless explicitly allowed
        "foreign_keys": "refuse",     # rows in a table whose FK has no ON DELETE CASCADE:
                                      # "refuse" (change nothing) or "delete_dependents"
        "sample_size": 10,            # names listed in the plan (--dry shows them)
        "vacuum": True,               # VACUUM (ANALYZE) after the deletion
        "vacuum_tables": None,        # None: every table of the database; or ["audit_log", ...]
        "lock_timeout": "5s",         # for every statement (deletion and VACUUM)
        "statement_timeout": "15min",
        "lock_wait": 60,              # seconds a run waits for another run's advisory lock
        "largest_tables": 5,          # rows in the statistics report
        "report_path": None,          # JSON report on the controller (env QUANT_CLEANUP_REPORT wins)
    }

The PostgreSQL connection is the host's ``postgres`` mapping, validated by
:func:`tasks.operations.db_users.load_db_settings` (``access: docker|psql``) and used through
:mod:`tasks.operations.postgres` (SQL on stdin from a 0600 file; a 0600 PGPASSFILE in psql mode).

What is guarded, and where:

- Settings (before anything runs): unknown keys; empty patterns; patterns made only of
  wildcards (``%``, ``_%``: they match every row); a trailing escape; identifiers that cannot be
  quoted; bad timeouts/ages/bounds.
- Plan time (facts, before anything runs): the table and columns must exist (else an error);
  matching rows and their dependents are counted through the foreign keys found in the catalog
  (recursively); patterns matching every row, more than ``max_rows`` matches, and dependents
  behind an FK without ``ON DELETE CASCADE`` under ``foreign_keys: refuse`` are refused with an
  error naming the figures. With nothing matching, the operation is a no-op.
- Execution (one transaction): an advisory lock shared by all cleanup runs on the database
  (waited for at most ``lock_wait`` seconds; then the run stops with ``cleanup-lock-busy`` and
  changes nothing), the matching rows are locked and re-counted, every guard is checked again
  (so a row that appeared since planning cannot slip past), dependents are deleted deepest
  first, then the rows; any failure rolls everything back.
- VACUUM (ANALYZE) runs per table outside any transaction, after the same advisory lock, with
  ``lock_timeout`` and ``statement_timeout`` set, and with ``SKIP_LOCKED``: a table on which
  another VACUUM runs (``pg_stat_progress_vacuum``) or whose lock is held is skipped with a note.
  VACUUM always counts as a change: the log says what it did (dead tuples before -> after).

Matching is SQL ``LIKE``: ``_`` matches any one character, so ``test_%`` also matches
``testXyz``; write ``test\\\\_%`` (a Python string holding ``test\\_%``) for a literal underscore.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FactBase, FunctionCommand, operation
from pyinfra.api.exceptions import FactProcessError, OperationError, PyinfraError

from tasks.checks.runner import CheckResult, NotYet, RetryPolicy, format_table, run_check
from tasks.core.pg_exec import PgTarget
from tasks.core.pg_sql import SqlInputError, quote_ident, quote_literal

CLEANUP_KEYS = {
    "database", "schema", "table", "column", "patterns", "min_age", "age_column", "max_rows",
    "allow_over_max", "foreign_keys", "sample_size", "vacuum", "vacuum_tables", "lock_timeout",
    "statement_timeout", "lock_wait", "largest_tables", "report_path",
}
FK_CHOICES = ("refuse", "delete_dependents")
REPORT_ENV = "QUANT_CLEANUP_REPORT"
# pg_advisory_lock(int4, int4) keys shared by every cleanup run (advisory locks are per database).
LOCK_KEYS = (0x71756E74, 0x636C6E)  # "qunt", "cln"
BUSY_MARK = "cleanup-lock-busy"
REFUSED_MARK = "cleanup-refused"
MAX_FK_DEPTH = 6
_TIMEOUT = re.compile(r"\d+\s*(ms|s|min|h|d)?\Z")
_AGE = re.compile(r"(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)\Z", re.I)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CleanupSettingsError(PyinfraError, ValueError):
    """Bad cleanup settings: every problem at once, each naming the host and key."""

    def __init__(self, host_name: str, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"host '{host_name}': cleanup.{p}" for p in problems))


class CleanupRefused(OperationError):
    """A guard refused the deletion: nothing was changed."""


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupSettings:
    target: PgTarget  # connects to ``database``
    database: str = "quant"
    schema: str = "public"
    table: str = "users"
    column: str = "username"
    patterns: tuple[str, ...] = ()
    min_age_seconds: int | None = None
    age_column: str = "created_at"
    max_rows: int = 1000
    allow_over_max: bool = False
    foreign_keys: str = "refuse"
    sample_size: int = 10
    vacuum: bool = True
    vacuum_tables: tuple[str, ...] | None = None
    lock_timeout: str = "5s"
    statement_timeout: str = "15min"
    lock_wait: int = 60
    largest_tables: int = 5
    report_path: str | None = None

    @property
    def relation(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"


def wildcard_only(pattern: str) -> bool:
    """True when a LIKE pattern has no literal character: it matches every row (``%``) or
    every value of some length (``_%``)."""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            return False  # an escaped character is a literal
        if ch not in "%_":
            return False
        i += 1
    return True


def check_pattern(pattern: Any) -> str | None:
    """The problem with one LIKE pattern, or None."""
    if not isinstance(pattern, str):
        return f"must be a string, not {type(pattern).__name__}"
    if not pattern.strip():
        return "is empty: it would match nothing or, written as '%', everything; refused"
    if "\x00" in pattern:
        return "contains a NUL character"
    if wildcard_only(pattern):
        return f"{pattern!r} is only wildcards: it matches every row; refused"
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2 == 1:
        return f"{pattern!r} ends with a lone escape character (\\)"
    return None


def parse_age(value: Any) -> int:
    """Seconds from an int (seconds) or ``"90 min"``, ``"2 hours"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("must be seconds or a duration like '2 hours'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _AGE.match(value.strip())
        if m:
            return int(m.group(1)) * _AGE_UNITS[m.group(2)[0].lower()]
    raise ValueError(f"{value!r} is not seconds or a duration like '30 min', '2 hours', '1 day'")


def _merged(data: Any) -> tuple[dict, list[str]]:
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    problems: list[str] = []
    defaults = get("cleanup_defaults") or {}
    own = get("cleanup") or {}
    merged: dict = {}
    for where, part in (("cleanup_defaults", defaults), ("cleanup", own)):
        if not isinstance(part, Mapping):
            problems.append(f"{where} must be a mapping")
            continue
        merged.update(part)
    return merged, problems


def load_cleanup_settings(host_name: str, data: Any, environ: Mapping[str, str] | None = None
                          ) -> CleanupSettings:
    """Validate this host's ``cleanup`` data (over ``cleanup_defaults``) and ``postgres`` data;
    raise :class:`CleanupSettingsError` naming every problem before anything runs."""
    from tasks.operations.db_users import DbSettingsError, load_db_settings  # the shared `postgres` validation

    env = os.environ if environ is None else environ
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    cfg, problems = _merged(data)
    for key in sorted(set(cfg) - CLEANUP_KEYS, key=str):
        problems.append(f"{key}: unknown key (known: {', '.join(sorted(CLEANUP_KEYS))})")
    try:
        target = load_db_settings(host_name, {"postgres": get("postgres")}, environ).target
    except DbSettingsError as exc:
        problems.extend(f"(postgres) {p}" for p in exc.problems)
        target = None

    kw: dict[str, Any] = {}
    for key in ("database", "schema", "table", "column", "age_column"):
        value = cfg.get(key, CleanupSettings.__dataclass_fields__[key].default)
        try:
            quote_ident(value)
            kw[key] = value
        except SqlInputError as exc:
            problems.append(f"{key}: {exc}")

    patterns = cfg.get("patterns")
    if not isinstance(patterns, (list, tuple)) or not patterns:
        problems.append("patterns: must be a non-empty list of LIKE patterns (e.g. 'test\\_%')")
    else:
        for i, p in enumerate(patterns):
            problem = check_pattern(p)
            if problem:
                problems.append(f"patterns[{i}]: {problem}")
        kw["patterns"] = tuple(p for p in patterns if isinstance(p, str))

    if cfg.get("min_age") is not None:
        try:
            kw["min_age_seconds"] = parse_age(cfg["min_age"])
        except ValueError as exc:
            problems.append(f"min_age: {exc}")

    def integer(key, low, high=None):
        value = cfg.get(key, CleanupSettings.__dataclass_fields__[key].default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low \
                or (high is not None and value > high):
            problems.append(f"{key}: must be an integer >= {low}" + (f" and <= {high}" if high else ""))
        else:
            kw[key] = value

    integer("max_rows", 1)
    integer("sample_size", 0, 1000)
    integer("lock_wait", 0, 86400)
    integer("largest_tables", 1, 100)
    for key in ("allow_over_max", "vacuum"):
        value = cfg.get(key, CleanupSettings.__dataclass_fields__[key].default)
        if not isinstance(value, bool):
            problems.append(f"{key}: must be true or false")
        else:
            kw[key] = value
    fks = cfg.get("foreign_keys", "refuse")
    if fks not in FK_CHOICES:
        problems.append(f"foreign_keys: must be one of {', '.join(FK_CHOICES)}, not {fks!r}")
    else:
        kw["foreign_keys"] = fks
    for key in ("lock_timeout", "statement_timeout"):
        value = cfg.get(key, CleanupSettings.__dataclass_fields__[key].default)
        if not isinstance(value, str) or not _TIMEOUT.match(value.strip()) or \
                re.match(r"0+\s*[a-z]*\Z", value.strip()):
            problems.append(f"{key}: must be a PostgreSQL duration like '5s' or '15min' (not 0)")
        else:
            kw[key] = value.strip()
    tables = cfg.get("vacuum_tables")
    if tables is not None:
        if not isinstance(tables, (list, tuple)):
            problems.append("vacuum_tables: must be a list of table names (or None: every table)")
        else:
            for i, t in enumerate(tables):
                try:
                    quote_ident(t)
                except SqlInputError as exc:
                    problems.append(f"vacuum_tables[{i}]: {exc}")
            kw["vacuum_tables"] = tuple(t for t in tables if isinstance(t, str))
    report = env.get(REPORT_ENV) or cfg.get("report_path")
    if report is not None:
        if not isinstance(report, str) or not report.strip():
            problems.append("report_path: must be a file path")
        else:
            kw["report_path"] = report
    if problems:
        raise CleanupSettingsError(host_name, problems)
    return CleanupSettings(target=replace(target, database=kw["database"]), **kw)


# --- the catalog: table, columns, foreign keys ------------------------------------------------

_FK_ACTIONS = {"c": "cascade", "r": "restrict", "a": "no action", "n": "set null", "d": "set default"}


def catalog_sql(schema: str, table: str) -> str:
    """One JSON document: does the table exist, its columns, and every foreign key in the
    database (child -> parent, columns in order, the ON DELETE action)."""
    return f"""SELECT json_build_object(
  'exists', to_regclass({quote_literal(quote_ident(schema) + '.' + quote_ident(table))}) IS NOT NULL,
  'columns', (SELECT coalesce(json_agg(a.attname ORDER BY a.attnum), '[]')
     FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass({quote_literal(quote_ident(schema) + '.' + quote_ident(table))})
      AND a.attnum > 0 AND NOT a.attisdropped),
  'fks', (SELECT coalesce(json_agg(json_build_object(
       'name', c.conname,
       'child_schema', cn.nspname, 'child_table', cc.relname,
       'child_cols', (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n),
       'parent_schema', pn.nspname, 'parent_table', pc.relname,
       'parent_cols', (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n),
       'on_delete', c.confdeltype) ORDER BY c.conname), '[]')
     FROM pg_catalog.pg_constraint c
     JOIN pg_catalog.pg_class cc ON cc.oid = c.conrelid
     JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
     JOIN pg_catalog.pg_class pc ON pc.oid = c.confrelid
     JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
    WHERE c.contype = 'f'))"""


@dataclass(frozen=True)
class ForeignKey:
    name: str
    child_schema: str
    child_table: str
    child_cols: tuple[str, ...]
    parent_schema: str
    parent_table: str
    parent_cols: tuple[str, ...]
    on_delete: str  # cascade | restrict | no action | set null | set default

    @property
    def child(self) -> str:
        return f"{quote_ident(self.child_schema)}.{quote_ident(self.child_table)}"

    @property
    def blocks(self) -> bool:
        """Rows behind this key stop the parent's DELETE (no ON DELETE CASCADE/SET ...)."""
        return self.on_delete in ("restrict", "no action")


@dataclass(frozen=True)
class TableCatalog:
    exists: bool
    columns: tuple[str, ...]
    fks: tuple[ForeignKey, ...]


def parse_catalog(text: str) -> TableCatalog:
    doc = json.loads(text)
    fks = tuple(
        ForeignKey(f["name"], f["child_schema"], f["child_table"], tuple(f["child_cols"]),
                   f["parent_schema"], f["parent_table"], tuple(f["parent_cols"]),
                   _FK_ACTIONS.get(f["on_delete"], f["on_delete"]))
        for f in doc["fks"]
    )
    return TableCatalog(bool(doc["exists"]), tuple(doc["columns"] or ()), fks)


@dataclass(frozen=True)
class Dependent:
    """Rows reaching the matched rows through a chain of foreign keys."""

    index: int
    fk: ForeignKey
    parent: int | None  # index of the parent Dependent; None: the matched rows themselves
    depth: int

    @property
    def key(self) -> str:
        """``schema.table via constraint`` (plain, for reports)."""
        return f"{self.fk.child_schema}.{self.fk.child_table} via {self.fk.name}"

    @property
    def label(self) -> str:
        return f"{self.fk.child} via {quote_ident(self.fk.name)} (ON DELETE {self.fk.on_delete.upper()})"


def dependents_of(schema: str, table: str, fks: Sequence[ForeignKey]) -> list[Dependent]:
    """Every chain of foreign keys into ``schema.table``, breadth first. Rows that SET NULL/
    DEFAULT stay, so nothing below them is followed. A cycle or a chain deeper than
    :data:`MAX_FK_DEPTH` is refused (it needs a human)."""
    out: list[Dependent] = []
    queue: list[tuple[int | None, tuple[str, str], tuple[tuple[str, str], ...], int]] = [
        (None, (schema, table), ((schema, table),), 1)]
    while queue:
        parent, (ps, pt), path, depth = queue.pop(0)
        for fk in fks:
            if (fk.parent_schema, fk.parent_table) != (ps, pt):
                continue
            child = (fk.child_schema, fk.child_table)
            if child in path:
                raise CleanupRefused(
                    f"foreign key {quote_ident(fk.name)} on {fk.child} makes a cycle back to "
                    f"{quote_ident(child[0])}.{quote_ident(child[1])}: cyclic references are not "
                    "handled automatically; clean these rows up by hand")
            if depth > MAX_FK_DEPTH:
                raise CleanupRefused(f"foreign key chains deeper than {MAX_FK_DEPTH} below "
                                     f"{quote_ident(schema)}.{quote_ident(table)}: refused")
            dep = Dependent(len(out), fk, parent, depth)
            out.append(dep)
            if fk.on_delete in ("cascade", "restrict", "no action"):
                queue.append((dep.index, child, path + (child,), depth + 1))
    return out


# --- SQL: matching, counting, deleting -------------------------------------------------------


def match_condition(s: CleanupSettings) -> str:
    col = quote_ident(s.column)
    cond = "(" + " OR ".join(f"{col} LIKE {quote_literal(p)}" for p in s.patterns) + ")"
    if s.min_age_seconds is not None:
        cond += (f" AND {quote_ident(s.age_column)} < now() - make_interval(secs => "
                 f"{int(s.min_age_seconds)})")
    return cond


def _shown(pattern: str) -> str:
    return "'" + pattern + "'"


def _cols(cols: Sequence[str], alias: str | None = None) -> str:
    pre = f"{alias}." if alias else ""
    return "(" + ", ".join(pre + quote_ident(c) for c in cols) + ")"


def rows_sql(dep: Dependent, deps: Sequence[Dependent], root_rows: str) -> str:
    """SELECT of the rows of ``dep``'s table that reach the matched rows (``root_rows``, a
    SELECT of the matched table's rows) through its chain of foreign keys."""
    parent = root_rows if dep.parent is None else rows_sql(deps[dep.parent], deps, root_rows)
    fk = dep.fk
    inner = ", ".join(f"p{dep.index}.{quote_ident(c)}" for c in fk.parent_cols)
    return (f"SELECT * FROM {fk.child} WHERE {_cols(fk.child_cols)} IN "
            f"(SELECT {inner} FROM ({parent}) AS p{dep.index})")


def count_sql(s: CleanupSettings, deps: Sequence[Dependent]) -> str:
    """JSON: matched rows, total rows, a sample of names, and per dependent its row count."""
    root = f"SELECT * FROM {s.relation} WHERE {match_condition(s)}"
    col = quote_ident(s.column)
    parts = ", ".join(f"'{d.index}', (SELECT count(*) FROM ({rows_sql(d, deps, root)}) AS d)"
                      for d in deps)
    return (
        "SELECT json_build_object("
        f"'matched', (SELECT count(*) FROM ({root}) AS m), "
        f"'total', (SELECT count(*) FROM {s.relation}), "
        f"'sample', (SELECT coalesce(json_agg(v ORDER BY v), '[]') FROM (SELECT {col}::text AS v "
        f"FROM ({root}) AS m ORDER BY {col} LIMIT {int(s.sample_size)}) AS x), "
        f"'dependents', json_build_object({parts}))"
    )


@dataclass(frozen=True)
class Counts:
    matched: int
    total: int
    sample: tuple[str, ...]
    dependents: Mapping[int, int]


def parse_counts(text: str) -> Counts:
    doc = json.loads(text)
    return Counts(int(doc["matched"]), int(doc["total"]), tuple(doc["sample"]),
                  {int(k): int(v) for k, v in (doc["dependents"] or {}).items()})


@dataclass
class DeletionPlan:
    counts: Counts
    deps: list[Dependent]
    explicit: list[Dependent] = field(default_factory=list)  # deleted by us, deepest first
    lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.counts.matched > 0


def plan_deletion(s: CleanupSettings, catalog: TableCatalog, deps: list[Dependent], counts: Counts
                  ) -> DeletionPlan:
    """Check every guard against the counts (raise :class:`CleanupRefused` with the figures)
    and say what goes. Nothing here has side effects."""
    c = counts
    where = f"{s.relation}.{quote_ident(s.column)}"
    plan = DeletionPlan(c, deps)
    if c.matched == 0:
        return plan
    if c.matched >= c.total:
        raise CleanupRefused(f"{REFUSED_MARK}: the patterns match every row of {s.relation} "
                             f"({c.matched} of {c.total}); nothing deleted")
    if c.matched > s.max_rows and not s.allow_over_max:
        raise CleanupRefused(f"{REFUSED_MARK}: {c.matched} rows of {s.relation} match, over "
                             f"max_rows {s.max_rows} (set allow_over_max to go ahead); nothing deleted")
    blocking = [d for d in deps if d.fk.blocks and c.dependents.get(d.index, 0) > 0]
    if blocking and s.foreign_keys == "refuse":
        what = "; ".join(f"{c.dependents[d.index]} rows in {d.label}" for d in blocking)
        raise CleanupRefused(f"{REFUSED_MARK}: matched rows of {s.relation} still have dependents "
                             f"behind foreign keys without ON DELETE CASCADE: {what}. "
                             "foreign_keys is 'refuse': nothing deleted "
                             "(set foreign_keys: delete_dependents to delete them too)")
    plan.explicit = sorted(blocking, key=lambda d: -d.depth)
    plan.lines.append(f"delete {c.matched} of {c.total} rows from {s.relation} where {where} "
                      f"LIKE {', '.join(_shown(p) for p in s.patterns)}"
                      + (f" and is older than {s.min_age_seconds}s" if s.min_age_seconds else ""))
    if c.sample:
        more = f" (+{c.matched - len(c.sample)} more)" if c.matched > len(c.sample) else ""
        plan.lines.append("  e.g. " + ", ".join(c.sample) + more)
    for d in deps:
        n = c.dependents.get(d.index, 0)
        if not n:
            continue
        how = {"cascade": "deleted by ON DELETE CASCADE", "set null": "set to NULL (rows stay)",
               "set default": "set to their default (rows stay)"}.get(
            d.fk.on_delete, "deleted first (foreign_keys: delete_dependents)")
        plan.lines.append(f"  {n} rows in {d.label}: {how}")
    return plan


def lock_sql(lock_wait: int, scope: str) -> str:
    """Take the cleanup advisory lock (``xact`` or ``session``), waiting at most ``lock_wait``
    seconds; then fail with :data:`BUSY_MARK`."""
    fn = "pg_try_advisory_xact_lock" if scope == "xact" else "pg_try_advisory_lock"
    k1, k2 = LOCK_KEYS
    return (
        "DO $quant$ DECLARE deadline timestamptz := clock_timestamp() + "
        f"make_interval(secs => {int(lock_wait)}); BEGIN\n"
        f"  WHILE NOT {fn}({k1}, {k2}) LOOP\n"
        "    IF clock_timestamp() >= deadline THEN\n"
        f"      RAISE EXCEPTION '{BUSY_MARK}: another cleanup run holds the advisory lock on "
        f"database % (waited {int(lock_wait)}s); skipped, nothing changed', current_database();\n"
        "    END IF;\n"
        "    PERFORM pg_sleep(0.2);\n"
        "  END LOOP;\nEND $quant$;"
    )


TARGETS = "pg_temp.quant_cleanup_targets"


def delete_script(s: CleanupSettings, plan: DeletionPlan) -> str:
    """The deletion as one psql script and one transaction. Under the advisory lock, the
    matching rows are copied (with their ctid) and locked, every guard is checked again, the
    dependents counted and (``delete_dependents``) deleted deepest first, then the rows.
    Output rows: ``matched|n``, ``dependent|<index>|n``, ``deleted|<index>|n``, ``deleted|root|n``."""
    deps = plan.deps
    root = f"SELECT * FROM {s.relation} WHERE ctid IN (SELECT quant_ctid FROM {TARGETS})"
    guards = [
        f"  IF n > {int(s.max_rows)} AND NOT {'true' if s.allow_over_max else 'false'} THEN "
        f"RAISE EXCEPTION '{REFUSED_MARK}: % rows match now, over max_rows {int(s.max_rows)}; "
        "nothing deleted', n; END IF;",
        f"  IF n > 0 AND n >= (SELECT count(*) FROM {s.relation}) THEN RAISE EXCEPTION "
        f"'{REFUSED_MARK}: the patterns match every row now; nothing deleted'; END IF;",
    ]
    if s.foreign_keys == "refuse":
        for d in deps:
            if d.fk.blocks:
                guards.append(
                    f"  IF EXISTS ({rows_sql(d, deps, root)}) THEN RAISE EXCEPTION "
                    f"{quote_literal(REFUSED_MARK + ': dependents appeared in ' + d.label + '; nothing deleted')};"
                    " END IF;")
    lines = [
        "\\set VERBOSITY terse",
        "\\set ON_ERROR_STOP 1",
        "BEGIN;",
        f"SET LOCAL lock_timeout = {quote_literal(s.lock_timeout)};",
        lock_sql(s.lock_wait, "xact"),
        f"SET LOCAL statement_timeout = {quote_literal(s.statement_timeout)};",
        f"CREATE TEMP TABLE quant_cleanup_targets ON COMMIT DROP AS SELECT ctid AS quant_ctid "
        f"FROM {s.relation} WHERE {match_condition(s)} FOR UPDATE;",
        f"SELECT 'matched|' || count(*) FROM {TARGETS};",
        "DO $quant$ DECLARE n bigint; BEGIN\n"
        f"  SELECT count(*) INTO n FROM {TARGETS};\n" + "\n".join(guards) + "\nEND $quant$;",
    ]
    for d in deps:
        lines.append(f"SELECT 'dependent|{d.index}|' || count(*) FROM ({rows_sql(d, deps, root)}) AS d;")
    for d in plan.explicit:
        fk = d.fk
        parent = root if d.parent is None else rows_sql(deps[d.parent], deps, root)
        inner = ", ".join(f"p.{quote_ident(c)}" for c in fk.parent_cols)
        lines.append(
            f"WITH gone AS (DELETE FROM {fk.child} WHERE {_cols(fk.child_cols)} IN "
            f"(SELECT {inner} FROM ({parent}) AS p) RETURNING 1) "
            f"SELECT 'deleted|{d.index}|' || count(*) FROM gone;")
    lines.append(
        f"WITH gone AS (DELETE FROM {s.relation} WHERE ctid IN (SELECT quant_ctid FROM {TARGETS}) "
        "RETURNING 1) SELECT 'deleted|root|' || count(*) FROM gone;")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def parse_delete_output(lines: Sequence[str]) -> dict:
    out: dict = {"matched": None, "dependents": {}, "deleted": {}, "root": None}
    for line in lines:
        parts = line.strip().split("|")
        if parts[0] == "matched" and len(parts) == 2:
            out["matched"] = int(parts[1])
        elif parts[0] == "dependent" and len(parts) == 3:
            out["dependents"][int(parts[1])] = int(parts[2])
        elif parts[0] == "deleted" and len(parts) == 3:
            if parts[1] == "root":
                out["root"] = int(parts[2])
            else:
                out["deleted"][int(parts[1])] = int(parts[2])
    return out


def describe_deletion(s: CleanupSettings, deps: Sequence[Dependent], result: Mapping) -> list[str]:
    lines = [f"deleted {result['root'] or 0} rows from {s.relation}"
             + ("" if result["root"] else " (nothing matched any more: another run got them first)")]
    for d in deps:
        n = result["dependents"].get(d.index, 0)
        if not n:
            continue
        if d.index in result["deleted"]:
            lines.append(f"  {result['deleted'][d.index]} rows deleted first from {d.label}")
        elif d.fk.on_delete == "cascade":
            lines.append(f"  {n} rows deleted by cascade from {d.label}")
        else:
            lines.append(f"  {n} rows in {d.label} kept ({d.fk.on_delete})")
    return lines


# --- VACUUM -----------------------------------------------------------------------------------


def vacuum_script(s: CleanupSettings, tables: Sequence[tuple[str, str]], statistics: bool = False) -> str:
    """VACUUM (ANALYZE, SKIP_LOCKED) per table, outside any transaction block, after the
    cleanup advisory lock, with lock and statement timeouts. Output rows per table index i:
    ``before|i|dead|live|vacuums``, then ``skipped|i|running|pid`` or ``after|i|dead|live|vacuums``
    (an unchanged vacuum count after SKIP_LOCKED means the table's lock was held).
    ``statistics``: end with ``stats|<json>`` (:func:`stats_sql`), read after the lock is released."""
    lines = [
        "\\set VERBOSITY terse",
        "\\set ON_ERROR_STOP 1",
        f"SET lock_timeout = {quote_literal(s.lock_timeout)};",
        lock_sql(s.lock_wait, "session"),
        f"SET statement_timeout = {quote_literal(s.statement_timeout)};",
    ]
    for i, (schema, table) in enumerate(tables):
        rel = f"{quote_ident(schema)}.{quote_ident(table)}"
        oid = f"{quote_literal(rel)}::regclass"
        stats = (f"coalesce(n_dead_tup, 0) || '|' || coalesce(n_live_tup, 0) || '|' || "
                 f"(coalesce(vacuum_count, 0) + coalesce(autovacuum_count, 0)) FROM "
                 f"pg_catalog.pg_stat_user_tables WHERE relid = {oid}")
        lines += [
            f"SELECT 'before|{i}|' || {stats};",
            "SELECT coalesce((SELECT pid::text FROM pg_catalog.pg_stat_progress_vacuum "
            f"WHERE relid = {oid} AND pid <> pg_backend_pid() LIMIT 1), '') AS quant_vacuum_pid, "
            f"EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_vacuum WHERE relid = {oid} "
            "AND pid <> pg_backend_pid()) AS quant_vacuum_busy \\gset",
            "\\if :quant_vacuum_busy",
            f"SELECT 'skipped|{i}|running|' || :'quant_vacuum_pid';",
            "\\else",
            f"VACUUM (ANALYZE, SKIP_LOCKED) {rel};",
            f"SELECT 'after|{i}|' || {stats};",
            "\\endif",
        ]
    k1, k2 = LOCK_KEYS
    lines.append(f"SELECT pg_advisory_unlock({k1}, {k2}) AND false;")
    if statistics:
        # jsonb's text is one line (json_agg's is not), so the line parser can take it
        lines.append(f"SELECT 'stats|' || ({stats_sql(s.largest_tables)})::jsonb::text;")
    return "\n".join(lines) + "\n"


def parse_statistics_line(lines: Sequence[str]) -> dict | None:
    """The ``stats|<json>`` line of a :func:`vacuum_script` run with ``statistics``, if any."""
    for line in lines:
        if line.startswith("stats|"):
            try:
                return json.loads(line[len("stats|"):])
            except ValueError:
                return None
    return None


def parse_vacuum_output(lines: Sequence[str], tables: Sequence[tuple[str, str]]) -> list[dict]:
    rows: list[dict] = [{"table": f"{s}.{t}", "status": "not run"} for s, t in tables]
    for line in lines:
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) >= len(rows):
            continue
        row = rows[int(parts[1])]
        if parts[0] == "before" and len(parts) == 5:
            row.update(dead_before=int(parts[2]), live_before=int(parts[3]), vacuums_before=int(parts[4]))
        elif parts[0] == "skipped":
            row.update(status="skipped", note=f"another VACUUM is running on it (pid {parts[3]})")
        elif parts[0] == "after" and len(parts) == 5:
            row.update(dead_after=int(parts[2]), live_after=int(parts[3]), vacuums_after=int(parts[4]))
            if row["vacuums_after"] == row.get("vacuums_before"):
                row.update(status="skipped",
                           note="its lock is held (another VACUUM or maintenance): SKIP_LOCKED")
            else:
                row["status"] = "vacuumed"
    return rows


def describe_vacuum(rows: Sequence[Mapping]) -> list[str]:
    out = []
    for r in rows:
        if r["status"] == "vacuumed":
            out.append(f"VACUUM ANALYZE {r['table']}: dead tuples {r['dead_before']} -> "
                       f"{r['dead_after']}, live {r['live_before']} -> {r['live_after']}")
        elif r["status"] == "skipped":
            out.append(f"VACUUM ANALYZE {r['table']}: skipped, {r['note']}")
        else:
            out.append(f"VACUUM ANALYZE {r['table']}: not run")
    return out


# --- statistics -------------------------------------------------------------------------------


def stats_sql(largest: int = 5) -> str:
    """Statistics of the connected database as JSON (connections: client backends of the whole
    server, this query's own excluded). Query texts are cut to 200 characters and
    their string literals masked (a statement can carry a password)."""
    return f"""SELECT json_build_object(
  'database', current_database(),
  'taken_at', now(),
  'database_size_bytes', pg_database_size(current_database()),
  'table_count', (SELECT count(*) FROM pg_catalog.pg_stat_user_tables),
  'live_tuples', (SELECT coalesce(sum(n_live_tup), 0) FROM pg_catalog.pg_stat_user_tables),
  'dead_tuples', (SELECT coalesce(sum(n_dead_tup), 0) FROM pg_catalog.pg_stat_user_tables),
  'largest_tables', (SELECT coalesce(json_agg(t), '[]') FROM (
      SELECT schemaname || '.' || relname AS table, pg_total_relation_size(relid) AS total_bytes,
             n_live_tup AS live, n_dead_tup AS dead
        FROM pg_catalog.pg_stat_user_tables
       ORDER BY pg_total_relation_size(relid) DESC, schemaname, relname LIMIT {int(largest)}) t),
  'tables', (SELECT coalesce(json_object_agg(schemaname || '.' || relname,
       json_build_object('live', n_live_tup, 'dead', n_dead_tup)), '{{}}')
     FROM pg_catalog.pg_stat_user_tables),
  'connections', (SELECT coalesce(json_object_agg(st, n), '{{}}') FROM (
      SELECT coalesce(state, 'unknown') AS st, count(*) AS n FROM pg_catalog.pg_stat_activity
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1) c),
  'longest_query', (SELECT row_to_json(q) FROM (
      SELECT pid, usename AS user, datname AS database, state,
             round(extract(epoch FROM clock_timestamp() - query_start)::numeric, 1) AS seconds,
             left(regexp_replace(query, '''(''''|[^''])*''', '''***''', 'g'), 200) AS query
        FROM pg_catalog.pg_stat_activity
       WHERE backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'
         AND pid <> pg_backend_pid() AND query_start IS NOT NULL
       ORDER BY query_start LIMIT 1) q))"""


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0 if n < 1024 else min(int(math.log(n, 1024)), len(units) - 1)
    return f"{n / 1024 ** i:.1f} {units[i]}" if i else f"{n} B"


def _conn(stats: Mapping | None) -> str:
    if not stats:
        return "-"
    c = stats.get("connections") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def _longest(stats: Mapping | None) -> str:
    q = (stats or {}).get("longest_query")
    if not q:
        return "none"
    return f"{q['seconds']}s pid {q['pid']} ({q['state']}): {q['query'][:60]}"


def format_report(before: Mapping | None, after: Mapping | None) -> str:
    """Before/after statistics as a table of text."""
    rows = [
        ("database size", human_bytes((before or {}).get("database_size_bytes")),
         human_bytes((after or {}).get("database_size_bytes"))),
        ("tables", str((before or {}).get("table_count", "-")), str((after or {}).get("table_count", "-"))),
        ("live tuples", str((before or {}).get("live_tuples", "-")), str((after or {}).get("live_tuples", "-"))),
        ("dead tuples", str((before or {}).get("dead_tuples", "-")), str((after or {}).get("dead_tuples", "-"))),
        ("connections (client backends)", _conn(before), _conn(after)),
        ("longest running query", _longest(before), _longest(after)),
    ]
    largest = (after or before or {}).get("largest_tables") or []
    tables_b = (before or {}).get("tables") or {}
    tables_a = (after or {}).get("tables") or {}
    for t in largest:
        name = t["table"]
        b, a = tables_b.get(name, {}), tables_a.get(name, {})
        size_b = next((x["total_bytes"] for x in (before or {}).get("largest_tables") or []
                       if x["table"] == name), None)
        rows.append((f"  {name}", f"{human_bytes(size_b)} live {b.get('live', '-')} dead {b.get('dead', '-')}",
                     f"{human_bytes(t['total_bytes']) if after else '-'} live {a.get('live', '-')} "
                     f"dead {a.get('dead', '-')}"))
    name = (after or before or {}).get("database", "?")
    head = (f"statistics of {name}", "before", "after")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    out = ["  ".join(v.ljust(w) for v, w in zip(head, widths))]
    out.insert(1, "  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    out.insert(8, "largest tables (total size)")
    return "\n".join(line.rstrip() for line in out)


def report_document(s: CleanupSettings, before, after, deletion=None, vacuum=None) -> dict:
    return {
        "database": s.database,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "deletion": deletion,
        "vacuum": vacuum,
        "before": before,
        "after": after,
    }


def write_report(path: str, document: Mapping) -> None:
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(p)


# --- facts --------------------------------------------------------------------------------------


def _json_output(output, what: str):
    text = "\n".join(output).strip()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FactProcessError(f"unexpected {what} output ({len(text)} chars): {exc}") from None


class CleanupTable(FactBase):
    """
    Whether ``schema.table`` exists, its columns, and every foreign key of the database.

    .. code:: python

        host.get_fact(CleanupTable, target=target, schema="public", table="users")
    """

    def command(self, target: PgTarget, schema: str, table: str):
        from tasks.operations.postgres import query_command

        return query_command(current_host, target, catalog_sql(schema, table))

    def process(self, output):
        doc = _json_output(output, "catalog")
        return parse_catalog(json.dumps(doc))


class CleanupCounts(FactBase):
    """Matching rows, total rows, a sample, and dependent row counts (``sql`` from
    :func:`count_sql`)."""

    def command(self, target: PgTarget, sql: str):
        from tasks.operations.postgres import query_command

        return query_command(current_host, target, sql)

    def process(self, output):
        return parse_counts(json.dumps(_json_output(output, "count")))


class PostgresStatistics(FactBase):
    """
    Database size, table count, largest tables, live/dead tuples, connections by state
    (client backends) and the longest running query, as a dict.

    .. code:: python

        host.get_fact(PostgresStatistics, target=target, largest=5)
    """

    def command(self, target: PgTarget, largest: int = 5):
        from tasks.operations.postgres import query_command

        return query_command(current_host, target, stats_sql(largest))

    def process(self, output):
        return _json_output(output, "statistics")


# --- operations ---------------------------------------------------------------------------------

_RESULTS_KEY = "quant_cleanup_results"
_STATS_AFTER_KEY = "statistics_after_vacuum"


def _results(host) -> dict:
    """Per-host results of this run's cleanup operations, for the report."""
    if not hasattr(host, _RESULTS_KEY):
        setattr(host, _RESULTS_KEY, {})
    return getattr(host, _RESULTS_KEY)


def _planning() -> bool:
    return not current_host.state.is_executing


def _failure(stderr: Sequence[str]) -> str:
    text = " ".join(line.strip() for line in stderr if line.strip())
    return re.sub(r"^(psql:[^ ]* )?", "", text)[:500] or "psql failed without a message"


def _fail(host, message: str) -> bool:
    """Fail the running operation with ``message`` (no traceback: this is an expected outcome)."""
    from pyinfra import logger

    host.log_styled(message, fg="red", log_func=logger.error)
    return False


def _run_delete(state, host, settings: CleanupSettings, deps, script: str):
    from tasks.operations.postgres import run_script

    ok, out, err = run_script(host, settings.target, script)
    if not ok:
        message = _failure(err)
        if BUSY_MARK in message:
            return _fail(host, "cleanup: " + message[message.index(BUSY_MARK):])
        return _fail(host, f"cleanup: deletion rolled back, nothing changed: {message}")
    result = parse_delete_output(out)
    for line in describe_deletion(settings, deps, result):
        host.log(f"cleanup: {line}")
    _results(host)["deletion"] = {
        "table": f"{settings.schema}.{settings.table}", "deleted": result["root"] or 0,
        "dependents": {deps[i].key: n for i, n in result["dependents"].items()},
        "deleted_first": {deps[i].key: n for i, n in result["deleted"].items()},
    }
    check = _verify_nothing_matches(host, settings, deps)
    host.log(f"cleanup: verification:\n{format_table([check])}")
    if not check.passed:
        return _fail(host, f"cleanup: {check.name}: {check.evidence}")
    return True


def _verify_nothing_matches(host, settings: CleanupSettings, deps) -> CheckResult:
    """After the transaction: a fresh count (the check library's retried check) finds no match."""
    from tasks.operations.postgres import run_script

    def probe():
        ok, out, err = run_script(host, settings.target, count_sql(settings, deps) + ";\n")
        if not ok:
            raise NotYet(f"counting failed: {_failure(err)}")
        matched = parse_counts("\n".join(out).strip()).matched
        if matched:
            raise NotYet(f"{matched} rows still match")
        return f"0 rows of {settings.relation} match {', '.join(map(_shown, settings.patterns))}"

    return run_check(f"no row of {settings.relation} matches the patterns", settings.database, probe,
                     RetryPolicy(attempts=3, seconds=15, wait=1))


@operation()
def delete_matching_rows(settings: CleanupSettings):
    """
    Delete the rows whose column matches the patterns (and their dependents), guarded.

    + settings: :class:`CleanupSettings` from :func:`load_cleanup_settings`

    Counts first (plan time): a missing table/column, patterns matching every row, more than
    ``max_rows`` matches, or dependents behind a non-cascading foreign key with
    ``foreign_keys: refuse`` raise an error and nothing runs. No match: no change. ``--dry``
    lists the counts and sample names. The deletion is one transaction under the cleanup
    advisory lock, with every guard checked again inside it.

    **Example:**

    .. code:: python

        cleanup.delete_matching_rows(name="Delete load-test users", settings=settings)
    """
    s = settings
    catalog = current_host.get_fact(CleanupTable, target=s.target, schema=s.schema, table=s.table)
    if not catalog.exists:
        raise CleanupRefused(f"table {s.relation} does not exist in database "
                             f"{quote_ident(s.database)}: nothing deleted")
    needed = [s.column] + ([s.age_column] if s.min_age_seconds is not None else [])
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise CleanupRefused(f"table {s.relation} has no column {', '.join(map(quote_ident, missing))} "
                             f"(columns: {', '.join(catalog.columns)}): nothing deleted")
    deps = dependents_of(s.schema, s.table, catalog.fks)
    counts = current_host.get_fact(CleanupCounts, target=s.target, sql=count_sql(s, deps))
    plan = plan_deletion(s, catalog, deps, counts)
    if not plan.changed:
        current_host.noop(f"no rows of {s.relation} match {', '.join(map(_shown, s.patterns))}")
        return
    if _planning():
        for line in plan.lines:
            current_host.log(f"plan: {line}")
    yield FunctionCommand(_run_delete, (s, deps, delete_script(s, plan)), {})


def _run_vacuum(state, host, settings: CleanupSettings, tables):
    from tasks.operations.postgres import run_script

    ok, out, err = run_script(host, settings.target, vacuum_script(settings, tables, statistics=True))
    rows = parse_vacuum_output(out, tables)
    _results(host)["vacuum"] = rows
    # The statistics read at the end of the same psql session: statistics_report, next in the
    # deploy, uses them instead of another round trip.
    _results(host)[_STATS_AFTER_KEY] = parse_statistics_line(out)
    if not ok:
        return _fail(host, f"cleanup: VACUUM stopped: {_failure(err)}")
    for line in describe_vacuum(rows):
        host.log(f"cleanup: {line}")


@operation(is_idempotent=False)
def vacuum_analyze(settings: CleanupSettings, stats: Mapping | None = None):
    """
    VACUUM (ANALYZE) the configured tables (``vacuum_tables``; None: every table), each on its
    own outside a transaction block, with ``lock_timeout`` and ``statement_timeout`` and the
    cleanup advisory lock. A table another VACUUM is working on is skipped with a note. Always
    a change (VACUUM is not idempotent); the log gives dead tuples before -> after.
    ``stats``: :class:`PostgresStatistics` already read in this run (the table list comes from
    it), else read here.

    **Example:**

    .. code:: python

        cleanup.vacuum_analyze(name="VACUUM ANALYZE quant", settings=settings)
    """
    s = settings
    if stats is None:
        stats = current_host.get_fact(PostgresStatistics, target=s.target, largest=s.largest_tables)
    present = sorted(tuple(name.split(".", 1)) for name in (stats.get("tables") or {}))
    if s.vacuum_tables is None:
        tables = present
    else:
        tables = []
        for t in s.vacuum_tables:
            found = [p for p in present if p[1] == t and (p[0] == s.schema or "." not in t)]
            if not found:
                raise CleanupRefused(f"vacuum_tables: table {quote_ident(t)} does not exist in "
                                     f"database {quote_ident(s.database)}")
            tables.append(next((p for p in found if p[0] == s.schema), found[0]))
    if not tables:
        current_host.noop(f"no tables to VACUUM in {quote_ident(s.database)}")
        return
    if _planning():
        dead = {k: v.get("dead") for k, v in (stats.get("tables") or {}).items()}
        current_host.log("plan: VACUUM (ANALYZE) " + ", ".join(
            f"{sc}.{t} ({dead.get(f'{sc}.{t}', '?')} dead)" for sc, t in tables)
            + " - always reported as a change")
    yield FunctionCommand(_run_vacuum, (s, tables), {})


def _write_statistics(state, host, settings: CleanupSettings, before):
    from tasks.operations.postgres import run_script

    after = _results(host).pop(_STATS_AFTER_KEY, None)
    if after is None:
        ok, out, err = run_script(host, settings.target, stats_sql(settings.largest_tables) + ";\n")
        if not ok:
            return _fail(host, f"cleanup: reading statistics failed: {_failure(err)}")
        after = json.loads("\n".join(out))
    for line in format_report(before, after).splitlines():
        host.log(f"stats: {line}")
    if settings.report_path:
        results = _results(host)
        write_report(settings.report_path, report_document(
            settings, before, after, results.get("deletion"), results.get("vacuum")))
        host.log(f"stats: JSON report written to {settings.report_path}")


@operation(is_idempotent=False)
def statistics_report(settings: CleanupSettings, before: Mapping | None = None):
    """
    Print database statistics before/after as a table and, with ``report_path``, write them as
    JSON on the controller. ``before``: statistics read at plan time (see
    :class:`PostgresStatistics`). "After" are the ones the VACUUM step read at its end when it
    ran just before this step, else read now. Reading is no change to the database, but pyinfra counts the
    step as one: gate it with ``_if`` on the operations that changed something.
    """
    yield FunctionCommand(_write_statistics, (settings, before), {})


def log_statistics(stats: Mapping) -> None:
    """Print plan-time statistics (the "before" column) once."""
    if _planning():
        for line in format_report(stats, None).splitlines():
            current_host.log(f"stats: {line}")
