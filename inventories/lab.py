"""This machine's lab, over @local.

`scripts/lab up` must have run: the host data below comes from the lab's state file (container
names, 127.0.0.1 ports, and the files holding the lab's secrets). QUANTLAB_PREFIX selects another
lab than `quant`; QUANTLAB_MLFLOW_IMAGE=mlflow3 points the MLflow settings at the 3.x image.
"""
import os

from tasks.lab.inventory import lab_host_data

lab = [
    ("@local", lab_host_data(os.environ.get("QUANTLAB_PREFIX"),
                             mlflow_image=os.environ.get("QUANTLAB_MLFLOW_IMAGE", "mlflow2"))),
]
