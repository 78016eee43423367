"""
Guarded database cleanup: test users and their dependent rows, VACUUM ANALYZE, statistics.

Replaces ``cleanup_database.sh``. Settings: the ``cleanup`` block
(:class:`tasks.settings.cleanup.CleanupSettings`); the connection: the ``postgres`` block,
pointed at the cleanup's database by :func:`cleanup_target`. The SQL is built in
:mod:`tasks.core.cleanup_sql` and :mod:`tasks.core.cleanup_vacuum`; the facts are in
:mod:`tasks.facts.cleanup`.

What is guarded, and where:

- Settings (before anything runs): unknown keys; empty patterns; patterns made only of
  wildcards; a trailing escape; identifiers that cannot be quoted; bad durations and bounds.
- Plan time (facts, before anything runs): the table and columns must exist; matching rows and
  their dependents are counted through the foreign keys found in the catalog (recursively);
  patterns matching every row, more than ``max_rows`` matches, and dependents behind an FK
  without ``ON DELETE CASCADE`` under ``foreign_keys: refuse`` are refused with an error naming
  the figures. With nothing matching, the operation is a no-op.
- Execution (one transaction): an advisory lock shared by all cleanup runs on the database
  (waited for at most ``lock_wait``; then the run stops with ``cleanup-lock-busy`` and changes
  nothing), the matching rows are locked and re-counted, every guard is checked again (so a row
  that appeared since planning cannot slip past), dependents are deleted deepest first, then the
  rows; any failure rolls everything back.
- VACUUM (ANALYZE) runs per table outside any transaction, after the same advisory lock, with
  ``lock_timeout`` and ``statement_timeout`` set, and with ``SKIP_LOCKED``: a table on which
  another VACUUM runs (``pg_stat_progress_vacuum``) or whose lock is held is skipped with a note.
  VACUUM always counts as a change: the log says what it did (dead tuples before -> after).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import OperationError

from tasks import settings as host_settings
from tasks.checks.runner import CheckResult, NotYet, RetryPolicy, format_table, progress, run_check
from tasks.core.cleanup_catalog import CleanupRefused, Dependent, dependents_of
from tasks.core.cleanup_sql import (
    APPLICATION_NAME,
    BUSY_MARK,
    ORPHAN_AFTER_SECONDS,
    REAPED_MARK,
    count_sql,
    delete_script,
    describe_deletion,
    parse_counts,
    parse_delete_output,
    plan_deletion,
    shown,
)
from tasks.core.cleanup_vacuum import (
    describe_vacuum,
    format_report,
    parse_statistics_line,
    parse_vacuum_output,
    report_document,
    stats_sql,
    vacuum_script,
    write_report,
)
from tasks.core.pg_exec import PgTarget
from tasks.core.pg_sql import quote_ident
from tasks.facts.cleanup import CleanupCounts, CleanupTable, PostgresStatistics
from tasks.operations.faults import kill_during
from tasks.operations.recap import record_checks, say
from tasks.operations.refusals import deploy, operation
from tasks.settings.cleanup import CleanupSettings


def cleanup_target(host: Any, settings: CleanupSettings) -> PgTarget:
    """The host's ``postgres`` connection, pointed at the database being cleaned."""
    return replace(host_settings.of_host(host, "postgres").target, database=settings.database)


def _refused(exc: CleanupRefused) -> OperationError:
    # pyinfra shows an OperationError as one line and fails this host alone.
    return OperationError(str(exc))


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

    say(host, message, log_func=logger.error, record=False, fg="red")
    return False


# A fault point inside a psql script: the controller is killed this long after the script
# started, while the script's session sits idle (its client stuck) for STALL_SECONDS, holding the
# lock: as a run whose controller died mid-way leaves it, for the next run to end.
FAULT_KILL_AFTER = 3.0
STALL_SECONDS = 50


def _stall(script: str, before: str | None = None, after: str | None = None) -> str:
    """``script`` with a psql client-side pause before or after the first line starting so."""
    lines = script.split("\n")
    i = next(i for i, line in enumerate(lines) if line.startswith(before or after or ""))
    lines.insert(i if before else i + 1, f"\\! sleep {STALL_SECONDS}")
    return "\n".join(lines)


def _say_reaped(host, err: Sequence[str]) -> None:
    """What the wait for the lock found and ended (sessions a killed run left holding it)."""
    for line in err:
        if REAPED_MARK in line:
            say(host, "cleanup: found and " + line[line.index(REAPED_MARK) + len(REAPED_MARK) + 2 :].strip())


def _run_delete(state, host, settings: CleanupSettings, target: PgTarget, deps, script: str):
    from tasks.operations.postgres import run_script

    if kill_during("cleanup.mid-delete", FAULT_KILL_AFTER):
        script = _stall(script, before="COMMIT;")  # rows deleted, not committed
    with progress(
        f"the deletion from {settings.schema}.{settings.table} (the run lock first)",
        settings.lock_wait + settings.statement_timeout,
    ):
        ok, out, err = run_script(host, target, script)
    _say_reaped(host, err)
    if not ok:
        message = _failure(err)
        if BUSY_MARK in message:
            return _fail(host, "cleanup: " + message[message.index(BUSY_MARK) :])
        return _fail(host, f"cleanup: deletion rolled back, nothing changed: {message}")
    result = parse_delete_output(out)
    for line in describe_deletion(settings, deps, result):
        say(host, f"cleanup: {line}")
    _results(host)["deletion"] = {
        "table": f"{settings.schema}.{settings.table}",
        "deleted": result["root"] or 0,
        "dependents": {deps[i].key: n for i, n in result["dependents"].items()},
        "deleted_first": {deps[i].key: n for i, n in result["deleted"].items()},
    }
    check = _verify_nothing_matches(host, settings, target, deps)
    say(host, f"cleanup: verification:\n{format_table([check])}", record=False)
    record_checks(host, [check])
    if not check.passed:
        return _fail(host, f"cleanup: {check.name}: {check.evidence}")
    return True


def _verify_nothing_matches(
    host, settings: CleanupSettings, target: PgTarget, deps: Sequence[Dependent]
) -> CheckResult:
    """After the transaction: a fresh count (the check library's retried check) finds no match."""
    from tasks.operations.postgres import run_script

    def probe():
        ok, out, err = run_script(host, target, count_sql(settings, deps) + ";\n")
        if not ok:
            raise NotYet(f"counting failed: {_failure(err)}")
        matched = parse_counts("\n".join(out).strip()).matched
        if matched:
            raise NotYet(f"{matched} rows still match")
        return f"0 rows of {settings.relation} match {', '.join(map(shown, settings.patterns))}"

    return run_check(
        f"no row of {settings.relation} matches the patterns",
        settings.database,
        probe,
        RetryPolicy(attempts=3, seconds=15, wait=1),
    )


@operation()
def delete_matching_rows(settings: CleanupSettings, target: PgTarget):
    """
    Delete the rows whose column matches the patterns (and their dependents), guarded.

    + settings: the host's ``cleanup`` block
    + target: the connection to the database being cleaned (:func:`cleanup_target`)

    Counts first (plan time): a missing table/column, patterns matching every row, more than
    ``max_rows`` matches, or dependents behind a non-cascading foreign key with
    ``foreign_keys: refuse`` raise an error and nothing runs. No match: no change. ``--dry``
    lists the counts and sample names. The deletion is one transaction under the cleanup
    advisory lock, with every guard checked again inside it.

    **Example:**

    .. code:: python

        cleanup.delete_matching_rows(name="Delete load-test users", settings=s, target=target)
    """
    s = settings
    catalog = current_host.get_fact(CleanupTable, target=target, schema=s.schema, table=s.table)
    if not catalog.exists:
        raise OperationError(
            f"table {s.relation} does not exist in database {quote_ident(s.database)}: nothing deleted"
        )
    needed = [s.column] + ([s.age_column] if s.min_age is not None else [])
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise OperationError(
            f"table {s.relation} has no column {', '.join(map(quote_ident, missing))} "
            f"(columns: {', '.join(catalog.columns)}): nothing deleted"
        )
    try:
        deps = dependents_of(s.schema, s.table, catalog.fks)
        counts = current_host.get_fact(CleanupCounts, target=target, sql=count_sql(s, deps))
        plan = plan_deletion(s, catalog, deps, counts)
    except CleanupRefused as exc:
        raise _refused(exc) from None
    if not plan.changed:
        current_host.noop(f"no rows of {s.relation} match {', '.join(map(shown, s.patterns))}")
        return
    if _planning():
        for line in plan.lines:
            say(current_host, f"plan: {line}")
    yield FunctionCommand(_run_delete, (s, target, deps, delete_script(s, plan)), {})


def _run_vacuum(state, host, settings: CleanupSettings, target: PgTarget, tables):
    from tasks.operations.postgres import run_script

    with progress(
        "VACUUM (ANALYZE)", settings.lock_wait + settings.statement_timeout * max(1, len(tables or ()))
    ):
        script = vacuum_script(settings, tables, statistics=True)
        if kill_during("cleanup.mid-vacuum", FAULT_KILL_AFTER):
            script = _stall(script, after="VACUUM (ANALYZE")  # one table done, the lock held
        ok, out, err = run_script(host, target, script)
    _say_reaped(host, err)
    rows = parse_vacuum_output(out, tables)
    _results(host)["vacuum"] = rows
    # The statistics read at the end of the same psql session: statistics_report, next in the
    # deploy, uses them instead of another round trip.
    _results(host)[_STATS_AFTER_KEY] = parse_statistics_line(out)
    if not ok:
        return _fail(host, f"cleanup: VACUUM stopped: {_failure(err)}")
    for line in describe_vacuum(rows):
        say(host, f"cleanup: {line}")


@operation(is_idempotent=False)
def vacuum_analyze(settings: CleanupSettings, target: PgTarget, stats: Mapping | None = None):
    """
    VACUUM (ANALYZE) the configured tables (``vacuum_tables``; None: every table), each on its
    own outside a transaction block, with ``lock_timeout`` and ``statement_timeout`` and the
    cleanup advisory lock. A table another VACUUM is working on is skipped with a note. Always
    a change (VACUUM is not idempotent); the log gives dead tuples before -> after.
    ``stats``: :class:`PostgresStatistics` already read in this run (the table list comes from
    it), else read here.

    **Example:**

    .. code:: python

        cleanup.vacuum_analyze(name="VACUUM ANALYZE quant", settings=s, target=target)
    """
    s = settings
    if stats is None:
        stats = current_host.get_fact(PostgresStatistics, target=target, largest=s.largest_tables)
    present = sorted(tuple(name.split(".", 1)) for name in (stats.get("tables") or {}))
    if s.vacuum_tables is None:
        tables = present
    else:
        tables = []
        for t in s.vacuum_tables:
            found = [p for p in present if p[1] == t and (p[0] == s.schema or "." not in t)]
            if not found:
                raise OperationError(
                    f"vacuum_tables: table {quote_ident(t)} does not exist in "
                    f"database {quote_ident(s.database)}"
                )
            tables.append(next((p for p in found if p[0] == s.schema), found[0]))
    if not tables:
        current_host.noop(f"no tables to VACUUM in {quote_ident(s.database)}")
        return
    if _planning():
        dead = {k: v.get("dead") for k, v in (stats.get("tables") or {}).items()}
        say(
            current_host,
            "plan: VACUUM (ANALYZE) "
            + ", ".join(f"{sc}.{t} ({dead.get(f'{sc}.{t}', '?')} dead)" for sc, t in tables)
            + " - always reported as a change",
        )
    yield FunctionCommand(_run_vacuum, (s, target, tables), {})


def _write_statistics(
    state, host, settings: CleanupSettings, target: PgTarget, before, report_path: str | None
):
    from tasks.operations.postgres import run_script

    after = _results(host).pop(_STATS_AFTER_KEY, None)
    if after is None:
        ok, out, err = run_script(host, target, stats_sql(settings.largest_tables) + ";\n")
        if not ok:
            return _fail(host, f"cleanup: reading statistics failed: {_failure(err)}")
        after = json.loads("\n".join(out))
    for line in format_report(before, after).splitlines():
        say(host, f"stats: {line}")
    if report_path:
        results = _results(host)
        write_report(
            report_path,
            report_document(settings, before, after, results.get("deletion"), results.get("vacuum")),
        )
        say(host, f"stats: JSON report written to {report_path}")


@operation(is_idempotent=False)
def statistics_report(settings: CleanupSettings, target: PgTarget, before: Mapping | None = None):
    """
    Print database statistics before/after as a table and, with ``report_path`` (or
    ``QUANT_CLEANUP_REPORT`` in the controller's environment), write them as JSON on the
    controller. ``before``: statistics read at plan time (see
    :class:`PostgresStatistics`). "After" are the ones the VACUUM step read at its end when it
    ran just before this step, else read now. Reading is no change to the database, but pyinfra counts the
    step as one: gate it with ``_if`` on the operations that changed something.
    """
    yield FunctionCommand(_write_statistics, (settings, target, before, settings.report_to()), {})


def log_statistics(stats: Mapping) -> None:
    """Print plan-time statistics (the "before" column) once."""
    if _planning():
        for line in format_report(stats, None).splitlines():
            say(current_host, f"stats: {line}")


def log_lock_holders(stats: Mapping, settings: CleanupSettings) -> None:
    """Say who holds the cleanup lock now (the statistics read it), at plan time: a session a
    killed run left (ours, not running a statement) is ended by this run's wait for the lock."""
    if not _planning():
        return
    for holder in stats.get("cleanup_lock") or []:
        pid, state, seconds = holder.get("pid"), holder.get("state"), holder.get("seconds")
        if holder.get("application") == APPLICATION_NAME and state != "active":
            say(
                current_host,
                f"found: session pid {pid} ({state} for {seconds} s) holds the cleanup lock, left by "
                f"a cleanup run that did not finish; this run ends it once it has been idle "
                f"{ORPHAN_AFTER_SECONDS} s (its transaction rolls back), then goes on",
            )
        else:
            say(
                current_host,
                f"found: session pid {pid} ({holder.get('application') or 'no application name'}, "
                f"{state}) holds the cleanup lock: another cleanup run; this run waits for it at most "
                f"{settings.lock_wait:g} s",
            )


@deploy("Clean the database")
def cleanup_database():
    """Statistics, the guarded deletion, VACUUM (ANALYZE), statistics again when anything changed."""
    wanted = host_settings.of_host(current_host, "cleanup")
    target = cleanup_target(current_host, wanted)
    before = current_host.get_fact(PostgresStatistics, target=target, largest=wanted.largest_tables)
    log_statistics(before)
    log_lock_holders(before, wanted)
    steps = [delete_matching_rows(name="Delete load-test rows (guarded)", settings=wanted, target=target)]
    if wanted.vacuum:
        steps.append(vacuum_analyze(name="VACUUM (ANALYZE)", settings=wanted, target=target, stats=before))
    statistics_report(
        name="Statistics after cleanup",
        settings=wanted,
        target=target,
        before=before,
        _if=lambda: any(step.did_change() for step in steps),
    )
