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
from tasks.operations import recap
from tasks.operations.cleanup import cleanup_database
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run
cleanup_database()
