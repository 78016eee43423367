"""
Diagnose each host's container logs against the signature catalog and run only the remediations
they call for, on that host only; then verify them and record the run.

    pyinfra inventories/lab.py deploys/remediate.py --dry   # findings, evidence, what would run
    pyinfra -y inventories/lab.py deploys/remediate.py

Catalog: tasks/core/signatures.yml (or host data `remediate.catalog`). Settings: the host's
`remediate` block (tasks/settings/remediate.py). A second run right after a fix reports no
changes; a signature still present within its throttle window is reported "throttled".
"""
from tasks.operations import recap
from tasks.operations.refusals import quiet_refusals
from tasks.operations.remediate import remediate

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

remediate()
