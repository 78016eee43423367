"""
Guarded cleanup of load-test users, VACUUM ANALYZE and statistics before/after.

    pyinfra -y inventories/lab.py deploys/cleanup_database.py
    pyinfra --dry inventories/lab.py deploys/cleanup_database.py   # counts and sample names
                                                                   # (without -y: -y skips planning)

Replaces `cleanup_database.sh`. Settings: the host's `cleanup` block (documented, with its
defaults, in tasks/settings/cleanup.py), validated before any change; the connection is the
host's `postgres` block. A second run deletes nothing (no change); VACUUM always runs and says
what it reclaimed. QUANT_CLEANUP_REPORT=path writes a JSON report.
"""
from pyinfra import host

from tasks import settings
from tasks.facts.cleanup import PostgresStatistics
from tasks.operations import cleanup
from tasks.operations.refusals import quiet_refusals

quiet_refusals()

wanted = settings.of_host(host, "cleanup")
target = cleanup.cleanup_target(host, wanted)
before = host.get_fact(PostgresStatistics, target=target, largest=wanted.largest_tables)
cleanup.log_statistics(before)

steps = [cleanup.delete_matching_rows(name="Delete load-test rows (guarded)", settings=wanted,
                                      target=target)]
if wanted.vacuum:
    steps.append(cleanup.vacuum_analyze(name="VACUUM (ANALYZE)", settings=wanted, target=target,
                                        stats=before))
cleanup.statistics_report(name="Statistics after cleanup", settings=wanted, target=target,
                          before=before, _if=lambda: any(step.did_change() for step in steps))
