"""The event-driven watcher (issue 17): streams each inventory host's container events and logs,
matches the signature catalog and runs the matching remediation deploy on that host only.
Decisions are pure (tasks/core/watch.py); this package reaches hosts and runs pyinfra."""
