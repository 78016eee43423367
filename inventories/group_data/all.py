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
