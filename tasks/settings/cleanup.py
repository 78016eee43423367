"""
The ``cleanup`` block: what deploys/cleanup_database.py deletes, and how carefully::

    cleanup = {
        "database": "quant",
        "schema": "public", "table": "users", "column": "username",
        "patterns": ["concurrent\\\\_%", "test\\\\_%"],  # SQL LIKE: % any run, _ one char, \\ escapes
        "min_age": "1 hour",          # only rows older than this (by age_column); None: any age
        "max_rows": 1000,             # more matches than this: refuse, change nothing...
        "allow_over_max": False,      # ...unless explicitly allowed
        "max_share": 0.1,             # more than this share of the table's rows: refuse
        "allow_broad_patterns": False,  # True: accept patterns the breadth rules refuse
        "foreign_keys": "refuse",     # or "delete_dependents"
        "vacuum_tables": None,        # None: every table of the database
        "lock_timeout": "5s", "statement_timeout": "15min", "lock_wait": "60s",
        "report_path": None,          # JSON report on the controller (env QUANT_CLEANUP_REPORT wins)
    }

Refused before anything runs: unknown keys, empty patterns, patterns made only of wildcards
(``%``, ``_%``: they match every row), a trailing escape, identifiers that cannot be quoted, bad
durations and bounds; and, unless ``allow_broad_patterns`` is true, broad patterns
(:func:`tasks.core.cleanup_sql.broad_pattern`): a leading wildcard (``%a%``), an unescaped ``_``
(``test_%``), fewer than 4 literal characters before the first wildcard, or a literal part
without a separator (``test%`` also matches ``testarossa_trader``). The scheduled job runs
with ``-y`` and no ``--dry`` listing, so these are refused rather than warned about. At plan time
and again inside the deletion's transaction, a match over ``max_share`` of the table (default
10%) stops the run, nothing deleted. The connection is the host's ``postgres`` block (see
:func:`tasks.operations.cleanup.cleanup_target`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool, StrictInt, field_validator, model_validator

from tasks.core.cleanup_sql import broad_pattern, check_pattern
from tasks.core.cleanup_vacuum import REPORT_ENV
from tasks.core.pg_sql import quote_ident
from tasks.settings.base import Block
from tasks.settings.types import Duration, PgIdentifier

# PostgreSQL keeps lock_timeout/statement_timeout as int milliseconds; 0 would mean "no timeout".
_PG_TIMEOUT_MAX = 2_147_483.647


def _pg_timeout(seconds: float) -> float:
    if round(seconds * 1000) < 1:
        raise ValueError("must be at least 1ms (0 would switch the timeout off)")
    if seconds > _PG_TIMEOUT_MAX:
        raise ValueError("is above PostgreSQL's limit of about 24 days")
    return seconds


# A PostgreSQL name (quote_ident's rules: at most 63 bytes, no NUL), as in every other block.
Identifier = PgIdentifier
PgTimeout = Annotated[Duration, AfterValidator(_pg_timeout)]


# The host-data key is "schema", which is also the name of pydantic v1's deprecated
# BaseModel.schema(): pydantic warns about the shadowing, harmlessly.
warnings.filterwarnings("ignore", message='Field name "schema" in "CleanupSettings" shadows')


class CleanupSettings(Block):
    """The guarded deletion of test rows, VACUUM (ANALYZE) and the statistics report."""

    database: Identifier = Field(
        "quant", description="the database to clean (connection: the postgres block)"
    )
    schema: Identifier = "public"  # type: ignore[assignment]
    table: Identifier = "users"
    column: Identifier = Field("username", description="matched against the patterns")
    patterns: tuple[str, ...] = Field(
        ("concurrent\\_%", "test\\_%"),
        description="SQL LIKE patterns (% any run, _ one character, \\ escapes); the load tests' leftovers",
    )
    min_age: Duration | None = Field(
        None, description="only rows older than this by age_column; None: any age"
    )
    age_column: Identifier = "created_at"
    max_rows: StrictInt = Field(
        1000, ge=1, le=10_000_000, description="more matches: refuse and change nothing..."
    )
    allow_over_max: StrictBool = Field(False, description="...unless this says otherwise")
    max_share: float = Field(
        0.1,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="matches over this share of the table's rows (0.1 = 10%): refuse and change "
        "nothing, whatever allow_over_max says",
    )
    allow_broad_patterns: StrictBool = Field(
        False,
        description="accept broad patterns (leading wildcard, unescaped '_', under 4 literal "
        "characters before the first wildcard, no separator in them); wildcard-only ones stay refused",
    )
    foreign_keys: Literal["refuse", "delete_dependents"] = Field(
        "refuse",
        description="dependents behind an FK without ON DELETE CASCADE: refuse (nothing "
        "deleted) or delete them first",
    )
    sample_size: StrictInt = Field(10, ge=0, le=1000, description="names listed in the plan (--dry)")
    vacuum: StrictBool = Field(True, description="VACUUM (ANALYZE) after the deletion")
    vacuum_tables: tuple[Identifier, ...] | None = Field(
        None, description="None: every table of the database"
    )
    lock_timeout: PgTimeout = Field(5.0, description="for every statement (deletion and VACUUM)")
    statement_timeout: PgTimeout = 900.0
    lock_wait: Duration = Field(
        60.0,
        le=86400,
        description="wait this long for another run's advisory lock, then stop (the scheduled job exits 75)",
    )
    largest_tables: StrictInt = Field(5, ge=1, le=100, description="rows in the statistics report")
    report_path: Annotated[str, Field(min_length=1)] | None = Field(
        None, description=f"JSON report on the controller (env {REPORT_ENV} wins)"
    )

    @property
    def relation(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    @field_validator("patterns", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError("must be a non-empty list of LIKE patterns (e.g. 'test\\_%')")
        problems = [f"patterns[{i}]: {problem}" for i, p in enumerate(value) if (problem := check_pattern(p))]
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("max_share", mode="before")
    @classmethod
    def _share_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number above 0 and at most 1 (0.1 = 10% of the table)")
        return value

    @model_validator(mode="after")
    def _narrow_patterns(self) -> CleanupSettings:
        if self.allow_broad_patterns:
            return self
        problems = [
            f"patterns[{i}]: {why}; refused (allow_broad_patterns: true accepts it)"
            for i, p in enumerate(self.patterns)
            if (why := broad_pattern(p))
        ]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @field_validator("report_path")
    @classmethod
    def _report_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a file path")
        return value

    def report_to(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Where the JSON report goes: ``QUANT_CLEANUP_REPORT`` when set, else ``report_path``."""
        return (os.environ if environ is None else environ).get(REPORT_ENV) or self.report_path
