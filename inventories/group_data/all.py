"""Defaults for every host: the settings the seed's incident ended with.

Per-host data (the inventory) says *where* things are; these say *what* they should be. A host's
`mlflow` mapping overrides these key by key (see tasks/mlflow_deploy.py).
"""

# MLflow tracking server (deploys/fix_mlflow.py). The incident: 4 gunicorn workers SIGKILLed by
# the kernel under a tight memory limit. The fix: 2 sync workers recycled every ~100 requests,
# a 60 s worker timeout, 1 GiB limit with 512 MiB reserved.
mlflow_defaults = {
    "workers": 2,
    "timeout": 60,  # gunicorn worker timeout, seconds (no uvicorn equivalent)
    "max_requests": 100,  # recycle a worker after this many requests...
    "max_requests_jitter": 10,  # ...plus up to this many, so workers do not restart together
    "worker_class": "sync",
    "memory_limit": "1g",  # Docker sizes: bytes, or a number with b/k/m/g
    "memory_reservation": "512m",
    "restart_policy": "unless-stopped",
    "server": "auto",  # auto: gunicorn for MLflow < 3.3, uvicorn from 3.3 on
}

# PostgreSQL roles and grants (deploys/db_users.py; shapes and rules in tasks/db_users.py).
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

# Whole-stack verification (deploys/verify_stack.py; tasks/stack_checks.py). A host's `stack`
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
