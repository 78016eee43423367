"""Cleanup SQL (pure: no pyinfra): which rows match, the counts and the guards that decide the
plan, and the deletion as one psql script run in one transaction under an advisory lock.

Matching is SQL ``LIKE``: ``_`` matches any one character, so ``test_%`` also matches
``testXyz``; write ``test\\_%`` for a literal underscore. A pattern made only of wildcards
(``%``, ``_%``) matches every row and is always refused by the settings; a *broad* pattern
(:func:`broad_pattern`: a leading wildcard, an unescaped ``_``, fewer than
:data:`MIN_LITERAL_PREFIX` literal characters before the first wildcard, or a literal part with
no separator, like ``test%``, which also matches ``testarossa_trader``) is refused unless the
settings say ``allow_broad_patterns``. Whatever the patterns, a match over ``max_share`` of the
table's rows (or over ``max_rows``) stops the run before anything is deleted.

A run killed mid-way leaves nothing half-done: the deletion is one transaction, and a session it
left holding the advisory lock (its client gone or stuck) is ended by the next run's wait for
the lock once it has sat idle for :data:`ORPHAN_AFTER_SECONDS`, which rolls it back.

Long because the deletion script, its guards and the lock it runs under are one piece of SQL
whose parts a reader must check against each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.core.cleanup_catalog import CleanupRefused, Dependent, TableCatalog
from tasks.core.durations import postgres_interval
from tasks.core.pg_sql import quote_ident, quote_literal

if TYPE_CHECKING:
    from tasks.settings.cleanup import CleanupSettings

# pg_advisory_lock(int4, int4) keys shared by every cleanup run (advisory locks are per database).
LOCK_KEYS = (0x71756E74, 0x636C6E)  # "qunt", "cln"
BUSY_MARK = "cleanup-lock-busy"  # another run holds the lock: the scheduled job exits 75
# Every cleanup session names itself, so a later run can tell one a killed run left behind.
APPLICATION_NAME = "quant-cleanup"
# A cleanup session that holds the lock and has sent nothing for this long is one whose
# controller is gone (a live run streams its statements back to back): it is ended.
ORPHAN_AFTER_SECONDS = 30
REAPED_MARK = "quant-cleanup-reaped"
REFUSED_MARK = "cleanup-refused"


# --- patterns ---------------------------------------------------------------------------------


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


MIN_LITERAL_PREFIX = 4  # literal characters before a pattern's first wildcard


def like_tokens(pattern: str) -> list[tuple[str, bool]]:
    """A LIKE pattern as (character, is_wildcard) pairs; ``\\x`` is the literal ``x``."""
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append((pattern[i + 1], False))
            i += 2
            continue
        out.append((ch, ch in "%_"))
        i += 1
    return out


def broad_pattern(pattern: str) -> str | None:
    """Why a (well-formed) LIKE pattern is too broad to delete by unattended, or None.

    Broad: it starts with a wildcard (it matches anywhere in the value); it has an unescaped
    ``_`` (one *any* character: ``test_%`` also matches ``testXuser``); fewer than
    :data:`MIN_LITERAL_PREFIX` literal characters come before its first wildcard; or that
    literal part has no separator (a character other than a letter or digit), so ``test%``
    also matches ``testarossa_trader``. A pattern without wildcards (one exact value) is never
    broad."""
    tokens = like_tokens(pattern)
    if not any(wild for _, wild in tokens):
        return None
    if tokens[0][1]:
        return (
            f"{pattern!r} starts with a wildcard: nothing anchors it to the start of a value "
            "('%a%' matches every name with an 'a' in it)"
        )
    if any(ch == "_" and wild for ch, wild in tokens):
        fixed = "".join(
            "\\_" if ch == "_" and wild else ("\\" + ch if ch in "%_\\" and not wild else ch)
            for ch, wild in tokens
        )
        return (
            f"{pattern!r} has an unescaped '_', which LIKE reads as any one character; "
            f"write {fixed!r} for a literal underscore"
        )
    prefix = ""
    for ch, wild in tokens:
        if wild:
            break
        prefix += ch
    if len(prefix) < MIN_LITERAL_PREFIX:
        return (
            f"{pattern!r} has only {len(prefix)} literal characters before its first wildcard "
            f"(at least {MIN_LITERAL_PREFIX})"
        )
    if prefix.isalnum():
        return (
            f"{pattern!r} also matches names that merely start with {prefix!r} "
            f"(e.g. {prefix + 'arossa_trader'!r}): end the literal part with a separator, "
            f"e.g. {prefix + chr(92) + '_%'!r}"
        )
    return None


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


# --- matching, counting, planning, deleting ---------------------------------------------


def match_condition(s: CleanupSettings) -> str:
    col = quote_ident(s.column)
    cond = "(" + " OR ".join(f"{col} LIKE {quote_literal(p)}" for p in s.patterns) + ")"
    if s.min_age is not None:
        cond += f" AND {quote_ident(s.age_column)} < now() - make_interval(secs => {int(s.min_age)})"
    return cond


def percent(share: float) -> str:
    return f"{share * 100:.3g}%"


def shown(pattern: str) -> str:
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
    return (
        f"SELECT * FROM {fk.child} WHERE {_cols(fk.child_cols)} IN "
        f"(SELECT {inner} FROM ({parent}) AS p{dep.index})"
    )


def count_sql(s: CleanupSettings, deps: Sequence[Dependent]) -> str:
    """JSON: matched rows, total rows, a sample of names, and per dependent its row count."""
    root = f"SELECT * FROM {s.relation} WHERE {match_condition(s)}"
    col = quote_ident(s.column)
    parts = ", ".join(f"'{d.index}', (SELECT count(*) FROM ({rows_sql(d, deps, root)}) AS d)" for d in deps)
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
    return Counts(
        int(doc["matched"]),
        int(doc["total"]),
        tuple(doc["sample"]),
        {int(k): int(v) for k, v in (doc["dependents"] or {}).items()},
    )


@dataclass
class DeletionPlan:
    counts: Counts
    deps: list[Dependent]
    explicit: list[Dependent] = field(default_factory=list)  # deleted by us, deepest first
    lines: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.counts.matched > 0


def plan_deletion(
    s: CleanupSettings, catalog: TableCatalog, deps: list[Dependent], counts: Counts
) -> DeletionPlan:
    """Check every guard against the counts (raise :class:`CleanupRefused` with the figures)
    and say what goes. Nothing here has side effects."""
    c = counts
    where = f"{s.relation}.{quote_ident(s.column)}"
    plan = DeletionPlan(c, deps)
    if c.matched == 0:
        return plan
    if c.matched >= c.total:
        raise CleanupRefused(
            f"{REFUSED_MARK}: the patterns match every row of {s.relation} "
            f"({c.matched} of {c.total}); nothing deleted"
        )
    if c.matched > s.max_share * c.total:
        raise CleanupRefused(
            f"{REFUSED_MARK}: {c.matched} of {c.total} rows of {s.relation} match "
            f"({percent(c.matched / c.total)}), over max_share {s.max_share:g} "
            f"({percent(s.max_share)} of the table): "
            "patterns this broad look like a mistake; nothing deleted (raise max_share if "
            "they are meant)"
        )
    if c.matched > s.max_rows and not s.allow_over_max:
        raise CleanupRefused(
            f"{REFUSED_MARK}: {c.matched} rows of {s.relation} match, over "
            f"max_rows {s.max_rows} (set allow_over_max to go ahead); nothing deleted"
        )
    blocking = [d for d in deps if d.fk.blocks and c.dependents.get(d.index, 0) > 0]
    if blocking and s.foreign_keys == "refuse":
        what = "; ".join(f"{c.dependents[d.index]} rows in {d.label}" for d in blocking)
        raise CleanupRefused(
            f"{REFUSED_MARK}: matched rows of {s.relation} still have dependents "
            f"behind foreign keys without ON DELETE CASCADE: {what}. "
            "foreign_keys is 'refuse': nothing deleted "
            "(set foreign_keys: delete_dependents to delete them too)"
        )
    plan.explicit = sorted(blocking, key=lambda d: -d.depth)
    plan.lines.append(
        f"delete {c.matched} of {c.total} rows from {s.relation} where {where} "
        f"LIKE {', '.join(shown(p) for p in s.patterns)}"
        + (f" and is older than {int(s.min_age)}s" if s.min_age else "")
    )
    if c.sample:
        more = f" (+{c.matched - len(c.sample)} more)" if c.matched > len(c.sample) else ""
        plan.lines.append("  e.g. " + ", ".join(c.sample) + more)
    for d in deps:
        n = c.dependents.get(d.index, 0)
        if not n:
            continue
        how = {
            "cascade": "deleted by ON DELETE CASCADE",
            "set null": "set to NULL (rows stay)",
            "set default": "set to their default (rows stay)",
        }.get(d.fk.on_delete, "deleted first (foreign_keys: delete_dependents)")
        plan.lines.append(f"  {n} rows in {d.label}: {how}")
    return plan


def lock_holders_from(where: str = "") -> str:
    """FROM/WHERE over the sessions (other than this one) holding the cleanup advisory lock."""
    k1, k2 = LOCK_KEYS
    return (
        "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND l.classid = {k1} AND l.objid = {k2} AND l.objsubid = 2 "
        f"AND l.granted AND a.pid <> pg_backend_pid(){where}"
    )


def application_sql() -> str:
    """Name this session (``SET``, so it holds for the whole psql session)."""
    return f"SET application_name = '{APPLICATION_NAME}';"


def reap_plpgsql() -> str:
    """PL/pgSQL that ends the cleanup sessions a killed run left holding the lock: named ours,
    idle (not running a statement) for over :data:`ORPHAN_AFTER_SECONDS`. Ending one rolls its
    transaction back and frees the lock. Each is named in a NOTICE carrying :data:`REAPED_MARK`."""
    idle = (
        f" AND a.application_name = '{APPLICATION_NAME}' AND a.state <> 'active' "
        f"AND a.state_change < clock_timestamp() - make_interval(secs => {ORPHAN_AFTER_SECONDS})"
    )
    # OFFSET 0 keeps the filter apart from the call: no other session is ever asked to end.
    return (
        f"    FOR ended IN SELECT o.pid, o.state, o.state_change FROM (SELECT a.pid, a.state, "
        f"a.state_change {lock_holders_from(idle)} OFFSET 0) AS o WHERE pg_catalog.pg_terminate_backend(o.pid) LOOP\n"
        f"      RAISE NOTICE '{REAPED_MARK}: ended session pid % (%, since %): a cleanup run that "
        "did not finish left it holding the cleanup lock; its transaction is rolled back', ended.pid, "
        "ended.state, date_trunc('second', ended.state_change);\n"
        "    END LOOP;\n"
    )


def lock_sql(lock_wait: float, scope: str) -> str:
    """Take the cleanup advisory lock (``xact`` or ``session``), waiting at most ``lock_wait``
    seconds (ending, meanwhile, the sessions a killed run left holding it: :func:`reap_plpgsql`);
    then fail with :data:`BUSY_MARK`, naming the sessions that hold it."""
    fn = "pg_try_advisory_xact_lock" if scope == "xact" else "pg_try_advisory_lock"
    k1, k2 = LOCK_KEYS
    holder = (
        "string_agg(format('pid %s (%s, %s since %s)', a.pid, "
        "coalesce(nullif(a.application_name, ''), 'no application name'), a.state, "
        f"date_trunc('second', a.state_change)), '; ') {lock_holders_from()}"
    )
    return (
        "DO $quant$ DECLARE deadline timestamptz := clock_timestamp() + "
        f"make_interval(secs => {lock_wait:g}); holder text; ended record; BEGIN\n"
        f"  WHILE NOT {fn}({k1}, {k2}) LOOP\n"
        + reap_plpgsql()
        + "    IF clock_timestamp() >= deadline THEN\n"
        f"      SELECT {holder} INTO holder;\n"
        f"      RAISE EXCEPTION '{BUSY_MARK}: another cleanup run holds the advisory lock on "
        f"database % (waited {lock_wait:g}s; held by %); skipped, nothing changed', current_database(), "
        "coalesce(holder, 'a session that has just ended');\n"
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
        f"  IF n > {float(s.max_share)!r}::numeric * (SELECT count(*) FROM {s.relation}) THEN "
        f"RAISE EXCEPTION '{REFUSED_MARK}: % rows match now, over max_share {float(s.max_share):g} "
        "of the table; nothing deleted', n; END IF;",
    ]
    if s.foreign_keys == "refuse":
        for d in deps:
            if d.fk.blocks:
                guards.append(
                    f"  IF EXISTS ({rows_sql(d, deps, root)}) THEN RAISE EXCEPTION "
                    f"{quote_literal(REFUSED_MARK + ': dependents appeared in ' + d.label + '; nothing deleted')};"
                    " END IF;"
                )
    lines = [
        "\\set VERBOSITY terse",
        "\\set ON_ERROR_STOP 1",
        application_sql(),
        "BEGIN;",
        f"SET LOCAL lock_timeout = {quote_literal(postgres_interval(s.lock_timeout))};",
        lock_sql(s.lock_wait, "xact"),
        f"SET LOCAL statement_timeout = {quote_literal(postgres_interval(s.statement_timeout))};",
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
            f"SELECT 'deleted|{d.index}|' || count(*) FROM gone;"
        )
    lines.append(
        f"WITH gone AS (DELETE FROM {s.relation} WHERE ctid IN (SELECT quant_ctid FROM {TARGETS}) "
        "RETURNING 1) SELECT 'deleted|root|' || count(*) FROM gone;"
    )
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
    lines = [
        f"deleted {result['root'] or 0} rows from {s.relation}"
        + ("" if result["root"] else " (nothing matched any more: another run got them first)")
    ]
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
