"""VACUUM (ANALYZE) and the statistics around it (pure: no pyinfra): the per-table VACUUM
script and its output, the statistics query, and the before/after report (a text table, and a
JSON document written on the controller).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tasks.core.cleanup_sql import LOCK_KEYS, application_sql, lock_holders_from, lock_sql
from tasks.core.durations import postgres_interval
from tasks.core.pg_sql import quote_ident, quote_literal
from tasks.core.private_file import write_private_text
from tasks.core.sizes import human_size

if TYPE_CHECKING:
    from tasks.settings.cleanup import CleanupSettings

REPORT_ENV = "QUANT_CLEANUP_REPORT"  # a JSON report path that wins over the report_path setting


def vacuum_script(s: CleanupSettings, tables: Sequence[tuple[str, str]], statistics: bool = False) -> str:
    """VACUUM (ANALYZE, SKIP_LOCKED) per table, outside any transaction block, after the
    cleanup advisory lock, with lock and statement timeouts. Output rows per table index i:
    ``before|i|dead|live|vacuums``, then ``skipped|i|running|pid`` or ``after|i|dead|live|vacuums``
    (an unchanged vacuum count after SKIP_LOCKED means the table's lock was held).
    ``statistics``: end with ``stats|<json>`` (:func:`stats_sql`), read after the lock is released."""
    lines = [
        "\\set VERBOSITY terse",
        "\\set ON_ERROR_STOP 1",
        application_sql(),
        f"SET lock_timeout = {quote_literal(postgres_interval(s.lock_timeout))};",
        lock_sql(s.lock_wait, "session"),
        f"SET statement_timeout = {quote_literal(postgres_interval(s.statement_timeout))};",
    ]
    for i, (schema, table) in enumerate(tables):
        rel = f"{quote_ident(schema)}.{quote_ident(table)}"
        oid = f"{quote_literal(rel)}::regclass"
        stats = (
            f"coalesce(n_dead_tup, 0) || '|' || coalesce(n_live_tup, 0) || '|' || "
            f"(coalesce(vacuum_count, 0) + coalesce(autovacuum_count, 0)) FROM "
            f"pg_catalog.pg_stat_user_tables WHERE relid = {oid}"
        )
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
                return json.loads(line[len("stats|") :])
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
                row.update(
                    status="skipped", note="its lock is held (another VACUUM or maintenance): SKIP_LOCKED"
                )
            else:
                row["status"] = "vacuumed"
    return rows


def describe_vacuum(rows: Sequence[Mapping]) -> list[str]:
    out = []
    for r in rows:
        if r["status"] == "vacuumed":
            out.append(
                f"VACUUM ANALYZE {r['table']}: dead tuples {r['dead_before']} -> "
                f"{r['dead_after']}, live {r['live_before']} -> {r['live_after']}"
            )
        elif r["status"] == "skipped":
            out.append(f"VACUUM ANALYZE {r['table']}: skipped, {r['note']}")
        else:
            out.append(f"VACUUM ANALYZE {r['table']}: not run")
    return out


# --- statistics -------------------------------------------------------------------------------


# Every literal form PostgreSQL lexes ('...' with '' inside, E'...' with backslash escapes, U&'...',
# B'...', X'...', $$...$$ and $tag$...$tag$) and every comment (--, /* */) of a query text, as
# ***, by one left-to-right scan, so a quote inside a dollar quote, a comment or a quoted
# identifier cannot make the scan lose its place. A literal or comment still open where the text
# ends (pg_stat_activity cuts texts at track_activity_query_size) is masked to the end; so is a
# nested block comment. Quoted identifiers, keywords, numbers and $1 parameters are kept.
_MASK_SCAN = """(WITH RECURSIVE scan(pos, out) AS (
    SELECT 1, ''::text
    UNION ALL
    SELECT s.pos + length(k.tok), s.out || CASE WHEN k.hide THEN '***' ELSE k.tok END
      FROM scan s,
           LATERAL (SELECT substr({column}, s.pos) AS rest) r,
           LATERAL (SELECT substring(r.rest FROM '^(\\$(?:[A-Za-z_][A-Za-z0-9_]*)?\\$)') AS tag,
                           strpos(substr(r.rest, 3), '*/') AS shut,
                           strpos(substr(r.rest, 3), '/*') AS nest) d,
           LATERAL (SELECT CASE
               WHEN r.rest LIKE '"%' THEN substring(r.rest FROM '^"(?:[^"]|"")*"?')
               WHEN r.rest ~ '^[Ee]\'\'' THEN substring(r.rest FROM '^[Ee]\'\'(?:[^\'\'\\\\]|\\\\.|\'\'\'\')*\'\'?')
               WHEN r.rest LIKE '\'\'%' THEN substring(r.rest FROM '^\'\'(?:[^\'\']|\'\'\'\')*\'\'?')
               WHEN d.tag IS NOT NULL THEN CASE strpos(substr(r.rest, length(d.tag) + 1), d.tag)
                   WHEN 0 THEN r.rest
                   ELSE left(r.rest, strpos(substr(r.rest, length(d.tag) + 1), d.tag) - 1 + 2 * length(d.tag))
                   END
               WHEN r.rest LIKE '--%' THEN substring(r.rest FROM '^--[^\\n]*')
               WHEN r.rest LIKE '/*%' THEN CASE WHEN d.shut = 0 OR (d.nest > 0 AND d.nest < d.shut)
                   THEN r.rest ELSE left(r.rest, d.shut + 3) END
               ELSE substring(r.rest FROM '^(?:[A-Za-z0-9_]+|[^"\'\'$/A-Za-z0-9_-]+|.)')
             END AS tok,
             r.rest ~ '^(?:\'\'|[Ee]\'\'|--|/\\*)' OR d.tag IS NOT NULL AS hide) k
     WHERE s.pos <= length({column}))
  SELECT left(out, {chars}) FROM scan ORDER BY pos DESC LIMIT 1)"""


def masked_query_sql(column: str, chars: int = 200) -> str:
    """A scalar SQL expression: the query text in ``column`` with its literals and comments
    masked (see _MASK_SCAN), cut to ``chars`` characters after masking."""
    return _MASK_SCAN.format(column=column, chars=int(chars))


def stats_sql(largest: int = 5) -> str:
    """Statistics of the connected database as JSON (connections: client backends of the whole
    server, this query's own excluded; ``cleanup_lock``: the sessions holding the cleanup lock). The longest running query's text has every literal and
    comment masked (a statement can carry a password), then is cut to 200 characters."""
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
  'cleanup_lock', (SELECT coalesce(json_agg(h), '[]') FROM (
      SELECT a.pid, a.application_name AS application, a.state,
             round(extract(epoch FROM clock_timestamp() - a.state_change)) AS seconds
        {lock_holders_from()}) h),
  'connections', (SELECT coalesce(json_object_agg(st, n), '{{}}') FROM (
      SELECT coalesce(state, 'unknown') AS st, count(*) AS n FROM pg_catalog.pg_stat_activity
       WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1) c),
  'longest_query', (SELECT row_to_json(q) FROM (
      SELECT a.pid, a.user, a.database, a.state, a.seconds, {masked_query_sql("a.query")} AS query
        FROM (SELECT pid, usename AS user, datname AS database, state, query,
                     round(extract(epoch FROM clock_timestamp() - query_start)::numeric, 1) AS seconds
                FROM pg_catalog.pg_stat_activity
               WHERE backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'
                 AND pid <> pg_backend_pid() AND query_start IS NOT NULL
               ORDER BY query_start LIMIT 1) a) q))"""


def human_bytes(n: int | None) -> str:
    """A size for the report table: "-" when unknown (core.sizes formats the rest)."""
    if n is None:
        return "-"
    return human_size(n) if n else "0 B"


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
        (
            "database size",
            human_bytes((before or {}).get("database_size_bytes")),
            human_bytes((after or {}).get("database_size_bytes")),
        ),
        ("tables", str((before or {}).get("table_count", "-")), str((after or {}).get("table_count", "-"))),
        (
            "live tuples",
            str((before or {}).get("live_tuples", "-")),
            str((after or {}).get("live_tuples", "-")),
        ),
        (
            "dead tuples",
            str((before or {}).get("dead_tuples", "-")),
            str((after or {}).get("dead_tuples", "-")),
        ),
        ("connections (client backends)", _conn(before), _conn(after)),
        ("longest running query", _longest(before), _longest(after)),
    ]
    largest = (after or before or {}).get("largest_tables") or []
    tables_b = (before or {}).get("tables") or {}
    tables_a = (after or {}).get("tables") or {}
    for t in largest:
        name = t["table"]
        b, a = tables_b.get(name, {}), tables_a.get(name, {})
        size_b = next(
            (x["total_bytes"] for x in (before or {}).get("largest_tables") or [] if x["table"] == name), None
        )
        rows.append(
            (
                f"  {name}",
                f"{human_bytes(size_b)} live {b.get('live', '-')} dead {b.get('dead', '-')}",
                f"{human_bytes(t['total_bytes']) if after else '-'} live {a.get('live', '-')} "
                f"dead {a.get('dead', '-')}",
            )
        )
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
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "deletion": deletion,
        "vacuum": vacuum,
        "before": before,
        "after": after,
    }


def write_report(path: str, document: Mapping) -> None:
    """The JSON report, 0600 whatever the umask; a folder it has to make is 0700."""
    write_private_text(path, json.dumps(document, indent=2, default=str) + "\n")
