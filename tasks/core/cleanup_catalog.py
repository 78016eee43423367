"""The table a cleanup deletes from, as the catalog describes it: whether it exists, its columns,
and every chain of foreign keys that reaches its rows (pure: no pyinfra).

:class:`CleanupRefused` is the cleanup's refusal ("nothing was changed, and here is why"); the
operations turn it into pyinfra's one-line operation error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.core.pg_sql import quote_ident, quote_literal

MAX_FK_DEPTH = 6


class CleanupRefused(ValueError):
    """A guard refused the deletion: nothing was changed."""


_FK_ACTIONS = {"c": "cascade", "r": "restrict", "a": "no action", "n": "set null", "d": "set default"}


def catalog_sql(schema: str, table: str) -> str:
    """One JSON document: does the table exist, its columns, and every foreign key in the
    database (child -> parent, columns in order, the ON DELETE action)."""
    return f"""SELECT json_build_object(
  'exists', to_regclass({quote_literal(quote_ident(schema) + "." + quote_ident(table))}) IS NOT NULL,
  'columns', (SELECT coalesce(json_agg(a.attname ORDER BY a.attnum), '[]')
     FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass({quote_literal(quote_ident(schema) + "." + quote_ident(table))})
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
        ForeignKey(
            f["name"],
            f["child_schema"],
            f["child_table"],
            tuple(f["child_cols"]),
            f["parent_schema"],
            f["parent_table"],
            tuple(f["parent_cols"]),
            _FK_ACTIONS.get(f["on_delete"], f["on_delete"]),
        )
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
        (None, (schema, table), ((schema, table),), 1)
    ]
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
                    "handled automatically; clean these rows up by hand"
                )
            if depth > MAX_FK_DEPTH:
                raise CleanupRefused(
                    f"foreign key chains deeper than {MAX_FK_DEPTH} below "
                    f"{quote_ident(schema)}.{quote_ident(table)}: refused"
                )
            dep = Dependent(len(out), fk, parent, depth)
            out.append(dep)
            if fk.on_delete in ("cascade", "restrict", "no action"):
                queue.append((dep.index, child, path + (child,), depth + 1))
    return out
