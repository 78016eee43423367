"""An example inventory for production-like hosts over SSH. Copy to production.py and edit.

The stack runs with docker compose from /opt/quant/docker-compose.yml (onboard_host.py writes one,
or bring yours): compose names the containers (`quant_mlflow_1` with docker-compose v1,
`quant-mlflow-1` with v2), the network (`quant_default`) and the addresses, which are the service
names (`postgres`, `minio`). So the settings name the compose file and the service, not a container:
fix_mlflow finds the container compose made from that file, patches the file's managed keys and lets
compose recreate it.

Secrets are never written here or in the compose file: the file takes them from its `env_file` or
`.env` (for onboarding, `secret_env` names a file or an environment variable on the machine that runs
pyinfra). The image is tasks/lab/recipes/mlflowprod built on the official one (it adds psycopg2 and
boto3, which a postgresql:// store and s3:// artifacts need and the official image lacks).
"""

_mlflow = {
    "compose_file": "/opt/quant/docker-compose.yml",
    "compose_service": "mlflow",
    "image": "quant/mlflow:2.9.2",  # docker build --build-arg BASE=ghcr.io/mlflow/mlflow:v2.9.2 ...
    "ports": ["127.0.0.1:5000:5000"],
    "backend_store_uri": "postgresql://mlflow@postgres:5432/mlflow",
    "artifacts_destination": "s3://mlflow-artifacts",
    "env": {"MLFLOW_S3_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "mlflow"},
    "secret_env": {
        "PGPASSWORD": {"env": "QUANT_MLFLOW_DB_PASSWORD"},
        "AWS_SECRET_ACCESS_KEY": {"file": "~/.config/quant/minio_secret"},
    },
}

ml_hosts = [
    ("ml-1.example.internal", {"ssh_user": "deploy", "mlflow": _mlflow}),
    ("ml-2.example.internal", {"ssh_user": "deploy", "mlflow": _mlflow}),
]
