"""An example inventory for production-like hosts over SSH. Copy to production.py and edit.

Secrets are never written here: `secret_env` names a file or an environment variable on the
machine that runs pyinfra; the value is read there and sent to the host in a 0600 file.
"""

_mlflow = {
    "container_name": "quant-mlflow",
    "image": "ghcr.io/mlflow/mlflow:v2.9.2",  # any image with MLflow, psycopg2 and boto3
    "ports": ["127.0.0.1:5000:5000"],
    "network": "quant-net",
    "backend_store_uri": "postgresql://mlflow@quant-postgres:5432/mlflow",
    "artifacts_destination": "s3://mlflow-artifacts",
    "env": {"MLFLOW_S3_ENDPOINT_URL": "http://quant-minio:9000", "AWS_ACCESS_KEY_ID": "mlflow"},
    "secret_env": {
        "PGPASSWORD": {"env": "QUANT_MLFLOW_DB_PASSWORD"},
        "AWS_SECRET_ACCESS_KEY": {"file": "~/.config/quant/minio_secret"},
    },
    "compose_file": "/opt/quant/docker-compose-ml.yml",
}

ml_hosts = [
    ("ml-1.example.internal", {"ssh_user": "deploy", "mlflow": _mlflow}),
    ("ml-2.example.internal", {"ssh_user": "deploy", "mlflow": _mlflow}),
]
