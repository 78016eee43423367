"""
Schedule deploys/cleanup_database.py on the machine that runs pyinfra (or a named ops host).

    pyinfra -y @local deploys/schedule_cleanup.py                  # install or update
    pyinfra -y @local deploys/schedule_cleanup.py --data cleanup_schedule='{"present": false}'

A cron entry (a systemd timer + service pair where systemd is PID 1) runs a job script under
`flock -n`, non-interactively (`pyinfra -y`, stdin /dev/null), logging to a size-rotated file;
exit 75 means "skipped: another run holds the lock". Settings: the host's `cleanup_schedule`
block (documented, with its defaults, in tasks/settings/schedule.py). Idempotent.
"""
from tasks.operations import recap
from tasks.operations.refusals import quiet_refusals
from tasks.operations.schedule import schedule_cleanup

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run
schedule_cleanup()
