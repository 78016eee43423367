"""
Install the watcher on each host (the per-host placement): the project, offline, and a systemd
service running scripts/watch's program there against `@local`, the host's own data.

    pyinfra -y inventories/production.py deploys/install_watcher.py              # install or update
    pyinfra -y inventories/production.py deploys/install_watcher.py --data watcher='{"present": false}'

The service restarts on failure and its stop leaves nothing running; each host heals itself with
its network to the controller cut. Settings: the host's `watcher` block (documented, with its
defaults, in tasks/settings/watcher.py); the wheel cache comes from scripts/setup. Idempotent.
"""
from tasks.operations import recap
from tasks.operations.refusals import quiet_refusals
from tasks.operations.watcher import install_watcher

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run
install_watcher()
