"""
Collect each host's watcher audit (the per-host placement, deploys/install_watcher.py) to the
controller: `<watcher.collect_dir>/<host>.jsonl`, the same JSON lines the central watcher writes.

    pyinfra -y inventories/production.py deploys/collect_watch_audit.py

Read-only on the hosts; a file already collected and unchanged is not fetched again.
"""
from tasks.operations import recap
from tasks.operations.refusals import quiet_refusals
from tasks.operations.watcher import collect_watch_audit

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run
collect_watch_audit()
