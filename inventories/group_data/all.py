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

# Whole-stack verification (deploys/verify_stack.py; tasks/checks/stack.py). A host's `stack`
# mapping overrides these key by key and lists the services to expect there under `services`:
#   {"postgres": {"container"}, "mlflow": {"container", "url"?, "workers"?},
#    "redis": {"container", "password"?}, "s3": {"container"?, "url"?, "bucket"?, "health_path"?},
#    "backend": {"container"?, "url"?, "health_path"?, "db_path"?}}
# A service not listed is reported skipped (with the reason), never passed. HTTP goes to `url`
# from the host (curl, else python3) or, without a url, from inside the container. PostgreSQL
# access, superuser and login roles default to the host's `postgres` and `db_roles` data.
stack_defaults = {
    "deadline": 240,  # seconds for all checks on one host; a hung service cannot hold the run
    "command_timeout": 15,  # seconds for one command on the host (docker exec, psql, logs)
    "http_timeout": 5,  # seconds for one HTTP request
    "retry_attempts": 5,  # each check: up to this many attempts...
    "retry_seconds": 20,  # ...within this many seconds...
    "retry_wait": 2,  # ...this far apart (a check that cannot recover stops at once)
    "restart_window": 10,  # restart counts must not move over at least this many seconds
    "memory_warn_percent": 85,  # of the container's memory limit: warn from here...
    "memory_fail_percent": 95,  # ...fail from here
    "logs_since": "15m",  # known failure signatures searched since (duration or RFC 3339 time;
                          # env QUANTLAB_VERIFY_SINCE overrides), e.g. the time of the last fix
    "log_signatures": {},  # extra {name: regex} beyond SIGKILL, WORKER TIMEOUT,
                           # password authentication failed, WatchfilesRustInternalError
    "report_path": None,  # write a JSON report here (env QUANTLAB_VERIFY_REPORT overrides)
}

# Database cleanup (deploys/cleanup_database.py): defaults and rules in tasks/settings/cleanup.py
# (load-test leftovers `concurrent\\_%`, `test\\_%`; max_rows 1000; foreign_keys "refuse"). Fleet-wide
# values go in `cleanup_defaults = {...}` here; a host's `cleanup` wins.

# Scheduling the cleanup (deploys/schedule_cleanup.py): defaults and rules in
# tasks/settings/schedule.py (03:17 daily, cron or a systemd timer). Fleet-wide values go in
# `cleanup_schedule_defaults = {...}` here; a host's `cleanup_schedule` wins.

# Log-signature remediation (deploys/remediate.py; tasks/core/diagnose.py, tasks/operations/remediate.py). A
# host's `remediate` mapping overrides these key by key. Container roles come from the host's
# mlflow / postgres / backend / stack data; `containers` adds or overrides {role: name}.
remediate_defaults = {
    "catalog": None,  # path to a signature catalog on the controller; None: tasks/core/signatures.yml
    "since": "2h",  # docker logs --since (duration or RFC 3339 time)...
    "tail": 2000,  # ...and at most this many lines per container
    "record_path": "/var/lib/quantlab/remediation-runs.json",  # last runs, on the host (throttle)
    "report_dir": "remediation-reports",  # run records <host>.json on the controller
    "containers": {},
    "verify": True,  # verify each remediation after it ran
}

# The backend's uvicorn --reload fix (deploys/fix_backend_reload.py): the `backend` block, its
# defaults (reload_delay 2, force_polling, port 8000, /health) and rules in tasks/settings/backend.py.
# A host names the container and, optionally, the Dockerfile and compose file (only those are touched).

# Onboarding a fresh Debian host (deploys/onboard_host.py): the `onboard` block, its defaults
# (deploy user, narrow sudo, docker.io with log rotation, /opt/quant-stack) and rules in
# tasks/settings/onboard.py. `authorized_keys` has no default: each host (or `onboard_defaults`) lists them.
