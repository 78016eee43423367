"""
Guarded cleanup of load-test users, VACUUM ANALYZE and statistics before/after.

    pyinfra -y inventories/lab.py deploys/cleanup_database.py
    pyinfra --dry inventories/lab.py deploys/cleanup_database.py   # counts and sample names
                                                                   # (without -y: -y skips planning)

Replaces `cleanup_database.sh`. Settings: the host's `cleanup` data over `cleanup_defaults`
(documented in tasks/operations/cleanup.py, defaults in inventories/group_data/all.py), validated before any
change; the connection is the host's `postgres` data. A second run deletes nothing (no change);
VACUUM always runs and says what it reclaimed. QUANT_CLEANUP_REPORT=path writes a JSON report.
"""
from pyinfra import host

from tasks.operations import cleanup

settings = cleanup.load_cleanup_settings(host.name, host.data)
before = host.get_fact(cleanup.PostgresStatistics, target=settings.target,
                       largest=settings.largest_tables)
cleanup.log_statistics(before)

deleted = cleanup.delete_matching_rows(name="Delete load-test rows (guarded)", settings=settings)
steps = [deleted]
if settings.vacuum:
    steps.append(cleanup.vacuum_analyze(name="VACUUM (ANALYZE)", settings=settings, stats=before))
cleanup.statistics_report(name="Statistics after cleanup", settings=settings, before=before,
                          _if=lambda: any(step.did_change() for step in steps))
