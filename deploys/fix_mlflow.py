"""Bring the MLflow tracking server to its settings (host data `mlflow`, defaults in
group_data/all.py `mlflow_defaults`): drift-aware, version-aware, verified, rolled back on failure.

    pyinfra inventories/lab.py deploys/fix_mlflow.py
"""
from tasks.operations import recap
from tasks.operations.mlflow import fix_mlflow
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

fix_mlflow()
