"""
Facts of the database cleanup: the table and its foreign keys, the rows that match, and the
database's statistics. Read-only; query texts in the statistics have their literals masked.

Every fact takes ``target``, a :class:`tasks.core.pg_exec.PgTarget` pointed at the database
being cleaned, and runs one query through :func:`tasks.facts.postgres.query_command`.
"""

from __future__ import annotations

import json

from pyinfra import host as current_host
from pyinfra.api import FactBase
from pyinfra.api.exceptions import FactProcessError

from tasks.core.cleanup_catalog import TableCatalog, catalog_sql, parse_catalog
from tasks.core.cleanup_sql import Counts, parse_counts
from tasks.core.cleanup_vacuum import stats_sql
from tasks.core.pg_exec import PgTarget
from tasks.facts.postgres import query_command


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
        return query_command(current_host, target, catalog_sql(schema, table))

    def process(self, output) -> TableCatalog:
        return parse_catalog(json.dumps(_json_output(output, "catalog")))


class CleanupCounts(FactBase):
    """Matching rows, total rows, a sample, and dependent row counts (``sql`` from
    :func:`tasks.core.cleanup_sql.count_sql`).

    .. code:: python

        host.get_fact(CleanupCounts, target=target, sql=count_sql(settings, dependents))
    """

    def command(self, target: PgTarget, sql: str):
        return query_command(current_host, target, sql)

    def process(self, output) -> Counts:
        return parse_counts(json.dumps(_json_output(output, "count")))


class PostgresStatistics(FactBase):
    """
    Database size, table count, largest tables, live/dead tuples, connections by state
    (client backends) and the longest running query, as a dict.

    .. code:: python

        host.get_fact(PostgresStatistics, target=target, largest=5)
    """

    def command(self, target: PgTarget, largest: int = 5):
        return query_command(current_host, target, stats_sql(largest))

    def process(self, output):
        return _json_output(output, "statistics")
