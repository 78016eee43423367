"""Defaults for every host: the settings the seed's incident ended with.

Per-host data (the inventory) says *where* things are; these say *what* they should be. A host's
`mlflow` mapping overrides these key by key (see tasks/operations/mlflow.py).
"""

# MLflow tracking server (deploys/fix_mlflow.py): defaults in tasks/settings/mlflow.py (the
# incident's fix: 2 sync workers, timeout 60, max-requests 100 + jitter 10, 1 GiB limit, 512 MiB
# reservation). Fleet-wide values go in `mlflow_defaults = {...}` here; a host's `mlflow` wins.

# PostgreSQL roles and grants (deploys/db_users.py; shapes and rules in tasks/operations/db_users.py).
# A host's `postgres` mapping says how to reach the server: "access": "docker" (docker exec into
# the container, no client on the host) or "psql" (host-side psql to host:port, superuser
# password from {"env": VAR} or {"file": path}, sent in a 0600 PGPASSFILE). Passwords in db_roles
# are sources too ({"env": ...} / {"file": ...}): a plaintext string is refused.
# Nothing is managed unless a host lists it; what a host stops listing is left alone (roles are
# dropped only with "present": False; grants revoked only with db_exclusive).
db_roles = []  # [{"name", "password", "login", "connection_limit", "valid_until", "member_of", ...}]
db_databases = []  # [{"name", "owner"}]
db_grants = []  # [{"role", "database", "schema"?, "on"?: tables|sequences|functions, "privileges"}]
db_default_privileges = []  # [{"owner", "role", "database", "schema", "on", "privileges"}]
db_exclusive = False  # revoke privileges and memberships beyond the settings (on named objects)
db_verify = True  # after a change: each login role logs in over TCP and uses its grants

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
