"""Group data for every host: where fleet-wide values go.

Defaults live in one place, the settings models (tasks/settings/<block>.py; the JSON Schema of
host data, tasks/settings/host_data.schema.json, lists every key with its default). Per-host data
(the inventory) says *where* things are. To change a value for the whole fleet, set
`<block>_defaults = {...}` here; a host's own `<block>` mapping overrides it key by key.
"""

# MLflow tracking server (deploys/fix_mlflow.py): defaults in tasks/settings/mlflow.py (the
# incident's fix: 2 sync workers, timeout 60, max-requests 100 + jitter 10, 1 GiB limit, 512 MiB
# reservation). Fleet-wide values go in `mlflow_defaults = {...}` here; a host's `mlflow` wins.

# PostgreSQL roles and grants (deploys/db_users.py): the `postgres` block (how to reach the server)
# and the top-level db_roles, db_databases, db_grants, db_default_privileges, db_exclusive and
# db_verify keys, with their defaults (nothing managed), in tasks/settings/postgres.py.

# Whole-stack verification (deploys/verify_stack.py): defaults and the services a host's `stack`
# mapping lists in tasks/settings/stack.py. Fleet-wide values go in `stack_defaults = {...}` here.

# Database cleanup (deploys/cleanup_database.py): defaults and rules in tasks/settings/cleanup.py
# (load-test leftovers `concurrent\\_%`, `test\\_%`; max_rows 1000; foreign_keys "refuse"). Fleet-wide
# values go in `cleanup_defaults = {...}` here; a host's `cleanup` wins.

# Scheduling the cleanup (deploys/schedule_cleanup.py): defaults and rules in
# tasks/settings/schedule.py (03:17 daily, cron or a systemd timer). Fleet-wide values go in
# `cleanup_schedule_defaults = {...}` here; a host's `cleanup_schedule` wins.

# Log-signature remediation (deploys/remediate.py): defaults in tasks/settings/remediate.py, the
# signature catalog in tasks/core/signatures.yml. Fleet-wide values go in `remediate_defaults`.

# The backend's uvicorn --reload fix (deploys/fix_backend_reload.py): the `backend` block, its
# defaults (reload_delay 2, force_polling, port 8000, /health) and rules in tasks/settings/backend.py.
# A host names the container and, optionally, the Dockerfile and compose file (only those are touched).

# Onboarding a fresh Debian host (deploys/onboard_host.py): the `onboard` block, its defaults
# (deploy user, narrow sudo, docker.io with log rotation, /opt/quant-stack) and rules in
# tasks/settings/onboard.py. `authorized_keys` has no default: each host (or `onboard_defaults`) lists them.
